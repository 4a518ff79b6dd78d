//! The circuit breaker at work: a downstream goes down for a while, then comes back.
//!
//! ```text
//! cargo run --example breaker
//! ```
//!
//! A fake downstream (a `tower::service_fn`) follows a script: up for 3 s, down (every
//! call fails with "connection refused") until 5 s, then up again. A client calls it
//! every 100 ms for 8 s through `ServiceBuilder::new().layer(breaker.layer())`, with a
//! breaker that trips after 3 failures in a row, stays open 1 s then 2 s then 4 s ...
//! (up to 8 s, with seeded jitter) on trips in a row, and closes after 2 good trial calls.
//!
//! The output shows:
//!
//! - each state transition, from a task watching [`Breaker::subscribe`]: closed -> open
//!   -> half-open -> open again for longer (the trial call failed: still down) ->
//!   half-open -> closed once the downstream is back;
//! - the first fast rejection of each open spell: the [`Open`] error and its
//!   `retry_after`;
//! - per phase of the script, what callers saw: successes, failures from the
//!   downstream, fast rejections, and how many calls reached the downstream. While it
//!   was down, most calls never reached it: the breaker spared it;
//! - the breaker's final [`Breaker::snapshot`].
//!
//! It runs on tokio's paused clock: every sleep advances simulated time at once, so the
//! demo finishes instantly and the timestamps are simulated seconds since the start. The
//! jitter has a fixed seed, so the output is the same on every run. (Each transition is
//! also a `tracing` event, target `steadfast::breaker`, for any installed subscriber.)

use std::io;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use steadfast::backoff::{Backoff, Jitter};
use steadfast::breaker::{error::Open, Breaker, State};
use steadfast::BoxError;
use tokio::time::{sleep, sleep_until, Instant};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

/// One stretch of the downstream's script.
struct Phase {
    name: &'static str,
    until: Duration,
    up: bool,
}

/// The downstream's script: up, down, back up.
const SCRIPT: [Phase; 3] = [
    Phase {
        name: "up",
        until: Duration::from_secs(3),
        up: true,
    },
    Phase {
        name: "down",
        until: Duration::from_secs(5),
        up: false,
    },
    Phase {
        name: "back up",
        until: Duration::from_secs(8),
        up: true,
    },
];

/// Time between two client calls.
const PACE: Duration = Duration::from_millis(100);
/// How long the downstream takes to answer, up or down.
const LATENCY: Duration = Duration::from_millis(10);

/// The index in [`SCRIPT`] of the phase at `at` since the start.
fn phase_at(at: Duration) -> usize {
    SCRIPT
        .iter()
        .position(|p| at < p.until)
        .unwrap_or(SCRIPT.len() - 1)
}

/// Simulated seconds since `start`, for timestamps.
fn stamp(start: Instant) -> String {
    format!("{:6.2}s", start.elapsed().as_secs_f64())
}

/// What callers saw during one phase.
#[derive(Default)]
struct Tally {
    calls: u32,
    ok: u32,
    failed: u32,
    rejected: u32,
    reached: u32,
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), BoxError> {
    let start = Instant::now();

    let breaker = Breaker::builder("inventory")
        .consecutive_failures(3)
        .open_backoff(
            Backoff::exponential(Duration::from_secs(1), Duration::from_secs(8))
                .jitter(Jitter::Equal) // each delay in [d / 2, d]
                .seed(7),
        )
        .half_open_calls(2)
        .build()?;
    spawn_transition_printer(&breaker, start);

    let hits = Arc::new(AtomicU32::new(0));
    let mut client = ServiceBuilder::new()
        .layer(breaker.layer())
        .service(downstream(hits.clone(), start));

    println!("breaker `inventory`: opens after 3 failures in a row, for 1s, 2s, 4s.. (jittered);");
    println!(
        "  closes after 2 good trial calls. Client: a call every {}ms; downstream answers in {}ms",
        PACE.as_millis(),
        LATENCY.as_millis()
    );
    let mut tallies: [Tally; 3] = Default::default();
    let mut phase = usize::MAX;
    let mut rejecting = false;
    let mut at = Duration::ZERO;
    let mut id = 0;
    while at < SCRIPT[SCRIPT.len() - 1].until {
        sleep_until(start + at).await;
        at += PACE;
        if phase_at(start.elapsed()) != phase {
            phase = phase_at(start.elapsed());
            let now = if SCRIPT[phase].up {
                "UP"
            } else {
                "DOWN (connection refused)"
            };
            println!("{}  downstream is {now}", stamp(start));
        }

        let before = hits.load(Relaxed);
        id += 1;
        let result = client.ready().await?.call(id).await;
        let tally = &mut tallies[phase];
        tally.calls += 1;
        tally.reached += hits.load(Relaxed) - before;
        let was_rejecting = std::mem::replace(&mut rejecting, false);
        match result {
            Ok(_) => tally.ok += 1,
            Err(err) => match err.downcast_ref::<Open>() {
                Some(open) => {
                    tally.rejected += 1;
                    rejecting = true;
                    if !was_rejecting {
                        let after = open.retry_after().map_or_else(
                            || "soon".to_owned(),
                            |d| format!("{:.2}s", d.as_secs_f64()),
                        );
                        println!(
                            "{}    calls rejected fast by `{}` (Open error), first one told: retry_after {after}",
                            stamp(start),
                            open.breaker()
                        );
                    }
                }
                None => tally.failed += 1,
            },
        }
    }
    // Give the printer a turn, in case the last call made a transition.
    tokio::task::yield_now().await;

    print_summary(&tallies, &breaker);
    Ok(())
}

/// The fake downstream: answers as the script says at the time of the call, after
/// [`LATENCY`], and counts in `hits` every call it receives.
fn downstream(
    hits: Arc<AtomicU32>,
    start: Instant,
) -> impl Service<u32, Response = u32, Error = io::Error> {
    service_fn(move |id: u32| {
        hits.fetch_add(1, Relaxed);
        let up = SCRIPT[phase_at(start.elapsed())].up;
        async move {
            sleep(LATENCY).await;
            if up {
                Ok(id)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "connection refused",
                ))
            }
        }
    })
}

/// Prints every state transition as it happens, from a task watching
/// [`Breaker::subscribe`]; on opening, also for how long the breaker will reject calls.
/// The task lives as long as the runtime.
///
/// A `watch` channel keeps only the latest state, so two transitions between two turns
/// of this task would print as one. Here every call awaits the downstream's latency,
/// which gives the task its turn; for a complete log whatever the timing, use the
/// `tracing` events instead.
fn spawn_transition_printer(breaker: &Breaker, start: Instant) {
    let breaker = breaker.clone();
    let mut states = breaker.subscribe();
    tokio::spawn(async move {
        let mut from = *states.borrow_and_update();
        while states.changed().await.is_ok() {
            let to = *states.borrow_and_update();
            let snap = breaker.snapshot();
            let note = match (to, snap.retry_after) {
                (State::Open, Some(d)) => {
                    format!(
                        "trip {}, rejecting calls for {:.2}s",
                        snap.trips,
                        d.as_secs_f64()
                    )
                }
                (State::HalfOpen, _) => "open delay over: trial calls go through".to_owned(),
                (State::Closed, _) => "trial calls succeeded".to_owned(),
                _ => String::new(),
            };
            let (from_, to_) = (from.as_str(), to.as_str());
            println!("{}  breaker {from_:>9} -> {to_:<9}  {note}", stamp(start));
            from = to;
        }
    });
}

/// What callers saw in each phase, and the breaker's own figures.
fn print_summary(tallies: &[Tally; 3], breaker: &Breaker) {
    println!();
    println!("phase     span   calls  ok  failed  rejected  reached downstream");
    let mut from = Duration::ZERO;
    for (phase, t) in SCRIPT.iter().zip(tallies) {
        let span = format!("{}-{}s", from.as_secs(), phase.until.as_secs());
        println!(
            "{:<8}  {span:<5}  {:>5}  {:>2}  {:>6}  {:>8}  {:>18}",
            phase.name, t.calls, t.ok, t.failed, t.rejected, t.reached
        );
        from = phase.until;
    }
    let down = &tallies[1];
    println!(
        "while down: {} of {} calls reached the downstream (without the breaker: all {})",
        down.reached, down.calls, down.calls
    );

    let s = breaker.snapshot();
    println!(
        "snapshot: state {}, calls {}, successes {}, failures {}, rejected {}, trips {}",
        s.state, s.calls, s.successes, s.failures, s.rejected, s.trips
    );
}
