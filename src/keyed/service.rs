use std::fmt;
use std::hash::Hash;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::{KeyFn, KeyedBreaker};
use crate::breaker::service::call_through;
use crate::outcome::ErrorsAsFailures;
use crate::{BoxError, Classify};

/// A service guarded by one breaker per request key; built by
/// [`KeyedBreakerLayer`](super::KeyedBreakerLayer).
///
/// # Readiness
///
/// The breaker is picked from the request, so `poll_ready` only polls the inner
/// service (its errors are passed on) and `call` decides: a call whose key's breaker
/// rejects gets a ready [`Open`](crate::breaker::error::Open) error without reaching
/// the inner service, whatever the template's
/// [`Readiness`](crate::breaker::Readiness). For a balancer, use
/// [`KeyedBreaker::layer_for`] per endpoint instead. No state is kept between
/// `poll_ready` and `call`, so clones share nothing but the keys.
pub struct KeyedBreakerService<S, K, F, C = ErrorsAsFailures> {
    inner: S,
    keyed: KeyedBreaker<K>,
    key_fn: F,
    classify: C,
}

impl<S, K, F> KeyedBreakerService<S, K, F> {
    /// Guards `inner` with `keyed`, keying requests by `key_fn` and counting every
    /// `Err` as a failure.
    pub fn new(inner: S, keyed: KeyedBreaker<K>, key_fn: F) -> Self {
        Self {
            inner,
            keyed,
            key_fn,
            classify: ErrorsAsFailures,
        }
    }
}

impl<S, K, F, C> KeyedBreakerService<S, K, F, C> {
    /// Uses `classify` to decide each call's [`Outcome`](crate::Outcome).
    pub fn classify<C2>(self, classify: C2) -> KeyedBreakerService<S, K, F, C2> {
        KeyedBreakerService {
            inner: self.inner,
            keyed: self.keyed,
            key_fn: self.key_fn,
            classify,
        }
    }

    /// The keyed breaker guarding this service.
    pub fn keyed(&self) -> &KeyedBreaker<K> {
        &self.keyed
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

impl<S: Clone, K, F: Clone, C: Clone> Clone for KeyedBreakerService<S, K, F, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            keyed: self.keyed.clone(),
            key_fn: self.key_fn.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<S: fmt::Debug, K, F, C> fmt::Debug for KeyedBreakerService<S, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakerService")
            .field("inner", &self.inner)
            .field("keyed", &self.keyed)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, C, Req> Service<Req> for KeyedBreakerService<S, K, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: KeyFn<Req, Key = K>,
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let key = self.key_fn.key(&req);
        let inner = &mut self.inner;
        let classify = self.classify.clone();
        self.keyed.with(&key, |breaker| {
            call_through(breaker, classify, || inner.call(req))
        })
    }
}
