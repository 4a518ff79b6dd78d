//! The client stacks compared, built from steadfast's root API over any transport.
//!
//! Every stack ends in the same per-attempt timeout; the breaker, when there is one,
//! is shared by every client (one service instance calling one downstream), and so is
//! the retry budget. Each client has its own retry layer, with its own jitter seed.

use std::time::Duration;

use steadfast::backoff::{Backoff, Jitter};
use steadfast::breaker::Breaker;
use steadfast::retry::{Budget, RetryLayer, RetryPolicy};
use steadfast::watchdog::{Watchdog, WatchdogHandle};
use steadfast::ConfigError;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceBuilder, ServiceExt};

use crate::sim::{Kind, Transport};

/// The stacks, from nothing to everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum StackKind {
    /// Timeout only.
    Bare,
    /// 3 attempts, exponential backoff without jitter, no budget.
    Naive,
    /// steadfast retry: 3 attempts, full jitter, a budget.
    Retry,
    /// A breaker only.
    Breaker,
    /// steadfast retry outside a breaker.
    RetryBreaker,
    /// steadfast retry outside a breaker whose recovery a watchdog owns.
    Watchdog,
    /// What a user gets from the defaults: `RetryPolicy::new()` outside
    /// `Breaker::new`, and a watchdog with only its interval set (seeded, so a run
    /// repeats; the seed changes no setting).
    Defaults,
    /// The tuned watchdog stack with an adaptive breaker: throttling sheds the excess
    /// of partial failure, the trip rule is left for a dead downstream.
    Adaptive,
}

impl StackKind {
    pub const ALL: [StackKind; 8] = [
        StackKind::Bare,
        StackKind::Naive,
        StackKind::Retry,
        StackKind::Breaker,
        StackKind::RetryBreaker,
        StackKind::Watchdog,
        StackKind::Defaults,
        StackKind::Adaptive,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StackKind::Bare => "bare",
            StackKind::Naive => "naive retry",
            StackKind::Retry => "steadfast retry",
            StackKind::Breaker => "breaker",
            StackKind::RetryBreaker => "retry + breaker",
            StackKind::Watchdog => "retry + breaker + watchdog",
            StackKind::Defaults => "defaults",
            StackKind::Adaptive => "adaptive",
        }
    }
}

/// The settings every stack shares. The defaults are the harness's published setup.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// Per attempt (every stack).
    pub timeout: Duration,
    /// Attempts of both retry stacks (first call included).
    pub attempts: u32,
    /// Retry delays before jitter (both retry stacks).
    pub retry_backoff: Backoff,
    /// steadfast retry's budget: `(ratio, min_per_sec, ttl)`.
    pub budget: (f64, u32, Duration),
    /// The breaker's rule: open at this failure rate over the last `window` calls (once
    /// `min_calls` are in). No rule on failures in a row: at a high call rate a brownout
    /// that fails 30% of calls makes runs of 5 in a row within a second.
    pub failure_rate: f64,
    pub window: u32,
    pub min_calls: u32,
    /// How long the breaker stays open when no watchdog owns its recovery (jittered).
    pub open_backoff: Backoff,
    /// The watchdog's probe spacing while probes fail (jittered), ...
    pub probe_backoff: Backoff,
    /// ... each probe's timeout (the client's: a probe passes when a request would), ...
    pub probe_timeout: Duration,
    /// ... and the passes in a row that close the breaker.
    pub healthy_threshold: u32,
    /// The `defaults` stack's watchdog interval, its only setting.
    pub defaults_interval: Duration,
    /// The `adaptive` stack's breaker: its time window (throttling and the trip rule
    /// share it), the trip rate for a dead downstream, and the throttling's `k`.
    pub adaptive_window: Duration,
    pub adaptive_trip: f64,
    pub adaptive_k: f64,
    /// The `adaptive` stack's failed-probe spacing (its interval is the max).
    pub adaptive_probe_backoff: Backoff,
    /// How long a run waits after the last request is sent, for the last answers.
    pub drain: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            timeout: ms(1000),
            attempts: 3,
            retry_backoff: Backoff::exponential(ms(50), ms(1000)),
            budget: (0.1, 5, ms(10_000)),
            failure_rate: 0.5,
            window: 100,
            min_calls: 20,
            open_backoff: Backoff::exponential(ms(1000), ms(8000)).jitter(Jitter::Equal),
            probe_backoff: Backoff::exponential(ms(500), ms(1000)).jitter(Jitter::Equal),
            probe_timeout: ms(1000),
            healthy_threshold: 1,
            defaults_interval: ms(1_000),
            adaptive_window: ms(2_500),
            adaptive_trip: 0.95,
            adaptive_k: 2.0,
            adaptive_probe_backoff: Backoff::exponential(ms(1_000), ms(2_000))
                .jitter(Jitter::Equal),
            drain: ms(10_000),
        }
    }
}

/// One stack, shared by the clients: its breaker, budget and watchdog.
#[derive(Debug)]
pub struct Stack {
    kind: StackKind,
    tuning: Tuning,
    seed: u64,
    breaker: Option<Breaker>,
    budget: Budget,
    watchdog: Option<WatchdogHandle>,
}

impl Stack {
    /// Builds the shared parts; the watchdog (if any) probes through `transport`. Call
    /// within the tokio runtime that will run the load.
    pub fn new(
        kind: StackKind,
        tuning: &Tuning,
        seed: u64,
        transport: Transport,
    ) -> Result<Self, ConfigError> {
        let (ratio, min_per_sec, ttl) = tuning.budget;
        let breaker = match kind {
            StackKind::Bare | StackKind::Naive | StackKind::Retry => None,
            // The defaults; the seed fixes the throttling's draws and the open jitter.
            StackKind::Defaults => Some(Breaker::builder(kind.name()).seed(seed).build()?),
            StackKind::Adaptive => Some(
                Breaker::builder(kind.name())
                    .failure_rate(tuning.adaptive_trip)
                    .time_window(tuning.adaptive_window)
                    .min_calls(tuning.min_calls)
                    .adaptive_throttling(tuning.adaptive_k)
                    .seed(seed)
                    .build()?,
            ),
            _ => Some(
                Breaker::builder(kind.name())
                    .failure_rate(tuning.failure_rate)
                    .count_window(tuning.window)
                    .min_calls(tuning.min_calls)
                    .open_backoff(tuning.open_backoff.seed(seed))
                    .half_open_timeout(tuning.timeout)
                    .build()?,
            ),
        };
        let watchdog = match (&breaker, kind) {
            (Some(breaker), StackKind::Watchdog | StackKind::Adaptive) => {
                // The tuned probes; the adaptive stack's are spaced 1 to 2 s apart.
                let (backoff, interval) = match kind {
                    StackKind::Adaptive => (
                        tuning.adaptive_probe_backoff,
                        tuning.adaptive_probe_backoff.base(),
                    ),
                    _ => (tuning.probe_backoff, tuning.probe_backoff.max()),
                };
                let probe = move || transport.clone().oneshot(Kind::Probe);
                Some(
                    Watchdog::builder(breaker, probe)
                        .backoff(backoff.seed(seed ^ 0xdead_beef))
                        .interval(interval)
                        .timeout(tuning.probe_timeout)
                        .healthy_threshold(tuning.healthy_threshold)
                        .spawn()?,
                )
            }
            (Some(breaker), StackKind::Defaults) => {
                let probe = move || transport.clone().oneshot(Kind::Probe);
                // Only the interval; the default spacing of failed probes (the
                // interval, equal jitter), seeded.
                let i = tuning.defaults_interval;
                let spacing = Backoff::exponential(i, 2 * i)
                    .jitter(Jitter::Equal)
                    .seed(seed ^ 0xdead_beef);
                Some(
                    Watchdog::builder(breaker, probe)
                        .interval(tuning.defaults_interval)
                        .backoff(spacing)
                        .spawn()?,
                )
            }
            _ => None,
        };
        let budget = match kind {
            // `RetryPolicy::new()`'s budget, one for the service all clients share.
            StackKind::Defaults => RetryPolicy::new().get_budget().clone(),
            _ => Budget::new(ratio, min_per_sec, ttl)?,
        };
        Ok(Self {
            kind,
            tuning: tuning.clone(),
            seed,
            breaker,
            budget,
            watchdog,
        })
    }

    pub fn breaker(&self) -> Option<&Breaker> {
        self.breaker.as_ref()
    }

    /// Client `id`'s service: `[retry ->] [breaker ->] timeout -> transport`.
    pub fn client(&self, id: u32, transport: Transport) -> Result<Transport, ConfigError> {
        let t = &self.tuning;
        let timed = ServiceBuilder::new().timeout(t.timeout).service(transport);
        let guarded = match &self.breaker {
            Some(breaker) => BoxCloneService::new(breaker.layer().layer(timed)),
            None => BoxCloneService::new(timed),
        };
        let policy = match self.kind {
            StackKind::Bare | StackKind::Breaker => return Ok(guarded),
            StackKind::Naive => RetryPolicy::new()
                .max_attempts(t.attempts)
                .backoff(t.retry_backoff.jitter(Jitter::None))
                .budget(Budget::unlimited()),
            StackKind::Defaults => {
                // The default policy; its backoff seeded per client, its budget shared.
                let seed = self.seed ^ u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                RetryPolicy::new()
                    .backoff(RetryPolicy::new().get_backoff().seed(seed))
                    .budget(self.budget.clone())
            }
            StackKind::Retry
            | StackKind::RetryBreaker
            | StackKind::Watchdog
            | StackKind::Adaptive => {
                // A seeded backoff gives every request the same delays, so each client
                // gets its own seed: clients' retries spread, runs repeat.
                let seed = self.seed ^ u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                RetryPolicy::new()
                    .max_attempts(t.attempts)
                    .backoff(t.retry_backoff.jitter(Jitter::Full).seed(seed))
                    .budget(self.budget.clone())
            }
        };
        Ok(BoxCloneService::new(
            RetryLayer::new(policy)?.layer(guarded),
        ))
    }

    /// Stops the watchdog, if any.
    pub async fn shutdown(self) {
        if let Some(watchdog) = self.watchdog {
            watchdog.shutdown().await;
        }
    }
}
