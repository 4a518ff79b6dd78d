//! The breaker's per-thread state: the thread's slot among the breaker's shards, the
//! shard its last finished call left for its next one, and where its last successes
//! in time windows fell. One thread-local, so that a closed call reads it twice at most.

use std::cell::Cell;
use std::sync::Arc;

use super::machine::Shard;
use super::window::{TickCache, TICK_CACHES};
use crate::stripe::{Pool, ThreadSlot};

/// What each thread keeps: its slot, and the breaker shard its last finished call
/// left for its next one (see [`Local::lease`]).
pub(crate) struct Local {
    slot: ThreadSlot,
    /// A breaker call must keep its breaker alive until its outcome is counted, and
    /// cloning and dropping an `Arc` for each call are two atomic read-modify-writes,
    /// more than the rest of a closed-state call. A finished call leaves its shard
    /// here and the thread's next call through the same breaker takes it back, doing
    /// neither. It holds one shard per thread, so a dropped breaker's shared state (not
    /// its watchdogs, which follow the `Breaker` handles) lives on until the thread's
    /// next call through another breaker, or its exit.
    pub(crate) lease: Cell<Option<Arc<Shard>>>,
    /// Where the thread's last successes in time windows fell (see [`TickCache`]).
    pub(crate) ticks: [Cell<TickCache>; TICK_CACHES],
}

impl Local {
    /// This thread's slot among the breakers' shards.
    #[inline(always)]
    pub(crate) fn slot(&self) -> usize {
        self.slot.get()
    }
}

crate::sync::thread_local! {
    static LOCAL: Local = Local {
        slot: ThreadSlot::acquire(Pool::Breaker),
        lease: Cell::new(None),
        ticks: Default::default(),
    };
}

/// Runs `f` with this thread's [`Local`]; `None` while thread-locals are being torn
/// down (`f` is not run then).
#[inline(always)]
pub(crate) fn with_local<R>(f: impl FnOnce(&Local) -> R) -> Option<R> {
    LOCAL.try_with(f).ok()
}

/// This thread's slot among the breakers' shards; `usize::MAX` while thread-locals
/// are being torn down.
#[inline]
pub(crate) fn thread_slot() -> usize {
    with_local(Local::slot).unwrap_or(usize::MAX)
}
