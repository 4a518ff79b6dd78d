//! An axum service that depends on a downstream that fails, with `/health` and
//! `/ready` routes driven by steadfast.
//!
//! ```text
//! cargo run --example axum_server --features "http serde"
//! ```
//!
//! Two local axum servers on 127.0.0.1 (ports chosen by the OS):
//!
//! - **inventory**, the downstream: `GET /stock/{sku}` and `GET /health`. The demo
//!   stops it twice (connections refused) and starts it again on the same port.
//! - **shop**, the app: `GET /stock/{sku}` calls inventory through a protected
//!   hyper-util client (retry -> breaker -> timeout, as in the `hyper_client`
//!   example); `GET /health` serves [`Health::snapshot`] as JSON; `GET /ready` answers
//!   `200` when [`Health::is_ready`], else `503`; `GET /metrics` is a Prometheus scrape
//!   (metrics-exporter-prometheus), the breaker's figures read as it is served.
//!
//! The breaker `inventory` boots open (nothing expects the downstream to be up at
//! start) and trips after 3 failures in a row. A [`Watchdog`] owns its recovery: it
//! probes inventory's `/health` (never a user request) every 200 ms, backing off 200 ms
//! to 800 ms while probes fail, closes the breaker after 2 passes in a row, and
//! escalates the dependency (not ready) when the breaker trips more than once within
//! 3 s, until it has stayed closed for 3 s.
//!
//! The `/stock` route is a tower stack: axum's `HandleErrorLayer` (connect errors
//! become `502`, timeouts `504`) over [`OpenAsResponseLayer`] (breaker rejections
//! become `503`) over the handler, a `service_fn` that calls the protected client and
//! returns its errors as they are. (Here the `503`'s `Retry-After` is the time to the
//! watchdog's next probe, in whole seconds rounded up, so never `0`: `1` with these
//! sub-second probes; without a watchdog it would be the rest of the open delay. See
//! `Open::retry_after` for the one rule.)
//!
//! The demo drives itself: a plain hyper client plays the user and prints what it sees
//! (status, `Retry-After`, body) while the script stops and restarts inventory. Breaker
//! transitions and the watchdog's escalation are printed as they happen, from their
//! `tracing` events. Then everything shuts down. It runs for real (real sockets, real
//! time, about 5 s): timings vary by a few milliseconds from run to run.

use std::fmt;
use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, State as AxumState};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use steadfast::backoff::{Backoff, Jitter};
use steadfast::breaker::{Breaker, State};
use steadfast::health::Health;
use steadfast::http::open::OpenAsResponseLayer;
use steadfast::http::replay::ReplayBody;
use steadfast::http::{is_connect_error, Attempts, BreakerClassifier};
use steadfast::retry::RetryLayer;
use steadfast::watchdog::{Probe, Watchdog};
use steadfast::BoxError;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Time between watchdog probes while they pass.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// How long each attempt to reach inventory may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);
/// Restart intensity: more than one trip within this escalates.
const WITHIN: Duration = Duration::from_secs(3);
/// The longest the script waits for anything before going on.
const PATIENCE: Duration = Duration::from_secs(5);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Real seconds since `start`, for timestamps.
fn stamp(start: Instant) -> String {
    format!("{:5.2}s", start.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let start = Instant::now();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(EventPrinter { start }),
    )?;

    let inventory = Server::start("127.0.0.1:0".parse()?, inventory_app()).await?;
    let inventory_addr = inventory.addr;

    // The dependency: a breaker booted open, a watchdog to connect it, a readiness view.
    let breaker = Breaker::builder("inventory")
        .consecutive_failures(3)
        .start_open()
        .build()?;
    let watchdog = Watchdog::builder(&breaker, health_probe(inventory_addr))
        .interval(PROBE_INTERVAL)
        .backoff(
            Backoff::exponential(ms(200), ms(800))
                .jitter(Jitter::Equal) // each delay in [d / 2, d]
                .seed(7),
        )
        .timeout(ATTEMPT_TIMEOUT)
        .healthy_threshold(2)
        .max_trips(1, WITHIN)
        .spawn()?;
    let health = Health::new();
    health.register(&breaker);
    // Metrics for Prometheus: the breaker's counts are read at each scrape of /metrics.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;

    // The protected client: retry -> breaker -> timeout -> hyper.
    let policy = steadfast::http::retry_policy()
        .max_attempts(3)
        .backoff(
            Backoff::exponential(ms(50), ms(200))
                .jitter(Jitter::Full)
                .seed(1),
        )
        .max_elapsed(Duration::from_secs(1));
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(policy)?)
        .layer(breaker.layer().classify(BreakerClassifier::new()))
        .timeout(ATTEMPT_TIMEOUT)
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Empty<Bytes>>>());

    let shop = Server::start(
        "127.0.0.1:0".parse()?,
        shop_app(client, inventory_addr, health, metrics),
    )
    .await?;
    println!("inventory on {inventory_addr}, shop on {}", shop.addr);
    println!("breaker `inventory` boots open; the watchdog probes inventory's /health");

    let user = User {
        client: Client::builder(TokioExecutor::new()).build_http(),
        shop: shop.addr,
        start,
    };
    wait_for("the watchdog to close the breaker", start, || {
        breaker.state() == State::Closed
    })
    .await;
    user.get("/stock/1").await;
    user.get("/ready").await;

    inventory.stop().await?;
    println!(
        "{}  -- inventory stopped: connections refused",
        stamp(start)
    );
    user.get("/stock/2").await;
    user.get("/stock/3").await;
    user.get("/health").await;
    user.get("/ready").await;

    sleep(ms(400)).await;
    let inventory = Server::start(inventory_addr, inventory_app()).await?;
    println!("{}  -- inventory back on the same port", stamp(start));
    wait_for("the watchdog to close the breaker", start, || {
        breaker.state() == State::Closed
    })
    .await;
    user.get("/stock/4").await;

    inventory.stop().await?;
    println!("{}  -- inventory stopped again", stamp(start));
    user.get("/stock/5").await;
    user.get("/ready").await;
    user.get("/health").await;

    let inventory = Server::start(inventory_addr, inventory_app()).await?;
    println!("{}  -- inventory back on the same port", stamp(start));
    wait_for("the watchdog to close the breaker", start, || {
        breaker.state() == State::Closed
    })
    .await;
    user.get("/stock/6").await;
    user.get("/ready").await;
    wait_for("the escalation to clear", start, || !breaker.is_escalated()).await;
    user.get("/ready").await;
    user.scrape("/metrics").await;

    let s = breaker.snapshot();
    println!(
        "breaker `{}`: {}, calls {} (ok {}, failed {}), rejected {}, trips {}",
        s.name, s.state, s.calls, s.successes, s.failures, s.rejected, s.trips
    );
    watchdog.shutdown().await;
    shop.stop().await?;
    inventory.stop().await?;
    println!("{}  watchdog and both servers shut down", stamp(start));
    Ok(())
}

/// The shop: `/stock/{sku}` calls inventory through `client`; `/health` and `/ready`
/// come from `health`, `/metrics` from the breakers' figures read at each scrape.
fn shop_app<C>(
    client: C,
    inventory: SocketAddr,
    health: Health,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Router
where
    C: Service<Request<Empty<Bytes>>, Response = http::Response<hyper::body::Incoming>>
        + Clone
        + Send
        + Sync
        + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send,
{
    // The handler: asks inventory, passes its errors on. A breaker rejection is found
    // by `OpenAsResponseLayer` (503 + Retry-After), anything else by `handle_error`.
    let handler = service_fn(move |req: Request<Body>| {
        let mut client = client.clone();
        async move {
            let sku = req.uri().path().trim_start_matches("/stock/");
            let ask = Request::get(format!("http://{inventory}/stock/{sku}")).body(Empty::new())?;
            let res = client.ready().await.map_err(Into::into)?;
            let res = res.call(ask).await.map_err(Into::into)?;
            let attempts = res.extensions().get::<Attempts>().map_or(1, |a| a.0);
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            let text = format!("{} (attempts: {attempts})", String::from_utf8_lossy(&body));
            let status = if status.is_success() {
                StatusCode::OK
            } else {
                StatusCode::BAD_GATEWAY
            };
            Ok::<_, BoxError>((status, text).into_response())
        }
    });
    let stock = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(handle_error))
        .layer(OpenAsResponseLayer::new())
        .service(handler);
    Router::new()
        .route_service("/stock/{sku}", stock)
        .route("/health", get(health_json))
        .route("/ready", get(ready))
        .route(
            "/metrics",
            get(move |AxumState(health): AxumState<Health>| {
                let metrics = metrics.clone();
                async move {
                    health.record_metrics();
                    metrics.render()
                }
            }),
        )
        .with_state(health)
}

/// The errors that are not breaker rejections (those are answered by
/// `OpenAsResponseLayer` before they get here).
async fn handle_error(err: BoxError) -> Response {
    if is_connect_error(&err) {
        (StatusCode::BAD_GATEWAY, "inventory unreachable").into_response()
    } else if err.is::<tower::timeout::error::Elapsed>() {
        (StatusCode::GATEWAY_TIMEOUT, "inventory timed out").into_response()
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response()
    }
}

/// `/health`: every dependency's state and figures, as JSON.
async fn health_json(AxumState(health): AxumState<Health>) -> Response {
    match serde_json::to_string(&health.snapshot()) {
        Ok(json) => ([(CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `/ready`: for a load balancer's readiness check.
async fn ready(AxumState(health): AxumState<Health>) -> (StatusCode, &'static str) {
    if health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// The downstream: stock levels and a health check.
fn inventory_app() -> Router {
    Router::new()
        .route(
            "/stock/{sku}",
            get(|Path(sku): Path<u32>| async move { format!("sku {sku}: {} in stock", sku * 7) }),
        )
        .route("/health", get(|| async { "ok" }))
}

/// The watchdog's probe: `GET /health` on inventory over its own plain client (never
/// through the breaker), passing on a `2xx`.
fn health_probe(inventory: SocketAddr) -> impl Probe {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    move || {
        let client = client.clone();
        async move {
            let uri = format!("http://{inventory}/health").parse()?;
            let status = client.get(uri).await?.status();
            if status.is_success() {
                Ok::<_, BoxError>(())
            } else {
                Err(format!("inventory /health answered {status}").into())
            }
        }
    }
}

/// Plays the user of the shop: a plain hyper client, printing what it sees.
struct User {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    shop: SocketAddr,
    start: Instant,
}

impl User {
    async fn get(&self, path: &str) {
        let seen = match format!("http://{}{path}", self.shop).parse() {
            Ok(uri) => self.fetch(uri).await,
            Err(e) => format!("bad uri: {e}"),
        };
        println!("{}  user: GET {path:<9} -> {seen}", stamp(self.start));
    }

    /// GETs a Prometheus scrape and prints the breaker's trips, its state and the
    /// watchdog's probes from it.
    async fn scrape(&self, path: &str) {
        let uri = format!("http://{}{path}", self.shop)
            .parse()
            .expect("a valid uri");
        let text = self.fetch(uri).await;
        println!(
            "{}  user: GET {path:<9} -> (a few of its lines)",
            stamp(self.start)
        );
        for line in text.split(", ").flat_map(|part| part.lines()) {
            let wanted = line.starts_with("steadfast_breaker_trips_total")
                || line.starts_with("steadfast_watchdog_probes_total")
                || (line.starts_with("steadfast_breaker_state") && line.ends_with(" 1"));
            if wanted {
                println!("           {line}");
            }
        }
    }

    async fn fetch(&self, uri: http::Uri) -> String {
        let res = match timeout(PATIENCE, self.client.get(uri)).await {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => return format!("error: {e}"),
            Err(_) => return "no answer in time".to_owned(),
        };
        let mut seen = res.status().to_string();
        if let Some(after) = res.headers().get(RETRY_AFTER) {
            seen += &format!(", Retry-After: {}", after.to_str().unwrap_or("?"));
        }
        match timeout(PATIENCE, res.into_body().collect()).await {
            Ok(Ok(body)) => match body.to_bytes() {
                body if body.is_empty() => seen += ", empty body",
                body => seen += &format!(", {}", String::from_utf8_lossy(&body)),
            },
            _ => seen += ", body lost",
        }
        seen
    }
}

/// Waits until `done` holds, checking every 10 ms, for at most [`PATIENCE`].
async fn wait_for(what: &str, start: Instant, mut done: impl FnMut() -> bool) {
    let waited = Instant::now();
    while !done() {
        if waited.elapsed() > PATIENCE {
            println!("{}  gave up waiting for {what}", stamp(start));
            return;
        }
        sleep(ms(10)).await;
    }
}

/// An axum server, stopped by [`Server::stop`].
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    async fn start(addr: SocketAddr, app: Router) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
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

/// Prints breaker transitions and the watchdog's escalations as they happen, from
/// their `tracing` events (targets `steadfast::breaker` and `steadfast::watchdog`).
struct EventPrinter {
    start: Instant,
}

impl<S: tracing::Subscriber> Layer<S> for EventPrinter {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let mut f = Fields::default();
        match meta.target() {
            "steadfast::breaker" => {
                event.record(&mut f);
                println!(
                    "{}  breaker `{}` {} -> {} ({})",
                    stamp(self.start),
                    f.breaker,
                    f.from,
                    f.to,
                    f.reason
                );
            }
            // Escalation (error) and its clearing (info); not each failed probe (debug).
            "steadfast::watchdog" if *meta.level() <= tracing::Level::INFO => {
                event.record(&mut f);
                println!("{}  watchdog: {}", stamp(self.start), f.message);
            }
            _ => {}
        }
    }
}

/// The fields of an event the printer uses.
#[derive(Default)]
struct Fields {
    breaker: String,
    from: String,
    to: String,
    reason: String,
    message: String,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let slot = match field.name() {
            "breaker" => &mut self.breaker,
            "from" => &mut self.from,
            "to" => &mut self.to,
            "reason" => &mut self.reason,
            _ => return,
        };
        *slot = value.to_owned();
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}
