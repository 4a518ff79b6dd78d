//! [`Recovery`]: the one handle a [watchdog](crate::watchdog) holds on a breaker, with
//! the hooks by which it owns the breaker's recovery. Nothing else of the breaker's
//! state machine is visible to the watchdog.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::machine::{Core, Shared};
use super::{Breaker, Snapshot, State};

/// A watchdog's hold on a breaker: it does not keep the breaker alive (the watchdog
/// ends with the last [`Breaker`] handle).
pub(crate) struct Recovery {
    shared: Arc<Shared>,
    core: Weak<Core>,
}

impl Recovery {
    pub(crate) fn of(breaker: &Breaker) -> Self {
        Self {
            shared: breaker.shared.clone(),
            core: Arc::downgrade(&breaker.core),
        }
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    pub(crate) fn state(&self) -> State {
        self.shared.state()
    }

    pub(crate) fn trips(&self) -> u64 {
        self.shared.trips()
    }

    /// Whether every [`Breaker`] handle is gone.
    pub(crate) fn is_gone(&self) -> bool {
        self.core.strong_count() == 0
    }

    /// The breaker's figures, while it lives.
    pub(crate) fn snapshot(&self) -> Option<Snapshot> {
        self.core
            .upgrade()
            .map(|core| Breaker::from_core(core).snapshot())
    }

    /// A receiver that closes when the last handle of `breaker` is dropped.
    pub(crate) fn alive(breaker: &Breaker) -> watch::Receiver<()> {
        breaker.core.alive()
    }

    /// A watchdog starts owning recovery: an open breaker waits for it, and after a
    /// trip expects its first probe `interval` later.
    pub(crate) fn attach(&self, interval: Duration) {
        self.shared.attach_watchdog(interval);
    }

    /// A watchdog ended: with none left, the breaker recovers on its own timer.
    pub(crate) fn detach(&self) {
        self.shared.detach_watchdog();
    }

    /// When the next probe is due (or a running probe's answer expected), for
    /// rejections' `retry_after`; `None` when unknown.
    pub(crate) fn set_next_probe(&self, at: Option<Instant>) {
        self.shared.set_watchdog_eta(at);
    }

    /// Takes the breaker's probe lock; `false` if another watchdog is probing.
    pub(crate) fn try_lock_probe(&self) -> bool {
        self.shared.try_lock_probe()
    }

    pub(crate) fn unlock_probe(&self) {
        self.shared.unlock_probe();
    }

    /// Reports (or withdraws) one watchdog's escalation.
    pub(crate) fn set_escalated(&self, escalated: bool) {
        self.shared.set_escalated(escalated);
    }

    pub(crate) fn is_escalated(&self) -> bool {
        self.shared.is_escalated()
    }

    /// Probes passed: an open or half-open breaker closes.
    pub(crate) fn close(&self) -> bool {
        self.shared.close_by_probe()
    }

    /// Probes of a closed breaker failed: it opens.
    pub(crate) fn open(&self) -> bool {
        self.shared.open_by_probe()
    }
}

impl fmt::Debug for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recovery")
            .field("breaker", &self.shared.name)
            .finish_non_exhaustive()
    }
}
