#![cfg(feature = "http")]
//! End to end over real loopback sockets: the client stack a user builds
//! (`retry -> breaker -> timeout -> hyper-util client`) calling real axum servers.
//!
//! - a downstream stopped (connections refused) and started again on the same port: the
//!   breaker opens, the watchdog probes `/health`, the breaker closes; every request of
//!   the run ends within a bound, none is lost, none reaches the server while open;
//! - which requests are retried (GET yes, POST no, POST with `Idempotency-Key` yes);
//! - `Retry-After` (delta-seconds and HTTP-date) and `max_elapsed`;
//! - streamed bodies replayed byte for byte, and bodies over the replay cap sent once.
//!
//! Every request is bounded by [`BOUND`] so a hang fails instead of stalling. Timing
//! asserts are lower bounds on waits the library must make, with generous upper bounds.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body as AxumBody;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::ms;
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use steadfast::backoff::Backoff;
use steadfast::breaker::error::Open;
use steadfast::breaker::{Breaker, BreakerService, State};
use steadfast::http::replay::ReplayBody;
use steadfast::http::{
    is_connect_error, Attempts, BreakerClassifier, HttpRequests, HttpResponses, RetryClassifier,
    IDEMPOTENCY_KEY,
};
use steadfast::retry::{Budget, Retry, RetryLayer, RetryPolicy};
use steadfast::watchdog::{probe, Watchdog};
use steadfast::BoxError;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Sleep;
use tower::timeout::Timeout;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The most any one request (its retries and its response body included) may take.
const BOUND: Duration = Duration::from_secs(5);
/// The per-attempt timeout of the client stack.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------
// The client stack
// ---------------------------------------------------------------------------------

/// The request body users hand the stack: any body, boxed.
///
/// Its error is `io::Error` rather than `BoxError`: with a `dyn Error` in the body
/// type, a future driving the stack cannot be `tokio::spawn`ed ("implementation of
/// `Service` is not general enough", a rustc limitation with higher-ranked lifetimes
/// in auto-trait checks; see the report of this file's author).
type ReqBody = BoxBody<Bytes, std::io::Error>;
/// The hyper-util client under the stack: it sends what the retry layer makes.
type HttpClient = Client<HttpConnector, ReplayBody<ReqBody>>;
/// `retry -> breaker -> timeout -> client`, spelled out.
type Stack = Retry<
    BreakerService<Timeout<HttpClient>, BreakerClassifier>,
    RetryClassifier,
    HttpRequests,
    HttpResponses,
>;
type Policy = RetryPolicy<RetryClassifier, HttpRequests, HttpResponses>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn stack(policy: Policy, breaker: &Breaker, client: HttpClient) -> Stack {
    stack_with_timeout(policy, breaker, client, ATTEMPT_TIMEOUT)
}

fn stack_with_timeout(
    policy: Policy,
    breaker: &Breaker,
    client: HttpClient,
    timeout: Duration,
) -> Stack {
    ServiceBuilder::new()
        .layer(RetryLayer::new(policy).unwrap())
        .layer(breaker.layer().classify(BreakerClassifier::new()))
        .timeout(timeout)
        .service(client)
}

/// The HTTP retry policy with ms-scale backoff and no budget limit, so that what is
/// (not) retried is decided by the HTTP rules alone.
fn fast_policy() -> Policy {
    steadfast::http::retry_policy()
        .backoff(Backoff::constant(ms(1)))
        .budget(Budget::unlimited())
}

/// A breaker that does not trip in these tests: it still counts every attempt.
fn lenient_breaker(name: &str) -> Breaker {
    Breaker::builder(name)
        .consecutive_failures(100)
        .build()
        .unwrap()
}

fn empty() -> ReqBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

fn full(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// What the client got: status, attempts recorded, body.
#[derive(Debug)]
struct Got {
    status: StatusCode,
    attempts: Option<u32>,
    body: Bytes,
}

/// Sends `req` through `svc`, reads the whole response; panics on an error or a hang.
async fn send(svc: &mut Stack, req: Request<ReqBody>) -> Got {
    let res = tokio::time::timeout(BOUND, async {
        let res = svc.ready().await?.call(req).await?;
        let status = res.status();
        let attempts = res.extensions().get::<Attempts>().map(|a| a.0);
        let body = res.into_body().collect().await?.to_bytes();
        Ok::<_, BoxError>(Got {
            status,
            attempts,
            body,
        })
    })
    .await
    .expect("the request ends within the bound");
    res.expect("the request gets a response")
}

/// A streamed body: data chunks with a real sleep before each, no size hint (sent
/// chunked).
struct Streamed {
    chunks: VecDeque<Bytes>,
    gap: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Streamed {
    fn new(chunks: &[Bytes], gap: Duration) -> Self {
        Self {
            chunks: chunks.iter().cloned().collect(),
            gap,
            sleep: None,
        }
    }

    fn boxed(self) -> ReqBody {
        BodyExt::map_err(self, |e| match e {}).boxed()
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.chunks.is_empty() {
            return Poll::Ready(None);
        }
        let gap = self.gap;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
        ready!(sleep.as_mut().poll(cx));
        self.sleep = None;
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

/// `len` bytes of a pattern that makes misplaced or repeated bytes visible.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

fn concat(chunks: &[Bytes]) -> Bytes {
    chunks.concat().into()
}

// ---------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------

/// An axum server on 127.0.0.1, stopped by sending on `stop`.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

fn start(listener: TcpListener, app: Router) -> Server {
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stopped.await;
    });
    Server {
        addr,
        stop,
        task: tokio::spawn(server.into_future()),
    }
}

/// On a port chosen by the OS.
async fn serve(app: Router) -> Server {
    start(TcpListener::bind("127.0.0.1:0").await.unwrap(), app)
}

/// On `addr` again, after a server there was shut down. Tokio's `TcpListener::bind`
/// sets `SO_REUSEADDR` on Unix (mio does), so connections left in `TIME_WAIT` do not
/// block the bind; it is retried for a while all the same, in case the old socket is
/// not quite gone.
async fn serve_on(addr: SocketAddr, app: Router) -> Server {
    let deadline = Instant::now() + BOUND;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return start(listener, app),
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {e}; retrying");
                tokio::time::sleep(ms(10)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    }
}

impl Server {
    /// Stops accepting, lets in-flight requests finish, waits until the port is free.
    async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(BOUND, self.task)
            .await
            .expect("the server stops in time")
            .unwrap()
            .unwrap();
    }
}

/// One request as the scripted server saw it.
#[derive(Debug, Clone)]
struct Hit {
    method: Method,
    headers: HeaderMap,
    /// The whole body, or `None` if the reply was sent without reading it.
    body: Option<Bytes>,
    at: Instant,
}

/// One scripted answer.
#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    retry_after: Option<RetryAfter>,
    /// Read the whole request body before answering.
    read_body: bool,
    /// Wait this long (after recording the hit) before answering.
    delay: Option<Duration>,
}

#[derive(Debug, Clone)]
enum RetryAfter {
    Seconds(u64),
    /// An HTTP-date this far ahead of the moment the reply is made.
    DateIn(Duration),
}

fn reply(status: u16) -> Reply {
    Reply {
        status: StatusCode::from_u16(status).unwrap(),
        retry_after: None,
        read_body: true,
        delay: None,
    }
}

impl Reply {
    fn retry_after(mut self, after: RetryAfter) -> Self {
        self.retry_after = Some(after);
        self
    }

    fn after(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    fn without_reading_body(mut self) -> Self {
        self.read_body = false;
        self
    }
}

/// A server that answers every request with the next reply of its script (the last
/// one over and over) and records what it was sent.
#[derive(Clone)]
struct Script {
    replies: Arc<Vec<Reply>>,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Script {
    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

async fn scripted(
    AxumState(script): AxumState<Script>,
    req: Request<AxumBody>,
) -> Response<AxumBody> {
    let at = Instant::now();
    let n = script.hits.lock().unwrap().len();
    let reply = script.replies[n.min(script.replies.len() - 1)].clone();
    let (parts, body) = req.into_parts();
    let body = if reply.read_body {
        Some(axum::body::to_bytes(body, usize::MAX).await.unwrap())
    } else {
        drop(body);
        None
    };
    script.hits.lock().unwrap().push(Hit {
        method: parts.method,
        headers: parts.headers,
        body,
        at,
    });
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let mut res = (reply.status, format!("reply {n}")).into_response();
    let value = match reply.retry_after {
        None => None,
        Some(RetryAfter::Seconds(s)) => Some(HeaderValue::from(s)),
        Some(RetryAfter::DateIn(d)) => {
            let date = httpdate::fmt_http_date(SystemTime::now() + d);
            Some(HeaderValue::from_str(&date).unwrap())
        }
    };
    if let Some(value) = value {
        res.headers_mut().insert("retry-after", value);
    }
    res
}

async fn serve_script(replies: Vec<Reply>) -> (Server, Script) {
    let script = Script {
        replies: Arc::new(replies),
        hits: Arc::default(),
    };
    let app = Router::new().fallback(scripted).with_state(script.clone());
    (serve(app).await, script)
}

fn uri(addr: SocketAddr, path: &str) -> Uri {
    format!("http://{addr}{path}").parse().unwrap()
}

// ---------------------------------------------------------------------------------
// 1. A downstream that dies and comes back on the same port
// ---------------------------------------------------------------------------------

/// Counters of one incarnation of the downstream.
#[derive(Default)]
struct Counters {
    work: AtomicUsize,
    health: AtomicUsize,
}

fn downstream_app(counters: Arc<Counters>, healthy: Arc<AtomicBool>) -> Router {
    let work = {
        let counters = counters.clone();
        move || async move {
            counters.work.fetch_add(1, Ordering::SeqCst);
            "work done"
        }
    };
    let health = move || async move {
        counters.health.fetch_add(1, Ordering::SeqCst);
        if healthy.load(Ordering::SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    Router::new()
        .route("/work", get(work))
        .route("/health", get(health))
}

const UP: u8 = 0;
const DOWN: u8 = 1;
const BACK_UNHEALTHY: u8 = 2;
const HEALTHY: u8 = 3;
const CLOSED: u8 = 4;
const PHASES: u8 = 5;

/// How one request of the run ended.
#[derive(Debug)]
enum Ended {
    Response(StatusCode),
    Open,
    /// The hyper-util client's error; whether it is a connect error.
    Client {
        connect: bool,
        error: String,
    },
    AttemptTimeout,
    /// hyper's error while reading the response body.
    Body(String),
    /// Not one of the error types the stack can produce.
    Unknown(String),
    /// Not done within the bound.
    Hung,
}

fn ended(result: Result<Result<StatusCode, BoxError>, tokio::time::error::Elapsed>) -> Ended {
    match result {
        Err(_) => Ended::Hung,
        Ok(Ok(status)) => Ended::Response(status),
        Ok(Err(e)) if e.is::<Open>() => Ended::Open,
        Ok(Err(e)) if e.is::<tower::timeout::error::Elapsed>() => Ended::AttemptTimeout,
        Ok(Err(e)) if e.is::<hyper_util::client::legacy::Error>() => Ended::Client {
            connect: is_connect_error(&e),
            error: format!("{e:?}"),
        },
        Ok(Err(e)) if e.is::<hyper::Error>() => Ended::Body(format!("{e:?}")),
        Ok(Err(e)) => Ended::Unknown(format!("{e:?}")),
    }
}

/// What the clients saw, by the phase each request started in.
#[derive(Default)]
struct Log {
    started: [AtomicUsize; PHASES as usize],
    ended: Mutex<Vec<(u8, Ended)>>,
}

impl Log {
    /// Requests started in `phase` that ended as `f` says.
    fn count(&self, phase: u8, f: impl Fn(&Ended) -> bool) -> usize {
        let ended = self.ended.lock().unwrap();
        ended.iter().filter(|(p, e)| *p == phase && f(e)).count()
    }

    /// Requests of any phase that ended as `f` says.
    fn total(&self, f: impl Fn(&Ended) -> bool) -> usize {
        self.ended
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| f(e))
            .count()
    }

    /// What `f` finds in how requests ended, without repeats.
    fn find(&self, f: impl Fn(&Ended) -> Option<String>) -> Vec<String> {
        let found: BTreeSet<String> = self
            .ended
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, e)| f(e))
            .collect();
        found.into_iter().collect()
    }

    /// How the requests of `phase` ended, counted by kind.
    fn histogram(&self, phase: u8) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (p, e) in self.ended.lock().unwrap().iter() {
            if *p == phase {
                let kind = match e {
                    Ended::Client { connect, .. } => format!("Client {{ connect: {connect} }}"),
                    other => format!("{other:?}"),
                };
                *counts.entry(kind).or_default() += 1;
            }
        }
        counts
    }
}

/// A client that sends `GET /work` until stopped, and logs how each request ended.
struct Worker {
    svc: Stack,
    work: Uri,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    log: Arc<Log>,
}

impl Worker {
    async fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            let p = self.phase.load(Ordering::SeqCst);
            self.log.started[p as usize].fetch_add(1, Ordering::SeqCst);
            let req = Request::get(self.work.clone()).body(empty()).unwrap();
            let result = tokio::time::timeout(BOUND, status_of(&mut self.svc, req)).await;
            self.log.ended.lock().unwrap().push((p, ended(result)));
            tokio::time::sleep(ms(5)).await;
        }
    }
}

/// The status of the response to `req`, once its body is read.
async fn status_of(svc: &mut Stack, req: Request<ReqBody>) -> Result<StatusCode, BoxError> {
    let res = svc.ready().await?.call(req).await?;
    let status = res.status();
    res.into_body().collect().await?;
    Ok(status)
}

/// Polls `cond` every few ms until it holds; panics with `what` after `BOUND`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(ms(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn downstream_stopped_and_restarted_on_the_same_port() {
    let run = Instant::now();
    let healthy = Arc::new(AtomicBool::new(true));
    let first = Arc::new(Counters::default());
    let server = serve(downstream_app(first.clone(), healthy.clone())).await;
    let addr = server.addr;

    // Open until the watchdog closes it: its own timer would take 30 s.
    let breaker = Breaker::builder("downstream")
        .consecutive_failures(3)
        .open_backoff(Backoff::constant(Duration::from_secs(30)))
        .build()
        .unwrap();
    let client = http_client();
    let svc = stack(
        steadfast::http::retry_policy()
            .max_attempts(2)
            .backoff(Backoff::constant(ms(2))),
        &breaker,
        client.clone(),
    );

    // The watchdog probes `/health` with the same hyper client, past the breaker;
    // anything but a 2xx is a failed probe.
    let health = uri(addr, "/health");
    let check =
        client
            .clone()
            .map_err(BoxError::from)
            .and_then(|res: Response<Incoming>| async move {
                if res.status().is_success() {
                    Ok(())
                } else {
                    Err(BoxError::from(format!("/health answered {}", res.status())))
                }
            });
    let watchdog = Watchdog::builder(
        &breaker,
        probe::service(check, move || {
            Request::get(health.clone())
                .body(ReplayBody::once(empty()))
                .unwrap()
        }),
    )
    .interval(ms(50))
    .backoff(Backoff::exponential(ms(20), ms(100)))
    .timeout(Duration::from_secs(1))
    .healthy_threshold(2)
    .spawn()
    .unwrap();

    // Clients that keep sending requests for the whole run.
    let phase = Arc::new(AtomicU8::new(UP));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Log::default());
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let worker = Worker {
                svc: svc.clone(),
                work: uri(addr, "/work"),
                phase: phase.clone(),
                stop: stop.clone(),
                log: log.clone(),
            };
            tokio::spawn(worker.run())
        })
        .collect();

    // Up: requests are answered.
    until("answers while up", || {
        log.count(UP, |e| matches!(e, Ended::Response(StatusCode::OK))) >= 20
    })
    .await;
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.snapshot().failures, 0);

    // Down: connections are refused; the breaker opens; probes fail.
    server.shutdown().await;
    phase.store(DOWN, Ordering::SeqCst);
    let down_at = Instant::now();
    let mut states = breaker.subscribe();
    tokio::time::timeout(BOUND, states.wait_for(|s| *s == State::Open))
        .await
        .expect("the breaker opens")
        .unwrap();
    let opened_in = down_at.elapsed();
    // What the breaker counted: connections refused (seen here past the stack; through
    // it, a refused GET is retried and the retry meets the open breaker).
    let refused = client
        .request(
            Request::get(uri(addr, "/work"))
                .body(ReplayBody::once(empty()))
                .unwrap(),
        )
        .await
        .expect_err("nothing listens");
    assert!(is_connect_error(&BoxError::from(refused)));
    let failures = breaker.snapshot().failures;
    assert!(failures >= 3, "{failures}");
    until("rejections while down", || {
        log.count(DOWN, |e| matches!(e, Ended::Open)) >= 20
    })
    .await;
    tokio::time::sleep(ms(200)).await; // a few failed probes on a closed port
    assert_eq!(breaker.state(), State::Open, "no probe can pass while down");

    // Back on the same port, but `/health` fails: the watchdog probes the live server
    // and keeps the breaker open; real requests are still rejected without reaching it.
    let second = Arc::new(Counters::default());
    healthy.store(false, Ordering::SeqCst);
    let server = serve_on(addr, downstream_app(second.clone(), healthy.clone())).await;
    phase.store(BACK_UNHEALTHY, Ordering::SeqCst);
    until("probes of the server back", || {
        second.health.load(Ordering::SeqCst) >= 3
    })
    .await;
    until("rejections while unhealthy", || {
        log.count(BACK_UNHEALTHY, |e| matches!(e, Ended::Open)) >= 20
    })
    .await;
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        second.work.load(Ordering::SeqCst),
        0,
        "no request reaches the server while the breaker is open"
    );

    // Healthy: two passing probes close the breaker; requests flow again.
    phase.store(HEALTHY, Ordering::SeqCst);
    let healthy_at = Instant::now();
    healthy.store(true, Ordering::SeqCst);
    tokio::time::timeout(BOUND, states.wait_for(|s| *s == State::Closed))
        .await
        .expect("the watchdog closes the breaker")
        .unwrap();
    let closed_in = healthy_at.elapsed();
    phase.store(CLOSED, Ordering::SeqCst);
    until("answers once closed", || {
        log.count(CLOSED, |e| matches!(e, Ended::Response(StatusCode::OK))) >= 20
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        tokio::time::timeout(BOUND, worker)
            .await
            .expect("the clients stop")
            .unwrap();
    }

    // Every request ended, in a response or a typed error, within the bound.
    let started: usize = log.started.iter().map(|s| s.load(Ordering::SeqCst)).sum();
    let histograms: Vec<_> = (0..PHASES).map(|p| log.histogram(p)).collect();
    let diagnosis = format!("by phase: {histograms:#?}\n{:?}", breaker.snapshot());
    assert_eq!(started, log.total(|_| true), "no request is lost");
    assert_eq!(log.total(|e| matches!(e, Ended::Hung)), 0, "{diagnosis}");
    let unknown: Vec<String> = log.find(|e| match e {
        Ended::Unknown(error) => Some(error.clone()),
        _ => None,
    });
    assert!(unknown.is_empty(), "untyped errors: {unknown:?}");
    let client_errors: Vec<String> = log.find(|e| match e {
        Ended::Client { connect, error } => Some(format!("connect: {connect}, {error}")),
        Ended::Body(error) => Some(format!("body: {error}")),
        _ => None,
    });

    // Once healthy, rejections until the watchdog closes the breaker, then answers.
    let ok_or_open = |e: &Ended| matches!(e, Ended::Open | Ended::Response(StatusCode::OK));
    assert_eq!(log.count(HEALTHY, |e| !ok_or_open(e)), 0);
    let not_ok = |e: &Ended| !matches!(e, Ended::Response(StatusCode::OK));
    assert_eq!(log.count(CLOSED, not_ok), 0);
    // Down: rejections, or client errors (connections refused; a pooled connection
    // closed by the stop, at worst).
    let down_ok = |e: &Ended| matches!(e, Ended::Open | Ended::Client { .. });
    assert_eq!(log.count(DOWN, |e| !down_ok(e)), 0);
    // While back but unhealthy, only rejections (a request that read the phase just
    // before it changed may have been answered).
    assert_eq!(log.count(BACK_UNHEALTHY, |e| !ok_or_open(e)), 0);

    // Every rejection the clients saw is one the breaker counted; it tripped once; no
    // rejected request reached a server.
    let snapshot = breaker.snapshot();
    let opens = log.total(|e| matches!(e, Ended::Open));
    assert_eq!(snapshot.rejected, opens as u64, "{snapshot:?}");
    assert_eq!(snapshot.trips, 1, "{snapshot:?}");
    assert_eq!(breaker.state(), State::Closed);
    let answered = log.total(|e| matches!(e, Ended::Response(StatusCode::OK)));
    let reached = first.work.load(Ordering::SeqCst) + second.work.load(Ordering::SeqCst);
    assert_eq!(
        reached, answered,
        "each answer is one hit, each hit one answer"
    );

    watchdog.shutdown().await;
    server.shutdown().await;
    eprintln!(
        "run: {:?}; {started} requests ({answered} answered, {opens} rejected); \
         opened {opened_in:?} after the stop; closed {closed_in:?} after /health \
         recovered; probes of the server back: {}; client errors: {client_errors:?}\n\
         {diagnosis}",
        run.elapsed(),
        second.health.load(Ordering::SeqCst),
    );
}

// ---------------------------------------------------------------------------------
// 2. Which requests are retried
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn post_is_not_retried_get_and_keyed_post_are() {
    let (server, script) = serve_script(vec![reply(503)]).await;
    let breaker = lenient_breaker("always-503");
    let mut svc = stack(fast_policy().max_attempts(3), &breaker, http_client());

    // POST: sent once.
    let req = Request::post(uri(server.addr, "/orders"))
        .body(full("order #1"))
        .unwrap();
    let got = send(&mut svc, req).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.attempts, Some(1));
    assert_eq!(got.body, "reply 0");
    assert_eq!(script.hits().len(), 1);

    // GET: three attempts, the last 503 returned.
    let req = Request::get(uri(server.addr, "/orders/1"))
        .body(empty())
        .unwrap();
    let got = send(&mut svc, req).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.attempts, Some(3));
    assert_eq!(got.body, "reply 3");
    assert_eq!(script.hits().len(), 4);

    // POST with an Idempotency-Key: retried, with the same key and body each time.
    let req = Request::post(uri(server.addr, "/orders"))
        .header("idempotency-key", "order-2")
        .body(full("order #2"))
        .unwrap();
    let got = send(&mut svc, req).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.attempts, Some(3));
    let hits = script.hits();
    assert_eq!(hits.len(), 7);
    for hit in &hits[4..] {
        assert_eq!(hit.method, Method::POST);
        assert_eq!(hit.headers[&IDEMPOTENCY_KEY], "order-2");
        assert_eq!(hit.body.as_deref(), Some(&b"order #2"[..]));
    }
    let methods: Vec<_> = hits.iter().map(|h| h.method.clone()).collect();
    assert_eq!(
        methods,
        [
            Method::POST,
            Method::GET,
            Method::GET,
            Method::GET,
            Method::POST,
            Method::POST,
            Method::POST
        ]
    );

    // The breaker (inside the retry) saw every attempt, each a failure.
    let snapshot = breaker.snapshot();
    assert_eq!((snapshot.calls, snapshot.failures), (7, 7), "{snapshot:?}");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------
// 3. GET on 503 retried until it succeeds
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn get_on_503_is_retried_and_succeeds() {
    let (server, script) = serve_script(vec![reply(503), reply(200)]).await;
    let breaker = lenient_breaker("blip");
    let mut svc = stack(fast_policy().max_attempts(3), &breaker, http_client());

    let req = Request::get(uri(server.addr, "/item"))
        .header("x-trace", "t-1")
        .body(empty())
        .unwrap();
    let got = send(&mut svc, req).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.attempts, Some(2));
    assert_eq!(got.body, "reply 1");
    let hits = script.hits();
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| h.headers["x-trace"] == "t-1"));

    let snapshot = breaker.snapshot();
    assert_eq!(
        (snapshot.calls, snapshot.failures, snapshot.successes),
        (2, 1, 1)
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------
// Errors: connect errors retried (idempotent requests only), attempt timeouts not
// ---------------------------------------------------------------------------------

/// An address nothing listens on: connections are refused.
async fn refusing_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

#[tokio::test]
async fn connect_errors_are_retried_for_idempotent_requests_only() {
    let addr = refusing_addr().await;
    let breaker = lenient_breaker("nobody-home");
    let mut svc = stack(fast_policy().max_attempts(3), &breaker, http_client());

    let outcome = |result: Result<_, tokio::time::error::Elapsed>| {
        let result: Result<Response<Incoming>, BoxError> = result.expect("within the bound");
        let err = result.expect_err("nothing listens");
        assert!(err.is::<hyper_util::client::legacy::Error>(), "{err:?}");
        assert!(is_connect_error(&err), "{err:?}");
    };
    let req = Request::get(uri(addr, "/")).body(empty()).unwrap();
    outcome(tokio::time::timeout(BOUND, svc.ready().await.unwrap().call(req)).await);
    assert_eq!(breaker.snapshot().failures, 3, "three attempts");

    let req = Request::post(uri(addr, "/")).body(full("x")).unwrap();
    outcome(tokio::time::timeout(BOUND, svc.ready().await.unwrap().call(req)).await);
    assert_eq!(breaker.snapshot().failures, 4, "a POST: one attempt");
}

#[tokio::test]
async fn an_attempt_timeout_is_a_typed_error_counted_by_the_breaker_and_not_retried() {
    let (server, script) = serve_script(vec![reply(200).after(Duration::from_secs(3))]).await;
    let breaker = lenient_breaker("slow");
    let mut svc = stack_with_timeout(fast_policy(), &breaker, http_client(), ms(100));

    let req = Request::get(uri(server.addr, "/")).body(empty()).unwrap();
    let start = Instant::now();
    let result = tokio::time::timeout(BOUND, svc.ready().await.unwrap().call(req))
        .await
        .expect("within the bound");
    let elapsed = start.elapsed();
    let err = result.expect_err("the attempt times out");
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err:?}");
    assert!(
        elapsed >= ms(100) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert_eq!(script.hits().len(), 1, "not retried");
    let snapshot = breaker.snapshot();
    assert_eq!((snapshot.calls, snapshot.failures), (1, 1), "{snapshot:?}");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------
// 4. Retry-After
// ---------------------------------------------------------------------------------

/// Sends one GET to a server answering `first` then 200; returns what came back, the
/// elapsed time, and the gap between the server's two hits (if there were two).
async fn retry_after_case(first: Reply, policy: Policy) -> (Got, Duration, Option<Duration>) {
    let (server, script) = serve_script(vec![first, reply(200)]).await;
    let breaker = lenient_breaker("slow-down");
    let mut svc = stack(policy, &breaker, http_client());
    let req = Request::get(uri(server.addr, "/")).body(empty()).unwrap();
    let start = Instant::now();
    let got = send(&mut svc, req).await;
    let elapsed = start.elapsed();
    let hits = script.hits();
    let gap = (hits.len() == 2).then(|| hits[1].at - hits[0].at);
    server.shutdown().await;
    (got, elapsed, gap)
}

#[tokio::test]
async fn retry_after_seconds_is_honoured() {
    let first = reply(503).retry_after(RetryAfter::Seconds(1));
    let (got, elapsed, gap) = retry_after_case(first, fast_policy().max_attempts(3)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.attempts, Some(2));
    let gap = gap.expect("two hits");
    // The backoff is 1 ms: the wait is the header's.
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
}

#[tokio::test]
async fn retry_after_http_date_is_honoured() {
    // A date 2 s ahead, truncated to whole seconds: between 1 and 2 s from the reply.
    let first = reply(503).retry_after(RetryAfter::DateIn(Duration::from_secs(2)));
    let (got, elapsed, gap) = retry_after_case(first, fast_policy().max_attempts(3)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.attempts, Some(2));
    let gap = gap.expect("two hits");
    // Lower bound with a little room for the wall clock and the monotonic clock to
    // disagree.
    assert!(gap >= ms(950), "retried after {gap:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test]
async fn retry_after_past_max_elapsed_returns_at_once() {
    let first = reply(503).retry_after(RetryAfter::Seconds(1));
    let policy = fast_policy().max_attempts(3).max_elapsed(ms(500));
    let (got, elapsed, gap) = retry_after_case(first, policy).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.attempts, Some(1));
    assert_eq!(gap, None, "one hit");
    // Waiting for the header would take at least 1 s.
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
}

// ---------------------------------------------------------------------------------
// 5. Replayed bodies
// ---------------------------------------------------------------------------------

/// Chunks of assorted sizes: below and above the size at which the replay gathers
/// small chunks, 7,338 bytes in all.
fn chunks() -> Vec<Bytes> {
    [10, 2_000, 1, 5_000, 327]
        .iter()
        .enumerate()
        .map(|(i, len)| pattern(*len, i as u8))
        .collect()
}

#[tokio::test]
async fn streamed_body_under_the_cap_is_replayed_byte_for_byte() {
    let (server, script) = serve_script(vec![reply(503), reply(200)]).await;
    let breaker = lenient_breaker("replay");
    let mut svc = stack(fast_policy(), &breaker, http_client());

    let chunks = chunks();
    let req = Request::put(uri(server.addr, "/blob"))
        .header("x-trace", "t-2")
        .body(Streamed::new(&chunks, ms(10)).boxed())
        .unwrap();
    let got = send(&mut svc, req).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.attempts, Some(2));

    let hits = script.hits();
    assert_eq!(hits.len(), 2);
    let original = concat(&chunks);
    // The first attempt is streamed: chunked, no length announced. (The replay knows
    // its length, and hyper announces it.)
    assert!(hits[0].headers.get("content-length").is_none());
    for hit in &hits {
        assert_eq!(hit.method, Method::PUT);
        assert_eq!(hit.headers["x-trace"], "t-2");
        assert_eq!(hit.body.as_ref().map(Bytes::len), Some(original.len()));
        assert!(hit.body.as_ref() == Some(&original), "body differs");
    }
    server.shutdown().await;
}

/// The first attempt is answered `503` before the server reads its body: the retry
/// still sends the whole body.
#[tokio::test]
async fn streamed_body_cut_short_by_an_early_answer_is_replayed_whole() {
    let (server, script) = serve_script(vec![reply(503).without_reading_body(), reply(200)]).await;
    let breaker = lenient_breaker("early");
    let mut svc = stack(fast_policy(), &breaker, http_client());

    let chunks = chunks();
    let req = Request::put(uri(server.addr, "/blob"))
        .body(Streamed::new(&chunks, ms(20)).boxed())
        .unwrap();
    let got = send(&mut svc, req).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.attempts, Some(2));

    let hits = script.hits();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].body, None);
    let original = concat(&chunks);
    assert_eq!(hits[1].body.as_ref().map(Bytes::len), Some(original.len()));
    assert!(hits[1].body.as_ref() == Some(&original), "body differs");
    server.shutdown().await;
}

/// A 1 KiB body over a 16-byte cap, streamed (no size known) or whole (size known):
/// sent once, whole, and the 503 returned.
#[tokio::test]
async fn body_over_the_cap_is_sent_once() {
    let (server, script) = serve_script(vec![reply(503), reply(503), reply(503), reply(200)]).await;
    let breaker = lenient_breaker("big");
    let policy = fast_policy().requests(HttpRequests::new().replay_cap(16));
    let mut svc = stack(policy, &breaker, http_client());

    let streamed: Vec<Bytes> = (0..16).map(|i| pattern(64, i)).collect();
    let whole = pattern(1024, 0xAA);
    let bodies = [
        (Streamed::new(&streamed, ms(2)).boxed(), concat(&streamed)),
        (full(whole.clone()), whole),
    ];
    for (n, (body, sent)) in bodies.into_iter().enumerate() {
        let req = Request::put(uri(server.addr, "/blob")).body(body).unwrap();
        let got = send(&mut svc, req).await;
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "body {n}");
        assert_eq!(got.attempts, Some(1), "body {n}");
        let hits = script.hits();
        assert_eq!(hits.len(), n + 1, "body {n}: one hit");
        assert!(hits[n].body.as_ref() == Some(&sent), "body {n} sent whole");
    }

    // A body under the cap on the same stack is retried: 503, then 200.
    let req = Request::put(uri(server.addr, "/small"))
        .body(full("tiny"))
        .unwrap();
    let got = send(&mut svc, req).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.attempts, Some(2));
    let hits = script.hits();
    assert_eq!(hits.len(), 4);
    assert!(hits[2..]
        .iter()
        .all(|h| h.body.as_deref() == Some(&b"tiny"[..])));
    server.shutdown().await;
}
