//! The breaker's per-thread bookkeeping: each thread counts its calls in its own shard
//! of the breaker and keeps that shard for its next call. These tests check the cases
//! that take the other paths, where the counts must still add up exactly:
//!
//! - a response future made on one thread and finished on another (a task moved
//!   between the workers of a runtime);
//! - more threads calling at once than the breaker has shards of its own;
//! - one thread alternating between breakers, so its kept shard keeps changing hands;
//! - rejected calls, counted apart, whose futures also hold a shard.

use std::future::{ready, Future, Ready};
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use steadfast::breaker::error::Open;
use steadfast::breaker::{Breaker, BreakerService, Snapshot, State};
use steadfast::Outcome;
use tower::util::ServiceFn;
use tower::{service_fn, Layer, Service};

struct NoWake;

impl Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

/// Polls `fut` once with a waker that does nothing; the inner services here are
/// always ready.
fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(NoWake));
    match fut.as_mut().poll(&mut Context::from_waker(&waker)) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("an always-ready call was pending"),
    }
}

type Answer = Result<u64, &'static str>;
type Svc = BreakerService<ServiceFn<fn(u64) -> Ready<Answer>>, fn(&Answer) -> Outcome>;

/// Even requests succeed, odd ones fail with an error classified as ignored: two
/// kinds of outcome, and never a trip.
fn answer(n: u64) -> Ready<Answer> {
    ready(if n % 2 == 0 { Ok(n) } else { Err("odd") })
}

fn classify(result: &Answer) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Ignored,
    }
}

fn service(breaker: &Breaker) -> Svc {
    let inner = service_fn(answer as fn(u64) -> Ready<Answer>);
    breaker
        .layer()
        .layer(inner)
        .classify(classify as fn(&Answer) -> Outcome)
}

/// `poll_ready`, then `call`, for a service that is always ready.
fn call(svc: &mut Svc, n: u64) -> <Svc as Service<u64>>::Future {
    poll_once(std::future::poll_fn(|cx| svc.poll_ready(cx))).expect("ready");
    svc.call(n)
}

fn breaker(name: &str) -> Breaker {
    Breaker::builder(name)
        .consecutive_failures(3)
        .build()
        .expect("valid config")
}

fn assert_counts(s: &Snapshot, successes: u64, ignored: u64, rejected: u64) {
    assert_eq!(
        (s.calls, s.successes, s.failures, s.ignored, s.rejected),
        (successes + ignored, successes, 0, ignored, rejected),
        "{s:?}"
    );
}

#[test]
fn futures_finished_on_another_thread_are_counted_once() {
    let breaker = breaker("moved");
    let mut svc = service(&breaker);
    // Made here, finished on other threads (one per batch), and some finished here.
    let mut futures = Vec::new();
    for n in 0..400u64 {
        futures.push(call(&mut svc, n));
    }
    let here = futures.split_off(300);
    std::thread::scope(|scope| {
        let mut rest = futures.into_iter();
        for _ in 0..3 {
            let batch: Vec<_> = rest.by_ref().take(100).collect();
            scope.spawn(move || {
                for fut in batch {
                    let _ = poll_once(fut);
                }
            });
        }
    });
    for fut in here {
        let _ = poll_once(fut);
    }
    assert_counts(&breaker.snapshot(), 200, 200, 0);
    // The threads that finished others' calls make their own calls again.
    std::thread::scope(|scope| {
        for _ in 0..3 {
            let mut svc = svc.clone();
            scope.spawn(move || {
                for n in 0..100 {
                    let _ = poll_once(call(&mut svc, n));
                }
            });
        }
    });
    assert_counts(&breaker.snapshot(), 350, 350, 0);
}

/// Runs `each` on `threads` threads that are all alive at once, from before the first
/// runs it until the last is done: thread slots are unique among live threads, so
/// past 64 threads some take slots beyond a breaker's own shards and stripes.
fn in_crowd(threads: usize, each: impl Fn() + Sync) {
    let start = Barrier::new(threads);
    let end = Barrier::new(threads);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                start.wait();
                each();
                end.wait();
            });
        }
    });
}

const CROWD: u64 = 96;
const CROWD_CALLS: u64 = 200;

#[test]
fn more_threads_than_shards_still_add_up() {
    let breaker = breaker("crowd");
    let svc = service(&breaker);
    in_crowd(CROWD as usize, || {
        let mut svc = svc.clone();
        for n in 0..CROWD_CALLS {
            let _ = poll_once(call(&mut svc, n));
        }
    });
    let half = CROWD * CROWD_CALLS / 2;
    assert_counts(&breaker.snapshot(), half, half, 0);
}

/// Two threads calling at once, many times over: each counts in a shard of its own
/// with plain stores, so two threads handed one shard would lose counts.
#[test]
fn two_threads_calling_at_once_lose_no_count() {
    const EACH: u64 = 500_000;
    let breaker = breaker("pair");
    let svc = service(&breaker);
    in_crowd(2, || {
        let mut svc = svc.clone();
        for n in 0..EACH {
            let _ = poll_once(call(&mut svc, n));
        }
    });
    assert_counts(&breaker.snapshot(), EACH, EACH, 0);
}

#[test]
fn a_time_window_shared_by_more_threads_than_stripes_counts_every_call() {
    // A time window counts calls per thread, and threads past its own stripes share
    // one. Its failure rate must be exact: one failure per thread among all the calls.
    let breaker = Breaker::builder("timed")
        .failure_rate(0.5)
        .time_window(Duration::from_secs(600))
        .build()
        .expect("valid config");
    let inner = service_fn(|n: u64| ready(if n == 0 { Err("first") } else { Ok(n) }));
    let svc = breaker.layer().layer(inner);
    in_crowd(CROWD as usize, || {
        let mut svc = svc.clone();
        for n in 0..CROWD_CALLS {
            poll_once(std::future::poll_fn(|cx| svc.poll_ready(cx))).expect("ready");
            let _ = poll_once(svc.call(n));
        }
    });
    let s = breaker.snapshot();
    assert_eq!((s.calls, s.failures), (CROWD * CROWD_CALLS, CROWD), "{s:?}");
    let rate = s.failure_rate.expect("a window");
    assert_eq!(rate, 1.0 / CROWD_CALLS as f64, "{s:?}");
}

#[test]
fn one_thread_alternating_between_breakers_counts_each_exactly() {
    let breakers: Vec<Breaker> = (0..3).map(|i| breaker(&format!("b{i}"))).collect();
    let mut services: Vec<_> = breakers.iter().map(service).collect();
    // In flight across the switches: each breaker's future outlives calls to others.
    let mut pending = Vec::new();
    for round in 0..300u64 {
        let svc = &mut services[(round % 3) as usize];
        let fut = call(svc, round / 3);
        if round % 5 == 0 {
            pending.push(fut);
        } else {
            let _ = poll_once(fut);
        }
    }
    for fut in pending {
        let _ = poll_once(fut);
    }
    for b in &breakers {
        // 100 calls each, requests 0..100: 50 even, 50 odd.
        assert_counts(&b.snapshot(), 50, 50, 0);
    }
    // A breaker dropped while this thread keeps its shard leaves the others intact.
    drop(services.remove(0));
    let dropped = breakers.into_iter().next().expect("three breakers");
    drop(dropped);
    let b = breaker("after");
    let mut svc = service(&b);
    for n in 0..10 {
        let _ = poll_once(call(&mut svc, n));
    }
    assert_counts(&b.snapshot(), 5, 5, 0);
}

#[test]
fn rejected_calls_are_counted_apart_and_name_their_breaker() {
    let breaker = breaker("rejecting");
    breaker.force_open();
    let mut svc = service(&breaker);
    let mut futures = Vec::new();
    for n in 0..50u64 {
        futures.push(call(&mut svc, n));
    }
    // Half answered on another thread, half here; one dropped unpolled.
    let mut later = futures.split_off(25);
    let unpolled = later.pop().expect("25 futures");
    drop(unpolled);
    let elsewhere = std::thread::spawn(move || {
        futures
            .into_iter()
            .map(|f| poll_once(f).expect_err("rejected"))
            .collect::<Vec<_>>()
    })
    .join()
    .expect("thread");
    let here: Vec<_> = later
        .into_iter()
        .map(|f| poll_once(f).expect_err("rejected"))
        .collect();
    for err in elsewhere.iter().chain(&here) {
        let open = err.downcast_ref::<Open>().expect("an Open rejection");
        assert_eq!(open.breaker(), "rejecting");
        // Forced open: no hint.
        assert_eq!(open.retry_after(), None);
    }
    assert_counts(&breaker.snapshot(), 0, 0, 50);
    // Closed again, the same service counts calls as before.
    breaker.reset();
    for n in 0..4 {
        let _ = poll_once(call(&mut svc, n));
    }
    assert_counts(&breaker.snapshot(), 2, 2, 50);
}

/// Calls made from a thread-local's destructor after the breaker's own thread-local
/// is gone: the thread has no slot any more, its calls take the shared overflow shard,
/// and they must still be counted, exactly once.
#[test]
fn calls_made_while_a_thread_exits_are_counted() {
    use std::cell::RefCell;

    /// Makes `CALLS` calls through its service when its thread exits.
    struct CallsOnExit(RefCell<Option<Svc>>);
    const CALLS: u64 = 6;
    impl Drop for CallsOnExit {
        fn drop(&mut self) {
            if let Some(mut svc) = self.0.borrow_mut().take() {
                for n in 0..CALLS {
                    let _ = poll_once(call(&mut svc, n));
                }
            }
        }
    }
    thread_local! {
        static ON_EXIT: CallsOnExit = const { CallsOnExit(RefCell::new(None)) };
    }

    let breaker = breaker("exiting");
    let svc = service(&breaker);
    std::thread::spawn(move || {
        // Registered first, so destroyed last: after the breaker's thread-local, which
        // the call below registers.
        ON_EXIT.with(|on_exit| *on_exit.0.borrow_mut() = Some(svc.clone()));
        let mut svc = svc;
        let _ = poll_once(call(&mut svc, 0));
    })
    .join()
    .expect("thread");
    assert_counts(&breaker.snapshot(), 1 + CALLS / 2, CALLS / 2, 0);
}

#[test]
fn a_failure_rate_counts_the_calls_of_every_thread() {
    // A failure sums other threads' latest calls only when its own totals could trip
    // a rule: successes made on another thread must still hold the rate down.
    let breaker = Breaker::builder("rates")
        .time_window(Duration::from_secs(60))
        .failure_rate(0.5)
        .min_calls(4)
        .build()
        .expect("valid config");
    let errors_fail = |r: &Answer| match r {
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    };
    let make = || {
        breaker
            .layer()
            .layer(service_fn(answer as fn(u64) -> Ready<Answer>))
            .classify(errors_fail as fn(&Answer) -> Outcome)
    };
    // One success here first, so that this thread holds its slot (and its stripe of
    // the window) while the other thread takes another.
    let mut svc = make();
    poll_once(call(&mut svc, 0)).expect("even requests succeed");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut svc = make();
            for n in 1..10 {
                poll_once(call(&mut svc, 2 * n)).expect("even requests succeed");
            }
        });
    });
    for n in 0..9 {
        let _ = poll_once(call(&mut svc, 2 * n + 1));
        // 9 failures of 19 calls at most: below the rate.
        assert_eq!(breaker.state(), State::Closed, "after {} failures", n + 1);
    }
    let _ = poll_once(call(&mut svc, 1));
    assert_eq!(breaker.state(), State::Open, "10 failures of 20 calls");
}
