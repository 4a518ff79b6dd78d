//! The contract of `Readiness::Wait`: while the breaker rejects, `poll_ready` is
//! `Pending` (never `Err`), does not poll the inner service, and wakes the task when a
//! call could go through: on a timer at the end of the open delay, and on transitions
//! (`force_closed`, `reset`, a watchdog closing the breaker). All on paused time.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use steadfast::backoff::Backoff;
use steadfast::breaker::{Breaker, BreakerService, Readiness, State};
use steadfast::watchdog::Watchdog;
use steadfast::BoxError;
use tokio::time::advance;
use tower::{Service, ServiceExt};

/// Counts `poll_ready` and `call` of the inner service; calls fail while `fail` is set.
#[derive(Clone, Default)]
struct Inner {
    polls: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
}

impl Service<()> for Inner {
    type Response = ();
    type Error = &'static str;
    type Future = std::future::Ready<Result<(), &'static str>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.polls.fetch_add(1, SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        self.calls.fetch_add(1, SeqCst);
        std::future::ready(if self.fail.load(SeqCst) {
            Err("down")
        } else {
            Ok(())
        })
    }
}

/// A waker that counts its wakes.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

const OPEN_FOR: Duration = Duration::from_secs(10);

fn waiting(builder: steadfast::breaker::BreakerBuilder) -> (Breaker, BreakerService<Inner>, Inner) {
    let breaker = builder
        .consecutive_failures(2)
        .open_backoff(Backoff::constant(OPEN_FOR))
        .half_open_calls(1)
        .readiness(Readiness::Wait)
        .build()
        .unwrap();
    let inner = Inner::default();
    let svc = BreakerService::new(inner.clone(), breaker.clone());
    (breaker, svc, inner)
}

/// Trips the breaker with two failed calls.
async fn trip(svc: &mut BreakerService<Inner>, inner: &Inner) {
    inner.fail.store(true, SeqCst);
    for _ in 0..2 {
        let _ = svc.ready().await.unwrap().call(()).await;
    }
    inner.fail.store(false, SeqCst);
}

fn poll(svc: &mut BreakerService<Inner>, waker: &Waker) -> Poll<Result<(), BoxError>> {
    svc.poll_ready(&mut Context::from_waker(waker))
}

/// Lets timers fire and woken tasks run.
async fn settle() {
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn pending_while_open_without_polling_inner_then_woken_by_the_timer() {
    let (breaker, mut svc, inner) = waiting(Breaker::builder("w"));
    trip(&mut svc, &inner).await;
    assert_eq!(breaker.state(), State::Open);
    let polls = inner.polls.load(SeqCst);
    let wakes = Arc::new(Count::default());
    let waker = Waker::from(wakes.clone());

    for _ in 0..3 {
        assert!(poll(&mut svc, &waker).is_pending(), "ready while open");
    }
    assert_eq!(inner.polls.load(SeqCst), polls, "inner polled while open");

    advance(OPEN_FOR - Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(wakes.0.load(SeqCst), 0, "woken before the open delay ended");
    advance(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(
        wakes.0.load(SeqCst),
        1,
        "not woken when the open delay ended"
    );

    // Woken: the next poll takes the half-open trial, polling the inner service.
    assert!(matches!(poll(&mut svc, &waker), Poll::Ready(Ok(()))));
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(inner.polls.load(SeqCst), polls + 1);
    svc.call(()).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn woken_by_force_closed_and_never_err() {
    let (breaker, mut svc, inner) = waiting(Breaker::builder("w"));
    trip(&mut svc, &inner).await;
    let wakes = Arc::new(Count::default());
    let waker = Waker::from(wakes.clone());
    assert!(poll(&mut svc, &waker).is_pending());
    assert_eq!(wakes.0.load(SeqCst), 0);

    breaker.force_closed();
    assert_eq!(
        wakes.0.load(SeqCst),
        1,
        "force_closed did not wake the waiter"
    );
    assert!(matches!(poll(&mut svc, &waker), Poll::Ready(Ok(()))));
    svc.call(()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn forced_open_waits_for_reset_not_for_a_timer() {
    let (breaker, mut svc, inner) = waiting(Breaker::builder("w"));
    breaker.force_open();
    let wakes = Arc::new(Count::default());
    let waker = Waker::from(wakes.clone());
    assert!(poll(&mut svc, &waker).is_pending());
    advance(OPEN_FOR * 10).await;
    settle().await;
    assert_eq!(wakes.0.load(SeqCst), 0, "woken with nothing changed");
    assert!(poll(&mut svc, &waker).is_pending());
    assert_eq!(inner.polls.load(SeqCst), 0);

    breaker.reset();
    assert_eq!(wakes.0.load(SeqCst), 1);
    assert!(matches!(poll(&mut svc, &waker), Poll::Ready(Ok(()))));
}

#[tokio::test(start_paused = true)]
async fn a_task_waiting_in_ready_resumes_when_a_watchdog_closes_the_breaker() {
    let down = Arc::new(AtomicBool::new(true));
    let probes = Arc::new(AtomicUsize::new(0));
    let (breaker, mut svc, inner) = waiting(Breaker::builder("w").start_open());
    let (d, p) = (down.clone(), probes.clone());
    let watchdog = Watchdog::builder(&breaker, move || {
        p.fetch_add(1, SeqCst);
        let up = !d.load(SeqCst);
        async move {
            if up {
                Ok(())
            } else {
                Err("still down")
            }
        }
    })
    .interval(Duration::from_secs(1))
    .backoff(Backoff::constant(Duration::from_secs(1)))
    .healthy_threshold(1)
    .spawn()
    .unwrap();

    let waiter = tokio::spawn(async move {
        svc.ready().await.map(|_| ()).map_err(|e| e.to_string())?;
        Ok::<_, String>(svc)
    });
    // Long past the open delay: the watchdog owns recovery, so the task still waits.
    for _ in 0..30 {
        advance(Duration::from_secs(1)).await;
        settle().await;
    }
    assert!(
        !waiter.is_finished(),
        "ready while the watchdog's probes fail"
    );
    assert!(probes.load(SeqCst) >= 3, "probes: {}", probes.load(SeqCst));
    assert_eq!(inner.polls.load(SeqCst), 0, "inner polled while open");

    down.store(false, SeqCst);
    for _ in 0..2 {
        advance(Duration::from_secs(1)).await;
        settle().await;
    }
    assert_eq!(breaker.state(), State::Closed);
    let mut svc = waiter.await.unwrap().expect("poll_ready returned Err");
    svc.call(()).await.unwrap();
    assert_eq!(
        inner.calls.load(SeqCst),
        1,
        "only the real call reached inner"
    );
    watchdog.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn fail_fast_is_still_the_default() {
    let breaker = Breaker::builder("f")
        .consecutive_failures(1)
        .build()
        .unwrap();
    let inner = Inner::default();
    inner.fail.store(true, SeqCst);
    let mut svc = BreakerService::new(inner.clone(), breaker.clone());
    let _ = svc.ready().await.unwrap().call(()).await;
    assert_eq!(breaker.state(), State::Open);
    let polls = inner.polls.load(SeqCst);
    // Ready at once, and the call is rejected without reaching inner.
    let ready = pin!(poll_fn(|cx| svc.poll_ready(cx)));
    let waker = Waker::from(Arc::new(Count::default()));
    let answer = ready.poll(&mut Context::from_waker(&waker));
    assert!(matches!(answer, Poll::Ready(Ok(()))));
    assert!(svc.call(()).await.is_err());
    assert_eq!(inner.polls.load(SeqCst), polls);
}

#[tokio::test(start_paused = true)]
async fn a_clone_starts_without_the_waiters_state() {
    let (breaker, mut svc, inner) = waiting(Breaker::builder("w"));
    trip(&mut svc, &inner).await;
    let waker = Waker::from(Arc::new(Count::default()));
    assert!(poll(&mut svc, &waker).is_pending());
    let mut clone = svc.clone();
    assert!(poll(&mut clone, &waker).is_pending());
    breaker.reset();
    assert!(matches!(poll(&mut clone, &waker), Poll::Ready(Ok(()))));
    assert!(matches!(poll(&mut svc, &waker), Poll::Ready(Ok(()))));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_half_open_trial_wakes_a_waiting_service_at_once() {
    // Regression (issue 17.1): the trial's permit was given back without a wake-up,
    // and the waiting clone stayed pending until the half-open timeout (10 s).
    let breaker = Breaker::builder("wait")
        .consecutive_failures(1)
        .half_open_calls(1)
        .open_backoff(Backoff::constant(Duration::from_millis(300)))
        .readiness(Readiness::Wait)
        .start_open()
        .build()
        .unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let held = gate.clone();
    let inner = tower::service_fn(move |_: ()| {
        let held = held.clone();
        async move {
            held.notified().await;
            Ok::<_, &'static str>(())
        }
    });
    let mut a = BreakerService::new(inner.clone(), breaker.clone());
    let mut b = BreakerService::new(inner, breaker.clone());
    advance(Duration::from_millis(310)).await;
    // A takes the only trial and keeps it in flight.
    let trial = a.ready().await.unwrap().call(());
    let trial = tokio::spawn(trial);
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);

    let count = Arc::new(Count::default());
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(b.poll_ready(&mut cx).is_pending(), "no permit left");
    assert_eq!(count.0.load(SeqCst), 0);

    // A's task is aborted 50 ms later: its permit goes back, and B is woken then.
    advance(Duration::from_millis(50)).await;
    trial.abort();
    let _ = trial.await;
    assert_eq!(count.0.load(SeqCst), 1, "B woken when the permit came back");
    assert!(matches!(b.poll_ready(&mut cx), Poll::Ready(Ok(()))));
}
