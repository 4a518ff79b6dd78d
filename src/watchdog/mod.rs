//! A watchdog: probe a dead downstream, close the breaker when it answers, and report
//! a dependency that keeps failing instead of letting anything crash.
//!
//! # Why a watchdog?
//!
//! A breaker alone recovers by letting a few *real* requests through as trials after
//! its open delay: users are the probes, and they see the failures. A watchdog owns
//! recovery instead. While the breaker is open it runs a [`Probe`] (a health check, a
//! cheap request) on a jittered schedule, one probe at a time per breaker, each bounded
//! by a timeout, and after `healthy_threshold` passes in a row it closes the breaker.
//! While a watchdog is attached the breaker never goes half-open on its own timer; if
//! the watchdog ends, it does again.
//!
//! With [`probe_while_closed`](WatchdogBuilder::probe_while_closed) it also probes a
//! closed breaker, and opens it after `unhealthy_threshold` failed probes in a row:
//! before real traffic fails, even with no traffic at all.
//!
//! # Restart intensity
//!
//! Erlang supervisors give up restarting a child that crashes more than N times in T.
//! A watchdog applies the same rule to trips: more than
//! [`max_trips(n, within)`](WatchdogBuilder::max_trips) escalates the dependency. It
//! logs an `error` event, calls [`on_escalate`](WatchdogBuilder::on_escalate), reports
//! the breaker escalated ([`Breaker::is_escalated`], so
//! [`Health::is_ready`](crate::health::Health::is_ready) turns false), and keeps probing
//! at the slow end of its backoff. Nothing crashes. Escalation clears once the breaker
//! has stayed closed for `within`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), steadfast::ConfigError> {
//! use std::time::Duration;
//! use steadfast::breaker::{Breaker, State};
//! use steadfast::watchdog::Watchdog;
//!
//! // Boot assuming the downstream is down; the watchdog connects.
//! let breaker = Breaker::builder("db").start_open().build()?;
//! let watchdog = Watchdog::builder(&breaker, || async { Ok::<_, std::io::Error>(()) })
//!     .interval(Duration::from_secs(1))
//!     .healthy_threshold(2)
//!     .spawn()?;
//! tokio::time::sleep(Duration::from_secs(2)).await;
//! assert_eq!(breaker.state(), State::Closed);
//! watchdog.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::backoff::{Backoff, Jitter};
use crate::breaker::{Breaker, Recovery, Snapshot};
use crate::config::{check_duration, ConfigError};

pub mod probe;
mod worker;

pub use self::probe::Probe;

/// Time between probes while they pass (default).
#[doc(hidden)]
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Time between failed probes with the default interval: 1 s doubling to 2 s, equal
/// jitter. Without [`WatchdogBuilder::backoff`] the spacing follows the interval that
/// is set.
#[deprecated(note = "the default backoff follows `interval`; see `WatchdogBuilder::backoff`")]
#[doc(hidden)]
pub const DEFAULT_BACKOFF: Backoff =
    Backoff::exponential(DEFAULT_INTERVAL, Duration::from_secs(2)).jitter(Jitter::Equal);
/// How long one probe may take (default).
#[doc(hidden)]
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Passes in a row that close the breaker (default).
#[doc(hidden)]
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
/// Failures in a row that open a closed breaker under `probe_while_closed` (default).
#[doc(hidden)]
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

type OnEscalate = Arc<dyn Fn(&Snapshot) + Send + Sync>;

/// The shortest period accepted: probes closer than this are a busy loop.
const MIN_PERIOD: Duration = Duration::from_millis(1);
/// The most passes or failures in a row a threshold may ask for.
const MAX_THRESHOLD: u32 = 1_000;

/// The checked settings of a watchdog.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) interval: Duration,
    /// `None`: the interval, equal jitter.
    pub(crate) backoff: Option<Backoff>,
    pub(crate) timeout: Duration,
    pub(crate) healthy_threshold: u32,
    pub(crate) probe_while_closed: Option<Duration>,
    pub(crate) unhealthy_threshold: u32,
    pub(crate) max_trips: Option<(u32, Duration)>,
    pub(crate) on_escalate: Option<OnEscalate>,
}

impl Config {
    /// The spacing of failed probes: as set, or the interval with equal jitter.
    pub(crate) fn backoff(&self) -> Backoff {
        self.backoff.unwrap_or(
            Backoff::exponential(self.interval, self.interval.saturating_mul(2))
                .jitter(Jitter::Equal),
        )
    }
}

/// Entry point: [`Watchdog::builder`].
#[derive(Debug)]
pub struct Watchdog(());

impl Watchdog {
    /// A watchdog for `breaker` using `probe`.
    pub fn builder<P: Probe>(breaker: &Breaker, probe: P) -> WatchdogBuilder<P> {
        WatchdogBuilder {
            breaker: breaker.clone(),
            probe,
            config: Config {
                interval: DEFAULT_INTERVAL,
                backoff: None,
                timeout: DEFAULT_TIMEOUT,
                healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
                probe_while_closed: None,
                unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
                max_trips: None,
                on_escalate: None,
            },
        }
    }
}

/// Configures a watchdog; from [`Watchdog::builder`].
///
/// # Defaults
///
/// - `interval`: 1 s. Failed probes are spaced from the interval to twice it, equal
///   jitter (the first wait between half the interval and the interval, then between
///   the interval and twice it), so after an outage of any length the first probe after
///   the downstream's return comes within two intervals; one passing probe
///   (`healthy_threshold` 1) closes the breaker;
/// - `timeout`: 5 s per probe; `probe_while_closed`: off (`unhealthy_threshold` 3);
///   `max_trips`: never escalate.
///
/// The load on a dead downstream: one probe at a time per breaker, two in the first
/// interval after a trip at most, then at most one per interval: with the defaults, at
/// most one probe a second per breaker per process once an outage has lasted a few
/// seconds (about one per 1.5 s on average), and for a fleet of `n` processes at most
/// `n` a second. Set a [`backoff`](Self::backoff) that grows further to trade a later
/// first probe after a long outage for fewer probes during it.
#[must_use = "a watchdog does nothing until spawned"]
pub struct WatchdogBuilder<P> {
    breaker: Breaker,
    probe: P,
    config: Config,
}

impl<P> fmt::Debug for WatchdogBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchdogBuilder")
            .field("breaker", &self.breaker)
            .field("interval", &self.config.interval)
            .field("backoff", &self.config.backoff)
            .field("timeout", &self.config.timeout)
            .field("healthy_threshold", &self.config.healthy_threshold)
            .field("probe_while_closed", &self.config.probe_while_closed)
            .field("unhealthy_threshold", &self.config.unhealthy_threshold)
            .field("max_trips", &self.config.max_trips)
            .finish_non_exhaustive()
    }
}

impl<P: Probe> WatchdogBuilder<P> {
    /// Time between probes while they pass (default 1 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.config.interval = interval;
        self
    }

    /// Time between failed probes: the next delay after each failure in a row,
    /// jittered (default: from the [`interval`](Self::interval) to twice it, equal
    /// jitter). Escalated, the watchdog waits the backoff's max. Its max is also the
    /// longest a downstream that came back waits for its first probe.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = Some(backoff);
        self
    }

    /// A probe not done after `timeout` failed (default 5 s); it is dropped.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// Passes in a row that close an open breaker (default 1, at most 1,000). Each
    /// further pass waits an interval.
    pub fn healthy_threshold(mut self, n: u32) -> Self {
        self.config.healthy_threshold = n;
        self
    }

    /// Also probe while the breaker is closed, every `period` (default: off).
    pub fn probe_while_closed(mut self, period: Duration) -> Self {
        self.config.probe_while_closed = Some(period);
        self
    }

    /// With `probe_while_closed`, failed probes in a row that open the breaker
    /// (default 3, at most 1,000).
    pub fn unhealthy_threshold(mut self, n: u32) -> Self {
        self.config.unhealthy_threshold = n;
        self
    }

    /// Escalate when the breaker trips more than `n` times within `within` (default:
    /// never). Clears once the breaker has stayed closed for `within`.
    pub fn max_trips(mut self, n: u32, within: Duration) -> Self {
        self.config.max_trips = Some((n, within));
        self
    }

    /// Called with the breaker's snapshot when the dependency escalates. A callback
    /// that panics is caught.
    pub fn on_escalate(mut self, f: impl Fn(&Snapshot) + Send + Sync + 'static) -> Self {
        self.config.on_escalate = Some(Arc::new(f));
        self
    }

    fn check(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        check_period("interval", c.interval)?;
        check_duration("timeout", c.timeout)?;
        if let Some(backoff) = c.backoff {
            backoff.validate("backoff", false)?;
            check_period("backoff", backoff.base())?;
        }
        check_threshold("healthy_threshold", c.healthy_threshold)?;
        check_threshold("unhealthy_threshold", c.unhealthy_threshold)?;
        if let Some(period) = c.probe_while_closed {
            check_period("probe_while_closed", period)?;
        }
        if let Some((n, within)) = c.max_trips {
            if n == 0 {
                return Err(ConfigError::new("max_trips", "must allow at least 1 trip"));
            }
            check_duration("max_trips", within)?;
        }
        Ok(())
    }

    /// Checks the settings and returns the watchdog's handle and its worker, a future
    /// to spawn yourself (like tower's `Buffer::pair`): on a tokio runtime with time
    /// enabled, as its probes and waits use tokio's timers. Polled anywhere else, the
    /// worker logs an `error` event and ends at once, and the breaker recovers on its
    /// own timer. The watchdog is attached from this call: run the worker soon.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a duration over a day, a period (interval, backoff base,
    /// `probe_while_closed`) under 1 ms, a zero timeout, a threshold of 0 or over
    /// 1,000, a zero trip count, or a backoff whose base is above its max.
    pub fn pair(self) -> Result<(WatchdogHandle, Worker), ConfigError> {
        self.check()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = oneshot::channel();
        let shared = Recovery::of(&self.breaker);
        let name = shared.name().clone();
        let run = worker::run(self.breaker, self.probe, self.config, stop_rx, done_tx);
        Ok((
            WatchdogHandle {
                shared,
                stop: stop_tx,
                done: done_rx,
            },
            Worker {
                run: Some(Box::pin(run)),
                name,
            },
        ))
    }

    /// Checks the settings and spawns the watchdog on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// As [`pair`](Self::pair), and a [`ConfigError`] for the field `spawn` when called
    /// outside a tokio runtime.
    pub fn spawn(self) -> Result<WatchdogHandle, ConfigError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| ConfigError::new("spawn", "must be called within a tokio runtime"))?;
        let (handle, worker) = self.pair()?;
        drop(runtime.spawn(worker));
        Ok(handle)
    }
}

/// The running watchdog's handle. Dropping it detaches the watchdog, which runs on
/// until every [`Breaker`] clone is gone.
#[must_use = "dropping the handle detaches the watchdog; keep it to shut it down"]
pub struct WatchdogHandle {
    shared: Recovery,
    stop: watch::Sender<bool>,
    done: oneshot::Receiver<()>,
}

impl WatchdogHandle {
    /// Stops the watchdog and waits for it to end. The breaker then recovers on its
    /// own timer again.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        // Err means the worker already ended (or was never run).
        let _ = self.done.await;
    }

    /// Tells the watchdog to stop, without waiting for it.
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Whether the watchdog reports the dependency escalated.
    pub fn is_escalated(&self) -> bool {
        self.shared.is_escalated()
    }
}

impl fmt::Debug for WatchdogHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchdogHandle")
            .field("breaker", self.shared.name())
            .field("escalated", &self.is_escalated())
            .finish()
    }
}

/// The watchdog's task, from [`WatchdogBuilder::pair`]: a future to run to completion
/// on a tokio runtime. It ends on [`WatchdogHandle::shutdown`] or when every
/// [`Breaker`] clone is gone; polled outside a tokio runtime, at once.
#[must_use = "the watchdog only runs while its worker is polled"]
pub struct Worker {
    /// `None` once ended.
    run: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    name: Arc<str>,
}

impl Future for Worker {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(run) = self.run.as_mut() else {
            return Poll::Ready(());
        };
        // Its timers would panic outside a runtime: end instead, detached.
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::error!(
                target: "steadfast::watchdog",
                breaker = &*self.name,
                "watchdog worker polled outside a tokio runtime: it needs tokio's timers; \
                 ended, the breaker recovers on its own timer"
            );
            self.run = None;
            return Poll::Ready(());
        }
        let done = run.as_mut().poll(cx);
        if done.is_ready() {
            self.run = None;
        }
        done
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("breaker", &self.name)
            .field("ended", &self.run.is_none())
            .finish()
    }
}

/// Checks a period between probes: a duration of at least [`MIN_PERIOD`].
fn check_period(field: &'static str, period: Duration) -> Result<(), ConfigError> {
    check_duration(field, period)?;
    if period < MIN_PERIOD {
        return Err(ConfigError::new(
            field,
            format!("must be at least 1ms, got {period:?}"),
        ));
    }
    Ok(())
}

fn check_threshold(field: &'static str, n: u32) -> Result<(), ConfigError> {
    if n == 0 || n > MAX_THRESHOLD {
        return Err(ConfigError::new(
            field,
            format!("must be in [1, {MAX_THRESHOLD}], got {n}"),
        ));
    }
    Ok(())
}
