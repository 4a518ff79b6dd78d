#![cfg(feature = "http")]
//! The acceptance test of "defaults are the product": an axum app calling a real
//! downstream process through steadfast with default settings (only the watchdog's
//! `interval` set) comes back within two probe intervals of the downstream's restart,
//! after a 30 s outage.
//!
//! # Why real time
//!
//! Every other timing test of this crate runs on paused tokio time. This one cannot:
//! it talks to another OS process over real sockets, and tokio's paused clock
//! auto-advances to the next timer whenever the runtime has nothing to do, which is
//! the case each time it waits on socket I/O. Timers such as the probe's timeout or
//! the attempt timeout would then fire spuriously while a connection is merely being
//! served. So the incident below lasts 30 real seconds, and every bound is on real
//! time, with room for a loaded CI machine except where the bound is the claim itself
//! (the recovery time).
//!
//! # The set-up
//!
//! - **The downstream** is a separate process: this test binary run again with
//!   arguments that select the `#[ignore]`d test [`downstream_process`], which serves
//!   `GET /health` and `GET /price/{id}` on the port given in [`PORT_VAR`]. Killing it
//!   (`SIGKILL`) stops it for real: connections are refused. Spawning it again on the
//!   same port restarts it. A guard kills it on drop, and the process also exits when
//!   its stdin closes, so none outlives the test even if the test process dies.
//! - **The app** runs in this process, on a real socket: an axum router whose
//!   `GET /price/{id}` calls the downstream through `retry -> breaker -> timeout ->
//!   hyper-util client` with the library's defaults (`steadfast::http::retry_policy()`,
//!   `Breaker::new`), a breaker rejection answered `503` by
//!   `steadfast::http::open::error_to_response`. A watchdog with only its `interval`
//!   set probes the downstream's `/health` over its own client.
//! - **The user** is a hyper client sending `GET /price/{n}` to the app every
//!   [`LOAD_EVERY`], each request on its own task, recording what came back.
//!
//! Timeline: downstream up, the app serves `200`s; the downstream is killed for
//! [`OUTAGE`]; it is restarted, and the time from the moment its port accepts
//! connections again to the first `200` the app returns is the recovery time.

mod common;

use common::process::Process;
use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::http::header::RETRY_AFTER;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use steadfast::breaker::{Breaker, State};
use steadfast::health::Health;
use steadfast::http::open::error_to_response;
use steadfast::http::replay::ReplayBody;
use steadfast::retry::RetryLayer;
use steadfast::watchdog::{Probe, Watchdog};
use steadfast::BoxError;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The one setting: time between watchdog probes.
const INTERVAL: Duration = Duration::from_millis(500);
/// The claim: the first success comes within two probe intervals of the restart.
const RECOVERY_BOUND: Duration = Duration::from_millis(2 * 500);
/// How long the downstream stays down.
const OUTAGE: Duration = Duration::from_secs(30);
/// The user's pace: one request this often.
const LOAD_EVERY: Duration = Duration::from_millis(20);
/// Load before the outage, with the downstream up.
const WARM_UP: Duration = Duration::from_secs(1);
/// The app's per-attempt timeout (a user has to pick one for `tower::timeout`).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// The most one user request may take before it counts as lost.
const USER_TIMEOUT: Duration = Duration::from_secs(5);
/// The breaker must open within this of the kill: twice its default time window
/// (2.5 s), after which every call in the window has failed.
const DETECT_BOUND: Duration = Duration::from_secs(5);
/// How long to wait for a first success after the restart before giving up: long
/// enough to measure a slow recovery, not only to fail it.
const PATIENCE: Duration = Duration::from_secs(60);
/// The environment variable that carries the downstream's port to its process.
const PORT_VAR: &str = "STEADFAST_INCIDENT_DOWNSTREAM_PORT";

// ---------------------------------------------------------------------------------
// The downstream process
// ---------------------------------------------------------------------------------

/// The downstream server, run in its own process by [`Process::spawn`]; it does
/// nothing when run without [`PORT_VAR`] (as by `cargo test -- --include-ignored`).
#[test]
#[ignore = "the downstream server of incident_defaults, run as its own process"]
fn downstream_process() {
    let Some(port) = std::env::var(PORT_VAR)
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    else {
        return;
    };
    // Exit when the test that spawned us closes our stdin, or dies.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("downstream: bind 127.0.0.1:{port}: {e}"));
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route(
                "/price/{id}",
                get(|Path(id): Path<u32>| async move { format!("item {id}: {} cents", id * 3) }),
            );
        axum::serve(listener, app).await.expect("downstream: serve");
    });
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("its address").port()
}

// ---------------------------------------------------------------------------------
// The app under test
// ---------------------------------------------------------------------------------

/// The app: `/price/{id}` through the protected client, `/health`, `/ready`.
/// `attempts` counts the attempts the breaker let through to the downstream.
fn prices_app(
    downstream: SocketAddr,
    breaker: &Breaker,
    health: Health,
    attempts: Arc<AtomicUsize>,
) -> Router {
    let retry = RetryLayer::new(steadfast::http::retry_policy()).expect("the default policy");
    let client = ServiceBuilder::new()
        .layer(retry)
        .layer(breaker.layer())
        .map_request(move |req: Request<ReplayBody<Empty<Bytes>>>| {
            attempts.fetch_add(1, Ordering::SeqCst);
            req
        })
        .timeout(ATTEMPT_TIMEOUT)
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Empty<Bytes>>>());

    let price = move |Path(id): Path<u32>| {
        let mut client = client.clone();
        async move {
            let req = Request::get(format!("http://{downstream}/price/{id}"))
                .body(Empty::<Bytes>::new())
                .expect("a valid request");
            let result = async {
                let res = client.ready().await?.call(req).await?;
                let status = res.status();
                let body = res.into_body().collect().await?.to_bytes();
                Ok::<_, BoxError>((status, body))
            }
            .await;
            match result {
                Ok((status, body)) if status.is_success() => (StatusCode::OK, body).into_response(),
                Ok((status, _)) => {
                    (StatusCode::BAD_GATEWAY, format!("prices answered {status}")).into_response()
                }
                Err(err) => error_to_response(&err).unwrap_or_else(|| {
                    let status = if err.is::<tower::timeout::error::Elapsed>() {
                        StatusCode::GATEWAY_TIMEOUT
                    } else {
                        StatusCode::BAD_GATEWAY
                    };
                    (status, err.to_string()).into_response()
                }),
            }
        }
    };
    let state = breaker.clone();
    let ready = health.clone();
    Router::new()
        .route("/price/{id}", get(price))
        .route(
            "/health",
            get(move || {
                let state = state.state();
                async move { format!("prices: {state}") }
            }),
        )
        .route(
            "/ready",
            get(move || {
                let ready = ready.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
}

/// One probe the watchdog ran: when it started and whether it passed.
#[derive(Debug, Clone, Copy)]
struct ProbeRun {
    at: Instant,
    passed: bool,
}

/// The watchdog's probe: `GET /health` on the downstream over its own client; a `2xx`
/// passes. Every run is logged.
fn health_probe(downstream: SocketAddr, log: Arc<Mutex<Vec<ProbeRun>>>) -> impl Probe {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    move || {
        let client = client.clone();
        let log = log.clone();
        async move {
            let at = Instant::now();
            let result = async {
                let uri = format!("http://{downstream}/health").parse()?;
                let status = client.get(uri).await?.status();
                if status.is_success() {
                    Ok::<_, BoxError>(())
                } else {
                    Err(format!("/health answered {status}").into())
                }
            }
            .await;
            lock(&log).push(ProbeRun {
                at,
                passed: result.is_ok(),
            });
            result
        }
    }
}

// ---------------------------------------------------------------------------------
// The user
// ---------------------------------------------------------------------------------

/// A breaker transition: when, to what, and the attempts let through by then.
#[derive(Debug, Clone, Copy)]
struct Transition {
    at: Instant,
    state: State,
    attempts: usize,
}

/// What one user request saw.
#[derive(Debug, Clone)]
struct Seen {
    sent: Instant,
    done: Instant,
    /// `None`: no response within [`USER_TIMEOUT`], or a client error.
    status: Option<StatusCode>,
    retry_after: Option<String>,
}

type UserClient = Client<HttpConnector, Empty<Bytes>>;

async fn user_request(client: UserClient, app: SocketAddr, n: u64) -> Seen {
    let sent = Instant::now();
    let uri = format!("http://{app}/price/{}", n % 100)
        .parse()
        .expect("a valid uri");
    let res = tokio::time::timeout(USER_TIMEOUT, client.get(uri)).await;
    let done = Instant::now();
    let (status, retry_after) = match res {
        Ok(Ok(res)) => {
            let retry_after = res
                .headers()
                .get(RETRY_AFTER)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let status = res.status();
            let _ = res.into_body().collect().await;
            (Some(status), retry_after)
        }
        _ => (None, None),
    };
    Seen {
        sent,
        done,
        status,
        retry_after,
    }
}

/// Sends a request to `app` every [`LOAD_EVERY`], each on its own task, until `stop`;
/// then waits for those in flight.
async fn drive(
    app: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let client: UserClient = Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(LOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = JoinSet::new();
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        n += 1;
        let (client, log) = (client.clone(), log.clone());
        in_flight.spawn(async move {
            let seen = user_request(client, app, n).await;
            lock(&log).push(seen);
        });
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The first request sent at or after `from` that got `status`, by completion.
fn first_with(log: &[Seen], from: Instant, status: StatusCode) -> Option<Seen> {
    log.iter()
        .filter(|s| s.sent >= from && s.status == Some(status))
        .min_by_key(|s| s.done)
        .cloned()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// `t - origin` in milliseconds, negative if `t` is earlier.
fn signed_ms(t: Instant, origin: Instant) -> i128 {
    t.saturating_duration_since(origin).as_millis() as i128
        - origin.saturating_duration_since(t).as_millis() as i128
}

// ---------------------------------------------------------------------------------
// The incident
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_30s_outage_the_first_success_comes_within_two_probe_intervals_of_the_restart() {
    let port = free_port();
    let downstream_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut downstream = Process::spawn("downstream_process", PORT_VAR, port);
    downstream.accepting(downstream_addr).await;

    // The app, with defaults everywhere but the watchdog's interval.
    let breaker = Breaker::new("prices");
    let probes = Arc::new(Mutex::new(Vec::new()));
    let watchdog = Watchdog::builder(&breaker, health_probe(downstream_addr, probes.clone()))
        .interval(INTERVAL)
        .spawn()
        .expect("a watchdog");
    let health = Health::new();
    health.register(&breaker);
    let attempts = Arc::new(AtomicUsize::new(0));
    let app = prices_app(downstream_addr, &breaker, health, attempts.clone());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the app");
    let app_addr = listener.local_addr().expect("the app's address");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // Breaker transitions, with the attempts let through so far.
    let transitions = Arc::new(Mutex::new(Vec::<Transition>::new()));
    let recorder = {
        let (transitions, attempts) = (transitions.clone(), attempts.clone());
        let mut states = breaker.subscribe();
        tokio::spawn(async move {
            while states.changed().await.is_ok() {
                let state = *states.borrow_and_update();
                lock(&transitions).push(Transition {
                    at: Instant::now(),
                    state,
                    attempts: attempts.load(Ordering::SeqCst),
                });
            }
        })
    };

    // The app's other routes answer.
    let user: UserClient = Client::builder(TokioExecutor::new()).build_http();
    for path in ["/health", "/ready"] {
        let uri = format!("http://{app_addr}{path}").parse().expect("a uri");
        let res = tokio::time::timeout(USER_TIMEOUT, user.get(uri))
            .await
            .expect("the app answers in time")
            .expect("the app answers");
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }

    // The user's traffic, from now to the end.
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let (stop_load, stop) = tokio::sync::oneshot::channel();
    let load = tokio::spawn(drive(app_addr, seen.clone(), stop));

    let start = Instant::now();
    tokio::time::sleep(WARM_UP).await;

    // Kill the downstream and keep the load going.
    let attempts_at_kill = attempts.load(Ordering::SeqCst);
    let killed = Instant::now();
    downstream.kill();
    tokio::time::sleep(OUTAGE).await;
    let attempts_at_restart = attempts.load(Ordering::SeqCst);

    // Restart it on the same port; the restart is when it accepts connections.
    let respawned = Instant::now();
    let mut downstream = Process::spawn("downstream_process", PORT_VAR, port);
    let restarted = downstream.accepting(downstream_addr).await;
    while first_with(&lock(&seen), respawned, StatusCode::OK).is_none()
        && restarted.elapsed() < PATIENCE
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A little more traffic after the first success, then stop.
    tokio::time::sleep(INTERVAL).await;
    let _ = stop_load.send(());
    load.await.expect("the load driver");
    let end = Instant::now();
    watchdog.shutdown().await;
    server.abort();
    recorder.abort();
    downstream.kill();

    // ---- The figures ----
    let seen = lock(&seen).clone();
    let probes = lock(&probes).clone();
    let transitions = lock(&transitions).clone();
    let at = |t: Instant| ms(t.saturating_duration_since(killed));

    // Warm-up: the requests done before the kill (one in flight at the kill may fail).
    let warm: Vec<_> = seen.iter().filter(|s| s.done < killed).collect();
    let warm_ok = warm
        .iter()
        .filter(|s| s.status == Some(StatusCode::OK))
        .count();
    // Detection: the breaker opens.
    let detected = transitions
        .iter()
        .find(|t| t.at >= killed && t.state == State::Open)
        .copied();
    let after_detection: Vec<_> = seen
        .iter()
        .filter(|s| detected.is_some_and(|d| s.sent >= d.at) && s.sent < respawned)
        .collect();
    let first_503 = first_with(&seen, killed, StatusCode::SERVICE_UNAVAILABLE);
    let outage: Vec<_> = seen
        .iter()
        .filter(|s| s.sent >= killed && s.sent < respawned)
        .collect();
    let outage_rejected = outage
        .iter()
        .filter(|s| s.status == Some(StatusCode::SERVICE_UNAVAILABLE))
        .count();
    let rejected = after_detection
        .iter()
        .filter(|s| s.status == Some(StatusCode::SERVICE_UNAVAILABLE))
        .count();
    let ok_during_outage = seen
        .iter()
        .filter(|s| s.sent >= killed && s.done < respawned && s.status == Some(StatusCode::OK))
        .count();
    let mut statuses = BTreeMap::<String, usize>::new();
    for s in seen.iter().filter(|s| s.sent >= killed) {
        let key = s
            .status
            .map_or("none".to_owned(), |c| c.as_u16().to_string());
        *statuses.entry(key).or_default() += 1;
    }
    let mut retry_afters = BTreeMap::<String, usize>::new();
    for s in seen
        .iter()
        .filter(|s| s.status == Some(StatusCode::SERVICE_UNAVAILABLE))
    {
        let key = s
            .retry_after
            .clone()
            .unwrap_or_else(|| "missing".to_owned());
        *retry_afters.entry(key).or_default() += 1;
    }
    let outage_probes: Vec<_> = probes
        .iter()
        .filter(|p| p.at >= killed && p.at < respawned)
        .collect();
    let probes_after_restart: Vec<String> = probes
        .iter()
        .filter(|p| p.at >= respawned)
        .map(|p| {
            let verdict = if p.passed { "pass" } else { "fail" };
            format!("{:+}ms {verdict}", signed_ms(p.at, restarted))
        })
        .collect();
    let last_outage_probes: Vec<u128> = outage_probes
        .iter()
        .rev()
        .take(6)
        .rev()
        .map(|p| at(p.at))
        .collect();
    let first_ok = first_with(&seen, respawned, StatusCode::OK);
    let recovery = first_ok
        .as_ref()
        .map(|s| s.done.saturating_duration_since(restarted));
    let closed_after_restart = transitions
        .iter()
        .find(|t| t.at >= respawned && t.state == State::Closed)
        .map(|t| ms(t.at.saturating_duration_since(restarted)));
    let downstream_calls =
        attempts_at_restart.saturating_sub(attempts_at_kill) + outage_probes.len();
    let attempts_after_detection = detected.map(|d| attempts_at_restart.saturating_sub(d.attempts));
    let probe_cap = (2 * OUTAGE.as_millis() / INTERVAL.as_millis()) as usize;
    let transitions_ms: Vec<String> = transitions
        .iter()
        .map(|t| format!("{}ms {} ({} attempts)", at(t.at), t.state, t.attempts))
        .collect();

    let report = format!(
        "incident_defaults (times from the kill unless said):\n\
         \x20 run: {:.1}s; warm-up {warm_ok}/{} ok; requests from the kill on by status: {statuses:?}\n\
         \x20 breaker transitions: {transitions_ms:?}\n\
         \x20 first 503 sent at {:?}ms; detection (the breaker opens) at {:?}ms\n\
         \x20 after detection, before the restart: {rejected}/{} answered 503\n\
         \x20 the whole outage: {outage_rejected}/{} answered 503\n\
         \x20 Retry-After of every 503: {retry_afters:?}\n\
         \x20 attempts let through to the downstream: {} from the kill to the restart, \
         {attempts_after_detection:?} of them after detection\n\
         \x20 probes during the outage: {} (last ones at {last_outage_probes:?}ms); \
         {downstream_calls} downstream calls in all\n\
         \x20 restart: respawned at {}ms, accepting at {}ms\n\
         \x20 probes after the respawn, from accepting: {probes_after_restart:?}\n\
         \x20 breaker closed {closed_after_restart:?}ms after accepting\n\
         \x20 RECOVERY: first 200 {:?}ms after accepting (bound {}ms)",
        end.duration_since(start).as_secs_f64(),
        warm.len(),
        first_503.as_ref().map(|s| at(s.sent)),
        detected.map(|d| at(d.at)),
        after_detection.len(),
        outage.len(),
        attempts_at_restart.saturating_sub(attempts_at_kill),
        outage_probes.len(),
        at(respawned),
        at(restarted),
        recovery.map(ms),
        ms(RECOVERY_BOUND),
    );

    // ---- The claims ----
    let mut failed = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failed.push(what);
        }
    };
    check(
        warm_ok > 0 && warm_ok == warm.len(),
        format!("warm-up: {warm_ok} of {} requests answered 200", warm.len()),
    );
    check(
        detected.is_some_and(|d| d.at.duration_since(killed) <= DETECT_BOUND),
        format!(
            "the breaker opened within {}ms of the kill: {:?}ms",
            ms(DETECT_BOUND),
            detected.map(|d| at(d.at))
        ),
    );
    check(
        ok_during_outage == 0,
        format!("no 200 while the downstream is down (saw {ok_during_outage})"),
    );
    // Nearly all: every one is expected; 90% leaves room.
    check(
        !after_detection.is_empty() && rejected * 10 >= after_detection.len() * 9,
        format!(
            "after detection nearly every request is answered 503: {rejected} of {}",
            after_detection.len()
        ),
    );
    // Over the whole outage, detection included, the user mostly sees rejections
    // rather than errors from the dead downstream (errors seen: 4% to 7.5% of the
    // requests; 20% leaves room).
    check(
        !outage.is_empty() && outage_rejected * 5 >= outage.len() * 4,
        format!(
            "over the outage nearly every request is answered 503, not an error: \
             {outage_rejected} of {}",
            outage.len()
        ),
    );
    // And the dead downstream sees few calls: attempts and probes together, a third
    // of the user's requests at most (seen: about a sixth; without protection every
    // request would be 1 to 3 attempts).
    check(
        downstream_calls * 3 <= outage.len(),
        format!(
            "the dead downstream sees few calls: {downstream_calls} attempts and probes \
             for {} user requests",
            outage.len()
        ),
    );
    check(
        !retry_afters.is_empty() && retry_afters.keys().all(|v| v == "1"),
        format!(
            "every 503 carries `Retry-After: 1` (the next probe, within {}ms, rounded up to \
             whole seconds, never 0): saw {retry_afters:?}",
            ms(INTERVAL)
        ),
    );
    // The breaker is open with a watchdog owning recovery: no user request reaches the
    // downstream (none expected; 5 leaves room for attempts in flight at the trip).
    check(
        attempts_after_detection.is_some_and(|n| n <= 5),
        format!(
            "user requests do not reach the dead downstream after detection: \
             {attempts_after_detection:?} attempts"
        ),
    );
    // The probes: about one an interval; twice that is the cap.
    check(
        !outage_probes.is_empty() && outage_probes.len() <= probe_cap,
        format!(
            "the watchdog probes the dead downstream, at most {probe_cap} times in {}s: {}",
            OUTAGE.as_secs(),
            outage_probes.len()
        ),
    );
    check(
        recovery.is_some_and(|r| r <= RECOVERY_BOUND),
        format!(
            "the first 200 comes within {}ms (2 probe intervals) of the restart: {}",
            ms(RECOVERY_BOUND),
            recovery.map_or(format!("none within {}s", PATIENCE.as_secs()), |r| format!(
                "{}ms",
                ms(r)
            ))
        ),
    );
    assert!(
        failed.is_empty(),
        "{} claim(s) failed:\n  - {}\n{report}",
        failed.len(),
        failed.join("\n  - ")
    );
    eprintln!("{report}");
}
