//! 100,000 distinct keys through a keyed layer capped at 1,024: the key count never
//! passes the cap and live memory stays flat once the cap is reached.
//!
//! A counting global allocator tracks the bytes live in this test binary, which holds
//! this one test, so nothing else allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Duration;

use steadfast::breaker::Breaker;
use steadfast::keyed::KeyedBreaker;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
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

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_hundred_thousand_keys_stay_within_the_cap_and_flat_memory() {
    let base = LIVE.load(Relaxed);
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
    // Flat: from 10,240 keys seen to 100,000, live memory stays within 3x of what it
    // was (evicted entries are freed in batches, once no reader can see them, so it
    // swings), and ends within 2x.
    let last = LIVE.load(Relaxed) - base;
    assert!(
        peak < 3 * at_cap && last < 2 * at_cap,
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
