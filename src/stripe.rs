//! Thread slots and thread-owned counters.
//!
//! A counter written by every call from several threads is a cache line bouncing
//! between cores. Striping counters by thread removes that; and a stripe that only one
//! thread ever writes needs no read-modify-write at all, a plain load and store. Thread
//! slots are small numbers unique among live threads, reused after a thread exits, so a
//! fixed array of stripes covers every thread of a typical runtime; threads beyond it
//! share one last stripe updated with `fetch_add`.

use crate::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Adds one to a counter; `owned` when only this thread ever writes it.
#[inline(always)]
pub(crate) fn bump(counter: &AtomicU64, owned: bool) {
    if owned {
        counter.store(counter.load(Relaxed) + 1, Relaxed);
    } else {
        counter.fetch_add(1, Relaxed);
    }
}

/// A numbering of thread slots. Each user that keeps its own thread-local slot takes
/// it from its own numbering, so that every numbering stays dense (a thread holding a
/// slot in two numberings would otherwise leave a gap in each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    /// This module's slot: retry budgets and handle spreading.
    General = 0,
    /// The breaker's per-thread state (`breaker::local`).
    Breaker = 1,
}

const POOLS: usize = 2;

/// A thread slot: a small number unique among the live threads holding one from the
/// same [`Pool`]. Slots are reused after a thread exits, so they stay dense. The mutex
/// hand-over on exit orders the old thread's last counter stores before the new
/// holder's first load.
#[derive(Debug)]
pub(crate) struct ThreadSlot {
    pool: Pool,
    slot: usize,
}

#[cfg(not(steadfast_loom))]
mod slots {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::{Mutex, PoisonError};

    use super::POOLS;

    static FREE_SLOTS: [Mutex<Vec<usize>>; POOLS] =
        [Mutex::new(Vec::new()), Mutex::new(Vec::new())];
    static NEXT_SLOT: [AtomicUsize; POOLS] = [AtomicUsize::new(0), AtomicUsize::new(0)];

    pub(super) fn acquire(pool: usize) -> usize {
        let reused = FREE_SLOTS[pool]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        reused.unwrap_or_else(|| NEXT_SLOT[pool].fetch_add(1, Relaxed))
    }

    pub(super) fn release(pool: usize, slot: usize) {
        FREE_SLOTS[pool]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot);
    }
}

/// Under loom: a fresh slot per model thread, numbered anew in each execution (loom's
/// statics live for one execution). Slots are not reused, so a model never sees the
/// hand-over of a slot between two threads.
#[cfg(steadfast_loom)]
mod slots {
    use crate::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    loom::lazy_static! {
        static ref NEXT_SLOT: [AtomicUsize; super::POOLS] = [AtomicUsize::new(0), AtomicUsize::new(0)];
    }

    pub(super) fn acquire(pool: usize) -> usize {
        NEXT_SLOT[pool].fetch_add(1, Relaxed)
    }

    pub(super) fn release(_pool: usize, _slot: usize) {}
}

impl ThreadSlot {
    /// Takes the lowest free slot of `pool`, for the calling thread to keep in a
    /// thread-local until it exits.
    pub(crate) fn acquire(pool: Pool) -> Self {
        ThreadSlot {
            pool,
            slot: slots::acquire(pool as usize),
        }
    }

    /// The slot's number.
    #[inline(always)]
    pub(crate) fn get(&self) -> usize {
        self.slot
    }
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        slots::release(self.pool as usize, self.slot);
    }
}

crate::sync::thread_local! {
    static SLOT: ThreadSlot = ThreadSlot::acquire(Pool::General);
}

/// The machine's parallelism, for sizing stripe arrays (4 if unknown); asked of the
/// OS once per process (`available_parallelism` reads cgroup files on Linux, which a
/// keyed breaker making a breaker per new key would otherwise do per key).
pub(crate) fn parallelism() -> usize {
    static PARALLELISM: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PARALLELISM.get_or_init(|| std::thread::available_parallelism().map_or(4, |n| n.get()))
}

/// This thread's stripe among `len`: its own (`true`: only this thread writes it)
/// when its slot is below `len - 1`, else the last one, shared (`false`).
#[inline]
pub(crate) fn pick(len: usize) -> (usize, bool) {
    stripe_of(thread_slot(), len)
}

/// [`pick`] for the thread holding `slot`.
#[inline]
pub(crate) fn stripe_of(slot: usize, len: usize) -> (usize, bool) {
    let last = len - 1;
    if slot < last {
        (slot, true)
    } else {
        (last, false)
    }
}

/// This thread's handle among `len` (a power of two): threads spread over handles
/// so that they rarely share a refcount.
#[inline]
pub(crate) fn handle(len: usize) -> usize {
    thread_slot() & (len - 1)
}

/// This thread's slot in the [`Pool::General`] numbering; `usize::MAX` while
/// thread-locals are being torn down.
#[inline]
pub(crate) fn thread_slot() -> usize {
    SLOT.try_with(ThreadSlot::get).unwrap_or(usize::MAX)
}

// --- stamped counters ----------------------------------------------------------------------

/// Bits of a stamped counter holding the count; the rest hold the stamp (a tick).
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const STAMP_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;
/// A stamped counter stops counting this far below its limit, so concurrent adds that
/// passed the check can never carry into the stamp: it saturates instead of wrapping.
pub(crate) const SATURATED: u64 = COUNT_MASK - 4096;
/// A count from which a window's bucket of calls takes no more failures: below where
/// [`bump_owned`]'s turns hold a count that reached the bound, so that failures stop
/// counting when calls do and a full bucket keeps the failure rate of the calls it
/// holds.
pub(crate) const FULL: u64 = SATURATED - 1024;

/// A tick as stored in a stamped counter.
#[inline]
pub(crate) fn stamp(tick: u64) -> u64 {
    tick & STAMP_MASK
}

/// A stamped counter that has never counted: count 0, and a stamp older than any
/// tick a window reaches, so that its first add starts it over (see
/// [`add_stamped`]'s return).
pub(crate) const NEVER: u64 = STAMP_MASK << COUNT_BITS;

/// Adds one to a counter stamped with `tick`: counts if the stamp is `tick`, starts
/// over at one if it is older, and drops the add if it is newer (a late add for a
/// bucket already recycled). `owned` when only this thread writes the counter.
/// Whether this add started the counter over.
#[inline]
pub(crate) fn bump_stamped(counter: &AtomicU64, tick: u64, owned: bool) -> bool {
    add_stamped(counter, tick, 1, owned)
}

/// [`bump_stamped`] by `n` (at most 4096, the margin below saturation).
#[inline]
pub(crate) fn add_stamped(counter: &AtomicU64, tick: u64, n: u64, owned: bool) -> bool {
    add_below(counter, tick, n, owned, SATURATED).unwrap_or(false)
}

/// [`bump_stamped`] for a window's bucket of calls, for a failed or slow call: `None`,
/// counting nothing, when the bucket holds [`FULL`] calls of `tick` (then the caller
/// counts the failure nowhere either), else whether this add started it over.
#[inline]
pub(crate) fn bump_unless_full(counter: &AtomicU64, tick: u64, owned: bool) -> Option<bool> {
    add_below(counter, tick, 1, owned, FULL)
}

/// [`add_stamped`], counting nothing (`None`) when the count of `tick` is `limit` or
/// more.
#[inline]
fn add_below(counter: &AtomicU64, tick: u64, n: u64, owned: bool, limit: u64) -> Option<bool> {
    let tick = stamp(tick);
    let n = n.min(4096);
    let mut current = counter.load(Relaxed);
    loop {
        let age = tick.wrapping_sub(current >> COUNT_BITS) & STAMP_MASK;
        let next = if age == 0 {
            if current & COUNT_MASK >= limit {
                return None;
            }
            if !owned {
                counter.fetch_add(n, Relaxed);
                return Some(false);
            }
            current + n
        } else if age < STAMP_MASK / 2 {
            tick << COUNT_BITS | n
        } else {
            return Some(false);
        };
        if owned {
            counter.store(next, Relaxed);
            return Some(age != 0);
        }
        match counter.compare_exchange_weak(current, next, Relaxed, Relaxed) {
            Ok(_) => return Some(age != 0),
            Err(actual) => current = actual,
        }
    }
}

/// Adds one to a counter only this thread writes, if its stamp is `tick` (a tick as
/// [`stamp`] gives it); whether the count is now a multiple of `every` (a power of
/// two, at most 4096): the caller's turn to do what it does every `every` calls.
/// `None`, counting nothing, for any other stamp (the caller counts with
/// [`bump_stamped`]).
///
/// It reads no saturation bound on the way: an add that brings the count to a multiple
/// of `every` within `every` of [`SATURATED`] takes it back by `every` instead, so a
/// count that reached the bound stays within `every` of it, as [`bump_stamped`]'s does,
/// and never carries into the stamp.
#[inline(always)]
pub(crate) fn bump_owned(counter: &AtomicU64, tick: u64, every: u64) -> Option<bool> {
    debug_assert_eq!(tick, stamp(tick));
    let current = counter.load(Relaxed);
    if current >> COUNT_BITS != tick {
        return None;
    }
    let next = current + 1;
    if next % every == 0 {
        return Some(turn(counter, next, every));
    }
    counter.store(next, Relaxed);
    Some(false)
}

/// Stores `next`, a count at a turn of [`bump_owned`], taken back by `every` near the
/// bound.
#[cold]
#[inline(never)]
fn turn(counter: &AtomicU64, next: u64, every: u64) -> bool {
    let next = if next & COUNT_MASK > SATURATED - every {
        next - every
    } else {
        next
    };
    counter.store(next, Relaxed);
    true
}

/// The count of a stamped counter if its stamp is among the `span` ticks up to `tick`.
#[inline]
pub(crate) fn live_count(counter: &AtomicU64, tick: u64, span: u64) -> u64 {
    let v = counter.load(Relaxed);
    let age = stamp(tick).wrapping_sub(v >> COUNT_BITS) & STAMP_MASK;
    if age < span {
        v & COUNT_MASK
    } else {
        0
    }
}

/// The count of a stamped counter if its stamp is exactly `age` ticks before `tick`,
/// else 0.
#[inline]
pub(crate) fn count_aged(counter: &AtomicU64, tick: u64, age: u64) -> u64 {
    let v = counter.load(Relaxed);
    if stamp(tick).wrapping_sub(v >> COUNT_BITS) & STAMP_MASK == age {
        v & COUNT_MASK
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_counters_count_recycle_and_ignore_late_adds() {
        for owned in [true, false] {
            let c = AtomicU64::new(0);
            bump_stamped(&c, 5, owned);
            bump_stamped(&c, 5, owned);
            assert_eq!(live_count(&c, 5, 1), 2);
            assert_eq!(live_count(&c, 14, 10), 2);
            assert_eq!(live_count(&c, 15, 10), 0);
            bump_stamped(&c, 15, owned);
            assert_eq!(live_count(&c, 15, 1), 1);
            // A late add for tick 5 must not wipe tick 15's count.
            bump_stamped(&c, 5, owned);
            assert_eq!(live_count(&c, 15, 1), 1);
            c.store(stamp(15) << COUNT_BITS | SATURATED, Relaxed);
            bump_stamped(&c, 15, owned);
            assert_eq!(live_count(&c, 15, 1), SATURATED);
        }
    }

    #[test]
    fn an_owned_counter_counts_its_own_tick_and_says_whose_turn() {
        let c = AtomicU64::new(NEVER);
        // Not yet stamped 5: nothing counted.
        assert_eq!(bump_owned(&c, 5, 4), None);
        assert_eq!(live_count(&c, 5, 1), 0);
        bump_stamped(&c, 5, true);
        let turns: Vec<_> = (0..8).map(|_| bump_owned(&c, 5, 4).unwrap()).collect();
        // Counts 2 to 9: the turns are at 4 and 8.
        assert_eq!(
            turns,
            [false, false, true, false, false, false, true, false]
        );
        assert_eq!(live_count(&c, 5, 1), 9);
        // Another tick's counter is left alone.
        assert_eq!(bump_owned(&c, 6, 4), None);
        assert_eq!(live_count(&c, 5, 1), 9);
        // Near the bound a turn steps back instead of forward, and the count stays
        // within `every` of it, below the stamp.
        let every = 256;
        let top = SATURATED - SATURATED % every;
        c.store(stamp(5) << COUNT_BITS | (top - 1), Relaxed);
        assert_eq!(bump_owned(&c, 5, every), Some(true));
        assert_eq!(live_count(&c, 5, 1), top - every);
        c.store(stamp(5) << COUNT_BITS | SATURATED, Relaxed);
        for _ in 0..10 * every {
            bump_owned(&c, 5, every).unwrap();
            let count = live_count(&c, 5, 1);
            assert!(
                count > SATURATED - every && count < SATURATED + every,
                "{count}"
            );
        }
    }

    #[test]
    fn live_threads_hold_distinct_slots() {
        // Owned stripes are written with plain stores: two live threads must never
        // share a slot.
        const THREADS: usize = 32;
        let barrier = std::sync::Barrier::new(THREADS);
        let slots: Vec<usize> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    scope.spawn(|| {
                        let slot = thread_slot();
                        // Every thread holds its slot until all have taken theirs.
                        barrier.wait();
                        slot
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let distinct: std::collections::HashSet<_> = slots.iter().collect();
        assert_eq!(distinct.len(), THREADS, "{slots:?}");
        assert!(!slots.contains(&usize::MAX), "{slots:?}");
    }

    #[test]
    fn an_exited_threads_slot_is_given_back() {
        // Threads one after another recycle a few slots (other tests' threads may
        // take some meanwhile); without the hand-back each would take a new one.
        const THREADS: usize = 200;
        let slots: std::collections::HashSet<usize> = (0..THREADS)
            .map(|_| std::thread::spawn(thread_slot).join().unwrap())
            .collect();
        assert!(slots.len() < THREADS / 2, "{} distinct slots", slots.len());
    }
}
