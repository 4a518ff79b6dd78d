//! Many tasks on a multi-thread runtime share one breaker that trips and recovers
//! again and again. The test checks only what must hold whatever the timing:
//!
//! - nothing is lost: every call the tasks made is exactly one of a success, an inner
//!   failure, an ignored inner error or an `Open` rejection, and the breaker's snapshot
//!   agrees with the tasks' own tallies kind by kind;
//! - every transition emits exactly one `tracing` event, the events form a valid chain
//!   of states from `closed`, and the number of events going to `open` is the number of
//!   trips.
//!
//! Real time runs here (paused time needs a current-thread runtime), so the open delay
//! is a few microseconds and the assertions never depend on how long anything took.

use std::error::Error;
use std::fmt;
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use steadfast::backoff::Backoff;
use steadfast::breaker::error::Open;
use steadfast::breaker::{Breaker, State};
use steadfast::Outcome;
use tower::{service_fn, Layer, Service, ServiceExt};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};

const TASKS: u64 = 64;
const CALLS_PER_TASK: u64 = 500;
const NAME: &str = "concurrency";

// --- a layer catching the breaker's transition events ------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Transition {
    level: Level,
    breaker: String,
    from: String,
    to: String,
    reason: String,
}

#[derive(Default)]
struct Fields {
    breaker: Option<String>,
    from: Option<String>,
    to: Option<String>,
    reason: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        let slot = match field.name() {
            "breaker" => &mut self.breaker,
            "from" => &mut self.from,
            "to" => &mut self.to,
            "reason" => &mut self.reason,
            _ => return,
        };
        *slot = Some(value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // A field recorded other than as a string is kept in Debug form, so a wrong
        // field type shows up as a mismatch instead of a missing field.
        if field.name() != "message" {
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

/// Every event with target `steadfast::breaker`, in the order emitted.
struct Catcher(Arc<Mutex<Vec<Transition>>>);

impl<S: Subscriber> tracing_subscriber::Layer<S> for Catcher {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != "steadfast::breaker" {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let missing = || "<missing>".to_owned();
        self.0.lock().unwrap().push(Transition {
            level: *event.metadata().level(),
            breaker: fields.breaker.unwrap_or_else(missing),
            from: fields.from.unwrap_or_else(missing),
            to: fields.to.unwrap_or_else(missing),
            reason: fields.reason.unwrap_or_else(missing),
        });
    }
}

/// Installs the catcher as the process-wide subscriber (this file is its own process),
/// so events from the runtime's worker threads are seen too.
fn transitions() -> &'static Arc<Mutex<Vec<Transition>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<Transition>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Catcher(log.clone()));
        tracing::subscriber::set_global_default(subscriber).expect("a subscriber was set");
        log
    })
}

// --- the flaky downstream ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaky {
    /// Counts as a failure.
    Down,
    /// Says nothing about health: ignored by the classifier.
    NotFound,
}

impl fmt::Display for Flaky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flaky::Down => "down",
            Flaky::NotFound => "not found",
        })
    }
}

impl Error for Flaky {}

/// The answer to the `n`th call that reached the downstream, counted across all
/// tasks: in every 32 calls, the first 8 fail, one is "not found", the rest succeed.
/// The runs of failures are long enough to trip a 3-in-a-row rule whatever the
/// interleaving of the two worker threads.
fn answer(n: u64, req: u64) -> Result<u64, Flaky> {
    match n % 32 {
        0..=7 => Err(Flaky::Down),
        20 => Err(Flaky::NotFound),
        _ => Ok(req),
    }
}

fn classify(result: &Result<u64, Flaky>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(Flaky::Down) => Outcome::Failure,
        Err(Flaky::NotFound) => Outcome::Ignored,
    }
}

/// What the tasks saw, kind by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    made: u64,
    successes: u64,
    failures: u64,
    ignored: u64,
    rejected: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Self) {
        self.made += o.made;
        self.successes += o.successes;
        self.failures += o.failures;
        self.ignored += o.ignored;
        self.rejected += o.rejected;
    }
}

fn is_valid_edge(from: &str, to: &str, reason: &str) -> bool {
    matches!(
        (from, to, reason),
        ("closed", "open", "consecutive failures" | "failure rate")
            | ("open", "half-open", "open delay elapsed")
            | ("half-open", "closed", "trial calls succeeded")
            | (
                "half-open",
                "open",
                "trial call failed" | "trial call timed out"
            )
    )
}

#[test]
fn many_tasks_share_one_breaker_and_nothing_is_lost() {
    let log = transitions();

    let breaker = Breaker::builder(NAME)
        .consecutive_failures(3)
        .failure_rate(0.9)
        .count_window(20)
        .open_backoff(Backoff::constant(Duration::from_micros(50)))
        .half_open_calls(1)
        .build()
        .unwrap();
    let rx = breaker.subscribe();

    let downstream_calls = Arc::new(AtomicU64::new(0));
    let inner = {
        let n = downstream_calls.clone();
        service_fn(move |req: u64| -> Ready<Result<u64, Flaky>> {
            ready(answer(n.fetch_add(1, Relaxed), req))
        })
    };
    let svc = breaker.layer().classify(classify).layer(inner);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let total = runtime.block_on(async move {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    for i in 0..CALLS_PER_TASK {
                        let req = t * CALLS_PER_TASK + i;
                        tally.made += 1;
                        let svc = svc.ready().await.expect("poll_ready never fails");
                        match svc.call(req).await {
                            Ok(v) => {
                                assert_eq!(v, req);
                                tally.successes += 1;
                            }
                            Err(e) => {
                                if let Some(open) = e.downcast_ref::<Open>() {
                                    assert_eq!(open.breaker(), NAME);
                                    tally.rejected += 1;
                                } else {
                                    match e.downcast_ref::<Flaky>() {
                                        Some(Flaky::Down) => tally.failures += 1,
                                        Some(Flaky::NotFound) => tally.ignored += 1,
                                        None => panic!("unexpected error: {e}"),
                                    }
                                }
                            }
                        }
                        tokio::task::yield_now().await;
                    }
                    tally
                })
            })
            .collect();
        let mut total = Tally::default();
        for task in tasks {
            total += task.await.expect("a task panicked");
        }
        total
    });
    drop(runtime);

    // --- nothing is lost -----------------------------------------------------------------
    let snap = breaker.snapshot();
    assert_eq!(total.made, TASKS * CALLS_PER_TASK);
    assert_eq!(
        total.successes + total.failures + total.ignored + total.rejected,
        total.made,
        "a call ended in none of the four ways: {total:?}"
    );
    assert_eq!(snap.calls, snap.successes + snap.failures + snap.ignored);
    assert_eq!(snap.successes, total.successes, "{snap:?} vs {total:?}");
    assert_eq!(snap.failures, total.failures, "{snap:?} vs {total:?}");
    assert_eq!(snap.ignored, total.ignored, "{snap:?} vs {total:?}");
    assert_eq!(snap.rejected, total.rejected, "{snap:?} vs {total:?}");
    assert_eq!(
        snap.calls + snap.rejected,
        total.made,
        "{snap:?} vs {total:?}"
    );
    // Every call that was not rejected reached the downstream exactly once.
    assert_eq!(downstream_calls.load(Relaxed), snap.calls);
    assert!(snap.trips >= 1, "the breaker never tripped: {snap:?}");
    assert!(total.rejected >= 1, "nothing was ever rejected: {total:?}");
    assert!(total.ignored >= 1, "nothing was ever ignored: {total:?}");

    // --- one event per transition, forming a valid chain ---------------------------------
    let events: Vec<Transition> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|t| t.breaker == NAME)
        .cloned()
        .collect();
    assert!(!events.is_empty());
    let mut state = "closed".to_owned();
    for (i, t) in events.iter().enumerate() {
        assert_eq!(
            t.from, state,
            "event {i} does not start where the last ended: {t:?}"
        );
        assert!(
            is_valid_edge(&t.from, &t.to, &t.reason),
            "event {i} is not a valid transition: {t:?}"
        );
        let level = if t.to == "open" {
            Level::WARN
        } else {
            Level::INFO
        };
        assert_eq!(t.level, level, "event {i} has the wrong level: {t:?}");
        state.clone_from(&t.to);
    }
    let to_open = events.iter().filter(|t| t.to == "open").count() as u64;
    assert_eq!(to_open, snap.trips, "events to open vs trips");
    let closes = events.iter().filter(|t| t.to == "closed").count();
    let half_opens = events.iter().filter(|t| t.to == "half-open").count();
    assert!(closes >= 1, "the breaker never recovered: {snap:?}");
    // Every half-open ended in a close or a reopen, except perhaps the last.
    let trial_ends = events.iter().filter(|t| t.from == "half-open").count();
    assert!(half_opens == trial_ends || half_opens == trial_ends + 1);

    // The final state agrees with the events, the snapshot and the watch.
    assert_eq!(state, snap.state.as_str());
    assert_eq!(breaker.state(), snap.state);
    assert_eq!(*rx.borrow(), snap.state);
    assert!(!matches!(
        snap.state,
        State::ForcedOpen | State::ForcedClosed
    ));

    eprintln!(
        "{total:?}; trips {}, recoveries {closes}, events {}",
        snap.trips,
        events.len()
    );
}
