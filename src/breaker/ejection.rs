//! [`EjectionCap`]: a set of breakers never rejects for more than a share of its
//! endpoints at once.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::config::{check_rate, ConfigError};

/// The share of a set that may be ejected by default: Envoy's `max_ejection_percent`.
const DEFAULT_MAX_EJECTED: f64 = 0.1;

/// A cap on how many breakers of a set may reject at once: the set's breakers (one
/// per endpoint of a load balancer, or the keys of a
/// [`KeyedBreaker`](crate::keyed::KeyedBreaker)) share one cap, and at most
/// `max_ejected` of them (at least one) reject calls at any moment.
///
/// # Why
///
/// When most endpoints look bad at once, the likelier cause is on the caller's side
/// (its own network, a shared dependency, a bad deploy of the client) rather than
/// every endpoint failing together. Ejecting them all would turn a partial outage into
/// a total one, and with [`Readiness::Wait`](super::Readiness::Wait) a balancer over
/// them would have no endpoint ready and requests would wait. Proxies stop ejecting
/// past a share for this reason (Envoy's `max_ejection_percent`, 10% by default).
///
/// # What it does
///
/// Breakers still open, go half-open and close by their own rules; the cap only
/// decides which open ones reject. Of the open (and half-open) breakers in the set,
/// the `limit` most recently opened reject as usual, where `limit` is `max_ejected`
/// times the breakers in the set, rounded down, and at least 1. Past it, the least
/// recently opened let calls through as if closed: those calls reach the endpoint and
/// count in the breaker's figures but not in its rules, so they neither trip nor
/// close it. Its recovery is decided as before, by its half-open trials after the open
/// delay, or by its [watchdog](crate::watchdog). A breaker that opens again (a trial
/// failed) counts as the most recently opened. Forced states are the operator's and
/// are left alone: a forced-open breaker always rejects and does not count.
///
/// While the cap holds, a `warn` event (target `steadfast::breaker`, message
/// "ejection cap holding") says so, an `info` event when it lets go, and each breaker
/// it lets calls through says so in its [`Snapshot::capped`](super::Snapshot::capped)
/// (and so in a [`Health`](crate::health::Health) snapshot). Services in
/// `Readiness::Wait` are woken when the cap starts letting calls through their
/// breaker.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), steadfast::BoxError> {
/// use tower::{service_fn, Layer, Service, ServiceExt};
/// use steadfast::breaker::{Breaker, EjectionCap, State};
///
/// let cap = EjectionCap::new(0.1)?; // at most 10% of the set, and at least one
/// let mut endpoints = Vec::new();
/// for i in 0..10 {
///     let breaker = Breaker::builder(format!("endpoint-{i}"))
///         .consecutive_failures(1)
///         .ejection_cap(&cap)
///         .build()?;
///     let down = service_fn(|_: ()| async { Err::<(), _>("network unreachable") });
///     endpoints.push((breaker.clone(), breaker.layer().layer(down)));
/// }
/// // Every endpoint fails at once (say the caller's own network went down).
/// for (_, svc) in &mut endpoints {
///     let _ = svc.ready().await?.call(()).await;
/// }
/// assert!(endpoints.iter().all(|(b, _)| b.state() == State::Open));
/// let s = cap.snapshot();
/// assert_eq!((s.members, s.limit, s.open, s.capped), (10, 1, 10, 9));
/// // The last to open rejects; the nine others let calls through to their endpoint.
/// assert!(!endpoints[9].0.snapshot().capped);
/// assert!(endpoints[..9].iter().all(|(b, _)| b.snapshot().capped));
/// let err = endpoints[0].1.ready().await?.call(()).await.unwrap_err();
/// assert_eq!(err.to_string(), "network unreachable"); // the endpoint was called
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EjectionCap {
    group: Arc<Group>,
}

/// The figures of an [`EjectionCap`] at one moment, from [`EjectionCap::snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct EjectionSnapshot {
    /// Breakers in the set (alive: a dropped breaker leaves it).
    pub members: usize,
    /// How many may reject at once: `max_ejected` of `members`, at least 1.
    pub limit: usize,
    /// Breakers open or half-open.
    pub open: usize,
    /// Open or half-open breakers the cap lets calls through: `open - limit`, or 0.
    pub capped: usize,
}

impl EjectionCap {
    /// A cap letting at most `max_ejected` of the set (at least one breaker) reject
    /// at once.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `max_ejected` is in (0, 1] (1 means no cap).
    pub fn new(max_ejected: f64) -> Result<Self, ConfigError> {
        check_rate("max_ejected", max_ejected)?;
        Ok(Self {
            group: Arc::new(Group {
                max_ejected,
                threshold: AtomicU64::new(0),
                state: Mutex::new(GroupState::default()),
            }),
        })
    }

    /// The share of the set that may reject at once.
    pub fn max_ejected(&self) -> f64 {
        self.group.max_ejected
    }

    /// The set's figures now.
    pub fn snapshot(&self) -> EjectionSnapshot {
        let state = self.group.lock();
        let members = state.members.len();
        let limit = self.group.limit(members);
        let open = state.open.len();
        EjectionSnapshot {
            members,
            limit,
            open,
            capped: open.saturating_sub(limit),
        }
    }

    /// Whether the cap is letting calls through some open breaker now.
    pub fn is_holding(&self) -> bool {
        self.group.threshold.load(Acquire) != 0
    }

    pub(crate) fn join(&self, changed: Arc<Notify>, open: bool) -> Member {
        let id = {
            let mut state = self.group.lock();
            let id = state.next_id;
            state.next_id += 1;
            state.members.insert(id, changed);
            id
        };
        let member = Member {
            group: self.group.clone(),
            id,
            seq: AtomicU64::new(0),
            left: AtomicBool::new(false),
        };
        member.set(open, true);
        member
    }
}

/// The default cap: at most 10% of the set, and at least one breaker.
impl Default for EjectionCap {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EJECTED).unwrap_or_else(|_| unreachable!("0.1 is a valid share"))
    }
}

impl fmt::Debug for EjectionCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EjectionCap")
            .field("max_ejected", &self.group.max_ejected)
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// Two caps are equal when they are the same set.
impl PartialEq for EjectionCap {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.group, &other.group)
    }
}

struct Group {
    max_ejected: f64,
    /// Open members whose open number is below this are let through; 0 while the cap
    /// lets none through. Written under `state`'s lock, read by admission without it.
    threshold: AtomicU64,
    state: Mutex<GroupState>,
}

#[derive(Default)]
struct GroupState {
    next_id: u64,
    /// Open numbers are handed out from 1 (0 means "not open").
    last_seq: u64,
    /// Every member, with what wakes its services in `Readiness::Wait`.
    members: HashMap<u64, Arc<Notify>>,
    /// Open and half-open members by open number: the order in which they opened.
    open: BTreeMap<u64, u64>,
    /// Whether the cap held at the last change (for its events).
    holding: bool,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // Every change below leaves the state whole before anything that could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many of `members` may reject at once.
    fn limit(&self, members: usize) -> usize {
        ((self.max_ejected * members as f64).floor() as usize).max(1)
    }

    /// Sets the threshold for the members and open breakers now, waking the services
    /// of breakers the cap starts letting calls through.
    fn rebalance(&self, state: &mut GroupState) {
        let limit = self.limit(state.members.len());
        let open = state.open.len();
        let threshold = if open > limit {
            state.open.keys().rev().nth(limit - 1).copied().unwrap_or(0)
        } else {
            0
        };
        let before = self.threshold.swap(threshold, AcqRel);
        if threshold > before {
            for id in state.open.range(before.max(1)..threshold).map(|(_, id)| id) {
                if let Some(changed) = state.members.get(id) {
                    changed.notify_waiters();
                }
            }
        }
        let holding = threshold != 0;
        if holding != state.holding {
            state.holding = holding;
            if holding {
                tracing::warn!(
                    target: "steadfast::breaker",
                    members = state.members.len(),
                    open,
                    limit,
                    "ejection cap holding: the least recently opened breakers let calls through"
                );
            } else {
                tracing::info!(
                    target: "steadfast::breaker",
                    members = state.members.len(),
                    open,
                    limit,
                    "ejection cap released"
                );
            }
        }
    }
}

/// One breaker's place in an [`EjectionCap`]'s set; leaves the set when dropped.
pub(crate) struct Member {
    group: Arc<Group>,
    id: u64,
    /// The breaker's open number while open or half-open, else 0.
    seq: AtomicU64,
    /// Set when the breaker left the set (its last handle was dropped); written under
    /// the group's lock.
    left: AtomicBool,
}

impl Member {
    /// Whether the cap lets calls through this (open or half-open) breaker now.
    #[inline]
    pub(crate) fn let_through(&self) -> bool {
        let seq = self.seq.load(Acquire);
        seq != 0 && seq < self.group.threshold.load(Acquire)
    }

    /// The breaker is now open (`open`; `renew` when it opened anew rather than went
    /// half-open), or neither open nor half-open.
    pub(crate) fn set(&self, open: bool, renew: bool) {
        let group = &*self.group;
        let mut state = group.lock();
        if self.left.load(Relaxed) {
            return;
        }
        let seq = self.seq.load(Acquire);
        // Going half-open keeps the number the breaker opened with.
        let keep = open && !renew && seq != 0;
        if seq != 0 && !keep {
            state.open.remove(&seq);
            self.seq.store(0, Release);
        }
        if open && !keep {
            state.last_seq += 1;
            let seq = state.last_seq;
            state.open.insert(seq, self.id);
            self.seq.store(seq, Release);
        }
        group.rebalance(&mut state);
    }
}

impl Member {
    /// The breaker's last handle is gone: it leaves the set now, although its shared
    /// state may live on a while (in a thread's cached shard, a watchdog finishing).
    pub(crate) fn leave(&self) {
        let group = &*self.group;
        let mut state = group.lock();
        if self.left.swap(true, Relaxed) {
            return;
        }
        state.members.remove(&self.id);
        let seq = self.seq.swap(0, AcqRel);
        if seq != 0 {
            state.open.remove(&seq);
        }
        group.rebalance(&mut state);
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.leave();
    }
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("id", &self.id)
            .field("let_through", &self.let_through())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(cap: &EjectionCap) -> Member {
        cap.join(Arc::new(Notify::new()), false)
    }

    #[test]
    fn limit_rounds_down_and_is_at_least_one() {
        let cap = EjectionCap::new(0.25).unwrap();
        let limits: Vec<usize> = [0, 1, 3, 4, 7, 8, 100]
            .iter()
            .map(|&n| cap.group.limit(n))
            .collect();
        assert_eq!(limits, [1, 1, 1, 1, 1, 2, 25]);
        assert_eq!(EjectionCap::new(1.0).unwrap().group.limit(7), 7);
    }

    #[test]
    fn half_open_keeps_its_place_and_reopening_moves_to_the_back() {
        let cap = EjectionCap::new(0.5).unwrap();
        let m: Vec<Member> = (0..4).map(|_| member(&cap)).collect();
        // Open in order 0, 1, 2: limit 2, so 0 is let through.
        for member in &m[..3] {
            member.set(true, true);
        }
        let through = |m: &[Member]| m.iter().map(Member::let_through).collect::<Vec<_>>();
        assert_eq!(through(&m), [true, false, false, false]);
        // 0 goes half-open: same place.
        m[0].set(true, false);
        assert_eq!(through(&m), [true, false, false, false]);
        // 0 opens again: now the most recent, and 1 is let through.
        m[0].set(true, true);
        assert_eq!(through(&m), [false, true, false, false]);
        // 2 closes: two open, none let through.
        m[2].set(false, false);
        assert_eq!(through(&m), [false, false, false, false]);
        assert!(!cap.is_holding());
    }

    #[test]
    fn a_member_that_left_is_never_counted_again() {
        let cap = EjectionCap::new(0.5).unwrap();
        let (a, b) = (member(&cap), member(&cap));
        a.set(true, true);
        a.leave();
        a.set(true, true);
        assert_eq!(cap.snapshot().members, 1);
        assert_eq!(cap.snapshot().open, 0);
        assert!(!a.let_through());
        drop(b);
        assert_eq!(cap.snapshot().members, 0);
        drop(a);
        assert_eq!(cap.snapshot().members, 0);
    }
}
