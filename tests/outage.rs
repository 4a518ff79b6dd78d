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
        healthy: s(10),
        outage: s(60),
        brownout: s(30),
        recovered: s(5),
        flapping: s(15),
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

fn run_script(kind: StackKind, script: &Script, load: Load, seed: u64) -> sim::Run {
    let plan = sim::Plan {
        tuning: Tuning::default(),
        script: script.clone(),
        load,
        seed,
    };
    sim::simulate(kind, &plan).unwrap()
}

fn run(kind: StackKind, seed: u64) -> sim::Run {
    run_script(kind, &script(), load(), seed)
}

fn phase(f: &Figures, phase: Phase) -> &sim::PhaseFigures {
    f.phases.iter().find(|p| p.phase == phase).unwrap()
}

fn outage_amplification(f: &Figures) -> f64 {
    let p = phase(f, Phase::Outage);
    assert!(p.requests > 3000, "the outage got its load: {p:?}");
    p.amplification
}

/// Calls reaching the downstream in each whole second of the hard outage.
fn outage_seconds(run: &sim::Run, script: &Script) -> Vec<usize> {
    let from = script.start_of(Phase::Outage).as_secs();
    let to = script.end_of(Phase::Outage).as_secs();
    let mut per = vec![0; (to - from) as usize];
    for c in &run.calls {
        let s = c.at.as_secs();
        if (from..to).contains(&s) {
            per[(s - from) as usize] += 1;
        }
    }
    per
}

#[test]
fn each_stack_in_a_short_incident() {
    let runs: Vec<sim::Run> = StackKind::ALL.iter().map(|&kind| run(kind, SEED)).collect();
    let figures: Vec<Figures> = runs.iter().map(|r| sim::figures(r, &script())).collect();
    let of = |kind| figures.iter().find(|f| f.kind == kind).unwrap();
    let (bare, naive, retry) = (
        of(StackKind::Bare),
        of(StackKind::Naive),
        of(StackKind::Retry),
    );
    let (breaker, watchdog) = (of(StackKind::Breaker), of(StackKind::Watchdog));

    // Bare sends every request to the dead downstream; the full stack at most 5% of
    // that, and after the breaker opened nothing but probes.
    assert!(bare.outage_calls >= 12_000, "{bare:?}");
    assert!(
        watchdog.outage_calls * 20 <= bare.outage_calls,
        "{} calls against bare's {}",
        watchdog.outage_calls,
        bare.outage_calls
    );
    assert!(watchdog.detect.is_some_and(|d| d < Duration::from_secs(1)));
    assert_eq!(watchdog.user_calls_after_detect, Some(0));
    assert!(
        phase(watchdog, Phase::Outage).probes > 0,
        "the watchdog probed during the outage"
    );
    // Without a watchdog, the breaker's half-open trials are user requests.
    assert!(breaker.user_calls_after_detect.is_some_and(|n| n > 0));

    // At 100% failure: naive retry triples the load, the budget holds it near 1.1x,
    // and in every second, not only on average (the budget's credit never comes back
    // in one burst).
    let naive_x = outage_amplification(naive);
    let retry_x = outage_amplification(retry);
    assert!((2.9..=3.0).contains(&naive_x), "naive retry: {naive_x}");
    assert!((1.0..=1.2).contains(&retry_x), "budgeted retry: {retry_x}");
    assert!((outage_amplification(bare) - 1.0).abs() < 1e-9);
    let run_of = |kind| runs.iter().find(|r| r.kind == kind).unwrap();
    let bare_s = outage_seconds(run_of(StackKind::Bare), &script());
    for (i, (r, b)) in outage_seconds(run_of(StackKind::Retry), &script())
        .iter()
        .zip(&bare_s)
        .enumerate()
    {
        assert!(
            *r * 10 <= *b * 12,
            "second {i} of the outage: {r} calls, bare {b}"
        );
    }

    // Every time the downstream comes back (after the outage, and each flap), a
    // request succeeds within one probe period (the backoff's cap, jitter included)
    // plus a probe's and a request's round trip.
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
fn defaults_and_adaptive_are_never_worse_than_no_protection() {
    let tuning = Tuning::default();
    let bare = sim::figures(&run(StackKind::Bare, SEED), &script());
    for kind in [StackKind::Defaults, StackKind::Adaptive] {
        let f = sim::figures(&run(kind, SEED), &script());
        // Partial failure: at least what no protection serves.
        for p in [Phase::Brownout, Phase::Flapping] {
            let (ours, theirs) = (phase(&f, p).success, phase(&bare, p).success);
            assert!(
                ours >= theirs,
                "{kind:?} in {p:?}: {ours:.3} < bare's {theirs:.3}"
            );
        }
        // A dead downstream: at most 5% of bare's calls, none from users once open.
        assert!(
            f.outage_calls * 20 <= bare.outage_calls,
            "{kind:?}: {} calls against bare's {}",
            f.outage_calls,
            bare.outage_calls
        );
        assert_eq!(f.user_calls_after_detect, Some(0), "{kind:?}");
        assert!(phase(&f, Phase::Outage).probes > 0, "{kind:?} probed");
        // Back within two probe intervals of each return (the outage's and each flap's).
        let interval = match kind {
            StackKind::Defaults => tuning.defaults_interval,
            _ => tuning.adaptive_probe_backoff.base(),
        };
        let recover = f.recover.expect("recovered after every return");
        assert!(
            recover <= 2 * interval,
            "{kind:?}: recovered in {recover:?}"
        );
    }
}

#[test]
fn defaults_recover_within_two_probe_intervals_after_a_long_outage() {
    let tuning = Tuning::default();
    let s = Duration::from_secs;
    for outage in [s(30), s(600)] {
        let script = Script {
            healthy: s(10),
            outage,
            brownout: Duration::ZERO,
            recovered: s(10),
            flapping: Duration::ZERO,
            flap_down: Duration::ZERO,
            flap_up: Duration::ZERO,
        };
        let load = Load {
            clients: 5,
            rate: 10.0,
        };
        let f = sim::figures(
            &run_script(StackKind::Defaults, &script, load, SEED),
            &script,
        );
        let recover = f.recover.expect("recovered");
        assert!(
            recover <= 2 * tuning.defaults_interval,
            "after {outage:?} down: recovered in {recover:?}"
        );
        assert_eq!(f.user_calls_after_detect, Some(0), "after {outage:?}");
    }
}

#[test]
fn one_seed_one_result() {
    for kind in [StackKind::Retry, StackKind::Watchdog, StackKind::Defaults] {
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
