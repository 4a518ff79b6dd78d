//! The closed-state hot path allocates nothing.
//!
//! A counting global allocator counts the allocations made by the current thread while
//! its `COUNTING` flag is on, so tests running in parallel on other threads do not
//! disturb each other. Calls are driven by hand (`poll_ready`, `call`, one `poll` with a
//! no-op waker), so no runtime runs inside the counted region.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::error::Error;
use std::fmt;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use steadfast::breaker::{Breaker, State};
use steadfast::BoxError;
use tower::{service_fn, Layer, Service};

// --- the counting allocator --------------------------------------------------------------

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static FREES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Relaxed);
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counting() {
            FREES.fetch_add(1, Relaxed);
        }
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with counting on for this thread; returns its result and the allocations
/// and frees this thread made meanwhile.
///
/// The counters are global, but only this thread adds to them while its flag is on;
/// other threads' regions may overlap, so regions are serialized by a lock.
fn count<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    static REGION: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _region = REGION.lock().unwrap_or_else(|e| e.into_inner());
    let (allocs, frees) = (ALLOCS.load(Relaxed), FREES.load(Relaxed));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (
        out,
        ALLOCS.load(Relaxed) - allocs,
        FREES.load(Relaxed) - frees,
    )
}

// --- driving calls by hand ---------------------------------------------------------------

struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

/// A waker that does nothing (made once, outside the counted regions).
fn noop_waker() -> Waker {
    Waker::from(Arc::new(NoopWake))
}

/// One call: `poll_ready`, `call`, and the response future polled to completion,
/// which must take a single poll (the inner future is ready at once).
#[inline(never)]
/// Makes `CALLS` calls, requests `0..CALLS`; the sum of the answers.
fn drive_calls<S>(svc: &mut S, cx: &mut Context<'_>) -> u64
where
    S: Service<u64, Response = u64, Error = BoxError>,
{
    (0..CALLS)
        .map(|i| drive(svc, cx, black_box(i)).unwrap())
        .sum()
}

fn drive<S>(svc: &mut S, cx: &mut Context<'_>, req: u64) -> Result<u64, BoxError>
where
    S: Service<u64, Response = u64, Error = BoxError>,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => panic!("poll_ready failed: {e}"),
        Poll::Pending => panic!("poll_ready is pending"),
    }
    let future = pin!(svc.call(req));
    match future.poll(cx) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("the response future is pending"),
    }
}

const CALLS: u64 = 10_000;

type Inner = fn(u64) -> Ready<Result<u64, Infallible>>;

fn echo(x: u64) -> Ready<Result<u64, Infallible>> {
    ready(Ok(x))
}

/// Warms up then makes `CALLS` closed-state calls in a counted region; asserts the
/// answers, that the region saw no allocation and no free, and that the breaker
/// counted every call.
fn assert_closed_path_allocates_nothing(breaker: Breaker) {
    let mut svc = breaker.layer().layer(service_fn(echo as Inner));
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);

    for i in 0..16 {
        assert_eq!(drive(&mut svc, &mut cx, i).unwrap(), i);
    }

    let (sum, allocs, frees) = count(|| drive_calls(&mut svc, &mut cx));

    assert_eq!(
        sum,
        CALLS * (CALLS - 1) / 2,
        "every call must have answered"
    );
    assert_eq!(
        allocs,
        0,
        "`{}`: {allocs} allocations in {CALLS} closed-state calls",
        breaker.name()
    );
    assert_eq!(
        frees,
        0,
        "`{}`: {frees} frees in {CALLS} calls",
        breaker.name()
    );
    let snap = breaker.snapshot();
    assert_eq!(snap.state, State::Closed);
    assert_eq!((snap.calls, snap.successes), (CALLS + 16, CALLS + 16));
}

// --- the control -------------------------------------------------------------------------

#[test]
fn the_counter_sees_allocations_and_frees_in_the_region() {
    let (b, allocs, frees) = count(|| black_box(Box::new(black_box(7u64))));
    assert_eq!(*b, 7);
    assert!(allocs >= 1, "a Box::new was not counted");
    assert_eq!(frees, 0);

    let ((), allocs, frees) = count(|| drop(b));
    assert_eq!(
        (allocs, frees),
        (0, 1),
        "a drop was not counted as one free"
    );

    let (v, allocs, _) = count(|| {
        let mut v: Vec<u64> = Vec::with_capacity(1);
        for i in 0..100 {
            v.push(black_box(i));
        }
        v
    });
    assert!(allocs >= 2, "Vec growth was not counted: {allocs}");
    drop(v);

    // An empty region counts nothing.
    let ((), allocs, frees) = count(|| ());
    assert_eq!((allocs, frees), (0, 0));
}

#[test]
fn the_counter_sees_an_allocation_on_the_breaker_path() {
    // A failing call that is rejected (or whose error is boxed) does allocate: the
    // counted region really covers what `drive` does.
    let breaker = Breaker::builder("alloc-control")
        .consecutive_failures(1)
        .build()
        .unwrap();
    let mut svc = breaker.layer().layer(service_fn(|x: u64| {
        ready(if x == 0 { Err(Nope(x)) } else { Ok(x) })
    }));
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(drive(&mut svc, &mut cx, 0).is_err());
    assert_eq!(breaker.state(), State::Open);
    let (result, allocs, _) = count(|| drive(&mut svc, &mut cx, 1));
    assert!(result.is_err(), "an open breaker must reject");
    assert!(allocs >= 1, "the boxed rejection was not counted");
    drop(result);
}

/// An error carrying data, so boxing it allocates.
#[derive(Debug)]
struct Nope(#[allow(dead_code)] u64);

impl fmt::Display for Nope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("nope")
    }
}

impl Error for Nope {}

// --- the closed path ---------------------------------------------------------------------

#[test]
fn default_breaker_closed_path_allocates_nothing() {
    assert_closed_path_allocates_nothing(Breaker::new("alloc-default"));
}

#[test]
fn consecutive_rule_closed_path_allocates_nothing() {
    assert_closed_path_allocates_nothing(
        Breaker::builder("alloc-consecutive")
            .consecutive_failures(5)
            .build()
            .unwrap(),
    );
}

#[test]
fn count_window_closed_path_allocates_nothing() {
    assert_closed_path_allocates_nothing(
        Breaker::builder("alloc-count")
            .failure_rate(0.5)
            .count_window(100)
            .min_calls(10)
            .build()
            .unwrap(),
    );
}

#[test]
fn time_window_closed_path_allocates_nothing() {
    assert_closed_path_allocates_nothing(
        Breaker::builder("alloc-time")
            .failure_rate(0.5)
            .time_window(Duration::from_secs(10))
            .min_calls(10)
            .build()
            .unwrap(),
    );
}

#[test]
fn slow_call_rule_closed_path_allocates_nothing() {
    assert_closed_path_allocates_nothing(
        Breaker::builder("alloc-slow")
            .slow_calls(Duration::from_secs(1), 0.5)
            .consecutive_failures(5)
            .build()
            .unwrap(),
    );
}

/// A zero-sized error: boxing it does not allocate, so failures below the trip
/// threshold can be counted as well.
#[derive(Debug)]
struct Refused;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("refused")
    }
}

impl Error for Refused {}

#[test]
fn counted_failures_below_the_thresholds_allocate_nothing() {
    for breaker in [
        Breaker::builder("alloc-failures-count")
            .consecutive_failures(3)
            .failure_rate(0.5)
            .count_window(50)
            .build()
            .unwrap(),
        Breaker::builder("alloc-failures-time")
            .consecutive_failures(3)
            .failure_rate(0.5)
            .time_window(Duration::from_secs(10))
            .build()
            .unwrap(),
    ] {
        // Every 10th call fails: under both the run and the rate thresholds.
        let mut svc = breaker.layer().layer(service_fn(|x: u64| {
            ready(if x % 10 == 9 { Err(Refused) } else { Ok(x) })
        }));
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        for i in 0..20 {
            let _ = drive(&mut svc, &mut cx, i);
        }

        let (failed, allocs, frees) = count(|| {
            let mut failed = 0u64;
            for i in 0..CALLS {
                // Dropping the (zero-sized) boxed error frees nothing either.
                failed += u64::from(drive(&mut svc, &mut cx, black_box(i)).is_err());
            }
            failed
        });

        assert_eq!(failed, CALLS / 10);
        assert_eq!(allocs, 0, "`{}`: {allocs} allocations", breaker.name());
        assert_eq!(frees, 0, "`{}`: {frees} frees", breaker.name());
        let snap = breaker.snapshot();
        assert_eq!(snap.state, State::Closed, "`{}` tripped", breaker.name());
        assert_eq!(snap.failures, CALLS / 10 + 2);
        assert_eq!(snap.calls, CALLS + 20);
    }
}

// --- the keyed closed path -----------------------------------------------------------------

#[test]
fn keyed_known_key_closed_path_allocates_nothing() {
    use steadfast::keyed::KeyedBreaker;

    const KEYS: u64 = 1_000;
    const WARM_UP: u64 = 20 * KEYS;
    let keyed = KeyedBreaker::builder(Breaker::builder("alloc-keyed").consecutive_failures(5))
        .max_keys(KEYS as usize)
        .build()
        .unwrap();
    let mut svc = keyed
        .layer(|req: &u64| req % KEYS)
        .layer(service_fn(echo as Inner));
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    // Every key made (and this thread's epoch state set up) before counting. Making
    // the keys grew the map, whose old bucket arrays the epoch collector frees a few
    // guards later: enough warm-up calls for that to be done before counting.
    for i in 0..WARM_UP {
        assert_eq!(drive(&mut svc, &mut cx, i).unwrap(), i);
    }

    let (sum, allocs, frees) = count(|| drive_calls(&mut svc, &mut cx));

    assert_eq!(sum, CALLS * (CALLS - 1) / 2);
    assert_eq!(allocs, 0, "{allocs} allocations in {CALLS} known-key calls");
    assert_eq!(frees, 0, "{frees} frees in {CALLS} known-key calls");
    assert_eq!(keyed.len(), KEYS as usize);
    let calls: u64 = (0..KEYS)
        .map(|k| keyed.get(&k).expect("key held").snapshot().calls)
        .sum();
    assert_eq!(calls, CALLS + WARM_UP);
}
