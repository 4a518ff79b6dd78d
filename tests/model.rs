//! Model-based tests: random sequences of operations applied to the real breaker (through
//! its tower service, on paused time) and to a small reference model written from
//! DESIGN.md; state, rejections, the watch channel and every `Snapshot` figure must agree
//! after every step.
//!
//! Operations: a call that completes at once with each outcome, a call started and left
//! in flight (to be finished later, after time passed, or dropped), time passing, and
//! `force_open` / `force_closed` / `reset`. Slow calls, hung trials past
//! `half_open_timeout` and calls that complete after a transition all come out of
//! those.
//!
//! CI runs a fixed, seeded number of cases. More with
//! `STEADFAST_MODEL_CASES=100000 cargo test --all-features --test model -- --nocapture`
//! (`STEADFAST_MODEL_SEED=n` picks another seed).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed, TestCaseError, TestRunner};
use steadfast::backoff::{self, Backoff, Jitter};
use steadfast::breaker::error::Open;
use steadfast::breaker::{Breaker, BreakerBuilder, BreakerService, State};
use steadfast::{BoxError, Outcome};
use tokio::sync::oneshot;
use tower::{Service, ServiceExt};

const MS: u64 = 1_000_000;

/// How often the cases reached each interesting event, so a generator that stops
/// reaching them fails the test instead of passing vacuously.
#[derive(Debug, Default)]
struct Coverage {
    trips_from_closed: AtomicU64,
    trial_failed: AtomicU64,
    trial_timed_out: AtomicU64,
    closed_by_trials: AtomicU64,
    slow_calls: AtomicU64,
    stale_outcomes: AtomicU64,
    dropped_trials: AtomicU64,
}

static COVERAGE: Coverage = Coverage {
    trips_from_closed: AtomicU64::new(0),
    trial_failed: AtomicU64::new(0),
    trial_timed_out: AtomicU64::new(0),
    closed_by_trials: AtomicU64::new(0),
    slow_calls: AtomicU64::new(0),
    stale_outcomes: AtomicU64::new(0),
    dropped_trials: AtomicU64::new(0),
};

fn hit(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
const CI_CASES: u32 = 1000;
const MAX_IN_FLIGHT: usize = 6;

// --- the configurations ------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Win {
    Count(u32),
    Time(u64),
}

/// A breaker configuration as the builder is given it (each `None` is a setter not
/// called).
#[derive(Debug, Clone)]
struct Rules {
    consecutive: Option<u32>,
    rate: Option<f64>,
    /// Threshold in ms, rate.
    slow: Option<(u64, f64)>,
    window: Option<Win>,
    min_calls: Option<u32>,
    half_open_calls: u32,
    half_open_timeout_ms: u64,
    backoff: Backoff,
    start_open: bool,
}

impl Rules {
    fn builder(&self) -> BreakerBuilder {
        let mut b = Breaker::builder("model")
            .half_open_calls(self.half_open_calls)
            .half_open_timeout(Duration::from_millis(self.half_open_timeout_ms))
            .open_backoff(self.backoff);
        if let Some(n) = self.consecutive {
            b = b.consecutive_failures(n);
        }
        if let Some(r) = self.rate {
            b = b.failure_rate(r);
        }
        if let Some((t, r)) = self.slow {
            b = b.slow_calls(Duration::from_millis(t), r);
        }
        match self.window {
            Some(Win::Count(n)) => b = b.count_window(n),
            Some(Win::Time(ms)) => b = b.time_window(Duration::from_millis(ms)),
            None => {}
        }
        if let Some(m) = self.min_calls {
            b = b.min_calls(m);
        }
        if self.start_open {
            b = b.start_open();
        }
        b
    }
}

fn backoff_strategy() -> impl Strategy<Value = Backoff> {
    (
        prop_oneof![Just(20u64), Just(100), Just(1000)],
        prop_oneof![Just(1u64), Just(4)],
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated)
        ],
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(base, mult, jitter, seed, constant)| {
            let base = Duration::from_millis(base);
            let b = if constant {
                Backoff::constant(base)
            } else {
                Backoff::exponential(base, base * mult as u32)
            };
            b.jitter(jitter).seed(seed)
        })
}

fn rate() -> impl Strategy<Value = f64> {
    prop_oneof![Just(0.25), Just(0.5), Just(0.6), Just(1.0)]
}

fn count_window() -> impl Strategy<Value = (Win, Option<u32>)> {
    (1u32..=8).prop_flat_map(|n| (Just(Win::Count(n)), proptest::option::of(1..=n)))
}

fn time_window() -> impl Strategy<Value = (Win, Option<u32>)> {
    (
        prop_oneof![Just(100u64), Just(1000)].prop_map(Win::Time),
        proptest::option::of(1u32..=6),
    )
}

fn any_window() -> impl Strategy<Value = (Win, Option<u32>)> {
    prop_oneof![count_window(), time_window()]
}

#[derive(Debug, Clone)]
struct Shape {
    consecutive: Option<u32>,
    rate: Option<f64>,
    slow: Option<(u64, f64)>,
    window: Option<(Win, Option<u32>)>,
}

/// The rule sets: each rule alone, combinations, and the defaults.
fn shape() -> impl Strategy<Value = Shape> {
    let slow = || rate().prop_map(|r| (50u64, r));
    prop_oneof![
        (1u32..=4).prop_map(|n| Shape {
            consecutive: Some(n),
            rate: None,
            slow: None,
            window: None,
        }),
        (rate(), count_window()).prop_map(|(r, w)| Shape {
            consecutive: None,
            rate: Some(r),
            slow: None,
            window: Some(w),
        }),
        (rate(), time_window()).prop_map(|(r, w)| Shape {
            consecutive: None,
            rate: Some(r),
            slow: None,
            window: Some(w),
        }),
        (slow(), any_window()).prop_map(|(s, w)| Shape {
            consecutive: None,
            rate: None,
            slow: Some(s),
            window: Some(w),
        }),
        (1u32..=4, rate(), slow(), any_window()).prop_map(|(n, r, s, w)| Shape {
            consecutive: Some(n),
            rate: Some(r),
            slow: Some(s),
            window: Some(w),
        }),
        (1u32..=4, rate(), any_window()).prop_map(|(n, r, w)| Shape {
            consecutive: Some(n),
            rate: Some(r),
            slow: None,
            window: Some(w),
        }),
        // No rule: the defaults adjusted by a count window (95% of the window; no
        // throttling, which needs a time window). The defaults' adaptive throttling
        // draws at random; tests/breaker_rules.rs covers it.
        count_window().prop_map(|w| Shape {
            consecutive: None,
            rate: None,
            slow: None,
            window: Some(w),
        }),
    ]
}

fn rules() -> impl Strategy<Value = Rules> {
    (
        shape(),
        1u32..=3,
        prop_oneof![Just(50u64), Just(200), Just(2000)],
        backoff_strategy(),
        proptest::bool::weighted(0.15),
    )
        .prop_map(|(s, half_open_calls, timeout, backoff, start_open)| Rules {
            consecutive: s.consecutive,
            rate: s.rate,
            slow: s.slow,
            window: s.window.map(|(w, _)| w),
            min_calls: s.window.and_then(|(_, m)| m),
            half_open_calls,
            half_open_timeout_ms: timeout,
            backoff,
            start_open,
        })
}

// --- the operations ----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Success,
    Failure,
    Ignored,
}

#[derive(Debug, Clone)]
enum Op {
    /// A call that completes at once (if admitted).
    Call(Out),
    /// A call left in flight.
    Start,
    /// The in-flight call at this index (modulo their number) completes.
    Finish(usize, Out),
    /// The in-flight call at this index is dropped (cancelled).
    Drop(usize),
    /// Time passes: one of the durations that matter to the configuration.
    Advance(u8),
    ForceOpen,
    ForceClosed,
    Reset,
}

fn out() -> impl Strategy<Value = Out> {
    prop_oneof![
        4 => Just(Out::Success),
        4 => Just(Out::Failure),
        1 => Just(Out::Ignored),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => out().prop_map(Op::Call),
        8 => Just(Op::Start),
        8 => (any::<usize>(), out()).prop_map(|(i, o)| Op::Finish(i, o)),
        3 => any::<usize>().prop_map(Op::Drop),
        15 => (0u8..7).prop_map(Op::Advance),
        1 => Just(Op::ForceOpen),
        1 => Just(Op::ForceClosed),
        2 => Just(Op::Reset),
    ]
}

/// The durations `Advance` picks from: around the slow threshold, a window's bucket,
/// the open delays and the half-open timeout.
fn durations(r: &Rules) -> [u64; 7] {
    let base = r.backoff.base().as_nanos() as u64;
    let bucket = match r.window {
        Some(Win::Time(ms)) => ms * MS / 10,
        _ => 13 * MS,
    };
    let slow = r.slow.map_or(7 * MS, |(t, _)| t * MS);
    [
        MS,
        slow + 1,
        bucket,
        base,
        r.half_open_timeout_ms * MS,
        r.backoff.max().as_nanos() as u64,
        base / 2 + 3 * MS,
    ]
}

// --- the reference model -----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Pass,
    Trial,
    Reject(Option<Duration>),
}

#[derive(Debug, Clone, Copy)]
struct Flight {
    id: u64,
    /// The "generation" of the state it was admitted in: any transition starts a new one.
    generation: u64,
    trial: bool,
    start: u64,
}

/// The breaker as DESIGN.md describes it, written for clarity, not speed.
#[derive(Debug)]
struct Model {
    // configuration, after the documented defaults are applied
    consecutive_rule: Option<u32>,
    rate_rule: Option<f64>,
    slow_rule: Option<(u64, f64)>,
    window: Option<Win>,
    min_calls: u64,
    half_open_calls: u32,
    half_open_timeout: u64,
    delays: backoff::Iter,

    now: u64,
    state: State,
    generation: u64,
    open_until: u64,
    /// Failures in a row, in closed.
    consecutive: u32,
    /// Count window: the last `n` counted calls (failed, slow).
    count_calls: VecDeque<(bool, bool)>,
    /// Time window: counted calls as (bucket index of their end, failed, slow).
    time_calls: Vec<(u64, bool, bool)>,
    /// Half-open: trials in flight (id, admitted at) and trials that succeeded.
    trials: Vec<(u64, u64)>,
    succeeded: u32,

    successes: u64,
    failures: u64,
    ignored: u64,
    slow: u64,
    rejected: u64,
    trips: u64,
    reached: u64,
    /// A transition was announced since the last check.
    announced: bool,
}

impl Model {
    fn new(r: &Rules) -> Self {
        // Documented defaults: with no trip rule, 95% failures of the window once 20
        // calls are in (the model only meets them adjusted by a count window, which
        // does not throttle); any rule replaces them; min_calls defaults to 20, or the
        // count window's size if smaller.
        let explicit = r.consecutive.is_some() || r.rate.is_some() || r.slow.is_some();
        let (consecutive_rule, rate_rule) = if explicit {
            (r.consecutive, r.rate)
        } else {
            (None, Some(0.95))
        };
        let window =
            (rate_rule.is_some() || r.slow.is_some()).then(|| r.window.unwrap_or(Win::Count(100)));
        let min_calls = r.min_calls.unwrap_or(match window {
            Some(Win::Count(n)) => n.min(20),
            _ => 20,
        });
        let mut delays = r.backoff.iter();
        let (state, open_until) = if r.start_open {
            (State::Open, delays.next().unwrap().as_nanos() as u64)
        } else {
            (State::Closed, 0)
        };
        Self {
            consecutive_rule,
            rate_rule,
            slow_rule: r.slow.map(|(t, rate)| (t * MS, rate)),
            window,
            min_calls: u64::from(min_calls),
            half_open_calls: r.half_open_calls,
            half_open_timeout: r.half_open_timeout_ms * MS,
            delays,
            now: 0,
            state,
            generation: 0,
            open_until,
            consecutive: 0,
            count_calls: VecDeque::new(),
            time_calls: Vec::new(),
            trials: Vec::new(),
            succeeded: 0,
            successes: 0,
            failures: 0,
            ignored: 0,
            slow: 0,
            rejected: 0,
            trips: 0,
            reached: 0,
            announced: false,
        }
    }

    fn transition(&mut self, to: State) {
        self.state = to;
        self.generation += 1;
        self.announced = true;
    }

    /// Fresh rules and a fresh open backoff.
    fn start_over(&mut self) {
        self.consecutive = 0;
        self.count_calls.clear();
        self.time_calls.clear();
        self.delays.reset();
    }

    fn trip(&mut self) {
        let delay = self.delays.next().unwrap().as_nanos() as u64;
        self.open_until = self.now + delay;
        self.trips += 1;
        self.transition(State::Open);
    }

    fn close(&mut self) {
        self.start_over();
        self.transition(State::Closed);
    }

    fn bucket_width(&self) -> u64 {
        match self.window {
            Some(Win::Time(ms)) => ms * MS / 10,
            _ => unreachable!(),
        }
    }

    /// Calls, failures and slow calls in the window now.
    fn totals(&mut self) -> Option<(u64, u64, u64)> {
        let calls: Vec<(bool, bool)> = match self.window? {
            Win::Count(_) => self.count_calls.iter().copied().collect(),
            Win::Time(_) => {
                // A call is forgotten once its bucket is ten buckets old.
                let now = self.now / self.bucket_width();
                self.time_calls.retain(|&(b, _, _)| now - b < 10);
                self.time_calls.iter().map(|&(_, f, s)| (f, s)).collect()
            }
        };
        let n = calls.len() as u64;
        let f = calls.iter().filter(|c| c.0).count() as u64;
        let s = calls.iter().filter(|c| c.1).count() as u64;
        Some((n, f, s))
    }

    fn admit(&mut self, id: u64) -> (Admit, Option<Flight>) {
        loop {
            let admit = match self.state {
                State::Closed | State::ForcedClosed => Admit::Pass,
                State::ForcedOpen => Admit::Reject(None),
                State::Open => {
                    if self.now < self.open_until {
                        Admit::Reject(Some(
                            Duration::from_nanos(self.open_until - self.now)
                                .max(Duration::from_millis(1)),
                        ))
                    } else {
                        // The first call after the open delay moves it to half-open.
                        self.transition(State::HalfOpen);
                        self.trials.clear();
                        self.succeeded = 0;
                        continue;
                    }
                }
                State::HalfOpen => {
                    if self
                        .trials
                        .iter()
                        .any(|&(_, at)| self.now >= at + self.half_open_timeout)
                    {
                        // A trial ran past the timeout: it failed.
                        hit(&COVERAGE.trial_timed_out);
                        self.trip();
                        continue;
                    }
                    // Trials running or succeeded hold their permits.
                    if self.trials.len() as u32 + self.succeeded < self.half_open_calls {
                        self.trials.push((id, self.now));
                        Admit::Trial
                    } else {
                        Admit::Reject(None)
                    }
                }
                s => unreachable!("{s:?}"),
            };
            let flight = match admit {
                Admit::Reject(_) => {
                    self.rejected += 1;
                    None
                }
                _ => {
                    self.reached += 1;
                    Some(Flight {
                        id,
                        generation: self.generation,
                        trial: admit == Admit::Trial,
                        start: self.now,
                    })
                }
            };
            return (admit, flight);
        }
    }

    fn finish(&mut self, f: Flight, out: Out) {
        let slow = self
            .slow_rule
            .is_some_and(|(t, _)| out != Out::Ignored && self.now - f.start > t);
        match out {
            Out::Success => self.successes += 1,
            Out::Failure => self.failures += 1,
            Out::Ignored => self.ignored += 1,
        }
        self.slow += u64::from(slow);
        let current = f.generation == self.generation;
        if slow {
            hit(&COVERAGE.slow_calls);
        }
        if !current {
            hit(&COVERAGE.stale_outcomes);
        }
        if f.trial {
            if !current || self.state != State::HalfOpen {
                return;
            }
            self.trials.retain(|&(id, _)| id != f.id);
            match out {
                // An ignored trial counts as nothing: its permit is free again.
                Out::Ignored => {}
                // A slow trial is not a success.
                Out::Success if !slow => {
                    self.succeeded += 1;
                    if self.succeeded >= self.half_open_calls {
                        hit(&COVERAGE.closed_by_trials);
                        self.close();
                    }
                }
                _ => {
                    hit(&COVERAGE.trial_failed);
                    self.trip();
                }
            }
            return;
        }
        // Calls admitted before a transition, in forced-closed, or ignored, count
        // nowhere but in the cumulative figures.
        if !current || self.state != State::Closed || out == Out::Ignored {
            return;
        }
        let failed = out == Out::Failure;
        let mut trip = false;
        if let Some(n) = self.consecutive_rule {
            if failed {
                self.consecutive += 1;
                trip |= self.consecutive >= n;
            } else {
                self.consecutive = 0;
            }
        }
        match self.window {
            Some(Win::Count(n)) => {
                self.count_calls.push_back((failed, slow));
                if self.count_calls.len() > n as usize {
                    self.count_calls.pop_front();
                }
            }
            Some(Win::Time(_)) => {
                let b = self.now / self.bucket_width();
                self.time_calls.push((b, failed, slow));
            }
            None => {}
        }
        // Rates are checked when a call fails or is slow.
        if failed || slow {
            if let Some((n, f, s)) = self.totals() {
                if n >= self.min_calls {
                    let rate = |x: u64| x as f64 / n as f64;
                    trip |= self.rate_rule.is_some_and(|r| rate(f) >= r);
                    trip |= self.slow_rule.is_some_and(|(_, r)| rate(s) >= r);
                }
            }
        }
        if trip {
            hit(&COVERAGE.trips_from_closed);
            self.trip();
        }
    }

    fn dropped(&mut self, f: Flight) {
        if f.trial && f.generation == self.generation && self.state == State::HalfOpen {
            hit(&COVERAGE.dropped_trials);
            self.trials.retain(|&(id, _)| id != f.id);
        }
    }

    fn force(&mut self, to: State) {
        if to == State::Closed {
            // A reset starts over even from closed; only a change is announced.
            if self.state == State::Closed {
                self.start_over();
            } else {
                self.close();
            }
        } else if self.state != to {
            self.transition(to);
        }
    }
}

// --- running both ------------------------------------------------------------------------

type Call = Pin<Box<dyn Future<Output = Result<(), BoxError>>>>;

fn classify(r: &Result<(), &'static str>) -> Outcome {
    match r {
        Ok(()) => Outcome::Success,
        Err("ignored") => Outcome::Ignored,
        Err(_) => Outcome::Failure,
    }
}

async fn run(rules: Rules, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let breaker = rules.builder().build().expect("valid rules");
    let mut model = Model::new(&rules);
    let reached = Arc::new(AtomicU64::new(0));
    let inner = {
        let reached = reached.clone();
        tower::service_fn(move |rx: oneshot::Receiver<Out>| {
            reached.fetch_add(1, Ordering::Relaxed);
            async move {
                match rx.await {
                    Ok(Out::Success) => Ok(()),
                    Ok(Out::Ignored) => Err("ignored"),
                    _ => Err("failed"),
                }
            }
        })
    };
    let mut svc = BreakerService::new(inner, breaker.clone())
        .classify(classify as fn(&Result<(), &'static str>) -> Outcome);
    let mut watch = breaker.subscribe();
    let durations = durations(&rules);
    let mut in_flight: Vec<(Flight, oneshot::Sender<Out>, Call)> = Vec::new();
    let mut next_id = 0;

    for (step, op) in ops.iter().enumerate() {
        let op = match op {
            Op::Start if in_flight.len() >= MAX_IN_FLIGHT => &Op::Call(Out::Success),
            Op::Finish(..) | Op::Drop(_) if in_flight.is_empty() => &Op::Advance(0),
            op => op,
        };
        match *op {
            Op::Call(_) | Op::Start => {
                next_id += 1;
                let (expected, flight) = model.admit(next_id);
                let (tx, rx) = oneshot::channel();
                svc.ready().await.expect("poll_ready never fails");
                let mut fut: Call = Box::pin(svc.call(rx));
                match (expected, flight) {
                    (Admit::Reject(retry_after), _) => {
                        let err = fut.await.expect_err("rejected");
                        let open = err.downcast_ref::<Open>();
                        prop_assert!(open.is_some(), "step {step}: not an Open error: {err}");
                        prop_assert_eq!(
                            open.unwrap().retry_after(),
                            retry_after,
                            "step {}: retry_after",
                            step
                        );
                    }
                    (_, Some(flight)) => {
                        if let Op::Call(out) = *op {
                            tx.send(out).unwrap();
                            let result = (&mut fut).await;
                            model.finish(flight, out);
                            check_result(step, out, result)?;
                        } else {
                            // Poll once: nothing is ready yet.
                            prop_assert!(futures_poll_pending(&mut fut), "step {step}");
                            in_flight.push((flight, tx, fut));
                        }
                    }
                    (_, None) => unreachable!(),
                }
            }
            Op::Finish(i, out) => {
                let (flight, tx, fut) = in_flight.remove(i % in_flight.len());
                tx.send(out).unwrap();
                let result = fut.await;
                model.finish(flight, out);
                check_result(step, out, result)?;
            }
            Op::Drop(i) => {
                let (flight, _tx, fut) = in_flight.remove(i % in_flight.len());
                drop(fut);
                model.dropped(flight);
            }
            Op::Advance(d) => {
                let d = durations[usize::from(d) % durations.len()];
                tokio::time::advance(Duration::from_nanos(d)).await;
                model.now += d;
            }
            Op::ForceOpen => {
                breaker.force_open();
                model.force(State::ForcedOpen);
            }
            Op::ForceClosed => {
                breaker.force_closed();
                model.force(State::ForcedClosed);
            }
            Op::Reset => {
                breaker.reset();
                model.force(State::Closed);
            }
        }
        compare(step, op, &breaker, &mut model, &mut watch, &reached)?;
    }
    Ok(())
}

/// Whether a future is still pending after one poll.
fn futures_poll_pending(fut: &mut Call) -> bool {
    let waker = noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    fut.as_mut().poll(&mut cx).is_pending()
}

fn check_result(step: usize, out: Out, result: Result<(), BoxError>) -> Result<(), TestCaseError> {
    match (out, result) {
        (Out::Success, Ok(())) => Ok(()),
        (Out::Failure | Out::Ignored, Err(e)) if e.downcast_ref::<Open>().is_none() => Ok(()),
        (out, r) => Err(TestCaseError::fail(format!(
            "step {step}: {out:?} completed as {r:?}"
        ))),
    }
}

fn compare(
    step: usize,
    op: &Op,
    breaker: &Breaker,
    model: &mut Model,
    watch: &mut tokio::sync::watch::Receiver<State>,
    reached: &AtomicU64,
) -> Result<(), TestCaseError> {
    let snap = breaker.snapshot();
    let at = format!(
        "step {step} ({op:?}) at {} ms",
        model.now as f64 / MS as f64
    );
    prop_assert_eq!(snap.state, model.state, "{}: state", at);
    prop_assert_eq!(breaker.state(), model.state, "{}: state()", at);
    prop_assert_eq!(snap.successes, model.successes, "{}: successes", at);
    prop_assert_eq!(snap.failures, model.failures, "{}: failures", at);
    prop_assert_eq!(snap.ignored, model.ignored, "{}: ignored", at);
    prop_assert_eq!(
        snap.calls,
        model.successes + model.failures + model.ignored,
        "{}: calls",
        at
    );
    prop_assert_eq!(snap.slow, model.slow, "{}: slow", at);
    prop_assert_eq!(snap.rejected, model.rejected, "{}: rejected", at);
    prop_assert_eq!(snap.trips, model.trips, "{}: trips", at);
    prop_assert_eq!(
        reached.load(Ordering::Relaxed),
        model.reached,
        "{}: reached",
        at
    );
    let rate = model
        .totals()
        .filter(|t| t.0 > 0)
        .map(|(n, f, _)| f as f64 / n as f64);
    prop_assert_eq!(snap.failure_rate, rate, "{}: failure_rate", at);
    // Never zero while open: at least 1 ms.
    let retry_after = (model.state == State::Open).then(|| {
        Duration::from_nanos(model.open_until.saturating_sub(model.now))
            .max(Duration::from_millis(1))
    });
    prop_assert_eq!(snap.retry_after, retry_after, "{}: retry_after", at);
    prop_assert_eq!(
        watch.has_changed().unwrap(),
        std::mem::take(&mut model.announced),
        "{}: watch update",
        at
    );
    prop_assert_eq!(
        *watch.borrow_and_update(),
        model.state,
        "{}: watched state",
        at
    );
    Ok(())
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

fn runner() -> TestRunner {
    let cases = env("STEADFAST_MODEL_CASES").map_or(CI_CASES, |n| n as u32);
    let seed = env("STEADFAST_MODEL_SEED").unwrap_or(0x5eed_fa57);
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })
}

fn check(rules: Rules, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(run(rules, ops))
}

#[test]
fn breaker_agrees_with_the_model() {
    let started = std::time::Instant::now();
    let mut runner = runner();
    let cases = runner.config().cases;
    let strategy = (rules(), proptest::collection::vec(op(), 1..150));
    if let Err(e) = runner.run(&strategy, |(rules, ops)| check(rules, ops)) {
        panic!("{e}");
    }
    eprintln!("model: {cases} cases in {:.1?}", started.elapsed());
    eprintln!("{COVERAGE:#?}");
    let c = &COVERAGE;
    for (name, n) in [
        ("trips from closed", &c.trips_from_closed),
        ("failed trials", &c.trial_failed),
        ("timed-out trials", &c.trial_timed_out),
        ("closes by trials", &c.closed_by_trials),
        ("slow calls", &c.slow_calls),
        ("outcomes after a transition", &c.stale_outcomes),
        ("dropped trials", &c.dropped_trials),
    ] {
        assert!(n.load(Ordering::Relaxed) > 0, "no case reached {name}");
    }
}

/// A waker that does nothing (`Waker::noop` is newer than the crate's MSRV).
fn noop_waker() -> std::task::Waker {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: std::sync::Arc<Self>) {}
    }
    std::task::Waker::from(std::sync::Arc::new(Noop))
}
