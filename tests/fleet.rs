//! The fleet simulation's goals, on a smaller fleet (10 processes over 10 endpoints)
//! on paused time: one bad endpoint costs under 1% of requests once detected, every
//! endpoint dead sends the endpoints probes only, and a process whose own network
//! fails is taken out by its readiness while the others keep every endpoint. The
//! simulation is the outage example's own code (`cargo run --release --example outage
//! -- fleet` runs it at 50 x 20).

use std::time::Duration;

#[allow(dead_code)]
#[path = "../examples/outage/fleet.rs"]
mod fleet;

use fleet::{Fault, FleetFigures, FleetPlan};

fn plan() -> FleetPlan {
    FleetPlan {
        processes: 10,
        endpoints: 10,
        rate: 40.0,
        healthy: Duration::from_secs(5),
        fault: Duration::from_secs(30),
        healed: Duration::from_secs(10),
        max_ejected: 0.1,
        seed: 3,
    }
}

fn run(fault: Fault) -> FleetFigures {
    fleet::simulate(&plan(), fault).unwrap()
}

#[test]
fn one_dead_endpoint_costs_under_one_percent_once_detected() {
    let f = run(Fault::OneDead);
    let detected = f.detected.expect("every process ejected the dead endpoint");
    assert!(detected < Duration::from_secs(10), "{detected:?}");
    assert!(f.requests_after_detection > 5_000, "{f:?}");
    assert!(f.bad_share_after_detection() < 0.01, "{f:?}");
    assert!(f.success_rate() > 0.99, "{f:?}");
    assert_eq!(f.out_of_rotation, 0);
    // The watchdogs' load on the dead endpoint: about one probe per 1.5 s per process.
    assert!(
        f.probes_per_process > 0.4 && f.probes_per_process <= 1.0,
        "{f:?}"
    );
    assert!(
        f.rejoined.expect("rejoined") < Duration::from_secs(5),
        "{f:?}"
    );
}

#[test]
fn one_slow_endpoint_is_ejected_too() {
    let f = run(Fault::OneSlow);
    assert!(f.detected.is_some(), "{f:?}");
    assert!(f.bad_share_after_detection() < 0.01, "{f:?}");
    assert!(f.success_rate() > 0.98, "{f:?}");
}

#[test]
fn every_endpoint_dead_sends_probes_only() {
    let f = run(Fault::AllDead);
    assert!(f.detected.is_some(), "{f:?}");
    // Every process out of rotation: no user call reaches an endpoint in the
    // fault's second half, and the load is the probes, bounded per process by one a
    // second per endpoint.
    assert_eq!(f.out_of_rotation, 10);
    assert_eq!(f.to_bad_late, 0, "{f:?}");
    let endpoints = plan().endpoints as f64;
    assert!(
        f.probes_per_process > 0.4 * endpoints && f.probes_per_process <= endpoints,
        "{f:?}"
    );
    // Back within a few seconds of the endpoints' return: probes close the breakers
    // of processes that get no traffic, and the orchestrator takes them back.
    assert!(
        f.rejoined.expect("rejoined") < Duration::from_secs(5),
        "{f:?}"
    );
}

#[test]
fn a_process_whose_network_fails_goes_not_ready_and_ejects_no_one_elsewhere() {
    let f = run(Fault::ClientNetwork);
    let out = f.faulty_out.expect("the faulty process was taken out");
    assert!(out < Duration::from_secs(10), "{out:?}");
    assert_eq!(f.out_of_rotation, 1);
    assert_eq!(f.healthy_trips, 0, "{f:?}");
    assert_eq!(f.to_bad_late, 0, "{f:?}");
    // A tenth of the traffic failed until the orchestrator's next look after the
    // process went not ready.
    assert!(f.success_rate() > 0.98, "{f:?}");
}

#[test]
fn half_dead_needs_a_wider_cap() {
    // With the default cap (10%), most of the dead half is let through; a cap of 50%
    // ejects them all.
    let narrow = run(Fault::HalfDead);
    let wide = fleet::simulate(
        &FleetPlan {
            max_ejected: 0.5,
            ..plan()
        },
        Fault::HalfDead,
    )
    .unwrap();
    assert!(narrow.bad_share_after_detection() > 0.2, "{narrow:?}");
    assert!(wide.bad_share_after_detection() < 0.01, "{wide:?}");
    assert!(wide.success_rate() > 0.95, "{wide:?}");
}

#[test]
fn a_seed_repeats_the_figures() {
    let (a, b) = (run(Fault::OneDead), run(Fault::OneDead));
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}
