//! Error types: [`Open`], the rejection of a call by an open breaker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The breaker rejected the call without calling the inner service.
///
/// Returned (boxed in a [`BoxError`](crate::BoxError)) by a
/// [`BreakerService`](super::BreakerService) while its breaker is open, half-open with
/// every trial taken, or forced open. Downcast to read it:
///
/// ```
/// # use std::time::Duration;
/// # use steadfast::breaker::error::Open;
/// # fn handle(err: steadfast::BoxError) {
/// if let Some(open) = err.downcast_ref::<Open>() {
///     println!("{} is down; try again in {:?}", open.breaker(), open.retry_after());
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    breaker: Arc<str>,
    retry_after: Option<Duration>,
}

impl Open {
    pub(crate) fn new(breaker: Arc<str>, retry_after: Option<Duration>) -> Self {
        Self {
            breaker,
            retry_after,
        }
    }

    /// The name of the breaker that rejected the call.
    pub fn breaker(&self) -> &str {
        &self.breaker
    }

    /// How long until the breaker lets a trial call through: the rest of its open
    /// delay, or under a watchdog, its estimate of when passing probes could close the
    /// breaker. `None` when that is unknown: forced open, or half-open with every
    /// trial taken (try again soon).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker `{}` is open", self.breaker)?;
        if let Some(after) = self.retry_after {
            // Whole milliseconds, rounded up: the exact nanoseconds are noise here.
            let ms = after.as_nanos().div_ceil(1_000_000);
            write!(f, "; retry after {:?}", Duration::from_millis(ms as u64))?;
        }
        Ok(())
    }
}

impl std::error::Error for Open {}
