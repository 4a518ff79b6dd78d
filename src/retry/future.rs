//! [`ResponseFuture`], the future returned by [`Retry`](super::Retry).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::Params;
use crate::backoff;
use crate::breaker::error::Open;
use crate::{BoxError, Classify, Outcome};

pin_project! {
    /// The response future of [`Retry`](super::Retry): calls, waits, polls the service
    /// ready again, and calls again, until a result is final.
    ///
    /// Dropping it at any point makes no further attempt.
    pub struct ResponseFuture<S, Req, C>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        // The readied service taken by `call`, polled ready again before each retry.
        service: S,
        // A copy of the request for the next attempt; `None` when none can be made.
        request: Option<Req>,
        params: Arc<Params>,
        classify: C,
        attempts: u32,
        // When the request started; read only with `max_elapsed`.
        start: Option<Instant>,
        // Made on the first retry: the delays and the one `Sleep`, reset in place.
        waiter: Option<Pin<Box<Waiter>>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        Waiting,
        Readying,
    }
}

pin_project! {
    struct Waiter {
        #[pin]
        sleep: Sleep,
        delays: backoff::Iter,
    }
}

/// What to do with a failed result.
enum Verdict {
    Final,
    /// Wait on the (reset) waiter, then call again.
    Retry,
}

impl<S, Req, C> ResponseFuture<S, Req, C>
where
    S: Service<Req>,
{
    pub(crate) fn new(
        future: S::Future,
        service: S,
        request: Option<Req>,
        params: Arc<Params>,
        classify: C,
        start: Option<Instant>,
    ) -> Self {
        Self {
            state: State::Calling { future },
            service,
            request,
            params,
            classify,
            attempts: 1,
            start,
            waiter: None,
        }
    }
}

/// Whether an error is a breaker rejection, directly or down the source chain of a
/// boxed error (including an `io::Error` wrapping it). A layer between retry and
/// breaker that turns errors into its own concrete type hides the rejection: keep
/// errors boxed between the two.
pub(crate) fn is_open<E: 'static>(error: &E) -> bool {
    let any: &dyn Any = error;
    if any.is::<Open>() {
        return true;
    }
    let Some(boxed) = any.downcast_ref::<BoxError>() else {
        return false;
    };
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(boxed.as_ref());
    while let Some(e) = next {
        if e.is::<Open>() {
            return true;
        }
        // `io::Error::source` skips its own payload (`io::Error::other(open)`).
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(payload) => Some(payload as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

impl<S, Req, C> Future for ResponseFuture<S, Req, C>
where
    S: Service<Req>,
    S::Error: 'static,
    Req: Clone,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    // The healthy path: a result the classifier does not call a failure
                    // is final, and none of the retry machinery is touched.
                    if this.classify.classify(&result) != Outcome::Failure {
                        return Poll::Ready(result);
                    }
                    let can_retry =
                        this.request.is_some() && !matches!(&result, Err(e) if is_open(e));
                    match retry_after_failure(
                        this.params,
                        this.waiter,
                        *this.attempts,
                        *this.start,
                        can_retry,
                        result.is_err(),
                    ) {
                        Verdict::Final => return Poll::Ready(result),
                        Verdict::Retry => this.state.set(State::Waiting),
                    }
                }
                StateProj::Waiting => {
                    if let Some(waiter) = this.waiter.as_mut() {
                        ready!(waiter.as_mut().project().sleep.poll(cx));
                    }
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    ready!(this.service.poll_ready(cx))?;
                    let Some(request) = this.request.take() else {
                        // `decide` checked a copy was kept; nothing left to send.
                        unreachable_state();
                        return Poll::Pending;
                    };
                    *this.attempts += 1;
                    if *this.attempts < this.params.max_attempts {
                        *this.request = Some(request.clone());
                    }
                    let future = this.service.call(request);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}

#[cold]
fn unreachable_state() {
    debug_assert!(false, "retry future waiting without a request to send");
}

/// Decides whether a failed result is retried and, if so, arms the waiter.
#[cold]
#[inline(never)]
fn retry_after_failure(
    params: &Params,
    waiter: &mut Option<Pin<Box<Waiter>>>,
    attempts: u32,
    start: Option<Instant>,
    can_retry: bool,
    is_err: bool,
) -> Verdict {
    if !can_retry || attempts >= params.max_attempts {
        return Verdict::Final;
    }
    let waiter = waiter.get_or_insert_with(|| {
        Box::pin(Waiter {
            sleep: tokio::time::sleep(Duration::ZERO),
            delays: params.backoff.iter(),
        })
    });
    let delay = waiter.as_mut().project().delays.next().unwrap_or_default();
    let why = if is_err { "error" } else { "failure response" };
    if let (Some(max), Some(start)) = (params.max_elapsed, start) {
        let elapsed = start.elapsed();
        if elapsed + delay > max {
            tracing::info!(
                target: "steadfast::retry",
                attempt = attempts,
                delay_ms = delay.as_millis() as u64,
                elapsed_ms = elapsed.as_millis() as u64,
                why,
                "retry refused: it would end past max_elapsed"
            );
            return Verdict::Final;
        }
    }
    if !params.budget.withdraw() {
        tracing::info!(
            target: "steadfast::retry",
            attempt = attempts,
            why,
            "retry refused: the retry budget is spent"
        );
        return Verdict::Final;
    }
    tracing::debug!(
        target: "steadfast::retry",
        attempt = attempts,
        delay_ms = delay.as_millis() as u64,
        why,
        "retrying"
    );
    waiter
        .as_mut()
        .project()
        .sleep
        .reset(Instant::now() + delay);
    Verdict::Retry
}

impl<S, Req, C> fmt::Debug for ResponseFuture<S, Req, C>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}
