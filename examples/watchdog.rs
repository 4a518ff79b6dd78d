//! The watchdog at work: a service boots with its downstream down, the watchdog connects
//! it, then the downstream flaps until the dependency is escalated (not ready), and
//! readiness returns once it has stayed up.
//!
//! ```text
//! cargo run --example watchdog
//! ```
//!
//! A fake downstream follows a script: down at boot, up at 6 s, then it flaps (down
//! for 1.5 s three times) and from 26.5 s stays up. A client calls it every 200 ms
//! through `ServiceBuilder::new().layer(breaker.layer())`. The breaker is built with
//! `start_open()` (nothing expects the downstream to be up at start) and trips after 3
//! failures in a row. A [`Watchdog`] owns its recovery: it probes the same downstream,
//! backing off 0.5 s, 1 s, 2 s, 4 s (seeded jitter) while probes fail, closes the
//! breaker after 2 passes in a row, and escalates the dependency when the breaker trips
//! more than 2 times within 30 s. A [`Health`] registry has the breaker registered.
//!
//! The output shows:
//!
//! - at boot, calls rejected fast and never sent while the watchdog's probes back off;
//! - the downstream coming up, and how long after it the watchdog closed the breaker
//!   (no user call was used as a trial);
//! - each flap tripping the breaker, and the third trip in 30 s escalating: the
//!   `on_escalate` callback, readiness false, probing on the slow end of the backoff;
//! - the escalation clearing once the breaker has stayed closed for 30 s: ready again;
//! - per phase, what callers saw (ok / failed / rejected) and how many of their calls
//!   reached the downstream, in all and while it was down;
//! - the final [`Health::snapshot`], then [`WatchdogHandle::shutdown`].
//!
//! Transitions come from a task watching [`Breaker::subscribe`]; probe results from a
//! wrapper around the probe closure; readiness from [`Health::snapshot`] checked before
//! each call, as a load balancer's check would (so a change shows up to 200 ms late).
//! A breaker that is merely open leaves the service ready (it degrades gracefully, as
//! at boot); only the escalation takes it out.
//!
//! It runs on tokio's paused clock: every sleep advances simulated time at once, so the
//! demo finishes instantly and the timestamps are simulated seconds since the start. The
//! jitter has fixed seeds, so the output is the same on every run. (Transitions,
//! probe failures and the escalation are also `tracing` events, targets
//! `steadfast::breaker` and `steadfast::watchdog`, for any installed subscriber.)
//!
//! [`WatchdogHandle::shutdown`]: steadfast::watchdog::WatchdogHandle::shutdown

use std::io;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadfast::backoff::{Backoff, Jitter};
use steadfast::breaker::{error::Open, Breaker, Snapshot, State};
use steadfast::health::Health;
use steadfast::watchdog::{Probe, Watchdog};
use steadfast::BoxError;
use tokio::time::{sleep, sleep_until, Instant};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

/// One stretch of the downstream's script, ending at `until`.
struct Segment {
    until: Duration,
    up: bool,
    /// Its index in [`PHASES`], for the tallies.
    phase: usize,
}

const fn seg(until_ms: u64, up: bool, phase: usize) -> Segment {
    Segment {
        until: Duration::from_millis(until_ms),
        up,
        phase,
    }
}

/// The phases the tallies are kept by.
const PHASES: [&str; 4] = ["boot", "up", "flapping", "stays up"];

/// The downstream's script: down at boot, up, three short outages, then up for good.
const SCRIPT: [Segment; 8] = [
    seg(6_000, false, 0),
    seg(15_000, true, 1),
    seg(16_500, false, 2),
    seg(20_000, true, 2),
    seg(21_500, false, 2),
    seg(25_000, true, 2),
    seg(26_500, false, 2),
    seg(65_000, true, 3),
];

/// Time between two client calls.
const PACE: Duration = Duration::from_millis(200);
/// How long the downstream takes to answer, up or down, to a call or a probe.
const LATENCY: Duration = Duration::from_millis(10);
/// The restart intensity: more than `MAX_TRIPS` trips within `WITHIN` escalate.
const MAX_TRIPS: u32 = 2;
const WITHIN: Duration = Duration::from_secs(30);

/// The index in [`SCRIPT`] of the segment at `at` since the start.
fn segment_at(at: Duration) -> usize {
    SCRIPT
        .iter()
        .position(|s| at < s.until)
        .unwrap_or(SCRIPT.len() - 1)
}

fn is_up(at: Duration) -> bool {
    SCRIPT[segment_at(at)].up
}

/// When the segment at `at` began.
fn segment_start(at: Duration) -> Duration {
    match segment_at(at) {
        0 => Duration::ZERO,
        i => SCRIPT[i - 1].until,
    }
}

/// Simulated seconds since `start`, for timestamps.
fn stamp(start: Instant) -> String {
    format!("{:6.2}s", start.elapsed().as_secs_f64())
}

/// Everything that reached the downstream, and what of it arrived while it was down.
#[derive(Default)]
struct Hits {
    calls: AtomicU32,
    calls_down: AtomicU32,
    probes: AtomicU32,
    probes_down: AtomicU32,
}

/// What callers saw during one phase.
#[derive(Default)]
struct Tally {
    calls: u32,
    ok: u32,
    failed: u32,
    rejected: u32,
    reached: u32,
    reached_down: u32,
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), BoxError> {
    let start = Instant::now();
    let hits = Arc::new(Hits::default());

    let breaker = Breaker::builder("payments")
        .consecutive_failures(3)
        .open_backoff(Backoff::constant(Duration::from_secs(5)))
        .start_open()
        .build()?;
    spawn_timeline_printer(start);
    spawn_transition_printer(&breaker, start);

    let watchdog = Watchdog::builder(&breaker, probe(hits.clone(), start))
        .interval(Duration::from_secs(1))
        .backoff(
            Backoff::exponential(Duration::from_millis(500), Duration::from_secs(4))
                .jitter(Jitter::Equal) // each delay in [d / 2, d]
                .seed(7),
        )
        .timeout(Duration::from_secs(2))
        .healthy_threshold(2)
        .max_trips(MAX_TRIPS, WITHIN)
        .on_escalate(move |snap: &Snapshot| {
            println!(
                "{}  on_escalate: `{}` tripped more than {MAX_TRIPS} times in {}s; it is {}, \
                 {} trips, {} failures, {} rejected so far",
                stamp(start),
                snap.name,
                WITHIN.as_secs(),
                snap.state,
                snap.trips,
                snap.failures,
                snap.rejected,
            );
        })
        .spawn()?;

    let health = Health::new();
    health.register(&breaker);

    let mut client = ServiceBuilder::new()
        .layer(breaker.layer())
        .service(downstream(hits.clone(), start));

    println!("breaker `payments` boots open, trips after 3 failures in a row; watchdog: probes");
    println!(
        "  back off 0.5-4s, 2 passes close, > {MAX_TRIPS} trips in {}s escalate; a call every {}ms",
        WITHIN.as_secs(),
        PACE.as_millis()
    );
    let mut tallies: [Tally; PHASES.len()] = Default::default();
    let mut ready = None;
    let mut at = Duration::ZERO;
    let mut id = 0;
    while at < SCRIPT[SCRIPT.len() - 1].until {
        sleep_until(start + at).await;
        at += PACE;
        let snap = health.snapshot();
        if ready != Some(snap.ready) {
            ready = Some(snap.ready);
            let why: String = snap
                .dependencies
                .iter()
                .filter(|d| d.blocks_readiness)
                .map(|d| {
                    let why = if d.escalated {
                        "escalated"
                    } else {
                        "forced open"
                    };
                    format!("  (`{}` {why})", d.breaker.name)
                })
                .collect();
            println!("{}  ready: {}{why}", stamp(start), snap.ready);
        }

        let segment = segment_at(start.elapsed());
        let before = (hits.calls.load(Relaxed), hits.calls_down.load(Relaxed));
        id += 1;
        let result = client.ready().await?.call(id).await;
        let tally = &mut tallies[SCRIPT[segment].phase];
        tally.calls += 1;
        tally.reached += hits.calls.load(Relaxed) - before.0;
        tally.reached_down += hits.calls_down.load(Relaxed) - before.1;
        match result {
            Ok(_) => tally.ok += 1,
            Err(err) if err.downcast_ref::<Open>().is_some() => tally.rejected += 1,
            Err(_) => tally.failed += 1,
        }
    }
    // Give the printer a turn, in case the last call made a transition.
    tokio::task::yield_now().await;

    print_summary(&tallies, &hits, &health);
    watchdog.shutdown().await;
    println!(
        "watchdog shut down; breaker `{}` {}",
        breaker.name(),
        breaker.state()
    );
    Ok(())
}

/// The fake downstream: answers as the script says at the time of the call, after
/// [`LATENCY`], and counts every call it receives in `hits`.
fn downstream(
    hits: Arc<Hits>,
    start: Instant,
) -> impl Service<u32, Response = u32, Error = io::Error> {
    service_fn(move |id: u32| {
        let up = is_up(start.elapsed());
        hits.calls.fetch_add(1, Relaxed);
        if !up {
            hits.calls_down.fetch_add(1, Relaxed);
        }
        async move {
            sleep(LATENCY).await;
            if up {
                Ok(id)
            } else {
                Err(refused())
            }
        }
    })
}

/// The watchdog's probe: a health check of the same downstream, wrapped to print each
/// result and, after a failed probe, how long the watchdog backed off.
fn probe(hits: Arc<Hits>, start: Instant) -> impl Probe {
    let failed_at = Arc::new(Mutex::new(None::<Instant>));
    move || {
        let backed_off = failed_at
            .lock()
            .unwrap()
            .map_or_else(String::new, |at: Instant| {
                format!("  (backed off {:.2}s)", at.elapsed().as_secs_f64())
            });
        let up = is_up(start.elapsed());
        hits.probes.fetch_add(1, Relaxed);
        if !up {
            hits.probes_down.fetch_add(1, Relaxed);
        }
        let failed_at = failed_at.clone();
        async move {
            sleep(LATENCY).await;
            *failed_at.lock().unwrap() = (!up).then(Instant::now);
            let verdict = if up { "pass" } else { "FAIL" };
            println!("{}    probe {verdict}{backed_off}", stamp(start));
            if up {
                Ok(())
            } else {
                Err(refused())
            }
        }
    }
}

fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused")
}

/// Prints each change of the script as it happens.
fn spawn_timeline_printer(start: Instant) {
    tokio::spawn(async move {
        let mut from = Duration::ZERO;
        for segment in &SCRIPT {
            sleep_until(start + from).await;
            let up = if segment.up { "UP" } else { "DOWN" };
            println!("{}  downstream {up}", stamp(start));
            from = segment.until;
        }
    });
}

/// Prints every state transition as it happens, from a task watching
/// [`Breaker::subscribe`]. The task lives as long as the runtime.
///
/// A `watch` channel keeps only the latest state, so two transitions between two turns
/// of this task would print as one. Here every call and probe awaits the downstream's
/// latency, which gives the task its turn; for a complete log whatever the timing, use
/// the `tracing` events instead. (So the escalation, which the watchdog prints as soon
/// as it sees the trip, comes out just before the trip's own line.)
fn spawn_transition_printer(breaker: &Breaker, start: Instant) {
    let breaker = breaker.clone();
    let mut states = breaker.subscribe();
    tokio::spawn(async move {
        let mut from = *states.borrow_and_update();
        while states.changed().await.is_ok() {
            // Let the watchdog, woken by the same change, run first: tokio wakes a
            // channel's receivers in a random order, and this keeps the output stable.
            tokio::task::yield_now().await;
            let to = *states.borrow_and_update();
            let note = match to {
                State::Open => {
                    format!("trip {}: 3 calls failed in a row", breaker.snapshot().trips)
                }
                State::Closed => {
                    let at = start.elapsed();
                    let up_for = at - segment_start(at);
                    format!(
                        "watchdog: 2 probes passed, {:.2}s after the downstream came up",
                        up_for.as_secs_f64()
                    )
                }
                _ => String::new(),
            };
            let (from_, to_) = (from.as_str(), to.as_str());
            println!("{}  breaker {from_:>6} -> {to_:<6}  {note}", stamp(start));
            from = to;
        }
    });
}

/// What callers saw in each phase, and the health registry's view.
fn print_summary(tallies: &[Tally; PHASES.len()], hits: &Hits, health: &Health) {
    println!();
    println!("phase     calls   ok  failed  rejected  reached downstream (while down)");
    for (name, t) in PHASES.iter().zip(tallies) {
        println!(
            "{name:<8}  {:>5}  {:>3}  {:>6}  {:>8}  {:>18} {:>14}",
            t.calls, t.ok, t.failed, t.rejected, t.reached, t.reached_down
        );
    }
    println!(
        "probes: {}, {} of them while the downstream was down",
        hits.probes.load(Relaxed),
        hits.probes_down.load(Relaxed)
    );

    let snap = health.snapshot();
    println!("health: ready {}", snap.ready);
    for dep in &snap.dependencies {
        let b = &dep.breaker;
        println!(
            "  `{}`: {}, escalated {}, calls {} (ok {}, failed {}), rejected {}, trips {}",
            b.name, b.state, dep.escalated, b.calls, b.successes, b.failures, b.rejected, b.trips
        );
    }
}
