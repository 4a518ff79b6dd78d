//! [`Budget`]: how many retries the downstream can be asked to absorb.
//!
//! # Why budgets and not only max attempts?
//!
//! `max_attempts(3)` looks harmless: a blip costs a retry or two. In an outage it
//! triples the load on the one service that is already failing, from every client at
//! once, and keeps it down. A budget bounds retries by the traffic itself: each request
//! deposits a fraction of a retry (`ratio`), each retry withdraws one, and a retry is
//! made only while the deposits of the last second, and those of the last `ttl`, pay
//! for it (plus a small reserve of `min_per_sec`). The rule is stated once, on
//! [`Budget::new`]. In an outage retries fall to `ratio` of the requests (plus the
//! reserve), whatever `max_attempts` says; after a blip there is credit to spare.
//!
//! # Why two windows?
//!
//! The `ttl` window alone let credit saved over a healthy period be spent at once: the
//! first second of an outage got a whole `ttl`'s worth of retries (2,000 against 1,000
//! requests a second with the defaults), and `ttl` later, when that burst's
//! withdrawals expired together, the same burst again, an echo every `ttl`. The
//! one-second window bounds how fast credit is spent: every second, from the first of
//! an outage on, gets at most `ratio` of its own requests plus `min_per_sec`, and what
//! a second spent comes back only as that second leaves the window, 100 ms at a time.
//! The `ttl` window still bounds how much credit exists.
//!
//! # Cost
//!
//! A deposit is made by every request, so it must be cheap: it adds one to a pending
//! count owned by the calling thread (a plain store, no lock, no read-modify-write).
//! Every 16th deposit reads the clock and files the pending deposits in both windows,
//! in the buckets of the thread's previous clock reading. Deposits filed under an
//! earlier time leave the windows sooner: the budget can only err toward fewer
//! retries, never more. Up to 15 of each thread's deposits can be early that way; a
//! thread making fewer than 16 requests a second has most of its deposits leave the
//! one-second window before they are filed, so at low traffic that window holds little
//! more than `min_per_sec` (which is then most of what the rule allows anyway). A
//! withdrawal (a retry) reads the clock and sums both windows' buckets and the pending
//! counts.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{check_duration, ConfigError};
use crate::nanos::nanos;
use crate::stripe::{add_stamped, bump_stamped, live_count, parallelism, pick};
use crate::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Buckets per window: each window slides in steps of a tenth.
const BUCKETS: u64 = 10;
/// The rate window's bucket, in nanoseconds: ten of them make the last second.
const SLOT: u64 = 100_000_000;
/// Deposits between two clock readings of a thread.
const REFRESH: u64 = 16;
/// One retry, in the budget's fixed-point unit.
const UNIT: u64 = 1000;
const MAX_RATIO: f64 = 1000.0;
const MIN_TTL: Duration = Duration::from_millis(100);

/// A retry budget shared by every clone of the retry layers it is given to: retries
/// up to `ratio` of the requests plus `min_per_sec`, every second (see
/// [`Budget::new`] for the rule).
///
/// ```
/// use std::time::Duration;
/// use steadfast::retry::Budget;
///
/// // Retries up to 20% of the requests, plus 5 a second; credit lives 10 s.
/// let budget = Budget::new(0.2, 5, Duration::from_secs(10))?;
/// assert_eq!(budget.balance(), Some(5.0)); // the reserve of the current second
/// assert!(Budget::new(-1.0, 5, Duration::from_secs(10)).is_err());
/// # Ok::<(), steadfast::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Budget {
    inner: Option<Arc<Inner>>,
}

/// One window's buckets: stamped counters, bucket `t % BUCKETS` holding tick `t`.
type Buckets = [AtomicU64; BUCKETS as usize];

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    /// Deposits since this stripe last read the clock, not yet filed in the windows.
    pending: AtomicU64,
    /// That reading, in nanoseconds since the budget's start.
    read_at: AtomicU64,
    /// Deposits by tenth of `ttl`.
    deposits: Buckets,
    /// Deposits by 100 ms slot.
    recent: Buckets,
}

struct Inner {
    ratio: f64,
    min_per_sec: u32,
    ttl: Duration,
    /// Milli-retries per deposit.
    per_deposit: u64,
    /// Milli-retries always available per `ttl`.
    reserve: u64,
    /// Milli-retries always available per second.
    reserve_per_sec: u64,
    /// The `ttl` window's bucket width in nanoseconds.
    width: u64,
    start: Instant,
    stripes: Box<[Stripe]>,
    /// Withdrawals by tenth of `ttl`.
    withdrawals: Buckets,
    /// Withdrawals by 100 ms slot.
    recent_withdrawals: Buckets,
}

/// What both windows hold at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    deposits: u64,
    withdrawals: u64,
    recent_deposits: u64,
    recent_withdrawals: u64,
}

impl Budget {
    /// A budget: each request deposits `ratio` of a retry, and a retry is made only
    /// if, counting it,
    ///
    /// - the retries of the **last second** stay within `ratio` x the requests of
    ///   that second + `min_per_sec`, and
    /// - the retries of the **last `ttl`** stay within `ratio` x the requests of that
    ///   `ttl` + `min_per_sec` x `ttl`.
    ///
    /// The second bounds how fast retries are made, from the first second of an
    /// outage on, however much credit a long healthy period saved; the `ttl` bounds
    /// how much credit exists. Both windows are bucketed and slide in tenths: "the
    /// last second" is the current 100 ms slot and the nine before it (slots count
    /// from the budget's creation), "the last `ttl`" the current tenth of `ttl` and the
    /// nine before it. Slack: `ratio` is kept in thousandths of a retry (rounded, so
    /// up to 0.0005 x requests more), and retries decided at the same instant on
    /// several threads can each take the last one. The rest errs toward fewer retries:
    /// deposits are filed in batches, under the time of the batch's first.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `ratio` when it is outside `[0, 1000]` or NaN, or
    /// `ttl` when it is below 100 ms or above one day.
    pub fn new(ratio: f64, min_per_sec: u32, ttl: Duration) -> Result<Self, ConfigError> {
        if !(0.0..=MAX_RATIO).contains(&ratio) {
            return Err(ConfigError::new(
                "ratio",
                format!("must be in [0, 1000], got {ratio}"),
            ));
        }
        check_duration("ttl", ttl)?;
        if ttl < MIN_TTL {
            return Err(ConfigError::new(
                "ttl",
                format!("must be at least 100ms, got {ttl:?}"),
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
                reserve_per_sec: u64::from(min_per_sec) * UNIT,
                width: (nanos(ttl) / BUCKETS).max(1),
                start: Instant::now(),
                stripes: (0..=stripes).map(|_| Stripe::default()).collect(),
                withdrawals: Default::default(),
                recent_withdrawals: Default::default(),
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

    /// Retries that could be made now (fractional, never below zero): the smaller of
    /// what the last second and the last `ttl` leave; `None` when unlimited. For a
    /// health page: a balance near zero during an outage means retries are held to the
    /// ratio.
    pub fn balance(&self) -> Option<f64> {
        let inner = self.inner.as_ref()?;
        let available = inner.available(&inner.totals(inner.now())).max(0);
        Some(available as f64 / UNIT as f64)
    }

    /// Credits one request.
    #[inline]
    pub(crate) fn deposit(&self) {
        if let Some(inner) = &self.inner {
            inner.deposit();
        }
    }

    /// Takes one retry if both windows allow it.
    pub(crate) fn withdraw(&self) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        let now = inner.now();
        if inner.available(&inner.totals(now)) < i128::from(UNIT) {
            return false;
        }
        // Concurrent withdrawals can each see the last unit; the overdraw is bounded
        // by the number of retries decided at the same instant.
        let (tick, slot) = (now / inner.width, now / SLOT);
        bump_stamped(&inner.withdrawals[(tick % BUCKETS) as usize], tick, false);
        bump_stamped(
            &inner.recent_withdrawals[(slot % BUCKETS) as usize],
            slot,
            false,
        );
        true
    }
}

impl Inner {
    /// Nanoseconds since the budget's start.
    fn now(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.start))
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

    /// Files `pending` deposits in both windows under the stripe's last clock reading,
    /// and reads the clock. On an owned stripe the deposit being made is left pending
    /// under the new reading.
    #[cold]
    fn refresh(&self, stripe: &Stripe, pending: u64, owned: bool) {
        let old = stripe.read_at.load(Relaxed);
        stripe.read_at.store(self.now(), Relaxed);
        if owned {
            // `pending` was read before counting the deposit being made.
            stripe.pending.store(1, Relaxed);
        }
        // A shared stripe's `pending` is what its swap took: every deposit counted
        // before the swap, by any thread, filed exactly once. Adding the caller's own
        // back would count it twice whenever another thread's swap had taken it.
        if pending > 0 {
            let (tick, slot) = (old / self.width, old / SLOT);
            let deposits = &stripe.deposits[(tick % BUCKETS) as usize];
            add_stamped(deposits, tick, pending, owned);
            let recent = &stripe.recent[(slot % BUCKETS) as usize];
            add_stamped(recent, slot, pending, owned);
        }
    }

    fn totals(&self, now: u64) -> Totals {
        let (tick, slot) = (now / self.width, now / SLOT);
        let live = |buckets: &Buckets, at: u64| -> u64 {
            buckets.iter().map(|c| live_count(c, at, BUCKETS)).sum()
        };
        let mut totals = Totals {
            withdrawals: live(&self.withdrawals, tick),
            recent_withdrawals: live(&self.recent_withdrawals, slot),
            ..Totals::default()
        };
        for s in self.stripes.iter() {
            let read_at = s.read_at.load(Relaxed);
            let pending = s.pending.load(Relaxed);
            totals.deposits += live(&s.deposits, tick);
            if tick.saturating_sub(read_at / self.width) < BUCKETS {
                totals.deposits += pending;
            }
            totals.recent_deposits += live(&s.recent, slot);
            if slot.saturating_sub(read_at / SLOT) < BUCKETS {
                totals.recent_deposits += pending;
            }
        }
        totals
    }

    /// Milli-retries both windows allow now: negative when retries outlive the
    /// deposits that paid for them (filed late, those leave the window first) or after
    /// a concurrent overdraw.
    fn available(&self, t: &Totals) -> i128 {
        let left = |reserve: u64, deposits: u64, withdrawals: u64| {
            i128::from(reserve) + i128::from(deposits) * i128::from(self.per_deposit)
                - i128::from(withdrawals) * i128::from(UNIT)
        };
        let ttl = left(self.reserve, t.deposits, t.withdrawals);
        let second = left(
            self.reserve_per_sec,
            t.recent_deposits,
            t.recent_withdrawals,
        );
        ttl.min(second)
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
        for (ratio, ttl, field) in [
            (-0.01, s(10), "ratio"),
            (1000.5, s(10), "ratio"),
            (f64::NAN, s(10), "ratio"),
            (f64::INFINITY, s(10), "ratio"),
            (0.2, Duration::ZERO, "ttl"),
            (0.2, Duration::from_millis(99), "ttl"),
            (0.2, s(86_401), "ttl"),
        ] {
            let err = Budget::new(ratio, 10, ttl).unwrap_err();
            assert_eq!(err.field(), field, "{ratio} {ttl:?}");
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

    /// 1,000 requests a second (10 every 10 ms) for 20 s, then an outage of 40 s in
    /// which every retry the budget allows is taken at once. The ttl (10 s) saved
    /// 2,000 retries of credit, but no second gets more than the ratio of its requests
    /// plus `min_per_sec`: not the first second of the outage (where all the credit
    /// used to go at once), nor `ttl` later (where the withdrawals of that burst used to
    /// expire together and free their credit in one jump, an echo every `ttl`).
    #[tokio::test(start_paused = true)]
    async fn credit_never_jumps() {
        let (ratio, min_per_sec) = (0.2, 10);
        let budget = Budget::new(ratio, min_per_sec, Duration::from_secs(10)).unwrap();
        let allowance = ratio * 1000.0 + f64::from(min_per_sec);
        let healthy = 2_000;
        let mut taken = Vec::new();
        for step in 0..6_000 {
            for _ in 0..10 {
                budget.deposit();
            }
            let mut n = 0_u32;
            while step >= healthy && budget.withdraw() {
                n += 1;
            }
            taken.push(n);
            // What could be taken now never exceeds what one second earns.
            let balance = budget.balance().unwrap();
            assert!(
                balance <= allowance,
                "at {} ms the balance is {balance}",
                step * 10
            );
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        // Every second of 100 ms slots (10 steps each), aligned to the slots as the
        // rule is: at most the allowance.
        for (k, second) in taken.windows(100).enumerate().step_by(10) {
            let retries: u32 = second.iter().sum();
            let at = k * 10;
            assert!(
                f64::from(retries) <= allowance,
                "{retries} retries in the second from {at} ms"
            );
            // And the outage does get the ratio of its requests every whole second
            // (where the credit of the second before comes back).
            if k >= healthy && k % 100 == 0 {
                assert!(
                    retries >= 200,
                    "{retries} retries in the second from {at} ms"
                );
            }
        }
    }

    #[test]
    fn unlimited_always_allows() {
        let budget = Budget::unlimited();
        assert!((0..10_000).all(|_| budget.withdraw()));
        assert_eq!(budget.balance(), None);
    }
}
