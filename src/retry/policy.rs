use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::hooks::{CloneRequests, NoHints};
use super::Budget;
use crate::backoff::{Backoff, Jitter};
use crate::config::{check_duration, ConfigError};
use crate::outcome::ErrorsAsFailures;

/// Attempts made by default: the first call and two retries.
#[doc(hidden)]
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The default delays: 50 ms doubling to 2 s, full jitter.
#[doc(hidden)]
pub const DEFAULT_BACKOFF: Backoff =
    Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2)).jitter(Jitter::Full);
/// The default budget's ratio: retries up to 10% of requests (the Google SRE book's
/// per-client retry budget) ...
#[doc(hidden)]
pub const DEFAULT_BUDGET_RATIO: f64 = 0.1;
/// ... plus this many a second ...
#[doc(hidden)]
pub const DEFAULT_BUDGET_MIN_PER_SEC: u32 = 10;
/// ... with credit kept this long (see [`Budget::new`]).
#[doc(hidden)]
pub const DEFAULT_BUDGET_TTL: Duration = Duration::from_secs(10);
const MAX_ATTEMPTS: u32 = 100;

/// When and how often to retry; given to [`RetryLayer::new`](super::RetryLayer::new).
///
/// A retry is made only when every limit allows it: the result is classified as a
/// [`Failure`](crate::Outcome::Failure) by [`retry_if`](Self::retry_if) (and is not a
/// breaker [`Open`](crate::breaker::error::Open) rejection), fewer than
/// [`max_attempts`](Self::max_attempts) calls were made, the next delay ends within
/// [`max_elapsed`](Self::max_elapsed), and the [`budget`](Self::budget) has a retry
/// to give. Otherwise the last result is returned as it is.
///
/// # Defaults
///
/// - `max_attempts`: 3 (the first call and two retries);
/// - `backoff`: 50 ms doubling to 2 s, full jitter (read it with
///   [`get_backoff`](Self::get_backoff) to build on it);
/// - no `max_elapsed`;
/// - a budget of 10% of requests plus 10 retries a second, credit living 10 s (a new
///   one per `RetryPolicy::new()`, shared by every clone of the layer);
/// - every `Err` retried ([`ErrorsAsFailures`]); requests cloned
///   ([`CloneRequests`]); no hints read from responses ([`NoHints`]).
///
/// ```
/// use std::time::Duration;
/// use steadfast::backoff::Backoff;
/// use steadfast::retry::{Budget, RetryLayer, RetryPolicy};
///
/// let policy = RetryPolicy::new()
///     .max_attempts(4)
///     .backoff(Backoff::exponential(Duration::from_millis(20), Duration::from_secs(1)))
///     .max_elapsed(Duration::from_secs(3))
///     .budget(Budget::new(0.1, 5, Duration::from_secs(10))?);
/// let layer = RetryLayer::new(policy)?;
/// # let _ = layer;
/// # Ok::<(), steadfast::ConfigError>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct RetryPolicy<C = ErrorsAsFailures, R = CloneRequests, H = NoHints> {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) max_elapsed: Option<Duration>,
    pub(crate) budget: Budget,
    pub(crate) classify: C,
    pub(crate) requests: R,
    pub(crate) responses: H,
    /// The policy's name in metrics (feature `metrics`).
    pub(crate) name: Arc<str>,
}

impl RetryPolicy {
    /// The default policy (see the type docs).
    pub fn new() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
            max_elapsed: None,
            budget: Budget::checked(
                DEFAULT_BUDGET_RATIO,
                DEFAULT_BUDGET_MIN_PER_SEC,
                DEFAULT_BUDGET_TTL,
            ),
            classify: ErrorsAsFailures,
            requests: CloneRequests,
            responses: NoHints,
            name: Arc::from("retry"),
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl<C, R, H> RetryPolicy<C, R, H> {
    /// Calls made at most, the first one included (1 to 100; default 3). `1` never
    /// retries.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The delay before each retry: the `n`th delay before the `n`th retry (default
    /// 50 ms doubling to 2 s, full jitter).
    ///
    /// Each request that retries draws its own jitter: with a seeded backoff, the
    /// `k`th request of a layer to retry uses [`Backoff::iter_stream`]`(k)` (from 0), so
    /// runs repeat exactly when requests retry in the same order, and concurrent
    /// requests still spread their retries instead of retrying in lockstep.
    ///
    /// A zero delay retries at once, without a timer; any other delay needs a tokio
    /// runtime, without which the retry is not made (see the
    /// [module docs](super#without-a-tokio-runtime)).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// A retry whose delay would end more than `max` after the request started is not
    /// made: the last result is returned at once (default: no limit). Reads the clock
    /// once per request.
    pub fn max_elapsed(mut self, max: Duration) -> Self {
        self.max_elapsed = Some(max);
        self
    }

    /// The policy's name: the `policy` label of its retry metrics (feature `metrics`;
    /// default `"retry"`). Name a policy after the downstream it retries.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The budget retries are drawn from (see [`Budget`]); share one budget between
    /// layers by passing clones of it.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// Decides which results are retried: [`Failure`](crate::Outcome::Failure) is
    /// retried; `Success` and `Ignored` are returned as they are. A breaker `Open`
    /// rejection is never retried, whatever the classifier says.
    pub fn retry_if<C2>(self, classify: C2) -> RetryPolicy<C2, R, H> {
        RetryPolicy {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            max_elapsed: self.max_elapsed,
            name: self.name,
            budget: self.budget,
            classify,
            requests: self.requests,
            responses: self.responses,
        }
    }

    /// How requests are copied for retries (default [`CloneRequests`]); see
    /// [`RetryRequest`](super::RetryRequest).
    pub fn requests<R2>(self, requests: R2) -> RetryPolicy<C, R2, H> {
        RetryPolicy {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            max_elapsed: self.max_elapsed,
            name: self.name,
            budget: self.budget,
            classify: self.classify,
            requests,
            responses: self.responses,
        }
    }

    /// What results say about retrying (default [`NoHints`]); see
    /// [`RetryResponse`](super::RetryResponse).
    pub fn responses<H2>(self, responses: H2) -> RetryPolicy<C, R, H2> {
        RetryPolicy {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            max_elapsed: self.max_elapsed,
            name: self.name,
            budget: self.budget,
            classify: self.classify,
            requests: self.requests,
            responses,
        }
    }

    /// The policy's budget, for reading its balance.
    pub fn get_budget(&self) -> &Budget {
        &self.budget
    }

    /// The policy's backoff: the default one, to build on, or the one set.
    ///
    /// ```
    /// use steadfast::retry::RetryPolicy;
    /// let seeded = RetryPolicy::new().get_backoff().seed(7);
    /// let policy = RetryPolicy::new().backoff(seeded);
    /// # let _ = policy;
    /// ```
    pub fn get_backoff(&self) -> Backoff {
        self.backoff
    }

    /// The most attempts a request may take.
    pub fn get_max_attempts(&self) -> u32 {
        self.max_attempts
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new(
                "max_attempts",
                "must be at least 1 (the first call counts)",
            ));
        }
        if self.max_attempts > MAX_ATTEMPTS {
            return Err(ConfigError::new(
                "max_attempts",
                format!("must be at most {MAX_ATTEMPTS}, got {}", self.max_attempts),
            ));
        }
        self.backoff.validate("backoff", true)?;
        if let Some(max) = self.max_elapsed {
            check_duration("max_elapsed", max)?;
        }
        Ok(())
    }
}

impl<C, R, H> fmt::Debug for RetryPolicy<C, R, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("max_elapsed", &self.max_elapsed)
            .field("budget", &self.budget)
            .field("name", &self.name)
            .field("retry_if", &std::any::type_name::<C>())
            .field("requests", &std::any::type_name::<R>())
            .field("responses", &std::any::type_name::<H>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_config_errors() {
        let ms = Duration::from_millis;
        let cases = [
            (RetryPolicy::new().max_attempts(0), "max_attempts"),
            (RetryPolicy::new().max_attempts(101), "max_attempts"),
            (
                RetryPolicy::new().backoff(Backoff::exponential(ms(10), ms(1))),
                "backoff",
            ),
            (
                RetryPolicy::new().backoff(Backoff::exponential(ms(1), ms(10)).factor(0.9)),
                "backoff",
            ),
            (
                RetryPolicy::new().max_elapsed(Duration::ZERO),
                "max_elapsed",
            ),
            (
                RetryPolicy::new().max_elapsed(Duration::from_secs(90_000)),
                "max_elapsed",
            ),
        ];
        for (policy, field) in cases {
            assert_eq!(policy.check().unwrap_err().field(), field, "{policy:?}");
        }
        assert!(RetryPolicy::new().check().is_ok());
        assert!(RetryPolicy::new().max_attempts(1).check().is_ok());
        assert!(RetryPolicy::new()
            .backoff(Backoff::constant(Duration::ZERO))
            .check()
            .is_ok());
    }
}
