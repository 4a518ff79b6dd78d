//! Watchdog edges found by mutation testing (cargo-mutants over `src/watchdog/`): what
//! the other watchdog tests left unchecked. All on paused time.

mod common;

use common::{ms, secs};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use steadfast::breaker::{Breaker, State};
use steadfast::watchdog::Watchdog;
use tokio::time::{sleep_until, Instant};
use tower::{Layer, Service, ServiceExt};

/// Lets woken tasks (the watchdog) run without moving the clock.
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// A probe that counts its calls and always fails.
fn counting(
    calls: &Arc<AtomicUsize>,
) -> impl FnMut() -> std::future::Ready<Result<(), &'static str>> + Send + 'static {
    let calls = calls.clone();
    move || {
        calls.fetch_add(1, SeqCst);
        std::future::ready(Err("down"))
    }
}

/// A worker asked to stop before it first runs ends without probing, even for a breaker
/// booted open (which it would otherwise probe at once).
#[tokio::test(start_paused = true)]
async fn a_worker_stopped_before_it_runs_never_probes() {
    let breaker = Breaker::builder("stopped-early")
        .start_open()
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (handle, worker) = Watchdog::builder(&breaker, counting(&calls))
        .pair()
        .unwrap();
    // `join!` polls the shutdown first: it asks the worker to stop, then the worker runs.
    tokio::join!(handle.shutdown(), worker);
    assert_eq!(calls.load(SeqCst), 0, "a probe was sent after shutdown");
}

/// A worker whose breaker is gone before it first runs ends without probing.
#[tokio::test(start_paused = true)]
async fn a_worker_whose_breaker_is_gone_before_it_runs_never_probes() {
    let breaker = Breaker::builder("gone-early").start_open().build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (handle, worker) = Watchdog::builder(&breaker, counting(&calls))
        .pair()
        .unwrap();
    drop(breaker);
    worker.await;
    assert_eq!(
        calls.load(SeqCst),
        0,
        "a probe was sent for a dropped breaker"
    );
    handle.shutdown().await;
}

/// Restart intensity counts a trip exactly `within` after another with it (a trip
/// leaves the window only once it is *more* than `within` old): two trips 10 s apart
/// are two within 10 s, and past `max_trips(1, 10 s)`; 10 s and 1 ms apart they are
/// not.
#[tokio::test(start_paused = true)]
async fn a_trip_exactly_within_after_another_counts_with_it() {
    for (gap, escalates) in [(secs(10), true), (secs(10) + ms(1), false)] {
        let breaker = Breaker::builder("edge")
            .consecutive_failures(1)
            .build()
            .unwrap();
        // The probe passes: each trip is closed again a second later.
        let watchdog = Watchdog::builder(&breaker, || async { Ok::<(), &'static str>(()) })
            .interval(secs(1))
            .max_trips(1, secs(10))
            .spawn()
            .unwrap();
        let mut svc = breaker.layer().layer(tower::service_fn(|()| async {
            Err::<(), &'static str>("refused")
        }));
        let mut states = breaker.subscribe();
        settle().await;
        let t0 = Instant::now();
        for at in [Duration::ZERO, gap] {
            sleep_until(t0 + at).await;
            assert_eq!(breaker.state(), State::Closed, "{gap:?}");
            assert!(svc.ready().await.unwrap().call(()).await.is_err());
            assert_eq!(breaker.state(), State::Open);
            settle().await;
            if at == Duration::ZERO {
                assert!(!breaker.is_escalated(), "one trip, {gap:?}");
                states.wait_for(|s| *s == State::Closed).await.unwrap();
                assert_eq!(t0.elapsed(), secs(1));
            }
        }
        assert_eq!(breaker.snapshot().trips, 2);
        assert_eq!(breaker.is_escalated(), escalates, "trips {gap:?} apart");
        assert_eq!(watchdog.is_escalated(), escalates, "trips {gap:?} apart");
        watchdog.shutdown().await;
    }
}
