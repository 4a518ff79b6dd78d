//! Keyed breakers: one breaker per key, bounded, and a `tower::balance::p2c` balancer
//! routing around an endpoint whose breaker is open. All on paused time.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use steadfast::backoff::Backoff;
use steadfast::breaker::error::Open;
use steadfast::breaker::{Breaker, Readiness, State};
use steadfast::health::Health;
use steadfast::keyed::KeyedBreaker;
use steadfast::BoxError;
use tokio::time::advance;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::Constant;
use tower::util::rng::HasherRng;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

async fn settle() {
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
}

/// Requests are `"host/n"`; a host named `down*` fails.
// A key function takes `&Req`, and the request is a `String`.
#[allow(clippy::ptr_arg)]
fn host(req: &String) -> String {
    req.split('/').next().unwrap_or_default().to_owned()
}

#[tokio::test(start_paused = true)]
async fn one_failing_key_trips_alone() {
    let keyed = KeyedBreaker::builder(Breaker::builder("hosts").consecutive_failures(3))
        .build()
        .unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let r = reached.clone();
    let mut svc = ServiceBuilder::new()
        .layer(keyed.layer(host))
        .service(service_fn(move |req: String| {
            r.fetch_add(1, SeqCst);
            async move {
                if req.starts_with("down") {
                    Err::<String, _>("refused")
                } else {
                    Ok(req)
                }
            }
        }));
    for i in 0..3 {
        let err = svc.ready().await.unwrap().call(format!("down/{i}")).await;
        assert!(err.unwrap_err().downcast_ref::<Open>().is_none());
    }
    assert_eq!(keyed.get(&"down".into()).unwrap().state(), State::Open);
    let before = reached.load(SeqCst);
    let err = svc.ready().await.unwrap().call("down/4".into()).await;
    let open = err
        .unwrap_err()
        .downcast::<Open>()
        .expect("an Open rejection");
    assert_eq!(open.breaker(), "hosts", "low-cardinality name");
    assert_eq!(
        reached.load(SeqCst),
        before,
        "a rejected call reached the host"
    );
    for h in ["up1", "up2"] {
        let ok = svc.ready().await.unwrap().call(format!("{h}/x")).await;
        assert_eq!(ok.unwrap(), format!("{h}/x"));
        assert_eq!(keyed.get(&h.into()).unwrap().state(), State::Closed);
    }
    assert_eq!(keyed.len(), 3);

    let snapshot = keyed.snapshot();
    assert_eq!((snapshot.keys, snapshot.rejecting), (3, 1));
    assert_eq!(
        snapshot.shown[0].key, "\"down\"",
        "not-closed keys come first"
    );
    assert_eq!(snapshot.shown[0].breaker.state, State::Open);
    let health = Health::new();
    health.register_keyed(&keyed);
    let health = health.snapshot();
    assert!(
        health.ready,
        "one host down must not make the service unready"
    );
    assert_eq!(health.keyed[0].rejecting, 1);
}

#[tokio::test(start_paused = true)]
async fn snapshots_are_capped() {
    let keyed = KeyedBreaker::builder(Breaker::builder("hosts"))
        .snapshot_keys(4)
        .build()
        .unwrap();
    for i in 0..50u32 {
        keyed.breaker(&i);
    }
    keyed.breaker(&7).force_open();
    keyed.breaker(&31).force_open();
    let s = keyed.snapshot();
    assert_eq!((s.keys, s.rejecting, s.shown.len()), (50, 2, 4));
    let mut first: Vec<_> = s.shown[..2].iter().map(|k| k.key.as_str()).collect();
    first.sort_unstable();
    assert_eq!(first, ["31", "7"]);
    assert!(s.shown.iter().all(|k| k.breaker.name.as_ref() == "hosts"));
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_forgotten_and_used_ones_kept() {
    let idle = Duration::from_secs(60);
    let keyed = KeyedBreaker::builder(Breaker::builder("hosts"))
        .idle(idle)
        .build()
        .unwrap();
    for i in 0..10u32 {
        keyed.breaker(&i);
    }
    advance(idle / 2).await;
    keyed.breaker(&3); // used: kept
    assert_eq!(keyed.evict_idle(), 0, "nothing is idle yet");
    advance(idle / 2).await;
    assert_eq!(keyed.evict_idle(), 9, "the nine unused keys are idle");
    assert_eq!(keyed.len(), 1);
    assert!(keyed.get(&3).is_some() && keyed.get(&0).is_none());
    assert_eq!(keyed.evicted(), 9);
    // A sweep also runs when a key is created.
    advance(idle).await;
    keyed.breaker(&100);
    assert_eq!(keyed.len(), 1);
    assert!(keyed.get(&3).is_none());
}

#[tokio::test(start_paused = true)]
async fn at_the_cap_the_least_recently_used_go() {
    let keyed = KeyedBreaker::builder(Breaker::builder("hosts"))
        .max_keys(16)
        .build()
        .unwrap();
    for i in 0..16u32 {
        keyed.breaker(&i);
        advance(Duration::from_millis(1)).await;
        keyed.evict_idle(); // a sweep stamps each key's last use
    }
    keyed.breaker(&0); // 0 becomes the most recent
    keyed.evict_idle();
    keyed.breaker(&16);
    assert_eq!(
        keyed.len(),
        15,
        "a batch of max_keys / 8 = 2 evicted, one added"
    );
    assert!(keyed.get(&0).is_some(), "the recently used key was evicted");
    assert!(keyed.get(&1).is_none() && keyed.get(&2).is_none());
    assert!(keyed.get(&3).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_watchdog_per_key_probes_and_ends_with_the_key() {
    let probes: Arc<std::sync::Mutex<HashMap<u32, usize>>> = Arc::default();
    let p = probes.clone();
    let keyed = KeyedBreaker::builder(Breaker::builder("hosts").start_open())
        .idle(Duration::from_secs(60))
        .watchdog(
            move |key: &u32| {
                let (key, p) = (*key, p.clone());
                move || {
                    *p.lock().unwrap().entry(key).or_default() += 1;
                    async move {
                        if key == 1 {
                            Ok(())
                        } else {
                            Err("down")
                        }
                    }
                }
            },
            |w| {
                w.interval(Duration::from_secs(1))
                    .backoff(Backoff::constant(Duration::from_secs(1)))
                    .healthy_threshold(1)
            },
        )
        .build()
        .unwrap();
    let (one, two) = (keyed.breaker(&1), keyed.breaker(&2));
    for _ in 0..3 {
        advance(Duration::from_secs(1)).await;
        settle().await;
    }
    assert_eq!(one.state(), State::Closed, "key 1's probe passes");
    assert_eq!(two.state(), State::Open, "key 2's probe fails");
    let seen = probes.lock().unwrap()[&2];
    assert!(seen >= 2, "key 2 probed {seen} times");
    drop((one, two));
    advance(Duration::from_secs(61)).await;
    assert_eq!(keyed.evict_idle(), 2);
    for _ in 0..5 {
        advance(Duration::from_secs(1)).await;
        settle().await;
    }
    let after = probes.lock().unwrap()[&2];
    for _ in 0..5 {
        advance(Duration::from_secs(1)).await;
        settle().await;
    }
    assert_eq!(
        probes.lock().unwrap()[&2],
        after,
        "an evicted key is still probed"
    );
}

// --- a p2c balancer over three endpoints ---------------------------------------------------

/// One in-process endpoint: counts real calls and probes, fails while down.
#[derive(Default)]
struct Endpoint {
    down: AtomicBool,
    calls: AtomicUsize,
    probes: AtomicUsize,
}

#[tokio::test(start_paused = true)]
async fn p2c_routes_around_an_open_endpoint_and_takes_it_back() {
    let names = ["a", "b", "c"];
    let endpoints: Arc<HashMap<&'static str, Endpoint>> =
        Arc::new(names.iter().map(|n| (*n, Endpoint::default())).collect());
    endpoints["c"].down.store(true, SeqCst);

    let eps = endpoints.clone();
    let keyed = KeyedBreaker::builder(
        Breaker::builder("endpoints")
            .consecutive_failures(3)
            .open_backoff(Backoff::constant(Duration::from_secs(30)))
            .readiness(Readiness::Wait),
    )
    .watchdog(
        move |name: &&'static str| {
            let (name, eps) = (*name, eps.clone());
            move || {
                let ep = &eps[name];
                ep.probes.fetch_add(1, SeqCst);
                let up = !ep.down.load(SeqCst);
                async move {
                    if up {
                        Ok(())
                    } else {
                        Err("refused")
                    }
                }
            }
        },
        |w| {
            w.interval(Duration::from_millis(200))
                .backoff(Backoff::constant(Duration::from_millis(200)))
                .healthy_threshold(2)
        },
    )
    .build()
    .unwrap();

    let services: Vec<_> = names
        .iter()
        .map(|name| {
            let eps = endpoints.clone();
            let name = *name;
            let svc = ServiceBuilder::new()
                .layer(keyed.layer_for(&name))
                .service(service_fn(move |_: u32| {
                    let ep = &eps[name];
                    ep.calls.fetch_add(1, SeqCst);
                    let up = !ep.down.load(SeqCst);
                    async move {
                        if up {
                            Ok(name)
                        } else {
                            Err("refused")
                        }
                    }
                }));
            Constant::new(svc, 0)
        })
        .collect();
    // p2c draws its pairs from an rng: a fixed seed, so that the shares below are the
    // same on every run (with a random one, c's share after it rejoins was 8 to 31 of
    // 100, 10 or fewer in 3 runs of 600).
    let rng = HasherRng::with_hasher(BuildHasherDefault::<DefaultHasher>::default());
    let mut balance = Balance::from_rng(ServiceList::new(services), rng);
    let calls = |n: &str| endpoints[n].calls.load(SeqCst);
    let probes = |n: &str| endpoints[n].probes.load(SeqCst);
    let c = keyed.get(&"c").expect("made by layer_for");

    // Until c trips: it gets its share of the traffic, and fails.
    let mut served = HashMap::new();
    let mut ticks = 0;
    while c.state() == State::Closed {
        drive(&mut balance, 1, &mut served).await;
        ticks += 1;
        assert!(ticks < 100, "c never tripped");
    }
    let trip_calls = calls("c");
    assert_eq!(trip_calls, 3, "c tripped on its third failure");

    // Within a second of the trip, and for as long as c is down: every request goes to
    // a and b, and c gets probes only.
    let probes_at_trip = probes("c");
    let mut served = HashMap::new();
    drive(&mut balance, 100, &mut served).await;
    let (a1, b1) = (served.get("a").copied(), served.get("b").copied());
    assert_eq!(a1.unwrap_or(0) + b1.unwrap_or(0), 100, "{served:?}");
    assert!(
        a1 > Some(20) && b1 > Some(20),
        "p2c spreads over both: {served:?}"
    );
    drive(&mut balance, 400, &mut served).await;
    assert_eq!(served.get("c"), None, "c served while down");
    assert_eq!(
        calls("c"),
        trip_calls,
        "a real request reached c while open"
    );
    assert!(
        probes("c") >= probes_at_trip + 20,
        "c probed {} times in 5 s",
        probes("c") - probes_at_trip
    );
    assert_eq!(c.state(), State::Open);

    // c recovers: two passing probes close its breaker, the balancer is woken, and c
    // takes traffic again within a second.
    endpoints["c"].down.store(false, SeqCst);
    let mut served = HashMap::new();
    drive(&mut balance, 100, &mut served).await;
    assert_eq!(c.state(), State::Closed);
    assert!(
        served.get("c").copied() > Some(10),
        "c did not rejoin: {served:?}"
    );
    assert_eq!(served.values().sum::<usize>(), 100, "{served:?}");
}

/// Sends `n` requests through the balancer, 10 ms apart, counting who answered.
async fn drive<D>(balance: &mut Balance<D, u32>, n: u32, served: &mut HashMap<&'static str, usize>)
where
    D: tower::discover::Discover + Unpin,
    D::Key: std::hash::Hash + Clone,
    D::Error: Into<BoxError>,
    D::Service: Service<u32, Response = &'static str> + tower::load::Load,
    <D::Service as Service<u32>>::Error: Into<BoxError>,
    <D::Service as tower::load::Load>::Metric: std::fmt::Debug,
{
    for i in 0..n {
        let svc = balance.ready().await.expect("the balancer failed");
        if let Ok(name) = svc.call(i).await {
            *served.entry(name).or_default() += 1;
        }
        advance(Duration::from_millis(10)).await;
        settle().await;
    }
}

#[tokio::test]
async fn keys_run_no_clock_task_of_their_own() {
    // A time window's coarse clock is a task per breaker; a keyed breaker's keys,
    // made and dropped by the thousand, read the clock instead.
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    let plain = Breaker::new("plain");
    assert_eq!(
        tasks(),
        before + 1,
        "a breaker with a time window runs its clock"
    );
    drop(plain);
    settle().await;
    let keyed = KeyedBreaker::builder(Breaker::builder("hosts"))
        .build()
        .unwrap();
    let before = tasks();
    for host in 0..10u32 {
        let _ = keyed.breaker(&host);
    }
    assert_eq!(keyed.len(), 10);
    // At most `before`: the first breaker's aborted clock task may be reaped meanwhile.
    assert!(tasks() <= before, "keys started clock tasks");
}

#[test]
fn a_keyed_breaker_has_its_templates_name_and_knows_when_it_is_empty() {
    let keyed = KeyedBreaker::builder(Breaker::builder("hosts"))
        .build()
        .unwrap();
    assert_eq!(keyed.name(), "hosts");
    assert!(keyed.is_empty());
    let breaker = keyed.breaker(&"a");
    assert_eq!(breaker.name(), "hosts");
    assert!(!keyed.is_empty());
    assert_eq!(keyed.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_swept_at_most_every_eighth_of_idle() {
    // Sweeps run on the create path, no oftener than every idle / 8 (100 ms here): a
    // key past its idle time goes at the first sweep after it, not at every create.
    let keyed = KeyedBreaker::builder(Breaker::builder("hosts"))
        .idle(Duration::from_millis(800))
        .build()
        .unwrap();
    let _ = keyed.breaker(&"a");
    advance(Duration::from_millis(790)).await;
    let _ = keyed.breaker(&"c"); // sweeps: a is 790 ms idle, kept
    advance(Duration::from_millis(20)).await;
    let _ = keyed.breaker(&"b"); // 20 ms after the last sweep: none
    assert_eq!((keyed.len(), keyed.evicted()), (3, 0));
    advance(Duration::from_millis(90)).await;
    let _ = keyed.breaker(&"d"); // 110 ms after it: a sweep, and a goes
    assert_eq!((keyed.len(), keyed.evicted()), (3, 1));
    assert!(keyed.get(&"a").is_none());
}

/// A service that is never ready, or fails its readiness.
#[derive(Clone)]
struct Unready {
    fail: bool,
}

impl Service<String> for Unready {
    type Response = ();
    type Error = &'static str;
    type Future = std::future::Ready<Result<(), &'static str>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        if self.fail {
            std::task::Poll::Ready(Err("gone"))
        } else {
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, _: String) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

#[test]
fn the_keyed_service_is_as_ready_as_its_inner_service() {
    let keyed = KeyedBreaker::builder(Breaker::builder("hosts"))
        .build()
        .unwrap();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut pending = keyed.layer(host).layer(Unready { fail: false });
    assert!(pending.poll_ready(&mut cx).is_pending());
    let mut failing = keyed.layer(host).layer(Unready { fail: true });
    match failing.poll_ready(&mut cx) {
        std::task::Poll::Ready(Err(e)) => assert_eq!(e.to_string(), "gone"),
        other => panic!("{other:?}"),
    }
}
