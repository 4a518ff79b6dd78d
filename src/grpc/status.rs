//! Breaker rejections as gRPC statuses, for servers and handlers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tonic::metadata::MetadataValue;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use super::retry::PUSHBACK;
use crate::breaker::error::Open;
use crate::http::open::find_open;
use crate::BoxError;

/// The gRPC answer to a breaker rejection: `UNAVAILABLE` with a message naming the
/// breaker and, when [`Open::retry_after`] is known, `grpc-retry-pushback-ms` (whole
/// milliseconds, rounded up) so that a gRFC A6 client waits that long before it
/// retries.
///
/// ```
/// use steadfast::breaker::Breaker;
/// use steadfast::grpc::status;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), steadfast::BoxError> {
/// # use tower::{Service, ServiceExt};
/// let breaker = Breaker::builder("db").start_open().build()?;
/// let mut svc = breaker.layer().layer(tower::service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
/// # use tower::Layer;
/// let err = svc.ready().await?.call(()).await.unwrap_err();
/// let open = err.downcast_ref().expect("a rejection");
/// let answer = status(open);
/// assert_eq!(answer.code(), tonic::Code::Unavailable);
/// assert_eq!(answer.message(), "db is unavailable");
/// assert!(answer.metadata().get("grpc-retry-pushback-ms").is_some());
/// # Ok(())
/// # }
/// ```
pub fn status(open: &Open) -> Status {
    let mut status = Status::unavailable(format!("{} is unavailable", open.breaker()));
    if let Some(after) = open.retry_after() {
        let ms = after.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128);
        status
            .metadata_mut()
            .insert(PUSHBACK, MetadataValue::from(ms as u64));
    }
    status
}

impl From<Open> for Status {
    fn from(open: Open) -> Self {
        status(&open)
    }
}

/// Turns breaker rejections of the inner service into gRPC responses (see
/// [`status`]): for a tonic server stack whose layers include a breaker, so that a
/// client sees `UNAVAILABLE` with pushback rather than a broken call. Other errors
/// pass through. From [`OpenAsStatusLayer`].
#[derive(Debug, Clone)]
pub struct OpenAsStatus<S> {
    inner: S,
}

/// Applies [`OpenAsStatus`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAsStatusLayer;

impl OpenAsStatusLayer {
    /// The layer.
    pub const fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for OpenAsStatusLayer {
    type Service = OpenAsStatus<S>;

    fn layer(&self, inner: S) -> OpenAsStatus<S> {
        OpenAsStatus { inner }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for OpenAsStatus<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = StatusFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        StatusFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The response future of [`OpenAsStatus`].
    pub struct StatusFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for StatusFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Default,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match ready!(self.project().inner.poll(cx)) {
            Ok(response) => Poll::Ready(Ok(response)),
            Err(e) => {
                let e = e.into();
                match find_open(e.as_ref()) {
                    Some(open) => Poll::Ready(Ok(status(open).into_http())),
                    None => Poll::Ready(Err(e)),
                }
            }
        }
    }
}

impl<F> fmt::Debug for StatusFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatusFuture")
    }
}
