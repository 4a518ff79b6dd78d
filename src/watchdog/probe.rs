//! [`Probe`]: how a watchdog checks whether a downstream answers.

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::BoxError;

/// A check of the downstream: `Ok(())` means it answers.
///
/// Implemented for every `FnMut() -> impl Future<Output = Result<(), E>>`, so a closure
/// is a probe; [`service`] makes one from a tower [`Service`]. A probe that panics or
/// does not finish within the watchdog's `timeout` counts as a failed probe.
pub trait Probe: Send + 'static {
    /// The probe's error.
    type Error: Into<BoxError>;
    /// The future of one probe.
    type Future: Future<Output = Result<(), Self::Error>> + Send + 'static;

    /// Starts one probe.
    fn probe(&mut self) -> Self::Future;
}

impl<F, Fut, E> Probe for F
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    type Error = E;
    type Future = Fut;

    fn probe(&mut self) -> Fut {
        self()
    }
}

/// A probe that sends the request `make_request` builds to `service` (polled ready
/// first, on a clone); any response is a pass, any error a failure.
///
/// ```
/// use steadfast::watchdog::probe;
/// let check = probe::service(
///     tower::service_fn(|_: ()| async { Ok::<_, std::io::Error>("pong") }),
///     || (),
/// );
/// # let _ = check;
/// ```
pub fn service<S, Req, F>(service: S, make_request: F) -> ServiceProbe<S, F>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    F: FnMut() -> Req + Send + 'static,
    Req: Send + 'static,
{
    ServiceProbe {
        service,
        make_request,
    }
}

/// A [`Probe`] over a tower [`Service`]; from [`service`].
#[derive(Clone)]
pub struct ServiceProbe<S, F> {
    service: S,
    make_request: F,
}

impl<S, F> fmt::Debug for ServiceProbe<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceProbe").finish_non_exhaustive()
    }
}

impl<S, Req, F> Probe for ServiceProbe<S, F>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    F: FnMut() -> Req + Send + 'static,
    Req: Send + 'static,
{
    type Error = BoxError;
    // One allocation per probe, far off any request path.
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn probe(&mut self) -> Self::Future {
        let mut service = self.service.clone();
        let request = (self.make_request)();
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            service.call(request).await.map(drop).map_err(Into::into)
        })
    }
}

pin_project! {
    /// Turns a panic while polling into an error, so a probe that panics is a failed
    /// probe and the watchdog lives on.
    pub(crate) struct CatchUnwind<F> {
        #[pin]
        future: F,
    }
}

impl<F> CatchUnwind<F> {
    pub(crate) fn new(future: F) -> Self {
        Self { future }
    }
}

impl<F, E> Future for CatchUnwind<F>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.project().future;
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => Poll::Ready(result.map_err(Into::into)),
            Err(_) => Poll::Ready(Err("probe panicked".into())),
        }
    }
}
