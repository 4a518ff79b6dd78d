//! The tower contract of `BreakerService`, state by state.
//!
//! The inner service is [`Strict`]: it panics when `call` comes without a successful
//! `poll_ready` since the last call, and it counts its polls and calls, so each test
//! can tell whether the breaker touched the downstream at all. Every timing rule runs
//! on paused time.

mod common;

use common::secs;
use std::error::Error;
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use steadfast::backoff::Backoff;
use steadfast::breaker::error::Open;
use steadfast::breaker::{Breaker, BreakerService, State};
use steadfast::{BoxError, Outcome};
use tokio::sync::watch;
use tokio::time::advance;
use tower::{Layer, Service, ServiceExt};

// --- the strict inner service ------------------------------------------------------------

/// Controls and counters of a [`Strict`] service, shared by its clones.
#[derive(Debug, Default)]
struct Probe {
    /// `poll_ready` calls.
    polls: AtomicUsize,
    /// `call` calls.
    calls: AtomicUsize,
    /// While set, `poll_ready` answers `Pending`.
    pending: AtomicBool,
    /// While set, calls fail with [`Down`].
    fail: AtomicBool,
    /// While set, call futures never complete.
    hang: AtomicBool,
    /// While set, `poll_ready` fails.
    broken: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Probe {
    fn polls(&self) -> usize {
        self.polls.load(SeqCst)
    }
    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
    fn set_pending(&self, on: bool) {
        self.pending.store(on, SeqCst);
        if !on {
            if let Some(waker) = self.waker.lock().unwrap().take() {
                waker.wake();
            }
        }
    }
    fn set_fail(&self, on: bool) {
        self.fail.store(on, SeqCst);
    }
    fn set_hang(&self, on: bool) {
        self.hang.store(on, SeqCst);
    }
}

/// The downstream's own error.
#[derive(Debug, PartialEq, Eq)]
struct Down;

impl fmt::Display for Down {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("downstream failed")
    }
}

impl Error for Down {}

/// A service that insists on `poll_ready` before every `call`.
///
/// Readiness is per instance: a clone starts not ready, as tower requires.
#[derive(Debug)]
struct Strict {
    probe: Arc<Probe>,
    ready: bool,
}

impl Strict {
    fn new() -> (Self, Arc<Probe>) {
        let probe = Arc::new(Probe::default());
        (
            Self {
                probe: probe.clone(),
                ready: false,
            },
            probe,
        )
    }
}

impl Clone for Strict {
    fn clone(&self) -> Self {
        Self {
            probe: self.probe.clone(),
            ready: false,
        }
    }
}

type StrictFuture = Pin<Box<dyn Future<Output = Result<u32, Down>> + Send>>;

impl Service<u32> for Strict {
    type Response = u32;
    type Error = Down;
    type Future = StrictFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Down>> {
        self.probe.polls.fetch_add(1, SeqCst);
        if self.probe.broken.load(SeqCst) {
            self.ready = false;
            return Poll::Ready(Err(Down));
        }
        if self.probe.pending.load(SeqCst) {
            *self.probe.waker.lock().unwrap() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> StrictFuture {
        assert!(
            std::mem::take(&mut self.ready),
            "Strict::call without a successful poll_ready"
        );
        self.probe.calls.fetch_add(1, SeqCst);
        if self.probe.hang.load(SeqCst) {
            return Box::pin(std::future::pending());
        }
        let result = if self.probe.fail.load(SeqCst) {
            Err(Down)
        } else {
            Ok(req)
        };
        Box::pin(std::future::ready(result))
    }
}

// --- helpers -----------------------------------------------------------------------------

type Svc = BreakerService<Strict>;

/// A breaker service over a fresh strict inner, and the inner's probe.
fn guarded(breaker: &Breaker) -> (Svc, Arc<Probe>) {
    let (inner, probe) = Strict::new();
    (breaker.layer().layer(inner), probe)
}

/// Polls readiness exactly once.
async fn poll_once<S>(svc: &mut S) -> Poll<Result<(), BoxError>>
where
    S: Service<u32, Error = BoxError>,
{
    poll_fn(|cx| Poll::Ready(svc.poll_ready(cx))).await
}

/// Waits for readiness, then calls.
async fn call<S>(svc: &mut S, req: u32) -> Result<u32, BoxError>
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

#[track_caller]
fn expect_open(result: Result<u32, BoxError>) -> Open {
    match result {
        Ok(v) => panic!("expected an Open rejection, got Ok({v})"),
        Err(e) => match e.downcast::<Open>() {
            Ok(open) => *open,
            Err(e) => panic!("expected an Open rejection, got {e}"),
        },
    }
}

#[track_caller]
fn expect_down(result: Result<u32, BoxError>) {
    match result {
        Ok(v) => panic!("expected the inner error, got Ok({v})"),
        Err(e) => assert!(e.is::<Down>(), "expected the inner error, got {e}"),
    }
}

#[track_caller]
fn assert_ready_ok(poll: Poll<Result<(), BoxError>>) {
    match poll {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => panic!("poll_ready failed: {e}"),
        Poll::Pending => panic!("poll_ready is pending"),
    }
}

/// The next state seen on a `subscribe` receiver, which must have changed.
#[track_caller]
fn next_state(rx: &mut watch::Receiver<State>) -> State {
    assert!(rx.has_changed().unwrap(), "no state change was published");
    *rx.borrow_and_update()
}

// --- the harness itself ------------------------------------------------------------------

#[test]
#[should_panic(expected = "without a successful poll_ready")]
fn harness_strict_inner_panics_on_call_without_poll_ready() {
    let (mut inner, _probe) = Strict::new();
    let _future = inner.call(1);
}

#[tokio::test]
#[should_panic(expected = "without a successful poll_ready")]
async fn harness_strict_inner_needs_poll_ready_before_every_call() {
    let (mut inner, _probe) = Strict::new();
    inner.ready().await.unwrap().call(1).await.unwrap();
    let _future = inner.call(2); // readiness was used up by the first call
}

// --- closed ------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn closed_polls_the_inner_ready_then_calls_it() {
    let breaker = Breaker::builder("contract")
        .consecutive_failures(3)
        .build()
        .unwrap();
    let (mut svc, probe) = guarded(&breaker);

    for i in 0..5 {
        assert_eq!(call(&mut svc, i).await.unwrap(), i);
    }
    assert_eq!((probe.polls(), probe.calls()), (5, 5));

    // An inner that is not ready holds the breaker service back too.
    probe.set_pending(true);
    assert!(poll_once(&mut svc).await.is_pending());
    assert_eq!(probe.polls(), 6);
    probe.set_pending(false);
    assert_eq!(call(&mut svc, 7).await.unwrap(), 7);
    assert_eq!(probe.calls(), 6);

    // Inner errors pass through as themselves; fewer than 3 in a row do not trip.
    probe.set_fail(true);
    expect_down(call(&mut svc, 1).await);
    expect_down(call(&mut svc, 1).await);
    probe.set_fail(false);
    call(&mut svc, 1).await.unwrap(); // a success resets the run
    probe.set_fail(true);
    expect_down(call(&mut svc, 1).await);
    expect_down(call(&mut svc, 1).await);
    assert_eq!(breaker.state(), State::Closed);

    // An inner `poll_ready` error is passed on.
    probe.broken.store(true, SeqCst);
    assert!(matches!(poll_once(&mut svc).await, Poll::Ready(Err(e)) if e.is::<Down>()));
    probe.broken.store(false, SeqCst);

    let snap = breaker.snapshot();
    assert_eq!(snap.state, State::Closed);
    assert_eq!(
        (
            snap.calls,
            snap.successes,
            snap.failures,
            snap.rejected,
            snap.trips
        ),
        (11, 7, 4, 0, 0)
    );
    assert_eq!(snap.retry_after, None);
}

// --- open --------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn open_answers_ready_without_polling_the_inner_and_rejects_without_calling_it() {
    let breaker = Breaker::builder("contract")
        .consecutive_failures(2)
        .open_backoff(Backoff::constant(secs(10)))
        .build()
        .unwrap();
    let mut rx = breaker.subscribe();
    let (mut svc, probe) = guarded(&breaker);

    probe.set_fail(true);
    expect_down(call(&mut svc, 1).await);
    assert_eq!(breaker.state(), State::Closed);
    expect_down(call(&mut svc, 1).await);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(next_state(&mut rx), State::Open);
    assert_eq!(breaker.snapshot().trips, 1);
    let (polls, calls) = (probe.polls(), probe.calls());

    // The inner is not even ready: the breaker must not care, or look.
    probe.set_pending(true);
    assert_ready_ok(poll_once(&mut svc).await);
    assert_eq!(probe.polls(), polls, "the inner was polled while open");
    let open = expect_open(svc.call(1).await);
    assert_eq!(open.breaker(), "contract");
    assert_eq!(open.retry_after(), Some(secs(10)));
    assert!(open.to_string().contains("`contract` is open"), "{open}");
    assert_eq!(probe.calls(), calls, "the inner was called while open");

    advance(secs(4)).await;
    let open = expect_open(call(&mut svc, 1).await);
    assert_eq!(open.retry_after(), Some(secs(6)));

    // `call` without `poll_ready` is rejected the same way.
    let open = expect_open(svc.call(1).await);
    assert_eq!(open.retry_after(), Some(secs(6)));
    assert_eq!((probe.polls(), probe.calls()), (polls, calls));

    let snap = breaker.snapshot();
    assert_eq!(snap.state, State::Open);
    assert_eq!(snap.retry_after, Some(secs(6)));
    assert_eq!(
        (snap.calls, snap.failures, snap.rejected, snap.trips),
        (2, 2, 3, 1)
    );
    assert!(
        !rx.has_changed().unwrap(),
        "rejections must not publish states"
    );
}

#[tokio::test(start_paused = true)]
async fn start_open_rejects_until_the_first_delay_then_tries() {
    let breaker = Breaker::builder("contract")
        .consecutive_failures(1)
        .open_backoff(Backoff::exponential(secs(2), secs(60)))
        .half_open_calls(1)
        .start_open()
        .build()
        .unwrap();
    assert_eq!(breaker.state(), State::Open);
    let (mut svc, probe) = guarded(&breaker);
    probe.set_pending(true);
    assert_ready_ok(poll_once(&mut svc).await);
    assert_eq!(expect_open(svc.call(1).await).retry_after(), Some(secs(2)));
    assert_eq!((probe.polls(), probe.calls()), (0, 0));
    assert_eq!(breaker.snapshot().trips, 0, "start_open is not a trip");

    advance(secs(2)).await;
    probe.set_pending(false);
    probe.set_fail(true);
    expect_down(call(&mut svc, 1).await);
    assert_eq!(probe.calls(), 1);
    // The failed trial reopens for the second delay: start_open used the first.
    assert_eq!(breaker.snapshot().retry_after, Some(secs(4)));
    assert_eq!(breaker.snapshot().trips, 1);
}

#[tokio::test(start_paused = true)]
async fn an_inner_pending_while_the_breaker_opens_is_answered_ready_and_rejected() {
    let breaker = Breaker::builder("contract")
        .consecutive_failures(2)
        .open_backoff(Backoff::constant(secs(10)))
        .build()
        .unwrap();
    let (mut stuck, stuck_probe) = guarded(&breaker);
    let (mut other, other_probe) = guarded(&breaker);

    // The breaker is closed: `stuck` asks its inner, which is not ready.
    stuck_probe.set_pending(true);
    assert!(poll_once(&mut stuck).await.is_pending());
    assert_eq!(stuck_probe.polls(), 1);

    // Meanwhile other calls trip the breaker.
    other_probe.set_fail(true);
    expect_down(call(&mut other, 1).await);
    expect_down(call(&mut other, 1).await);
    assert_eq!(breaker.state(), State::Open);

    // `stuck` is polled again: it must not wait on its inner any more.
    assert_ready_ok(poll_once(&mut stuck).await);
    assert_eq!(stuck_probe.polls(), 1, "the inner was polled while open");
    let open = expect_open(stuck.call(5).await);
    assert_eq!(open.retry_after(), Some(secs(10)));
    assert_eq!(stuck_probe.calls(), 0);
    assert_eq!(breaker.snapshot().rejected, 1);

    // Once the breaker closes, the inner is asked again.
    breaker.reset();
    assert!(poll_once(&mut stuck).await.is_pending());
    assert_eq!(stuck_probe.polls(), 2);
    stuck_probe.set_pending(false);
    assert_eq!(call(&mut stuck, 5).await.unwrap(), 5);
    assert_eq!(stuck_probe.calls(), 1);
}

/// Known bug (see the report): a rejection decided by one `poll_ready` survives a
/// later `poll_ready` after the breaker has closed, so the call is rejected, with a
/// stale `retry_after`, by a breaker that is closed. A stale *pass* is re-decided
/// (the test above); a stale rejection is not.
#[tokio::test(start_paused = true)]
async fn a_rejection_decided_before_the_breaker_closed_is_decided_again() {
    let breaker = Breaker::builder("contract")
        .consecutive_failures(1)
        .open_backoff(Backoff::constant(secs(10)))
        .build()
        .unwrap();
    let (mut svc, probe) = guarded(&breaker);
    probe.set_fail(true);
    expect_down(call(&mut svc, 1).await);
    probe.set_fail(false);
    assert_ready_ok(poll_once(&mut svc).await); // decided: reject
    breaker.reset();
    assert_ready_ok(poll_once(&mut svc).await); // polled again, breaker closed
    assert_eq!(breaker.state(), State::Closed);
    let result = svc.call(2).await;
    assert!(
        matches!(result, Ok(2)),
        "a closed breaker rejected the call: {:?}",
        result.map_err(|e| e.to_string())
    );
}

// --- half-open ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn half_open_admits_the_trials_and_rejects_the_rest_fast() {
    let breaker = Breaker::builder("contract")
        .consecutive_failures(1)
        .open_backoff(Backoff::exponential(secs(1), secs(60)))
        .half_open_calls(2)
        .build()
        .unwrap();
    let mut rx = breaker.subscribe();
    let (mut a, pa) = guarded(&breaker);
    let (mut b, pb) = guarded(&breaker);
    let (mut c, pc) = guarded(&breaker);

    pa.set_fail(true);
    expect_down(call(&mut a, 1).await);
    pa.set_fail(false);
    assert_eq!(next_state(&mut rx), State::Open);
    assert_eq!(breaker.snapshot().retry_after, Some(secs(1)));

    // Not yet: one millisecond early is still a rejection.
    advance(Duration::from_millis(999)).await;
    let open = expect_open(call(&mut a, 1).await);
    assert_eq!(open.retry_after(), Some(Duration::from_millis(1)));
    assert_eq!(breaker.state(), State::Open);

    advance(Duration::from_millis(1)).await;
    // Two trial permits: `a` and `b` take them in `poll_ready`.
    a.ready().await.unwrap();
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(next_state(&mut rx), State::HalfOpen);
    b.ready().await.unwrap();
    assert_eq!((pa.polls(), pb.polls()), (2, 1));

    // `c` finds none left: ready at once, inner untouched, rejected with no hint.
    assert_ready_ok(poll_once(&mut c).await);
    let open = expect_open(c.call(3).await);
    assert_eq!(open.retry_after(), None);
    assert_eq!((pc.polls(), pc.calls()), (0, 0));

    // Both trials must succeed for the breaker to close.
    assert_eq!(a.call(1).await.unwrap(), 1);
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(b.call(2).await.unwrap(), 2);
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(next_state(&mut rx), State::Closed);

    // Closing started the backoff over: the next trip opens for the base delay again.
    pa.set_fail(true);
    expect_down(call(&mut a, 1).await);
    assert_eq!(next_state(&mut rx), State::Open);
    assert_eq!(breaker.snapshot().retry_after, Some(secs(1)));
    advance(secs(1)).await;

    // A failed trial reopens at once, for the next, longer delay.
    expect_down(call(&mut a, 1).await);
    assert_eq!(next_state(&mut rx), State::Open); // through half-open
    assert_eq!(breaker.state(), State::Open);
    let snap = breaker.snapshot();
    assert_eq!(snap.retry_after, Some(secs(2)));
    assert_eq!(snap.trips, 3);
    let open = expect_open(call(&mut c, 3).await);
    assert_eq!(open.retry_after(), Some(secs(2)));
    assert_eq!(pc.calls(), 0);

    let snap = breaker.snapshot();
    assert_eq!(
        (snap.calls, snap.successes, snap.failures, snap.rejected),
        (5, 2, 3, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn an_ignored_trial_gives_its_permit_back_and_decides_nothing() {
    let breaker = Breaker::builder("contract")
        .consecutive_failures(1)
        .open_backoff(Backoff::constant(secs(1)))
        .half_open_calls(1)
        .build()
        .unwrap();
    let (mut opener, po) = guarded(&breaker);
    po.set_fail(true);
    expect_down(call(&mut opener, 1).await);
    advance(secs(1)).await;

    // Through this service, the downstream's error says nothing about its health.
    let (inner, probe) = Strict::new();
    let mut ignoring = breaker
        .layer()
        .classify(|r: &Result<u32, Down>| match r {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Ignored,
        })
        .layer(inner);
    probe.set_fail(true);
    expect_down(call(&mut ignoring, 1).await);
    assert_eq!(probe.calls(), 1);
    // Neither closed nor reopened, and the permit is free again.
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(breaker.snapshot().trips, 1);
    expect_down(call(&mut ignoring, 2).await);
    assert_eq!(
        probe.calls(),
        2,
        "the permit of the ignored trial was not given back"
    );
    assert_eq!(breaker.state(), State::HalfOpen);

    // A counted success is what closes it.
    probe.set_fail(false);
    assert_eq!(call(&mut ignoring, 3).await.unwrap(), 3);
    assert_eq!(breaker.state(), State::Closed);
    let snap = breaker.snapshot();
    assert_eq!(
        (snap.calls, snap.successes, snap.failures, snap.ignored),
        (4, 1, 1, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_trial_past_the_half_open_timeout_counts_as_failed() {
    let breaker = Breaker::builder("contract")
        .consecutive_failures(1)
        .open_backoff(Backoff::exponential(secs(1), secs(60)))
        .half_open_calls(1)
        .half_open_timeout(secs(5))
        .build()
        .unwrap();
    let (mut a, pa) = guarded(&breaker);
    let (mut b, pb) = guarded(&breaker);

    pa.set_fail(true);
    expect_down(call(&mut a, 1).await);
    advance(secs(1)).await;

    pa.set_hang(true);
    let hung = a.ready().await.unwrap().call(1);
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(pa.calls(), 2);

    // Before the timeout the permit is still out.
    advance(Duration::from_millis(4_999)).await;
    assert_eq!(expect_open(call(&mut b, 2).await).retry_after(), None);
    assert_eq!(breaker.state(), State::HalfOpen);

    // At the timeout, the next call finds the trial overdue: it failed.
    advance(Duration::from_millis(1)).await;
    let open = expect_open(call(&mut b, 2).await);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(open.retry_after(), Some(secs(2)), "the delay must grow");
    assert_eq!(breaker.snapshot().trips, 2);
    assert_eq!(pb.calls(), 0);

    // The hung call ending late changes nothing.
    drop(hung);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.snapshot().retry_after, Some(secs(2)));
}

#[tokio::test(start_paused = true)]
async fn a_trial_permit_taken_by_poll_ready_comes_back_when_the_service_is_dropped() {
    let breaker = Breaker::builder("contract")
        .consecutive_failures(1)
        .open_backoff(Backoff::constant(secs(1)))
        .half_open_calls(1)
        .build()
        .unwrap();
    let (mut opener, po) = guarded(&breaker);
    po.set_fail(true);
    expect_down(call(&mut opener, 1).await);
    advance(secs(1)).await;

    // `a` takes the only permit; `b` is turned away without touching its inner.
    let (mut a, pa) = guarded(&breaker);
    a.ready().await.unwrap();
    assert_eq!(breaker.state(), State::HalfOpen);
    let (mut b, pb) = guarded(&breaker);
    assert_eq!(expect_open(call(&mut b, 2).await).retry_after(), None);
    assert_eq!((pb.polls(), pb.calls()), (0, 0));

    // Dropped unused: the permit comes back, and counts as nothing.
    drop(a);
    assert_eq!(pa.calls(), 0);
    assert_eq!(breaker.state(), State::HalfOpen);
    let (mut c, pc) = guarded(&breaker);
    c.ready().await.unwrap();
    assert_eq!(pc.polls(), 1);

    // `into_inner` gives it back too.
    let _inner: Strict = c.into_inner();
    // So does a `poll_ready` that took the permit while its inner was pending.
    let (mut d, pd) = guarded(&breaker);
    pd.set_pending(true);
    assert!(poll_once(&mut d).await.is_pending());
    assert_eq!(expect_open(call(&mut b, 2).await).retry_after(), None);
    drop(d);
    // So does an inner `poll_ready` error.
    let (mut e, pe) = guarded(&breaker);
    pe.broken.store(true, SeqCst);
    assert!(matches!(poll_once(&mut e).await, Poll::Ready(Err(err)) if err.is::<Down>()));
    // And a response future dropped before it completes.
    let (mut f, pf) = guarded(&breaker);
    pf.set_hang(true);
    let future = f.ready().await.unwrap().call(6);
    assert_eq!(expect_open(call(&mut b, 2).await).retry_after(), None);
    drop(future);
    assert_eq!(pf.calls(), 1);

    // The permit is free: a trial goes through and closes the breaker.
    let (mut g, pg) = guarded(&breaker);
    assert_eq!(call(&mut g, 7).await.unwrap(), 7);
    assert_eq!(pg.calls(), 1);
    assert_eq!(breaker.state(), State::Closed);

    let snap = breaker.snapshot();
    // Dropped trials count as nothing: one failure (the trip) and one success.
    assert_eq!(
        (
            snap.calls,
            snap.successes,
            snap.failures,
            snap.rejected,
            snap.trips
        ),
        (2, 1, 1, 3, 1)
    );
    assert_eq!(pb.calls(), 0);
}

// --- clones ------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_clone_does_not_inherit_readiness() {
    let breaker = Breaker::builder("contract")
        .consecutive_failures(1)
        .open_backoff(Backoff::constant(secs(1)))
        .half_open_calls(1)
        .build()
        .unwrap();

    // Closed: the clone's call goes through its own `poll_ready`, which polls its own
    // inner (a clone of the strict inner starts not ready, so a call the breaker
    // forwarded without polling would panic).
    let (mut a, probe) = guarded(&breaker);
    a.ready().await.unwrap();
    assert_eq!(probe.polls(), 1);
    let mut b = a.clone();
    assert_eq!(call(&mut b, 2).await.unwrap(), 2);
    assert_eq!(probe.polls(), 2, "the clone did not poll its own inner");
    // `a`'s readiness was not used up by its clone.
    assert_eq!(a.call(1).await.unwrap(), 1);
    assert_eq!(probe.calls(), 2);

    // Open: `a` decided to reject. The breaker closes; a clone made now decides
    // afresh and goes through.
    probe.set_fail(true);
    expect_down(call(&mut a, 1).await);
    probe.set_fail(false);
    assert_eq!(breaker.state(), State::Open);
    assert_ready_ok(poll_once(&mut a).await);
    breaker.reset();
    let mut b = a.clone();
    assert_eq!(call(&mut b, 3).await.unwrap(), 3);
    assert_eq!(probe.calls(), 4);
    drop(a);

    // Half-open: `a` holds the only permit; its clone does not get a copy of it.
    let (mut a, probe) = guarded(&breaker);
    probe.set_fail(true);
    expect_down(call(&mut a, 1).await);
    probe.set_fail(false);
    advance(secs(1)).await;
    a.ready().await.unwrap();
    assert_eq!(breaker.state(), State::HalfOpen);
    let polls = probe.polls();
    let mut b = a.clone();
    assert_ready_ok(poll_once(&mut b).await);
    assert_eq!(
        probe.polls(),
        polls,
        "the clone polled its inner without a permit"
    );
    assert_eq!(expect_open(b.call(2).await).retry_after(), None);
    // The permit stayed with `a`.
    assert_eq!(a.call(1).await.unwrap(), 1);
    assert_eq!(breaker.state(), State::Closed);
}

// --- forced states and reset -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn forced_open_rejects_everything_until_reset() {
    let breaker = Breaker::builder("contract")
        .consecutive_failures(1)
        .open_backoff(Backoff::constant(secs(1)))
        .build()
        .unwrap();
    let mut rx = breaker.subscribe();
    let (mut svc, probe) = guarded(&breaker);

    breaker.force_open();
    assert_eq!(breaker.state(), State::ForcedOpen);
    assert_eq!(next_state(&mut rx), State::ForcedOpen);

    probe.set_pending(true);
    assert_ready_ok(poll_once(&mut svc).await);
    let open = expect_open(svc.call(1).await);
    assert_eq!(open.retry_after(), None);
    assert_eq!(open.breaker(), "contract");
    assert_eq!((probe.polls(), probe.calls()), (0, 0));

    // Time does not end a forced state.
    advance(secs(3_600)).await;
    expect_open(call(&mut svc, 1).await);
    assert_eq!(breaker.state(), State::ForcedOpen);
    assert_eq!(breaker.snapshot().retry_after, None);
    assert_eq!((probe.polls(), probe.calls()), (0, 0));

    breaker.reset();
    assert_eq!(next_state(&mut rx), State::Closed);
    probe.set_pending(false);
    assert_eq!(call(&mut svc, 9).await.unwrap(), 9);
    assert_eq!(probe.calls(), 1);

    // Forcing open an open breaker holds it past its open delay.
    probe.set_fail(true);
    expect_down(call(&mut svc, 1).await);
    assert_eq!(next_state(&mut rx), State::Open);
    breaker.force_open();
    assert_eq!(next_state(&mut rx), State::ForcedOpen);
    advance(secs(2)).await;
    probe.set_fail(false);
    expect_open(call(&mut svc, 1).await);
    assert_eq!(breaker.state(), State::ForcedOpen);
    assert_eq!(probe.calls(), 2);

    let snap = breaker.snapshot();
    assert_eq!((snap.calls, snap.rejected), (2, 3));
}

#[tokio::test(start_paused = true)]
async fn forced_closed_lets_everything_through_without_tripping() {
    let breaker = Breaker::builder("contract")
        .consecutive_failures(2)
        .open_backoff(Backoff::constant(secs(10)))
        .build()
        .unwrap();
    let mut rx = breaker.subscribe();
    let (mut svc, probe) = guarded(&breaker);

    probe.set_fail(true);
    expect_down(call(&mut svc, 1).await);
    expect_down(call(&mut svc, 1).await);
    assert_eq!(next_state(&mut rx), State::Open);

    // Forced closed from open: calls go through at once, not after the open delay.
    breaker.force_closed();
    assert_eq!(next_state(&mut rx), State::ForcedClosed);
    for _ in 0..10 {
        expect_down(call(&mut svc, 1).await);
    }
    assert_eq!(breaker.state(), State::ForcedClosed);
    assert!(!rx.has_changed().unwrap());
    assert_eq!(probe.calls(), 12);
    let snap = breaker.snapshot();
    assert_eq!(
        (snap.calls, snap.failures, snap.rejected, snap.trips),
        (12, 12, 0, 1)
    );

    // Reset: closed, with a fresh run of failures (the forced ones did not count).
    breaker.reset();
    assert_eq!(next_state(&mut rx), State::Closed);
    expect_down(call(&mut svc, 1).await);
    assert_eq!(breaker.state(), State::Closed);
    expect_down(call(&mut svc, 1).await);
    assert_eq!(next_state(&mut rx), State::Open);
    assert_eq!(breaker.snapshot().trips, 2);
    assert_eq!(breaker.snapshot().retry_after, Some(secs(10)));
}

#[tokio::test(start_paused = true)]
async fn forced_closed_calls_stay_out_of_the_rate_window() {
    let breaker = Breaker::builder("contract")
        .failure_rate(0.5)
        .count_window(10)
        .min_calls(4)
        .build()
        .unwrap();
    let (mut svc, probe) = guarded(&breaker);
    probe.set_fail(true);
    expect_down(call(&mut svc, 1).await);
    assert_eq!(breaker.snapshot().failure_rate, Some(1.0));
    breaker.reset();
    assert_eq!(
        breaker.snapshot().failure_rate,
        None,
        "reset must empty the window"
    );

    breaker.force_closed();
    for _ in 0..10 {
        expect_down(call(&mut svc, 1).await);
    }
    let snap = breaker.snapshot();
    assert_eq!(snap.state, State::ForcedClosed);
    assert_eq!(snap.failures, 11);
    assert_eq!(
        snap.failure_rate, None,
        "forced-closed calls entered the window"
    );

    // Back under the rules, the window fills from empty: min_calls applies again.
    breaker.reset();
    for _ in 0..3 {
        expect_down(call(&mut svc, 1).await);
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.snapshot().failure_rate, Some(1.0));
    expect_down(call(&mut svc, 1).await);
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn reset_closes_at_once_with_a_fresh_backoff_and_ignores_stale_calls() {
    let breaker = Breaker::builder("contract")
        .consecutive_failures(1)
        .open_backoff(Backoff::exponential(secs(1), secs(60)))
        .half_open_calls(1)
        .build()
        .unwrap();
    let mut rx = breaker.subscribe();
    let (mut svc, probe) = guarded(&breaker);

    probe.set_fail(true);
    expect_down(call(&mut svc, 1).await); // open for 1 s
    advance(secs(1)).await;
    expect_down(call(&mut svc, 1).await); // trial fails: open for 2 s
    assert_eq!(breaker.snapshot().retry_after, Some(secs(2)));
    // The watch holds the latest state: open (again).
    assert_eq!(next_state(&mut rx), State::Open);

    // Reset closes at once: no waiting out the open delay.
    breaker.reset();
    assert_eq!(next_state(&mut rx), State::Closed);
    probe.set_fail(false);
    assert_eq!(call(&mut svc, 4).await.unwrap(), 4);

    // With a fresh backoff: the next trip opens for the base delay, not 4 s.
    probe.set_fail(true);
    expect_down(call(&mut svc, 1).await);
    assert_eq!(breaker.snapshot().retry_after, Some(secs(1)));
    assert_eq!(breaker.snapshot().trips, 3);

    // A trial still out when the breaker is reset cannot move it afterwards, even
    // though one failure trips a closed breaker with this rule.
    advance(secs(1)).await;
    let (mut trial, tp) = guarded(&breaker);
    tp.set_fail(true);
    trial.ready().await.unwrap();
    assert_eq!(next_state(&mut rx), State::HalfOpen);
    breaker.reset();
    assert_eq!(next_state(&mut rx), State::Closed);
    expect_down(trial.call(1).await);
    assert_eq!(tp.calls(), 1);
    assert_eq!(breaker.state(), State::Closed);
    assert!(!rx.has_changed().unwrap());
    assert_eq!(breaker.snapshot().trips, 3);

    // A call admitted before a trip that ends after the breaker closed again counts in
    // the figures but not in the rules.
    let breaker = Breaker::builder("contract")
        .consecutive_failures(2)
        .build()
        .unwrap();
    let mut rx = breaker.subscribe();
    let (mut svc, probe) = guarded(&breaker);
    let (mut early, ep) = guarded(&breaker);
    ep.set_fail(true);
    let late = early.ready().await.unwrap().call(1);
    probe.set_fail(true);
    expect_down(call(&mut svc, 1).await);
    expect_down(call(&mut svc, 1).await);
    assert_eq!(next_state(&mut rx), State::Open);
    breaker.reset();
    assert_eq!(next_state(&mut rx), State::Closed);
    expect_down(late.await);
    assert_eq!(breaker.snapshot().failures, 3);
    expect_down(call(&mut svc, 1).await);
    assert_eq!(
        breaker.state(),
        State::Closed,
        "a stale failure counted in the run"
    );
    expect_down(call(&mut svc, 1).await);
    assert_eq!(next_state(&mut rx), State::Open);

    // Reset of a closed breaker starts the run over without announcing anything.
    breaker.reset();
    assert_eq!(next_state(&mut rx), State::Closed);
    expect_down(call(&mut svc, 1).await);
    breaker.reset();
    assert!(!rx.has_changed().unwrap());
    expect_down(call(&mut svc, 1).await);
    assert_eq!(breaker.state(), State::Closed);
    expect_down(call(&mut svc, 1).await);
    assert_eq!(next_state(&mut rx), State::Open);
}

// --- printing ----------------------------------------------------------------------------

#[test]
fn states_print_their_names_and_handles_print_their_breaker() {
    let all = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::ForcedClosed,
    ];
    let shown: Vec<String> = all.iter().map(State::to_string).collect();
    assert_eq!(
        shown,
        [
            "closed",
            "open",
            "half-open",
            "forced-open",
            "forced-closed"
        ]
    );
    // Padded like a string, for aligned log lines.
    assert_eq!(format!("[{:<8}]", State::Open), "[open    ]");

    let builder = format!("{:?}", Breaker::builder("payments").consecutive_failures(3));
    assert!(
        builder.contains("\"payments\"") && builder.contains("consecutive_failures: Some(3)"),
        "{builder}"
    );

    let breaker = Breaker::new("payments");
    breaker.force_open();
    let mut svc = breaker.layer().layer(tower::service_fn(|x: u32| {
        std::future::ready(Ok::<u32, Down>(x))
    }));
    for shown in [
        format!("{breaker:?}"),
        format!("{:?}", breaker.layer()),
        format!("{svc:?}"),
    ] {
        assert!(
            shown.contains("\"payments\"") && shown.contains("ForcedOpen"),
            "{shown}"
        );
    }
    // A response future says which kind it is; a rejection, its hint.
    let rejected = format!("{:?}", svc.call(1));
    assert!(
        rejected.starts_with("ResponseFuture::Rejected"),
        "{rejected}"
    );
    assert!(rejected.contains("retry_after"), "{rejected}");
    breaker.reset();
    let called = format!("{:?}", svc.call(1));
    assert_eq!(called, "ResponseFuture::Called");
}

#[test]
fn a_breaker_recovers_under_another_clock_than_it_was_built_under() {
    // Regression (issue 17.7): built on a paused runtime an hour ahead, tripped on a
    // second runtime whose clock reads earlier than the build: instants before the
    // build read as zero, so the open delay never ended there.
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let breaker = paused().block_on(async {
        tokio::time::advance(secs(3_600)).await;
        Breaker::builder("clocks")
            .consecutive_failures(1)
            .open_backoff(Backoff::constant(secs(1)))
            .half_open_calls(1)
            .build()
            .unwrap()
    });
    paused().block_on(async {
        let (mut svc, probe) = guarded(&breaker);
        probe.set_fail(true);
        expect_down(call(&mut svc, 1).await);
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.snapshot().retry_after, Some(secs(1)));
        tokio::time::advance(secs(5)).await;
        probe.set_fail(false);
        assert!(
            call(&mut svc, 2).await.is_ok(),
            "a trial after the open delay"
        );
        assert_eq!(breaker.state(), State::Closed);
    });
}
