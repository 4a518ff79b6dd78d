//! The ejection cap: of a set of breakers, only the most recently opened reject, up to
//! a share of the set; the others let calls through, and a balancer over them keeps
//! serving when every endpoint looks bad. All on paused time.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{secs, Seen};
use steadfast::backoff::Backoff;
use steadfast::breaker::error::Open;
use steadfast::breaker::{Breaker, BreakerBuilder, EjectionCap, Readiness, State};
use steadfast::health::Health;
use steadfast::keyed::KeyedBreaker;
use steadfast::BoxError;
use tokio::time::{advance, Instant};
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::Constant;
use tower::{service_fn, Layer, Service, ServiceExt};

/// A downstream that fails while `down`, counting the calls that reach it.
#[derive(Default)]
struct Endpoint {
    down: AtomicBool,
    calls: AtomicUsize,
}

type Svc = tower::util::BoxService<(), &'static str, BoxError>;

fn guarded(breaker: &Breaker, ep: &Arc<Endpoint>) -> Svc {
    let ep = ep.clone();
    tower::util::BoxService::new(breaker.layer().layer(service_fn(move |()| {
        ep.calls.fetch_add(1, SeqCst);
        let down = ep.down.load(SeqCst);
        async move {
            if down {
                Err("refused")
            } else {
                Ok("ok")
            }
        }
    })))
}

async fn call(svc: &mut Svc) -> Seen {
    common::call_with(svc, ()).await
}

fn endpoint_breaker(name: String, cap: &EjectionCap) -> BreakerBuilder {
    Breaker::builder(name)
        .consecutive_failures(1)
        .open_backoff(Backoff::constant(secs(30)))
        .half_open_calls(1)
        .ejection_cap(cap)
}

/// `n` endpoints, each with its breaker in the set of `cap`.
fn set(n: usize, cap: &EjectionCap) -> Vec<(Breaker, Arc<Endpoint>, Svc)> {
    (0..n)
        .map(|i| {
            let breaker = endpoint_breaker(format!("ep-{i}"), cap).build().unwrap();
            let ep = Arc::new(Endpoint::default());
            let svc = guarded(&breaker, &ep);
            (breaker, ep, svc)
        })
        .collect()
}

/// Trips every breaker of `set`, in order.
async fn trip_all(set: &mut [(Breaker, Arc<Endpoint>, Svc)]) {
    for (breaker, ep, svc) in set.iter_mut() {
        ep.down.store(true, SeqCst);
        assert_eq!(call(svc).await, Seen::Failed);
        assert_eq!(breaker.state(), State::Open);
    }
}

#[test]
fn the_limit_is_a_share_of_the_set_and_at_least_one() {
    let cap = EjectionCap::default();
    assert_eq!(cap.max_ejected(), 0.1);
    let mut breakers = Vec::new();
    for (members, limit) in [(1, 1), (5, 1), (19, 1), (20, 2), (25, 2), (30, 3)] {
        while breakers.len() < members {
            breakers.push(endpoint_breaker("b".into(), &cap).build().unwrap());
        }
        let s = cap.snapshot();
        assert_eq!((s.members, s.limit), (members, limit));
    }
    // A dropped breaker leaves the set.
    breakers.truncate(4);
    assert_eq!(cap.snapshot().members, 4);
    // Clones of a breaker are one member.
    let _clone = breakers[0].clone();
    assert_eq!(cap.snapshot().members, 4);
}

#[test]
fn caps_are_equal_when_they_are_the_same_set() {
    let cap = EjectionCap::default();
    assert_eq!(cap, cap.clone());
    assert_ne!(cap, EjectionCap::default(), "same settings, another set");
}

#[test]
fn a_share_outside_0_to_1_is_a_config_error() {
    for bad in [0.0, -0.1, 1.01, f64::NAN, f64::INFINITY] {
        let err = EjectionCap::new(bad).unwrap_err();
        assert_eq!(err.field(), "max_ejected", "{bad}");
    }
    assert!(EjectionCap::new(1.0).is_ok());
    assert!(EjectionCap::new(0.5).is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_most_recently_opened_reject_and_the_others_let_calls_through() {
    let cap = EjectionCap::new(0.2).unwrap();
    let mut set = set(10, &cap);
    trip_all(&mut set).await;
    let s = cap.snapshot();
    assert_eq!((s.members, s.limit, s.open, s.capped), (10, 2, 10, 8));
    assert!(cap.is_holding());

    // The two last to open reject; the eight others reach their endpoint.
    for (i, (breaker, ep, svc)) in set.iter_mut().enumerate() {
        let before = ep.calls.load(SeqCst);
        let seen = call(svc).await;
        if i >= 8 {
            assert!(seen.is_rejected(), "ep-{i}");
            assert_eq!(ep.calls.load(SeqCst), before);
            assert!(!breaker.is_capped());
        } else {
            assert_eq!(seen, Seen::Failed, "ep-{i}");
            assert_eq!(ep.calls.load(SeqCst), before + 1);
            assert!(breaker.snapshot().capped);
        }
    }

    // Calls let through count in the figures, not the rules: a success does not close
    // the breaker, a failure does not trip it again.
    let (breaker, ep, svc) = &mut set[0];
    ep.down.store(false, SeqCst);
    assert_eq!(call(svc).await, Seen::Ok);
    let snapshot = breaker.snapshot();
    assert_eq!(snapshot.state, State::Open);
    assert_eq!(
        (snapshot.calls, snapshot.successes, snapshot.trips),
        (3, 1, 1)
    );

    // One of the rejecting two closes: the next most recently opened takes its place.
    set[9].0.reset();
    let s = cap.snapshot();
    assert_eq!((s.open, s.capped), (9, 7));
    assert!(call(&mut set[7].2).await.is_rejected());
    assert!(!set[7].0.is_capped());
    assert!(set[6].0.is_capped());

    // Enough close that the cap lets go: every open breaker rejects.
    for (breaker, _, _) in &set[2..9] {
        breaker.reset();
    }
    let s = cap.snapshot();
    assert_eq!((s.open, s.capped), (2, 0));
    assert!(!cap.is_holding());
    assert!(call(&mut set[0].2).await.is_rejected());
}

#[tokio::test(start_paused = true)]
async fn trials_still_decide_and_a_failed_trial_reopens_as_the_most_recent() {
    // Three endpoints, at most one ejected.
    let cap = EjectionCap::new(0.34).unwrap();
    let mut set = set(3, &cap);
    trip_all(&mut set).await;
    assert!(set[0].0.is_capped() && set[1].0.is_capped() && !set[2].0.is_capped());

    // After the open delay, ep-0's next call is its half-open trial; it fails, and ep-0
    // opens again, now the most recently opened: it rejects, and ep-2 is let through.
    advance(secs(31)).await;
    assert_eq!(call(&mut set[0].2).await, Seen::Failed);
    assert_eq!(set[0].0.state(), State::Open);
    assert_eq!(set[0].0.snapshot().trips, 2);
    assert!(call(&mut set[0].2).await.is_rejected());
    assert!(set[2].0.is_capped());
    assert_eq!(call(&mut set[2].2).await, Seen::Failed);

    // ep-1 is back: its trial succeeds and closes it (half_open_calls(1)).
    set[1].1.down.store(false, SeqCst);
    assert_eq!(call(&mut set[1].2).await, Seen::Ok);
    assert_eq!(set[1].0.state(), State::Closed);
    let s = cap.snapshot();
    assert_eq!((s.open, s.capped), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn forced_open_is_left_alone() {
    let cap = EjectionCap::new(0.5).unwrap();
    let mut set = set(2, &cap);
    set[0].0.force_open();
    set[1].1.down.store(true, SeqCst);
    assert_eq!(call(&mut set[1].2).await, Seen::Failed);
    // The forced one does not count: one open, one may reject, nothing let through.
    let s = cap.snapshot();
    assert_eq!((s.open, s.capped), (1, 0));
    assert!(call(&mut set[0].2).await.is_rejected());
    assert!(call(&mut set[1].2).await.is_rejected());
}

#[tokio::test(start_paused = true)]
async fn a_waiting_service_is_woken_when_the_cap_lets_calls_through() {
    let cap = EjectionCap::new(0.5).unwrap();
    let builder = |name: &str| endpoint_breaker(name.into(), &cap).readiness(Readiness::Wait);
    let (a, b) = (builder("a").build().unwrap(), builder("b").build().unwrap());
    let (ep_a, ep_b) = (Arc::new(Endpoint::default()), Arc::new(Endpoint::default()));
    ep_a.down.store(true, SeqCst);
    ep_b.down.store(true, SeqCst);
    let (mut svc_a, mut svc_b) = (guarded(&a, &ep_a), guarded(&b, &ep_b));
    assert_eq!(call(&mut svc_a).await, Seen::Failed);

    // a is the one open breaker: it may reject, and its service waits.
    let start = Instant::now();
    let waiting = tokio::spawn(async move {
        svc_a.ready().await.unwrap();
        Instant::now()
    });
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished());

    // b opens: a is now the least recently opened, past the cap, and its waiting
    // service is woken at once rather than at the end of its 30 s open delay.
    assert_eq!(call(&mut svc_b).await, Seen::Failed);
    let ready_at = waiting.await.unwrap();
    assert!(
        ready_at - start < Duration::from_millis(1),
        "{:?}",
        ready_at - start
    );
    assert!(a.is_capped());
}

/// Sends one request through the balancer: what it saw, and how long `ready` took.
async fn one<D>(balance: &mut Balance<D, ()>) -> (Result<&'static str, BoxError>, Duration)
where
    D: tower::discover::Discover + Unpin,
    D::Key: std::hash::Hash + Clone,
    D::Error: Into<BoxError>,
    D::Service: Service<(), Response = &'static str> + tower::load::Load,
    <D::Service as Service<()>>::Error: Into<BoxError>,
    <D::Service as tower::load::Load>::Metric: std::fmt::Debug,
{
    let start = Instant::now();
    let svc = balance.ready().await.expect("the balancer failed");
    let waited = start.elapsed();
    (svc.call(()).await, waited)
}

type P2c = Balance<ServiceList<Vec<Constant<Svc, u32>>>, ()>;

/// Ten endpoints behind p2c, each with a breaker in `Readiness::Wait`, and the
/// client's own network failing: every endpoint fails.
fn balancer(cap: Option<&EjectionCap>) -> (P2c, Vec<(Breaker, Arc<Endpoint>)>) {
    let mut endpoints = Vec::new();
    let services = (0..10)
        .map(|i| {
            let mut builder = Breaker::builder(format!("ep-{i}"))
                .consecutive_failures(3)
                .open_backoff(Backoff::constant(secs(30)))
                .readiness(Readiness::Wait);
            if let Some(cap) = cap {
                builder = builder.ejection_cap(cap);
            }
            let breaker = builder.build().unwrap();
            let ep = Arc::new(Endpoint::default());
            ep.down.store(true, SeqCst);
            let svc = guarded(&breaker, &ep);
            endpoints.push((breaker, ep));
            Constant::new(svc, 0)
        })
        .collect();
    (Balance::new(ServiceList::new(services)), endpoints)
}

#[tokio::test(start_paused = true)]
async fn p2c_over_endpoints_that_all_fail_still_serves_with_the_cap() {
    let cap = EjectionCap::default();
    let (mut balance, endpoints) = balancer(Some(&cap));
    let open = |eps: &[(Breaker, Arc<Endpoint>)]| {
        eps.iter().filter(|(b, _)| b.state() == State::Open).count()
    };
    let mut sent = 0;
    while open(&endpoints) < 10 {
        let (answer, waited) = one(&mut balance).await;
        assert!(answer.is_err());
        assert!(waited < Duration::from_millis(1), "waited {waited:?}");
        advance(Duration::from_millis(10)).await;
        sent += 1;
        assert!(sent < 1_000, "not every breaker tripped");
    }
    assert!(cap.is_holding());

    // Every breaker is open; one rejects, and requests keep reaching the nine others
    // at once, without waiting for a breaker's open delay.
    let calls = |eps: &[(Breaker, Arc<Endpoint>)]| -> Vec<usize> {
        eps.iter().map(|(_, ep)| ep.calls.load(SeqCst)).collect()
    };
    let before = calls(&endpoints);
    for _ in 0..200 {
        let (answer, waited) = one(&mut balance).await;
        assert_eq!(answer.unwrap_err().to_string(), "refused");
        assert!(waited < Duration::from_millis(1), "waited {waited:?}");
        advance(Duration::from_millis(10)).await;
    }
    let after = calls(&endpoints);
    let served: Vec<usize> = before.iter().zip(&after).map(|(b, a)| a - b).collect();
    assert_eq!(served.iter().sum::<usize>(), 200);
    assert_eq!(served.iter().filter(|n| **n == 0).count(), 1, "{served:?}");
    let ejected = served.iter().position(|n| *n == 0).unwrap();
    assert!(!endpoints[ejected].0.is_capped());

    // The network comes back: requests succeed at once, long before any open delay
    // ends (2 s after the last trip, of 30 s).
    for (_, ep) in &endpoints {
        ep.down.store(false, SeqCst);
    }
    for _ in 0..100 {
        let (answer, waited) = one(&mut balance).await;
        assert_eq!(answer.unwrap(), "ok");
        assert!(waited < Duration::from_millis(1));
        advance(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn p2c_over_endpoints_that_all_fail_waits_without_the_cap() {
    // The same balancer with no cap: once every breaker is open, no endpoint is
    // ready, and a request waits for an open delay to end.
    let (mut balance, endpoints) = balancer(None);
    while endpoints.iter().any(|(b, _)| b.state() != State::Open) {
        let _ = one(&mut balance).await;
        advance(Duration::from_millis(10)).await;
    }
    let (_, waited) = one(&mut balance).await;
    assert!(waited >= secs(29), "waited only {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_keyed_breaker_caps_its_keys() {
    let cap = EjectionCap::default();
    let hosts = KeyedBreaker::builder(endpoint_breaker("hosts".into(), &cap))
        .build()
        .unwrap();
    let health = Health::new();
    health.register_keyed(&hosts);
    let reached: Arc<Mutex<HashMap<u32, usize>>> = Arc::default();
    let r = reached.clone();
    let mut svc = hosts
        .layer(|host: &u32| *host)
        .layer(service_fn(move |host: u32| {
            *r.lock().unwrap().entry(host).or_default() += 1;
            async { Err::<(), _>("refused") }
        }));
    for host in 0..20 {
        let _ = svc.ready().await.unwrap().call(host).await;
    }
    let s = cap.snapshot();
    assert_eq!((s.members, s.limit, s.open, s.capped), (20, 2, 20, 18));
    let snapshot = health.snapshot();
    assert_eq!(
        (snapshot.keyed[0].rejecting, snapshot.keyed[0].capped),
        (2, 18)
    );
    // The two last keys reject; the others still reach their host.
    for host in 0..20 {
        let err = svc.ready().await.unwrap().call(host).await.unwrap_err();
        assert_eq!(err.is::<Open>(), host >= 18, "host {host}: {err}");
    }
    assert_eq!(reached.lock().unwrap()[&0], 2);
    assert_eq!(reached.lock().unwrap()[&19], 1);
}

#[test]
fn the_cap_holding_and_letting_go_are_events() {
    use tracing_subscriber::layer::{Context, SubscriberExt};

    struct Messages(Arc<Mutex<Vec<(tracing::Level, String)>>>);
    struct Message<'a>(&'a mut String);
    impl tracing::field::Visit for Message<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                *self.0 = format!("{value:?}");
            }
        }
    }
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Messages {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut text = String::new();
            event.record(&mut Message(&mut text));
            if text.starts_with("ejection cap") {
                self.0
                    .lock()
                    .unwrap()
                    .push((*event.metadata().level(), text));
            }
        }
    }

    let log = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Messages(log.clone()));
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let cap = EjectionCap::new(0.5).unwrap();
            let mut set = set(2, &cap);
            trip_all(&mut set).await;
            assert!(cap.is_holding());
            set[1].0.reset();
            assert!(!cap.is_holding());
        });
    });
    let log = log.lock().unwrap();
    let levels: Vec<_> = log.iter().map(|(level, _)| *level).collect();
    assert_eq!(
        levels,
        [tracing::Level::WARN, tracing::Level::INFO],
        "{log:?}"
    );
    assert!(log[0].1.starts_with("ejection cap holding"), "{log:?}");
    assert_eq!(log[1].1, "ejection cap released");
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_set_is_not_ready_while_every_endpoint_is_open() {
    let cap = EjectionCap::default();
    let mut set = set(3, &cap);
    let health = Health::new();
    health.register_endpoints(&cap);
    trip_all(&mut set[..2]).await;
    assert!(
        health.is_ready(),
        "two of three open: the balancer routes around them"
    );
    trip_all(&mut set[2..]).await;
    assert!(!health.is_ready());
    let snapshot = health.snapshot();
    assert!(!snapshot.ready && snapshot.endpoint_sets[0].blocks_readiness);
    #[cfg(feature = "serde")]
    {
        let json = serde_json::to_value(snapshot).unwrap();
        assert_eq!(
            json["endpoint_sets"],
            serde_json::json!([{
                "members": 3, "limit": 1, "open": 3, "capped": 2, "blocks_readiness": true,
            }])
        );
        assert_eq!(json["ready"], serde_json::json!(false));
    }
    set[0].0.reset();
    assert!(health.is_ready());
    // A set with no breaker left never blocks.
    drop(set);
    assert_eq!(cap.snapshot().members, 0);
    assert!(health.is_ready());
}
