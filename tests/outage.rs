//! The outage harness's claims, on a short incident on paused time (no sockets): what
//! each stack does to a hard-down downstream, how fast the watchdog brings it back, and
//! that a seed fixes every figure. The simulation is the example's own code.

use std::time::Duration;

#[allow(dead_code)]
#[path = "../examples/outage/contention.rs"]
mod contention;
#[allow(dead_code)]
#[path = "../examples/outage/sim.rs"]
mod sim;
#[allow(dead_code)]
#[path = "../examples/outage/stacks.rs"]
mod stacks;

use sim::{Figures, Load, Phase, Script};
use stacks::{StackKind, Tuning};

const SEED: u64 = 7;

fn script() -> Script {
    let s = Duration::from_secs;
    Script {
        healthy: s(5),
        outage: s(20),
        brownout: s(5),
        recovered: s(5),
        flapping: s(10),
        flap_down: s(2),
        flap_up: s(3),
    }
}

fn load() -> Load {
    Load {
        clients: 20,
        rate: 10.0,
    }
}

fn run(kind: StackKind, seed: u64) -> sim::Run {
    let plan = sim::Plan {
        tuning: Tuning::default(),
        script: script(),
        load: load(),
        seed,
    };
    sim::simulate(kind, &plan).unwrap()
}

fn outage_amplification(f: &Figures) -> f64 {
    let p = f.phases.iter().find(|p| p.phase == Phase::Outage).unwrap();
    assert!(p.requests > 3000, "the outage got its load: {p:?}");
    p.amplification
}

#[test]
fn each_stack_in_a_short_incident() {
    let figures: Vec<Figures> = StackKind::ALL
        .iter()
        .map(|&kind| sim::figures(&run(kind, SEED), &script()))
        .collect();
    let of = |kind| figures.iter().find(|f| f.kind == kind).unwrap();
    let (bare, naive, retry) = (
        of(StackKind::Bare),
        of(StackKind::Naive),
        of(StackKind::Retry),
    );
    let (breaker, watchdog) = (of(StackKind::Breaker), of(StackKind::Watchdog));

    // Bare sends every request to the dead downstream; the full stack at most 5% of
    // that, and after the breaker opened nothing but probes.
    assert!(bare.outage_calls >= 4000, "{bare:?}");
    assert!(
        watchdog.outage_calls * 20 <= bare.outage_calls,
        "{} calls against bare's {}",
        watchdog.outage_calls,
        bare.outage_calls
    );
    assert!(watchdog.detect.is_some_and(|d| d < Duration::from_secs(1)));
    assert_eq!(watchdog.user_calls_after_detect, Some(0));
    let probes = watchdog
        .phases
        .iter()
        .find(|p| p.phase == Phase::Outage)
        .unwrap()
        .probes;
    assert!(probes > 0, "the watchdog probed during the outage");
    // Without a watchdog, the breaker's half-open trials are user requests.
    assert!(breaker.user_calls_after_detect.is_some_and(|n| n > 0));

    // At 100% failure: naive retry triples the load, the budget holds it near 1.1x.
    let naive_x = outage_amplification(naive);
    let retry_x = outage_amplification(retry);
    assert!((2.9..=3.0).contains(&naive_x), "naive retry: {naive_x}");
    assert!((1.0..=1.2).contains(&retry_x), "budgeted retry: {retry_x}");
    assert!((outage_amplification(bare) - 1.0).abs() < 1e-9);

    // Every time the downstream comes back (each flap), a request succeeds within one
    // probe period (the backoff's cap, jitter included) plus a probe's and a request's
    // round trip.
    let tuning = Tuning::default();
    let bound = tuning.probe_backoff.max() + Duration::from_millis(100);
    let recover = watchdog.recover.expect("recovered after every flap");
    assert!(
        recover <= bound,
        "recovered in {recover:?}, bound {bound:?}"
    );
    let without = breaker.recover.unwrap_or(Duration::MAX);
    assert!(
        without > recover,
        "the breaker's own timer is slower: {without:?}"
    );
}

#[test]
fn one_seed_one_result() {
    for kind in [StackKind::Retry, StackKind::Watchdog] {
        let a = run(kind, SEED);
        assert!(!a.requests.is_empty() && !a.calls.is_empty());
        assert_eq!(a, run(kind, SEED), "{kind:?}");
        // The comparison can tell runs apart: another seed moves the jitter.
        assert_ne!(a, run(kind, SEED + 1), "{kind:?}");
    }
}

#[test]
fn full_jitter_does_under_half_the_work_of_none() {
    let rows = contention::run(&[100], 5, SEED, Duration::from_millis(1));
    let calls = |name| rows.iter().find(|r| r.jitter == name).unwrap().calls;
    // In lockstep one client wins per round: 100 + 99 + ... + 1 calls.
    assert_eq!(calls("none"), 5050.0);
    for jitter in ["full", "equal", "decorrelated"] {
        assert!(
            calls(jitter) < calls("none") / 2.0,
            "{jitter}: {}",
            calls(jitter)
        );
    }
}
