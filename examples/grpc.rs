//! steadfast's gRPC support against a real tonic server, over real sockets, in real
//! time (about 5 s).
//!
//! ```text
//! cargo run --example grpc --features grpc
//! ```
//!
//! A tonic server on 127.0.0.1 serves a small `demo.Prices` service (written by hand
//! with prost derives: no protoc) and the standard `grpc.health.v1` health service. A
//! client calls `demo.Prices/Get` through
//!
//! ```text
//! ServiceBuilder::new()
//!     .layer(RetryLayer::new(steadfast::grpc::retry_policy())?) // UNAVAILABLE, pushback
//!     .layer(GrpcBreakerLayer::new(&breaker))                  // grpc-status, head or trailers
//!     .timeout(Duration::from_secs(1))
//!     .service(channel)
//! ```
//!
//! with a breaker that trips after 4 failures in a row, and a [`Watchdog`] that owns
//! its recovery, probing with [`health_probe`] (`grpc.health.v1.Health/Check` for
//! `demo.Prices`, over the plain channel, outside the breaker) every 200 ms.
//!
//! The script, and what the output shows:
//!
//! 1. healthy: calls answered at the first attempt ([`Attempts`] from the response's
//!    extensions: tonic hands them over);
//! 2. a blip: the server answers one call `UNAVAILABLE` with
//!    `grpc-retry-pushback-ms: 150`; the retry waits that long and succeeds (2 attempts);
//! 3. an outage: the server answers every call `UNAVAILABLE` and reports itself
//!    `NOT_SERVING`: retries, the breaker trips, then calls fail fast with the breaker's
//!    [`Open`] rejection (found with [`std::error::Error::source`] on the `Status`), and
//!    the watchdog's health checks fail;
//! 4. the server stops entirely: the health checks fail at connect;
//! 5. it restarts on the same port: the first passing health check closes the breaker
//!    (no user call is used as a trial), and calls succeed again;
//! 6. the server side: a second server whose `demo.Prices` sits behind
//!    [`OpenAsStatusLayer`] over a breaker started open; a client sees `UNAVAILABLE` with
//!    `grpc-retry-pushback-ms` rather than a broken call.
//!
//! Lines are stamped with the seconds since the start. `server` lines are the calls the
//! server received (each attempt of a retried call is one), `client` lines what the
//! caller got, `probe` lines the watchdog's health checks; breaker transitions and
//! retries come from steadfast's `tracing` events (targets `steadfast::breaker` and
//! `steadfast::retry`), printed by a small `tracing_subscriber` layer.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use steadfast::breaker::error::Open;
use steadfast::breaker::{Breaker, State};
use steadfast::grpc::{health_probe, retry_policy, GrpcBreakerLayer, OpenAsStatusLayer};
use steadfast::http::Attempts;
use steadfast::retry::RetryLayer;
use steadfast::watchdog::{Probe, Watchdog};
use steadfast::BoxError;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::server::NamedService;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_health::server::HealthReporter;
use tonic_prost::ProstCodec;
use tower::{Service, ServiceBuilder};

#[path = "support/events.rs"]
mod events;
use events::stamp;

// ---------------------------------------------------------------------------------
// demo.Prices, by hand
// ---------------------------------------------------------------------------------

/// `demo.Ask`: which price.
#[derive(Clone, PartialEq, prost::Message)]
struct Ask {
    #[prost(uint32, tag = "1")]
    id: u32,
}

/// `demo.Price`.
#[derive(Clone, PartialEq, prost::Message)]
struct Price {
    #[prost(uint32, tag = "1")]
    id: u32,
    #[prost(uint32, tag = "2")]
    cents: u32,
}

const GET: &str = "/demo.Prices/Get";

/// How the server feels; kept across its restarts.
struct Mood {
    start: Instant,
    /// Answer every call `UNAVAILABLE`.
    down: AtomicBool,
    /// Answer this many calls `UNAVAILABLE` with a pushback, then recover.
    blips: AtomicU32,
    /// Calls received.
    calls: AtomicU32,
}

/// The `demo.Prices` service: one unary method, `Get`.
#[derive(Clone)]
struct Prices(Arc<Mood>);

impl NamedService for Prices {
    const NAME: &'static str = "demo.Prices";
}

/// The pushback the server sends with a blip.
const PUSHBACK_MS: u32 = 150;

struct Get(Arc<Mood>);

impl tonic::server::UnaryService<Ask> for Get {
    type Response = Price;
    type Future = BoxFuture<tonic::Response<Price>, Status>;

    fn call(&mut self, request: tonic::Request<Ask>) -> Self::Future {
        let mood = self.0.clone();
        Box::pin(async move {
            let id = request.into_inner().id;
            let n = mood.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let blip = mood
                .blips
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                .is_ok();
            let stamp = stamp(mood.start);
            if blip {
                println!(
                    "{stamp}  server  Get #{n} -> UNAVAILABLE, grpc-retry-pushback-ms: {PUSHBACK_MS}"
                );
                let mut status = Status::unavailable("warming a cache");
                status
                    .metadata_mut()
                    .insert(steadfast::grpc::PUSHBACK, PUSHBACK_MS.into());
                return Err(status);
            }
            if mood.down.load(Ordering::SeqCst) {
                println!("{stamp}  server  Get #{n} -> UNAVAILABLE");
                return Err(Status::unavailable("the price database is down"));
            }
            println!("{stamp}  server  Get #{n} -> OK");
            Ok(tonic::Response::new(Price { id, cents: id * 3 }))
        })
    }
}

impl Service<http::Request<Body>> for Prices {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mood = self.0.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Price, Ask>::default());
            Ok(match request.uri().path() {
                GET => grpc.unary(Get(mood), request).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A running tonic server: `demo.Prices` and the health service.
struct PriceServer {
    addr: SocketAddr,
    health: HealthReporter,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl PriceServer {
    /// Serves `prices` on `addr` (port 0: one the OS picks), reporting it `SERVING`.
    async fn start(addr: SocketAddr, prices: Prices) -> Result<Self, BoxError> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<Prices>().await;
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(
            Server::builder()
                .add_service(health_service)
                .add_service(prices)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.await;
                }),
        );
        Ok(Self {
            addr,
            health,
            stop,
            task,
        })
    }

    /// Shuts the server down: no more connections, the open ones closed.
    async fn stop(self) -> Result<(), BoxError> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------------

/// Calls `Get` through `stack` (readied first, as a tonic client must be).
async fn get<T>(stack: T, id: u32) -> Result<tonic::Response<Price>, Status>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(stack);
    grpc.ready()
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    grpc.unary(
        tonic::Request::new(Ask { id }),
        PathAndQuery::from_static(GET),
        ProstCodec::default(),
    )
    .await
}

/// Calls `Get` through `stack` and prints what came back.
async fn call<T>(stack: &T, id: u32, start: Instant)
where
    T: tonic::client::GrpcService<Body> + Clone,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    let began = Instant::now();
    let result = get(stack.clone(), id).await;
    let took = began.elapsed().as_millis();
    let stamp = stamp(start);
    match result {
        Ok(response) => {
            // The retry layer's count, which tonic keeps in the response's extensions.
            let attempts = response.extensions().get::<Attempts>().map_or(1, |a| a.0);
            let price = response.into_inner();
            println!(
                "{stamp}  client  Get({id}) = {} cents  ({attempts} attempt{}, {took} ms)",
                price.cents,
                if attempts == 1 { "" } else { "s" },
            );
        }
        Err(status) => match open_of(&status) {
            Some(open) => println!(
                "{stamp}  client  Get({id}) rejected fast: breaker `{}` is open, retry_after {}  ({took} ms)",
                open.breaker(),
                open.retry_after()
                    .map_or("unknown".to_owned(), |d| format!("{d:.0?}")),
            ),
            None => println!(
                "{stamp}  client  Get({id}) failed: {:?} \"{}\"  ({took} ms)",
                status.code(),
                status.message()
            ),
        },
    }
}

/// The breaker rejection behind a client-side `Status` (tonic reports a service's
/// error as `UNKNOWN`, with the error as its source).
fn open_of(status: &Status) -> Option<&Open> {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(open) = e.downcast_ref::<Open>() {
            return Some(open);
        }
        source = e.source();
    }
    None
}

/// Wraps a probe to print each result.
fn printing<P: Probe>(mut probe: P, start: Instant) -> impl Probe {
    move || {
        let check = probe.probe();
        async move {
            let result = check.await.map_err(Into::into);
            match &result {
                Ok(()) => println!("{}  probe   health check: SERVING", stamp(start)),
                Err(e) => println!(
                    "{}  probe   health check failed: {}",
                    stamp(start),
                    short(&**e)
                ),
            }
            result
        }
    }
}

/// A probe's error, short: a `Status` as its code and message.
fn short(e: &(dyn std::error::Error + 'static)) -> String {
    match e.downcast_ref::<Status>() {
        Some(status) => format!("{:?} \"{}\"", status.code(), status.message()),
        None => e.to_string(),
    }
}

fn channel(addr: SocketAddr) -> Result<Channel, BoxError> {
    Ok(Channel::from_shared(format!("http://{addr}"))?.connect_lazy())
}

fn phase(start: Instant, what: &str) {
    println!("{}  ---- {what}", stamp(start));
}

// ---------------------------------------------------------------------------------
// The script
// ---------------------------------------------------------------------------------

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let start = Instant::now();
    events::print_from(start)?;

    let mood = Arc::new(Mood {
        start,
        down: AtomicBool::new(false),
        blips: AtomicU32::new(0),
        calls: AtomicU32::new(0),
    });
    let server = PriceServer::start("127.0.0.1:0".parse()?, Prices(mood.clone())).await?;
    let addr = server.addr;
    println!(
        "{}  server  demo.Prices and grpc.health.v1 on {addr}",
        stamp(start)
    );

    let plain = channel(addr)?;
    let breaker = Breaker::builder("prices").consecutive_failures(4).build()?;
    let watchdog = Watchdog::builder(
        &breaker,
        printing(health_probe(plain.clone(), "demo.Prices"), start),
    )
    .interval(Duration::from_millis(200))
    .timeout(Duration::from_millis(500))
    .spawn()?;
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(retry_policy())?)
        .layer(GrpcBreakerLayer::new(&breaker))
        .timeout(Duration::from_secs(1))
        .service(plain.clone());

    phase(start, "1. healthy");
    for id in [7, 8] {
        call(&stack, id, start).await;
        sleep(Duration::from_millis(100)).await;
    }

    phase(start, "2. a blip: one UNAVAILABLE with pushback");
    mood.blips.store(1, Ordering::SeqCst);
    call(&stack, 9, start).await;
    sleep(Duration::from_millis(100)).await;

    phase(
        start,
        "3. an outage: every call UNAVAILABLE, health NOT_SERVING",
    );
    mood.down.store(true, Ordering::SeqCst);
    server.health.set_not_serving::<Prices>().await;
    for id in 10..14 {
        call(&stack, id, start).await;
        sleep(Duration::from_millis(250)).await;
    }

    phase(start, "4. the server stops entirely");
    server.stop().await?;
    mood.down.store(false, Ordering::SeqCst);
    println!("{}  server  stopped", stamp(start));
    for id in 14..17 {
        sleep(Duration::from_millis(300)).await;
        call(&stack, id, start).await;
    }

    phase(start, "5. the server restarts on the same port");
    let server = PriceServer::start(addr, Prices(mood.clone())).await?;
    println!("{}  server  up again on {addr}", stamp(start));
    let mut states = breaker.subscribe();
    tokio::time::timeout(
        Duration::from_secs(3),
        states.wait_for(|s| *s == State::Closed),
    )
    .await??;
    for id in [20, 21] {
        call(&stack, id, start).await;
        sleep(Duration::from_millis(100)).await;
    }
    let s = breaker.snapshot();
    println!(
        "{}  client  breaker `prices`: {}, {} calls, {} successes, {} failures, {} rejected, {} trip(s)",
        stamp(start),
        s.state,
        s.calls,
        s.successes,
        s.failures,
        s.rejected,
        s.trips
    );
    watchdog.shutdown().await;
    server.stop().await?;

    phase(
        start,
        "6. the server side: OpenAsStatusLayer over a breaker started open",
    );
    server_side(mood, start).await?;
    Ok(())
}

/// A server whose `demo.Prices` sits behind a breaker (started open, as if its own
/// database were down) and [`OpenAsStatusLayer`], called with a plain client.
async fn server_side(mood: Arc<Mood>, start: Instant) -> Result<(), BoxError> {
    let guard = Breaker::builder("prices-db").start_open().build()?;
    let service = ServiceBuilder::new()
        .layer(OpenAsStatusLayer::new())
        .layer(guard.layer())
        .service(Prices(mood));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let routes = tonic::service::Routes::default().add_service(Named(service));
    let server = tokio::spawn(
        Server::builder()
            .add_routes(routes)
            .serve_with_incoming(incoming),
    );
    println!(
        "{}  server  demo.Prices behind breaker `prices-db` (open) on {addr}",
        stamp(start)
    );

    let status = get(channel(addr)?, 30)
        .await
        .expect_err("the breaker is open");
    let pushback = status
        .metadata()
        .get(steadfast::grpc::PUSHBACK)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    println!(
        "{}  client  Get(30) failed: {:?} \"{}\", grpc-retry-pushback-ms: {pushback}",
        stamp(start),
        status.code(),
        status.message(),
    );
    assert_eq!(status.code(), Code::Unavailable);
    server.abort();
    Ok(())
}

/// Names a layered service `demo.Prices` for tonic's router, and turns its errors
/// (none here: `OpenAsStatus` answers rejections) into `INTERNAL`.
#[derive(Clone)]
struct Named<S>(S);

impl<S> NamedService for Named<S> {
    const NAME: &'static str = "demo.Prices";
}

impl<S> Service<http::Request<Body>> for Named<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // An error here would surface in `call`: the inner service's `call` reports it.
        self.0.poll_ready(cx).map(|_| Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let future = self.0.call(request);
        Box::pin(async move {
            Ok(future
                .await
                .unwrap_or_else(|e| Status::internal(e.into().to_string()).into_http()))
        })
    }
}
