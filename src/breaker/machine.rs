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
//! Cumulative counters are striped over cache-padded shards picked by thread, so two
//! threads sharing one breaker do not bounce a cache line on every call. A response
//! future holds an `Arc` of its shard rather than of the shared state for the same reason.

use std::cell::Cell;
use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::{futures::OwnedNotified, watch, Notify};
use tokio::time::Instant;

use super::builder::{Config, WindowKind};
use super::window::{CountWindow, TimeWindow, Totals};
use super::State;
use crate::backoff;
use crate::config::nanos;
use crate::stripe::{bump, handle, parallelism, pick};
use crate::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use crate::sync::{Mutex, MutexGuard};
use crate::Outcome;

// --- the state word --------------------------------------------------------------------

const KIND_BITS: u32 = 4;
const PERMIT_BITS: u32 = 14;
const PERMIT_MASK: u64 = (1 << PERMIT_BITS) - 1;
const ADMITTED_SHIFT: u32 = KIND_BITS;
const SUCCEEDED_SHIFT: u32 = KIND_BITS + PERMIT_BITS;
const EPOCH_SHIFT: u32 = 32;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FORCED_OPEN: u64 = 3;
const FORCED_CLOSED: u64 = 4;

/// A decoded copy of the state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word(u64);

impl Word {
    fn new(kind: u64, epoch: u32) -> Self {
        Word(kind | u64::from(epoch) << EPOCH_SHIFT)
    }
    fn kind(self) -> u64 {
        self.0 & ((1 << KIND_BITS) - 1)
    }
    fn epoch(self) -> u32 {
        (self.0 >> EPOCH_SHIFT) as u32
    }
    fn admitted(self) -> u32 {
        ((self.0 >> ADMITTED_SHIFT) & PERMIT_MASK) as u32
    }
    fn succeeded(self) -> u32 {
        ((self.0 >> SUCCEEDED_SHIFT) & PERMIT_MASK) as u32
    }
    fn with_admitted(self, n: u32) -> Self {
        Word(self.0 & !(PERMIT_MASK << ADMITTED_SHIFT) | u64::from(n) << ADMITTED_SHIFT)
    }
    fn with_succeeded(self, n: u32) -> Self {
        Word(self.0 & !(PERMIT_MASK << SUCCEEDED_SHIFT) | u64::from(n) << SUCCEEDED_SHIFT)
    }
    fn state(self) -> State {
        match self.kind() {
            CLOSED => State::Closed,
            OPEN => State::Open,
            HALF_OPEN => State::HalfOpen,
            FORCED_OPEN => State::ForcedOpen,
            _ => State::ForcedClosed,
        }
    }
}

/// The consecutive-failure word: the epoch of the closed state the failures were
/// counted in (high half) and their number (low half).
fn streak(epoch: u32, count: u32) -> u64 {
    u64::from(epoch) << 32 | u64::from(count)
}

fn kind_of(state: State) -> u64 {
    match state {
        State::Closed => CLOSED,
        State::Open => OPEN,
        State::HalfOpen => HALF_OPEN,
        State::ForcedOpen => FORCED_OPEN,
        State::ForcedClosed => FORCED_CLOSED,
    }
}

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

// --- counters ----------------------------------------------------------------------------

/// A handle on the shared state, one per thread slot: a response future clones the
/// handle of its thread, so threads sharing a breaker do not bounce one refcount.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Shard {
    pub(crate) shared: Arc<Shared>,
    /// Copies of `Shared::time_end` and whether a call's start must be timed, kept on
    /// the line the call just touched to clone this handle.
    time_end: bool,
    time_start: bool,
}

/// One stripe of the cumulative counters.
///
/// Each stripe but the last belongs to one thread slot (see [`thread_slot`]) and is
/// written only by the thread holding that slot, with a plain load and store instead
/// of a read-modify-write. The last stripe is shared by threads without a stripe of
/// their own and uses `fetch_add`.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Counters {
    successes: AtomicU64,
    failures: AtomicU64,
    ignored: AtomicU64,
    slow: AtomicU64,
    rejected: AtomicU64,
}

/// Cumulative totals summed over the stripes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) successes: u64,
    pub(crate) failures: u64,
    pub(crate) ignored: u64,
    pub(crate) slow: u64,
    pub(crate) rejected: u64,
}

// --- the shared state --------------------------------------------------------------------

// One per breaker, and boxing the count window would add a pointer hop per call.
#[allow(clippy::large_enum_variant)]
enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

/// State touched only by transitions and half-open trials, under the mutex.
struct Slow {
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
    config: Config,
    /// Whether a call's end must be timed (a time window or a slow-call rule).
    pub(crate) time_end: bool,
    /// The slow-call threshold, when a call's start must be timed.
    pub(crate) slow_threshold: Option<Duration>,
    start: Instant,
    pub(crate) name: Arc<str>,
    trips: AtomicU64,
    counters: Box<[Counters]>,
    /// Watchdogs attached: while any is, an open breaker waits for them to close it
    /// instead of going half-open on its own timer.
    watchdogs: AtomicUsize,
    /// Held by the one watchdog probing this breaker.
    probing: AtomicBool,
    /// Nanoseconds since `start` at which a watchdog expects to close the breaker if
    /// its probes pass; 0 when unknown.
    watchdog_eta: AtomicU64,
    /// Watchdogs reporting the dependency escalated.
    escalated: AtomicUsize,
    slow_path: Mutex<Slow>,
    watch: watch::Sender<State>,
    /// Woken on every transition: services in `Readiness::Wait` waiting in `poll_ready`.
    changed: Arc<Notify>,
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
/// counter shards (which point back at the shared state, never the other way).
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) shared: Arc<Shared>,
    shards: Box<[Arc<Shard>]>,
    /// Dropped with the last `Breaker`: watchdogs see their receivers close and end.
    alive: watch::Sender<()>,
}

impl Core {
    pub(crate) fn new(name: Arc<str>, config: Config) -> Self {
        let start = Instant::now();
        let parallelism = parallelism();
        let mut open_delays = config.open_backoff.iter();
        let (kind, open_until) = if config.start_open {
            (OPEN, nanos(open_delays.next().unwrap_or_default()))
        } else {
            (CLOSED, 0)
        };
        let initial = Word::new(kind, 0);
        let (window, slow_threshold) = match config.rates {
            Some(r) => {
                let window = match r.window {
                    WindowKind::Count(n) => Window::Count(CountWindow::new(n, r.slow.is_some())),
                    WindowKind::Time(t) => Window::Time(TimeWindow::new(t)),
                };
                (Some(window), r.slow.map(|(t, _)| t))
            }
            None => (None, None),
        };
        let time_end = slow_threshold.is_some() || matches!(window, Some(Window::Time(_)));
        let shared = Arc::new(Shared {
            state: AtomicU64::new(initial.0),
            consecutive: AtomicU64::new(streak(0, 0)),
            open_until: AtomicU64::new(open_until),
            trial_deadline: AtomicU64::new(u64::MAX),
            window,
            time_end,
            slow_threshold,
            start,
            name,
            trips: AtomicU64::new(0),
            counters: (0..=stripes(parallelism))
                .map(|_| Counters::default())
                .collect(),
            watchdogs: AtomicUsize::new(0),
            probing: AtomicBool::new(false),
            watchdog_eta: AtomicU64::new(0),
            escalated: AtomicUsize::new(0),
            slow_path: Mutex::new(Slow {
                open_delays,
                trials: Vec::with_capacity(config.half_open_calls as usize),
                next_trial: 0,
            }),
            watch: watch::channel(initial.state()).0,
            changed: Arc::new(Notify::new()),
            config,
        });
        let handles = (parallelism * 2).next_power_of_two().min(64);
        let shards = (0..handles)
            .map(|_| {
                Arc::new(Shard {
                    shared: shared.clone(),
                    time_end: shared.time_end,
                    time_start: shared.slow_threshold.is_some(),
                })
            })
            .collect();
        Self {
            shared,
            shards,
            alive: watch::channel(()).0,
        }
    }

    /// The shard for the calling thread.
    #[inline]
    pub(crate) fn shard(&self) -> &Arc<Shard> {
        &self.shards[handle(self.shards.len())]
    }

    /// A counted reference to a shard for one call: the one this thread's last
    /// finished call gave back (see [`LEASE`]) when it belongs to this breaker, else a
    /// clone of the thread's shard.
    #[inline]
    pub(crate) fn lease(&self) -> Arc<Shard> {
        match LEASE.try_with(Cell::take) {
            Ok(Some(held)) if Arc::ptr_eq(&held.shared, &self.shared) => held,
            // Another breaker's (dropped here), none, or thread-locals torn down.
            _ => self.shard().clone(),
        }
    }

    /// Closes when the last `Breaker` handle is dropped.
    pub(crate) fn alive(&self) -> watch::Receiver<()> {
        self.alive.subscribe()
    }

    pub(crate) fn counts(&self) -> Counts {
        self.shared
            .counters
            .iter()
            .fold(Counts::default(), |c, s| Counts {
                successes: c.successes + s.successes.load(Relaxed),
                failures: c.failures + s.failures.load(Relaxed),
                ignored: c.ignored + s.ignored.load(Relaxed),
                slow: c.slow + s.slow.load(Relaxed),
                rejected: c.rejected + s.rejected.load(Relaxed),
            })
    }
}

/// Counter stripes owned by thread slots: enough for every thread of a typical
/// runtime; threads beyond them share the last stripe.
fn stripes(parallelism: usize) -> usize {
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
    fn now(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.start))
    }

    /// This thread's counter stripe, and whether the thread owns it.
    #[inline]
    fn stripe(&self) -> (&Counters, bool) {
        let (i, owned) = pick(self.counters.len());
        (&self.counters[i], owned)
    }

    #[inline]
    fn count(&self, outcome: Outcome, slow: bool) {
        let (c, owned) = self.stripe();
        let counter = match outcome {
            Outcome::Success => &c.successes,
            Outcome::Failure => &c.failures,
            Outcome::Ignored => &c.ignored,
        };
        bump(counter, owned);
        if slow {
            bump(&c.slow, owned);
        }
    }

    #[inline]
    pub(crate) fn count_rejected(&self) {
        let (c, owned) = self.stripe();
        bump(&c.rejected, owned);
    }

    pub(crate) fn trips(&self) -> u64 {
        self.trips.load(Relaxed)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<State> {
        self.watch.subscribe()
    }

    /// Time left before an open breaker may go half-open; `None` unless open, or
    /// while a watchdog owns recovery.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        if self.word().kind() != OPEN {
            return None;
        }
        if self.watchdogs.load(Acquire) > 0 {
            return self.watchdog_retry_after();
        }
        Some({
            let until = self.open_until.load(Acquire);
            Duration::from_nanos(until.saturating_sub(self.now()))
        })
    }

    /// The failure rate of the current window, if there is a window.
    pub(crate) fn window_totals(&self) -> Option<Totals> {
        match self.window.as_ref()? {
            Window::Count(w) => Some(w.totals()),
            Window::Time(w) => Some(w.totals(w.tick(self.now()))),
        }
    }

    // --- admission ---------------------------------------------------------------------

    /// Decides whether a call may go through now.
    #[inline]
    pub(crate) fn admit(&self) -> Admission {
        let word = self.word();
        match word.kind() {
            CLOSED | FORCED_CLOSED => Admission::Pass {
                epoch: word.epoch(),
            },
            _ => self.admit_slow(word),
        }
    }

    /// The epoch if the breaker lets every call through (closed or forced closed).
    #[inline(always)]
    pub(crate) fn admit_closed(&self) -> Option<u32> {
        let word = self.word();
        matches!(word.kind(), CLOSED | FORCED_CLOSED).then(|| word.epoch())
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
                        return Admission::Reject {
                            retry_after: self.watchdog_retry_after(),
                        };
                    }
                    let now = self.now();
                    let until = self.open_until.load(Acquire);
                    if now < until {
                        return Admission::Reject {
                            retry_after: Some(Duration::from_nanos(until - now)),
                        };
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
                return Some(Admission::Reject { retry_after: None });
            }
            let next = word.with_admitted(word.admitted() + 1);
            match self
                .state
                .compare_exchange_weak(word.0, next.0, AcqRel, Acquire)
            {
                Ok(_) => {
                    let mut slow = self.lock();
                    let id = self.start_trial(&mut slow, word.epoch(), now);
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
    fn start_trial(&self, slow: &mut Slow, epoch: u32, now: u64) -> NonZeroU32 {
        slow.next_trial = slow.next_trial.wrapping_add(1);
        let id = NonZeroU32::new(slow.next_trial).unwrap_or(NonZeroU32::MIN);
        let word = self.word();
        if word.epoch() == epoch && word.kind() == HALF_OPEN {
            let deadline = now.saturating_add(nanos(self.config.half_open_timeout));
            slow.trials.push(Trial {
                id,
                epoch,
                deadline,
            });
            self.trial_deadline.fetch_min(deadline, AcqRel);
        }
        id
    }

    /// A trial ended (succeeded, dropped or ignored): it can no longer time out.
    fn end_trial(&self, slow: &mut Slow, epoch: u32, id: NonZeroU32) {
        slow.trials.retain(|t| (t.id, t.epoch) != (id, epoch));
        let oldest = slow.trials.iter().map(|t| t.deadline).min();
        self.trial_deadline
            .store(oldest.unwrap_or(u64::MAX), Release);
    }

    // --- outcomes ----------------------------------------------------------------------

    /// Counts an admitted call's outcome in the rules; may trip the breaker.
    #[inline]
    fn record(&self, epoch: u32, outcome: Outcome, slow: bool, end: u64) {
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
        let totals = match &self.window {
            None => None,
            Some(Window::Count(w)) => w.record(failed, slow),
            Some(Window::Time(w)) => {
                // `time_end` is set with a time window, so `end` is the call's end.
                w.record(failed, slow, w.tick(end))
            }
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
        }
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
    fn trial_succeeded(&self, epoch: u32, id: NonZeroU32) {
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
        let mut slow = self.lock();
        self.end_trial(&mut slow, epoch, id);
        if word.succeeded() + 1 >= self.config.half_open_calls {
            let word = self.word();
            if word.epoch() == epoch
                && word.kind() == HALF_OPEN
                && word.succeeded() >= self.config.half_open_calls
            {
                self.close(&mut slow, word, CLOSED, Reason::TrialsSucceeded);
            }
        }
    }

    /// A trial was dropped or ignored: give its permit back, counting nothing.
    fn release_trial(&self, epoch: u32, id: NonZeroU32) {
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
                    let mut slow = self.lock();
                    return self.end_trial(&mut slow, epoch, id);
                }
                Err(actual) => word = Word(actual),
            }
        }
    }

    // --- transitions -------------------------------------------------------------------

    fn lock(&self) -> MutexGuard<'_, Slow> {
        // Nothing under this lock can leave the state inconsistent if it panics.
        self.slow_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
        self.watch.send_replace(to);
        self.changed.notify_waiters();
        super::event::transition(&self.name, from, to, reason.as_str());
    }

    /// Opens the breaker if it is still in `from` at `epoch`.
    fn reopen(&self, epoch: u32, from: u64, reason: Reason) {
        let mut slow = self.lock();
        let word = self.word();
        if word.epoch() != epoch || word.kind() != from {
            return;
        }
        let delay = slow.open_delays.next().unwrap_or_default();
        self.open_until
            .store(self.now().saturating_add(nanos(delay)), Release);
        let next = Word::new(OPEN, epoch.wrapping_add(1));
        self.install(word, next);
        self.trips.fetch_add(1, Relaxed);
        self.announce(word.state(), State::Open, reason);
    }

    /// Open -> half-open after the open delay; the caller gets the first trial.
    fn to_half_open(&self, word: Word, now: u64) -> Option<Admission> {
        let mut slow = self.lock();
        if self.word() != word {
            return None;
        }
        let epoch = word.epoch().wrapping_add(1);
        slow.trials.clear();
        self.trial_deadline.store(u64::MAX, Release);
        self.install(word, Word::new(HALF_OPEN, epoch).with_admitted(1));
        let id = self.start_trial(&mut slow, epoch, now);
        self.announce(State::Open, State::HalfOpen, Reason::OpenElapsed);
        Some(Admission::Trial { epoch, id })
    }

    /// Moves to a closed kind with fresh rules and a fresh open backoff.
    fn close(&self, slow: &mut Slow, word: Word, kind: u64, reason: Reason) {
        let next = Word::new(kind, word.epoch().wrapping_add(1));
        self.start_over(slow, next.epoch());
        self.install(word, next);
        self.announce(word.state(), next.state(), reason);
    }

    /// Fresh rules for `epoch` and a fresh open backoff: what closing (or a reset)
    /// starts with. Done before the epoch is installed, which publishes it.
    fn start_over(&self, slow: &mut Slow, epoch: u32) {
        self.consecutive.store(streak(epoch, 0), Relaxed);
        match &self.window {
            Some(Window::Count(w)) => w.reset(),
            Some(Window::Time(w)) => w.reset(),
            None => {}
        }
        slow.open_delays.reset();
    }

    // --- watchdog hooks ------------------------------------------------------------------

    pub(crate) fn attach_watchdog(&self) {
        self.watchdogs.fetch_add(1, AcqRel);
    }

    /// A watchdog ended: with none left, an open breaker recovers on its own timer.
    pub(crate) fn detach_watchdog(&self) {
        let _ = self
            .watchdogs
            .fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
    }

    /// A watchdog's estimate of when its probes could close the breaker.
    pub(crate) fn set_watchdog_eta(&self, at: Option<Instant>) {
        let nanos = at.map_or(0, |at| {
            nanos(at.saturating_duration_since(self.start)).max(1)
        });
        self.watchdog_eta.store(nanos, Release);
    }

    fn watchdog_retry_after(&self) -> Option<Duration> {
        match self.watchdog_eta.load(Acquire) {
            0 => None,
            eta => Some(Duration::from_nanos(eta.saturating_sub(self.now()))),
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
        let mut slow = self.lock();
        let word = self.word();
        if matches!(word.kind(), OPEN | HALF_OPEN) {
            self.close(&mut slow, word, CLOSED, Reason::ProbesSucceeded);
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
        let mut slow = self.lock();
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
                self.start_over(&mut slow, word.epoch());
            } else {
                self.close(&mut slow, word, CLOSED, reason);
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

// --- the per-call recorder ---------------------------------------------------------------

// `std`'s even under loom: which thread reuses a reference is not part of the model.
std::thread_local! {
    /// The shard reference of this thread's last finished call, kept for its next
    /// call. A response future must keep its breaker alive, and cloning and dropping
    /// an `Arc` for every call are two atomic read-modify-writes, the largest part of
    /// a closed-state call; a call that takes the reference its predecessor left here
    /// does neither. It holds at most one shard per thread, so a dropped breaker's
    /// shared state (not its watchdogs, which follow the `Breaker` handles) lives on
    /// until the thread's next call through another breaker, or its exit.
    static LEASE: Cell<Option<Arc<Shard>>> = const { Cell::new(None) };
}

/// Keeps `shard` for this thread's next call (see [`LEASE`]).
#[inline]
fn give_back(shard: Arc<Shard>) {
    // A reference it replaces, and `shard` itself while thread-locals are being torn
    // down, are dropped here.
    let _ = LEASE.try_with(move |lease| drop(lease.replace(Some(shard))));
}

/// Carried by a response future from admission to outcome. Dropping a trial's
/// recorder before [`Recorder::finish`] gives its permit back and counts nothing.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// `None` only once dropped (given back to [`LEASE`]).
    shard: Option<Arc<Shard>>,
    epoch: u32,
    /// The id of a half-open trial whose permit is still held.
    trial: Option<NonZeroU32>,
    /// When the call started, in nanoseconds since the breaker's start; only with a
    /// slow-call rule.
    start: u64,
}

impl Recorder {
    #[inline]
    pub(crate) fn new(shard: Arc<Shard>, admission: Admission) -> Option<Self> {
        let (epoch, trial) = match admission {
            Admission::Pass { epoch } => (epoch, None),
            Admission::Trial { epoch, id } => (epoch, Some(id)),
            Admission::Reject { .. } => return None,
        };
        let mut recorder = Self {
            shard: Some(shard),
            epoch,
            trial,
            start: 0,
        };
        recorder.restart();
        Some(recorder)
    }

    /// Restarts the call's clock (a trial permit is taken before its call starts).
    #[inline]
    pub(crate) fn restart(&mut self) {
        if let Some(shard) = self.shard.as_deref().filter(|shard| shard.time_start) {
            self.start = shard.shared.now();
        }
    }

    /// Counts the call's outcome. Done in place (the recorder is dropped after): moving
    /// it out of the future first costs more than the rest of the work.
    #[inline]
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        let Some(shard) = self.shard.as_deref() else {
            return;
        };
        let trial = self.trial.take();
        let shared = &*shard.shared;
        let end = if shard.time_end { shared.now() } else { 0 };
        let slow = shard.time_start
            && outcome != Outcome::Ignored
            && shared
                .slow_threshold
                .is_some_and(|t| end.saturating_sub(self.start) > nanos(t));
        shared.count(outcome, slow);
        if let Some(id) = trial {
            match outcome {
                Outcome::Success if !slow => shared.trial_succeeded(self.epoch, id),
                Outcome::Ignored => shared.release_trial(self.epoch, id),
                _ => shared.reopen(self.epoch, HALF_OPEN, Reason::TrialFailed),
            }
        } else {
            shared.record(self.epoch, outcome, slow, end);
        }
    }
}

impl Drop for Recorder {
    #[inline]
    fn drop(&mut self) {
        if let Some(shard) = self.shard.take() {
            if let Some(id) = self.trial {
                shard.shared.release_trial(self.epoch, id);
            }
            give_back(shard);
        }
    }
}
