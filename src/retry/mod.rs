//! Retries with jittered backoff inside a budget: absorb a blip, never feed an outage.
//!
//! [`RetryLayer`] wraps a service with a [`RetryPolicy`]: a failed call (as the
//! policy's classifier decides) is sent again after the next delay of its backoff,
//! while `max_attempts`, `max_elapsed` and the shared [`Budget`] allow. The budget is
//! what keeps retries from turning an outage into a retry storm: see its docs.
//!
//! Put the retry layer *outside* a breaker: a breaker rejection
//! ([`Open`](crate::breaker::error::Open)) is never retried, so once the breaker opens
//! the retries stop with it.
//!
//! # Without a tokio runtime
//!
//! The delays are tokio timers, and a timer needs a runtime (with time enabled). A
//! retry whose delay is zero needs none: it is made at once, with no timer, so a
//! policy with a zero backoff works under any executor (`futures::executor::block_on`,
//! say), as the breaker does. A retry whose delay is not zero, polled where no tokio
//! runtime is running, is **not made**: the last result is returned as it is, as when
//! any other limit refuses a retry, with a `warn` event (target `steadfast::retry`).
//! Retrying at once would ignore the backoff (and a `Retry-After`), the very thing
//! that keeps retries from hammering the downstream, and blocking the thread would
//! stall the executor. The check is made only when a retry is decided, never on the
//! success path. Inside a runtime built without `enable_time`, tokio itself panics when
//! the timer is made, as for any `sleep`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), steadfast::BoxError> {
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use steadfast::retry::{RetryLayer, RetryPolicy};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! // A downstream that fails its first two calls.
//! let calls = Arc::new(AtomicU32::new(0));
//! let downstream = service_fn({
//!     let calls = calls.clone();
//!     move |_: ()| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move { if n < 2 { Err("blip") } else { Ok("hello") } }
//!     }
//! });
//! let mut client = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryPolicy::new().max_attempts(3))?)
//!     .service(downstream);
//! assert_eq!(client.ready().await?.call(()).await?, "hello");
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_service::Service;

use crate::backoff::Backoff;
use crate::outcome::ErrorsAsFailures;
use crate::stripe::{handle, parallelism};
use crate::Classify;

mod budget;
mod hooks;
mod layer;
mod policy;

pub mod future;

pub use self::budget::Budget;
pub use self::hooks::{CloneRequests, NoHints, RetryRequest, RetryResponse};
pub use self::layer::RetryLayer;
pub use self::policy::{
    RetryPolicy, DEFAULT_BACKOFF, DEFAULT_BUDGET_MIN_PER_SEC, DEFAULT_BUDGET_RATIO,
    DEFAULT_BUDGET_TTL, DEFAULT_MAX_ATTEMPTS,
};

use self::future::ResponseFuture;

/// What a response future needs of the policy. One copy per thread slot, so that
/// threads do not share the refcount a future takes.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Params {
    max_attempts: u32,
    backoff: Backoff,
    max_elapsed: Option<Duration>,
    budget: Budget,
    /// The policy's name, for metrics.
    name: Arc<str>,
    /// The next backoff stream: each request that retries draws its own sequence of a
    /// seeded backoff (shared by every handle of one layer).
    streams: Arc<AtomicU64>,
}

/// The policy without its classifier, shared by a layer and its services.
#[derive(Debug)]
pub(crate) struct Settings {
    handles: Box<[Arc<Params>]>,
}

impl Params {
    /// The backoff stream of a request about to make its first retry.
    fn next_stream(&self) -> u64 {
        self.streams.fetch_add(1, Ordering::Relaxed)
    }
}

impl Settings {
    pub(crate) fn new<C, R, H>(policy: &RetryPolicy<C, R, H>) -> Self {
        let handles = (parallelism() * 2).next_power_of_two().min(64);
        let streams = Arc::new(AtomicU64::new(0));
        Self {
            handles: (0..handles)
                .map(|_| {
                    Arc::new(Params {
                        max_attempts: policy.max_attempts,
                        backoff: policy.backoff,
                        max_elapsed: policy.max_elapsed,
                        budget: policy.budget.clone(),
                        name: policy.name.clone(),
                        streams: streams.clone(),
                    })
                })
                .collect(),
        }
    }

    #[inline]
    fn params(&self) -> &Arc<Params> {
        &self.handles[handle(self.handles.len())]
    }
}

/// A service whose failed calls are retried; built by [`RetryLayer`].
///
/// Each attempt sends a copy of the request made by the policy's
/// [`RetryRequest`] (by default a clone: `Req: Clone`). The service is cloned once per
/// request: the future takes the readied service and leaves the clone behind, and polls
/// it ready again before every retry. Errors are the inner service's, unchanged.
///
/// Outside a tokio runtime, only retries with a zero delay are made: see the
/// [module docs](self#without-a-tokio-runtime).
pub struct Retry<S, C = ErrorsAsFailures, R = CloneRequests, H = NoHints> {
    inner: S,
    settings: Arc<Settings>,
    classify: C,
    requests: R,
    responses: H,
}

impl<S, C, R, H> Retry<S, C, R, H> {
    pub(crate) fn from_parts(
        inner: S,
        settings: Arc<Settings>,
        classify: C,
        requests: R,
        responses: H,
    ) -> Self {
        Self {
            inner,
            settings,
            classify,
            requests,
            responses,
        }
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

    /// The budget retries are drawn from.
    pub fn budget(&self) -> &Budget {
        &self.settings.params().budget
    }
}

impl<S: Clone, C: Clone, R: Clone, H: Clone> Clone for Retry<S, C, R, H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
            classify: self.classify.clone(),
            requests: self.requests.clone(),
            responses: self.responses.clone(),
        }
    }
}

impl<S: fmt::Debug, C, R, H> fmt::Debug for Retry<S, C, R, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S, C, R, H, Req> Service<Req> for Retry<S, C, R, H>
where
    R: RetryRequest<Req> + Clone,
    S: Service<R::Out> + Clone,
    S::Error: 'static,
    C: Classify<S::Response, S::Error> + Clone,
    H: RetryResponse<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, C, R, H>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let params = self.settings.params().clone();
        params.budget.deposit();
        let (request, replay) = if params.max_attempts > 1 {
            self.requests.prepare(request)
        } else {
            (self.requests.once(request), None)
        };
        let start = params.max_elapsed.map(|_| Instant::now());
        // Clone and swap: the future takes the instance that was polled ready.
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let future = service.call(request);
        ResponseFuture::new(
            future,
            service,
            replay,
            params,
            future::Hooks {
                classify: self.classify.clone(),
                requests: self.requests.clone(),
                responses: self.responses.clone(),
            },
            start,
        )
    }
}
