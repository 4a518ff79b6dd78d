//! Readiness from several breakers: what blocks it (forced open, escalated) and what
//! does not (open, half-open, forced closed); snapshots in registration order with each
//! breaker's figures; and, with the `serde` feature, the JSON a `/health` route serves.

mod common;

use common::{secs, Seen};
use std::time::Duration;

use steadfast::backoff::Backoff;
use steadfast::breaker::{Breaker, State};
use steadfast::health::{Dependency, Health};
use steadfast::watchdog::Watchdog;
use steadfast::BoxError;
use tokio::sync::watch;
use tokio::time::timeout;
use tower::{Layer, Service, ServiceExt};

/// A downstream behind `breaker`: a `true` request succeeds, `false` fails.
fn guarded(breaker: &Breaker) -> impl Service<bool, Response = (), Error = BoxError> + Clone {
    breaker
        .layer()
        .layer(tower::service_fn(|ok: bool| async move {
            if ok {
                Ok(())
            } else {
                Err::<(), BoxError>("boom".into())
            }
        }))
}

/// Waits (on paused time) until the breaker is in `state`; fails rather than hangs if
/// it never gets there.
async fn reach(states: &mut watch::Receiver<State>, state: State) {
    timeout(Duration::from_secs(3_600), states.wait_for(|s| *s == state))
        .await
        .unwrap_or_else(|_| panic!("still not {state} an hour later"))
        .unwrap();
}

async fn call<S>(svc: &mut S, ok: bool) -> Seen
where
    S: Service<bool, Response = (), Error = BoxError>,
{
    common::call_with(svc, ok).await
}

/// Lets woken tasks (a watchdog) run without moving the clock.
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

fn names(deps: &[Dependency]) -> Vec<&str> {
    deps.iter().map(|d| &*d.breaker.name).collect()
}

#[test]
fn an_empty_registry_is_ready() {
    let health = Health::new();
    assert!(health.is_ready());
    let snap = health.snapshot();
    assert!(snap.ready);
    assert!(snap.dependencies.is_empty());
}

#[tokio::test(start_paused = true)]
async fn readiness_is_blocked_by_forced_open_and_escalation_only() {
    let db = Breaker::builder("db").build().unwrap();
    let cache = Breaker::builder("cache")
        .consecutive_failures(1)
        .open_backoff(Backoff::constant(secs(5)))
        .half_open_calls(1)
        .build()
        .unwrap();
    let search = Breaker::builder("search")
        .consecutive_failures(1)
        .build()
        .unwrap();
    let health = Health::new();
    health.register(&db).register(&cache).register(&search);
    assert!(health.is_ready());

    // Open is not a reason to leave the load balancer: the breaker handles it.
    let mut cache_svc = guarded(&cache);
    assert_eq!(call(&mut cache_svc, false).await, Seen::Failed);
    assert_eq!(cache.state(), State::Open);
    assert!(health.is_ready());
    // Neither is half-open (a trial holds its permit in this ready service).
    tokio::time::sleep(secs(5)).await;
    let mut trial = guarded(&cache);
    trial.ready().await.unwrap();
    assert_eq!(cache.state(), State::HalfOpen);
    assert!(health.is_ready());
    drop(trial);
    // Nor forced closed.
    search.force_closed();
    assert!(health.is_ready());
    search.reset();

    // Forced open blocks, until reset.
    db.force_open();
    assert!(!health.is_ready());
    let snap = health.snapshot();
    assert!(!snap.ready);
    let blocking: Vec<_> = snap
        .dependencies
        .iter()
        .map(|d| d.blocks_readiness)
        .collect();
    assert_eq!(blocking, [true, false, false]);
    assert_eq!(snap.dependencies[0].breaker.state, State::ForcedOpen);
    assert!(!snap.dependencies[0].escalated);
    db.reset();
    assert!(health.is_ready());

    // Escalated blocks: two trips within a minute, past max_trips(1, ..).
    let watchdog = Watchdog::builder(&search, || async { Ok::<(), BoxError>(()) })
        .interval(secs(1))
        .healthy_threshold(1)
        .max_trips(1, secs(60))
        .spawn()
        .unwrap();
    let mut search_svc = guarded(&search);
    let mut states = search.subscribe();
    assert_eq!(call(&mut search_svc, false).await, Seen::Failed);
    reach(&mut states, State::Closed).await;
    assert!(health.is_ready(), "one trip is within the limit");
    assert_eq!(call(&mut search_svc, false).await, Seen::Failed);
    settle().await;
    assert!(search.is_escalated());
    assert!(!health.is_ready());
    let snap = health.snapshot();
    assert!(!snap.ready);
    let last = &snap.dependencies[2];
    assert_eq!(&*last.breaker.name, "search");
    assert!(last.escalated && last.blocks_readiness);
    assert_eq!(last.breaker.trips, 2);
    // Even when the breaker has closed again, until it stays closed for the window.
    reach(&mut states, State::Closed).await;
    assert!(!health.is_ready());
    tokio::time::sleep(secs(60)).await;
    settle().await;
    assert!(health.is_ready());
    watchdog.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn snapshot_lists_dependencies_in_registration_order_with_their_figures() {
    let db = Breaker::builder("db")
        .consecutive_failures(2)
        .open_backoff(Backoff::constant(secs(5)))
        .build()
        .unwrap();
    let cache = Breaker::builder("cache")
        .failure_rate(0.5)
        .count_window(4)
        .min_calls(4)
        .build()
        .unwrap();
    let search = Breaker::new("search");
    let health = Health::new();
    // Registered through a clone: clones share the registry. Twice is listed twice.
    health.clone().register(&search).register(&db);
    health.register(&cache).register(&search);

    let mut db_svc = guarded(&db);
    for ok in [true, false, false, true] {
        call(&mut db_svc, ok).await;
    }
    let mut cache_svc = guarded(&cache);
    for ok in [true, false, true, true] {
        assert_eq!(
            call(&mut cache_svc, ok).await,
            if ok { Seen::Ok } else { Seen::Failed }
        );
    }
    tokio::time::sleep(secs(2)).await;

    let snap = health.snapshot();
    assert!(snap.ready);
    assert_eq!(
        names(&snap.dependencies),
        ["search", "db", "cache", "search"]
    );
    assert!(snap
        .dependencies
        .iter()
        .all(|d| !d.escalated && !d.blocks_readiness));

    let db_snap = &snap.dependencies[1].breaker;
    assert_eq!(db_snap.state, State::Open);
    assert_eq!(
        (
            db_snap.calls,
            db_snap.successes,
            db_snap.failures,
            db_snap.rejected
        ),
        (3, 1, 2, 1)
    );
    assert_eq!(db_snap.trips, 1);
    assert_eq!(db_snap.failure_rate, None, "no rate rule");
    assert_eq!(db_snap.retry_after, Some(secs(3)));

    let cache_snap = &snap.dependencies[2].breaker;
    assert_eq!(cache_snap.state, State::Closed);
    assert_eq!(
        (cache_snap.calls, cache_snap.successes, cache_snap.failures),
        (4, 3, 1)
    );
    assert_eq!(cache_snap.failure_rate, Some(0.25));
    assert_eq!(cache_snap.retry_after, None);

    let search_snap = &snap.dependencies[0].breaker;
    assert_eq!(search_snap.state, State::Closed);
    assert_eq!((search_snap.calls, search_snap.trips), (0, 0));
    assert_eq!(search_snap.failure_rate, None, "empty window");
    assert_eq!(snap.dependencies[0], snap.dependencies[3]);

    // Each entry is the breaker's own snapshot.
    assert_eq!(snap.dependencies[1].breaker, db.snapshot());
    assert_eq!(
        format!("{health:?}"),
        r#"Health { breakers: ["search", "db", "cache", "search"] }"#
    );
}

#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn the_snapshot_serializes_to_the_health_route_json() {
    use serde_json::json;

    let db = Breaker::builder("db").build().unwrap();
    let cache = Breaker::builder("cache")
        .failure_rate(1.0)
        .count_window(2)
        .min_calls(2)
        .open_backoff(Backoff::constant(secs(5)))
        .build()
        .unwrap();
    let search = Breaker::builder("search").build().unwrap();
    let health = Health::new();
    health.register(&db).register(&cache).register(&search);
    db.force_open();
    search.force_closed();
    let mut cache_svc = guarded(&cache);
    call(&mut cache_svc, false).await;
    call(&mut cache_svc, false).await;
    assert!(call(&mut cache_svc, true).await.is_rejected());
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let figures = |name: &str, state: &str| {
        json!({
            "name": name, "state": state, "calls": 0, "successes": 0, "failures": 0,
            "ignored": 0, "slow": 0, "rejected": 0, "shed": 0, "trips": 0,
            "failure_rate": null, "retry_after_ms": null, "capped": false,
        })
    };
    let mut cache_figures = figures("cache", "open");
    for (key, value) in [
        ("calls", json!(2)),
        ("failures", json!(2)),
        ("rejected", json!(1)),
        ("trips", json!(1)),
        ("failure_rate", json!(1.0)),
        ("retry_after_ms", json!(3_500)),
    ] {
        cache_figures[key] = value;
    }
    let expected = json!({
        "ready": false,
        "dependencies": [
            {
                "breaker": figures("db", "forced-open"),
                "escalated": false,
                "blocks_readiness": true,
            },
            { "breaker": cache_figures, "escalated": false, "blocks_readiness": false },
            {
                "breaker": figures("search", "forced-closed"),
                "escalated": false,
                "blocks_readiness": false,
            },
        ],
    });
    assert_eq!(serde_json::to_value(health.snapshot()).unwrap(), expected);

    // A half-open breaker reads "half-open"; ready again once db is reset.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let mut trial = guarded(&cache);
    trial.ready().await.unwrap();
    db.reset();
    let value = serde_json::to_value(health.snapshot()).unwrap();
    assert_eq!(value["ready"], json!(true));
    assert_eq!(
        value["dependencies"][0]["breaker"]["state"],
        json!("closed")
    );
    assert_eq!(
        value["dependencies"][1]["breaker"]["state"],
        json!("half-open")
    );
    assert_eq!(
        value["dependencies"][1]["breaker"]["retry_after_ms"],
        json!(null)
    );
    // The snapshot's state alone also serializes in kebab case.
    assert_eq!(
        serde_json::to_value(State::ForcedOpen).unwrap(),
        json!("forced-open")
    );
}
