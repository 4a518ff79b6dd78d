//! Loom models of the breaker's atomic state machine: every interleaving of a few
//! threads (up to a preemption bound) is run, and each must keep the invariants.
//!
//! Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg steadfast_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test --release --test loom
//! ```
//!
//! Under that cfg the crate's atomics, transition mutex and thread-locals are loom's
//! (`src/sync.rs`), so loom sees the state word, the half-open permits, the counters,
//! the windows and the transition lock. It does not see inside tokio: the state
//! `watch` runs whole between two loom steps, which models it as one atomic step.
//!
//! Time is kept out of every decision. Open delays are an hour (nothing elapses
//! during a model) except where a model needs half-open: there the breaker trips
//! before the model's threads start with an open delay of 1 ns, and the setup waits
//! on the real clock until that nanosecond has passed, so every thread that looks sees
//! the delay elapsed. Trial timeouts are an hour, so none is ever overdue.

#![cfg(steadfast_loom)]

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex as StdMutex, Once};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use loom::thread;
use steadfast::backoff::Backoff;
use steadfast::breaker::error::Open;
use steadfast::breaker::{Breaker, BreakerBuilder, BreakerService, State};
use steadfast::BoxError;
use tower::{Layer, Service};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

const HOUR: Duration = Duration::from_secs(3600);

/// Runs `f` under every interleaving, up to `preemptions` forced thread switches.
fn model(preemptions: usize, f: impl Fn() + Send + Sync + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    // Snapshots read every counter stripe: many loom steps, none of them concurrent.
    builder.max_branches = 100_000;
    builder.check(f);
}

// --- a service whose calls succeed, fail or hang -----------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Succeed,
    Fail,
    /// Never completes: its future is dropped instead (a cancelled call).
    Hang,
}

type Inner = tower::util::ServiceFn<
    fn(Call) -> Pin<Box<dyn Future<Output = Result<(), &'static str>> + Send>>,
>;
type Svc = BreakerService<Inner>;

fn inner(call: Call) -> Pin<Box<dyn Future<Output = Result<(), &'static str>> + Send>> {
    match call {
        Call::Succeed => Box::pin(std::future::ready(Ok(()))),
        Call::Fail => Box::pin(std::future::ready(Err("down"))),
        Call::Hang => Box::pin(std::future::pending()),
    }
}

fn service(breaker: &Breaker) -> Svc {
    let f: fn(Call) -> _ = inner;
    breaker.layer().layer(tower::service_fn(f))
}

struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    let waker = Waker::from(Arc::new(Noop));
    f.poll(&mut Context::from_waker(&waker))
}

/// `poll_ready`, which never waits here and, in half-open, takes a trial permit.
fn ready(svc: &mut Svc) {
    let waker = Waker::from(Arc::new(Noop));
    let poll = svc.poll_ready(&mut Context::from_waker(&waker));
    assert!(matches!(poll, Poll::Ready(Ok(()))), "poll_ready: {poll:?}");
}

/// What became of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Ok,
    Failed,
    Rejected,
    /// Admitted and still running (a `Call::Hang`).
    Running,
}

fn done(poll: Poll<Result<(), BoxError>>) -> Done {
    match poll {
        Poll::Pending => Done::Running,
        Poll::Ready(Ok(())) => Done::Ok,
        Poll::Ready(Err(e)) if e.downcast_ref::<Open>().is_some() => Done::Rejected,
        Poll::Ready(Err(_)) => Done::Failed,
    }
}

/// One whole call: ready, call, one poll; a hanging call is dropped (cancelled).
fn call(svc: &mut Svc, what: Call) -> Done {
    ready(svc);
    let mut future = Box::pin(svc.call(what));
    done(poll_once(future.as_mut()))
}

// --- transition events -------------------------------------------------------------------

/// Catches the breaker's transition events as `(from, to)`.
#[derive(Clone, Default)]
struct Events(Arc<StdMutex<Vec<(String, String)>>>);

std::thread_local! {
    /// The catcher of the models running on this OS thread. Loom's threads are
    /// coroutines on the thread that runs the model, so they all report here.
    static CATCHER: RefCell<Option<Events>> = const { RefCell::new(None) };
}

impl Events {
    fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// Runs `f` catching its events. One global subscriber routes them by OS thread:
    /// a subscriber set per test would let tracing cache "never" for a callsite first
    /// hit by a test running without one.
    fn during<R>(&self, f: impl FnOnce() -> R) -> R {
        static GLOBAL: Once = Once::new();
        GLOBAL.call_once(|| tracing::subscriber::set_global_default(Router).unwrap());
        CATCHER.with(|c| *c.borrow_mut() = Some(self.clone()));
        let result = f();
        CATCHER.with(|c| *c.borrow_mut() = None);
        result
    }
}

#[derive(Default)]
struct Fields {
    from: String,
    to: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "from" => self.from = value.to_owned(),
            "to" => self.to = value.to_owned(),
            _ => {}
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
}

struct Router;

impl Subscriber for Router {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "steadfast::breaker"
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        CATCHER.with(|c| {
            if let Some(events) = &*c.borrow() {
                events.0.lock().unwrap().push((fields.from, fields.to));
            }
        });
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

// --- breakers ----------------------------------------------------------------------------

fn builder() -> BreakerBuilder {
    Breaker::builder("loom")
        .open_backoff(Backoff::constant(HOUR))
        .half_open_timeout(HOUR)
}

/// A breaker tripped by one failure whose 1 ns open delay has passed: the next call
/// moves it to half-open. Built and tripped before the model's threads start.
fn tripped(half_open_calls: u32) -> Breaker {
    let breaker = builder()
        .consecutive_failures(1)
        .half_open_calls(half_open_calls)
        .open_backoff(Backoff::constant(Duration::from_nanos(1)))
        .build()
        .unwrap();
    assert_eq!(call(&mut service(&breaker), Call::Fail), Done::Failed);
    assert_eq!(breaker.state(), State::Open);
    // The delay ends 1 ns after the trip, which came before this reading.
    let tripped = std::time::Instant::now();
    while tripped.elapsed() < Duration::from_micros(1) {
        std::hint::spin_loop();
    }
    breaker
}

/// The breaker can still make progress: within a few successful calls it is closed
/// and lets calls through. A leaked trial permit keeps it half-open and rejecting.
fn assert_recovers(breaker: &Breaker) {
    if matches!(breaker.state(), State::ForcedOpen | State::ForcedClosed) {
        breaker.reset();
    }
    for _ in 0..4 {
        if breaker.state() == State::Closed {
            break;
        }
        let outcome = call(&mut service(breaker), Call::Succeed);
        assert_eq!(outcome, Done::Ok, "stuck in {:?}", breaker.state());
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(call(&mut service(breaker), Call::Succeed), Done::Ok);
}

/// Counters add up: every completed call is counted once, every rejection once.
fn assert_counts(breaker: &Breaker, outcomes: &[Done]) {
    let count = |d: Done| outcomes.iter().filter(|&&o| o == d).count() as u64;
    let s = breaker.snapshot();
    assert_eq!(s.successes, count(Done::Ok), "{s:?}");
    assert_eq!(s.failures, count(Done::Failed), "{s:?}");
    assert_eq!(s.rejected, count(Done::Rejected), "{s:?}");
    assert_eq!(s.calls, s.successes + s.failures + s.ignored, "{s:?}");
}

fn spawn_calls(breaker: &Breaker, calls: &[Call]) -> Vec<Done> {
    let handles: Vec<_> = calls
        .iter()
        .map(|&what| {
            let mut svc = service(breaker);
            thread::spawn(move || call(&mut svc, what))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

// --- (1) concurrent failures at the threshold: one trip, one event --------------------------

#[test]
fn failures_at_the_consecutive_threshold_trip_once() {
    model(2, || {
        let events = Events::default();
        events.during(|| {
            let breaker = builder().consecutive_failures(2).build().unwrap();
            let outcomes = spawn_calls(&breaker, &[Call::Fail; 3]);
            assert_eq!(breaker.state(), State::Open);
            assert_eq!(breaker.snapshot().trips, 1);
            assert_eq!(events.take(), pairs(&[("closed", "open")]));
            // The first two failures are always admitted; the third may be rejected.
            assert!(outcomes.iter().filter(|&&o| o == Done::Failed).count() >= 2);
            assert_counts(&breaker, &outcomes);
        });
    });
}

#[test]
fn failures_at_the_rate_threshold_trip_once() {
    model(2, || {
        let events = Events::default();
        events.during(|| {
            let breaker = builder()
                .failure_rate(0.5)
                .count_window(2)
                .min_calls(2)
                .build()
                .unwrap();
            let outcomes = spawn_calls(&breaker, &[Call::Fail, Call::Fail, Call::Succeed]);
            assert_eq!(breaker.snapshot().trips, 1, "{outcomes:?}");
            assert_eq!(breaker.state(), State::Open);
            assert_eq!(events.take(), pairs(&[("closed", "open")]));
            assert_counts(&breaker, &outcomes);
        });
    });
}

/// A full count window with no failure in it lets successes through without a
/// position, and says so in a flag of its own. A failure racing the success that
/// pushes out the window's last failure must leave the flag down: were it up, the
/// successes after would not push the racing failure out either, and it would stay in
/// the window for good.
#[test]
fn a_failure_racing_the_last_one_out_still_leaves_the_window() {
    model(2, || {
        let breaker = builder()
            .failure_rate(0.75)
            .count_window(4)
            .min_calls(4)
            .build()
            .unwrap();
        // The window holds a failure, then three successes: the next success pushes
        // the failure out.
        for what in [Call::Fail, Call::Succeed, Call::Succeed, Call::Succeed] {
            call(&mut service(&breaker), what);
        }
        // Half the window fails at most, whatever the order: no trip.
        let outcomes = spawn_calls(&breaker, &[Call::Succeed, Call::Fail]);
        assert_eq!(outcomes, [Done::Ok, Done::Failed]);
        // Four successes push every failure out: two more are half the window, where
        // a failure left behind would make three of four.
        for _ in 0..4 {
            assert_eq!(call(&mut service(&breaker), Call::Succeed), Done::Ok);
        }
        for _ in 0..2 {
            assert_eq!(call(&mut service(&breaker), Call::Fail), Done::Failed);
        }
        assert_eq!(
            breaker.state(),
            State::Closed,
            "a failure stayed in the window"
        );
    });
}

/// A failure admitted before a transition must not count after it: here a call
/// admitted while closed fails while another thread forces the breaker open and resets
/// it. Whatever the order, the fresh closed state starts from zero failures, so one
/// more failure (below the threshold of 2) must not trip it.
#[test]
fn a_failure_from_before_a_reset_does_not_count_after_it() {
    model(3, || {
        let breaker = builder().consecutive_failures(2).build().unwrap();
        let mut svc = service(&breaker);
        ready(&mut svc);
        let stale = thread::spawn(move || {
            let mut future = Box::pin(svc.call(Call::Fail));
            done(poll_once(future.as_mut()))
        });
        let b = breaker.clone();
        let resets = thread::spawn(move || {
            b.force_open();
            b.reset();
        });
        assert_eq!(stale.join().unwrap(), Done::Failed);
        resets.join().unwrap();
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(call(&mut service(&breaker), Call::Fail), Done::Failed);
        assert_eq!(
            breaker.state(),
            State::Closed,
            "a stale failure was counted"
        );
    });
}

// --- (2) half-open never admits more trials than the limit -------------------------------

#[test]
fn half_open_admits_at_most_the_limit() {
    model(2, || {
        let events = Events::default();
        events.during(|| {
            let breaker = tripped(2);
            events.take();
            // Each thread takes a permit (or a rejection) and hands its service back
            // with the permit still held.
            let handles: Vec<_> = (0..3)
                .map(|_| {
                    let mut svc = service(&breaker);
                    thread::spawn(move || {
                        ready(&mut svc);
                        svc
                    })
                })
                .collect();
            let mut held: Vec<Svc> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            assert_eq!(breaker.state(), State::HalfOpen);
            assert_eq!(events.take(), pairs(&[("open", "half-open")]));
            let outcomes: Vec<Done> = held
                .iter_mut()
                .map(|svc| done(poll_once(Box::pin(svc.call(Call::Hang)).as_mut())))
                .collect();
            let admitted = outcomes.iter().filter(|&&o| o == Done::Running).count();
            assert_eq!(admitted, 2, "{outcomes:?}");
            assert_eq!(outcomes.iter().filter(|&&o| o == Done::Rejected).count(), 1);
            // The hanging trials were dropped: their permits are back.
            drop(held);
            assert_recovers(&breaker);
        });
    });
}

// --- (3) a trial permit is released under every interleaving ------------------------------

/// Two trials in flight: one completes on one thread while the other is cancelled
/// (its future dropped) on another, and a third thread tries to enter.
#[test]
fn trial_permits_are_released_on_completion_and_cancellation() {
    model(2, || {
        let breaker = tripped(2);
        let (mut first, mut second) = (service(&breaker), service(&breaker));
        ready(&mut first);
        ready(&mut second);
        assert_eq!(breaker.state(), State::HalfOpen);
        let completes = thread::spawn(move || {
            let mut future = Box::pin(first.call(Call::Succeed));
            done(poll_once(future.as_mut()))
        });
        let cancelled = thread::spawn(move || {
            let mut future = Box::pin(second.call(Call::Hang));
            done(poll_once(future.as_mut()))
        });
        let mut third = service(&breaker);
        let enters = thread::spawn(move || call(&mut third, Call::Succeed));
        assert_eq!(completes.join().unwrap(), Done::Ok);
        assert_eq!(cancelled.join().unwrap(), Done::Running);
        let third = enters.join().unwrap();
        assert!(matches!(third, Done::Ok | Done::Rejected), "{third:?}");
        assert_recovers(&breaker);
    });
}

/// A permit held by a service (taken in `poll_ready`) is given back when the service
/// is dropped, racing another thread trying to enter.
#[test]
fn a_dropped_service_gives_its_permit_back() {
    model(3, || {
        let breaker = tripped(1);
        let mut holder = service(&breaker);
        ready(&mut holder);
        let drops = thread::spawn(move || drop(holder));
        let mut other = service(&breaker);
        let enters = thread::spawn(move || call(&mut other, Call::Hang));
        drops.join().unwrap();
        let entered = enters.join().unwrap();
        assert!(
            matches!(entered, Done::Running | Done::Rejected),
            "{entered:?}"
        );
        assert_recovers(&breaker);
    });
}

/// A trial completes while another thread resets or forces the breaker: the epoch
/// keeps the trial from moving the new state, and the breaker recovers.
#[test]
fn a_trial_racing_a_reset_or_force_leaves_a_working_breaker() {
    for (what, outcome) in [
        ("reset", Call::Succeed),
        ("reset", Call::Fail),
        ("force_open", Call::Succeed),
        ("force_closed", Call::Fail),
    ] {
        model(3, move || {
            let events = Events::default();
            events.during(|| {
                let breaker = tripped(1);
                let mut trial = service(&breaker);
                ready(&mut trial);
                events.take();
                let completes = thread::spawn(move || {
                    let mut future = Box::pin(trial.call(outcome));
                    done(poll_once(future.as_mut()))
                });
                let b = breaker.clone();
                let sets = thread::spawn(move || match what {
                    "reset" => b.reset(),
                    "force_open" => b.force_open(),
                    _ => b.force_closed(),
                });
                completes.join().unwrap();
                sets.join().unwrap();
                let expected = match what {
                    "reset" => None,
                    "force_open" => Some(State::ForcedOpen),
                    _ => Some(State::ForcedClosed),
                };
                if let Some(state) = expected {
                    assert_eq!(breaker.state(), state);
                }
                // Events chain: each starts where the previous ended.
                let events = events.take();
                let mut at = "half-open".to_string();
                for (from, to) in &events {
                    assert_eq!(from, &at, "{events:?}");
                    at = to.clone();
                }
                assert_eq!(at, breaker.state().as_str(), "{events:?}");
                assert_recovers(&breaker);
            });
        });
    }
}

// --- (4) no lost wake-up for a waiter on the state ---------------------------------------

/// A waiter on [`Breaker::subscribe`]: it reads the announced state, and waits for the
/// next announcement until `until` holds. Every transition sends its new state while
/// it holds the transition lock, so announcements are in the order of the transitions
/// and the last one is the state the breaker settles in; a waiter parked on
/// `changed()` is always woken for it. A missing or out-of-order announcement leaves
/// the waiter parked for ever, which loom reports as a deadlock.
///
/// What this does not cover: the channel is tokio's, which loom cannot see into. Its
/// calls run whole between two loom steps (a model treats each as one atomic step),
/// and the happens-before edge it gives from a send to the woken receiver is invisible
/// to loom. So a waiter that reads the state *word* after waking (the watchdog does)
/// is not modelled: loom would let that read see a word older than the send, which
/// tokio's release/acquire rules out. That order (word installed, then sent, both
/// under the lock) is checked by reading, and by the watchdog's own tests. And the
/// model has one transition only: tokio's watch parks a receiver in one of several wait
/// lists picked at random, so with two sends the order of loom steps changes from run
/// to run, which loom cannot replay ("is the model fully deterministic?").
fn wait_for(
    breaker: &Breaker,
    until: impl Fn(State) -> bool + Send + 'static,
) -> thread::JoinHandle<State> {
    let mut changes = breaker.subscribe();
    thread::spawn(move || {
        loom::future::block_on(async move {
            loop {
                let state = *changes.borrow_and_update();
                if until(state) {
                    return state;
                }
                changes.changed().await.unwrap();
            }
        })
    })
}

#[test]
fn a_waiter_sees_the_trip() {
    model(3, || {
        let breaker = builder().consecutive_failures(2).build().unwrap();
        let waiter = wait_for(&breaker, |s| s == State::Open);
        let outcomes = spawn_calls(&breaker, &[Call::Fail, Call::Fail]);
        assert_eq!(outcomes, [Done::Failed, Done::Failed]);
        assert_eq!(waiter.join().unwrap(), State::Open);
        assert_eq!(breaker.state(), State::Open);
    });
}
