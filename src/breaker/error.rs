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
    shed: bool,
}

impl Open {
    pub(crate) fn new(breaker: Arc<str>, retry_after: Option<Duration>) -> Self {
        Self {
            breaker,
            retry_after,
            shed: false,
        }
    }

    /// A call shed by adaptive throttling.
    pub(crate) fn shed(breaker: Arc<str>, retry_after: Option<Duration>) -> Self {
        Self {
            breaker,
            retry_after,
            shed: true,
        }
    }

    /// The name of the breaker that rejected the call.
    pub fn breaker(&self) -> &str {
        &self.breaker
    }

    /// When a call could next go through. The one rule, for every rejection:
    ///
    /// - open, no watchdog: the rest of the open delay;
    /// - open, a [watchdog](crate::watchdog) attached: the time to its next probe (while
    ///   a probe runs, one interval or its timeout if shorter), whatever the open
    ///   delay;
    /// - shed by adaptive throttling: a tenth of the breaker's time window (250 ms with
    ///   the defaults), the step at which the shedding probability moves;
    /// - never zero: at least 1 ms (a deadline just passed means "soon", not "now"), and
    ///   at most one day;
    /// - `None` when no time can be given: forced open (until someone resets it),
    ///   half-open with every trial taken (try again soon), or, with several watchdogs
    ///   on one breaker, after one of them ends and until another's next probe is
    ///   scheduled.
    ///
    /// The HTTP `Retry-After` header is this value rounded up to whole seconds (so at
    /// least 1), and is left out when it is `None`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether adaptive throttling shed the call (the breaker is closed, and sheds a
    /// share of the calls); see
    /// [`BreakerBuilder::adaptive_throttling`](super::BreakerBuilder::adaptive_throttling).
    pub fn is_shed(&self) -> bool {
        self.shed
    }
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shed {
            return write!(f, "circuit breaker `{}` shed the call", self.breaker);
        }
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
