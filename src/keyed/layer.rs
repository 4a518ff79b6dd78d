use std::fmt;

use tower_layer::Layer;

use super::{KeyedBreaker, KeyedBreakerService};
use crate::outcome::ErrorsAsFailures;

/// Applies a [`KeyedBreaker`] to a service: a [`Layer`] producing
/// [`KeyedBreakerService`]; from [`KeyedBreaker::layer`].
///
/// Every service the layer wraps shares the keyed breaker's keys. The classifier
/// decides what counts as a failure; by default every `Err`.
///
/// ```
/// use steadfast::breaker::Breaker;
/// use steadfast::keyed::{KeyedBreaker, KeyedBreakerLayer};
/// use steadfast::Outcome;
///
/// let tenants = KeyedBreaker::<u32>::builder(Breaker::builder("tenants")).build()?;
/// let layer = KeyedBreakerLayer::new(tenants, |req: &(u32, String)| req.0)
///     .classify(|r: &Result<String, std::io::Error>| match r {
///         Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Ignored,
///         Err(_) => Outcome::Failure,
///         Ok(_) => Outcome::Success,
///     });
/// # let _ = layer;
/// # Ok::<(), steadfast::ConfigError>(())
/// ```
pub struct KeyedBreakerLayer<K, F, C = ErrorsAsFailures> {
    keyed: KeyedBreaker<K>,
    key_fn: F,
    classify: C,
}

impl<K, F> KeyedBreakerLayer<K, F> {
    /// A layer keying requests by `key_fn` into `keyed`, counting every `Err` as a
    /// failure.
    pub fn new(keyed: KeyedBreaker<K>, key_fn: F) -> Self {
        Self {
            keyed,
            key_fn,
            classify: ErrorsAsFailures,
        }
    }
}

impl<K, F, C> KeyedBreakerLayer<K, F, C> {
    /// Uses `classify` to decide each call's [`Outcome`](crate::Outcome).
    pub fn classify<C2>(self, classify: C2) -> KeyedBreakerLayer<K, F, C2> {
        KeyedBreakerLayer {
            keyed: self.keyed,
            key_fn: self.key_fn,
            classify,
        }
    }

    /// The keyed breaker this layer applies.
    pub fn keyed(&self) -> &KeyedBreaker<K> {
        &self.keyed
    }
}

impl<K, F: Clone, C: Clone> Clone for KeyedBreakerLayer<K, F, C> {
    fn clone(&self) -> Self {
        Self {
            keyed: self.keyed.clone(),
            key_fn: self.key_fn.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<K, F, C> fmt::Debug for KeyedBreakerLayer<K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakerLayer")
            .field("keyed", &self.keyed)
            .field("key_fn", &std::any::type_name::<F>())
            .field("classify", &std::any::type_name::<C>())
            .finish()
    }
}

impl<S, K, F: Clone, C: Clone> Layer<S> for KeyedBreakerLayer<K, F, C> {
    type Service = KeyedBreakerService<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedBreakerService::new(inner, self.keyed.clone(), self.key_fn.clone())
            .classify(self.classify.clone())
    }
}
