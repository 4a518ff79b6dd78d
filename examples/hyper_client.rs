//! [`steadfast::http::Client`] without axum: a protected HTTP client calling a flaky
//! server on a real socket.
//!
//! ```text
//! cargo run --example hyper_client --features client
//! ```
//!
//! The example starts a local axum server on 127.0.0.1 (port chosen by the OS) that
//! misbehaves on purpose: every 3rd request it receives answers `503` with
//! `Retry-After: 1`, every 4th other one a bare `503`, and `/slow` takes longer than the
//! client waits. Later the server is stopped (connections refused) and started again
//! on the same port, with its request count back to zero.
//!
//! The client is built in one call, [`Client::builder`]: retry -> breaker (one per
//! origin, the default) -> timeout -> hyper-util.
//!
//! - **retry**: [`steadfast::http::retry_policy`]: `502`/`503`/`504`/`429`/`408` and
//!   connect errors are retried, up to 3 attempts, only for idempotent methods or
//!   requests with an `Idempotency-Key`; a `Retry-After` is waited out (unless that
//!   would pass `max_elapsed`, 2 s); bodies are replayed.
//! - **breaker**: opens after 3 failures in a row (each attempt counts; `5xx`, `429`
//!   and errors are failures), for 0.4 s then 0.8 s then 1.6 s (seeded jitter), and
//!   lets one trial request through to decide whether to close.
//! - **timeout**: 300 ms per attempt.
//!
//! The output shows, per request, the status (with `Retry-After` and body) and the
//! number of attempts from the response's [`Attempts`] extension, or the error's
//! [`ErrorKind`](steadfast::http::ErrorKind) and message (a fast breaker rejection, a connect error, a timeout),
//! and how long it took; breaker transitions as they happen (from the `tracing`
//! events every transition emits); and at the end the snapshot of the server's
//! origin's breaker. A request let through as the half-open trial that fails to
//! connect is retried like any connect error, but its retry meets the breaker open
//! again: it ends as a rejection, a few tens of milliseconds late.
//!
//! Everything runs for real (real sockets, real time, about 5 s): timings vary by a
//! few milliseconds from run to run, and a rejection more or less may show during the
//! outage.

use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use steadfast::backoff::{Backoff, Jitter};
use steadfast::breaker::Breaker;
use steadfast::http::{retry_policy, Attempts, Client, IDEMPOTENCY_KEY};
use steadfast::BoxError;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

#[path = "support/events.rs"]
mod events;
use events::stamp;

/// How long `/slow` takes to answer: longer than an attempt may take (300 ms).
const SLOW: Duration = Duration::from_millis(600);
/// How long the server stays down.
const OUTAGE: Duration = Duration::from_millis(1500);
/// Time between two requests during the outage.
const PACE: Duration = Duration::from_millis(200);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let start = Instant::now();
    events::print_from(start)?;
    let server = FlakyServer::start("127.0.0.1:0".parse()?).await?;
    let addr = server.addr;

    let open_for = Backoff::exponential(ms(400), ms(1600)).jitter(Jitter::Equal); // in [d / 2, d]
    let retry_backoff = Backoff::exponential(ms(50), ms(200)).jitter(Jitter::Full);
    let client = Client::builder("flaky")
        .breaker(
            Breaker::builder("flaky")
                .consecutive_failures(3)
                .open_backoff(open_for.seed(7))
                .half_open_calls(1),
        )
        .retry(
            retry_policy()
                .max_attempts(3)
                .backoff(retry_backoff.seed(1))
                .max_elapsed(Duration::from_secs(2)),
        )
        .timeout(ms(300))
        .build()?;

    println!("server on {addr}: every 3rd request 503 + Retry-After: 1, every 4th other 503;");
    println!("client `flaky`: retry (3 attempts) -> breaker per origin (3 failures in a row) -> timeout (300ms)");
    println!(
        "{:>6}  {:<30} {:<50} {:>8}  {:>7}",
        "done", "request", "result", "attempts", "took"
    );
    let url = |path: &str| format!("http://{addr}{path}");
    let get = |path: &str| Request::get(url(path)).body(Full::default());
    let order = |key: Option<&str>| {
        let mut req = Request::post(url("/orders"));
        if let Some(key) = key {
            req = req.header(&IDEMPOTENCY_KEY, key);
        }
        req.body(Full::new(Bytes::from_static(b"sku=42")))
    };

    send(&client, start, get("/items/1")?).await;
    send(&client, start, get("/items/2")?).await;
    send(&client, start, get("/items/3")?).await;
    send(&client, start, order(None)?).await;
    send(&client, start, get("/items/4")?).await;
    send(&client, start, order(Some("order-7"))?).await;
    send(&client, start, get("/slow")?).await;
    send(&client, start, get("/items/5")?).await;

    server.stop().await?;
    println!("{}  -- server stopped: connections refused", stamp(start));
    let stopped = Instant::now();
    let mut server = None;
    let mut ok_since_back = 0;
    for id in 6..40 {
        if server.is_none() && stopped.elapsed() >= OUTAGE {
            server = Some(FlakyServer::start(addr).await?);
            println!("{}  -- server back on the same port", stamp(start));
        }
        let ok = send(&client, start, get(&format!("/items/{id}"))?).await;
        if server.is_some() && ok {
            ok_since_back += 1;
            if ok_since_back == 2 {
                break;
            }
        }
        sleep(PACE).await;
    }

    // The breaker of the server's origin (http://127.0.0.1:port).
    let s = client.breakers().breaker_for(&url("/").parse()?).snapshot();
    println!(
        "breaker `{}` of {addr}: {}, calls {} (ok {}, failed {}), rejected {}, trips {}",
        s.name, s.state, s.calls, s.successes, s.failures, s.rejected, s.trips
    );
    if let Some(server) = server {
        server.stop().await?;
    }
    Ok(())
}

/// Sends one request through the client and prints what came back. True for a `2xx`
/// response.
async fn send(client: &Client, start: Instant, request: Request<Full<Bytes>>) -> bool {
    let mut what = format!("{} {}", request.method(), request.uri().path());
    if request.method() == Method::POST {
        let key = request.headers().contains_key(&IDEMPOTENCY_KEY);
        what += if key {
            " (Idempotency-Key)"
        } else {
            " (no key)"
        };
    }
    let began = Instant::now();
    let result = client.send(request).await;
    let took = began.elapsed();
    let (outcome, attempts, ok) = match result {
        Ok(res) => {
            let attempts = res.extensions().get::<Attempts>().map_or(1, |a| a.0);
            let status = res.status();
            let mut outcome = status.as_u16().to_string();
            if let Some(after) = res.headers().get(RETRY_AFTER) {
                outcome += &format!(" Retry-After: {}", after.to_str().unwrap_or("?"));
            }
            // A short body; bounded in time so nothing can hang here.
            if let Ok(Ok(body)) = timeout(ms(500), res.into_body().collect()).await {
                outcome += &format!(" {:?}", String::from_utf8_lossy(&body.to_bytes()));
            }
            (outcome, attempts.to_string(), status.is_success())
        }
        // The error says which dependency and what went wrong; the attempts are not known.
        Err(err) => (format!("{:?}: {err}", err.kind()), "-".to_owned(), false),
    };
    println!(
        "{}  {what:<30} {outcome:<50} {attempts:>8}  {:>5}ms",
        stamp(start),
        took.as_millis()
    );
    ok
}

/// The flaky server: answers by the count of requests it has received since it started.
struct FlakyServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl FlakyServer {
    async fn start(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/items/{id}", get(item))
            .route("/orders", post(order))
            .route("/slow", get(slow))
            .with_state(Arc::new(AtomicU32::new(0)));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(server.into_future());
        Ok(Self { addr, stop, task })
    }

    /// Stops accepting, closes idle connections, lets requests in flight finish, and
    /// waits until the port is free.
    async fn stop(self) -> io::Result<()> {
        let _ = self.stop.send(());
        match timeout(Duration::from_secs(2), self.task).await {
            Ok(joined) => joined.map_err(io::Error::other)?,
            Err(_) => Err(io::Error::other("server did not stop in 2s")),
        }
    }
}

/// The server's fault: every 3rd request a `503` with `Retry-After: 1`, every 4th other
/// one a bare `503`.
fn fault(hits: &AtomicU32) -> Option<Response> {
    let n = hits.fetch_add(1, Relaxed) + 1;
    if n % 3 == 0 {
        let busy = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(RETRY_AFTER, "1")],
            "busy",
        );
        Some(busy.into_response())
    } else if n % 4 == 0 {
        Some((StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response())
    } else {
        None
    }
}

async fn item(State(hits): State<Arc<AtomicU32>>, Path(id): Path<u32>) -> Response {
    fault(&hits).unwrap_or_else(|| format!("item {id}").into_response())
}

async fn order(State(hits): State<Arc<AtomicU32>>, body: Bytes) -> Response {
    fault(&hits).unwrap_or_else(|| {
        let placed = format!("placed {}", String::from_utf8_lossy(&body));
        (StatusCode::CREATED, placed).into_response()
    })
}

async fn slow() -> &'static str {
    sleep(SLOW).await;
    "finally"
}
