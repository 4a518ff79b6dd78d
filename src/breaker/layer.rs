use std::fmt;

use tower_layer::Layer;

use super::{Breaker, BreakerService};
use crate::outcome::ErrorsAsFailures;

/// Applies a [`Breaker`] to a service: a [`Layer`] producing [`BreakerService`].
///
/// Every service the layer wraps shares the one breaker: they trip and recover
/// together. The classifier decides what counts as a failure; by default every `Err`.
///
/// ```
/// use steadfast::breaker::{Breaker, BreakerLayer};
/// use steadfast::Outcome;
///
/// let breaker = Breaker::new("search");
/// // Count only errors, not "not found" answers inside Ok.
/// let layer = BreakerLayer::new(breaker).classify(|r: &Result<u16, std::io::Error>| {
///     match r {
///         Ok(_) => Outcome::Success,
///         Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Ignored,
///         Err(_) => Outcome::Failure,
///     }
/// });
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct BreakerLayer<C = ErrorsAsFailures> {
    breaker: Breaker,
    classify: C,
}

impl BreakerLayer {
    /// A layer for `breaker`, counting every `Err` as a failure.
    pub fn new(breaker: Breaker) -> Self {
        Self {
            breaker,
            classify: ErrorsAsFailures,
        }
    }
}

impl<C> BreakerLayer<C> {
    /// Uses `classify` to decide each call's [`Outcome`](crate::Outcome).
    pub fn classify<C2>(self, classify: C2) -> BreakerLayer<C2> {
        BreakerLayer {
            breaker: self.breaker,
            classify,
        }
    }

    /// The breaker this layer applies.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

impl<C> fmt::Debug for BreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("breaker", &self.breaker)
            .field("classify", &std::any::type_name::<C>())
            .finish()
    }
}

impl<S, C: Clone> Layer<S> for BreakerLayer<C> {
    type Service = BreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService::new(inner, self.breaker.clone()).classify(self.classify.clone())
    }
}
