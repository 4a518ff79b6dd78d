#![cfg(feature = "grpc")]
//! steadfast's gRPC support against a real tonic server over real sockets: a small
//! `demo.Prices` service written by hand with prost derives (no protoc), and the
//! standard health service from tonic-health.
//!
//! Real time, as the other socket tests (see `incident_defaults`): no assertion
//! depends on how fast anything is, except the pushback wait, which is a lower bound.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use steadfast::breaker::{Breaker, State};
use steadfast::grpc::{health_probe, retry_policy, GrpcBreakerLayer, OpenAsStatusLayer};
use steadfast::http::Attempts;
use steadfast::retry::RetryLayer;
use steadfast::watchdog::Watchdog;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::server::NamedService;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use tower::{Service, ServiceBuilder};

/// The longest any wait below may take.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------
// demo.Prices, by hand
// ---------------------------------------------------------------------------------

/// What the client asks, and how the server should answer.
#[derive(Clone, PartialEq, prost::Message)]
struct Ask {
    #[prost(uint32, tag = "1")]
    id: u32,
    /// Unary: answer with this code (0 = OK). Streaming: end with it after the
    /// messages.
    #[prost(int32, tag = "2")]
    code: i32,
    /// `grpc-retry-pushback-ms` to send with an error, if not empty.
    #[prost(string, tag = "3")]
    pushback: String,
    /// Streaming: how many messages before the end.
    #[prost(uint32, tag = "4")]
    messages: u32,
    /// Fail only the first `fail_first` calls (0: every call).
    #[prost(uint32, tag = "5")]
    fail_first: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Price {
    #[prost(uint32, tag = "1")]
    id: u32,
    #[prost(uint32, tag = "2")]
    cents: u32,
}

const GET: &str = "/demo.Prices/Get";
const WATCH: &str = "/demo.Prices/Watch";
const SUM: &str = "/demo.Prices/Sum";

/// The server: `Get` (unary), `Watch` (server streaming), `Sum` (client streaming).
/// `calls` counts every call received.
#[derive(Clone, Default)]
struct Prices {
    calls: Arc<AtomicUsize>,
}

impl NamedService for Prices {
    const NAME: &'static str = "demo.Prices";
}

fn error(ask: &Ask) -> Status {
    let mut status = Status::new(Code::from_i32(ask.code), "as asked");
    if !ask.pushback.is_empty() {
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", ask.pushback.parse().unwrap());
    }
    status
}

struct Get(Arc<AtomicUsize>);

impl tonic::server::UnaryService<Ask> for Get {
    type Response = Price;
    type Future = BoxFuture<tonic::Response<Price>, Status>;

    fn call(&mut self, request: tonic::Request<Ask>) -> Self::Future {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let ask = request.into_inner();
            let fails = ask.fail_first == 0 || (n as u32) < ask.fail_first;
            if ask.code != 0 && fails {
                return Err(error(&ask));
            }
            Ok(tonic::Response::new(Price {
                id: ask.id,
                cents: ask.id * 3,
            }))
        })
    }
}

type PriceStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Price, Status>> + Send>>;

struct Watch;

impl tonic::server::ServerStreamingService<Ask> for Watch {
    type Response = Price;
    type ResponseStream = PriceStream;
    type Future = BoxFuture<tonic::Response<PriceStream>, Status>;

    fn call(&mut self, request: tonic::Request<Ask>) -> Self::Future {
        Box::pin(async move {
            let ask = request.into_inner();
            let prices = (0..ask.messages).map(move |i| {
                Ok(Price {
                    id: ask.id,
                    cents: i,
                })
            });
            let end = (ask.code != 0).then(|| Err(error(&ask)));
            // A pause between messages, so a test can look while the call streams.
            let stream = tokio_stream::iter(prices.chain(end)).throttle(Duration::from_millis(50));
            Ok(tonic::Response::new(Box::pin(stream) as PriceStream))
        })
    }
}

struct Sum;

impl tonic::server::ClientStreamingService<Ask> for Sum {
    type Response = Price;
    type Future = BoxFuture<tonic::Response<Price>, Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<Ask>>) -> Self::Future {
        Box::pin(async move {
            let mut asks = request.into_inner();
            let mut total = 0;
            let mut last = Ask::default();
            while let Some(ask) = asks.message().await? {
                total += ask.id;
                last = ask;
            }
            if last.code != 0 {
                return Err(error(&last));
            }
            Ok(tonic::Response::new(Price {
                id: 0,
                cents: total,
            }))
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
        let calls = self.calls.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Price, Ask>::default());
            let response = match request.uri().path() {
                GET => grpc.unary(Get(calls), request).await,
                WATCH => {
                    calls.fetch_add(1, Ordering::SeqCst);
                    grpc.server_streaming(Watch, request).await
                }
                SUM => {
                    calls.fetch_add(1, Ordering::SeqCst);
                    grpc.client_streaming(Sum, request).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(response)
        })
    }
}

/// A tonic server on 127.0.0.1 with `demo.Prices` and the health service (reporting
/// `demo.Prices` serving); stopped on [`TonicServer::stop`].
struct TonicServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TonicServer {
    async fn start(addr: SocketAddr, prices: Prices) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("its address");
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<Prices>().await;
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(
            Server::builder()
                .add_service(health)
                .add_service(prices)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.await;
                }),
        );
        Self { addr, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the server stops")
            .expect("the server task")
            .expect("the server");
    }
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("its address")
}

/// A lazily connected channel to `addr`.
fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect_lazy()
}

/// Calls `Get` through `stack`.
async fn get<T>(stack: T, ask: Ask) -> Result<tonic::Response<Price>, Status>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<steadfast::BoxError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<steadfast::BoxError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(stack);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.into().to_string()))?;
    grpc.unary(
        tonic::Request::new(ask),
        PathAndQuery::from_static(GET),
        ProstCodec::default(),
    )
    .await
}

fn unavailable() -> Ask {
    Ask {
        id: 1,
        code: Code::Unavailable as i32,
        ..Ask::default()
    }
}

// ---------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn the_breaker_trips_on_unavailable_and_not_on_not_found() {
    let server = TonicServer::start(free_addr(), Prices::default()).await;
    let breaker = Breaker::builder("prices")
        .consecutive_failures(2)
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(GrpcBreakerLayer::new(&breaker))
        .service(channel(server.addr));

    let ok = get(
        stack.clone(),
        Ask {
            id: 7,
            ..Ask::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(ok.into_inner().cents, 21);
    let not_found = Ask {
        code: Code::NotFound as i32,
        ..Ask::default()
    };
    assert_eq!(
        get(stack.clone(), not_found).await.unwrap_err().code(),
        Code::NotFound
    );
    let s = breaker.snapshot();
    assert_eq!(
        (s.successes, s.failures),
        (2, 0),
        "NOT_FOUND is a healthy answer"
    );

    for _ in 0..2 {
        let status = get(stack.clone(), unavailable()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.snapshot().failures, 2);

    // Open: rejected before the channel, as an error tonic reports with its source.
    let rejected = get(stack, Ask::default()).await.unwrap_err();
    let open = std::error::Error::source(&rejected)
        .and_then(|e| e.downcast_ref::<steadfast::breaker::error::Open>());
    assert!(open.is_some(), "{rejected:?}");
    assert_eq!(breaker.snapshot().rejected, 1);
    server.stop().await;
}

/// Reads a `Watch` stream: the messages, then the end status.
async fn watch<T>(stack: T, ask: Ask) -> (Vec<Price>, Result<(), Status>)
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<steadfast::BoxError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<steadfast::BoxError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(stack);
    grpc.ready().await.map_err(Into::into).expect("ready");
    let mut stream = grpc
        .server_streaming(
            tonic::Request::new(ask),
            PathAndQuery::from_static(WATCH),
            ProstCodec::default(),
        )
        .await
        .expect("the stream starts")
        .into_inner();
    let mut prices = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(price)) => prices.push(price),
            Ok(None) => return (prices, Ok(())),
            Err(status) => return (prices, Err(status)),
        }
    }
}

#[tokio::test]
async fn a_status_in_the_trailers_is_counted_when_the_stream_ends() {
    let server = TonicServer::start(free_addr(), Prices::default()).await;
    let breaker = Breaker::builder("prices")
        .consecutive_failures(1)
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(GrpcBreakerLayer::new(&breaker))
        .service(channel(server.addr));

    // Three messages, then OK in the trailers: one success.
    let (prices, end) = watch(
        stack.clone(),
        Ask {
            id: 2,
            messages: 3,
            ..Ask::default()
        },
    )
    .await;
    assert_eq!(prices.len(), 3);
    assert!(end.is_ok());
    assert_eq!(breaker.snapshot().successes, 1);

    // Two messages, then UNAVAILABLE in the trailers (headers were sent first, with
    // status 200): a failure, counted when the stream ends.
    let ask = Ask {
        id: 2,
        messages: 2,
        code: Code::Unavailable as i32,
        ..Ask::default()
    };
    let (prices, end) = watch(stack.clone(), ask.clone()).await;
    assert_eq!(prices.len(), 2);
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    let s = breaker.snapshot();
    assert_eq!((s.successes, s.failures), (1, 1));
    assert_eq!(breaker.state(), State::Open);

    // While a stream is open, its outcome is not counted yet; dropped before its end,
    // it never is.
    breaker.reset();
    let mut grpc = tonic::client::Grpc::new(stack);
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .server_streaming(
            tonic::Request::new(Ask { messages: 5, ..ask }),
            PathAndQuery::from_static(WATCH),
            ProstCodec::<Ask, Price>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    let before = breaker.snapshot();
    assert_eq!(before.calls, 2, "the open stream is not counted yet");
    drop(stream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        breaker.snapshot().calls,
        2,
        "a dropped stream counts nothing"
    );
    assert_eq!(breaker.state(), State::Closed);
    server.stop().await;
}

#[tokio::test]
async fn unavailable_is_retried_with_pushback_and_not_when_told_not_to() {
    let prices = Prices::default();
    let calls = prices.calls.clone();
    let server = TonicServer::start(free_addr(), prices).await;
    let breaker = Breaker::builder("prices")
        .consecutive_failures(10)
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(retry_policy()).unwrap())
        .layer(GrpcBreakerLayer::new(&breaker))
        .service(channel(server.addr));

    // UNAVAILABLE once, then fine: retried, answered.
    let once = Ask {
        fail_first: 1,
        ..unavailable()
    };
    let ok = get(stack.clone(), once).await.unwrap();
    // tonic hands the response's extensions over: the attempts are there.
    assert_eq!(ok.extensions().get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(calls.swap(0, Ordering::SeqCst), 2);

    // With a pushback of 300 ms: the retry waits at least that long.
    let start = Instant::now();
    let pushed = Ask {
        fail_first: 1,
        pushback: "300".into(),
        ..unavailable()
    };
    get(stack.clone(), pushed).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(calls.swap(0, Ordering::SeqCst), 2);

    // A negative pushback: the server says do not retry.
    let stop = Ask {
        pushback: "-1".into(),
        ..unavailable()
    };
    assert_eq!(
        get(stack.clone(), stop).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1);

    // INTERNAL: not retried (the server may have acted), but a breaker failure.
    let failures = breaker.snapshot().failures;
    let internal = Ask {
        code: Code::Internal as i32,
        ..Ask::default()
    };
    assert_eq!(
        get(stack.clone(), internal).await.unwrap_err().code(),
        Code::Internal
    );
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1);
    assert_eq!(breaker.snapshot().failures, failures + 1);

    // Always UNAVAILABLE: three attempts (the default), then the status.
    assert_eq!(
        get(stack, unavailable()).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(calls.swap(0, Ordering::SeqCst), 3);
    server.stop().await;
}

#[tokio::test]
async fn a_request_stream_of_two_messages_is_not_replayed() {
    let prices = Prices::default();
    let calls = prices.calls.clone();
    let server = TonicServer::start(free_addr(), prices).await;
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(retry_policy()).unwrap())
        .service(channel(server.addr));
    let mut grpc = tonic::client::Grpc::new(stack);
    grpc.ready().await.unwrap();
    let asks = tokio_stream::iter([
        Ask {
            id: 1,
            ..Ask::default()
        },
        unavailable(),
    ]);
    let status = grpc
        .client_streaming(
            tonic::Request::new(asks),
            PathAndQuery::from_static(SUM),
            ProstCodec::<Ask, Price>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "sent once");

    // One message: replayed like a unary call.
    calls.store(0, Ordering::SeqCst);
    grpc.ready().await.unwrap();
    let asks = tokio_stream::iter([unavailable()]);
    let status = grpc
        .client_streaming(
            tonic::Request::new(asks),
            PathAndQuery::from_static(SUM),
            ProstCodec::<Ask, Price>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "retried");
    server.stop().await;
}

#[tokio::test]
async fn a_server_side_rejection_is_unavailable_with_pushback() {
    let addr = free_addr();
    let guard = Breaker::builder("prices-server")
        .start_open()
        .build()
        .unwrap();
    let listener = TcpListener::bind(addr).await.unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let service = ServiceBuilder::new()
        .layer(OpenAsStatusLayer::new())
        .layer(guard.layer())
        .service(Prices::default());
    let router = axum_free_router(service);
    let server = tokio::spawn(
        Server::builder()
            .add_routes(router)
            .serve_with_incoming(incoming),
    );

    let status = get(channel(addr), Ask::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "prices-server is unavailable");
    let ms: u64 = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("a pushback")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms > 0 && ms <= 5_000, "{ms}");
    server.abort();
}

/// `service` as the routes of a tonic server, under the name `demo.Prices`.
fn axum_free_router<S>(service: S) -> tonic::service::Routes
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<steadfast::BoxError>,
    S::Future: Send + 'static,
{
    tonic::service::Routes::default().add_service(Named(service))
}

/// Names a service `demo.Prices` for tonic's router.
#[derive(Clone)]
struct Named<S>(S);

impl<S> NamedService for Named<S> {
    const NAME: &'static str = "demo.Prices";
}

impl<S> Service<http::Request<Body>> for Named<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Error: Into<steadfast::BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.0.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
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

#[tokio::test]
async fn the_watchdog_closes_the_breaker_through_health_checks() {
    let server = TonicServer::start(free_addr(), Prices::default()).await;
    let addr = server.addr;
    let breaker = Breaker::builder("prices")
        .consecutive_failures(1)
        .build()
        .unwrap();
    let _watchdog = Watchdog::builder(&breaker, health_probe(channel(addr), "demo.Prices"))
        .interval(Duration::from_millis(50))
        .spawn()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(retry_policy()).unwrap())
        .layer(GrpcBreakerLayer::new(&breaker))
        .timeout(Duration::from_secs(1))
        .service(channel(addr));
    get(
        stack.clone(),
        Ask {
            id: 1,
            ..Ask::default()
        },
    )
    .await
    .unwrap();

    // The server goes away: the call fails (a transport error), the breaker opens.
    server.stop().await;
    let status = get(stack.clone(), Ask::default()).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    assert_eq!(breaker.state(), State::Open);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(breaker.state(), State::Open, "the health checks fail");

    // It comes back on the same port: the health checks pass, the breaker closes.
    let _server = TonicServer::start(addr, Prices::default()).await;
    let start = Instant::now();
    while breaker.state() != State::Closed {
        assert!(start.elapsed() < PATIENCE, "the watchdog never closed it");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let price = get(
        stack,
        Ask {
            id: 4,
            ..Ask::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(price.into_inner().cents, 12);
}
