//! The metrics series move as the breaker and the watchdog act (feature `metrics`),
//! read through metrics-util's debugging recorder, on paused time.
#![cfg(feature = "metrics")]

use std::sync::OnceLock;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use steadfast::backoff::Backoff;
use steadfast::breaker::{Breaker, State};
use steadfast::health::Health;
use steadfast::watchdog::Watchdog;
use tower::{Layer, Service, ServiceExt};

/// One recorder for the test binary (the facade's recorder is global); each test
/// uses its own breaker name, and takes [`serial`]: a snapshot drains what it reads.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

/// One test at a time (an async lock: each test holds it across its awaits).
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE.lock().await
}

/// Every series now, by name and labels. Taking it drains the recorder: counters that
/// were incremented read as what was added since the last snapshot.
struct Snap(Vec<Series>);

/// A series' name, labels and value.
type Series = (String, Vec<(String, String)>, DebugValue);

fn snap() -> Snap {
    Snap(
        snapshotter()
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let labels = key
                    .labels()
                    .map(|l| (l.key().to_string(), l.value().to_string()))
                    .collect();
                (key.name().to_string(), labels, value)
            })
            .collect(),
    )
}

impl Snap {
    /// The series `name` whose labels include every pair of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0
            .iter()
            .find(|(n, ls, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.value(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!("{name} {labels:?}: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.value(name, labels) {
            Some(DebugValue::Gauge(g)) => g.into_inner(),
            other => panic!("{name} {labels:?}: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_series_follow_its_snapshot_when_recorded() {
    let _serial = serial().await;
    snapshotter();
    let breaker = Breaker::builder("metrics-breaker")
        .consecutive_failures(2)
        .open_backoff(Backoff::constant(Duration::from_secs(5)))
        .build()
        .unwrap();
    let health = Health::new();
    health.register(&breaker);
    let mut svc = breaker
        .layer()
        .layer(tower::service_fn(|ok: bool| async move {
            if ok {
                Ok(())
            } else {
                Err("down")
            }
        }));
    let b = ("breaker", "metrics-breaker");

    // Nothing is written per call: before `record`, no series exists.
    let _ = svc.ready().await.unwrap().call(true).await;
    assert!(snap()
        .value("steadfast_breaker_calls_total", &[b])
        .is_none());

    health.record_metrics();
    let s = snap();
    let calls =
        |s: &Snap, outcome| s.counter("steadfast_breaker_calls_total", &[b, ("outcome", outcome)]);
    let state = |s: &Snap, state| s.gauge("steadfast_breaker_state", &[b, ("state", state)]);
    assert_eq!((calls(&s, "success"), calls(&s, "failure")), (1, 0));
    assert_eq!((state(&s, "closed"), state(&s, "open")), (1.0, 0.0));
    assert_eq!(s.gauge("steadfast_breaker_retry_after_seconds", &[b]), 0.0);

    // Two failures trip it; a third call is rejected.
    for _ in 0..3 {
        let _ = svc.ready().await.unwrap().call(false).await;
    }
    assert_eq!(breaker.state(), State::Open);
    health.record_metrics();
    let s = snap();
    // Counters are recorded as absolute values: the totals, whatever was read before.
    assert_eq!((calls(&s, "success"), calls(&s, "failure")), (1, 2));
    assert_eq!(s.counter("steadfast_breaker_rejected_total", &[b]), 1);
    assert_eq!(s.counter("steadfast_breaker_trips_total", &[b]), 1);
    assert_eq!((state(&s, "closed"), state(&s, "open")), (0.0, 1.0));
    assert_eq!(s.gauge("steadfast_breaker_retry_after_seconds", &[b]), 5.0);
    assert_eq!(s.gauge("steadfast_breaker_escalated", &[b]), 0.0);
    // A consecutive rule has no window: no failure rate to report.
    assert!(s.value("steadfast_breaker_failure_rate", &[b]).is_none());
}

#[tokio::test(start_paused = true)]
async fn watchdog_probes_and_escalations_are_counted_as_they_happen() {
    let _serial = serial().await;
    snapshotter();
    let _ = snap(); // drain what earlier tests left
    let breaker = Breaker::builder("metrics-watchdog")
        .start_open()
        .build()
        .unwrap();
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let up = up.clone();
        move || {
            let ok = up.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err("down")
                }
            }
        }
    };
    let watchdog = Watchdog::builder(&breaker, probe)
        .interval(Duration::from_secs(1))
        .max_trips(1, Duration::from_secs(60))
        .spawn()
        .unwrap();
    let b = ("breaker", "metrics-watchdog");
    let probes =
        |s: &Snap, result| s.counter("steadfast_watchdog_probes_total", &[b, ("result", result)]);
    // Booted open: a probe at once, then 0.5 to 1 s later, then 1 to 2 s apart; all
    // fail.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let failed = probes(&snap(), "failed");
    assert!((3..=4).contains(&failed), "{failed} failed probes");
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(breaker.state(), State::Closed);
    let s = snap();
    assert_eq!(probes(&s, "passed"), 1);
    assert!(s
        .value("steadfast_watchdog_escalations_total", &[b])
        .is_none());

    // Two trips within a minute, past `max_trips(1, ..)`: escalated, counted once.
    let mut svc = breaker
        .layer()
        .layer(tower::service_fn(|_: ()| async { Err::<(), _>("down") }));
    for round in 0..2 {
        up.store(false, std::sync::atomic::Ordering::SeqCst);
        // The defaults judge once 20 calls are in, and trip at 95% failures.
        for _ in 0..20 {
            let _ = svc.ready().await.unwrap().call(()).await;
        }
        assert_eq!(breaker.state(), State::Open, "round {round}");
        up.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(breaker.state(), State::Closed, "round {round}");
    }
    assert!(watchdog.is_escalated());
    steadfast::metrics::record(&breaker);
    let s = snap();
    assert_eq!(s.counter("steadfast_watchdog_escalations_total", &[b]), 1);
    assert_eq!(s.gauge("steadfast_breaker_escalated", &[b]), 1.0);
    assert_eq!(s.counter("steadfast_breaker_trips_total", &[b]), 2);
    watchdog.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retries_and_refusals_are_counted_by_policy_and_reason() {
    use steadfast::retry::{Budget, RetryLayer, RetryPolicy};
    let _serial = serial().await;
    snapshotter();
    let _ = snap();
    // 3 attempts, no delay; a budget with no ratio and 1 retry a second over 1 s.
    let budget = Budget::new(0.0, 1, Duration::from_secs(1)).unwrap();
    let policy = RetryPolicy::new()
        .name("metrics-retry")
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::ZERO))
        .budget(budget.clone());
    let mut svc = RetryLayer::new(policy)
        .unwrap()
        .layer(tower::service_fn(|_: ()| async { Err::<(), _>("down") }));
    // The first request retries once (the budget's one), then is refused by it.
    let _ = svc.ready().await.unwrap().call(()).await;
    let p = ("policy", "metrics-retry");
    let s = snap();
    assert_eq!(s.counter("steadfast_retry_retries_total", &[p]), 1);
    assert_eq!(
        s.counter("steadfast_retry_refused_total", &[p, ("reason", "budget")]),
        1
    );
    steadfast::metrics::record_budget("metrics-retry", &budget);
    assert_eq!(snap().gauge("steadfast_retry_budget_balance", &[p]), 0.0);
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_report_keys_not_per_key_series() {
    use steadfast::keyed::KeyedBreaker;
    let _serial = serial().await;
    snapshotter();
    let hosts = KeyedBreaker::builder(Breaker::builder("metrics-hosts").consecutive_failures(1))
        .max_keys(2)
        .build()
        .unwrap();
    let health = Health::new();
    health.register_keyed(&hosts);
    let mut svc = hosts
        .layer(|host: &&'static str| host.to_string())
        .layer(tower::service_fn(|host: &'static str| async move {
            if host == "down" {
                Err("refused")
            } else {
                Ok(())
            }
        }));
    for host in ["up", "down", "other"] {
        let _ = svc.ready().await.unwrap().call(host).await;
    }
    health.record_metrics();
    let s = snap();
    let b = ("breaker", "metrics-hosts");
    assert_eq!(s.gauge("steadfast_keyed_keys", &[b]), 2.0, "capped at 2");
    assert_eq!(s.counter("steadfast_keyed_evictions_total", &[b]), 1);
    // No series carries a key.
    assert!(s
        .0
        .iter()
        .all(|(_, labels, _)| labels.iter().all(|(_, v)| v != "up" && v != "down")));
}

#[test]
fn a_prometheus_scrape_shows_the_breaker() {
    // The exporter a Prometheus user installs, here as a local recorder: `record` in
    // the /metrics handler, then `render`.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let breaker = Breaker::builder("scraped")
        .consecutive_failures(1)
        .build()
        .unwrap();
    breaker.force_open();
    metrics::with_local_recorder(&recorder, || steadfast::metrics::record(&breaker));
    let text = handle.render();
    for line in [
        "steadfast_breaker_state{breaker=\"scraped\",state=\"forced-open\"} 1",
        "steadfast_breaker_state{breaker=\"scraped\",state=\"closed\"} 0",
        "steadfast_breaker_calls_total{breaker=\"scraped\",outcome=\"success\"} 0",
        "steadfast_breaker_trips_total{breaker=\"scraped\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn shed_slow_failure_rate_rejecting_and_max_elapsed_are_reported() {
    use steadfast::retry::{Budget, RetryLayer, RetryPolicy};
    let _serial = serial().await;
    snapshotter();
    let _ = snap();
    // A breaker that sheds (k = 1, nothing exempt), and one that counts slow calls.
    let breaker = Breaker::builder("metrics-shed")
        .consecutive_failures(1_000)
        .min_calls(1)
        .adaptive_throttling(1.0)
        .seed(5)
        .build()
        .unwrap();
    let mut svc = breaker
        .layer()
        .layer(tower::service_fn(|_: ()| async { Err::<(), _>("down") }));
    for _ in 0..30 {
        let _ = svc.ready().await.unwrap().call(()).await;
    }
    let slow = Breaker::builder("metrics-slow")
        .slow_calls(Duration::from_millis(10), 1.0)
        .count_window(10)
        .min_calls(5)
        .build()
        .unwrap();
    let mut slow_svc = slow.layer().layer(tower::service_fn(|_: ()| async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, &'static str>(())
    }));
    let _ = slow_svc.ready().await.unwrap().call(()).await;
    steadfast::metrics::record(&breaker);
    steadfast::metrics::record(&slow);
    let s = snap();
    let b = ("breaker", "metrics-shed");
    let snapshot = breaker.snapshot();
    assert!(snapshot.shed > 0, "{snapshot:?}");
    assert_eq!(
        s.counter("steadfast_breaker_shed_total", &[b]),
        snapshot.shed
    );
    let rate = s.gauge("steadfast_breaker_failure_rate", &[b]);
    assert_eq!(Some(rate), snapshot.failure_rate);
    assert_eq!(rate, 1.0, "every call sent failed");
    let w = ("breaker", "metrics-slow");
    assert_eq!(s.counter("steadfast_breaker_slow_total", &[w]), 1);

    // A keyed breaker with one key rejecting.
    let (_hosts, health, mut keyed) =
        refused_hosts(Breaker::builder("metrics-rejecting").consecutive_failures(1));
    let _ = keyed.ready().await.unwrap().call("down").await;
    health.record_metrics();
    let k = ("breaker", "metrics-rejecting");
    assert_eq!(snap().gauge("steadfast_keyed_rejecting", &[k]), 1.0);

    // A retry refused by max_elapsed: its first delay (1 s) ends past 500 ms.
    let policy = RetryPolicy::new()
        .name("metrics-elapsed")
        .backoff(Backoff::constant(Duration::from_secs(1)))
        .max_elapsed(Duration::from_millis(500))
        .budget(Budget::unlimited());
    let mut retried = RetryLayer::new(policy)
        .unwrap()
        .layer(tower::service_fn(|_: ()| async { Err::<(), _>("down") }));
    let _ = retried.ready().await.unwrap().call(()).await;
    let p = ("policy", "metrics-elapsed");
    let s = snap();
    assert_eq!(
        s.counter(
            "steadfast_retry_refused_total",
            &[p, ("reason", "max_elapsed")]
        ),
        1
    );
    assert!(s.value("steadfast_retry_retries_total", &[p]).is_none());
}

#[tokio::test(start_paused = true)]
async fn an_ejection_cap_letting_calls_through_is_reported() {
    use steadfast::breaker::EjectionCap;
    let _serial = serial().await;
    snapshotter();
    // Two keys of a capped keyed breaker open; the cap lets one reject.
    let cap = EjectionCap::new(0.5).unwrap();
    let (hosts, health, mut svc) = refused_hosts(
        Breaker::builder("metrics-capped-hosts")
            .consecutive_failures(1)
            .ejection_cap(&cap),
    );
    for host in ["a", "b"] {
        let _ = svc.ready().await.unwrap().call(host).await;
    }
    health.record_metrics();
    let a = hosts.get(&"a".to_string()).unwrap();
    let b = hosts.get(&"b".to_string()).unwrap();
    steadfast::metrics::record(&a);
    steadfast::metrics::record(&b);
    let s = snap();
    let k = ("breaker", "metrics-capped-hosts");
    assert_eq!(s.gauge("steadfast_keyed_capped", &[k]), 1.0);
    assert_eq!(s.gauge("steadfast_keyed_rejecting", &[k]), 1.0);
    // Both keys' breakers share the name; the last recorded (b, the one rejecting)
    // wins the series.
    assert!(a.is_capped() && !b.is_capped());
    assert_eq!(s.gauge("steadfast_breaker_capped", &[k]), 0.0);
    steadfast::metrics::record(&a);
    assert_eq!(snap().gauge("steadfast_breaker_capped", &[k]), 1.0);
}

/// A keyed breaker per host from `template`, registered with a `Health`, over hosts
/// that refuse every call.
fn refused_hosts(
    template: steadfast::breaker::BreakerBuilder,
) -> (
    steadfast::keyed::KeyedBreaker<String>,
    Health,
    impl tower::Service<&'static str, Response = (), Error = steadfast::BoxError>,
) {
    let hosts = steadfast::keyed::KeyedBreaker::builder(template)
        .build()
        .unwrap();
    let health = Health::new();
    health.register_keyed(&hosts);
    let svc = hosts
        .layer(|host: &&'static str| host.to_string())
        .layer(tower::service_fn(|_: &'static str| async {
            Err::<(), _>("refused")
        }));
    (hosts, health, svc)
}
