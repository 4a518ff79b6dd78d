//! Time as nanosecond counts: the breaker, its windows and the keyed map keep times as
//! `u64` nanoseconds from their start, so that they fit in atomics.

use std::time::Duration;

use tokio::time::Instant;

/// A duration in nanoseconds, saturating (584 years).
#[inline]
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds from `start` to `at`; 0 if `at` is earlier. The clocks of the breaker,
/// its windows and the keyed map count this way from their start.
#[inline]
pub(crate) fn nanos_since(start: Instant, at: Instant) -> u64 {
    nanos(at.saturating_duration_since(start))
}
