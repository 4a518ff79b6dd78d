//! The one `tracing` event each transition emits.

use super::State;

/// Emits the transition event: `warn` when the breaker starts rejecting, `info` else.
pub(crate) fn transition(name: &str, from: State, to: State, reason: &'static str) {
    match to {
        State::Open | State::ForcedOpen => tracing::warn!(
            target: "steadfast::breaker",
            breaker = name,
            from = from.as_str(),
            to = to.as_str(),
            reason,
            "circuit breaker opened"
        ),
        _ => tracing::info!(
            target: "steadfast::breaker",
            breaker = name,
            from = from.as_str(),
            to = to.as_str(),
            reason,
            "circuit breaker state changed"
        ),
    }
}
