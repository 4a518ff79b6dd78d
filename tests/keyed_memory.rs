//! Live memory of keyed breakers under key churn, measured with a counting global
//! allocator that tracks the bytes live in this test binary and their high-water mark.
//!
//! - 100,000 distinct keys through a layer capped at 1,024: the key count never passes
//!   the cap and live memory stays flat once the cap is reached.
//! - Two threads, 150,000 distinct keys each, through a layer capped at 64: the peak of
//!   live bytes stays within a documented multiple of what 64 held keys take, and falls
//!   back once the churn ends. Evicted breakers are not freed on eviction but once no
//!   reader can still see them (see `KeyedBreakerBuilder::max_keys`), so the peak is a
//!   transient multiple of the steady footprint, not a trend.
//!
//! The tests take one lock, so only one allocates at a time. Figures:
//! `cargo test --release --test keyed_memory -- --nocapture` (or without `--release`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::Duration;

use steadfast::breaker::Breaker;
use steadfast::keyed::KeyedBreaker;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// The most bytes live at once since the last [`reset_peak`].
static PEAK: AtomicIsize = AtomicIsize::new(0);
/// One test at a time: they read process-wide counters.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn grew(by: isize) {
    let live = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(live, Relaxed);
}

fn reset_peak() {
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}

/// Live bytes once garbage left by earlier work (a map dropped by another test, an
/// exited thread's retired entries) is freed: each guard dropped after `accelerate`
/// tries to start a new epoch, and three epochs free what was retired before them.
fn settled() -> isize {
    for _ in 0..256 {
        scc::ebr::Guard::new().accelerate();
    }
    LIVE.load(Relaxed)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CAP: usize = 1_024;
const KEYS: u64 = 100_000;

#[test]
fn a_hundred_thousand_keys_stay_within_the_cap_and_flat_memory() {
    // The lock first: the runtime's bytes must not land in another test's figures.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(hundred_thousand_keys());
    drop(rt);
    // Free this thread's garbage before the next test measures.
    settled();
}

async fn hundred_thousand_keys() {
    let base = settled();
    let keyed = KeyedBreaker::builder(Breaker::builder("hosts").consecutive_failures(3))
        .max_keys(CAP)
        .idle(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(keyed.layer(|key: &u64| *key))
        .service(service_fn(|key: u64| async move { Ok::<_, &str>(key) }));

    let mut at_cap = 0;
    let mut peak = 0;
    for key in 0..KEYS {
        let answer = svc.ready().await.unwrap().call(key).await.unwrap();
        assert_eq!(answer, key);
        assert!(keyed.len() <= CAP, "{} keys at key {key}", keyed.len());
        let live = LIVE.load(Relaxed) - base;
        if key == 10 * CAP as u64 {
            at_cap = live;
        } else if key > 10 * CAP as u64 {
            peak = peak.max(live);
        }
    }
    let per_key = at_cap / CAP as isize;
    assert!(per_key > 0);
    // Flat: from 10,240 keys seen to 100,000, live memory stays within 1.5x of what
    // it was, and ends there. An evicted breaker is freed once no reader can see it;
    // the map keeps only the evicted entry's small shell until it reuses the slot
    // (when the shell still held the breaker, the peak was twice `at_cap`).
    let last = LIVE.load(Relaxed) - base;
    assert!(
        peak < at_cap * 3 / 2 && last < at_cap * 3 / 2,
        "live bytes {at_cap} at the cap, peak {peak}, last {last} ({per_key} per held key)"
    );
    // Far from unbounded: 100,000 keys held would take ~100x the bytes.
    assert!(peak < per_key * KEYS as isize / 20, "{peak}");
    assert!(
        keyed.len() > CAP / 2,
        "eviction removes a batch, not everything"
    );
    assert_eq!(keyed.evicted(), KEYS - keyed.len() as u64);

    // Idle: a minute later, the next new key sweeps out every old one.
    tokio::time::advance(Duration::from_secs(61)).await;
    svc.ready().await.unwrap().call(KEYS).await.unwrap();
    assert_eq!(keyed.len(), 1);
    eprintln!("live bytes at cap {at_cap}, peak {peak}, {per_key} per key");
}

const CHURN_CAP: usize = 64;
const CHURN_THREADS: u64 = 2;
const CHURN_KEYS: u64 = 150_000;
/// The bound asserted on the churn's peak, as a multiple of 64 held keys' bytes: a
/// guard against a trend, loose enough for a loaded machine (measured on 2 busy cores:
/// 2.5x to 13x in debug, up to 27x in release; before evicted breakers were freed
/// apart from their map entries, 9x to 21x and up to 41x, which this bound admits too).
const CHURN_PEAK_FACTOR: isize = 64;

/// Two threads, each on its own runtime, call through 150,000 distinct keys each at
/// `max_keys(64)`. Real time (the default 10-minute `idle` never passes), so every
/// eviction is one at the cap.
#[test]
fn two_threads_churning_keys_at_a_cap_of_64_peak_within_a_bounded_factor() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let ready = Arc::new(Barrier::new(CHURN_THREADS as usize + 1));
    let go = Arc::new(Barrier::new(CHURN_THREADS as usize + 1));
    let done = Arc::new(Barrier::new(CHURN_THREADS as usize + 1));
    let keyed = Arc::new(Mutex::new(None::<KeyedBreaker<u64>>));

    // The runtimes exist before the baseline, so it holds only the keyed breaker.
    let threads: Vec<_> = (0..CHURN_THREADS)
        .map(|t| {
            let (ready, go, done, keyed) = (ready.clone(), go.clone(), done.clone(), keyed.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                ready.wait();
                go.wait();
                let keyed = keyed.lock().unwrap().clone().unwrap();
                let mut svc = ServiceBuilder::new()
                    .layer(keyed.layer(|key: &u64| *key))
                    .service(service_fn(|key: u64| async move { Ok::<_, &str>(key) }));
                rt.block_on(async {
                    for key in (t + 1) * 1_000_000..(t + 1) * 1_000_000 + CHURN_KEYS {
                        let answer = svc.ready().await.unwrap().call(key).await.unwrap();
                        assert_eq!(answer, key);
                    }
                });
                drop(svc);
                // The main thread reads the bytes live at the end of the churn; then
                // this thread frees what it retired (an idle thread keeps it: each
                // thread frees its own garbage, on its next guards), and the main
                // thread reads the bytes left, before this thread ends.
                done.wait();
                done.wait();
                settled();
                done.wait();
                done.wait();
            })
        })
        .collect();
    ready.wait();

    let base = settled();
    let held = KeyedBreaker::builder(Breaker::builder("hosts"))
        .max_keys(CHURN_CAP)
        .build()
        .unwrap();
    for key in 0..CHURN_CAP as u64 {
        held.breaker(&key);
    }
    assert_eq!(held.len(), CHURN_CAP);
    let steady = LIVE.load(Relaxed) - base;
    *keyed.lock().unwrap() = Some(held.clone());
    drop(held);
    reset_peak();
    go.wait();
    done.wait();
    let peak = PEAK.load(Relaxed) - base;
    let last = LIVE.load(Relaxed) - base;
    done.wait();
    done.wait();
    let flushed = settled() - base;
    done.wait();
    for thread in threads {
        thread.join().unwrap();
    }
    let keyed = keyed.lock().unwrap().take().unwrap();
    let keys = keyed.len();
    let evicted = keyed.evicted();
    drop(keyed);
    let dropped = settled() - base;
    let x = |bytes: isize| bytes as f64 / steady as f64;
    eprintln!(
        "churn at max_keys({CHURN_CAP}), {CHURN_THREADS} threads x {CHURN_KEYS} keys: \
         64 held keys {steady} B; peak {peak} B ({:.2}x); at the end {last} B ({:.2}x), \
         {flushed} B ({:.2}x) once every thread freed its garbage; {dropped} B once the \
         keyed breaker is dropped",
        x(peak),
        x(last),
        x(flushed),
    );
    assert!(keys <= CHURN_CAP);
    assert_eq!(
        evicted + keys as u64,
        CHURN_CAP as u64 + CHURN_THREADS * CHURN_KEYS
    );
    // A bound on the transient, not a tight one: it guards against a trend (300,000
    // breakers held would be ~4,700x). A thread descheduled inside a guard holds back
    // every other thread's garbage, so a loaded machine can push the peak up.
    assert!(
        peak < CHURN_PEAK_FACTOR * steady,
        "peak {peak} B >= {CHURN_PEAK_FACTOR}x the {steady} B of 64 held keys"
    );
    // Once the threads have freed their garbage, what is left is the 64 held keys and
    // the evicted entries' small shells still in the map's buckets: evicted breakers
    // are not among them (measured 1.05x to 1.33x; 1.2x to 3.1x when the shells held
    // their breakers, so this catches most but not all such runs; the unit test in
    // src/keyed/mod.rs checks the shell lets go of its breaker).
    assert!(
        flushed < steady * 3 / 2,
        "{flushed} B once settled, {steady} B for 64 keys"
    );
    assert!(
        dropped < steady / 8,
        "{dropped} B left after dropping the keys"
    );
}
