//! The watchdog's task.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::probe::CatchUnwind;
use super::{Config, Probe};
use crate::backoff;
use crate::breaker::{Breaker, Recovery, State};

/// Attached from creation to drop: detaching, clearing escalation, and giving back the
/// probe lock even if the worker is dropped halfway through a probe.
struct Attached {
    shared: Arc<Recovery>,
    /// Whether this watchdog's escalation is counted on the breaker.
    escalated: bool,
}

impl Attached {
    fn new(shared: Arc<Recovery>, interval: Duration) -> Self {
        shared.attach(interval);
        Self {
            shared,
            escalated: false,
        }
    }

    /// Reports or withdraws this watchdog's escalation; other watchdogs' stay.
    fn set_escalated(&mut self, escalated: bool) {
        if self.escalated != escalated {
            self.escalated = escalated;
            self.shared.set_escalated(escalated);
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.shared.set_next_probe(None);
        self.set_escalated(false);
        self.shared.detach();
    }
}

/// The breaker's probe lock, held for one probe.
struct ProbeLock<'a>(&'a Recovery);

impl<'a> ProbeLock<'a> {
    fn try_new(shared: &'a Recovery) -> Option<Self> {
        // `then`, not `then_some`: a lock built eagerly and dropped on failure would
        // release the lock another watchdog holds.
        shared.try_lock_probe().then(|| ProbeLock(shared))
    }
}

impl Drop for ProbeLock<'_> {
    fn drop(&mut self) {
        self.0.unlock_probe();
    }
}

/// Why a wait ended.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    /// The deadline passed or the state changed: look again.
    Look,
    /// Shut down, or every breaker is gone.
    Stop,
}

struct Runner<P> {
    attached: Attached,
    alive: watch::Receiver<()>,
    states: watch::Receiver<State>,
    stop: watch::Receiver<bool>,
    probe: P,
    config: Config,
    delays: backoff::Iter,
    /// When the next probe is due.
    next_probe: Instant,
    passes: u32,
    failures: u32,
    trips_seen: u64,
    trip_times: VecDeque<Instant>,
    escalated: bool,
    closed_since: Option<Instant>,
}

pub(super) fn run<P: Probe>(
    breaker: Breaker,
    probe: P,
    config: Config,
    stop: watch::Receiver<bool>,
    done: oneshot::Sender<()>,
) -> impl Future<Output = ()> + Send {
    // Keep nothing that holds the breaker alive: the task ends with the last clone.
    let shared = Arc::new(Recovery::of(&breaker));
    let runner = Runner {
        alive: Recovery::alive(&breaker),
        states: breaker.subscribe(),
        stop,
        delays: config.backoff().iter(),
        next_probe: Instant::now(),
        passes: 0,
        failures: 0,
        trips_seen: shared.trips(),
        trip_times: VecDeque::new(),
        escalated: false,
        closed_since: None,
        attached: Attached::new(shared, config.interval),
        probe,
        config,
    };
    drop(breaker);
    async move {
        runner.run().await;
        drop(done);
    }
}

impl<P: Probe> Runner<P> {
    async fn run(mut self) {
        let name = self.attached.shared.name().clone();
        tracing::debug!(target: "steadfast::watchdog", breaker = &*name, "watchdog started");
        let mut last = None;
        loop {
            if self.attached.shared.is_gone() || *self.stop.borrow() {
                break;
            }
            let now = Instant::now();
            let state = self.attached.shared.state();
            if last != Some(state) {
                self.entered(state, last.is_none(), now);
                last = Some(state);
            }
            self.account_trips(now);
            let wake = match state {
                State::Open | State::HalfOpen => self.while_open(now).await,
                State::Closed => self.while_closed(now).await,
                // Forced closed: nothing to probe, but the breaker is not tripping, so
                // an escalation still clears after `within`.
                State::ForcedClosed => {
                    let deadline = self.clear_deadline(now);
                    self.wait(deadline).await
                }
                _ => self.wait(None).await,
            };
            if wake == Wake::Stop {
                break;
            }
        }
        tracing::debug!(target: "steadfast::watchdog", breaker = &*name, "watchdog ended");
    }

    /// Resets the schedule when the breaker enters a state.
    fn entered(&mut self, state: State, first: bool, now: Instant) {
        self.passes = 0;
        self.failures = 0;
        self.delays.reset();
        match state {
            State::ForcedClosed => {
                self.closed_since = Some(now);
                self.attached.shared.set_next_probe(None);
            }
            State::Closed => {
                self.closed_since = Some(now);
                self.next_probe = now + self.config.probe_while_closed.unwrap_or_default();
                self.attached.shared.set_next_probe(None);
            }
            _ => {
                self.closed_since = None;
                // At start, probe at once (a breaker booted open wants to connect);
                // after a trip, give the downstream an interval first.
                self.next_probe = if first {
                    now
                } else {
                    now + self.config.interval
                };
                self.publish_eta();
            }
        }
    }

    /// Tells the breaker when the next probe is due, for `retry_after` hints (the
    /// `Retry-After` of an HTTP 503): a caller retrying then finds the breaker closed
    /// if that probe passes and closes it.
    fn publish_eta(&self) {
        self.attached.shared.set_next_probe(Some(self.next_probe));
    }

    async fn while_open(&mut self, now: Instant) -> Wake {
        if now < self.next_probe {
            return self.wait(Some(self.next_probe)).await;
        }
        let shared = self.attached.shared.clone();
        let Some(lock) = ProbeLock::try_new(&shared) else {
            // Another watchdog is probing this breaker.
            self.next_probe = now + self.config.interval;
            return Wake::Look;
        };
        // While it runs: the answer is expected within an interval (or its timeout,
        // if shorter); a caller told so comes back about when the breaker may close.
        let expected = self.config.timeout.min(self.config.interval);
        shared.set_next_probe(now.checked_add(expected));
        let passed = match self.probe_once().await {
            Some(passed) => passed,
            None => return Wake::Stop,
        };
        drop(lock);
        let now = Instant::now();
        if passed {
            self.passes += 1;
            self.delays.reset();
            if self.passes >= self.config.healthy_threshold {
                self.passes = 0;
                shared.close();
                return Wake::Look;
            }
            self.next_probe = now + self.config.interval;
        } else {
            self.passes = 0;
            let delay = if self.escalated {
                self.config.backoff().max()
            } else {
                self.delays.next().unwrap_or(self.config.interval)
            };
            // A jittered delay can be near zero; probes never come closer than this.
            self.next_probe = now + delay.max(super::MIN_PERIOD);
        }
        self.publish_eta();
        Wake::Look
    }

    /// Clears an escalation once the breaker has stayed closed for `within`; else the
    /// instant it will clear, if escalated.
    fn clear_deadline(&mut self, now: Instant) -> Option<Instant> {
        if let (true, Some((_, within)), Some(since)) =
            (self.escalated, self.config.max_trips, self.closed_since)
        {
            let clears = since + within;
            if now >= clears {
                self.clear_escalation();
            } else {
                return Some(clears);
            }
        }
        None
    }

    async fn while_closed(&mut self, now: Instant) -> Wake {
        let deadline = self.clear_deadline(now);
        let Some(period) = self.config.probe_while_closed else {
            return self.wait(deadline).await;
        };
        if now < self.next_probe {
            let until = deadline.map_or(self.next_probe, |d| d.min(self.next_probe));
            return self.wait(Some(until)).await;
        }
        let shared = self.attached.shared.clone();
        let Some(lock) = ProbeLock::try_new(&shared) else {
            self.next_probe = now + period;
            return Wake::Look;
        };
        let passed = match self.probe_once().await {
            Some(passed) => passed,
            None => return Wake::Stop,
        };
        drop(lock);
        self.next_probe = Instant::now() + period;
        if passed {
            self.failures = 0;
        } else {
            self.failures += 1;
            if self.failures >= self.config.unhealthy_threshold {
                self.failures = 0;
                shared.open();
            }
        }
        Wake::Look
    }

    /// Runs one probe; `None` if the watchdog must stop meanwhile.
    async fn probe_once(&mut self) -> Option<bool> {
        let name = self.attached.shared.name().clone();
        let started = match catch_unwind(AssertUnwindSafe(|| self.probe.probe())) {
            Ok(future) => future,
            Err(_) => {
                tracing::debug!(target: "steadfast::watchdog", breaker = &*name, "probe panicked");
                count_probe(&name, false);
                tokio::task::yield_now().await;
                return Some(false);
            }
        };
        let probe = tokio::time::timeout(self.config.timeout, CatchUnwind::new(started));
        let result = tokio::select! {
            biased;
            _ = stopped(&mut self.stop) => return None,
            _ = self.alive.changed() => return None,
            result = probe => result,
        };
        let passed = match result {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::debug!(target: "steadfast::watchdog", breaker = &*name, %error, "probe failed");
                false
            }
            Err(_) => {
                tracing::debug!(
                    target: "steadfast::watchdog",
                    breaker = &*name,
                    timeout_ms = self.config.timeout.as_millis() as u64,
                    "probe timed out"
                );
                false
            }
        };
        count_probe(&name, passed);
        // However short the periods and quick the probes, the runtime's other tasks
        // get their turn between two probes.
        tokio::task::yield_now().await;
        Some(passed)
    }

    /// Waits until `deadline` (or forever), a state change, a shutdown, or the end of
    /// the breaker.
    async fn wait(&mut self, deadline: Option<Instant>) -> Wake {
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = stopped(&mut self.stop) => Wake::Stop,
            _ = self.alive.changed() => Wake::Stop,
            changed = self.states.changed() => match changed {
                Ok(()) => Wake::Look,
                Err(_) => Wake::Stop,
            },
            _ = sleep => Wake::Look,
        }
    }

    /// Counts new trips against the restart intensity; escalates past it.
    fn account_trips(&mut self, now: Instant) {
        let trips = self.attached.shared.trips();
        let new = trips.saturating_sub(self.trips_seen);
        self.trips_seen = trips;
        let Some((max, within)) = self.config.max_trips else {
            return;
        };
        for _ in 0..new.min(u64::from(max) + 1) {
            self.trip_times.push_back(now);
        }
        while self
            .trip_times
            .front()
            .is_some_and(|t| now.duration_since(*t) > within)
        {
            self.trip_times.pop_front();
        }
        if !self.escalated && self.trip_times.len() > max as usize {
            self.escalate(max, within);
        }
    }

    fn escalate(&mut self, max: u32, within: Duration) {
        self.escalated = true;
        self.attached.set_escalated(true);
        count_escalation(self.attached.shared.name());
        let shared = &self.attached.shared;
        tracing::error!(
            target: "steadfast::watchdog",
            breaker = &**shared.name(),
            trips = self.trip_times.len(),
            max_trips = max,
            within_ms = within.as_millis() as u64,
            "dependency escalated: the breaker trips too often; reporting not ready"
        );
        if let (Some(on_escalate), Some(snapshot)) =
            (&self.config.on_escalate, self.attached.shared.snapshot())
        {
            if catch_unwind(AssertUnwindSafe(|| on_escalate(&snapshot))).is_err() {
                tracing::warn!(target: "steadfast::watchdog", breaker = &**shared.name(), "on_escalate panicked");
            }
        }
    }

    fn clear_escalation(&mut self) {
        self.escalated = false;
        self.trip_times.clear();
        self.attached.set_escalated(false);
        let shared = &self.attached.shared;
        tracing::info!(
            target: "steadfast::watchdog",
            breaker = &**shared.name(),
            "dependency no longer escalated: the breaker stayed closed"
        );
    }
}

/// Resolves when shutdown is asked; never if the handle was dropped (detached).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Counts a probe's end in the metrics (feature `metrics`); nothing without it.
fn count_probe(_breaker: &str, _passed: bool) {
    #[cfg(feature = "metrics")]
    crate::metrics::probe(_breaker, _passed);
}

/// Counts an escalation in the metrics (feature `metrics`); nothing without it.
fn count_escalation(_breaker: &str) {
    #[cfg(feature = "metrics")]
    crate::metrics::escalation(_breaker);
}
