//! [`Budget`]: how many retries the downstream can be asked to absorb.
//!
//! # Why budgets and not only max attempts?
//!
//! `max_attempts(3)` looks harmless: a blip costs a retry or two. In an outage it
//! triples the load on the one service that is already failing, from every client at
//! once, and keeps it down. A budget bounds retries by the traffic itself: each request
//! deposits a fraction of a retry (`ratio`), each retry withdraws one, and deposits
//! expire after `ttl`. In an outage retries fall to `ratio` of the requests (plus a
//! small reserve of `min_per_sec`), whatever `max_attempts` says; after a blip there is
//! credit to spare.
//!
//! # Cost
//!
//! A deposit is made by every request, so it must be cheap: it adds one to a pending
//! count owned by the calling thread (a plain store, no lock, no read-modify-write).
//! Every 16th deposit reads the clock and files the pending deposits in the time bucket
//! of the thread's previous clock reading. Deposits filed under an earlier time expire
//! sooner: the budget can only err toward fewer retries, never more. A withdrawal (a
//! retry) reads the clock and sums the buckets and the pending counts.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{check_duration, nanos, ConfigError};
use crate::stripe::{add_stamped, bump_stamped, live_count, parallelism, pick};
use crate::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Buckets per `ttl`: deposits and withdrawals expire in steps of a tenth.
const BUCKETS: u64 = 10;
/// Deposits between two clock readings of a thread.
const REFRESH: u64 = 16;
/// One retry, in the budget's fixed-point unit.
const UNIT: u64 = 1000;
const MAX_RATIO: f64 = 1000.0;
const MIN_TTL: Duration = Duration::from_millis(100);

/// A retry budget shared by every clone of the retry layers it is given to.
///
/// ```
/// use std::time::Duration;
/// use steadfast::retry::Budget;
///
/// // Retries up to 20% of the requests of the last 10 s, plus 5 a second.
/// let budget = Budget::new(0.2, 5, Duration::from_secs(10))?;
/// assert_eq!(budget.balance(), Some(50.0)); // the reserve: 5/s over 10 s
/// assert!(Budget::new(-1.0, 5, Duration::from_secs(10)).is_err());
/// # Ok::<(), steadfast::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Budget {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    /// Deposits since this stripe last read the clock, not yet filed in `deposits`.
    pending: AtomicU64,
    /// The tick read then.
    tick: AtomicU64,
    deposits: [AtomicU64; BUCKETS as usize],
}

struct Inner {
    ratio: f64,
    min_per_sec: u32,
    ttl: Duration,
    /// Milli-retries per deposit.
    per_deposit: u64,
    /// Milli-retries always available per `ttl`.
    reserve: u64,
    /// Bucket width in nanoseconds.
    width: u64,
    start: Instant,
    stripes: Box<[Stripe]>,
    withdrawals: [AtomicU64; BUCKETS as usize],
}

impl Budget {
    /// A budget allowing retries up to `ratio` of the requests made in the last `ttl`
    /// (each request deposits `ratio` of a retry), plus `min_per_sec` retries a second
    /// whatever the traffic.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `ratio` is outside `[0, 1000]` or NaN, or `ttl` is below
    /// 100 ms or above one day.
    pub fn new(ratio: f64, min_per_sec: u32, ttl: Duration) -> Result<Self, ConfigError> {
        if !(0.0..=MAX_RATIO).contains(&ratio) {
            return Err(ConfigError::new(
                "budget",
                format!("ratio must be in [0, 1000], got {ratio}"),
            ));
        }
        check_duration("budget", ttl)?;
        if ttl < MIN_TTL {
            return Err(ConfigError::new(
                "budget",
                format!("ttl must be at least 100ms, got {ttl:?}"),
            ));
        }
        Ok(Self::checked(ratio, min_per_sec, ttl))
    }

    /// Builds a budget from values known to be valid.
    pub(crate) fn checked(ratio: f64, min_per_sec: u32, ttl: Duration) -> Self {
        let stripes = (parallelism() * 4).clamp(16, 256);
        Self {
            inner: Some(Arc::new(Inner {
                ratio,
                min_per_sec,
                ttl,
                per_deposit: (ratio * UNIT as f64).round() as u64,
                reserve: (f64::from(min_per_sec) * ttl.as_secs_f64() * UNIT as f64) as u64,
                width: (nanos(ttl) / BUCKETS).max(1),
                start: Instant::now(),
                stripes: (0..=stripes).map(|_| Stripe::default()).collect(),
                withdrawals: Default::default(),
            })),
        }
    }

    /// No limit: every retry `max_attempts` allows is made.
    pub fn unlimited() -> Self {
        Self { inner: None }
    }

    /// Whether this budget is [`Budget::unlimited`].
    pub fn is_unlimited(&self) -> bool {
        self.inner.is_none()
    }

    /// Retries that could be made now (fractional); `None` when unlimited. For a
    /// health page: a balance near zero during an outage means retries have stopped.
    pub fn balance(&self) -> Option<f64> {
        let inner = self.inner.as_ref()?;
        let (deposits, withdrawals) = inner.totals(inner.tick());
        Some(inner.balance(deposits, withdrawals) as f64 / UNIT as f64)
    }

    /// Credits one request.
    #[inline]
    pub(crate) fn deposit(&self) {
        if let Some(inner) = &self.inner {
            inner.deposit();
        }
    }

    /// Takes one retry if the balance allows it.
    pub(crate) fn withdraw(&self) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        let tick = inner.tick();
        let (deposits, withdrawals) = inner.totals(tick);
        if inner.balance(deposits, withdrawals) < UNIT as i128 {
            return false;
        }
        // Concurrent withdrawals can each see the last unit; the overdraw is bounded
        // by the number of retries decided at the same instant.
        bump_stamped(&inner.withdrawals[(tick % BUCKETS) as usize], tick, false);
        true
    }
}

impl Inner {
    fn tick(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        nanos(elapsed) / self.width
    }

    #[inline]
    fn deposit(&self) {
        let (i, owned) = pick(self.stripes.len());
        let stripe = &self.stripes[i];
        if owned {
            let pending = stripe.pending.load(Relaxed);
            if pending == 0 || pending >= REFRESH {
                self.refresh(stripe, pending, true);
            } else {
                stripe.pending.store(pending + 1, Relaxed);
            }
        } else {
            // Shared by the threads beyond the owned stripes: the refresh takes the
            // pending count with a swap, so no deposit is filed twice.
            if stripe.pending.fetch_add(1, Relaxed) + 1 >= REFRESH {
                let pending = stripe.pending.swap(0, Relaxed);
                self.refresh(stripe, pending, false);
            }
        }
    }

    /// Files `pending` deposits under the stripe's last tick and reads the clock. On an
    /// owned stripe the deposit being made is left pending under the new tick.
    #[cold]
    fn refresh(&self, stripe: &Stripe, pending: u64, owned: bool) {
        let old = stripe.tick.load(Relaxed);
        let tick = self.tick();
        stripe.tick.store(tick, Relaxed);
        if owned {
            // `pending` was read before counting the deposit being made.
            stripe.pending.store(1, Relaxed);
        }
        // A shared stripe's `pending` is what its swap took: every deposit counted
        // before the swap, by any thread, filed exactly once. Adding the caller's own
        // back would count it twice whenever another thread's swap had taken it.
        if pending > 0 {
            add_stamped(
                &stripe.deposits[(old % BUCKETS) as usize],
                old,
                pending,
                owned,
            );
        }
    }

    fn totals(&self, tick: u64) -> (u64, u64) {
        let deposits = self
            .stripes
            .iter()
            .map(|s| {
                let filed: u64 = s
                    .deposits
                    .iter()
                    .map(|c| live_count(c, tick, BUCKETS))
                    .sum();
                let age = tick.saturating_sub(s.tick.load(Relaxed));
                let pending = if age < BUCKETS {
                    s.pending.load(Relaxed)
                } else {
                    0
                };
                filed + pending
            })
            .sum();
        let withdrawals = self
            .withdrawals
            .iter()
            .map(|c| live_count(c, tick, BUCKETS))
            .sum();
        (deposits, withdrawals)
    }

    fn balance(&self, deposits: u64, withdrawals: u64) -> i128 {
        i128::from(self.reserve) + i128::from(deposits) * i128::from(self.per_deposit)
            - i128::from(withdrawals) * i128::from(UNIT)
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("Budget::unlimited()"),
            Some(inner) => f
                .debug_struct("Budget")
                .field("ratio", &inner.ratio)
                .field("min_per_sec", &inner.min_per_sec)
                .field("ttl", &inner.ttl)
                .field("balance", &self.balance())
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_config_errors() {
        let s = Duration::from_secs;
        for (ratio, ttl) in [
            (-0.01, s(10)),
            (1000.5, s(10)),
            (f64::NAN, s(10)),
            (f64::INFINITY, s(10)),
            (0.2, Duration::ZERO),
            (0.2, Duration::from_millis(99)),
            (0.2, s(86_401)),
        ] {
            let err = Budget::new(ratio, 10, ttl).unwrap_err();
            assert_eq!(err.field(), "budget", "{ratio} {ttl:?}");
        }
        for (ratio, ttl) in [
            (0.0, s(1)),
            (1000.0, s(1)),
            (0.2, Duration::from_millis(100)),
        ] {
            assert!(Budget::new(ratio, 0, ttl).is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_fund_withdrawals_and_expire() {
        let budget = Budget::new(0.5, 0, Duration::from_secs(10)).unwrap();
        assert!(!budget.withdraw(), "no reserve, no deposits");
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(budget.balance(), Some(5.0));
        for _ in 0..5 {
            assert!(budget.withdraw());
        }
        assert!(!budget.withdraw());
        assert_eq!(budget.balance(), Some(0.0));
        // After the ttl both deposits and withdrawals are gone.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(budget.balance(), Some(0.0));
        // This thread last read the clock at its 1st deposit and reads it again at its
        // 17th: deposits 11 to 16 are filed under the old time and already expired.
        // Late filing only ever loses credit, never adds it.
        for _ in 0..6 {
            budget.deposit();
        }
        assert_eq!(budget.balance(), Some(0.0));
        for _ in 0..4 {
            budget.deposit();
        }
        assert_eq!(budget.balance(), Some(2.0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_reserve_refills_over_the_ttl() {
        let budget = Budget::new(0.0, 2, Duration::from_secs(1)).unwrap();
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(budget.withdraw());
    }

    #[test]
    fn unlimited_always_allows() {
        let budget = Budget::unlimited();
        assert!((0..10_000).all(|_| budget.withdraw()));
        assert_eq!(budget.balance(), None);
    }
}
