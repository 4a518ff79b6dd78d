//! Each thread's part of a breaker: the counters only that thread writes, and the
//! counted reference to the shared state its calls carry.

use std::sync::Arc;

use super::machine::Shared;
use super::recorder::TIMED;
use crate::stripe::bump;
use crate::sync::atomic::{AtomicU64, Ordering::Relaxed};
use crate::Outcome;

/// One thread's part of a breaker: the counters of its calls, and the counted
/// reference to the shared state its response futures carry.
///
/// Only the thread holding slot `owner` writes `counters`, with a plain load and
/// store. A call finished on another thread (a future moved between the workers of a
/// runtime) counts in the shared overflow stripe instead.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Shard {
    pub(crate) shared: Arc<Shared>,
    /// The thread slot that owns `counters`; [`NO_OWNER`] for the shard of threads
    /// beyond the breaker's slots.
    pub(super) owner: usize,
    /// `Shared::time_end` as the [`TIMED`] bit of a recorder's tag (or 0), and whether
    /// a call's start must be timed: copies on the line a call touches anyway.
    pub(super) timed: u64,
    pub(super) time_start: bool,
    pub(super) counters: Counters,
}

/// The owner of the overflow shard: never a thread's slot, nor the `usize::MAX` of a
/// thread whose thread-locals are gone.
pub(super) const NO_OWNER: usize = usize::MAX - 1;

impl Shard {
    pub(super) fn new(shared: &Arc<Shared>, owner: usize) -> Self {
        Self {
            shared: shared.clone(),
            owner,
            timed: if shared.time_end { TIMED } else { 0 },
            time_start: shared.slow_threshold.is_some(),
            counters: Counters::default(),
        }
    }

    /// The counters a call finished by the thread in `slot` adds to, and whether that
    /// thread is their only writer.
    #[inline(always)]
    pub(super) fn counters(&self, slot: usize) -> (&Counters, bool) {
        if self.owner == slot {
            (&self.counters, true)
        } else {
            (&self.shared.overflow, false)
        }
    }

    /// Counts an outcome finished by the thread in `slot`.
    #[inline(always)]
    pub(super) fn count(&self, slot: usize, outcome: Outcome, slow: bool) {
        let (c, owned) = self.counters(slot);
        bump(c.of(outcome), owned);
        if slow {
            bump(&c.slow, owned);
        }
    }
}

/// Cumulative counters: one set per shard, and one shared overflow set.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) successes: AtomicU64,
    pub(super) failures: AtomicU64,
    pub(super) ignored: AtomicU64,
    pub(super) slow: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) shed: AtomicU64,
}

impl Counters {
    /// The counter of `outcome`.
    #[inline(always)]
    pub(super) fn of(&self, outcome: Outcome) -> &AtomicU64 {
        match outcome {
            Outcome::Success => &self.successes,
            Outcome::Failure => &self.failures,
            Outcome::Ignored => &self.ignored,
        }
    }

    pub(super) fn add_to(&self, c: Counts) -> Counts {
        Counts {
            successes: c.successes + self.successes.load(Relaxed),
            failures: c.failures + self.failures.load(Relaxed),
            ignored: c.ignored + self.ignored.load(Relaxed),
            slow: c.slow + self.slow.load(Relaxed),
            rejected: c.rejected + self.rejected.load(Relaxed),
            shed: c.shed + self.shed.load(Relaxed),
        }
    }
}

/// Cumulative totals summed over the shards and the overflow counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) successes: u64,
    pub(crate) failures: u64,
    pub(crate) ignored: u64,
    pub(crate) slow: u64,
    pub(crate) rejected: u64,
    pub(crate) shed: u64,
}
