//! [`ResponseFuture`], the future returned by [`Retry`](super::Retry).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::hooks::{RetryRequest, RetryResponse};
use super::Params;
use crate::backoff;
use crate::breaker::error::Open;
use crate::chain::{as_dyn, chain};
use crate::{Classify, Outcome};

pin_project! {
    /// The response future of [`Retry`](super::Retry): calls, waits, polls the service
    /// ready again, and calls again, until a result is final.
    ///
    /// Dropping it at any point makes no further attempt.
    pub struct ResponseFuture<S, Req, C, R, H>
    where
        R: RetryRequest<Req>,
        S: Service<R::Out>,
    {
        #[pin]
        state: State<S::Future>,
        // The readied service taken by `call`, polled ready again before each retry.
        service: S,
        // What makes later attempts' requests; `None` when the request is sent once.
        replay: Option<R::Replay>,
        // The next attempt's request, made when the retry is decided.
        next: Option<R::Out>,
        params: Arc<Params>,
        hooks: Hooks<C, R, H>,
        attempts: u32,
        // When the request started; read only with `max_elapsed`.
        start: Option<Instant>,
        // Made on the first retry: the delays, and the one `Sleep` (made for the first
        // nonzero delay, then reset in place).
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
        // `None` until a retry has to wait: a zero delay needs no timer.
        #[pin]
        sleep: Option<Sleep>,
        delays: backoff::Iter,
    }
}

/// How far a deadline can be: tokio's own "far future" for a `sleep` whose deadline
/// would overflow (about 30 years).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The policy's classifier and hooks, carried by each future.
#[derive(Debug)]
pub(crate) struct Hooks<C, R, H> {
    pub(crate) classify: C,
    pub(crate) requests: R,
    pub(crate) responses: H,
}

/// What to do with a failed result.
enum Verdict {
    Final,
    /// Call again at once (a zero delay).
    Now,
    /// Wait on the waiter's (reset) `Sleep`, then call again.
    Later,
}

impl<S, Req, C, R, H> ResponseFuture<S, Req, C, R, H>
where
    R: RetryRequest<Req>,
    S: Service<R::Out>,
{
    pub(crate) fn new(
        future: S::Future,
        service: S,
        replay: Option<R::Replay>,
        params: Arc<Params>,
        hooks: Hooks<C, R, H>,
        start: Option<Instant>,
    ) -> Self {
        Self {
            state: State::Calling { future },
            service,
            replay,
            next: None,
            params,
            hooks,
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
    as_dyn(error).is_some_and(|e| chain(e).any(|e| e.is::<Open>()))
}

impl<S, Req, C, R, H> Future for ResponseFuture<S, Req, C, R, H>
where
    R: RetryRequest<Req>,
    S: Service<R::Out>,
    S::Error: 'static,
    C: Classify<S::Response, S::Error>,
    H: RetryResponse<S::Response, S::Error>,
{
    type Output = Result<S::Response, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let mut result = ready!(future.poll(cx));
                    // The healthy path: a result the classifier does not call a failure
                    // is final, and none of the retry machinery is touched.
                    if this.hooks.classify.classify(&result) != Outcome::Failure {
                        this.hooks
                            .responses
                            .record_attempts(&mut result, *this.attempts);
                        return Poll::Ready(result);
                    }
                    let can_retry =
                        this.replay.is_some() && !matches!(&result, Err(e) if is_open(e));
                    let hint = if can_retry {
                        this.hooks.responses.retry_after(&result)
                    } else {
                        None
                    };
                    let verdict = retry_after_failure(
                        this.params,
                        this.waiter,
                        *this.attempts,
                        *this.start,
                        can_retry,
                        hint,
                        result.is_err(),
                    );
                    // The next request is made now: if it cannot be, the result stands.
                    let last = *this.attempts + 1 >= this.params.max_attempts;
                    let next = match verdict {
                        Verdict::Final => None,
                        Verdict::Now | Verdict::Later if last => this
                            .replay
                            .take()
                            .and_then(|replay| this.hooks.requests.last(replay)),
                        Verdict::Now | Verdict::Later => this
                            .replay
                            .as_mut()
                            .and_then(|replay| this.hooks.requests.next(replay)),
                    };
                    match next {
                        Some(next) => {
                            *this.next = Some(next);
                            this.state.set(match verdict {
                                Verdict::Later => State::Waiting,
                                _ => State::Readying,
                            });
                        }
                        None => {
                            this.hooks
                                .responses
                                .record_attempts(&mut result, *this.attempts);
                            return Poll::Ready(result);
                        }
                    }
                }
                StateProj::Waiting => {
                    // Only a retry with a delay waits, on the `Sleep` it armed.
                    if let Some(sleep) = this
                        .waiter
                        .as_mut()
                        .and_then(|w| w.as_mut().project().sleep.as_pin_mut())
                    {
                        ready!(sleep.poll(cx));
                    }
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    ready!(this.service.poll_ready(cx))?;
                    let Some(request) = this.next.take() else {
                        // A retry is only decided with its request in hand.
                        unreachable_state();
                        return Poll::Pending;
                    };
                    *this.attempts += 1;
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

/// Decides whether a failed result is retried and, if so, when: at once for a zero
/// delay, else after the waiter's `Sleep`, armed here.
#[cold]
#[inline(never)]
fn retry_after_failure(
    params: &Params,
    waiter: &mut Option<Pin<Box<Waiter>>>,
    attempts: u32,
    start: Option<Instant>,
    can_retry: bool,
    hint: Option<Duration>,
    is_err: bool,
) -> Verdict {
    if !can_retry || attempts >= params.max_attempts {
        return Verdict::Final;
    }
    let waiter = waiter.get_or_insert_with(|| {
        Box::pin(Waiter {
            sleep: None,
            delays: params.backoff.iter_stream(params.next_stream()),
        })
    });
    let backoff = waiter.as_mut().project().delays.next().unwrap_or_default();
    // The result may ask for a longer wait (HTTP `Retry-After`): never retry sooner.
    let delay = hint.map_or(backoff, |hint| hint.max(backoff));
    let why = if is_err { "error" } else { "failure response" };
    if let (Some(max), Some(start)) = (params.max_elapsed, start) {
        let elapsed = start.elapsed();
        // Saturating: a hint of `Duration::MAX` is a retry far past any limit.
        if elapsed.saturating_add(delay) > max {
            tracing::info!(
                target: "steadfast::retry",
                attempt = attempts,
                delay_ms = millis(delay),
                elapsed_ms = millis(elapsed),
                why,
                "retry refused: it would end past max_elapsed"
            );
            count_refused(&params.name, "max_elapsed");
            return Verdict::Final;
        }
    }
    // A wait needs a tokio timer; without a runtime the retry is not made (see the
    // module docs, "Without a tokio runtime"). Before the budget: nothing is spent.
    if !delay.is_zero() && tokio::runtime::Handle::try_current().is_err() {
        tracing::warn!(
            target: "steadfast::retry",
            attempt = attempts,
            delay_ms = millis(delay),
            why,
            "retry refused: its delay needs a tokio runtime, and none is running"
        );
        count_refused(&params.name, "no_runtime");
        return Verdict::Final;
    }
    if !params.budget.withdraw() {
        tracing::info!(
            target: "steadfast::retry",
            attempt = attempts,
            why,
            "retry refused: the retry budget is spent"
        );
        count_refused(&params.name, "budget");
        return Verdict::Final;
    }
    tracing::debug!(
        target: "steadfast::retry",
        attempt = attempts,
        delay_ms = millis(delay),
        why,
        "retrying"
    );
    count_retry(&params.name);
    if delay.is_zero() {
        return Verdict::Now;
    }
    let deadline = deadline(delay);
    let mut sleep = waiter.as_mut().project().sleep;
    match sleep.as_mut().as_pin_mut() {
        Some(armed) => armed.reset(deadline),
        None => sleep.set(Some(tokio::time::sleep_until(deadline))),
    }
    Verdict::Later
}

/// `delay` from now; tokio's far future when that overflows (a hint of
/// `Duration::MAX`), as `tokio::time::sleep` does.
fn deadline(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay).unwrap_or_else(|| now + FAR_FUTURE)
}

/// A duration in whole milliseconds for an event field, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<S, Req, C, R, H> fmt::Debug for ResponseFuture<S, Req, C, R, H>
where
    R: RetryRequest<Req>,
    S: Service<R::Out>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// Counts a retry made in the metrics (feature `metrics`); nothing without it.
fn count_retry(_policy: &str) {
    #[cfg(feature = "metrics")]
    crate::metrics::retry(_policy);
}

/// Counts a retry refused, and why, in the metrics (feature `metrics`).
fn count_refused(_policy: &str, _reason: &'static str) {
    #[cfg(feature = "metrics")]
    crate::metrics::refused(_policy, _reason);
}
