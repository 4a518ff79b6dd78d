//! [`GrpcBreakerLayer`]: a breaker that learns a gRPC call's outcome from its
//! `grpc-status`, in the response head or at the end of the body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::codes::{status_of, Codes};
use crate::breaker::future::rejection;
use crate::breaker::machine::Recorder;
use crate::breaker::service::{admit, Admitted};
use crate::breaker::Breaker;
use crate::{BoxError, Outcome};

/// Applies a breaker to gRPC calls: see [`GrpcBreaker`]. From
/// [`GrpcBreakerLayer::new`].
#[derive(Debug, Clone)]
pub struct GrpcBreakerLayer {
    breaker: Breaker,
    failures: Codes,
}

impl GrpcBreakerLayer {
    /// A layer over `breaker` (a clone of it is kept), counting
    /// [`Codes::FAILURES`] as failures.
    pub fn new(breaker: &Breaker) -> Self {
        Self {
            breaker: breaker.clone(),
            failures: Codes::FAILURES,
        }
    }

    /// The codes that count as failures (default [`Codes::FAILURES`]).
    pub fn failures(mut self, codes: Codes) -> Self {
        self.failures = codes;
        self
    }
}

impl<S> Layer<S> for GrpcBreakerLayer {
    type Service = GrpcBreaker<S>;

    fn layer(&self, inner: S) -> GrpcBreaker<S> {
        GrpcBreaker {
            inner,
            breaker: self.breaker.clone(),
            failures: self.failures,
        }
    }
}

/// A breaker for gRPC calls (any `http` service: a tonic `Channel`, or a stack over
/// one).
///
/// A call's outcome is its `grpc-status`: read at once from a trailers-only response
/// (a status in the head: every error of a unary call, and a breaker rejection
/// upstream), else from the trailers when the response body ends, so that a streaming
/// call that fails after its first messages counts as failed. A code in the failure
/// set is a failure, any other code a success; a body that ends without a status, a
/// body error, a non-`200` HTTP status and a transport error are failures. A body
/// dropped before its end counts nothing (and a half-open trial gives its permit
/// back): the caller stopped reading, the server did not answer.
///
/// Admission happens in `call`, as for [keyed breakers](crate::keyed): `poll_ready`
/// polls the inner service, and a rejected call gets a ready
/// [`Open`](crate::breaker::error::Open) error (a tonic client reports it as a
/// `Status` of code `UNKNOWN` whose source is the `Open`; see
/// [`status`](super::status) for the server side).
#[derive(Clone)]
pub struct GrpcBreaker<S> {
    inner: S,
    breaker: Breaker,
    failures: Codes,
}

impl<S> GrpcBreaker<S> {
    /// The breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for GrpcBreaker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker.name())
            .field("failures", &self.failures)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcBreaker<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<GrpcBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let kind = match admit(&self.breaker) {
            Admitted::Call(recorder) => Kind::Called {
                future: self.inner.call(request),
                recorder,
                failures: self.failures,
            },
            Admitted::Rejected {
                recorder,
                retry_after,
                shed,
            } => Kind::Rejected {
                recorder,
                retry_after,
                shed,
            },
        };
        ResponseFuture { kind }
    }
}

pin_project! {
    /// The response future of [`GrpcBreaker`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called {
            #[pin]
            future: F,
            recorder: Recorder,
            failures: Codes,
        },
        Rejected {
            recorder: Recorder,
            retry_after: Option<Duration>,
            shed: bool,
        },
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<GrpcBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                recorder,
                failures,
            } => {
                let Poll::Ready(result) = future.poll(cx) else {
                    recorder.waited();
                    return Poll::Pending;
                };
                let response = match result {
                    Ok(response) => response,
                    Err(e) => {
                        recorder.finish(Outcome::Failure);
                        return Poll::Ready(Err(e.into()));
                    }
                };
                let head = if response.status() != StatusCode::OK {
                    Some(Outcome::Failure)
                } else {
                    status_of(response.headers()).map(|code| outcome(*failures, code))
                };
                let recorder = match head {
                    Some(outcome) => {
                        recorder.finish(outcome);
                        None
                    }
                    // Moved into the body: `finish` there, or a drop that counts nothing.
                    None => Some(std::mem::replace(recorder, Recorder::idle())),
                };
                let failures = *failures;
                Poll::Ready(Ok(response.map(|inner| GrpcBody {
                    inner,
                    recorder,
                    failures,
                })))
            }
            KindProj::Rejected {
                recorder,
                retry_after,
                shed,
            } => Poll::Ready(Err(rejection(recorder, *retry_after, *shed))),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Called { .. } => f.write_str("ResponseFuture::Called"),
            Kind::Rejected { retry_after, .. } => f
                .debug_struct("ResponseFuture::Rejected")
                .field("retry_after", retry_after)
                .finish(),
        }
    }
}

fn outcome(failures: Codes, code: tonic::Code) -> Outcome {
    if failures.contains(code) {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

pin_project! {
    /// A gRPC response body that tells the breaker the call's outcome when it ends:
    /// the `grpc-status` of its trailers. The frames pass through unchanged.
    pub struct GrpcBody<B> {
        #[pin]
        inner: B,
        // `Some` until the outcome is known: at the trailers, an error or the end.
        recorder: Option<Recorder>,
        failures: Codes,
    }
}

impl<B> GrpcBody<B> {
    /// Whether the outcome is still to come (the body has not ended).
    pub fn is_pending(&self) -> bool {
        self.recorder.is_some()
    }
}

impl<B: Body> Body for GrpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let Poll::Ready(frame) = this.inner.poll_frame(cx) else {
            if let Some(recorder) = this.recorder.as_mut() {
                recorder.waited();
            }
            return Poll::Pending;
        };
        if let Some(mut recorder) = this.recorder.take() {
            let outcome = match &frame {
                Some(Ok(frame)) => frame.trailers_ref().map(|trailers| {
                    status_of(trailers)
                        .map_or(Outcome::Failure, |code| outcome(*this.failures, code))
                }),
                Some(Err(_)) => Some(Outcome::Failure),
                // The end, with no status: a broken call.
                None => Some(Outcome::Failure),
            };
            match outcome {
                Some(outcome) => recorder.finish(outcome),
                None => *this.recorder = Some(recorder),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for GrpcBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcBody")
            .field("pending", &self.recorder.is_some())
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}
