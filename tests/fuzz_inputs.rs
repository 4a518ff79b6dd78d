//! The fuzz targets' checks (`tests/fuzz_support`), run on a few hundred seeded
//! proptest inputs each: nothing panics, and every parser and builder gives the
//! documented answer (`Ok` for settings in range, a `ConfigError` naming a setting out
//! of range otherwise). The same checks run for as long as you like under cargo-fuzz:
//! see `fuzz/README.md`.

mod fuzz_support;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

const CASES: u32 = 400;

fn run(name: &str, strategy: impl Strategy<Value = Vec<u8>>, check: fn(&[u8])) {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(7),
        ..Config::default()
    });
    let result = runner.run(&strategy, |data| {
        check(&data);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..96)
}

#[test]
fn breaker_builder() {
    run("breaker_builder", bytes(), fuzz_support::breaker_builder);
}

#[test]
fn backoff() {
    run("backoff", bytes(), fuzz_support::backoff);
}

#[test]
fn budget() {
    run("budget", bytes(), fuzz_support::budget);
}

#[test]
fn retry_policy() {
    run("retry_policy", bytes(), fuzz_support::retry_policy);
}

#[test]
fn watchdog_builder() {
    run("watchdog_builder", bytes(), fuzz_support::watchdog_builder);
}

#[cfg(feature = "http")]
#[test]
fn retry_after() {
    // Arbitrary bytes, and header-like text: digits, signs, dates, spaces.
    let text = "[ \t]{0,2}([0-9]{1,25}|[+-][0-9]{1,3}|[0-9]+\\.[0-9]|(Sun|Mon|Fri), [0-9]{2} (Nov|Dec) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT|[a-zA-Z0-9 ,:]{0,30})[ \t]{0,2}";
    let header = (any::<u64>(), text).prop_map(|(now, value)| {
        let mut data = now.to_be_bytes().to_vec();
        data.extend_from_slice(value.as_bytes());
        data
    });
    run(
        "retry_after",
        prop_oneof![bytes(), header],
        fuzz_support::retry_after,
    );
}
