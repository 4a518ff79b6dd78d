//! The sliding windows behind the rate rules. Both are lock-free and O(1) per call.
//!
//! A [`CountWindow`] holds the last `size` counted calls: a ring of bits in which each
//! call swaps its own bit into the slot of the call `size` places before it, so the
//! failure count always equals the number of failure bits in the ring, whatever the
//! interleaving of threads. Once the window is full, a thread takes its positions in
//! blocks of `size / 4` (1 to 64) from the shared counter: for one thread the window
//! is exactly its last `size` calls; with several, it holds `size` calls from among
//! the last `size + (block - 1) * (threads - 1)`, as each thread's unused positions
//! keep the calls of a lap before. A block's bits are read once, when it is taken, so
//! that a success over a success reads none of them: a failure counted into the
//! block's positions after that (by a thread still on a block of the lap before)
//! stays one lap longer.
//!
//! A [`TimeWindow`] holds the calls of the last `T` in ten buckets of `T / 10` each.
//! Every bucket counter packs the bucket's tick with its count in one `AtomicU64`, so a
//! stale bucket is recycled by the same write that counts the new call, and counts of
//! calls are kept per thread. Memory is fixed whatever the call rate.

use std::cell::Cell;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::local::with_local;
use crate::nanos::{nanos, nanos_since};
use crate::stripe::{
    bump_owned, bump_stamped, bump_unless_full, count_aged, parallelism, stamp, stripe_of, NEVER,
};
use crate::sync::atomic::{
    fence, AtomicBool, AtomicI64, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use crate::sync::Mutex;

/// Calls, failures and slow calls currently in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
    /// Calls shed by adaptive throttling (a time window only; not in `calls`).
    pub(crate) shed: u64,
}

/// Pads a value to its own cache line, so a counter written on every call does not
/// slow down readers of its neighbours.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[derive(Debug)]
pub(crate) struct CountWindow {
    size: u64,
    /// Positions handed out so far (the window holds the last `size` of them).
    pos: CachePadded<AtomicU64>,
    fail_bits: Bits,
    slow_bits: Option<Bits>,
    /// Written by every failure (and every call that pushes one out), read by none
    /// but them and [`settle`](Self::settle): on a line of its own, so that the
    /// fields above and `quiet`, read by every call and written only by a reset (or
    /// when the window goes quiet), are not moved between cores with it.
    tally: CachePadded<Tally>,
    /// Positions a thread takes at once from `pos` once the window is full, and each
    /// thread slot's block; none for windows too small to share out.
    block: u64,
    blocks: Box<[CachePadded<Block>]>,
    /// Changed by every reset: blocks taken before it are void.
    generation: AtomicU64,
    /// The window is full and holds no failure or slow call: a success takes no
    /// position (see [`record_success`](Self::record_success)). Read by every success,
    /// written only when that changes (see [`settle`](Self::settle)), so that a thread
    /// counting failures does not move the line of every other thread's check.
    quiet: AtomicBool,
}

/// Positions of a full count window taken by one thread at once: with failures in the
/// window every call takes a position, and taking each one from the shared counter
/// moved its cache line between cores on every call. Only the thread owning the slot
/// reads or writes it.
///
/// `word` is one word, so that a call takes its position with one load and one
/// store: the low [`LEFT_BITS`] hold the positions of the block not yet used, the next
/// [`INDEX_BITS_OF_BLOCK`] the index in the window of the block's next position, and
/// the high 32 the low half of the window's `generation` when the block was taken.
///
/// `set` holds, for the positions not yet used (the next one's in bit 0), whether the
/// call a lap before left a failure or slow bit there, read from the window's bits
/// when the block was taken: a success over a success (nearly every one) then reads
/// none of the bits, which every failure writes, and one thread's calls take fewer
/// instructions. A bit set late, after the block was taken, by a thread still using
/// a block of the lap before (see the module docs), stays one lap longer: as though
/// its call came after this thread's.
#[derive(Debug, Default)]
struct Block {
    word: AtomicU64,
    set: AtomicU64,
}

/// Bits of a [`Block`] holding the positions left (at most 63).
const LEFT_BITS: u32 = 8;
/// Bits of a [`Block`] holding an index in the window.
const INDEX_BITS_OF_BLOCK: u32 = 24;
const _: () = assert!(super::builder::MAX_COUNT_WINDOW as u64 <= 1 << INDEX_BITS_OF_BLOCK);
const _: () = assert!(64 <= 1 << LEFT_BITS);

impl Block {
    fn pack(generation: u64, index: u64, left: u64) -> u64 {
        (generation << 32) | (index << LEFT_BITS) | left
    }
}

/// The positions in a block: a quarter of the window, 1 to 64 (1: no blocks). A
/// sixteenth took a block every sixth call of a window of 100, and the shared counter
/// with it, which cost a thread alone 0.9 ns a call and two threads with 10% failing
/// about two fifths of their time (docs/performance.md, seventh part).
fn block_size(size: u64) -> u64 {
    (size / 4).clamp(1, 64)
}

/// The failures and slow calls whose bits are set in a count window.
#[derive(Debug, Default)]
struct Tally {
    failures: AtomicI64,
    slow: AtomicI64,
}

/// Words of padding on each side of a count window's bits: 128 bytes.
const PAD_WORDS: usize = 16;

/// A count window's bits, one per position, with [`PAD_WORDS`] unused words on each
/// side, so that no cache line (or pair of lines, which some cores fetch together)
/// holding them holds anything else: a 16-byte allocation shares its line with
/// whatever the allocator put beside it, perhaps written by every call of a thread.
#[derive(Debug)]
struct Bits(Box<[AtomicU64]>);

impl Bits {
    fn new(size: u32) -> Self {
        let words = (size as usize).div_ceil(64) + 2 * PAD_WORDS;
        Self((0..words).map(|_| AtomicU64::new(0)).collect())
    }

    /// The word holding the bit of `index`, and the bit.
    #[inline(always)]
    fn of(&self, index: u64) -> (&AtomicU64, u64) {
        (
            &self.0[PAD_WORDS + (index / 64) as usize],
            1 << (index % 64),
        )
    }

    /// The bits of the `n` (at most 64) positions from `start` on, wrapping at `size`
    /// (the window's), the one of `start` in bit 0.
    fn run(&self, start: u64, n: u64, size: u64) -> u64 {
        let first = n.min(size - start);
        let mut bits = self.span(start, first);
        if first < n {
            bits |= self.span(0, n - first) << first;
        }
        bits
    }

    /// The bits of the `n` (1 to 64) positions from `start` on, all below the size.
    fn span(&self, start: u64, n: u64) -> u64 {
        let (word, offset) = (PAD_WORDS + (start / 64) as usize, start % 64);
        let mut bits = self.0[word].load(Relaxed) >> offset;
        if offset + n > 64 {
            bits |= self.0[word + 1].load(Relaxed) << (64 - offset);
        }
        if n < 64 {
            bits &= (1 << n) - 1;
        }
        bits
    }

    fn clear(&self) {
        for word in self.0.iter() {
            word.store(0, Relaxed);
        }
    }
}

/// Sets or clears `bit` in `word`; returns how the number of set bits changed.
#[inline]
fn put_bit(word: &AtomicU64, bit: u64, set: bool) -> i64 {
    if set {
        i64::from(word.fetch_or(bit, Relaxed) & bit == 0)
    } else if word.load(Relaxed) & bit == 0 {
        // The common case, a success over a success: no write at all.
        0
    } else {
        -i64::from(word.fetch_and(!bit, Relaxed) & bit != 0)
    }
}

impl CountWindow {
    pub(crate) fn new(size: u32, track_slow: bool) -> Self {
        let size = u64::from(size.max(1));
        let block = block_size(size);
        let blocks = if block > 1 {
            (parallelism() * 2).clamp(8, 128)
        } else {
            0
        };
        Self {
            size,
            pos: CachePadded(AtomicU64::new(0)),
            fail_bits: Bits::new(size as u32),
            slow_bits: track_slow.then(|| Bits::new(size as u32)),
            tally: CachePadded::default(),
            block,
            blocks: (0..blocks).map(|_| CachePadded::default()).collect(),
            generation: AtomicU64::new(0),
            quiet: AtomicBool::new(false),
        }
    }

    /// The index in the window of a new call's position, for the thread in `slot`:
    /// from the thread's block once the window is full, else (or for a thread without
    /// a block of its own) straight from the shared counter. With it, whether a bit
    /// may be set there (`false`: none is, see [`Block`]).
    #[inline]
    fn take_index(&self, slot: usize) -> (u64, bool, bool) {
        match self.blocks.get(slot).and_then(|b| self.next_in_block(b)) {
            Some((index, set)) => (index, set, true),
            None => {
                let (index, set) = self.take_fresh(slot);
                (index, set, false)
            }
        }
    }

    /// [`take_index`](Self::take_index) for a thread with no position left in its
    /// block (or no block): a new block once the window is full, else one position
    /// from the shared counter.
    #[inline]
    fn take_fresh(&self, slot: usize) -> (u64, bool) {
        match self.blocks.get(slot) {
            Some(block) if self.pos.load(Relaxed) >= self.size => self.take_block(block),
            _ => {
                let pos = self.pos.fetch_add(1, Relaxed);
                if pos + 1 == self.size {
                    // This call filled the window.
                    self.settle();
                }
                (pos % self.size, true)
            }
        }
    }

    /// The next position of `block` and whether a bit may be set there, if the block
    /// has one left and is not void.
    #[inline(always)]
    fn next_in_block(&self, block: &Block) -> Option<(u64, bool)> {
        let b = block.word.load(Relaxed);
        let left = b & ((1 << LEFT_BITS) - 1);
        if left == 0 {
            return None;
        }
        let generation = self.generation.load(Relaxed) as u32;
        if (b >> 32) as u32 != generation {
            return None;
        }
        let index = (b >> LEFT_BITS) & ((1 << INDEX_BITS_OF_BLOCK) - 1);
        let next = index + 1;
        let next = if next == self.size { 0 } else { next };
        block
            .word
            .store(Block::pack(u64::from(generation), next, left - 1), Relaxed);
        let set = block.set.load(Relaxed);
        if set != 0 {
            block.set.store(set >> 1, Relaxed);
        }
        Some((index, set & 1 != 0))
    }

    /// Takes a block for a thread whose block is used up (or void): its first index,
    /// and whether a bit may be set there. Until this thread's calls fill them, the
    /// block's other positions keep the calls of a lap before: for one thread, the
    /// window is still exactly its last `size` calls.
    #[cold]
    #[inline(never)]
    fn take_block(&self, block: &Block) -> (u64, bool) {
        let generation = self.generation.load(Relaxed) as u32;
        let start = self.pos.fetch_add(self.block, Relaxed) % self.size;
        let next = start + 1;
        let next = if next == self.size { 0 } else { next };
        let mut set = self.fail_bits.run(start, self.block, self.size);
        if let Some(slow_bits) = &self.slow_bits {
            set |= slow_bits.run(start, self.block, self.size);
        }
        block.set.store(set >> 1, Relaxed);
        block.word.store(
            Block::pack(u64::from(generation), next, self.block - 1),
            Relaxed,
        );
        (start, set & 1 != 0)
    }

    /// Records one counted call; returns the totals when the call could trip a rule
    /// (it failed or was slow). Out of line: a success that is not slow only gets here
    /// while the window fills or holds a failure or a slow call (see
    /// [`record_success`](Self::record_success)).
    ///
    /// The counts come back from the read-modify-writes that count the call, which
    /// see the latest values where a load may see older ones: a failure whose bit
    /// replaced an older failure's adds nothing, and a load could then miss another
    /// thread's count and skip a trip the window calls for. The position only grows
    /// until a reset (which the caller's epoch check orders before this), so a block
    /// of this generation, or a load that finds the window full, is the latest word
    /// on it; without a slow-call rule, `slow` stays zero.
    #[inline(never)]
    pub(crate) fn record(&self, failed: bool, slow: bool, slot: usize) -> Option<Totals> {
        let (index, set, full) = self.take_index(slot);
        if !(failed || slow) {
            if set {
                self.clear_at(index);
            }
            return None;
        }
        let (word, bit) = self.fail_bits.of(index);
        let delta = put_bit(word, bit, failed);
        let failures = self.tally.failures.fetch_add(delta, AcqRel) + delta;
        let slow = match &self.slow_bits {
            Some(slow_bits) => {
                let (word, bit) = slow_bits.of(index);
                let delta = put_bit(word, bit, slow);
                self.tally.slow.fetch_add(delta, AcqRel) + delta
            }
            None => 0,
        };
        // After the count's read-modify-write: see `settle`.
        if self.quiet.load(Relaxed) {
            self.settle();
        }
        let calls = if full || self.pos.load(Relaxed) >= self.size {
            self.size
        } else {
            self.pos.fetch_add(0, Relaxed).min(self.size)
        };
        Some(Totals {
            calls,
            failures: failures.max(0) as u64,
            slow: slow.max(0) as u64,
            shed: 0,
        })
    }

    /// Records one successful call (not slow).
    ///
    /// A full window with no failure or slow call in it holds only successes, and one
    /// more changes nothing in it: the call takes no position. So while no failure or
    /// slow call is about, calls from every thread only read the window, and no cache
    /// line moves between threads: a success reads only [`quiet`](Self::quiet), which
    /// failures leave alone while the window holds one. Racing a failure or a slow
    /// call, such a success counts as the older of the two.
    ///
    /// Otherwise the next position of the thread's block is taken here, inline, and
    /// its bits are cleared only if the block says one may be set (see [`Block`]).
    #[inline(always)]
    pub(crate) fn record_success(&self, slot: usize) {
        if self.quiet.load(Relaxed) {
            return;
        }
        if let Some(block) = self.blocks.get(slot) {
            if let Some((index, set)) = self.next_in_block(block) {
                if set {
                    self.clear_at(index);
                }
                return;
            }
        }
        self.take_success(slot);
    }

    /// [`record_success`](Self::record_success) once the thread's block has no
    /// position left (or while the window fills): a new position, and the failure
    /// (or slow call) it pushes out of the window, if any.
    #[inline(never)]
    fn take_success(&self, slot: usize) {
        let (index, set) = self.take_fresh(slot);
        if set {
            self.clear_at(index);
        }
    }

    /// Clears the bits at `index` for a success that is not slow: the failure (or
    /// slow call) it pushes out of the window, if any.
    #[inline(never)]
    fn clear_at(&self, index: u64) {
        let (word, bit) = self.fail_bits.of(index);
        let mut last = false;
        if put_bit(word, bit, false) != 0 {
            last |= self.tally.failures.fetch_sub(1, AcqRel) <= 1;
        }
        if let Some(slow_bits) = &self.slow_bits {
            let (word, bit) = slow_bits.of(index);
            if put_bit(word, bit, false) != 0 {
                last |= self.tally.slow.fetch_sub(1, AcqRel) <= 1;
            }
        }
        if last {
            self.settle();
        }
    }

    /// Sets [`quiet`](Self::quiet) to whether the window is full with no failure or
    /// slow call in it, after a call that may have changed that: the first failure or
    /// slow call in a quiet window, the success that pushed out the last one (or left
    /// a count below zero, see [`totals`](Self::totals)), the call that filled the
    /// window.
    ///
    /// The counts are read with read-modify-writes, the last thing in the window's
    /// order of each, and read again after `quiet` is written. A failure racing this
    /// counts with a read-modify-write and then reads `quiet`: if its count comes
    /// after the second reading here, it reads the `quiet` written here and settles
    /// in turn; if before, the reading here finds it. Either way no failure stays in
    /// a window that says it holds none (its successes would not push it out).
    #[cold]
    #[inline(never)]
    fn settle(&self) {
        let quiet = || {
            self.pos.fetch_add(0, AcqRel) >= self.size
                && self.tally.failures.fetch_add(0, AcqRel) <= 0
                && self.tally.slow.fetch_add(0, AcqRel) <= 0
        };
        let mut now = quiet();
        loop {
            self.quiet.store(now, Relaxed);
            let again = quiet();
            if again == now {
                return;
            }
            now = again;
        }
    }

    pub(crate) fn totals(&self) -> Totals {
        // A counter can be briefly below the bits it counts while another thread is
        // between its bit swap and its counter update; it is never read as negative.
        Totals {
            calls: self.pos.load(Relaxed).min(self.size),
            failures: self.tally.failures.load(Relaxed).max(0) as u64,
            slow: self.tally.slow.load(Relaxed).max(0) as u64,
            shed: 0,
        }
    }

    pub(crate) fn reset(&self) {
        self.generation.fetch_add(1, Relaxed);
        // A swap, so that a `settle` whose reading of `pos` came first is ordered
        // before the write of `quiet` below (see `settle`).
        self.pos.swap(0, AcqRel);
        self.fail_bits.clear();
        if let Some(slow_bits) = &self.slow_bits {
            slow_bits.clear();
        }
        self.tally.failures.store(0, Relaxed);
        self.tally.slow.store(0, Relaxed);
        // Not full. A `settle` reading `pos` after the swap finds it below the size.
        self.quiet.store(false, Relaxed);
    }
}

/// Number of buckets in a time window: it slides in tenths.
pub(crate) const BUCKETS: u64 = 10;
/// Buckets kept: two windows' worth, the span adaptive throttling counts over (see
/// [`TimeWindow::throttle_totals`]).
const KEPT: u64 = 2 * BUCKETS;

type Ring = [AtomicU64; KEPT as usize];

/// One thread's calls per bucket, and the tick its last success fell in.
#[derive(Debug)]
struct Stripe {
    ring: Ring,
    /// Where the tick of this stripe's last success starts, in nanoseconds since the
    /// breaker's start, and that tick: a success that ends within the same tick finds
    /// it with a subtraction and a compare instead of a 64-bit division. Only the
    /// stripe's owner reads or writes them.
    from: AtomicU64,
    tick: AtomicU64,
    /// Calls counted by the coarse clock since the stripe last checked it against the
    /// real clock (see [`Coarse`]), when threads share it; a stripe of its own thread
    /// tells its turn from its bucket's count instead.
    unchecked: AtomicU64,
}

impl Default for Stripe {
    fn default() -> Self {
        Self {
            // Never counted: a stripe's first count starts its bucket over, which is
            // when the window marks the stripe used.
            ring: std::array::from_fn(|_| AtomicU64::new(NEVER)),
            from: AtomicU64::new(0),
            tick: AtomicU64::new(0),
            unchecked: AtomicU64::new(0),
        }
    }
}

/// Words of [`TimeWindow::used`]: one bit per stripe, up to 128 stripes and the
/// shared one.
const USED_WORDS: usize = 3;

/// The tick a thread's last success in a time window fell in, with its bounds as
/// instants. A success that ends within the same tick of the same window (nearly every
/// one) finds its tick with two comparisons of instants, without the subtraction and
/// conversion that turn the instant into nanoseconds since the breaker's start; and as
/// the branch they feed is predictable, counting need not wait for the clock read.
/// Each thread keeps [`TICK_CACHES`] of them (see [`super::local::Local`]), one per
/// window id modulo that: a thread calling a few breakers in turn finds each one's.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TickCache {
    /// [`TimeWindow::id`], 0 for none: ids are never reused, so an entry cannot
    /// outlive its window and then match another one.
    window: u64,
    /// `[from, until)`: `None` while the entry only claims the window.
    bounds: Option<(Instant, Instant)>,
    tick: u64,
}

/// The [`TickCache`]s per thread.
pub(crate) const TICK_CACHES: usize = 4;

/// The source of [`TimeWindow::id`]s.
static WINDOW_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[derive(Debug)]
pub(crate) struct TimeWindow {
    /// Unique among the windows of the process.
    id: u64,
    /// The breaker's start: ticks count from it.
    start: Instant,
    /// Bucket width in nanoseconds.
    width: u64,
    /// Calls per bucket, one stripe per thread slot (see [`crate::stripe`]): every
    /// call adds to one, so two threads never share its cache line. Summed only when
    /// a failure or slow call needs the rate.
    calls: Box<[CachePadded<Stripe>]>,
    /// The stripes that have counted a call, one bit each, set when a stripe first
    /// counts in a bucket: a failure sums only these, not every thread slot's (one or
    /// two threads busy among the 129 stripes of a 64-core machine).
    used: [AtomicU64; USED_WORDS],
    /// [`SLOW_RING`] once a slow call was counted, [`SHED_RING`] once a shed one was:
    /// until then a failure does not sum those rings (a breaker without the slow-call
    /// rule or adaptive throttling never does). Set before the ring's first count,
    /// but relaxed: a failure summing at that moment may miss that one count, as it
    /// may any call counted at the same moment.
    rings: AtomicU64,
    failures: CachePadded<Ring>,
    slow: CachePadded<Ring>,
    /// Calls shed by adaptive throttling, per bucket.
    shed: CachePadded<Ring>,
    /// The totals of the buckets before the current tick, summed once per tick.
    sealed: SealCell,
    /// The window's coarse clock, and the task that advances it (aborted with the
    /// window).
    coarse: Arc<Coarse>,
    ticker: Option<AbortHandle>,
}

/// The totals of a time window's buckets from two ticks before `tick` back: over the
/// window (`BUCKETS - 2` buckets) and over the span adaptive throttling counts
/// (`KEPT - 2`). A failure needs the window's totals, and summing every thread's stripe
/// over every bucket cost thousands of instructions (more with more cores); those
/// buckets are summed once per tick instead, and each failure sums only the last two
/// ticks' buckets over the stripes. The tick before the current one stays live because
/// calls still land in it after the boundary: a coarse clock may lag the real one by
/// up to a tick (see [`Coarse`]), and a call's tick is read before it is counted.
///
/// A call counted more than a tick late (its thread descheduled for longer than a
/// bucket between reading its tick and counting) is left out of the rules until the
/// next tick's seal. Snapshots read the same totals.
#[derive(Debug, Clone, Copy)]
struct Sealed {
    tick: u64,
    window: Totals,
    kept: Totals,
}

/// Where a time window files its [`Sealed`] totals: read without a lock, so that two
/// threads failing at once do not meet on a mutex (a seal changes once per tick, a
/// read happens on every failure). A sequence lock: `seq` is odd while the one writer
/// of the moment (holding `lock`) files; a reader that finds it odd or changed after
/// reading sums the buckets itself, as it does when there is no seal for its tick.
#[derive(Debug)]
struct SealCell {
    lock: Mutex<()>,
    seq: AtomicU64,
    /// The seal's tick plus one; 0 for none.
    tick: AtomicU64,
    /// The window's totals, then the kept span's: calls, failures, slow, shed.
    sums: [AtomicU64; 8],
}

impl SealCell {
    fn new() -> Self {
        Self {
            lock: Mutex::new(()),
            seq: AtomicU64::new(0),
            tick: AtomicU64::new(0),
            sums: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The seal filed last, if any and if no writer was filing meanwhile.
    fn read(&self) -> Option<Sealed> {
        let before = self.seq.load(Acquire);
        if before & 1 != 0 {
            return None;
        }
        let tick = self.tick.load(Relaxed);
        let v: [u64; 8] = std::array::from_fn(|i| self.sums[i].load(Relaxed));
        fence(Acquire);
        if self.seq.load(Relaxed) != before || tick == 0 {
            return None;
        }
        let totals = |v: &[u64]| Totals {
            calls: v[0],
            failures: v[1],
            slow: v[2],
            shed: v[3],
        };
        Some(Sealed {
            tick: tick - 1,
            window: totals(&v[..4]),
            kept: totals(&v[4..]),
        })
    }

    /// Files `seal` (`None`: none). The caller holds `lock`.
    fn write(&self, seal: Option<Sealed>) {
        let seq = self.seq.load(Relaxed);
        self.seq.store(seq.wrapping_add(1), Relaxed);
        fence(Release);
        self.tick
            .store(seal.map_or(0, |s| s.tick.wrapping_add(1)), Relaxed);
        let (w, k) = seal.map_or_else(Default::default, |s| (s.window, s.kept));
        for (cell, v) in self.sums.iter().zip([
            w.calls, w.failures, w.slow, w.shed, k.calls, k.failures, k.slow, k.shed,
        ]) {
            cell.store(v, Relaxed);
        }
        self.seq.store(seq.wrapping_add(2), Release);
    }
}

/// Where a window's rings hold the count of the tick `age` ticks before `tick`
/// (stamps wrap, and so do ticks before the first).
#[inline(always)]
fn bucket_of(tick: u64, age: u64) -> usize {
    (stamp(tick.wrapping_sub(age)) % KEPT) as usize
}

/// In [`TimeWindow::rings`]: slow calls were counted.
const SLOW_RING: u64 = 1;
/// In [`TimeWindow::rings`]: shed calls were counted.
const SHED_RING: u64 = 2;

/// The buckets summed on every failure rather than sealed: the current tick's and the
/// one before.
const LIVE: u64 = 2;

impl std::ops::Add for Totals {
    type Output = Totals;
    fn add(self, other: Totals) -> Totals {
        Totals {
            calls: self.calls + other.calls,
            failures: self.failures + other.failures,
            slow: self.slow + other.slow,
            shed: self.shed + other.shed,
        }
    }
}

/// A time window's coarse clock: the current tick, published by a task on the tokio
/// runtime the breaker was built on at each tick's boundary, so that a successful
/// call finds its bucket with one load instead of a clock read (the clock read was
/// most of a closed call's cost with a time window).
///
/// It stays exact where it matters: the ticker publishes each tick a little before
/// its boundary (a call in the last millisecond of a tick may count in the next one);
/// a shed call and a snapshot read the real clock, a failure or slow call does before
/// its totals trip a rule or move the throttle (see `Shared::record_in_time`), as does
/// every 256th call of a thread (the call that brings the count of its bucket to a
/// multiple of 256, or of a stripe threads share, every 256th call on it), and each
/// turns the coarse clock off for good if it lags by more than one tick. A stalled
/// ticker can so misplace at most 256 calls of a thread, in the tick it stalled in,
/// before one of them finds it out. Without a
/// runtime at build time, or once that runtime is gone, every call reads the clock as
/// before.
#[derive(Debug)]
struct Coarse {
    /// The tick plus one; 0 while no ticker publishes.
    tick: AtomicU64,
    /// Set once the coarse clock was found behind the real one: the ticker stops.
    off: AtomicBool,
}

/// Calls (successes, failures, slow calls) between two checks of the coarse clock
/// against the real one, per thread: a thread's turn comes when its bucket's count
/// reaches a multiple of it (see [`bump_owned`]), so the count of the bucket is the
/// only write of a success.
const CHECK_EVERY: u64 = 256;

/// Bits of a published coarse tick that hold its bucket in a ring (`tick % KEPT`).
const INDEX_BITS: u32 = 5;
const _: () = assert!(KEPT <= 1 << INDEX_BITS);

impl Coarse {
    /// A coarse clock that no ticker publishes yet.
    fn unpublished() -> Self {
        Self {
            tick: AtomicU64::new(0),
            off: AtomicBool::new(false),
        }
    }

    /// The published tick, if any.
    #[inline(always)]
    fn get(&self) -> Option<u64> {
        self.get_with_index().map(|(tick, _)| tick)
    }

    /// The published tick and its bucket in a ring, if any: published together, so
    /// that a success need not divide to find its bucket.
    #[inline(always)]
    fn get_with_index(&self) -> Option<(u64, usize)> {
        let t = self.tick.load(Relaxed);
        (t != 0).then(|| {
            (
                (t >> INDEX_BITS) - 1,
                (t & ((1 << INDEX_BITS) - 1)) as usize,
            )
        })
    }

    /// Publishes `tick` (a stamp).
    #[cfg_attr(steadfast_loom, allow(dead_code))]
    fn publish(&self, tick: u64) {
        self.tick
            .store(((tick + 1) << INDEX_BITS) | (tick % KEPT), Relaxed);
    }

    /// Whether the coarse clock may be used at `clock`, the real clock's tick: it is
    /// published and at most one tick behind (or ahead). Turns it off for good if not.
    fn agrees(&self, coarse: u64, clock: u64) -> bool {
        let behind = stamp(clock.wrapping_sub(coarse));
        let ahead = stamp(coarse.wrapping_sub(clock));
        if behind <= 1 || ahead <= 1 {
            return true;
        }
        self.off.store(true, Relaxed);
        self.tick.store(0, Relaxed);
        false
    }
}

/// The ticker of a window's coarse clock: publishes the tick of `start + k * width`
/// from a little before each boundary, until the window is gone (the task is aborted)
/// or the clock is turned off. Dropped (its runtime shutting down), it unpublishes.
///
/// It publishes only while tokio's clock keeps pace with the real one: from its second
/// wake-up, once one interval has shown it, and never again once tokio's clock has
/// jumped (paused and advanced, as in tests): a task cannot be sure to run between a
/// jump and the next call, so the window then reads the clock on every call.
#[cfg_attr(steadfast_loom, allow(dead_code))]
async fn tick(coarse: Weak<Coarse>, start: Instant, width: u64) {
    struct Unpublish(Weak<Coarse>);
    impl Drop for Unpublish {
        fn drop(&mut self) {
            if let Some(coarse) = self.0.upgrade() {
                coarse.tick.store(0, Relaxed);
            }
        }
    }
    let _unpublish = Unpublish(coarse.clone());
    // Published this long before the boundary, so that a call at the boundary already
    // finds the new tick.
    let early = (width / 4).min(1_000_000);
    let mut last: Option<(Instant, std::time::Instant)> = None;
    loop {
        let Some(c) = coarse.upgrade() else {
            return;
        };
        let now = Instant::now();
        let real = std::time::Instant::now();
        let in_step = last.map(|(then, real_then)| {
            let virtual_step = nanos(now.saturating_duration_since(then));
            let real_step = nanos(real.saturating_duration_since(real_then));
            virtual_step.abs_diff(real_step) <= DRIFT
        });
        if c.off.load(Relaxed) || in_step == Some(false) {
            c.off.store(true, Relaxed);
            c.tick.store(0, Relaxed);
            return;
        }
        let elapsed = nanos_since(start, now).saturating_add(early);
        if in_step == Some(true) {
            c.publish(stamp(elapsed / width));
        }
        drop(c);
        last = Some((now, real));
        let next = width - elapsed % width;
        tokio::time::sleep_until(now + Duration::from_nanos(next)).await;
    }
}

/// How far tokio's clock may move from the real one between two wake-ups of a ticker
/// before it is taken for a paused (or advanced) clock.
#[cfg_attr(steadfast_loom, allow(dead_code))]
const DRIFT: u64 = 2_000_000;

impl TimeWindow {
    /// A window of `window` for a breaker that started at `start`.
    /// With `coarse_clock`, and within a tokio runtime, a ticker task advances the
    /// window's [`Coarse`] clock.
    pub(crate) fn new(window: Duration, start: Instant, coarse_clock: bool) -> Self {
        Self::with_stripes(
            window,
            start,
            coarse_clock,
            (parallelism() * 2).clamp(8, 128),
        )
    }

    /// [`new`](Self::new) with `stripes` stripes of its own (at most 128) besides the
    /// shared one.
    fn with_stripes(window: Duration, start: Instant, coarse_clock: bool, stripes: usize) -> Self {
        let width = (nanos(window) / BUCKETS).max(1);
        let coarse = Arc::new(Coarse::unpublished());
        // Not under loom, whose models run the breaker without a runtime anyway.
        #[cfg(not(steadfast_loom))]
        let ticker = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|_| coarse_clock)
            .map(|runtime| {
                runtime
                    .spawn(tick(Arc::downgrade(&coarse), start, width))
                    .abort_handle()
            });
        #[cfg(steadfast_loom)]
        let ticker = {
            let _ = (coarse_clock, start);
            None
        };
        Self {
            id: WINDOW_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            start,
            width,
            calls: (0..=stripes).map(|_| CachePadded::default()).collect(),
            used: std::array::from_fn(|_| AtomicU64::new(0)),
            rings: AtomicU64::new(0),
            failures: CachePadded::default(),
            slow: CachePadded::default(),
            shed: CachePadded::default(),
            sealed: SealCell::new(),
            coarse,
            ticker,
        }
    }

    /// A bucket's width in nanoseconds: a tenth of the window.
    pub(crate) fn bucket(&self) -> u64 {
        self.width
    }

    /// The tick of an instant given as nanoseconds since the breaker's start.
    #[inline]
    pub(crate) fn tick(&self, elapsed_nanos: u64) -> u64 {
        stamp(elapsed_nanos / self.width)
    }

    /// `at` in nanoseconds since the breaker's start.
    #[inline]
    fn elapsed(&self, at: Instant) -> u64 {
        nanos_since(self.start, at)
    }

    /// The tick of `at`.
    pub(crate) fn tick_of(&self, at: Instant) -> u64 {
        self.tick(self.elapsed(at))
    }

    /// Records one successful call (not slow) that ended at `end` (`None`: now), on the
    /// thread in `slot`: the only write is to that thread's own stripe. With the coarse
    /// clock running, no clock is read (but every [`CHECK_EVERY`]th time).
    #[inline(always)]
    pub(crate) fn record_success(&self, end: Option<Instant>, slot: usize) {
        // Split on `owned` here, so that neither path asks again.
        match stripe_of(slot, self.calls.len()) {
            (stripe, true) => self.count_success::<true>(end, stripe),
            (stripe, false) => self.count_success::<false>(end, stripe),
        }
    }

    /// [`record_success`](Self::record_success) on the stripe at `index_of_stripe`,
    /// which only this thread writes if `OWNED`.
    #[inline(always)]
    fn count_success<const OWNED: bool>(&self, end: Option<Instant>, index_of_stripe: usize) {
        let owned = OWNED;
        let stripe = &self.calls[index_of_stripe];
        let coarse = self.coarse.get_with_index();
        if OWNED {
            // The thread's own bucket of the coarse tick: one load and one store, the
            // count telling the turn to check the clock (after this call is counted).
            if let Some((tick, index)) = coarse {
                match bump_owned(&stripe.ring[index], tick, CHECK_EVERY) {
                    Some(false) => return,
                    Some(true) => return self.check_coarse(tick, end, stripe),
                    None => {}
                }
            }
        }
        let (tick, index) = match coarse {
            Some(published) if owned || !due(stripe) => published,
            coarse => {
                let tick = self.success_tick(coarse.map(|(tick, _)| tick), end, stripe, owned);
                (tick, (tick % KEPT) as usize)
            }
        };
        if bump_stamped(&stripe.ring[index], tick, owned) {
            self.mark_used(index_of_stripe);
        }
    }

    /// The turn of a thread's success, counted at the coarse clock's `tick`, to check
    /// that tick against the real clock (see [`Coarse`]).
    #[cold]
    #[inline(never)]
    fn check_coarse(&self, tick: u64, end: Option<Instant>, stripe: &Stripe) {
        self.success_tick(Some(tick), end, stripe, true);
    }

    /// Marks `stripe` as one that has counted calls (see [`used`](Self::used)); once
    /// per bucket a stripe starts over, so at most once a tick.
    #[cold]
    #[inline(never)]
    fn mark_used(&self, stripe: usize) {
        let (word, bit) = (&self.used[stripe / 64], 1u64 << (stripe % 64));
        if word.load(Relaxed) & bit == 0 {
            word.fetch_or(bit, Relaxed);
        }
    }

    /// The tick of a success from the real clock: without a coarse clock, or to check
    /// it (then the coarse tick, if it agrees).
    #[inline(never)]
    fn success_tick(
        &self,
        coarse: Option<u64>,
        end: Option<Instant>,
        stripe: &Stripe,
        owned: bool,
    ) -> u64 {
        let end = end.unwrap_or_else(Instant::now);
        let cache = self.id as usize % TICK_CACHES;
        let clock = with_local(|local| self.cached_tick(&local.ticks[cache], end, stripe, owned))
            .unwrap_or_else(|| self.tick_of(end));
        match coarse {
            Some(coarse) if self.coarse.agrees(coarse, clock) => coarse,
            _ => clock,
        }
    }

    /// The current tick for a path that can trip or shed (a failure, a slow call, a
    /// shed call, a snapshot): the real clock's (at `end`, or now), or the coarse
    /// clock's while it agrees with it, so that every count of the window uses one
    /// clock.
    pub(crate) fn current_tick(&self, end: Option<Instant>) -> u64 {
        let clock = self.tick_of(end.unwrap_or_else(Instant::now));
        match self.coarse.get() {
            Some(coarse) if self.coarse.agrees(coarse, clock) => coarse,
            _ => clock,
        }
    }

    /// Publishes `tick` on the coarse clock, as its ticker would.
    #[cfg(test)]
    pub(crate) fn publish_coarse(&self, tick: u64) {
        self.coarse.publish(tick);
    }

    /// The coarse clock's tick, if it is published.
    #[cfg(test)]
    pub(crate) fn coarse_tick(&self) -> Option<u64> {
        self.coarse.get()
    }

    /// The tick of a failure or slow call that ended at `end` (`None`: now) on the
    /// thread in `slot`, and whether it was checked against the real clock. With the
    /// coarse clock running, a call that did not bring its own `end` takes the coarse
    /// tick unchecked (but every [`CHECK_EVERY`]th call of a thread, successes
    /// included): its caller [`confirm`](Self::confirm)s it before acting on it.
    #[inline]
    pub(crate) fn outcome_tick(&self, end: Option<Instant>, slot: usize) -> (u64, bool) {
        if end.is_none() {
            if let Some((coarse, index)) = self.coarse.get_with_index() {
                let (stripe, owned) = stripe_of(slot, self.calls.len());
                let stripe = &self.calls[stripe];
                let due = if owned {
                    // This call would bring the thread's bucket to its turn.
                    (count_aged(&stripe.ring[index], coarse, 0) + 1) % CHECK_EVERY == 0
                } else {
                    due(stripe)
                };
                if !due {
                    return (coarse, false);
                }
            }
        }
        (self.current_tick(end), true)
    }

    /// Checks `coarse`, an unchecked tick from [`outcome_tick`](Self::outcome_tick),
    /// against the real clock: `None` if it stands, else the real clock's tick (and
    /// the coarse clock is off for good, see [`Coarse`]).
    #[cold]
    pub(crate) fn confirm(&self, coarse: u64) -> Option<u64> {
        let clock = self.tick_of(Instant::now());
        (!self.coarse.agrees(coarse, clock)).then_some(clock)
    }

    /// [`tick_of`](Self::tick_of) `end`, from the thread's `cache` when `end` is in the
    /// tick of its last success in this window, else from `stripe`'s cache (when the
    /// thread owns it) or by division. The thread's cache then gets this tick's bounds
    /// if it was this window's; else it only claims the window, so that a thread going
    /// through more windows than it has caches does not pay for bounds it will not use.
    #[inline(always)]
    fn cached_tick(
        &self,
        cache: &Cell<TickCache>,
        end: Instant,
        stripe: &Stripe,
        owned: bool,
    ) -> u64 {
        let c = cache.get();
        let mine = c.window == self.id;
        if let Some((from, until)) = c.bounds.filter(|_| mine) {
            if from <= end && end < until {
                return c.tick;
            }
        }
        let elapsed = self.elapsed(end);
        let tick = if owned {
            self.owned_tick(stripe, elapsed)
        } else {
            self.tick(elapsed)
        };
        if mine {
            self.bound(cache, elapsed, tick);
        } else {
            cache.set(TickCache {
                window: self.id,
                bounds: None,
                tick,
            });
        }
        tick
    }

    /// Puts the bounds of `tick`, which holds `elapsed`, in `cache`.
    #[cold]
    #[inline(never)]
    fn bound(&self, cache: &Cell<TickCache>, elapsed: u64, tick: u64) {
        let width = Duration::from_nanos(self.width);
        let from = self
            .start
            .checked_add(Duration::from_nanos(elapsed - elapsed % self.width));
        // Beyond what an instant holds, or before the start (where the bounds cannot
        // hold the end), no bounds: the next success misses again.
        let bounds = from.and_then(|from| Some((from, from.checked_add(width)?)));
        cache.set(TickCache {
            window: self.id,
            bounds,
            tick,
        });
    }

    /// [`tick`](Self::tick) of `end` (nanoseconds since the start), from the cache of
    /// the stripe the calling thread owns when `end` is in the same tick as its last
    /// success.
    #[inline]
    fn owned_tick(&self, stripe: &Stripe, end: u64) -> u64 {
        let from = stripe.from.load(Relaxed);
        if end.wrapping_sub(from) < self.width {
            return stripe.tick.load(Relaxed);
        }
        let tick = self.tick(end);
        stripe.from.store(end - end % self.width, Relaxed);
        stripe.tick.store(tick, Relaxed);
        tick
    }

    /// Records one call that ended at `tick` on the thread in `slot`; the window's
    /// totals after it when it failed or was slow (it could trip a rule), and with
    /// `throttled` and a failure the throttle's as well (see
    /// [`throttle_totals`](Self::throttle_totals)), from the same read of the buckets.
    ///
    /// The calls of the last two tenths are summed over every thread's stripe only
    /// when `may_act` says that totals counting just this thread's (fewer calls than
    /// there are, the same failures, slow and shed calls) could trip a rule or move
    /// the throttle: reading another thread's stripe, which it writes on every call,
    /// moves that line between cores twice. Else the partial totals are returned:
    /// with as many calls or more, no rule could act on them either. The last field
    /// says whether the totals are complete (`false`: `may_act` said no).
    #[inline]
    pub(crate) fn record(
        &self,
        failed: bool,
        slow: bool,
        tick: u64,
        slot: usize,
        throttled: bool,
        may_act: impl FnOnce(Totals, Option<Totals>) -> bool,
    ) -> Option<(Totals, Option<Totals>, bool)> {
        let bucket = (tick % KEPT) as usize;
        let (stripe, owned) = stripe_of(slot, self.calls.len());
        let calls = &self.calls[stripe].ring[bucket];
        if !(failed || slow) {
            if bump_stamped(calls, tick, owned) {
                self.mark_used(stripe);
            }
            return None;
        }
        // A thread's bucket that holds all the calls it can counts none of its
        // failed or slow calls either (else its rates would climb with every call
        // past the bound, to 100%): the tick keeps the rates of the calls counted.
        if let Some(started) = bump_unless_full(calls, tick, owned) {
            if started {
                self.mark_used(stripe);
            }
            if failed {
                bump_stamped(&self.failures[bucket], tick, false);
            }
            if slow {
                self.ring_used(SLOW_RING);
                bump_stamped(&self.slow[bucket], tick, false);
            }
        }
        let (window, kept) = if throttled && failed {
            let (window, kept) = self.past_both(tick);
            (window, Some(kept))
        } else {
            (self.past(tick, BUCKETS), None)
        };
        let mut others = self.used_marks();
        others[stripe / 64] &= !(1u64 << (stripe % 64));
        // This thread's calls of the live ticks, and every thread's failures.
        let mut live = self.sum_shared(tick, 0..LIVE);
        let own = &self.calls[stripe].ring;
        for age in 0..LIVE {
            live.calls += count_aged(&own[bucket_of(tick, age)], tick, age);
        }
        let (window, kept) = (window + live, kept.map(|k| k + live));
        if others == [0; USED_WORDS] {
            return Some((window, kept, true));
        }
        if !may_act(window, kept) {
            return Some((window, kept, false));
        }
        let rest = self.sum_stripes(tick, 0..LIVE, others, false);
        Some((window + rest, kept.map(|k| k + rest), true))
    }

    /// Records one call shed at `tick` by adaptive throttling; the throttle's totals
    /// after it.
    pub(crate) fn record_shed(&self, tick: u64) -> Totals {
        self.ring_used(SHED_RING);
        bump_stamped(&self.shed[(tick % KEPT) as usize], tick, false);
        self.throttle_totals(tick)
    }

    /// Marks the ring of `ring` ([`SLOW_RING`], [`SHED_RING`]) as one that counts; a
    /// write only the first time.
    #[inline]
    fn ring_used(&self, ring: u64) {
        if self.rings.load(Relaxed) & ring == 0 {
            self.rings.fetch_or(ring, Relaxed);
        }
    }

    /// The totals of the last two windows, up to `tick`: adaptive throttling counts
    /// requests and accepts over a longer span than the trip rules look at, so that a
    /// short hard-down stretch (which the trip rules leave alone) is not remembered as
    /// a lasting lack of accepts once the downstream answers again.
    pub(crate) fn throttle_totals(&self, tick: u64) -> Totals {
        self.totals_over(tick, KEPT)
    }

    /// The totals of the window up to `tick`.
    pub(crate) fn totals(&self, tick: u64) -> Totals {
        self.totals_over(tick, BUCKETS)
    }

    fn totals_over(&self, tick: u64, span: u64) -> Totals {
        self.past(tick, span) + self.sum_ages(tick, 0..LIVE)
    }

    /// The totals of the buckets from `LIVE` ticks before `tick` to `span - 1`
    /// before it: from the seal of `tick`,
    /// made now if there is none yet; summed here when another thread holds the seal,
    /// or for a tick older than the one sealed (a call that ended a tick ago).
    fn past(&self, tick: u64, span: u64) -> Totals {
        let pick = |s: &Sealed| if span == BUCKETS { s.window } else { s.kept };
        match self.seal_of(tick) {
            Some(s) => pick(&s),
            None => self.sum_ages(tick, LIVE..span),
        }
    }

    /// [`past`](Self::past) over the window and over the kept span at once.
    fn past_both(&self, tick: u64) -> (Totals, Totals) {
        match self.seal_of(tick) {
            Some(s) => (s.window, s.kept),
            None => {
                let window = self.sum_ages(tick, LIVE..BUCKETS);
                (window, window + self.sum_ages(tick, BUCKETS..KEPT))
            }
        }
    }

    /// The seal of `tick`, made now if there is none yet; `None` when another thread
    /// is filing one, or for a tick older than the one sealed.
    fn seal_of(&self, tick: u64) -> Option<Sealed> {
        match self.sealed.read() {
            Some(s) if s.tick == tick => return Some(s),
            Some(s) if s.tick > tick => return None,
            _ => {}
        }
        let _filing = self.sealed.lock.try_lock().ok()?;
        // Under the lock no one else files: what a read finds is what is filed.
        match self.sealed.read() {
            Some(s) if s.tick == tick => Some(s),
            Some(s) if s.tick > tick => None,
            _ => {
                let window = self.sum_ages(tick, LIVE..BUCKETS);
                let s = Sealed {
                    tick,
                    window,
                    kept: window + self.sum_ages(tick, BUCKETS..KEPT),
                };
                self.sealed.write(Some(s));
                Some(s)
            }
        }
    }

    /// The totals of the buckets `ages` ticks before `tick` (0: `tick`'s own).
    fn sum_ages(&self, tick: u64, ages: std::ops::Range<u64>) -> Totals {
        self.sum_stripes(tick, ages, self.used_marks(), true)
    }

    /// The stripes that have counted calls (see [`used`](Self::used)).
    fn used_marks(&self) -> [u64; USED_WORDS] {
        std::array::from_fn(|w| self.used[w].load(Relaxed))
    }

    /// [`sum_ages`](Self::sum_ages) over the calls of the stripes marked in `stripes`
    /// only, and with `shared` the failed, slow and shed calls (else none).
    fn sum_stripes(
        &self,
        tick: u64,
        ages: std::ops::Range<u64>,
        stripes: [u64; USED_WORDS],
        shared: bool,
    ) -> Totals {
        let mut totals = if shared {
            self.sum_shared(tick, ages.clone())
        } else {
            Totals::default()
        };
        for age in ages {
            let count = |ring: &Ring| count_aged(&ring[bucket_of(tick, age)], tick, age);
            for (w, mut bits) in stripes.into_iter().enumerate() {
                while bits != 0 {
                    let stripe = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    totals.calls += count(&self.calls[stripe].ring);
                }
            }
        }
        totals
    }

    /// The failed, slow and shed calls of the buckets `ages` ticks before `tick`.
    #[inline]
    fn sum_shared(&self, tick: u64, ages: std::ops::Range<u64>) -> Totals {
        let mut totals = Totals::default();
        let rings = self.rings.load(Relaxed);
        for age in ages {
            let count = |ring: &Ring| count_aged(&ring[bucket_of(tick, age)], tick, age);
            totals.failures += count(&self.failures);
            if rings & SLOW_RING != 0 {
                totals.slow += count(&self.slow);
            }
            if rings & SHED_RING != 0 {
                totals.shed += count(&self.shed);
            }
        }
        totals
    }

    /// Empties the window. A call recorded at the same moment by a thread into its own
    /// ring may survive the reset: at most one call per thread from before it.
    pub(crate) fn reset(&self) {
        // Held while the rings are emptied: no seal of the old counts can be filed
        // after it.
        let _filing = self
            .sealed
            .lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.sealed.write(None);
        // A stripe stays marked used: summing it counts nothing until it counts again.
        for stripe in self.calls.iter() {
            for c in &stripe.ring {
                c.store(NEVER, Relaxed);
            }
        }
        for ring in [&self.failures.0, &self.slow.0, &self.shed.0] {
            for c in ring {
                // Stamp zero with count zero counts nothing, whatever the tick.
                c.store(0, Relaxed);
            }
        }
    }
}

impl Drop for TimeWindow {
    fn drop(&mut self) {
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
    }
}

/// Whether a call counted on `stripe`, which threads share, is due to check the coarse
/// clock.
#[inline(always)]
fn due(stripe: &Stripe) -> bool {
    stripe.unchecked.fetch_add(1, Relaxed).wrapping_add(1) % CHECK_EVERY == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::{live_count, FULL, SATURATED};

    /// Slots with a block of their own (0) and without (`usize::MAX`): for one
    /// thread, both are exact.
    const SLOTS: [usize; 2] = [0, usize::MAX];

    #[test]
    fn count_window_holds_exactly_the_last_n() {
        for (size, slot) in [10, 100, 1000]
            .into_iter()
            .flat_map(|n| SLOTS.map(|s| (n, s)))
        {
            let w = CountWindow::new(size, false);
            for _ in 0..1000 {
                assert_eq!(w.record(false, false, slot), None);
            }
            for i in 1..=u64::from(size) {
                let t = w.record(true, false, slot).unwrap();
                assert_eq!((t.calls, t.failures), (u64::from(size), i));
            }
            // `size` successes push every failure out again, one by one.
            for i in 1..=u64::from(size) {
                w.record(false, false, slot);
                assert_eq!(w.totals().failures, u64::from(size) - i);
            }
        }
    }

    /// A count window of 40 (blocks of ten) filled with successes by the thread in
    /// slot 0, one position a call.
    fn full_of_successes() -> CountWindow {
        let w = CountWindow::new(40, false);
        assert_eq!(w.block, 10);
        for _ in 0..40 {
            w.record(false, false, 0);
        }
        w
    }

    #[test]
    fn threads_share_a_full_window_in_blocks() {
        let w = full_of_successes();
        // A thread takes ten positions at once from the shared counter.
        let pos = w.pos.load(Relaxed);
        w.record(false, false, 0);
        assert_eq!(w.pos.load(Relaxed), pos + 10);
        for _ in 0..9 {
            w.record(false, false, 0);
        }
        assert_eq!(w.pos.load(Relaxed), pos + 10);
        // Two threads in turn, each failing every call: the window holds 40 calls
        // from among the last 40 + 9 (a block's worth of the other thread's, less
        // one).
        let pos = w.pos.load(Relaxed);
        for i in 0..400 {
            let t = w.record(true, false, i % 2).unwrap();
            let made = i as u64 + 1;
            assert!(t.failures <= made.min(40), "{t:?} after {made}");
            assert!(t.failures + 9 >= made.min(40), "{t:?} after {made}");
        }
        assert_eq!(w.pos.load(Relaxed) - pos, 400);
        assert_eq!(w.totals().failures, 40);
        // A reset voids the blocks: the window fills from empty, one position a call.
        w.reset();
        w.record(true, false, 0);
        w.record(false, false, 1);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 2,
                failures: 1,
                ..Totals::default()
            }
        );
        // Full again, one thread's blocks hold exactly its last 40 calls, as before
        // the reset.
        for _ in 0..38 {
            w.record(false, false, 0);
        }
        for i in 1..=40 {
            let t = w.record(true, false, 0).unwrap();
            assert_eq!((t.calls, t.failures), (40, i));
        }
    }

    #[test]
    fn a_block_reads_its_bits_when_taken() {
        let w = full_of_successes();
        // A failure takes the block of positions 0 to 9.
        w.record(true, false, 0);
        // Another thread, still on a block of the lap before, fails at position 3
        // after the block was taken.
        let (word, bit) = w.fail_bits.of(3);
        word.fetch_or(bit, Relaxed);
        w.tally.failures.fetch_add(1, Relaxed);
        for _ in 0..9 {
            w.record_success(0);
        }
        // The block's successes do not look at the bits again: the late failure
        // stays, as though it came after them...
        assert_eq!(w.totals().failures, 2);
        // ...for one lap: the next block over position 3 reads it.
        for _ in 0..40 {
            w.record_success(0);
        }
        assert_eq!(w.totals().failures, 0);
        // A success taking a block whose one set bit is its first position's clears it.
        let w = full_of_successes();
        w.record(true, false, 0);
        for _ in 0..39 {
            w.record_success(0);
        }
        assert_eq!(w.totals().failures, 1);
        w.record_success(0);
        assert_eq!(w.totals().failures, 0);
        // Bits read across a word's end and the window's wrap.
        let w = CountWindow::new(100, true);
        for i in [60, 63, 64, 70, 98, 99, 0, 1] {
            let (word, bit) = w.fail_bits.of(i);
            word.fetch_or(bit, Relaxed);
        }
        let (word, bit) = w.slow_bits.as_ref().unwrap().of(1);
        word.fetch_or(bit, Relaxed);
        assert_eq!(w.fail_bits.run(60, 12, 100), 0b0100_0001_1001);
        assert_eq!(w.fail_bits.run(96, 6, 100), 0b11_1100);
        assert_eq!(w.slow_bits.as_ref().unwrap().run(96, 6, 100), 0b10_0000);
        assert_eq!(w.fail_bits.run(0, 64, 100), 0b11 | 1 << 60 | 1 << 63);
        assert_eq!(w.fail_bits.run(1, 64, 100), 1 | 1 << 59 | 1 << 62 | 1 << 63);
    }

    #[test]
    fn a_block_taken_after_calls_without_one_follows_them() {
        // Calls from a thread without a block move the shared counter on by one each,
        // laps past the window's size; a block taken after them starts where they
        // stopped, so one thread's window is still exactly its last `size` calls.
        let w = CountWindow::new(160, false);
        for _ in 0..1000 {
            w.record(false, false, usize::MAX);
        }
        assert_eq!(w.pos.load(Relaxed), 1000);
        for i in 1..=160 {
            let t = w.record(true, false, 0).unwrap();
            assert_eq!((t.calls, t.failures), (160, i));
        }
        for i in 1..=160 {
            w.record(false, false, 0);
            assert_eq!(w.totals().failures, 160 - i);
        }
    }

    #[test]
    fn successes_into_a_full_clean_window_take_no_position_and_still_slide() {
        // The call that breaks the quiet: a failure, or a slow success.
        for (slot, slow) in SLOTS.into_iter().flat_map(|s| [(s, false), (s, true)]) {
            let w = CountWindow::new(10, slow);
            let outliers = |w: &CountWindow| {
                let t = w.totals();
                if slow {
                    t.slow
                } else {
                    t.failures
                }
            };
            // Filling up: every success counts toward `calls`.
            for i in 1..=10 {
                w.record_success(slot);
                assert_eq!(w.totals().calls, i.min(10));
            }
            for _ in 0..1000 {
                w.record_success(slot);
            }
            assert_eq!(
                w.pos.load(Relaxed),
                10,
                "a clean full window takes no position"
            );
            let t = w.record(!slow, slow, slot).unwrap();
            assert_eq!(
                (t.calls, t.failures, t.slow),
                (10, u64::from(!slow), u64::from(slow))
            );
            // With a failure (or slow call) inside, successes take positions again:
            // it leaves after exactly ten more calls, not one sooner.
            for _ in 0..9 {
                w.record_success(slot);
                assert_eq!(outliers(&w), 1);
            }
            w.record_success(slot);
            assert_eq!(outliers(&w), 0);
            let pos = w.pos.load(Relaxed);
            w.record_success(slot);
            assert_eq!(w.pos.load(Relaxed), pos, "quiet again");
            // After a reset the window fills up again from empty.
            w.reset();
            w.record_success(slot);
            assert_eq!(w.totals().calls, 1);
        }
    }

    #[test]
    fn count_window_spans_words() {
        for slot in SLOTS {
            let w = CountWindow::new(130, true);
            for i in 0..400u64 {
                w.record(i % 3 == 0, i % 5 == 0, slot);
            }
            let t = w.totals();
            // The last 130 of 0..400 are 270..400.
            let failures = (270..400u64).filter(|i| i % 3 == 0).count() as u64;
            let slow = (270..400u64).filter(|i| i % 5 == 0).count() as u64;
            assert_eq!((t.calls, t.failures, t.slow), (130, failures, slow));
            w.reset();
            assert_eq!(w.totals(), Totals::default());
        }
    }

    #[test]
    fn time_window_forgets_old_buckets() {
        let w = TimeWindow::new(Duration::from_secs(10), Instant::now(), true);
        let sec = 1_000_000_000;
        w.record(true, false, w.tick(0), 0, false, |_, _| true);
        w.record(false, false, w.tick(5 * sec), 0, false, |_, _| true);
        assert_eq!(w.totals(w.tick(9 * sec)).failures, 1);
        // At 10 s the bucket of second 0 has left the window.
        let t = w.totals(w.tick(10 * sec));
        assert_eq!((t.calls, t.failures), (1, 0));
        // Recycling a bucket drops its old counts.
        let (t, _, _) = w
            .record(true, false, w.tick(20 * sec + 1), 0, false, |_, _| true)
            .unwrap();
        assert_eq!((t.calls, t.failures), (1, 1));
    }

    /// A reader racing the writer of seals finds one whole seal or none, never the
    /// fields of two (each seal here has every field equal to its tick).
    #[cfg(not(steadfast_loom))]
    #[test]
    fn a_seal_is_read_whole_or_not_at_all() {
        let cell = Arc::new(SealCell::new());
        let seal = |t: u64| {
            let totals = Totals {
                calls: t,
                failures: t,
                slow: t,
                shed: t,
            };
            Sealed {
                tick: t,
                window: totals,
                kept: totals,
            }
        };
        let writer = {
            let cell = cell.clone();
            std::thread::spawn(move || {
                for t in 1..=200_000 {
                    let _filing = cell.lock.lock().unwrap();
                    cell.write(Some(seal(t)));
                }
            })
        };
        let (mut whole, mut last) = (0, 0);
        while !writer.is_finished() || whole == 0 {
            if let Some(s) = cell.read() {
                let t = s.tick;
                assert_eq!((s.window, s.kept), (seal(t).window, seal(t).kept));
                assert!(t >= last, "seals are read in the order filed");
                (whole, last) = (whole + 1, t);
            }
        }
        writer.join().unwrap();
        assert_eq!(cell.read().map(|s| s.tick), Some(200_000));
        cell.write(None);
        assert!(cell.read().is_none());
    }

    #[test]
    fn sealed_totals_are_the_sums_of_every_bucket() {
        let w = TimeWindow::new(Duration::from_secs(10), Instant::now(), false);
        // Every bucket summed afresh, as totals were before the seal.
        let brute = |tick: u64, span: u64| w.sum_ages(tick, 0..span);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut tick = 0;
        for _ in 0..2_000 {
            tick += rng.u64(0..3);
            let slot = rng.usize(0..w.calls.len() + 2);
            // Calls land in their own tick, now and then in the one before.
            let at = tick.saturating_sub(u64::from(rng.u8(..) < 20));
            let failed = rng.bool();
            let slow = rng.u8(..) < 30;
            let throttled = rng.bool();
            if let Some((t, kept, _)) = w.record(failed, slow, at, slot, throttled, |_, _| true) {
                assert_eq!(t, brute(at, BUCKETS), "at {at}");
                assert_eq!(kept.is_some(), throttled && failed);
                if let Some(kept) = kept {
                    assert_eq!(kept, brute(at, KEPT), "at {at}");
                }
            }
            if rng.u8(..) < 10 {
                w.record_shed(tick);
            }
            assert_eq!(w.totals(tick), brute(tick, BUCKETS), "tick {tick}");
            assert_eq!(w.throttle_totals(tick), brute(tick, KEPT), "tick {tick}");
        }
        // A reset drops the seal with the counts.
        w.reset();
        assert_eq!(w.totals(tick), Totals::default());
        assert_eq!(w.throttle_totals(tick), Totals::default());
    }

    #[test]
    fn a_threads_cached_tick_is_the_divided_tick() {
        let start = Instant::now();
        let w = TimeWindow::new(Duration::from_millis(100), start, true); // 10 ms buckets
        let other = TimeWindow::new(Duration::from_millis(30), start, true); // 3 ms buckets
        let ms = 1_000_000;
        let cache = Cell::new(TickCache::default());
        // Forward within a tick, across ticks, to the last and first nanosecond of
        // one, backward (a runtime with an earlier paused clock) across a tick
        // boundary, with turns through another window, and before the start.
        let edges = [
            0,
            1,
            10 * ms - 1,
            10 * ms,
            15 * ms,
            99 * ms,
            5 * ms,
            10 * ms - 1,
        ];
        let ends = edges
            .into_iter()
            .chain((0..500).map(|i| i * 7 * ms / 3))
            .chain([u64::MAX / 4, 3 * ms]);
        for (i, end) in ends.enumerate() {
            let at = start + Duration::from_nanos(end);
            // Claimed, then bounded, then found; the stripe's cache or a division.
            for owned in [true, true, true, false] {
                let tick = w.cached_tick(&cache, at, &w.calls[0], owned);
                assert_eq!(tick, w.tick(end), "end {end}");
            }
            if i % 3 == 0 {
                let at = start + Duration::from_nanos(end / 3);
                let tick = other.cached_tick(&cache, at, &other.calls[0], true);
                assert_eq!(tick, other.tick(end / 3), "end {end} in the other window");
            }
        }
        if let Some(before) = start.checked_sub(Duration::from_millis(15)) {
            for _ in 0..3 {
                assert_eq!(w.cached_tick(&cache, before, &w.calls[0], true), 0);
            }
            assert_eq!(w.cached_tick(&cache, start, &w.calls[0], true), 0);
        }
        // A success counts in the bucket of its own tick.
        let at = |n: u64| start + Duration::from_nanos(n);
        w.record_success(Some(at(25 * ms)), 0);
        w.record_success(Some(at(29 * ms)), 0);
        w.record_success(Some(at(30 * ms)), 0);
        let ring = &w.calls[0].ring;
        assert_eq!(live_count(&ring[2], w.tick(25 * ms), 1), 2);
        assert_eq!(live_count(&ring[3], w.tick(30 * ms), 1), 1);
    }

    #[test]
    fn time_window_saturates_instead_of_wrapping() {
        let w = TimeWindow::new(Duration::from_secs(1), Instant::now(), true);
        for (i, stripe) in w.calls.iter().enumerate() {
            stripe.ring[0].store(SATURATED, Relaxed);
            w.mark_used(i);
        }
        w.record(false, false, 0, 0, false, |_, _| true);
        assert_eq!(w.totals(0).calls, SATURATED * w.calls.len() as u64);
    }

    /// The calls counted in the window's stripe 0 at `tick`.
    fn counted(w: &TimeWindow, tick: u64) -> u64 {
        live_count(&w.calls[0].ring[(tick % KEPT) as usize], tick, 1)
    }

    #[test]
    fn a_coarse_clock_behind_the_real_one_is_turned_off_for_good() {
        // No runtime: no ticker; the coarse clock is set by hand.
        let start = Instant::now();
        let w = TimeWindow::new(Duration::from_millis(100), start, true);
        assert!(w.ticker.is_none());
        let at = |ms: u64| start + Duration::from_millis(ms);
        w.coarse.publish(3);
        // One tick behind or ahead: the coarse tick is used.
        assert_eq!(w.current_tick(Some(at(45))), 3);
        assert_eq!(w.current_tick(Some(at(25))), 3);
        // Two behind: the real clock's, and off for good.
        assert_eq!(w.current_tick(Some(at(55))), 5);
        assert!(w.coarse.off.load(Relaxed));
        assert_eq!(w.coarse.get(), None);
    }

    #[test]
    fn a_failure_takes_the_coarse_tick_unchecked_but_at_its_threads_turn() {
        for slot in SLOTS {
            // No runtime: no ticker; the coarse clock is set by hand, 20 ticks ahead
            // of the real one (`start` is now).
            let start = Instant::now();
            let w = TimeWindow::new(Duration::from_millis(100), start, true);
            let late = start + Duration::from_millis(3);
            // Without a coarse clock, the real one's, checked.
            assert_eq!(w.outcome_tick(None, slot), (0, true));
            w.coarse.publish(20);
            // A call that brings its end is checked against it, whatever its turn.
            assert_eq!(w.outcome_tick(Some(late), slot), (0, true));
            assert!(w.coarse.off.load(Relaxed));
            w.coarse.off.store(false, Relaxed);
            w.coarse.publish(20);
            // The turn comes with successes and failures alike: after a success and
            // 254 failures, the thread's 256th call is checked.
            w.record_success(None, slot);
            for _ in 0..CHECK_EVERY - 2 {
                assert_eq!(w.outcome_tick(None, slot), (20, false));
                w.record(true, false, 20, slot, false, |_, _| false);
            }
            assert_eq!(w.coarse.get(), Some(20));
            assert_eq!(w.outcome_tick(None, slot), (0, true), "slot {slot}");
            assert!(w.coarse.off.load(Relaxed));
        }
    }

    #[test]
    fn an_unchecked_tick_is_confirmed_against_the_real_clock() {
        let start = Instant::now();
        let w = TimeWindow::new(Duration::from_secs(100), start, true);
        // Within a tick of the real clock's (0, for the next 10 s): it stands.
        w.coarse.publish(1);
        assert_eq!(w.confirm(1), None);
        assert_eq!(w.coarse.get(), Some(1));
        // Two ahead: the real clock's tick, and the coarse clock off for good.
        w.coarse.publish(2);
        assert_eq!(w.confirm(2), Some(0));
        assert_eq!(w.coarse.get(), None);
        assert!(w.coarse.off.load(Relaxed));
    }

    #[test]
    fn a_failure_counts_the_calls_of_every_stripe() {
        // As many stripes as a 64-core machine has: the marks of the stripes that
        // counted span two words.
        let w = TimeWindow::with_stripes(Duration::from_secs(10), Instant::now(), false, 128);
        let slots = [0, 1, 63, 64, 65, 100, 127, usize::MAX];
        for (n, slot) in slots.into_iter().enumerate() {
            for _ in 0..=n {
                w.record_success(None, slot);
            }
        }
        let tick = w.current_tick(None);
        let (totals, _, _) = w.record(true, false, tick, 5, false, |_, _| true).unwrap();
        let successes = (1..=slots.len() as u64).sum::<u64>();
        assert_eq!((totals.calls, totals.failures), (successes + 1, 1));
    }

    #[test]
    fn a_failure_sums_other_threads_calls_only_when_they_could_matter() {
        for throttled in [false, true] {
            let w = TimeWindow::new(Duration::from_secs(10), Instant::now(), false);
            for _ in 0..10 {
                w.record_success(None, 0);
            }
            let tick = w.current_tick(None);
            // Told that no rule could act: this thread's calls only, every failure.
            let mut asked = None;
            let (window, kept, complete) = w
                .record(true, false, tick, 1, throttled, |window, kept| {
                    asked = Some((window, kept));
                    false
                })
                .unwrap();
            assert_eq!(asked, Some((window, kept)));
            assert!(!complete);
            assert_eq!((window.calls, window.failures), (1, 1));
            assert_eq!(kept.map(|k| k.calls), throttled.then_some(1));
            // Told that one could: every thread's.
            let (window, kept, complete) = w
                .record(true, false, tick, 1, throttled, |_, _| true)
                .unwrap();
            assert!(complete);
            assert_eq!((window.calls, window.failures), (12, 2));
            assert_eq!(kept.map(|k| k.calls), throttled.then_some(12));
        }
        // Alone in the window, a thread's calls are all there is: not asked.
        let w = TimeWindow::new(Duration::from_secs(10), Instant::now(), false);
        w.record_success(None, 1);
        let tick = w.current_tick(None);
        let totals = w.record(true, false, tick, 1, true, |_, _| unreachable!());
        assert_eq!(
            totals.map(|(t, _, complete)| (t.calls, complete)),
            Some((2, true))
        );
    }

    #[test]
    fn a_published_tick_carries_its_bucket() {
        let w = TimeWindow::new(Duration::from_millis(100), Instant::now(), true);
        for tick in [0, 1, KEPT - 1, KEPT, KEPT + 1, 12_345, stamp(u64::MAX)] {
            w.coarse.publish(tick);
            assert_eq!(
                w.coarse.get_with_index(),
                Some((tick, (tick % KEPT) as usize))
            );
            assert_eq!(w.coarse.get(), Some(tick));
        }
    }

    #[test]
    fn successes_check_the_coarse_clock_every_256th_time() {
        // A thread's own stripe counts the call that brings its bucket to the turn at
        // the coarse tick, then checks; a shared stripe checks first.
        for (slot, at_turn) in [(0, 2), (usize::MAX, 9)] {
            let start = Instant::now();
            let w = TimeWindow::new(Duration::from_millis(100), start, true);
            let (stripe, _) = stripe_of(slot, w.calls.len());
            let counted =
                |tick: u64| live_count(&w.calls[stripe].ring[(tick % KEPT) as usize], tick, 1);
            let late = start + Duration::from_millis(95); // tick 9
            w.coarse.publish(2);
            // Counted at the coarse tick without looking at `end`...
            for _ in 1..CHECK_EVERY {
                w.record_success(Some(late), slot);
            }
            assert_eq!(counted(2), CHECK_EVERY - 1);
            assert_eq!(w.coarse.get(), Some(2));
            // ... until the check, which finds it 7 ticks behind.
            w.record_success(Some(late), slot);
            assert_eq!(w.coarse.get(), None);
            assert_eq!(counted(at_turn), if at_turn == 2 { CHECK_EVERY } else { 1 });
            w.record_success(Some(late), slot);
            assert_eq!(counted(9), if at_turn == 2 { 1 } else { 2 });
        }
    }

    #[test]
    fn a_thread_checks_the_coarse_clock_on_its_turn_in_a_saturated_bucket() {
        // 16.7 million calls in a tick (a thread of a tight loop, a tick of a second
        // or more): the count stays near the bound and the turns keep coming.
        let start = Instant::now();
        let w = TimeWindow::new(Duration::from_millis(100), start, true);
        let on_time = start + Duration::from_millis(5); // tick 0
        let late = start + Duration::from_millis(95); // tick 9
        w.coarse.publish(0);
        w.record_success(Some(on_time), 0);
        let ring = &w.calls[0].ring[0];
        ring.store(ring.load(Relaxed) + SATURATED - 1, Relaxed);
        // Turns that find the coarse clock on time leave it on.
        for _ in 0..4 * CHECK_EVERY {
            w.record_success(Some(on_time), 0);
            let count = counted(&w, 0);
            assert!(count > SATURATED - CHECK_EVERY && count < SATURATED + CHECK_EVERY);
        }
        assert_eq!(w.coarse.get(), Some(0));
        // Once it lags, the thread's next turn finds it out.
        let mut calls = 0;
        while w.coarse.get().is_some() {
            w.record_success(Some(late), 0);
            calls += 1;
            assert!(calls <= CHECK_EVERY, "no check in {calls} calls");
        }
    }

    #[test]
    fn a_full_bucket_keeps_the_failure_rate_of_the_calls_it_holds() {
        // Regression: past a thread's bound in a tick (16.7 million calls: a tight
        // loop, a tick of a second), successes no longer counted but failures still
        // did, so the rate climbed with every call: a 10 s window at 10% failing
        // showed 13% after 88 million calls in 4 s on one thread. Now a full bucket
        // takes no failures either, on a thread's own stripe and on the shared one.
        for slot in [0, usize::MAX] {
            // Ticks of 100 s: the real clock, read at the turns, stays in tick 0.
            let start = Instant::now();
            let w = TimeWindow::new(Duration::from_secs(1_000), start, true);
            w.coarse.publish(0);
            let (stripe, _) = stripe_of(slot, w.calls.len());
            // A tick of calls failing one in ten, up to the bound.
            let fail = |w: &TimeWindow| {
                let (tick, _) = w.outcome_tick(None, slot);
                w.record(true, false, tick, slot, false, |_, _| true);
            };
            for _ in 0..9 {
                w.record_success(None, slot);
            }
            fail(&w);
            let ring = &w.calls[stripe].ring[0];
            ring.store(ring.load(Relaxed) + FULL - 10, Relaxed);
            w.failures[0].store(w.failures[0].load(Relaxed) + FULL / 10 - 1, Relaxed);
            let before = w.totals(0);
            assert_eq!((before.calls, before.failures), (FULL, FULL / 10));
            // As many again, one in ten failing, and slow calls: the rates stay.
            for _ in 0..100_000 {
                for _ in 0..9 {
                    w.record_success(None, slot);
                }
                fail(&w);
                w.record(false, true, 0, slot, false, |_, _| true);
            }
            let after = w.totals(0);
            assert_eq!((after.failures, after.slow), (FULL / 10, 0), "slot {slot}");
            assert!(after.calls >= FULL && after.calls <= SATURATED, "{after:?}");
        }
    }

    #[test]
    fn the_coarse_clock_runs_on_a_real_clock_and_counts_where_the_clock_would() {
        // Real time: the coarse clock exists for it. A 100 ms window (10 ms ticks);
        // nothing below depends on how fast the machine is, only on what the ticker
        // publishes once it runs.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let start = Instant::now();
            let w = TimeWindow::new(Duration::from_millis(100), start, true);
            assert!(w.ticker.is_some());
            let patience = std::time::Instant::now();
            while w.coarse.get().is_none() {
                assert!(
                    patience.elapsed() < Duration::from_secs(10),
                    "never published"
                );
                assert!(!w.coarse.off.load(Relaxed), "turned off on a real clock");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // A success lands in the coarse tick, which is the clock's or next to it.
            let coarse = w.coarse.get().unwrap();
            let clock = w.tick_of(Instant::now());
            assert!(
                coarse.abs_diff(clock) <= 1,
                "coarse {coarse}, clock {clock}"
            );
            w.record_success(None, 0);
            assert_eq!(counted(&w, coarse) + counted(&w, coarse + 1), 1);
            // Dropping the window stops its ticker.
            let handle = w.ticker.clone().unwrap();
            drop(w);
            while !handle.is_finished() {
                assert!(
                    patience.elapsed() < Duration::from_secs(10),
                    "ticker lives on"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }

    #[test]
    fn a_ticker_unpublishes_when_its_runtime_shuts_down() {
        // Once its runtime is gone nothing advances the coarse clock: it must not stay
        // published. The tick is published by hand (a ticker publishes only on a real
        // clock); the ticker task is started, then dropped with its runtime.
        let coarse = Arc::new(Coarse::unpublished());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let ticker = runtime.block_on(async {
            let ticker = tokio::spawn(tick(Arc::downgrade(&coarse), Instant::now(), 1_000_000));
            tokio::task::yield_now().await;
            ticker.abort_handle()
        });
        coarse.publish(7);
        assert_eq!(coarse.get(), Some(7));
        assert!(
            !ticker.is_finished(),
            "the ticker sleeps until its next tick"
        );
        drop(runtime);
        assert_eq!(coarse.get(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_coarse_clock_stays_off_under_a_paused_clock() {
        let w = TimeWindow::new(Duration::from_millis(100), Instant::now(), true);
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(7)).await;
            assert_eq!(w.coarse.get(), None);
        }
        assert!(w.coarse.off.load(Relaxed), "the jump was seen");
        let handle = w.ticker.clone().unwrap();
        assert!(handle.is_finished());
    }
}
