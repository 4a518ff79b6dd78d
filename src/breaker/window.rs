//! The sliding windows behind the rate rules. Both are lock-free and O(1) per call.
//!
//! A [`CountWindow`] holds exactly the last `size` counted calls: a ring of bits in
//! which each call swaps its own bit into the slot of the call `size` places before it,
//! so the failure count always equals the number of failure bits in the ring, whatever
//! the interleaving of threads.
//!
//! A [`TimeWindow`] holds the calls of the last `T` in ten buckets of `T / 10` each.
//! Every bucket counter packs the bucket's tick with its count in one `AtomicU64`, so a
//! stale bucket is recycled by the compare-exchange that also counts the new call: no
//! reset can lose a concurrent increment. Memory is ten buckets whatever the call rate.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Calls, failures and slow calls currently in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
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
    pos: CachePadded<AtomicU64>,
    fail_bits: Box<[AtomicU64]>,
    slow_bits: Option<Box<[AtomicU64]>>,
    failures: AtomicI64,
    slow: AtomicI64,
}

fn bits(size: u32) -> Box<[AtomicU64]> {
    (0..(size as usize).div_ceil(64))
        .map(|_| AtomicU64::new(0))
        .collect()
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
        Self {
            size: u64::from(size.max(1)),
            pos: CachePadded(AtomicU64::new(0)),
            fail_bits: bits(size),
            slow_bits: track_slow.then(|| bits(size)),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    /// Records one counted call; returns the totals when the call could trip a rule
    /// (it failed or was slow).
    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool) -> Option<Totals> {
        let slot = self.pos.fetch_add(1, Relaxed) % self.size;
        let (word, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
        let delta = put_bit(&self.fail_bits[word], bit, failed);
        if delta != 0 {
            self.failures.fetch_add(delta, Relaxed);
        }
        if let Some(slow_bits) = &self.slow_bits {
            let delta = put_bit(&slow_bits[word], bit, slow);
            if delta != 0 {
                self.slow.fetch_add(delta, Relaxed);
            }
        }
        (failed || slow).then(|| self.totals())
    }

    pub(crate) fn totals(&self) -> Totals {
        // A counter can be briefly below the bits it counts while another thread is
        // between its bit swap and its counter update; it is never read as negative.
        Totals {
            calls: self.pos.load(Relaxed).min(self.size),
            failures: self.failures.load(Relaxed).max(0) as u64,
            slow: self.slow.load(Relaxed).max(0) as u64,
        }
    }

    pub(crate) fn reset(&self) {
        self.pos.store(0, Relaxed);
        let slow = self.slow_bits.iter().flat_map(|b| b.iter());
        for word in self.fail_bits.iter().chain(slow) {
            word.store(0, Relaxed);
        }
        self.failures.store(0, Relaxed);
        self.slow.store(0, Relaxed);
    }
}

/// Number of buckets in a time window: it slides in tenths.
pub(crate) const BUCKETS: u64 = 10;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const STAMP_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;
/// A bucket counter stops counting this far below its limit, so concurrent adds that
/// passed the check can never carry into the stamp. 16.7 million calls per bucket is
/// far above any real call rate; past it the bucket saturates instead of wrapping.
const SATURATED: u64 = COUNT_MASK - 4096;

#[derive(Debug, Default)]
struct Bucket {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct TimeWindow {
    /// Bucket width in nanoseconds.
    width: u64,
    buckets: Box<[CachePadded<Bucket>]>,
}

/// Adds one to the counter for `stamp`, recycling the counter if it holds an older one.
#[inline]
fn bump(counter: &AtomicU64, stamp: u64) {
    let mut current = counter.load(Relaxed);
    loop {
        if current >> COUNT_BITS == stamp {
            if current & COUNT_MASK < SATURATED {
                counter.fetch_add(1, Relaxed);
            }
            return;
        }
        match counter.compare_exchange_weak(current, stamp << COUNT_BITS | 1, Relaxed, Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

impl TimeWindow {
    pub(crate) fn new(window: Duration) -> Self {
        let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        Self {
            width: (nanos / BUCKETS).max(1),
            buckets: (0..BUCKETS).map(|_| CachePadded::default()).collect(),
        }
    }

    /// The tick of an instant given as nanoseconds since the breaker's start.
    #[inline]
    pub(crate) fn tick(&self, elapsed_nanos: u64) -> u64 {
        (elapsed_nanos / self.width) & STAMP_MASK
    }

    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool, tick: u64) -> Option<Totals> {
        let bucket = &self.buckets[(tick % BUCKETS) as usize];
        bump(&bucket.calls, tick);
        if failed {
            bump(&bucket.failures, tick);
        }
        if slow {
            bump(&bucket.slow, tick);
        }
        (failed || slow).then(|| self.totals(tick))
    }

    pub(crate) fn totals(&self, tick: u64) -> Totals {
        let live = |counter: &AtomicU64| {
            let v = counter.load(Relaxed);
            let age = tick.wrapping_sub(v >> COUNT_BITS) & STAMP_MASK;
            if age < BUCKETS {
                v & COUNT_MASK
            } else {
                0
            }
        };
        self.buckets.iter().fold(Totals::default(), |t, b| Totals {
            calls: t.calls + live(&b.calls),
            failures: t.failures + live(&b.failures),
            slow: t.slow + live(&b.slow),
        })
    }

    pub(crate) fn reset(&self) {
        for b in self.buckets.iter() {
            // Stamp zero with count zero counts nothing, whatever the tick.
            b.calls.store(0, Relaxed);
            b.failures.store(0, Relaxed);
            b.slow.store(0, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_holds_exactly_the_last_n() {
        let w = CountWindow::new(10, false);
        for _ in 0..1000 {
            assert_eq!(w.record(false, false), None);
        }
        for i in 1..=10 {
            let t = w.record(true, false).unwrap();
            assert_eq!((t.calls, t.failures), (10, i));
        }
        // Ten successes push every failure out again.
        for _ in 0..10 {
            w.record(false, false);
        }
        assert_eq!(w.totals().failures, 0);
    }

    #[test]
    fn count_window_spans_words() {
        let w = CountWindow::new(130, true);
        for i in 0..400u64 {
            w.record(i % 3 == 0, i % 5 == 0);
        }
        let t = w.totals();
        // The last 130 of 0..400 are 270..400.
        let failures = (270..400u64).filter(|i| i % 3 == 0).count() as u64;
        let slow = (270..400u64).filter(|i| i % 5 == 0).count() as u64;
        assert_eq!((t.calls, t.failures, t.slow), (130, failures, slow));
        w.reset();
        assert_eq!(w.totals(), Totals::default());
    }

    #[test]
    fn time_window_forgets_old_buckets() {
        let w = TimeWindow::new(Duration::from_secs(10));
        let sec = 1_000_000_000;
        w.record(true, false, w.tick(0));
        w.record(false, false, w.tick(5 * sec));
        assert_eq!(w.totals(w.tick(9 * sec)).failures, 1);
        // At 10 s the bucket of second 0 has left the window.
        let t = w.totals(w.tick(10 * sec));
        assert_eq!((t.calls, t.failures), (1, 0));
        // Recycling a bucket drops its old counts.
        let t = w.record(true, false, w.tick(20 * sec + 1)).unwrap();
        assert_eq!((t.calls, t.failures), (1, 1));
    }

    #[test]
    fn time_window_saturates_instead_of_wrapping() {
        let w = TimeWindow::new(Duration::from_secs(1));
        let b = &w.buckets[0];
        b.calls.store(SATURATED, Relaxed);
        w.record(false, false, 0);
        assert_eq!(w.totals(0).calls, SATURATED);
    }
}
