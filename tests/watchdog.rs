//! The watchdog on a timeline: probes that back off while user traffic is rejected,
//! recovery by probes only, probes that panic or hang, probing a closed breaker,
//! restart intensity and escalation, shutdown, detaching, and the end of the task.
//!
//! Every test runs on paused time: sleeps auto-advance when the runtime is idle, so a
//! minute of traffic takes milliseconds and every instant is exact.

mod common;

use common::{ms, secs, Seen};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use steadfast::backoff::{Backoff, Jitter};
use steadfast::breaker::{Breaker, Snapshot, State};
use steadfast::health::Health;
use steadfast::watchdog::{probe, Watchdog, WatchdogBuilder};
use steadfast::BoxError;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};

// --- helpers -----------------------------------------------------------------------------

/// Lets woken tasks (the watchdog) run without moving the clock.
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// A downstream that is up or down, shared by user calls and probes; it counts the
/// user calls that reach it.
#[derive(Clone, Default)]
struct Downstream {
    up: Arc<AtomicBool>,
    reached: Arc<AtomicUsize>,
}

type Svc = BoxCloneService<(), (), BoxError>;

impl Downstream {
    fn down() -> Self {
        Self::default()
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, SeqCst);
    }

    fn reached(&self) -> usize {
        self.reached.load(SeqCst)
    }

    /// The downstream as a tower service behind `breaker.layer()`.
    fn guarded(&self, breaker: &Breaker) -> Svc {
        let (up, reached) = (self.up.clone(), self.reached.clone());
        let inner = tower::service_fn(move |()| {
            reached.fetch_add(1, SeqCst);
            let up = up.load(SeqCst);
            async move {
                if up {
                    Ok(())
                } else {
                    Err::<(), BoxError>("connection refused".into())
                }
            }
        });
        BoxCloneService::new(breaker.layer().layer(inner))
    }
}

/// Waits (on paused time) until the breaker is in `state`; fails rather than hangs if
/// it never gets there.
async fn reach(states: &mut watch::Receiver<State>, state: State) {
    timeout(Duration::from_secs(3_600), states.wait_for(|s| *s == state))
        .await
        .unwrap_or_else(|_| panic!("still not {state} an hour later"))
        .unwrap();
}

async fn call(svc: &mut Svc) -> Seen {
    common::call_with(svc, ()).await
}

/// A log of probes: when each started (since `t0`) and whether it passed.
#[derive(Clone)]
struct Probes {
    t0: Instant,
    log: Arc<Mutex<Vec<(Duration, bool)>>>,
}

impl Probes {
    fn new() -> Self {
        Self {
            t0: Instant::now(),
            log: Arc::default(),
        }
    }

    /// A probe that passes while `ds` is up.
    fn of(
        &self,
        ds: &Downstream,
    ) -> impl FnMut() -> std::future::Ready<Result<(), &'static str>> + Send + 'static {
        let up = ds.up.clone();
        self.scripted(move |_| up.load(SeqCst))
    }

    /// A probe whose `n`th run (from 1) passes if `pass(n)`.
    fn scripted(
        &self,
        mut pass: impl FnMut(usize) -> bool + Send + 'static,
    ) -> impl FnMut() -> std::future::Ready<Result<(), &'static str>> + Send + 'static {
        let this = self.clone();
        move || {
            let mut log = this.log.lock().unwrap();
            let ok = pass(log.len() + 1);
            log.push((this.t0.elapsed(), ok));
            std::future::ready(if ok { Ok(()) } else { Err("probe failed") })
        }
    }

    fn log(&self) -> Vec<(Duration, bool)> {
        self.log.lock().unwrap().clone()
    }

    fn times(&self) -> Vec<Duration> {
        self.log().into_iter().map(|(t, _)| t).collect()
    }

    fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

fn gaps(times: &[Duration]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), &'static str>> + Send>>;

/// Counts its drops: shows a hanging probe's future was dropped, not leaked.
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// A probe future that never completes; `dropped` counts when it is dropped.
fn hang(dropped: &Arc<AtomicUsize>) -> ProbeFuture {
    let guard = DropCount(dropped.clone());
    Box::pin(async move {
        let _guard = guard;
        std::future::pending::<Result<(), &'static str>>().await
    })
}

const TEST_PANIC: &str = "test probe panics";

/// Keeps the expected probe panics out of the test output; any other panic is printed.
fn quiet_probe_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            if !message.is_some_and(|m| m.starts_with(TEST_PANIC)) {
                previous(info);
            }
        }));
    });
}

fn panics_when_polled() -> Result<(), &'static str> {
    panic!("{TEST_PANIC} while polled")
}

// --- a tiny tracing capture --------------------------------------------------------------

#[derive(Debug, Clone)]
struct Captured {
    level: tracing::Level,
    target: String,
    message: String,
    breaker: Option<String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    fn errors_on(&self, target: &str) -> Vec<Captured> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.level == tracing::Level::ERROR && e.target == target)
            .cloned()
            .collect()
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    breaker: Option<String>,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "breaker" => self.breaker = Some(value.to_owned()),
            "message" => self.message = value.to_owned(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        match field.name() {
            "breaker" => self.breaker = Some(format!("{value:?}")),
            "message" => self.message = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        self.0.lock().unwrap().push(Captured {
            level: *meta.level(),
            target: meta.target().to_owned(),
            message: fields.message,
            breaker: fields.breaker,
        });
    }
}

/// Captures this thread's events (the test and, on a current-thread runtime, the
/// watchdog task) until the guard is dropped.
fn capture_events() -> (Capture, tracing::subscriber::DefaultGuard) {
    use tracing_subscriber::layer::SubscriberExt;
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    (capture, tracing::subscriber::set_default(subscriber))
}

// --- probes back off; traffic never reaches a dead downstream ------------------------------

#[tokio::test(start_paused = true)]
async fn a_rejection_right_after_the_trip_gives_the_time_to_the_first_probe() {
    // Regression: between a trip and the moment the watchdog's task saw it, the
    // breaker knew no next probe, so those rejections had no `retry_after` (an HTTP
    // 503 without `Retry-After`; seen once in 1,455 by `incident_defaults` on real
    // time). The trip itself now sets the hint to the watchdog's interval.
    let breaker = Breaker::builder("tripped")
        .consecutive_failures(3)
        .open_backoff(Backoff::constant(secs(5)))
        .build()
        .unwrap();
    let ds = Downstream::down();
    let watchdog = Watchdog::builder(&breaker, Probes::new().of(&ds))
        .interval(ms(700))
        .spawn()
        .unwrap();
    settle().await;
    let mut svc = ds.guarded(&breaker);
    let t0 = Instant::now();
    // No await below yields to the watchdog's task: it has not seen the trip.
    for _ in 0..3 {
        assert_eq!(call(&mut svc).await, Seen::Failed);
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(call(&mut svc).await, Seen::Rejected(Some(ms(700))));
    assert_eq!(breaker.snapshot().retry_after, Some(ms(700)));
    // The watchdog sees the trip: its own schedule agrees.
    settle().await;
    sleep(ms(300)).await;
    assert_eq!(call(&mut svc).await, Seen::Rejected(Some(ms(400))));
    assert_eq!(ds.reached(), 3);
    watchdog.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_minute_of_traffic_never_reaches_a_dead_downstream_while_probes_back_off() {
    let breaker = Breaker::builder("dead")
        .consecutive_failures(3)
        .open_backoff(Backoff::constant(secs(5)))
        .build()
        .unwrap();
    let ds = Downstream::down();
    let probes = Probes::new();
    let t0 = probes.t0;
    let watchdog = Watchdog::builder(&breaker, probes.of(&ds))
        .interval(secs(1))
        .backoff(Backoff::exponential(secs(1), secs(16)).jitter(Jitter::None))
        .timeout(ms(500))
        .spawn()
        .unwrap();
    let mut svc = ds.guarded(&breaker);
    let mut states = breaker.subscribe();
    let trip = ms(200);

    // A call every 100 ms for a minute.
    for i in 0..600 {
        let now = t0.elapsed();
        assert_eq!(now, ms(100 * i));
        let seen = call(&mut svc).await;
        if now < trip {
            assert_eq!(seen, Seen::Failed, "at {now:?}");
            assert_eq!(breaker.state(), State::Closed);
        } else if now == trip {
            // The third failure in a row trips the breaker.
            assert_eq!(seen, Seen::Failed);
            assert_eq!(breaker.state(), State::Open);
            assert_eq!(*states.borrow_and_update(), State::Open);
        } else {
            // Rejected. With the watchdog owning recovery, the hint is not the open
            // delay (5 s) but the time to the watchdog's next probe. Probes run at 1.2,
            // 2.2, 4.2, 8.2, 16.2, 32.2, 48.2 and 64.2 s; at a probe's own instant the
            // probe may not have run yet (its time: 1 ms, the least hint), be running
            // (to the end of its 500 ms timeout), or be done (the next one).
            let probes_at = [1_200, 2_200, 4_200, 8_200, 16_200, 32_200, 48_200, 64_200].map(ms);
            let Seen::Rejected(Some(after)) = seen else {
                panic!("at {now:?}: {seen:?}");
            };
            let next = probes_at.iter().position(|p| *p >= now).unwrap();
            let mut allowed: Vec<_> = probes_at[next..]
                .iter()
                .take(if probes_at[next] == now { 2 } else { 1 })
                .map(|p| (*p - now).max(ms(1)))
                .collect();
            if probes_at[next] == now {
                allowed.push(ms(500));
            }
            assert!(
                allowed.contains(&after),
                "at {now:?}: {after:?} not in {allowed:?}"
            );
            assert_eq!(breaker.state(), State::Open, "at {now:?}");
            assert_eq!(breaker.snapshot().retry_after, Some(after), "at {now:?}");
        }
        sleep(ms(100)).await;
    }

    // Only the three calls before the trip reached the downstream, and the breaker never
    // moved again (a half-open trial would have reached it and counted a trip).
    assert_eq!(ds.reached(), 3);
    assert!(!states.has_changed().unwrap(), "the breaker left Open");
    let snap = breaker.snapshot();
    assert_eq!((snap.state, snap.trips), (State::Open, 1));
    assert_eq!((snap.calls, snap.failures, snap.rejected), (3, 3, 597));

    // Probes: one interval after the trip, then 1, 2, 4, 8, 16, 16 s apart.
    let times = probes.times();
    let expected: Vec<_> = [1_200, 2_200, 4_200, 8_200, 16_200, 32_200, 48_200]
        .map(ms)
        .to_vec();
    assert_eq!(times, expected);
    assert_eq!(gaps(&times), [1, 2, 4, 8, 16, 16].map(secs));
    assert!(probes.log().iter().all(|(_, ok)| !ok));
    watchdog.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn seeded_jitter_spaces_failed_probes_by_the_backoff_sequence() {
    let backoff = Backoff::exponential(ms(200), secs(10))
        .jitter(Jitter::Full)
        .seed(7);
    let breaker = Breaker::builder("jittered").start_open().build().unwrap();
    let probes = Probes::new();
    let watchdog = Watchdog::builder(&breaker, probes.scripted(|_| false))
        .backoff(backoff)
        .spawn()
        .unwrap();
    sleep(secs(60)).await;

    // A booted-open breaker is probed at once; then each gap is the next delay of the
    // seeded sequence (to the timer's millisecond).
    let times = probes.times();
    assert_eq!(times[0], Duration::ZERO);
    let expected: Vec<_> = backoff.iter().take(times.len() - 1).collect();
    for (n, (gap, delay)) in gaps(&times).into_iter().zip(expected).enumerate() {
        assert!(
            gap >= delay && gap <= delay + ms(1),
            "gap {n}: {gap:?}, expected {delay:?}"
        );
    }
    assert!(times.len() >= 8, "{times:?}");
    watchdog.shutdown().await;
}

// --- recovery by probes --------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn closes_on_the_probe_that_reaches_healthy_threshold_once_the_downstream_is_back() {
    let breaker = Breaker::builder("back")
        .start_open()
        .open_backoff(Backoff::constant(secs(1)))
        .build()
        .unwrap();
    let ds = Downstream::down();
    let probes = Probes::new();
    let t0 = probes.t0;
    let watchdog = Watchdog::builder(&breaker, probes.of(&ds))
        .interval(secs(1))
        .backoff(Backoff::exponential(secs(1), secs(4)))
        .healthy_threshold(3)
        .timeout(ms(500))
        .spawn()
        .unwrap();
    let mut states = breaker.subscribe();

    // Down: probed at once (booted open), then 1, 2, 4 s apart.
    sleep_until(t0 + secs(8)).await;
    assert_eq!(probes.times(), [0, 1, 3, 7].map(secs));
    ds.set_up(true);
    let back = Instant::now();

    // The next probe (11 s, backoff max 4 s) passes, then one per interval; two passes
    // are not enough.
    sleep_until(t0 + ms(12_500)).await;
    assert_eq!(breaker.state(), State::Open);
    reach(&mut states, State::Closed).await;
    let took = back.elapsed();
    assert_eq!(took, secs(5));
    // Bound: one backoff-max wait, then (threshold - 1) intervals.
    assert!(took <= secs(4) + 2 * secs(1));
    let log = probes.log();
    let expected: Vec<_> = [(0, false), (1, false), (3, false), (7, false)]
        .into_iter()
        .chain([(11, true), (12, true), (13, true)])
        .map(|(t, ok)| (secs(t), ok))
        .collect();
    assert_eq!(log, expected);
    // Closed on the third pass itself, not an interval later.
    assert_eq!(t0.elapsed(), secs(13));
    assert_eq!(breaker.snapshot().trips, 0, "start_open is not a trip");

    // Closed, and no probing while closed by default; traffic flows.
    sleep(secs(60)).await;
    assert_eq!(probes.count(), 7);
    let mut svc = ds.guarded(&breaker);
    assert_eq!(call(&mut svc).await, Seen::Ok);
    assert_eq!(ds.reached(), 1);
    watchdog.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_panics_or_hangs_is_a_failed_probe_and_the_watchdog_lives_on() {
    quiet_probe_panics();
    let breaker = Breaker::builder("unruly").start_open().build().unwrap();
    let t0 = Instant::now();
    let started = Arc::new(Mutex::new(Vec::new()));
    let dropped = Arc::new(AtomicUsize::new(0));
    let probe = {
        let (started, dropped) = (started.clone(), dropped.clone());
        move || -> ProbeFuture {
            let n = {
                let mut started = started.lock().unwrap();
                started.push(t0.elapsed());
                started.len()
            };
            match n {
                1 | 2 => panic!("{TEST_PANIC} before returning a future"),
                3 | 4 => Box::pin(async { panics_when_polled() }),
                5 | 6 => hang(&dropped),
                _ => Box::pin(async { Ok(()) }),
            }
        }
    };
    let watchdog = Watchdog::builder(&breaker, probe)
        .interval(secs(1))
        .backoff(Backoff::constant(secs(1)))
        .timeout(ms(500))
        .healthy_threshold(2)
        .spawn()
        .unwrap();

    reach(&mut breaker.subscribe(), State::Closed).await;
    // Two panics on call, two on poll, two hangs cut at 500 ms, then two passes.
    let expected: Vec<_> = [0, 1_000, 2_000, 3_000, 4_000, 5_500, 7_000, 8_000]
        .map(ms)
        .to_vec();
    assert_eq!(*started.lock().unwrap(), expected);
    assert_eq!(t0.elapsed(), secs(8));
    assert_eq!(dropped.load(SeqCst), 2, "each hanging probe is dropped");
    assert!(!watchdog.is_escalated());
    watchdog.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_service_adapter_is_a_probe() {
    let hits = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let svc = tower::service_fn({
        let hits = hits.clone();
        move |req: &'static str| {
            let n = hits.fetch_add(1, SeqCst) + 1;
            async move {
                assert_eq!(req, "ping");
                if n <= 2 {
                    Err::<&str, BoxError>("not yet".into())
                } else {
                    Ok("pong")
                }
            }
        }
    });
    let make_request = {
        let requests = requests.clone();
        move || {
            requests.fetch_add(1, SeqCst);
            "ping"
        }
    };
    let breaker = Breaker::builder("svc").start_open().build().unwrap();
    let t0 = Instant::now();
    let watchdog = Watchdog::builder(&breaker, probe::service(svc, make_request))
        .interval(secs(1))
        .backoff(Backoff::constant(secs(1)))
        .healthy_threshold(2)
        .spawn()
        .unwrap();

    reach(&mut breaker.subscribe(), State::Closed).await;
    // Fails at 0 and 1 s, passes at 2 and 3 s.
    assert_eq!(t0.elapsed(), secs(3));
    assert_eq!(hits.load(SeqCst), 4);
    assert_eq!(requests.load(SeqCst), 4, "one request built per probe");
    watchdog.shutdown().await;
}

// --- probing a closed breaker -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn failed_probes_in_a_row_open_a_closed_breaker_with_no_traffic() {
    let breaker = Breaker::builder("quiet")
        .consecutive_failures(1)
        .build()
        .unwrap();
    let probes = Probes::new();
    let t0 = probes.t0;
    // Fail, fail, pass, then fail for good.
    let watchdog = Watchdog::builder(&breaker, probes.scripted(|n| n == 3))
        .probe_while_closed(secs(1))
        .unhealthy_threshold(3)
        .interval(secs(1))
        .backoff(Backoff::constant(secs(1)))
        .spawn()
        .unwrap();

    // Two failures (n - 1) leave it closed.
    sleep_until(t0 + ms(2_500)).await;
    assert_eq!(probes.times(), [1, 2].map(secs));
    assert_eq!(breaker.state(), State::Closed);
    // A pass resets the count: four failures, but only two in a row.
    sleep_until(t0 + ms(5_500)).await;
    assert_eq!(probes.count(), 5);
    assert_eq!(breaker.state(), State::Closed);
    // The third in a row opens it.
    sleep_until(t0 + secs(6)).await;
    settle().await;
    assert_eq!(probes.count(), 6);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.snapshot().trips, 1);

    // Open, the watchdog keeps probing; nothing else trips it again.
    sleep(secs(30)).await;
    assert!(probes.count() > 6);
    let snap = breaker.snapshot();
    assert_eq!(snap.state, State::Open);
    assert_eq!((snap.trips, snap.calls, snap.rejected), (1, 0, 0));
    watchdog.shutdown().await;
}

// --- restart intensity ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn three_trips_within_the_window_escalate_once_then_clear_after_staying_closed() {
    let (events, _guard) = capture_events();
    let breaker = Breaker::builder("flappy")
        .consecutive_failures(1)
        .open_backoff(Backoff::constant(secs(1)))
        .build()
        .unwrap();
    let health = Health::new();
    health.register(&breaker);
    let ds = Downstream::down();
    let probes = Probes::new();
    let t0 = probes.t0;
    let escalations: Arc<Mutex<Vec<Snapshot>>> = Arc::default();
    let watchdog = Watchdog::builder(&breaker, probes.of(&ds))
        .interval(secs(1))
        .backoff(Backoff::exponential(secs(1), secs(8)))
        .timeout(ms(500))
        .healthy_threshold(1)
        .max_trips(2, secs(60))
        .on_escalate({
            let escalations = escalations.clone();
            move |snap| escalations.lock().unwrap().push(snap.clone())
        })
        .spawn()
        .unwrap();
    let mut svc = ds.guarded(&breaker);
    let mut states = breaker.subscribe();

    // Two trips, each closed again by a probe a second later: at the limit, not past it.
    for trip in 1..=2 {
        assert_eq!(call(&mut svc).await, Seen::Failed);
        assert_eq!(breaker.state(), State::Open);
        settle().await;
        assert!(!watchdog.is_escalated(), "trip {trip}");
        ds.set_up(true);
        reach(&mut states, State::Closed).await;
        ds.set_up(false);
    }
    assert_eq!(t0.elapsed(), secs(2));
    assert!(escalations.lock().unwrap().is_empty());
    assert!(health.is_ready());
    assert!(events.errors_on("steadfast::watchdog").is_empty());

    // The third trip within the window escalates.
    assert_eq!(call(&mut svc).await, Seen::Failed);
    settle().await;
    assert!(watchdog.is_escalated());
    assert!(breaker.is_escalated());
    assert!(!health.is_ready());
    {
        let escalations = escalations.lock().unwrap();
        assert_eq!(escalations.len(), 1);
        let snap = &escalations[0];
        assert_eq!(&*snap.name, "flappy");
        assert_eq!((snap.state, snap.trips, snap.failures), (State::Open, 3, 3));
    }
    let errors = events.errors_on("steadfast::watchdog");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].breaker.as_deref(), Some("flappy"));
    assert!(errors[0].message.contains("escalated"), "{errors:?}");

    // Escalated, failed probes are spaced by the backoff's max (8 s), not 1, 2, 4 s.
    let before = probes.count();
    sleep_until(t0 + secs(28)).await;
    assert_eq!(probes.times()[before..], [3, 11, 19, 27].map(secs));

    // Back: the next probe closes the breaker, but escalation holds until it has
    // stayed closed for the whole window.
    ds.set_up(true);
    reach(&mut states, State::Closed).await;
    assert_eq!(t0.elapsed(), secs(35));
    assert!(breaker.is_escalated());
    assert!(!health.is_ready());

    // A fourth trip while escalated does not escalate again.
    ds.set_up(false);
    assert_eq!(call(&mut svc).await, Seen::Failed);
    settle().await;
    ds.set_up(true);
    reach(&mut states, State::Closed).await;
    assert_eq!(t0.elapsed(), secs(36));
    assert_eq!(escalations.lock().unwrap().len(), 1);
    assert_eq!(events.errors_on("steadfast::watchdog").len(), 1);

    // Closed since 36 s: escalated until 96 s, clear from then on.
    sleep_until(t0 + secs(96) - ms(1)).await;
    assert!(breaker.is_escalated());
    assert!(!health.is_ready());
    sleep_until(t0 + secs(96)).await;
    settle().await;
    assert!(!watchdog.is_escalated());
    assert!(!breaker.is_escalated());
    assert!(health.is_ready());

    // The count starts over: one more trip is far from the limit.
    ds.set_up(false);
    assert_eq!(call(&mut svc).await, Seen::Failed);
    settle().await;
    assert!(!breaker.is_escalated());
    assert_eq!(events.errors_on("steadfast::watchdog").len(), 1);
    watchdog.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn trips_spread_wider_than_the_window_do_not_escalate() {
    let breaker = Breaker::builder("spread")
        .consecutive_failures(1)
        .build()
        .unwrap();
    let ds = Downstream::down();
    let probes = Probes::new();
    let t0 = probes.t0;
    let watchdog = Watchdog::builder(&breaker, probes.of(&ds))
        .interval(secs(1))
        .healthy_threshold(1)
        .max_trips(2, secs(60))
        .on_escalate(|_| panic!("must not escalate"))
        .spawn()
        .unwrap();
    let mut svc = ds.guarded(&breaker);
    let mut states = breaker.subscribe();
    // Trips at 0, 31 and 62 s: never three within 60 s.
    for at in [0, 31, 62] {
        sleep_until(t0 + secs(at)).await;
        ds.set_up(false);
        assert_eq!(call(&mut svc).await, Seen::Failed);
        settle().await;
        ds.set_up(true);
        reach(&mut states, State::Closed).await;
        assert!(!breaker.is_escalated(), "trip at {at} s");
    }
    assert_eq!(breaker.snapshot().trips, 3);
    watchdog.shutdown().await;
}

// --- the watchdog's lifetime ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn after_shutdown_the_breaker_recovers_on_its_own_timer() {
    let breaker = Breaker::builder("own-timer")
        .consecutive_failures(1)
        .open_backoff(Backoff::constant(secs(2)))
        .half_open_calls(1)
        .build()
        .unwrap();
    let ds = Downstream::down();
    let probes = Probes::new();
    let t0 = probes.t0;
    let watchdog = Watchdog::builder(&breaker, probes.of(&ds))
        .interval(secs(1))
        .backoff(Backoff::constant(secs(1)))
        .spawn()
        .unwrap();
    settle().await; // the watchdog sees the breaker closed first
    let mut svc = ds.guarded(&breaker);

    assert_eq!(call(&mut svc).await, Seen::Failed);
    // The watchdog owns recovery: its first probe comes an interval after the trip.
    assert_eq!(call(&mut svc).await, Seen::Rejected(Some(secs(1))));
    sleep_until(t0 + ms(1_500)).await;
    assert_eq!(probes.times(), [secs(1)]);
    watchdog.shutdown().await;
    assert_eq!(
        t0.elapsed(),
        ms(1_500),
        "shutdown does not wait for the next probe"
    );

    // Back on its own timer: rejected for the rest of the open delay...
    ds.set_up(true);
    assert_eq!(call(&mut svc).await, Seen::Rejected(Some(ms(500))));
    // ...then the next call is a half-open trial, and it closes the breaker.
    sleep_until(t0 + secs(2)).await;
    let ready = svc.ready().await.unwrap();
    assert_eq!(breaker.state(), State::HalfOpen);
    ready.call(()).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(ds.reached(), 2);
    assert_eq!(breaker.snapshot().rejected, 2);

    // No probe after the shutdown.
    sleep(secs(30)).await;
    assert_eq!(probes.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_a_hanging_probe_at_once() {
    let breaker = Breaker::builder("hung").start_open().build().unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let watchdog = Watchdog::builder(&breaker, {
        let dropped = dropped.clone();
        move || hang(&dropped)
    })
    .timeout(secs(3_600))
    .spawn()
    .unwrap();
    sleep(secs(1)).await;
    timeout(secs(1), watchdog.shutdown())
        .await
        .expect("shutdown waits for no probe");
    assert_eq!(dropped.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_booted_open_stays_shut_while_down_and_closes_once_up() {
    let breaker = Breaker::builder("boot")
        .start_open()
        .consecutive_failures(1)
        .open_backoff(Backoff::constant(secs(1)))
        .build()
        .unwrap();
    let ds = Downstream::down();
    let probes = Probes::new();
    let t0 = probes.t0;
    let watchdog = Watchdog::builder(&breaker, probes.of(&ds))
        .interval(secs(1))
        .backoff(Backoff::constant(secs(2)))
        .healthy_threshold(2)
        .spawn()
        .unwrap();
    let mut svc = ds.guarded(&breaker);

    // A call every 250 ms. Down until 5 s; probes at 0, 2, 4 fail, 6 and 7 pass.
    while breaker.state() != State::Closed {
        let now = t0.elapsed();
        assert!(now < secs(7), "still open at {now:?}");
        if now == secs(5) {
            ds.set_up(true);
        }
        // The hint is the time to the watchdog's next probe, not the open delay (1 s):
        // probes at 2 and 4 (failed ones, 2 s apart), at 6, and at 7 for the second
        // pass.
        let eta = if now < secs(2) {
            secs(2)
        } else if now < secs(4) {
            secs(4)
        } else if now < secs(6) {
            secs(6)
        } else {
            secs(7)
        };
        // At 0 the watchdog task has not run yet; a watchdog that finds the breaker
        // open probes at once: the least hint.
        let hint = if now == Duration::ZERO {
            ms(1)
        } else {
            eta - now
        };
        assert_eq!(
            call(&mut svc).await,
            Seen::Rejected(Some(hint)),
            "at {now:?}"
        );
        sleep(ms(250)).await;
        settle().await;
    }
    assert_eq!(t0.elapsed(), secs(7));
    assert_eq!(ds.reached(), 0, "no real call was sent while down");
    assert_eq!(probes.times(), [0, 2, 4, 6, 7].map(secs));
    assert_eq!(call(&mut svc).await, Seen::Ok);
    assert_eq!(ds.reached(), 1);
    let snap = breaker.snapshot();
    assert_eq!((snap.rejected, snap.trips), (28, 0));
    watchdog.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn dropping_every_breaker_clone_ends_the_worker() {
    for case in ["closed and idle", "open, between probes", "open, mid-probe"] {
        let builder = Breaker::builder(case);
        let breaker = if case == "closed and idle" {
            builder.build()
        } else {
            builder.start_open().build()
        }
        .unwrap();
        let dropped = Arc::new(AtomicUsize::new(0));
        let probe = {
            let dropped = dropped.clone();
            let hangs = case == "open, mid-probe";
            move || -> ProbeFuture {
                if hangs {
                    hang(&dropped)
                } else {
                    Box::pin(async { Err("down") })
                }
            }
        };
        let (watchdog, worker) = Watchdog::builder(&breaker, probe)
            .backoff(Backoff::constant(secs(600)))
            .timeout(secs(3_600))
            .pair()
            .unwrap();
        let mut join = tokio::spawn(worker);
        let layer = breaker.layer();
        let svc = Downstream::down().guarded(&breaker);

        // Alive while any clone is.
        assert!(timeout(secs(1), &mut join).await.is_err(), "{case}");
        drop(breaker);
        assert!(timeout(secs(1), &mut join).await.is_err(), "{case}");
        drop(layer);
        assert!(timeout(secs(1), &mut join).await.is_err(), "{case}");
        // The last clone, inside a service, goes: the worker ends.
        drop(svc);
        timeout(secs(1), join)
            .await
            .unwrap_or_else(|_| panic!("{case}: the worker did not end"))
            .unwrap();
        if case == "open, mid-probe" {
            assert_eq!(dropped.load(SeqCst), 1);
        }
        // The handle did not keep the breaker alive, and shutdown finds the worker gone.
        timeout(secs(1), watchdog.shutdown()).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_detaches_the_watchdog() {
    let breaker = Breaker::builder("detached")
        .start_open()
        .open_backoff(Backoff::constant(secs(1)))
        .build()
        .unwrap();
    let ds = Downstream::down();
    let probes = Probes::new();
    let t0 = probes.t0;
    drop(
        Watchdog::builder(&breaker, probes.of(&ds))
            .interval(secs(1))
            .backoff(Backoff::constant(secs(1)))
            .healthy_threshold(1)
            .spawn()
            .unwrap(),
    );
    let mut svc = ds.guarded(&breaker);

    // Still attached: past the open delay, calls are rejected, not sent as trials.
    sleep_until(t0 + ms(2_500)).await;
    // The hint is the watchdog's next probe (at 3 s), which alone can close it.
    assert_eq!(call(&mut svc).await, Seen::Rejected(Some(ms(500))));
    assert_eq!(ds.reached(), 0);
    assert_eq!(probes.times(), [0, 1, 2].map(secs));
    // Still probing: the breaker closes by a probe.
    ds.set_up(true);
    reach(&mut breaker.subscribe(), State::Closed).await;
    assert_eq!(t0.elapsed(), secs(3));
    assert_eq!(ds.reached(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_watchdog_that_never_runs_leaves_the_breaker_to_its_own_timer() {
    let breaker = Breaker::builder("unrun")
        .consecutive_failures(1)
        .open_backoff(Backoff::constant(secs(1)))
        .half_open_calls(1)
        .build()
        .unwrap();
    let ds = Downstream::down();
    let mut svc = ds.guarded(&breaker);
    assert_eq!(call(&mut svc).await, Seen::Failed);

    // A spawn refused for its settings attaches nothing.
    let err = Watchdog::builder(&breaker, || async { Ok::<(), &'static str>(()) })
        .interval(Duration::ZERO)
        .spawn()
        .unwrap_err();
    assert_eq!(err.field(), "interval");
    // A worker dropped before it ran detaches, and its handle's shutdown returns.
    let (handle, worker) = Watchdog::builder(&breaker, || async { Ok::<(), &'static str>(()) })
        .pair()
        .unwrap();
    drop(worker);
    timeout(secs(1), handle.shutdown()).await.unwrap();

    sleep(secs(1)).await;
    ds.set_up(true);
    assert_eq!(
        call(&mut svc).await,
        Seen::Ok,
        "a half-open trial goes through"
    );
    assert_eq!(breaker.state(), State::Closed);
}

// --- several watchdogs on one breaker -------------------------------------------------------

// `ProbeLock::try_new` is `shared.try_lock_probe().then_some(ProbeLock(shared))`:
// `then_some` builds its argument eagerly, so when the lock is already held the
// temporary `ProbeLock` is dropped and its `Drop` unlocks the *other* watchdog's lock.
// The next attempt then probes while the first probe is still in flight.
#[tokio::test(start_paused = true)]
async fn two_watchdogs_on_one_breaker_never_probe_at_the_same_time() {
    let breaker = Breaker::builder("shared").build().unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let per_watchdog: [Arc<AtomicUsize>; 2] = Default::default();
    let probe = |mine: Arc<AtomicUsize>| {
        let (up, in_flight, max_in_flight) = (up.clone(), in_flight.clone(), max_in_flight.clone());
        move || {
            mine.fetch_add(1, SeqCst);
            let now = in_flight.fetch_add(1, SeqCst) + 1;
            max_in_flight.fetch_max(now, SeqCst);
            let (up, in_flight) = (up.clone(), in_flight.clone());
            async move {
                sleep(ms(250)).await;
                in_flight.fetch_sub(1, SeqCst);
                if up.load(SeqCst) {
                    Ok(())
                } else {
                    Err("down")
                }
            }
        }
    };
    let watchdogs: Vec<_> = per_watchdog
        .iter()
        .map(|count| {
            Watchdog::builder(&breaker, probe(count.clone()))
                .interval(ms(100))
                .backoff(Backoff::constant(ms(100)))
                .probe_while_closed(ms(100))
                .unhealthy_threshold(2)
                .healthy_threshold(2)
                .timeout(secs(1))
                .spawn()
                .unwrap()
        })
        .collect();
    let mut states = breaker.subscribe();

    // Closed and up, then down until the probes open it, then up until they close it.
    sleep(secs(5)).await;
    up.store(false, SeqCst);
    reach(&mut states, State::Open).await;
    sleep(secs(5)).await;
    up.store(true, SeqCst);
    reach(&mut states, State::Closed).await;
    sleep(secs(5)).await;

    let counts: Vec<_> = per_watchdog.iter().map(|c| c.load(SeqCst)).collect();
    assert_eq!(
        max_in_flight.load(SeqCst),
        1,
        "probes overlapped: {counts:?}"
    );
    assert!(counts.iter().sum::<usize>() >= 40, "{counts:?}");
    assert!(counts.iter().all(|&n| n > 0), "both took turns: {counts:?}");
    for watchdog in watchdogs {
        watchdog.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn one_watchdog_ending_keeps_the_escalation_of_another() {
    let breaker = Breaker::builder("two-minds")
        .consecutive_failures(1)
        .build()
        .unwrap();
    let health = Health::new();
    health.register(&breaker);
    let ds = Downstream::down();
    let probes = Probes::new();
    let strict = Watchdog::builder(&breaker, probes.of(&ds))
        .interval(secs(1))
        .healthy_threshold(1)
        .max_trips(1, secs(60))
        .spawn()
        .unwrap();
    let plain = Watchdog::builder(&breaker, probes.of(&ds))
        .interval(secs(1))
        .healthy_threshold(1)
        .spawn()
        .unwrap();
    let mut svc = ds.guarded(&breaker);
    let mut states = breaker.subscribe();

    // Two trips within a minute: past `strict`'s max of one.
    assert_eq!(call(&mut svc).await, Seen::Failed);
    settle().await;
    ds.set_up(true);
    reach(&mut states, State::Closed).await;
    ds.set_up(false);
    assert_eq!(call(&mut svc).await, Seen::Failed);
    settle().await;
    assert!(strict.is_escalated());
    assert!(!health.is_ready());

    // The other watchdog ends; `strict` still runs and still considers the dependency
    // escalated (the breaker is open, not closed for a minute).
    plain.shutdown().await;
    assert_eq!(breaker.state(), State::Open);
    assert!(
        breaker.is_escalated(),
        "escalation lost when another watchdog ended"
    );
    assert!(!health.is_ready());
    strict.shutdown().await;
}

// --- configuration ------------------------------------------------------------------------

fn ok_probe() -> impl FnMut() -> std::future::Ready<Result<(), &'static str>> + Send + 'static {
    || std::future::ready(Ok(()))
}

#[test]
fn bad_settings_are_config_errors_naming_the_field() {
    let breaker = Breaker::new("config");
    let b = || Watchdog::builder(&breaker, ok_probe());
    let day = secs(86_400);
    let exp = Backoff::exponential;
    #[rustfmt::skip]
    let cases: Vec<(WatchdogBuilder<_>, &str)> = vec![
        (b().interval(Duration::ZERO), "interval"),
        (b().interval(day + ms(1)), "interval"),
        (b().timeout(Duration::ZERO), "timeout"),
        (b().timeout(day * 2), "timeout"),
        (b().interval(Duration::from_nanos(999_999)), "interval"),
        (b().healthy_threshold(0), "healthy_threshold"),
        (b().healthy_threshold(1_001), "healthy_threshold"),
        (b().healthy_threshold(u32::MAX), "healthy_threshold"),
        (b().unhealthy_threshold(0), "unhealthy_threshold"),
        (b().unhealthy_threshold(1_001), "unhealthy_threshold"),
        (b().probe_while_closed(Duration::from_nanos(1)), "probe_while_closed"),
        (b().backoff(Backoff::constant(Duration::from_nanos(1))), "backoff"),
        (b().probe_while_closed(Duration::ZERO), "probe_while_closed"),
        (b().probe_while_closed(day * 2), "probe_while_closed"),
        (b().max_trips(0, secs(60)), "max_trips"),
        (b().max_trips(3, Duration::ZERO), "max_trips"),
        (b().max_trips(3, day * 2), "max_trips"),
        (b().backoff(exp(ms(10), ms(5))), "backoff"),
        (b().backoff(exp(Duration::ZERO, ms(5))), "backoff"),
        (b().backoff(exp(ms(1), ms(5)).factor(0.5)), "backoff"),
        (b().backoff(exp(ms(1), ms(5)).factor(f64::NAN)), "backoff"),
        (b().backoff(Backoff::constant(Duration::ZERO)), "backoff"),
        (b().backoff(Backoff::constant(day * 2)), "backoff"),
    ];
    for (builder, field) in cases {
        let debug = format!("{builder:?}");
        match builder.pair() {
            Err(e) => {
                assert_eq!(e.field(), field, "{debug}: {e}");
                assert!(e.to_string().contains(field), "{e}");
            }
            Ok(_) => panic!("accepted: {debug}"),
        }
    }
    // Edges are accepted.
    for builder in [
        b().interval(ms(1)),
        b().interval(day),
        b().timeout(day),
        b().healthy_threshold(1).unhealthy_threshold(1),
        b().healthy_threshold(1_000).unhealthy_threshold(1_000),
        b().probe_while_closed(ms(1)),
        b().max_trips(1, day),
        b().backoff(Backoff::constant(day)),
        b().backoff(exp(ms(5), ms(5))),
    ] {
        let debug = format!("{builder:?}");
        assert!(builder.pair().is_ok(), "{debug}");
    }
}

#[test]
fn spawn_outside_a_runtime_is_a_config_error_and_attaches_nothing() {
    let breaker = Breaker::builder("no-runtime")
        .consecutive_failures(1)
        .open_backoff(Backoff::constant(secs(1)))
        .half_open_calls(1)
        .build()
        .unwrap();
    let err = Watchdog::builder(&breaker, ok_probe()).spawn().unwrap_err();
    assert_eq!(err.field(), "spawn");
    assert!(err.to_string().contains("spawn"), "{err}");

    // Nothing was attached: the breaker still recovers on its own timer.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let ds = Downstream::down();
        let mut svc = ds.guarded(&breaker);
        assert_eq!(call(&mut svc).await, Seen::Failed);
        sleep(secs(1)).await;
        ds.set_up(true);
        assert_eq!(call(&mut svc).await, Seen::Ok);
        assert_eq!(breaker.state(), State::Closed);
    });
}

#[tokio::test(start_paused = true)]
async fn escalation_clears_after_staying_forced_closed_for_the_window() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tower::{service_fn, Service, ServiceExt};

    let breaker = Breaker::builder("forced")
        .consecutive_failures(1)
        .open_backoff(Backoff::constant(secs(60)))
        .build()
        .unwrap();
    // The probe always fails: only `reset` closes the breaker.
    let watchdog = Watchdog::builder(&breaker, || async { Err::<(), _>("down") })
        .interval(secs(1))
        .backoff(Backoff::constant(secs(1)))
        .max_trips(1, secs(10))
        .spawn()
        .unwrap();
    let fail = Arc::new(AtomicBool::new(true));
    let mut svc = breaker.layer().layer(service_fn({
        let fail = fail.clone();
        move |_: ()| {
            let fail = fail.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err("boom")
                } else {
                    Ok(())
                }
            }
        }
    }));
    // Two trips: the second is more than one within 10 s.
    let _ = svc.ready().await.unwrap().call(()).await;
    breaker.reset();
    let _ = svc.ready().await.unwrap().call(()).await;
    tokio::time::sleep(ms(10)).await;
    assert_eq!(breaker.snapshot().trips, 2);
    assert!(breaker.is_escalated() && watchdog.is_escalated());

    // Forced closed from now on: the breaker cannot trip, so the escalation clears
    // after 10 s, not one moment before.
    let forced_at = tokio::time::Instant::now();
    breaker.force_closed();
    tokio::time::sleep_until(forced_at + secs(10) - ms(1)).await;
    assert!(breaker.is_escalated());
    tokio::time::sleep_until(forced_at + secs(10) + ms(1)).await;
    assert!(!breaker.is_escalated());
    assert!(!watchdog.is_escalated());
    watchdog.shutdown().await;
}

// --- defaults, bounds and runtimes ----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn with_only_an_interval_set_the_first_probe_after_any_outage_comes_within_two() {
    // Issue 16: the default failed-probe spacing grew to 60 s, so after a long outage
    // the first probe after the downstream's return could come a minute late. Now it
    // follows the interval: half of it to all of it, then the interval to twice it.
    for outage in [secs(30), secs(600)] {
        let breaker = Breaker::builder("defaults").start_open().build().unwrap();
        let ds = Downstream::down();
        let probes = Probes::new();
        let t0 = probes.t0;
        let watchdog = Watchdog::builder(&breaker, probes.of(&ds))
            .interval(ms(500))
            .spawn()
            .unwrap();
        let mut states = breaker.subscribe();
        sleep_until(t0 + outage).await;
        assert_eq!(breaker.state(), State::Open);
        // The load on the dead downstream: probes 250 ms to 1 s apart, and after the
        // first two, at least 500 ms apart.
        let gaps = gaps(&probes.times());
        assert!(
            gaps.iter().all(|g| *g >= ms(250) && *g <= ms(1_000)),
            "{gaps:?}"
        );
        assert!(gaps[1..].iter().all(|g| *g >= ms(500)), "{gaps:?}");
        // While rejecting, the hint is the time to the next probe: at most 1 s.
        let hint = breaker.snapshot().retry_after.unwrap();
        assert!(hint > Duration::ZERO && hint <= ms(1_000), "{hint:?}");
        ds.set_up(true);
        reach(&mut states, State::Closed).await;
        let recovered = t0.elapsed() - outage;
        assert!(
            recovered <= ms(1_000),
            "{outage:?} down: closed {recovered:?} after"
        );
        watchdog.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_the_time_to_the_next_probe_and_never_over_a_day() {
    // Regression (issue 17.6): the hint added an interval per further pass needed, so a
    // 12 h interval and `healthy_threshold(5)` gave "172859" s, and `u32::MAX` passes
    // 584 years. Now it is the time to the next probe (a running probe: an interval,
    // or its timeout if shorter), at most a day; thresholds above 1,000 are a
    // ConfigError.
    let breaker = Breaker::builder("hint").start_open().build().unwrap();
    let hang = || std::future::pending::<Result<(), &'static str>>();
    let watchdog = Watchdog::builder(&breaker, hang)
        .interval(secs(43_200))
        .timeout(secs(86_400))
        .healthy_threshold(5)
        .spawn()
        .unwrap();
    settle().await;
    // The boot probe runs (and hangs): its answer is expected within an interval.
    assert_eq!(breaker.snapshot().retry_after, Some(secs(43_200)));
    sleep(secs(86_400) + ms(1)).await;
    // It timed out: the next probe is 6 to 12 h away (half the interval to all of it).
    let hint = breaker.snapshot().retry_after.unwrap();
    assert!(
        hint >= secs(21_600) - ms(1) && hint <= secs(43_200),
        "{hint:?}"
    );
    watchdog.shutdown().await;
    assert!(Watchdog::builder(&breaker, ok_probe())
        .healthy_threshold(u32::MAX)
        .pair()
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn tiny_periods_never_starve_the_runtime() {
    // Regression (issue 17.2): any period from 1 ns was accepted, and with a probe that
    // answers at once the loop never awaited anything pending: 100,000 probes in
    // 300 ms and a 10 ms ticker on the same runtime ticked once. Periods under 1 ms are
    // now a ConfigError; at 1 ms, probes come at most once a millisecond and the
    // runtime's other tasks run between them.
    let breaker = Breaker::new("busy");
    let count = Arc::new(AtomicUsize::new(0));
    let probe = {
        let count = count.clone();
        move || {
            count.fetch_add(1, SeqCst);
            std::future::ready(Ok::<(), &'static str>(()))
        }
    };
    let closed = Watchdog::builder(&breaker, probe)
        .probe_while_closed(ms(1))
        .spawn()
        .unwrap();
    // And an open breaker whose failing probe is spaced by a jittered 1 ms backoff
    // (Full jitter can draw near zero).
    let open = Breaker::builder("busy-open").start_open().build().unwrap();
    let failed = Arc::new(AtomicUsize::new(0));
    let probe = {
        let failed = failed.clone();
        move || {
            failed.fetch_add(1, SeqCst);
            std::future::ready(Err::<(), &'static str>("down"))
        }
    };
    let opened = Watchdog::builder(&open, probe)
        .backoff(Backoff::constant(ms(1)).jitter(Jitter::Full))
        .spawn()
        .unwrap();
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            let mut interval = tokio::time::interval(ms(10));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                ticks.fetch_add(1, SeqCst);
            }
        }
    });
    // On a current-thread runtime: this sleep returns only if the watchdogs yield.
    sleep(ms(300)).await;
    let (probes, failed, ticks) = (count.load(SeqCst), failed.load(SeqCst), ticks.load(SeqCst));
    assert!(
        probes <= 302,
        "{probes} probes of a closed breaker in 300 ms"
    );
    assert!(failed <= 302, "{failed} failed probes in 300 ms");
    assert!(ticks >= 29, "the ticker ticked {ticks} times in 300 ms");
    ticker.abort();
    closed.shutdown().await;
    opened.shutdown().await;
}

#[test]
fn a_worker_polled_outside_tokio_ends_at_once_and_detaches() {
    // Regression (issue 17.4): `pair` says the worker runs "on an executor of your
    // choice", but it used tokio's timers and panicked elsewhere.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let breaker = rt.block_on(async {
        Breaker::builder("elsewhere")
            .consecutive_failures(1)
            .open_backoff(Backoff::constant(ms(1)))
            .half_open_calls(1)
            .start_open()
            .build()
            .unwrap()
    });
    let (handle, worker) = Watchdog::builder(&breaker, ok_probe()).pair().unwrap();
    let mut worker = std::pin::pin!(worker);
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = std::task::Waker::from(Arc::new(Noop));
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(
        worker.as_mut().poll(&mut cx).is_ready(),
        "ended, not panicked"
    );
    assert!(worker.as_mut().poll(&mut cx).is_ready(), "and stays ended");
    assert!(!handle.is_escalated());
    // Detached: the breaker recovers on its own timer again (1 ms open delay).
    rt.block_on(async {
        tokio::time::advance(ms(5)).await;
        let mut svc = breaker.layer().layer(tower::service_fn(|_: ()| async {
            Ok::<_, &'static str>(())
        }));
        assert!(svc.ready().await.unwrap().call(()).await.is_ok());
        assert_eq!(breaker.state(), State::Closed);
    });
}
