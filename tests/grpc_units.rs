//! The gRPC pieces on their own, without a server: the code sets, the retry
//! classifier on transport errors, readiness through `OpenAsStatus`, and a response
//! body that knows whether its outcome is still to come. (The gRPC mutation run found
//! these untested; `tests/grpc.rs` covers them end to end over sockets.)
#![cfg(feature = "grpc")]

use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use steadfast::breaker::Breaker;
use steadfast::grpc::{Codes, GrpcBreakerLayer, GrpcRetryClassifier, OpenAsStatusLayer};
use steadfast::{Classify, Outcome};
use tonic::Code;
use tower::{service_fn, Layer, Service};

#[test]
fn code_sets_add_and_remove_one_code() {
    let set = Codes::empty()
        .with(Code::Unavailable)
        .with(Code::Unavailable);
    assert!(
        set.contains(Code::Unavailable),
        "adding a code twice keeps it"
    );
    let fewer = Codes::FAILURES.without(Code::Internal);
    assert!(!fewer.contains(Code::Internal));
    assert!(fewer.contains(Code::Unavailable) && fewer.contains(Code::Unknown));
    let none = Codes::empty().without(Code::Ok).without(Code::Internal);
    assert!(!none.contains(Code::Ok) && !none.contains(Code::Internal));
    assert!(!none.contains(Code::Unavailable));
}

#[test]
fn the_retry_classifier_retries_connect_errors_only() {
    let classifier = GrpcRetryClassifier::new();
    let refused: Result<Response<()>, std::io::Error> =
        Err(std::io::ErrorKind::ConnectionRefused.into());
    assert_eq!(classifier.classify(&refused), Outcome::Failure);
    let other: Result<Response<()>, std::io::Error> =
        Err(std::io::Error::other("request body too large"));
    assert_eq!(classifier.classify(&other), Outcome::Ignored);
}

/// A service that is never ready.
#[derive(Clone)]
struct Unready;

impl Service<Request<()>> for Unready {
    type Response = Response<()>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Response<()>, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Pending
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(())))
    }
}

#[test]
fn open_as_status_is_as_ready_as_its_inner_service() {
    let mut svc = OpenAsStatusLayer.layer(Unready);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_pending());
}

#[tokio::test]
async fn a_response_body_is_pending_until_it_ends() {
    let breaker = Breaker::new("grpc-body");
    let mut svc = GrpcBreakerLayer::new(&breaker).layer(service_fn(|_: Request<()>| async {
        let mut response = Response::new(Full::new(bytes::Bytes::from_static(b"message")));
        response
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        Ok::<_, std::io::Error>(response)
    }));
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let response = svc.call(Request::new(())).await.unwrap();
    let mut body = response.into_body();
    assert!(body.is_pending(), "no outcome before the body ends");
    while let Some(frame) = body.frame().await {
        frame.unwrap();
    }
    assert!(!body.is_pending(), "the body ended: its outcome is known");
}

#[tokio::test]
async fn a_request_sent_once_keeps_its_body_and_metadata() {
    use steadfast::grpc::GrpcRequests;
    use steadfast::retry::RetryRequest;
    let mut request = Request::new(Full::new(bytes::Bytes::from_static(b"one message")));
    request
        .headers_mut()
        .insert("x-tenant", "7".parse().unwrap());
    let sent = GrpcRequests::new().once(request);
    assert_eq!(sent.headers()["x-tenant"], "7");
    let body = sent.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"one message");
}

/// `n` gRPC messages of `len` bytes each, length-prefixed as on the wire.
fn grpc_frames(n: usize, len: u8) -> bytes::Bytes {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(0);
        out.extend_from_slice(&u32::from(len).to_be_bytes());
        out.extend(std::iter::repeat_n(i as u8, usize::from(len)));
    }
    out.into()
}

#[tokio::test]
async fn the_last_attempt_replays_a_unary_request_but_not_a_stream() {
    use steadfast::grpc::GrpcRequests;
    use steadfast::retry::RetryRequest;
    for (messages, replayed) in [(1, true), (2, false), (3, false)] {
        let frames = grpc_frames(messages, 4);
        let (first, replay) = GrpcRequests::new().prepare(Request::new(Full::new(frames.clone())));
        let sent = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(sent, frames);
        let last = GrpcRequests::new().last(replay.unwrap());
        assert_eq!(last.is_some(), replayed, "{messages} message(s)");
        if let Some(last) = last {
            let again = last.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(again, frames, "the last attempt sends the same bytes");
        }
    }
}
