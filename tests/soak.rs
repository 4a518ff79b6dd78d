//! Soak: 64 tasks on a 2-thread runtime share one breaker for a million calls with
//! random outcomes, cancellations and timeouts, through many trip / recover cycles.
//!
//! Paused time is impossible on a multi-thread runtime, so the open delays are
//! microseconds and real time passing between calls drives recovery; nothing sleeps.
//! Outcomes come in phases (three healthy spells, then an outage) so the breaker keeps
//! tripping and recovering.
//!
//! Checks: every figure of the snapshot equals what the callers saw; `trips` equals the
//! "opened" events traced; the breaker ends able to close (no half-open left stuck by
//! a cancelled or timed-out trial); and live heap memory after the run equals what it
//! was after a warm-up (the time window and counters are fixed-size).
//!
//! `STEADFAST_SOAK_CALLS=10000000 cargo test --all-features --test soak -- --nocapture`
//! runs a longer soak.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use steadfast::backoff::{Backoff, Jitter};
use steadfast::breaker::error::Open;
use steadfast::breaker::{Breaker, BreakerService, State};
use steadfast::Outcome;
use tower::{Service, ServiceExt};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

// --- live heap bytes ---------------------------------------------------------------------

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every method forwards to the system allocator unchanged and only adds a
// relaxed counter update.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// --- counting "opened" events ------------------------------------------------------------

static OPENED_EVENTS: AtomicU64 = AtomicU64::new(0);

/// Counts transition events whose `to` field is "open".
struct OpenedEvents;

struct To(bool);

impl Visit for To {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "to" && value == "open" {
            self.0 = true;
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: tracing::Subscriber> Layer<S> for OpenedEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "steadfast::breaker" {
            let mut to = To(false);
            event.record(&mut to);
            if to.0 {
                OPENED_EVENTS.fetch_add(1, Relaxed);
            }
        }
    }
}

// --- the downstream ----------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Plan {
    Ok,
    Err,
    Ignore,
    /// Yields to the scheduler once, then answers.
    YieldThen(bool),
    /// Never answers: the caller cancels it or times it out.
    Hang,
}

fn classify(r: &Result<(), &'static str>) -> Outcome {
    match r {
        Ok(()) => Outcome::Success,
        Err("ignore") => Outcome::Ignored,
        Err(_) => Outcome::Failure,
    }
}

/// What the callers saw, added up.
#[derive(Debug, Default)]
struct Tally {
    successes: AtomicU64,
    failures: AtomicU64,
    ignored: AtomicU64,
    rejected: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
}

/// A small xorshift generator: deterministic per task.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const TASKS: u64 = 64;
/// Calls (by all tasks) per phase; one phase in four is an outage.
const PHASE: u64 = 4_000;

/// Calls issued so far by all tasks: the phases are global, like a real outage.
static ISSUED: AtomicU64 = AtomicU64::new(0);

fn plan(rng: &mut Rng) -> Plan {
    let outage = (ISSUED.fetch_add(1, Relaxed) / PHASE) % 4 == 3;
    let fail_percent = if outage { 80 } else { 3 };
    match rng.below(100) {
        0 => Plan::Hang,
        1..=2 => Plan::Ignore,
        3..=9 => Plan::YieldThen(rng.below(100) >= fail_percent),
        _ if rng.below(100) < fail_percent => Plan::Err,
        _ => Plan::Ok,
    }
}

async fn run_calls(svc: &mut Svc, seed: u64, calls: u64, tally: &Tally) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    for _ in 0..calls {
        let plan = plan(&mut rng);
        let fut = svc
            .ready()
            .await
            .expect("poll_ready never fails")
            .call(plan);
        let result = match plan {
            Plan::Hang if rng.below(2) == 0 => {
                // Cancelled: polled once (admitted and running), then dropped. Only a
                // rejection is ready at once.
                let mut fut = pin!(fut);
                let polled = poll_fn(|cx| {
                    Poll::Ready(match fut.as_mut().poll(cx) {
                        Poll::Ready(result) => Some(result),
                        Poll::Pending => None,
                    })
                })
                .await;
                match polled {
                    Some(result) => result,
                    None => {
                        tally.cancelled.fetch_add(1, Relaxed);
                        continue;
                    }
                }
            }
            Plan::Hang => match tokio::time::timeout(Duration::from_micros(100), fut).await {
                Ok(result) => result,
                Err(_) => {
                    tally.timed_out.fetch_add(1, Relaxed);
                    continue;
                }
            },
            _ => fut.await,
        };
        let counter = match result {
            Ok(()) => &tally.successes,
            Err(e) if e.downcast_ref::<Open>().is_some() => &tally.rejected,
            Err(e) if e.to_string() == "ignore" => &tally.ignored,
            Err(_) => &tally.failures,
        };
        counter.fetch_add(1, Relaxed);
    }
}

type Svc = BreakerService<
    tower::util::BoxCloneSyncService<Plan, (), &'static str>,
    fn(&Result<(), &'static str>) -> Outcome,
>;

fn downstream() -> tower::util::BoxCloneSyncService<Plan, (), &'static str> {
    tower::util::BoxCloneSyncService::new(tower::service_fn(|plan: Plan| async move {
        match plan {
            Plan::Ok => Ok(()),
            Plan::Err => Err("boom"),
            Plan::Ignore => Err("ignore"),
            Plan::YieldThen(ok) => {
                tokio::task::yield_now().await;
                if ok {
                    Ok(())
                } else {
                    Err("boom")
                }
            }
            Plan::Hang => std::future::pending().await,
        }
    }))
}

/// Runs `per_task` calls on each of the 64 tasks.
async fn phase(svc: &Svc, tally: &Arc<Tally>, seed: u64, per_task: u64) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let mut svc = svc.clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                run_calls(&mut svc, seed + t, per_task, &tally).await;
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("no task panics");
    }
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_calls_through_many_trips() {
    // Global: the runtime's worker threads emit the events.
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(OpenedEvents))
        .expect("the only subscriber of this test binary");
    let started = Instant::now();
    let calls = env("STEADFAST_SOAK_CALLS").unwrap_or(1_000_000);
    let per_task = calls / TASKS;
    let warm_up = per_task / 10;

    let breaker = Breaker::builder("soak")
        .consecutive_failures(5)
        .failure_rate(0.5)
        .time_window(Duration::from_millis(10))
        .min_calls(10)
        .open_backoff(
            Backoff::exponential(Duration::from_micros(20), Duration::from_micros(500))
                .jitter(Jitter::Full)
                .seed(7),
        )
        .half_open_calls(3)
        .half_open_timeout(Duration::from_millis(1))
        .build()
        .unwrap();
    let svc: Svc = BreakerService::new(downstream(), breaker.clone())
        .classify(classify as fn(&Result<(), &'static str>) -> Outcome);
    let tally = Arc::new(Tally::default());

    phase(&svc, &tally, 1, warm_up).await;
    let live_after_warm_up = LIVE.load(Relaxed);
    phase(&svc, &tally, 1 + TASKS, per_task - warm_up).await;
    let live_at_end = LIVE.load(Relaxed);
    let elapsed = started.elapsed();

    // Every figure is what the callers saw.
    let snap = breaker.snapshot();
    let seen = |c: &AtomicU64| c.load(Relaxed);
    assert_eq!(snap.successes, seen(&tally.successes), "{snap:?}");
    assert_eq!(snap.failures, seen(&tally.failures), "{snap:?}");
    assert_eq!(snap.ignored, seen(&tally.ignored), "{snap:?}");
    assert_eq!(snap.calls, snap.successes + snap.failures + snap.ignored);
    assert_eq!(snap.rejected, seen(&tally.rejected), "{snap:?}");
    let cancelled = seen(&tally.cancelled) + seen(&tally.timed_out);
    assert_eq!(snap.calls + snap.rejected + cancelled, per_task * TASKS);
    assert_eq!(
        snap.trips,
        OPENED_EVENTS.load(Relaxed),
        "one event per trip"
    );
    assert!(snap.trips >= 100, "too few trip / recover cycles: {snap:?}");
    assert!(seen(&tally.cancelled) > 0 && seen(&tally.timed_out) > 0);

    // Memory stays flat: nothing grows with the number of calls.
    let growth = live_at_end - live_after_warm_up;
    assert!(
        growth.abs() < 64 * 1024,
        "live heap {live_after_warm_up} B after warm-up, {live_at_end} B at the end"
    );

    // No half-open is left stuck by the cancelled and timed-out trials: healthy calls
    // close the breaker once the (microsecond) open delay has passed.
    let mut probe = svc.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while breaker.state() != State::Closed {
        assert!(Instant::now() < deadline, "stuck in {:?}", breaker.state());
        let _ = probe.ready().await.unwrap().call(Plan::Ok).await;
        tokio::task::yield_now().await;
    }

    eprintln!(
        "soak: {} calls ({} completed, {} rejected, {} cancelled, {} timed out), \
         {} trips, {:.1?}; live heap {} B after warm-up, {} B at the end",
        per_task * TASKS,
        snap.calls,
        snap.rejected,
        seen(&tally.cancelled),
        seen(&tally.timed_out),
        snap.trips,
        elapsed,
        live_after_warm_up,
        live_at_end,
    );
}
