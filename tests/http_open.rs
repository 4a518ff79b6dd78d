//! Breaker rejections as `503 Service Unavailable` from real axum servers on loopback
//! sockets, checked with a real HTTP client.
//!
//! Every breaker here opens for a constant 10 s and no test waits for it to pass: the
//! `Retry-After` a client sees a few milliseconds after the trip is 10 s rounded up,
//! `"10"`. Each request is bounded by a 2 s timeout so a hang fails instead of stalling.
#![cfg(feature = "http")]

use std::convert::Infallible;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::http::{header::RETRY_AFTER, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use steadfast::backoff::Backoff;
use steadfast::breaker::{Breaker, State};
use steadfast::http::open::{error_to_response, OpenAsResponseLayer};
use steadfast::{BoxError, Outcome};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::{service_fn, ServiceBuilder, ServiceExt};

const OPEN_FOR: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

fn breaker(name: &str, failures: u32) -> Breaker {
    Breaker::builder(name)
        .consecutive_failures(failures)
        .open_backoff(Backoff::constant(OPEN_FOR))
        .build()
        .unwrap()
}

/// An axum server on 127.0.0.1, port chosen by the OS, stopped by sending on `stop`.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn serve(app: Router) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stopped.await;
    });
    let task = tokio::spawn(server.into_future());
    Server { addr, stop, task }
}

impl Server {
    /// Stops accepting, closes idle connections, and waits until the port is free.
    async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(REQUEST_TIMEOUT, self.task)
            .await
            .expect("server stops in time")
            .unwrap()
            .unwrap();
    }
}

/// What the test client saw.
#[derive(Debug)]
struct Seen {
    status: StatusCode,
    retry_after: Option<String>,
    body: String,
}

/// A `GET` over a fresh hyper-util client (no pooled connection is shared between
/// requests, so each one goes through accept and the whole server stack).
async fn get_from(addr: SocketAddr, path: &str) -> Seen {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{addr}{path}").parse().unwrap();
    let res = tokio::time::timeout(REQUEST_TIMEOUT, client.get(uri))
        .await
        .expect("the server answers in time")
        .expect("the server answers");
    let status = res.status();
    let retry_after = res
        .headers()
        .get(RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        res.headers().get_all(RETRY_AFTER).iter().count() <= 1,
        "one Retry-After at most"
    );
    let body = tokio::time::timeout(REQUEST_TIMEOUT, res.into_body().collect())
        .await
        .expect("the body arrives in time")
        .unwrap()
        .to_bytes();
    Seen {
        status,
        retry_after,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// A route served by `OpenAsResponseLayer` over a breaker over a downstream service
/// that fails (with an `Err`) while `failing` is set; other errors become a 500 in
/// `HandleErrorLayer`.
#[tokio::test]
async fn open_as_response_layer_on_a_route() {
    let breaker = breaker("downstream", 1);
    let failing = Arc::new(AtomicBool::new(false));
    let reached = Arc::new(AtomicUsize::new(0));
    let downstream = {
        let (failing, reached) = (failing.clone(), reached.clone());
        service_fn(move |_: Request<Body>| {
            reached.fetch_add(1, Ordering::SeqCst);
            let fail = failing.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err(std::io::Error::other("downstream refused"))
                } else {
                    Ok(Response::new(Body::from("from downstream")))
                }
            }
        })
    };
    let route = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|err: BoxError| async move {
            (StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
        }))
        .layer(OpenAsResponseLayer::new())
        .layer(breaker.layer())
        .service(downstream);
    let server = serve(Router::new().route_service("/data", route)).await;

    let seen = get_from(server.addr, "/data").await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(seen.body, "from downstream");
    assert_eq!(seen.retry_after, None);

    // One failure trips the breaker; the failure itself is not a rejection.
    failing.store(true, Ordering::SeqCst);
    let seen = get_from(server.addr, "/data").await;
    assert_eq!(seen.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(seen.body, "downstream refused");
    assert_eq!(seen.retry_after, None);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(reached.load(Ordering::SeqCst), 2);

    // Rejected without reaching the downstream: 503, back in 10 s.
    for _ in 0..3 {
        let seen = get_from(server.addr, "/data").await;
        assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(seen.retry_after.as_deref(), Some("10"));
        assert_eq!(seen.body, "");
    }
    assert_eq!(reached.load(Ordering::SeqCst), 2);
    assert_eq!(breaker.snapshot().rejected, 3);

    // Forced open: the delay is unknown, so there is no Retry-After.
    breaker.force_open();
    let seen = get_from(server.addr, "/data").await;
    assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.retry_after, None);

    // Back to normal.
    breaker.reset();
    failing.store(false, Ordering::SeqCst);
    let seen = get_from(server.addr, "/data").await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(reached.load(Ordering::SeqCst), 3);

    server.shutdown().await;
}

/// The handler answers 500 while `failing` is set; the breaker, in a `route_layer`,
/// counts 5xx responses as failures; its rejections are answered by a
/// `HandleErrorLayer` closure built on `error_to_response`.
#[tokio::test]
async fn handle_error_layer_with_error_to_response() {
    let breaker = breaker("handler", 2);
    let failing = Arc::new(AtomicBool::new(true));
    let reached = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (failing, reached) = (failing.clone(), reached.clone());
        move || async move {
            reached.fetch_add(1, Ordering::SeqCst);
            if failing.load(Ordering::SeqCst) {
                (StatusCode::INTERNAL_SERVER_ERROR, "handler broke")
            } else {
                (StatusCode::OK, "handler ok")
            }
        }
    };
    let server_errors_fail = |res: &Result<Response<Body>, Infallible>| match res {
        Ok(res) if res.status().is_server_error() => Outcome::Failure,
        _ => Outcome::Success,
    };
    let app = Router::new().route("/work", get(handler)).route_layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|err: BoxError| async move {
                match error_to_response::<Body>(&err) {
                    Some(unavailable) => unavailable,
                    None => (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
                }
            }))
            .layer(breaker.layer().classify(server_errors_fail)),
    );
    let server = serve(app).await;

    for _ in 0..2 {
        let seen = get_from(server.addr, "/work").await;
        assert_eq!(seen.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(seen.body, "handler broke");
    }
    assert_eq!(breaker.state(), State::Open);

    // The handler is not run while the breaker is open, even once it is fixed.
    failing.store(false, Ordering::SeqCst);
    for _ in 0..2 {
        let seen = get_from(server.addr, "/work").await;
        assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(seen.retry_after.as_deref(), Some("10"));
    }
    assert_eq!(reached.load(Ordering::SeqCst), 2);

    breaker.force_open();
    let seen = get_from(server.addr, "/work").await;
    assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.retry_after, None);

    breaker.reset();
    let seen = get_from(server.addr, "/work").await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(seen.body, "handler ok");
    assert_eq!(reached.load(Ordering::SeqCst), 3);

    server.shutdown().await;
}

/// A front axum server whose handler calls a second, real axum server through a
/// hyper-util client guarded by a breaker. The downstream is stopped: connections are
/// refused, the breaker opens on those errors, and the front answers 503 with
/// `Retry-After` without trying to connect.
#[tokio::test]
async fn handler_calls_a_guarded_client_to_a_downstream_that_dies() {
    let downstream =
        serve(Router::new().route("/", get(|| async { "hello from downstream" }))).await;
    let downstream_addr = downstream.addr;

    let breaker = breaker("backend", 2);
    let client = ServiceBuilder::new()
        .layer(OpenAsResponseLayer::new())
        .layer(breaker.layer())
        .map_response(|res: Response<hyper::body::Incoming>| res.map(Body::new))
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let handler = move || {
        let client = client.clone();
        async move {
            let uri = format!("http://{downstream_addr}/");
            let req = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
            match client.oneshot(req).await {
                Ok(res) => res.into_response(),
                Err(err) => (StatusCode::BAD_GATEWAY, format!("backend: {err}")).into_response(),
            }
        }
    };
    let front = serve(Router::new().route("/proxy", get(handler))).await;

    let seen = get_from(front.addr, "/proxy").await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(seen.body, "hello from downstream");

    downstream.shutdown().await;

    // Connection errors (refused, or a pooled connection found closed) trip it.
    for _ in 0..2 {
        let seen = get_from(front.addr, "/proxy").await;
        assert_eq!(seen.status, StatusCode::BAD_GATEWAY, "{seen:?}");
        assert!(seen.body.starts_with("backend: "), "{seen:?}");
    }
    assert_eq!(breaker.state(), State::Open);

    let seen = get_from(front.addr, "/proxy").await;
    assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.retry_after.as_deref(), Some("10"));
    let snapshot = breaker.snapshot();
    assert_eq!(
        (snapshot.successes, snapshot.failures, snapshot.rejected),
        (1, 2, 1)
    );

    front.shutdown().await;
}

#[test]
fn classifiers_list_their_statuses_when_printed() {
    use steadfast::http::RetryClassifier;
    let printed = format!("{:?}", RetryClassifier::new());
    assert!(printed.contains("[408, 429, 502, 503, 504]"), "{printed}");
    let printed = format!(
        "{:?}",
        RetryClassifier::new().retry(http::StatusCode::from_u16(599).unwrap())
    );
    assert!(
        printed.contains("[408, 429, 502, 503, 504, 599]"),
        "{printed}"
    );
}

/// A service that is never ready.
struct Unready;

impl tower::Service<()> for Unready {
    type Response = http::Response<()>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<http::Response<()>, std::io::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Pending
    }

    fn call(&mut self, _: ()) -> Self::Future {
        std::future::ready(Ok(http::Response::new(())))
    }
}

#[test]
fn open_as_response_is_as_ready_as_its_inner_service() {
    use steadfast::http::open::OpenAsResponseLayer;
    use tower::{Layer, Service};
    let mut svc = OpenAsResponseLayer::new().layer(Unready);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_pending());
}
