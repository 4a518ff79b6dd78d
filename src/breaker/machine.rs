//! The state machine shared by every clone of a breaker.
//!
//! # Layout
//!
//! The hot state is one `AtomicU64` word: the state kind, the half-open permits taken
//! and trials succeeded, and an epoch that changes on every transition. A call in the
//! closed state reads the word once to be admitted; its outcome is counted only if the
//! epoch is still the one it was admitted in, so a call that started before a trip can
//! never move a breaker that has since reopened or closed again.
//!
//! Transitions are rare and go through a mutex, which makes each one happen exactly
//! once (one event, one `watch` update) however many threads see the cause at the same
//! time. Half-open permits are taken and given back lock-free with compare-exchange.
//!
//! Each thread that calls a breaker gets a [`Shard`] of it, made on its first call:
//! the cumulative counters only that thread writes (a plain load and store, and no
//! cache line shared with another thread) and the counted reference to the shared
//! state that its response futures carry. A finished call leaves its shard in the
//! thread's [`Local`] for the next call, so a closed-state call touches no reference
//! count either.

use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::{futures::OwnedNotified, watch, Notify};
use tokio::time::Instant;

use super::builder::{Config, WindowKind};
use super::ejection::Member;
use super::local::{thread_slot, with_local, Local};
pub(crate) use super::recorder::Recorder;
use super::recorder::TRIAL_MASK;
use super::shard::{Counters, NO_OWNER};
pub(crate) use super::shard::{Counts, Shard};
use super::window::{CachePadded, CountWindow, TimeWindow, Totals};
use super::word::*;
use super::State;
use crate::backoff;
use crate::nanos::{nanos, nanos_since};
use crate::stripe::{bump, parallelism};
use crate::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use crate::sync::{Mutex, MutexGuard};
use crate::Outcome;

/// A rejection's `retry_after` from the nanoseconds left: never zero while rejecting
/// (a deadline just passed, or a probe running late, still means "soon", not "now"),
/// and never more than a day.
fn hint(left: u64) -> Duration {
    Duration::from_nanos(left.max(MIN_HINT)).min(crate::config::MAX_DURATION)
}

/// The least `retry_after` of a rejection: 1 ms.
const MIN_HINT: u64 = 1_000_000;

// --- admission ---------------------------------------------------------------------------

/// What the breaker decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed (or forced closed): the call goes through and is counted.
    Pass { epoch: u32 },
    /// Half-open: the call goes through as one of the trials.
    Trial { epoch: u32, id: NonZeroU32 },
    /// Open: rejected, with a hint of when to try again.
    Reject { retry_after: Option<Duration> },
    /// Closed, and shed by adaptive throttling; the hint is a tenth of its window.
    Shed { retry_after: Duration },
}

/// Why a transition happened; the `reason` field of the transition event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    ConsecutiveFailures,
    FailureRate,
    SlowCallRate,
    OpenElapsed,
    TrialsSucceeded,
    TrialFailed,
    TrialTimedOut,
    Forced,
    Reset,
    ProbesSucceeded,
    ProbesFailed,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::ConsecutiveFailures => "consecutive failures",
            Reason::FailureRate => "failure rate",
            Reason::SlowCallRate => "slow call rate",
            Reason::OpenElapsed => "open delay elapsed",
            Reason::TrialsSucceeded => "trial calls succeeded",
            Reason::TrialFailed => "trial call failed",
            Reason::TrialTimedOut => "trial call timed out",
            Reason::Forced => "forced",
            Reason::Reset => "reset",
            Reason::ProbesSucceeded => "watchdog probes succeeded",
            Reason::ProbesFailed => "watchdog probes failed",
        }
    }
}

// --- the shared state --------------------------------------------------------------------

// One per breaker, and boxing the count window would add a pointer hop per call.
#[allow(clippy::large_enum_variant)]
enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

/// State touched only by transitions and half-open trials, under the mutex.
struct Locked {
    open_delays: backoff::Iter,
    /// The trials of the current half-open that are still running (at most
    /// `half_open_calls`; the capacity is reserved up front).
    trials: Vec<Trial>,
    next_trial: u32,
}

/// A half-open trial still running, and when it counts as failed.
#[derive(Debug, Clone, Copy)]
struct Trial {
    id: NonZeroU32,
    epoch: u32,
    deadline: u64,
}

/// Adaptive throttling: the probability of shedding a call, and the draws.
struct Throttle {
    k: f64,
    /// Requests never shed (`min_calls`).
    protection: f64,
    /// The probability of shedding, in units of 2^-32; 0 while nothing is shed.
    p: AtomicU64,
    /// Draws made, mixed with `seed` into one uniform number per draw.
    draws: AtomicU64,
    seed: u64,
}

pub(crate) struct Shared {
    state: AtomicU64,
    /// Failures in a row and the epoch they count for (see [`streak`]).
    consecutive: AtomicU64,
    /// Nanoseconds since `start` at which an open breaker may go half-open.
    open_until: AtomicU64,
    /// Nanoseconds since `start` at which the oldest running trial is overdue;
    /// `u64::MAX` when none is running.
    trial_deadline: AtomicU64,
    window: Option<Window>,
    throttle: Option<Throttle>,
    config: Config,
    /// Whether a call's end must be timed (a time window or a slow-call rule).
    pub(crate) time_end: bool,
    /// The slow-call threshold, when a call's start must be timed.
    pub(crate) slow_threshold: Option<Duration>,
    start: Instant,
    pub(crate) name: Arc<str>,
    trips: AtomicU64,
    /// Counts of calls finished on a thread that does not own the call's shard, and
    /// of threads beyond the shards; updated with read-modify-writes.
    pub(super) overflow: CachePadded<Counters>,
    /// Watchdogs attached: while any is, an open breaker waits for them to close it
    /// instead of going half-open on its own timer.
    watchdogs: AtomicUsize,
    /// Held by the one watchdog probing this breaker.
    probing: AtomicBool,
    /// Nanoseconds since `start` at which a watchdog expects to close the breaker if
    /// its probes pass; 0 when unknown.
    watchdog_eta: AtomicU64,
    /// Nanoseconds from a trip to an attached watchdog's first probe (its interval);
    /// 0 when none was attached. A trip sets `watchdog_eta` from it, so rejections
    /// carry a hint before the watchdog's task has seen the trip.
    watchdog_first_probe: AtomicU64,
    /// Watchdogs reporting the dependency escalated.
    escalated: AtomicUsize,
    locked: Mutex<Locked>,
    watch: watch::Sender<State>,
    /// Woken on every transition: services in `Readiness::Wait` waiting in `poll_ready`.
    changed: Arc<Notify>,
    /// The breaker's place in an ejection cap's set, if it has one.
    member: Option<Member>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Everything a [`Breaker`](super::Breaker) handle owns: the shared state and the
/// shards (which point back at the shared state, never the other way).
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) shared: Arc<Shared>,
    /// One per thread slot, made on the first call of a thread in that slot.
    shards: Box<[OnceLock<Arc<Shard>>]>,
    /// The shard of threads whose slot is beyond `shards`.
    overflow: Arc<Shard>,
    /// Dropped with the last `Breaker`: watchdogs see their receivers close and end.
    alive: watch::Sender<()>,
}

impl Core {
    pub(crate) fn new(name: Arc<str>, config: Config) -> Self {
        // Counted from a year back, so that a breaker used under another clock than the
        // one it was built under (a second runtime, a paused test clock an hour ahead)
        // still reads that clock's instants as distinct times rather than all as zero.
        let now = Instant::now();
        let start = now.checked_sub(CLOCK_SLACK).unwrap_or(now);
        let parallelism = parallelism();
        let mut open_delays = config.open_backoff.iter();
        let (kind, open_until) = if config.start_open {
            let delay = nanos(open_delays.next().unwrap_or_default());
            (OPEN, nanos_since(start, now).saturating_add(delay))
        } else {
            (CLOSED, 0)
        };
        let initial = Word::new(kind, 0);
        let (window, slow_threshold) = match config.rates {
            Some(r) => {
                let window = match r.window {
                    WindowKind::Count(n) => Window::Count(CountWindow::new(n, r.slow.is_some())),
                    WindowKind::Time(t) => {
                        Window::Time(TimeWindow::new(t, start, config.coarse_clock))
                    }
                };
                (Some(window), r.slow.map(|(t, _)| t))
            }
            None => (None, None),
        };
        // A time window reads its own clock (coarse, or real when it must), so only
        // a slow-call rule needs each call's end read by the recorder.
        let time_end = slow_threshold.is_some();
        if time_end {
            // Calibrated here rather than at the first call.
            super::recorder::counter();
        }
        let throttle = config.throttle.map(|k| Throttle {
            k,
            protection: f64::from(config.rates.map_or(0, |r| r.min_calls)),
            p: AtomicU64::new(0),
            draws: AtomicU64::new(0),
            seed: config
                .seed
                .or(config.open_backoff.seed_value())
                .unwrap_or_else(|| fastrand::u64(..)),
        });
        let changed = Arc::new(Notify::new());
        let member = config
            .ejection
            .as_ref()
            .map(|cap| cap.join(changed.clone(), kind == OPEN));
        let shared = Arc::new(Shared {
            state: AtomicU64::new(initial.0),
            consecutive: AtomicU64::new(streak(0, 0)),
            open_until: AtomicU64::new(open_until),
            trial_deadline: AtomicU64::new(u64::MAX),
            window,
            throttle,
            time_end,
            slow_threshold,
            start,
            name,
            trips: AtomicU64::new(0),
            overflow: CachePadded::default(),
            watchdogs: AtomicUsize::new(0),
            probing: AtomicBool::new(false),
            watchdog_eta: AtomicU64::new(0),
            watchdog_first_probe: AtomicU64::new(0),
            escalated: AtomicUsize::new(0),
            locked: Mutex::new(Locked {
                open_delays,
                trials: Vec::with_capacity(config.half_open_calls as usize),
                next_trial: 0,
            }),
            watch: watch::channel(initial.state()).0,
            changed,
            member,
            config,
        });
        Self {
            shards: (0..slots(parallelism)).map(|_| OnceLock::new()).collect(),
            overflow: Arc::new(Shard::new(&shared, NO_OWNER)),
            shared,
            alive: watch::channel(()).0,
        }
    }

    /// The shard of the thread in `slot`, made on first use.
    #[inline]
    fn shard_for(&self, slot: usize) -> &Arc<Shard> {
        match self.shards.get(slot) {
            Some(cell) => cell.get_or_init(|| Arc::new(Shard::new(&self.shared, slot))),
            None => &self.overflow,
        }
    }

    /// The calling thread's shard.
    pub(crate) fn shard(&self) -> Arc<Shard> {
        self.shard_for(thread_slot()).clone()
    }

    /// A counted reference to this thread's shard for one call: the one the thread's
    /// last finished call left (see [`Local::lease`]) when it belongs to this breaker,
    /// else a clone. `shared` is `self.shared`, passed from a handle that holds it
    /// one pointer hop closer.
    #[inline]
    pub(crate) fn lease(&self, shared: &Arc<Shared>) -> Arc<Shard> {
        with_local(|local| match local.lease.take() {
            Some(held) if Arc::ptr_eq(&held.shared, shared) => held,
            other => self.lease_miss(local, other),
        })
        .unwrap_or_else(|| self.overflow.clone())
    }

    #[cold]
    #[inline(never)]
    fn lease_miss(&self, local: &Local, held: Option<Arc<Shard>>) -> Arc<Shard> {
        // Another breaker's shard, dropped here; or none yet.
        drop(held);
        self.shard_for(local.slot()).clone()
    }

    /// Counts a rejected call; `shed` when adaptive throttling shed it.
    #[inline]
    pub(crate) fn count_rejected(&self, shed: bool) {
        let slot = with_local(Local::slot).unwrap_or(usize::MAX);
        let (c, owned) = self.shard_for(slot).counters(slot);
        bump(&c.rejected, owned);
        if shed {
            bump(&c.shed, owned);
        }
    }

    /// Closes when the last `Breaker` handle is dropped.
    pub(crate) fn alive(&self) -> watch::Receiver<()> {
        self.alive.subscribe()
    }

    pub(crate) fn counts(&self) -> Counts {
        self.shards
            .iter()
            .filter_map(OnceLock::get)
            .fold(self.shared.overflow.add_to(Counts::default()), |c, s| {
                s.counters.add_to(c)
            })
    }
}

/// The last `Breaker` handle is gone: the breaker leaves its ejection cap's set.
impl Drop for Core {
    fn drop(&mut self) {
        if let Some(member) = &self.shared.member {
            member.leave();
        }
    }
}

/// How far before its build a breaker's clock starts (see [`Core::new`]).
const CLOCK_SLACK: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Thread slots with a shard of their own: enough for every thread of a typical
/// runtime; threads beyond them share the overflow shard.
fn slots(parallelism: usize) -> usize {
    (parallelism * 4).clamp(64, 1024)
}

impl Shared {
    #[inline]
    fn word(&self) -> Word {
        Word(self.state.load(Acquire))
    }

    pub(crate) fn state(&self) -> State {
        self.word().state()
    }

    #[inline]
    pub(super) fn now(&self) -> u64 {
        self.since_start(Instant::now())
    }

    /// `at` in nanoseconds since the breaker's start.
    #[inline]
    pub(super) fn since_start(&self, at: Instant) -> u64 {
        nanos_since(self.start, at)
    }

    pub(crate) fn trips(&self) -> u64 {
        self.trips.load(Relaxed)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<State> {
        self.watch.subscribe()
    }

    /// While open, when a call could next go through (see [`Open::retry_after`]);
    /// `None` in any other state.
    ///
    /// [`Open::retry_after`]: super::error::Open::retry_after
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        if self.word().kind() != OPEN {
            return None;
        }
        if self.watchdogs.load(Acquire) > 0 {
            return self.watchdog_retry_after();
        }
        Some(hint(
            self.open_until.load(Acquire).saturating_sub(self.now()),
        ))
    }

    /// The failure rate of the current window, if there is a window.
    pub(crate) fn window_totals(&self) -> Option<Totals> {
        match self.window.as_ref()? {
            Window::Count(w) => Some(w.totals()),
            Window::Time(w) => Some(w.totals(w.current_tick(None))),
        }
    }

    // --- admission ---------------------------------------------------------------------

    /// Decides whether a call may go through now: the one entry point of admission,
    /// for `poll_ready`, for `call` without it, and for services that pick their
    /// breaker per request. The closed state (one load of the state word) is inline;
    /// every other state is decided out of line, in `admit_slow`.
    #[inline(always)]
    pub(crate) fn admit(&self) -> Admission {
        match self.admit_closed() {
            Some(epoch) => Admission::Pass { epoch },
            None => self.admit_slow(self.word()),
        }
    }

    /// The inline half of [`admit`](Self::admit): the epoch if the breaker lets every
    /// call through (closed or forced closed), else `None` and `admit` decides. The
    /// closed call's `poll_ready` branches on it directly (an `Admission` made and
    /// matched there costs 4 to 18 instructions more a call, under callgrind).
    #[inline(always)]
    pub(crate) fn admit_closed(&self) -> Option<u32> {
        let word = self.word();
        matches!(word.low(), CLOSED | FORCED_CLOSED).then(|| word.epoch())
    }

    /// Whether an earlier `Pass` admission is still current (no transition since).
    #[inline]
    pub(crate) fn is_current(&self, epoch: u32) -> bool {
        self.word().epoch() == epoch
    }

    #[cold]
    fn admit_slow(&self, mut word: Word) -> Admission {
        loop {
            match word.kind() {
                CLOSED if word.shedding() => return self.throttle(word),
                CLOSED | FORCED_CLOSED => {
                    return Admission::Pass {
                        epoch: word.epoch(),
                    }
                }
                FORCED_OPEN => return Admission::Reject { retry_after: None },
                OPEN => {
                    if self.watchdogs.load(Acquire) > 0 {
                        // A watchdog owns recovery: it closes the breaker when its
                        // probes pass, whatever the open delay. Its estimate, if any.
                        return self.reject_or_let_through(word, self.watchdog_retry_after());
                    }
                    let now = self.now();
                    let until = self.open_until.load(Acquire);
                    if now < until {
                        return self.reject_or_let_through(word, Some(hint(until - now)));
                    }
                    if let Some(admission) = self.to_half_open(word, now) {
                        return admission;
                    }
                }
                _ => {
                    if let Some(admission) = self.take_trial(word) {
                        return admission;
                    }
                }
            }
            word = self.word();
        }
    }

    /// An open breaker's rejection, unless its [ejection cap](super::EjectionCap)
    /// lets the call through: then a pass for an epoch already over, so that the call
    /// counts in the figures but never in the rules.
    fn reject_or_let_through(&self, word: Word, retry_after: Option<Duration>) -> Admission {
        if self.capped() {
            Admission::Pass {
                epoch: word.epoch().wrapping_sub(1),
            }
        } else {
            Admission::Reject { retry_after }
        }
    }

    /// Whether an ejection cap lets calls through this open or half-open breaker now.
    pub(crate) fn capped(&self) -> bool {
        self.member.as_ref().is_some_and(Member::let_through)
    }

    /// Closed while adaptive throttling sheds: one draw decides. A shed call counts in
    /// the window and updates the probability.
    fn throttle(&self, word: Word) -> Admission {
        let epoch = word.epoch();
        let Some(t) = &self.throttle else {
            return Admission::Pass { epoch };
        };
        let p = t.p.load(Relaxed);
        if p == 0 {
            self.set_shedding(epoch, false);
            return Admission::Pass { epoch };
        }
        let draw = crate::backoff::mix(t.seed ^ t.draws.fetch_add(1, Relaxed)) >> 32;
        if draw >= p {
            return Admission::Pass { epoch };
        }
        let Some(Window::Time(w)) = &self.window else {
            return Admission::Pass { epoch };
        };
        let totals = w.record_shed(w.current_tick(None));
        self.rethrottle(epoch, totals);
        Admission::Shed {
            retry_after: hint(w.bucket()),
        }
    }

    /// Sets the shedding probability from the window's `totals`, for the closed state
    /// of `epoch`.
    fn rethrottle(&self, epoch: u32, totals: Totals) {
        let Some(t) = &self.throttle else {
            return;
        };
        let requests = (totals.calls + totals.shed) as f64;
        let accepts = totals.calls.saturating_sub(totals.failures) as f64;
        let p = ((requests - t.k * accepts - t.protection) / (requests + 1.0)).clamp(0.0, 1.0);
        // In units of 2^-32: a draw is the high half of a 64-bit number.
        let p = (p * 4_294_967_296.0) as u64;
        // Stored only when it changes: the line is read by every thread's failures,
        // and under a healthy load `p` stays 0.
        if t.p.load(Relaxed) != p {
            t.p.store(p, Relaxed);
        }
        self.set_shedding(epoch, p > 0);
    }

    /// Sets or clears [`SHEDDING`] in the closed word of `epoch`.
    fn set_shedding(&self, epoch: u32, on: bool) {
        let mut word = self.word();
        while word.epoch() == epoch && word.kind() == CLOSED && word.shedding() != on {
            let next = Word(if on {
                word.0 | SHEDDING
            } else {
                word.0 & !SHEDDING
            });
            match self
                .state
                .compare_exchange_weak(word.0, next.0, AcqRel, Acquire)
            {
                Ok(_) => return,
                Err(actual) => word = Word(actual),
            }
        }
    }

    /// Takes a trial permit in half-open. `None` when the state moved on meanwhile.
    fn take_trial(&self, mut word: Word) -> Option<Admission> {
        let now = self.now();
        let limit = self.config.half_open_calls;
        loop {
            if word.kind() != HALF_OPEN {
                return None;
            }
            if now >= self.trial_deadline.load(Acquire) {
                // A trial ran past the half-open timeout: it failed.
                self.reopen(word.epoch(), HALF_OPEN, Reason::TrialTimedOut);
                return None;
            }
            if word.admitted() >= limit {
                return Some(self.reject_or_let_through(word, None));
            }
            let next = word.with_admitted(word.admitted() + 1);
            match self
                .state
                .compare_exchange_weak(word.0, next.0, AcqRel, Acquire)
            {
                Ok(_) => {
                    let mut locked = self.lock();
                    let id = self.start_trial(&mut locked, word.epoch(), now);
                    return Some(Admission::Trial {
                        epoch: word.epoch(),
                        id,
                    });
                }
                Err(actual) => word = Word(actual),
            }
        }
    }

    /// Files a trial admitted at `now` in `epoch`, with its deadline, if that
    /// half-open is still current.
    fn start_trial(&self, locked: &mut Locked, epoch: u32, now: u64) -> NonZeroU32 {
        // Ids fit in 31 bits (see `Recorder::tag`), and only need to tell apart the
        // few trials running at once.
        locked.next_trial = locked.next_trial % TRIAL_MASK + 1;
        let id = NonZeroU32::new(locked.next_trial).unwrap_or(NonZeroU32::MIN);
        let word = self.word();
        if word.epoch() == epoch && word.kind() == HALF_OPEN {
            let deadline = now.saturating_add(nanos(self.config.half_open_timeout));
            locked.trials.push(Trial {
                id,
                epoch,
                deadline,
            });
            self.trial_deadline.fetch_min(deadline, AcqRel);
        }
        id
    }

    /// A trial ended (succeeded, dropped or ignored): it can no longer time out.
    fn end_trial(&self, locked: &mut Locked, epoch: u32, id: NonZeroU32) {
        locked.trials.retain(|t| (t.id, t.epoch) != (id, epoch));
        let oldest = locked.trials.iter().map(|t| t.deadline).min();
        self.trial_deadline
            .store(oldest.unwrap_or(u64::MAX), Release);
    }

    // --- outcomes ----------------------------------------------------------------------

    /// Counts an admitted call's outcome in the rules, for a call that was not slow,
    /// given when it ended (with a rule that needs it) and the thread's slot; may trip
    /// the breaker. A success is counted inline; the rest out of line.
    /// `TIMED`: the breaker has a time window or a slow-call rule (and `end` is set).
    #[inline(always)]
    pub(super) fn record<const TIMED: bool>(
        &self,
        epoch: u32,
        outcome: Outcome,
        end: Option<Instant>,
        slot: usize,
    ) {
        match outcome {
            Outcome::Ignored => {}
            Outcome::Success => {
                // Epoch-checked, so it needs no look at the state word.
                self.clear_failures(epoch);
                // A success that is not slow cannot trip a rule: no totals come back.
                // Closed in `epoch`, shedding or not.
                let closed = || Word(self.word().0 & !SHEDDING) == Word::new(CLOSED, epoch);
                match &self.window {
                    Some(Window::Time(w)) if closed() => {
                        w.record_success(if TIMED { end } else { None }, slot);
                    }
                    Some(Window::Count(w)) if closed() => w.record_success(slot),
                    _ => {}
                }
            }
            Outcome::Failure => self.record_timed(epoch, outcome, false, end, slot),
        }
    }

    /// Counts an admitted call's outcome in the rules, given whether it was slow and
    /// when it ended (with a rule that needs it); may trip the breaker. `slot` is the
    /// thread's, for a time window's per-thread counts.
    #[inline(never)]
    pub(super) fn record_timed(
        &self,
        epoch: u32,
        outcome: Outcome,
        slow: bool,
        end: Option<Instant>,
        slot: usize,
    ) {
        let word = self.word();
        if outcome == Outcome::Ignored || word.epoch() != epoch || word.kind() != CLOSED {
            return;
        }
        let failed = outcome == Outcome::Failure;
        let mut reason = None;
        if let Some(threshold) = self.config.consecutive {
            if failed {
                if self.add_failure(epoch) >= threshold {
                    reason = Some(Reason::ConsecutiveFailures);
                }
            } else {
                self.clear_failures(epoch);
            }
        }
        // With adaptive throttling, a failure's totals over the throttle's span too,
        // from the same read of a time window.
        let (totals, throttle_totals) = match &self.window {
            None => (None, None),
            Some(Window::Count(w)) => (w.record(failed, slow, slot), None),
            Some(Window::Time(w)) => self.record_in_time(w, failed, slow, end, slot),
        };
        if let (Some(totals), Some(rules)) = (totals, self.config.rates) {
            if totals.calls >= u64::from(rules.min_calls) {
                let rate = |n: u64| n as f64 / totals.calls as f64;
                if rules
                    .failure_rate
                    .is_some_and(|r| rate(totals.failures) >= r)
                {
                    reason = reason.or(Some(Reason::FailureRate));
                } else if rules.slow.is_some_and(|(_, r)| rate(totals.slow) >= r) {
                    reason = reason.or(Some(Reason::SlowCallRate));
                }
            }
        }
        if let Some(reason) = reason {
            self.reopen(epoch, CLOSED, reason);
        } else if let Some(totals) = throttle_totals {
            self.rethrottle(epoch, totals);
        }
    }

    /// Counts a failed or slow call that ended at `end` in the time window `w`: the
    /// window's totals after it, and with adaptive throttling those of the throttle's
    /// span. The coarse clock's tick may be taken unchecked (see
    /// [`TimeWindow::outcome_tick`]), but not acted on: totals that could trip a rule
    /// or move the throttle are read again at the real clock's tick if the coarse one
    /// turns out to lag. The throttle's totals come back only if they could move it.
    fn record_in_time(
        &self,
        w: &TimeWindow,
        failed: bool,
        slow: bool,
        end: Option<Instant>,
        slot: usize,
    ) -> (Option<Totals>, Option<Totals>) {
        let (tick, checked) = w.outcome_tick(end, slot);
        let may_act = |window, throttle| self.may_act(window, throttle);
        let throttled = self.throttle.is_some();
        let Some((mut totals, mut throttle, complete)) =
            w.record(failed, slow, tick, slot, throttled, may_act)
        else {
            return (None, None);
        };
        // Partial totals come back only when no rule could act on them. Asked only
        // where the answer is used: to confirm an unchecked tick, or for the throttle.
        let could_act =
            complete && (!checked || throttle.is_some()) && self.may_act(totals, throttle);
        if !checked && could_act {
            if let Some(clock) = w.confirm(tick) {
                totals = w.totals(clock);
                throttle = throttle.map(|_| w.throttle_totals(clock));
            }
        }
        // Totals that cannot move the throttle leave it where it is (not shedding):
        // it is not recomputed.
        (Some(totals), throttle.filter(|_| could_act))
    }

    /// Whether totals that may count fewer calls than the window holds (the same
    /// failed, slow and shed calls) could trip a rate rule, or move the throttle,
    /// were they complete: see [`TimeWindow::record`]. With more calls a rate only
    /// falls, and so does the throttle's excess of requests over `k` accepts
    /// (`k >= 1`), once there are as many calls as failures.
    fn may_act(&self, window: Totals, throttle: Option<Totals>) -> bool {
        let trips = self.config.rates.is_some_and(|rules| {
            let at_least =
                |n: u64, r: f64| window.calls == 0 || n as f64 / window.calls as f64 >= r;
            rules
                .failure_rate
                .is_some_and(|r| at_least(window.failures, r))
                || rules.slow.is_some_and(|(_, r)| at_least(window.slow, r))
        });
        let sheds = match (&self.throttle, throttle) {
            (Some(t), Some(totals)) => {
                // The excess is largest with as few calls as there are failures.
                let calls = totals.calls.max(totals.failures) as f64;
                let accepts = calls - totals.failures as f64;
                let excess = calls + totals.shed as f64 - t.k * accepts - t.protection;
                // Counts are whole: half a call of margin for rounding.
                t.p.load(Relaxed) != 0 || excess > -0.5
            }
            _ => false,
        };
        trips || sheds
    }

    /// Counts a failure in a row for `epoch`: the count now, or 0 if the epoch is over.
    ///
    /// The check and the add are one compare-exchange, so a failure admitted before a
    /// transition can never count toward the rules that start after it.
    fn add_failure(&self, epoch: u32) -> u32 {
        let mut current = self.consecutive.load(Relaxed);
        loop {
            if (current >> 32) as u32 != epoch {
                return 0;
            }
            let count = (current as u32).saturating_add(1);
            match self.consecutive.compare_exchange_weak(
                current,
                streak(epoch, count),
                Relaxed,
                Relaxed,
            ) {
                Ok(_) => return count,
                Err(actual) => current = actual,
            }
        }
    }

    /// A success for `epoch` ends the run of failures. The common case, a success after
    /// a success, only reads.
    #[inline]
    fn clear_failures(&self, epoch: u32) {
        let mut current = self.consecutive.load(Relaxed);
        while current as u32 != 0 && (current >> 32) as u32 == epoch {
            match self.consecutive.compare_exchange_weak(
                current,
                streak(epoch, 0),
                Relaxed,
                Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// A trial succeeded: count it, and close once all have.
    pub(super) fn trial_succeeded(&self, epoch: u32, id: NonZeroU32) {
        let mut word = self.word();
        loop {
            if word.epoch() != epoch || word.kind() != HALF_OPEN {
                return;
            }
            let next = word.with_succeeded(word.succeeded() + 1);
            match self
                .state
                .compare_exchange_weak(word.0, next.0, AcqRel, Acquire)
            {
                Ok(_) => break,
                Err(actual) => word = Word(actual),
            }
        }
        let mut locked = self.lock();
        self.end_trial(&mut locked, epoch, id);
        if word.succeeded() + 1 >= self.config.half_open_calls {
            let word = self.word();
            if word.epoch() == epoch
                && word.kind() == HALF_OPEN
                && word.succeeded() >= self.config.half_open_calls
            {
                self.close(&mut locked, word, CLOSED, Reason::TrialsSucceeded);
            }
        }
    }

    /// A trial was dropped or ignored: give its permit back, counting nothing.
    pub(super) fn release_trial(&self, epoch: u32, id: NonZeroU32) {
        let mut word = self.word();
        loop {
            if word.epoch() != epoch || word.kind() != HALF_OPEN || word.admitted() == 0 {
                return;
            }
            let next = word.with_admitted(word.admitted() - 1);
            match self
                .state
                .compare_exchange_weak(word.0, next.0, AcqRel, Acquire)
            {
                Ok(_) => {
                    let mut locked = self.lock();
                    self.end_trial(&mut locked, epoch, id);
                    drop(locked);
                    // Not a transition, but a permit is free: a service waiting in
                    // `Readiness::Wait` may now take it.
                    self.changed.notify_waiters();
                    return;
                }
                Err(actual) => word = Word(actual),
            }
        }
    }

    // --- transitions -------------------------------------------------------------------

    fn lock(&self) -> MutexGuard<'_, Locked> {
        // Nothing under this lock can leave the state inconsistent if it panics.
        self.locked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs `next` over `expected`, retrying while only the permit counts change.
    /// Must hold the lock: every other writer of the word holds it, or only changes
    /// permits, so the epoch cannot move under us.
    fn install(&self, mut expected: Word, next: Word) {
        while let Err(actual) = self
            .state
            .compare_exchange_weak(expected.0, next.0, AcqRel, Acquire)
        {
            expected = Word(actual);
        }
    }

    fn announce(&self, from: State, to: State, reason: Reason) {
        if let Some(member) = &self.member {
            member.set(
                matches!(to, State::Open | State::HalfOpen),
                to == State::Open,
            );
        }
        self.watch.send_replace(to);
        self.changed.notify_waiters();
        super::event::transition(&self.name, from, to, reason.as_str());
    }

    /// Opens the breaker if it is still in `from` at `epoch`.
    pub(super) fn reopen(&self, epoch: u32, from: u64, reason: Reason) {
        let mut locked = self.lock();
        let word = self.word();
        if word.epoch() != epoch || word.kind() != from {
            return;
        }
        let delay = locked.open_delays.next().unwrap_or_default();
        let now = self.now();
        self.open_until
            .store(now.saturating_add(nanos(delay)), Release);
        if self.watchdogs.load(Acquire) > 0 {
            // The watchdog probes an interval after it sees the trip; until its task
            // runs and says so, that is the estimate.
            let first = self.watchdog_first_probe.load(Acquire);
            if first > 0 {
                self.watchdog_eta
                    .store(now.saturating_add(first).max(1), Release);
            }
        }
        let next = Word::new(OPEN, epoch.wrapping_add(1));
        self.install(word, next);
        self.trips.fetch_add(1, Relaxed);
        self.announce(word.state(), State::Open, reason);
    }

    /// Open -> half-open after the open delay; the caller gets the first trial.
    fn to_half_open(&self, word: Word, now: u64) -> Option<Admission> {
        let mut locked = self.lock();
        if self.word() != word {
            return None;
        }
        let epoch = word.epoch().wrapping_add(1);
        locked.trials.clear();
        self.trial_deadline.store(u64::MAX, Release);
        self.install(word, Word::new(HALF_OPEN, epoch).with_admitted(1));
        let id = self.start_trial(&mut locked, epoch, now);
        self.announce(State::Open, State::HalfOpen, Reason::OpenElapsed);
        Some(Admission::Trial { epoch, id })
    }

    /// Moves to a closed kind with fresh rules and a fresh open backoff.
    fn close(&self, locked: &mut Locked, word: Word, kind: u64, reason: Reason) {
        let next = Word::new(kind, word.epoch().wrapping_add(1));
        self.start_over(locked, next.epoch());
        self.install(word, next);
        self.announce(word.state(), next.state(), reason);
    }

    /// Fresh rules for `epoch` and a fresh open backoff: what closing (or a reset)
    /// starts with. Done before the epoch is installed, which publishes it.
    fn start_over(&self, locked: &mut Locked, epoch: u32) {
        self.consecutive.store(streak(epoch, 0), Relaxed);
        if let Some(t) = &self.throttle {
            t.p.store(0, Relaxed);
        }
        match &self.window {
            Some(Window::Count(w)) => w.reset(),
            Some(Window::Time(w)) => w.reset(),
            None => {}
        }
        locked.open_delays.reset();
    }

    // --- watchdog hooks ------------------------------------------------------------------

    /// A watchdog starts owning recovery; after a trip it probes first `interval`
    /// later (with several watchdogs, the last attached gives the estimate).
    pub(crate) fn attach_watchdog(&self, interval: Duration) {
        self.watchdog_first_probe
            .store(nanos(interval).max(1), Release);
        if self.word().kind() == OPEN {
            // A watchdog that finds the breaker open probes at once.
            self.watchdog_eta.store(self.now().max(1), Release);
        }
        self.watchdogs.fetch_add(1, AcqRel);
    }

    /// A watchdog ended: with none left, an open breaker recovers on its own timer.
    pub(crate) fn detach_watchdog(&self) {
        let _ = self
            .watchdogs
            .fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
    }

    /// When a watchdog's next probe is due (or its running probe's timeout ends).
    pub(crate) fn set_watchdog_eta(&self, at: Option<Instant>) {
        let nanos = at.map_or(0, |at| self.since_start(at).max(1));
        self.watchdog_eta.store(nanos, Release);
    }

    fn watchdog_retry_after(&self) -> Option<Duration> {
        match self.watchdog_eta.load(Acquire) {
            0 => None,
            eta => Some(hint(eta.saturating_sub(self.now()))),
        }
    }

    /// Takes the breaker's probe lock; `false` if another watchdog is probing.
    pub(crate) fn try_lock_probe(&self) -> bool {
        !self.probing.swap(true, AcqRel)
    }

    pub(crate) fn unlock_probe(&self) {
        self.probing.store(false, Release);
    }

    /// One watchdog reports (or withdraws) an escalation; each withdraws only its own.
    pub(crate) fn set_escalated(&self, escalated: bool) {
        if escalated {
            self.escalated.fetch_add(1, AcqRel);
        } else {
            let _ = self
                .escalated
                .fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
        }
    }

    pub(crate) fn is_escalated(&self) -> bool {
        self.escalated.load(Acquire) > 0
    }

    /// Probes passed: an open or half-open breaker closes.
    pub(crate) fn close_by_probe(&self) -> bool {
        let mut locked = self.lock();
        let word = self.word();
        if matches!(word.kind(), OPEN | HALF_OPEN) {
            self.close(&mut locked, word, CLOSED, Reason::ProbesSucceeded);
            true
        } else {
            false
        }
    }

    /// Probes of a closed breaker failed: it opens before real traffic fails.
    pub(crate) fn open_by_probe(&self) -> bool {
        let word = self.word();
        if word.kind() != CLOSED {
            return false;
        }
        self.reopen(word.epoch(), CLOSED, Reason::ProbesFailed);
        self.word().kind() == OPEN
    }

    /// `force_open`, `force_closed` and `reset`.
    pub(crate) fn set(&self, to: State) {
        let mut locked = self.lock();
        let word = self.word();
        let kind = kind_of(to);
        let reason = if to == State::Closed {
            Reason::Reset
        } else {
            Reason::Forced
        };
        if kind == CLOSED {
            // Reset always starts over, even from closed, but only a change is announced.
            if word.kind() == CLOSED {
                self.start_over(&mut locked, word.epoch());
            } else {
                self.close(&mut locked, word, CLOSED, reason);
            }
        } else if word.kind() != kind {
            let next = Word::new(kind, word.epoch().wrapping_add(1));
            self.install(word, next);
            self.announce(word.state(), to, reason);
        }
    }
}

// --- readiness::wait hooks ----------------------------------------------------------------

impl Shared {
    /// Whether `poll_ready` waits while the breaker rejects (`Readiness::Wait`).
    pub(crate) fn waits(&self) -> bool {
        self.config.readiness == super::Readiness::Wait
    }

    /// Completes at the next transition; register it (poll it) before deciding.
    pub(crate) fn changed(&self) -> OwnedNotified {
        self.changed.clone().notified_owned()
    }

    /// How long until deciding again could give a different answer without a
    /// transition: the end of the open delay (no watchdog attached), or the deadline
    /// of the youngest half-open trial. `None`: only a transition can change it.
    pub(crate) fn next_decision(&self) -> Option<Duration> {
        let until = match self.word().kind() {
            OPEN if self.watchdogs.load(Acquire) == 0 => self.open_until.load(Acquire),
            HALF_OPEN => self.trial_deadline.load(Acquire),
            _ => return None,
        };
        Some(Duration::from_nanos(until.saturating_sub(self.now())))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Breaker;
    use super::*;

    fn totals(calls: u64, failures: u64, slow: u64, shed: u64) -> Totals {
        Totals {
            calls,
            failures,
            slow,
            shed,
        }
    }

    #[test]
    fn a_failure_trips_on_an_unchecked_tick_only_once_the_real_clock_confirms_it() {
        // No runtime: no ticker; the coarse clock is set by hand. 10 failures in 10
        // calls trip the breaker; 9 are counted with their end, at a tick of their own.
        let build = || {
            Breaker::builder("t")
                .time_window(Duration::from_secs(10))
                .failure_rate(0.5)
                .min_calls(10)
                .build()
                .unwrap()
        };
        let trips = |ahead: u64| {
            let breaker = build();
            let shared = &breaker.shared;
            let Some(Window::Time(w)) = &shared.window else {
                unreachable!("a time window was set");
            };
            let epoch = shared.word().epoch();
            // `ahead` ticks (seconds) after the real clock's.
            let end = Instant::now() + Duration::from_secs(ahead);
            let tick = w.tick_of(end);
            for _ in 0..9 {
                shared.record_timed(epoch, Outcome::Failure, false, Some(end), 0);
            }
            assert_eq!(shared.state(), State::Closed);
            w.publish_coarse(tick);
            // The 10th on the coarse tick, unchecked.
            shared.record_timed(epoch, Outcome::Failure, false, None, 0);
            (
                shared.state() != State::Closed,
                w.coarse_tick() == Some(tick),
            )
        };
        // The coarse tick agrees with the real clock: it trips.
        assert_eq!(trips(0), (true, true));
        // 20 ticks ahead: the real clock's window holds none of the ten, so it does
        // not trip, and the coarse clock is off.
        assert_eq!(trips(20), (false, false));
    }

    #[test]
    fn partial_totals_are_completed_only_when_complete_ones_could_act() {
        let breaker = Breaker::builder("t")
            .time_window(Duration::from_secs(10))
            .failure_rate(0.8)
            .min_calls(20)
            .adaptive_throttling(2.0)
            .build()
            .unwrap();
        let shared = &breaker.shared;
        // The rate rule: 33 of 45 is below 0.8, and more calls only lower it.
        assert!(!shared.may_act(totals(45, 33, 0, 0), None));
        assert!(shared.may_act(totals(40, 32, 0, 0), None));
        assert!(shared.may_act(totals(0, 1, 0, 0), None));
        // The throttle (k = 2, 20 requests never shed): 45 requests exceed twice 12
        // accepts by 21, past the 20; with 13 accepts they do not.
        let both = |t: Totals| shared.may_act(t, Some(t));
        assert!(both(totals(45, 33, 0, 0)));
        assert!(!both(totals(45, 32, 0, 0)));
        // Shed calls are requests too.
        assert!(both(totals(45, 32, 0, 2)));
        // Already shedding: the throttle is always brought up to date.
        let throttle = shared.throttle.as_ref().unwrap();
        throttle.p.store(1, Relaxed);
        assert!(both(totals(45, 32, 0, 0)));
        throttle.p.store(0, Relaxed);

        let breaker = Breaker::builder("slow")
            .time_window(Duration::from_secs(10))
            .failure_rate(0.5)
            .slow_calls(Duration::from_secs(1), 0.5)
            .build()
            .unwrap();
        let shared = &breaker.shared;
        assert!(shared.may_act(totals(10, 0, 5, 0), None));
        assert!(!shared.may_act(totals(10, 4, 4, 0), None));
        assert!(shared.may_act(totals(10, 5, 0, 0), None));
    }
}
