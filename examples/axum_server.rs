//! An axum service that depends on a downstream that fails, calling it through
//! [`steadfast::http::Client`], with `/health` and `/ready` from steadfast.
//!
//! ```text
//! cargo run --example axum_server --features "axum metrics"
//! ```
//!
//! Two local axum servers on 127.0.0.1 (ports chosen by the OS):
//!
//! - **inventory**, the downstream: `GET /stock/{sku}` and `GET /health`. The demo
//!   stops it twice (connections refused) and starts it again on the same port.
//! - **shop**, the app: `GET /stock/{sku}` calls inventory through a [`Client`] and
//!   returns `Result<String, steadfast::http::Error>`: the error is the response
//!   (`502` unreachable, `504` timed out, `503` with `Retry-After` while the breaker is
//!   open); `GET /health` (JSON) and `GET /ready` come from
//!   [`health_routes`]; `GET /metrics` is a Prometheus scrape
//!   (metrics-exporter-prometheus), the breaker's figures read as it is served.
//!
//! The client has one breaker, `inventory`, that boots open (nothing expects the
//! downstream to be up at start) and trips after 3 failures in a row; a request is
//! tried up to 3 times (the client's default retry), 300 ms each. A watchdog owns the
//! breaker's recovery: it probes inventory's `/health` (never a user request) every
//! 200 ms, closes the breaker after 2 passes in a row, and escalates the dependency
//! (not ready) when the breaker trips more than once within 3 s, until it has stayed
//! closed for 3 s. (The `503`'s `Retry-After` is the time to the watchdog's next probe
//! in whole seconds rounded up, so `1` with these sub-second probes.)
//!
//! The demo drives itself: a plain hyper client plays the user and prints what it sees
//! (status, `Retry-After`, body) while the script stops and restarts inventory. Breaker
//! transitions and the watchdog's escalation are printed as they happen, from their
//! `tracing` events. It runs for real (real sockets, real time, about 5 s): timings
//! vary by a few milliseconds from run to run.

use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::header::RETRY_AFTER;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client as Hyper};
use hyper_util::rt::TokioExecutor;
use steadfast::breaker::{Breaker, State as BreakerState};
use steadfast::health::Health;
use steadfast::http::axum::health_routes;
use steadfast::http::{Client, Error};
use steadfast::BoxError;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

#[path = "support/events.rs"]
mod events;
use events::stamp;

/// Time between watchdog probes while they pass.
const PROBE: Duration = Duration::from_millis(200);
/// Restart intensity: more than one trip within this escalates.
const WITHIN: Duration = Duration::from_secs(3);
/// The longest the script waits for anything before going on.
const PATIENCE: Duration = Duration::from_secs(5);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let start = Instant::now();
    events::print_from(start)?;
    let inventory = Server::start("127.0.0.1:0".parse()?, inventory_app()).await?;
    let inventory_addr = inventory.addr;
    let inventory_uri = format!("http://{inventory_addr}");

    // The shop's client of inventory: one breaker, a watchdog probing /health, in `health`.
    let health = Health::new();
    let breaker = Breaker::builder("inventory").consecutive_failures(3);
    let client = Client::builder("inventory")
        .one_breaker()
        .breaker(breaker.start_open())
        .timeout(ms(300))
        .probe(format!("{inventory_uri}/health"))
        .watchdog(|w| w.interval(PROBE).healthy_threshold(2).max_trips(1, WITHIN))
        .health(&health)
        .build()?;
    let breaker = client.breakers().breaker_for(&inventory_uri.parse()?);

    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let shop_app = Router::new()
        .route("/stock/{sku}", get(stock))
        .with_state(Shop {
            client,
            inventory: inventory_uri,
        })
        .merge(health_routes(health.clone()))
        .route(
            "/metrics",
            get(move || async move {
                health.record_metrics();
                metrics.render()
            }),
        );
    let shop = Server::start("127.0.0.1:0".parse()?, shop_app).await?;
    println!("inventory on {inventory_addr}, shop on {}", shop.addr);
    println!("breaker `inventory` boots open; the watchdog probes inventory's /health");

    let user = User {
        client: Hyper::builder(TokioExecutor::new()).build_http(),
        shop: shop.addr,
        start,
    };
    let closed = || breaker.state() == BreakerState::Closed;
    wait_for("the watchdog to close the breaker", start, closed).await;
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
    wait_for("the watchdog to close the breaker", start, closed).await;
    user.get("/stock/4").await;

    inventory.stop().await?;
    println!("{}  -- inventory stopped again", stamp(start));
    user.get("/stock/5").await;
    user.get("/ready").await;
    user.get("/health").await;

    let inventory = Server::start(inventory_addr, inventory_app()).await?;
    println!("{}  -- inventory back on the same port", stamp(start));
    wait_for("the watchdog to close the breaker", start, closed).await;
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
    shop.stop().await?;
    inventory.stop().await?;
    println!("{}  both servers shut down", stamp(start));
    Ok(())
}

/// The shop's state: its client of inventory and where inventory is.
#[derive(Clone)]
struct Shop {
    client: Client,
    inventory: String,
}

/// `GET /stock/{sku}`: asks inventory. An error is the response (see [`Error`]).
async fn stock(State(shop): State<Shop>, Path(sku): Path<u32>) -> Result<String, Error> {
    let uri = format!("{}/stock/{sku}", shop.inventory);
    let body = shop.client.get_bytes(uri).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
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

/// Plays the user of the shop: a plain hyper client, printing what it sees.
struct User {
    client: Hyper<HttpConnector, Empty<Bytes>>,
    shop: SocketAddr,
    start: Instant,
}

impl User {
    async fn get(&self, path: &str) {
        let seen = self.fetch(path).await;
        println!("{}  user: GET {path:<9} -> {seen}", stamp(self.start));
    }

    /// GETs a Prometheus scrape and prints the breaker's trips, its state and the
    /// watchdog's probes from it.
    async fn scrape(&self, path: &str) {
        let text = self.fetch(path).await;
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

    async fn fetch(&self, path: &str) -> String {
        let uri = match format!("http://{}{path}", self.shop).parse() {
            Ok(uri) => uri,
            Err(e) => return format!("bad uri: {e}"),
        };
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
            Ok(Ok(body)) => seen += &format!(", {}", String::from_utf8_lossy(&body.to_bytes())),
            _ => seen += ", body lost",
        }
        seen
    }
}

/// Waits until `done` holds, checking every 10 ms, for at most [`PATIENCE`].
async fn wait_for(what: &str, start: Instant, done: impl Fn() -> bool) {
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
