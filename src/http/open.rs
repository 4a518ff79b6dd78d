//! Breaker rejections as HTTP: an [`Open`] error becomes `503 Service Unavailable`
//! with a `Retry-After` header.
//!
//! # Why a response and not an error?
//!
//! A [`BreakerService`](crate::breaker::BreakerService) rejects a call with an
//! [`Open`] error, which is right for a client: the caller can match on it. A server
//! has to answer the request, though, and axum only accepts services whose error type
//! is [`Infallible`](std::convert::Infallible): every failure must already be a
//! response by the time it reaches the router. tower-http's `TimeoutLayer` does the same
//! for the same reason: a timeout becomes a `408` response rather than an error. And
//! hyper, given an error by a service, closes the connection instead of answering.
//!
//! A rejection has an obvious answer: `503 Service Unavailable`, and since the breaker
//! knows how long it will stay open, a `Retry-After` header telling well-behaved
//! clients (steadfast's own retry among them) when to come back.
//!
//! Two ways to get it:
//!
//! - [`OpenAsResponseLayer`] wraps a service whose error may be a rejection: rejections
//!   become `Ok(503)`, other errors pass through as `Err` for an outer layer (axum's
//!   `HandleErrorLayer`, say) to turn into a `500` or `504`.
//! - [`error_to_response`] and [`open_to_response`] are plain functions, for an axum
//!   `HandleErrorLayer` closure or a handler that calls a guarded client itself.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), steadfast::BoxError> {
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use steadfast::backoff::Backoff;
//! use steadfast::breaker::Breaker;
//! use steadfast::http::open::OpenAsResponseLayer;
//!
//! let breaker = Breaker::builder("render")
//!     .consecutive_failures(1)
//!     .open_backoff(Backoff::constant(Duration::from_secs(30)))
//!     .build()?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(OpenAsResponseLayer::new())
//!     .layer(breaker.layer())
//!     .service(service_fn(|_: Request<()>| async {
//!         Err::<Response<String>, _>("template engine crashed")
//!     }));
//!
//! // The failure itself is passed on as an error, and trips the breaker...
//! let err = svc.ready().await?.call(Request::new(())).await.unwrap_err();
//! assert_eq!(err.to_string(), "template engine crashed");
//! // ...whose rejections are answered.
//! let res = svc.ready().await?.call(Request::new(())).await?;
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(res.headers()["retry-after"], "30");
//! # Ok(())
//! # }
//! ```

use std::error::Error;
use std::task::{Context, Poll};

use http::header::RETRY_AFTER;
use http::{HeaderValue, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::breaker::error::Open;
use crate::BoxError;

/// The `503 Service Unavailable` answer to a breaker rejection, with an empty body.
///
/// `Retry-After` is [`open.retry_after()`](Open::retry_after) in whole seconds,
/// rounded **up** so a client that obeys it never comes back before the breaker lets
/// a call through: 9.2 s is `"10"`, any delay under a second is `"1"`; it is never
/// `"0"`, as `retry_after()` is never zero. The header is left out when `retry_after()`
/// is `None` (see its docs: forced open, half-open with every trial taken, one of
/// several watchdogs just ended).
///
/// ```
/// use http::StatusCode;
/// use steadfast::breaker::error::Open;
/// use steadfast::http::open::open_to_response;
/// # fn handle(open: &Open) {
/// let res: http::Response<String> = open_to_response(open);
/// assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
/// # }
/// ```
pub fn open_to_response<B: Default>(open: &Open) -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    if let Some(after) = open.retry_after() {
        let secs = after
            .as_secs()
            .saturating_add(u64::from(after.subsec_nanos() > 0));
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

/// The [`open_to_response`] answer if `err` is a breaker rejection (itself or down its
/// [`source`](Error::source) chain, see [`find_open`]); `None` for any other error.
///
/// Made for axum's `HandleErrorLayer`, whose closure must turn every error into a
/// response:
///
/// ```
/// use axum::error_handling::HandleErrorLayer;
/// use axum::http::StatusCode;
/// use axum::response::{IntoResponse, Response};
/// use axum::{routing::get, Router};
/// use tower::ServiceBuilder;
/// use steadfast::breaker::Breaker;
/// use steadfast::http::open::error_to_response;
/// use steadfast::BoxError;
///
/// async fn handle_error(err: BoxError) -> Response {
///     match error_to_response(&err) {
///         Some(unavailable) => unavailable,
///         None => (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
///     }
/// }
///
/// let breaker = Breaker::new("search");
/// let app: Router = Router::new()
///     .route("/search", get(|| async { "results" }))
///     .route_layer(
///         ServiceBuilder::new()
///             .layer(HandleErrorLayer::new(handle_error))
///             .layer(breaker.layer()),
///     );
/// # let _ = app;
/// ```
pub fn error_to_response<B: Default>(err: &BoxError) -> Option<Response<B>> {
    find_open(err.as_ref()).map(open_to_response)
}

/// The breaker rejection in `err`: `err` itself, or the first [`Open`] down its
/// [`source`](Error::source) chain.
///
/// The payload of a [`std::io::Error`] is looked at too (an `io::Error::other(open)`
/// does not report its payload as its source), so a rejection wrapped by a client
/// that speaks `io::Error` is still found.
///
/// ```
/// use steadfast::breaker::Breaker;
/// use steadfast::http::open::find_open;
/// # use steadfast::BoxError;
///
/// let io = std::io::Error::other("connection reset");
/// assert!(find_open(&io).is_none());
/// # fn check(err: BoxError) {
/// if let Some(open) = find_open(err.as_ref()) {
///     println!("{} rejected the call", open.breaker());
/// }
/// # }
/// ```
pub fn find_open<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a Open> {
    crate::chain::chain(err).find_map(|e| e.downcast_ref::<Open>())
}

/// Turns breaker rejections from the inner service into `503` responses; see the
/// [module docs](self). Applied by [`OpenAsResponseLayer`].
///
/// Errors that are not rejections are passed on, boxed, as they came. `poll_ready` is
/// the inner service's own (a [`BreakerService`](crate::breaker::BreakerService) never
/// rejects there).
#[derive(Debug, Clone)]
pub struct OpenAsResponse<S> {
    inner: S,
}

impl<S> OpenAsResponse<S> {
    /// Wraps `inner`.
    pub const fn new(inner: S) -> Self {
        Self { inner }
    }

    /// A layer that wraps services in `OpenAsResponse`.
    pub const fn layer() -> OpenAsResponseLayer {
        OpenAsResponseLayer::new()
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

impl<S, Req, B> Service<Req> for OpenAsResponse<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Default,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = future::ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        future::ResponseFuture::new(self.inner.call(req))
    }
}

/// Wraps services in [`OpenAsResponse`]: breaker rejections become `503 Service
/// Unavailable` responses with `Retry-After`.
///
/// Put it outside (above) the breaker. In axum, wrap both in a `HandleErrorLayer` for
/// the errors that are not rejections, which gives the `Infallible` error type a route
/// needs:
///
/// ```
/// use axum::{error_handling::HandleErrorLayer, http::StatusCode, routing::get, Router};
/// use tower::ServiceBuilder;
/// use steadfast::breaker::Breaker;
/// use steadfast::http::open::OpenAsResponseLayer;
/// use steadfast::BoxError;
///
/// let breaker = Breaker::new("reports");
/// let app: Router = Router::new()
///     .route("/report", get(|| async { "done" }))
///     .route_layer(
///         ServiceBuilder::new()
///             .layer(HandleErrorLayer::new(|err: BoxError| async move {
///                 (StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
///             }))
///             .layer(OpenAsResponseLayer::new())
///             .layer(breaker.layer()),
///     );
/// # let _ = app;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAsResponseLayer {
    _priv: (),
}

impl OpenAsResponseLayer {
    /// A new layer.
    pub const fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> Layer<S> for OpenAsResponseLayer {
    type Service = OpenAsResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OpenAsResponse::new(inner)
    }
}

pub mod future {
    //! [`ResponseFuture`], the future returned by [`OpenAsResponse`](super::OpenAsResponse).

    use std::fmt;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{ready, Context, Poll};

    use http::Response;
    use pin_project_lite::pin_project;

    use super::{find_open, open_to_response};
    use crate::BoxError;

    pin_project! {
        /// The response future of [`OpenAsResponse`](super::OpenAsResponse): the inner
        /// call, with a breaker rejection turned into a `503` response.
        pub struct ResponseFuture<F> {
            #[pin]
            inner: F,
        }
    }

    impl<F> ResponseFuture<F> {
        pub(crate) fn new(inner: F) -> Self {
            Self { inner }
        }
    }

    impl<F, B, E> Future for ResponseFuture<F>
    where
        F: Future<Output = Result<Response<B>, E>>,
        E: Into<BoxError>,
        B: Default,
    {
        type Output = Result<Response<B>, BoxError>;

        #[inline]
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            Poll::Ready(match ready!(self.project().inner.poll(cx)) {
                Ok(res) => Ok(res),
                Err(e) => {
                    let e: BoxError = e.into();
                    match find_open(e.as_ref()) {
                        Some(open) => Ok(open_to_response(open)),
                        None => Err(e),
                    }
                }
            })
        }
    }

    impl<F> fmt::Debug for ResponseFuture<F> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ResponseFuture").finish_non_exhaustive()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;
    use std::sync::Arc;
    use std::time::Duration;

    use tower::{service_fn, ServiceExt};

    fn open(after: Option<Duration>) -> Open {
        Open::new(Arc::from("db"), after)
    }

    fn header(res: &Response<()>) -> Option<&str> {
        res.headers().get(RETRY_AFTER).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn retry_after_is_rounded_up_to_whole_seconds() {
        for (after, want) in [
            (Some(Duration::ZERO), Some("0")),
            (Some(Duration::from_nanos(1)), Some("1")),
            (Some(Duration::from_millis(999)), Some("1")),
            (Some(Duration::from_secs(1)), Some("1")),
            (Some(Duration::from_millis(1_001)), Some("2")),
            (Some(Duration::from_millis(9_200)), Some("10")),
            (Some(Duration::from_secs(10)), Some("10")),
            (Some(Duration::from_secs(86_400)), Some("86400")),
            (Some(Duration::MAX), Some("18446744073709551615")),
            (None, None),
        ] {
            let res: Response<()> = open_to_response(&open(after));
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(header(&res), want, "{after:?}");
        }
    }

    #[test]
    fn body_is_the_default() {
        let res: Response<String> = open_to_response(&open(None));
        assert_eq!(res.body(), "");
    }

    #[test]
    fn rounded_header_reads_back_as_at_least_the_delay() {
        let after = Duration::from_millis(2_500);
        let res: Response<()> = open_to_response(&open(Some(after)));
        let read = crate::http::retry_after::retry_after_now(res.headers()).unwrap();
        assert!(read >= after && read - after < Duration::from_secs(1));
    }

    #[derive(Debug)]
    struct Wrapper(Box<dyn Error + Send + Sync>);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self.0.as_ref())
        }
    }

    /// An error whose source is itself, forever.
    #[derive(Debug)]
    struct Loop;

    impl fmt::Display for Loop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("loop")
        }
    }

    impl Error for Loop {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self)
        }
    }

    #[test]
    fn open_is_found_down_the_chain() {
        let direct: BoxError = open(Some(Duration::from_secs(3))).into();
        let wrapped: BoxError = Box::new(Wrapper(Box::new(open(None))));
        let io: BoxError = Box::new(std::io::Error::other(open(None)));
        let deep: BoxError = Box::new(Wrapper(Box::new(Wrapper(Box::new(std::io::Error::other(
            Wrapper(Box::new(open(None))),
        ))))));
        for err in [&direct, &wrapped, &io, &deep] {
            assert_eq!(
                find_open(err.as_ref()).map(Open::breaker),
                Some("db"),
                "{err}"
            );
            let res: Response<()> = error_to_response(err).unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        let res: Response<()> = error_to_response(&direct).unwrap();
        assert_eq!(header(&res), Some("3"));
    }

    #[test]
    fn other_errors_are_not_answered() {
        let plain: BoxError = "boom".into();
        let io: BoxError = Box::new(std::io::Error::other("refused"));
        let bare_io: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut));
        let wrapped: BoxError = Box::new(Wrapper("inner".into()));
        let looping: BoxError = Box::new(Loop);
        for err in [&plain, &io, &bare_io, &wrapped, &looping] {
            assert!(find_open(err.as_ref()).is_none(), "{err}");
            assert!(error_to_response::<()>(err).is_none(), "{err}");
        }
    }

    #[tokio::test]
    async fn service_answers_rejections_and_passes_other_errors() {
        let svc = OpenAsResponseLayer::new().layer(service_fn(|n: u8| async move {
            match n {
                0 => Ok(Response::new("fine")),
                1 => Err::<_, BoxError>(open(Some(Duration::from_millis(1_500))).into()),
                _ => Err("boom".into()),
            }
        }));
        let res = svc.clone().oneshot(0).await.unwrap();
        assert_eq!((res.status(), *res.body()), (StatusCode::OK, "fine"));
        let res = svc.clone().oneshot(1).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[RETRY_AFTER], "2");
        assert_eq!(*res.body(), "");
        let err = svc.oneshot(2).await.unwrap_err();
        assert_eq!(err.to_string(), "boom");
    }

    #[tokio::test]
    async fn inner_errors_of_any_type_are_boxed() {
        let svc = OpenAsResponse::new(service_fn(|_: ()| async {
            Err::<Response<()>, _>(std::io::Error::other(open(None)))
        }));
        let res = svc.oneshot(()).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().get(RETRY_AFTER).is_none());
    }
}
