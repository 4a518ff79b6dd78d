//! Per-call overhead of a keyed breaker layer over a single breaker, in the **closed**
//! state.
//!
//! Every row drives the same trivial inner service with
//! `svc.ready().await?.call(req).await`, one task on a current-thread runtime, `iters`
//! calls timed as one batch (see `support`):
//!
//! - `bare`: the inner `service_fn` alone;
//! - `breaker`: one breaker (consecutive-failure rule);
//! - `keyed_1000`: a keyed layer over 1,000 keys, each made before timing, request `i`
//!   going to key `i % 1000`: the key function, a lock-free lookup of the key's breaker,
//!   then what `breaker` does. Round-robin over 1,000 breakers, each call touches
//!   state no recent call touched, so this row also pays cache misses;
//! - `keyed_1000_one_key`: the same 1,000 keys held, every request to one of them: the
//!   cost of the key function and the lookup alone.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench keyed
//! ```

use std::time::Duration;

use steadfast::breaker::Breaker;
use steadfast::keyed::KeyedBreaker;
use tower::Layer;

// Only the single-task driver is used here.
#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

const KEYS: u64 = 1_000;

use support::inner;

fn template() -> steadfast::breaker::BreakerBuilder {
    Breaker::builder("bench").consecutive_failures(5)
}

fn keyed(c: &mut criterion::Criterion) {
    let rt = support::current_thread_runtime();
    let _enter = rt.enter();
    let mut group = c.benchmark_group("keyed/single");
    support::bench_single(&mut group, &rt, "bare", inner());
    let breaker = template().build().expect("valid breaker");
    support::bench_single(&mut group, &rt, "breaker", breaker.layer().layer(inner()));
    let keys = KeyedBreaker::builder(template())
        .max_keys(KEYS as usize)
        .build()
        .expect("valid keyed breaker");
    for key in 0..KEYS {
        keys.breaker(&key);
    }
    let layer = keys.layer(|req: &u64| req % KEYS);
    support::bench_single(&mut group, &rt, "keyed_1000", layer.layer(inner()));
    let one = keys.layer(|_: &u64| 7u64);
    support::bench_single(&mut group, &rt, "keyed_1000_one_key", one.layer(inner()));
    assert_eq!(keys.len(), KEYS as usize, "a key was evicted while timing");
    group.finish();
}

criterion::criterion_group! {
    name = benches;
    config = criterion::Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = keyed
}
criterion::criterion_main!(benches);
