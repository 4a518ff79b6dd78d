use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::{Retry, RetryPolicy, Settings};
use crate::config::ConfigError;
use crate::outcome::ErrorsAsFailures;

/// Retries failed calls of the services it wraps, per a [`RetryPolicy`]; a [`Layer`]
/// producing [`Retry`]. Every service it wraps shares the policy's budget.
#[derive(Clone)]
pub struct RetryLayer<C = ErrorsAsFailures> {
    settings: Arc<Settings>,
    classify: C,
}

impl<C> RetryLayer<C> {
    /// A layer applying `policy`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `max_attempts` is 0 or above 100, the backoff's base
    /// exceeds its max or its factor is below 1, or `max_elapsed` is zero or longer
    /// than a day. Budgets are checked by [`Budget::new`](super::Budget::new).
    pub fn new(policy: RetryPolicy<C>) -> Result<Self, ConfigError> {
        policy.check()?;
        Ok(Self {
            settings: Arc::new(Settings::new(&policy)),
            classify: policy.classify,
        })
    }
}

impl<C> fmt::Debug for RetryLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("settings", &self.settings)
            .field("retry_if", &std::any::type_name::<C>())
            .finish()
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_parts(inner, self.settings.clone(), self.classify.clone())
    }
}
