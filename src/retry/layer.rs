use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::hooks::{CloneRequests, NoHints};
use super::{Retry, RetryPolicy, Settings};
use crate::config::ConfigError;
use crate::outcome::ErrorsAsFailures;

/// Retries failed calls of the services it wraps, per a [`RetryPolicy`]; a [`Layer`]
/// producing [`Retry`]. Every service it wraps shares the policy's budget.
#[derive(Clone)]
pub struct RetryLayer<C = ErrorsAsFailures, R = CloneRequests, H = NoHints> {
    settings: Arc<Settings>,
    classify: C,
    requests: R,
    responses: H,
}

impl<C, R, H> RetryLayer<C, R, H> {
    /// A layer applying `policy`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `max_attempts` is 0 or above 100, the backoff's base
    /// exceeds its max or its factor is below 1, or `max_elapsed` is zero or longer
    /// than a day. Budgets are checked by [`Budget::new`](super::Budget::new).
    pub fn new(policy: RetryPolicy<C, R, H>) -> Result<Self, ConfigError> {
        policy.check()?;
        Ok(Self {
            settings: Arc::new(Settings::new(&policy)),
            classify: policy.classify,
            requests: policy.requests,
            responses: policy.responses,
        })
    }
}

impl<C, R, H> fmt::Debug for RetryLayer<C, R, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("settings", &self.settings)
            .field("retry_if", &std::any::type_name::<C>())
            .finish()
    }
}

impl<S, C: Clone, R: Clone, H: Clone> Layer<S> for RetryLayer<C, R, H> {
    type Service = Retry<S, C, R, H>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_parts(
            inner,
            self.settings.clone(),
            self.classify.clone(),
            self.requests.clone(),
            self.responses.clone(),
        )
    }
}
