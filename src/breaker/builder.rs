//! [`BreakerBuilder`]: trip rules, open durations and half-open trials, checked by
//! [`BreakerBuilder::build`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::{Backoff, Jitter};
use crate::config::{check_duration, check_rate, ConfigError};

use super::{Breaker, EjectionCap};

/// The consecutive-failure threshold of the defaults before 0.2: no longer a default
/// (at a high call rate, a brownout that fails 30% of calls makes runs of 5 failures
/// in a row several times a second).
#[deprecated(note = "no longer part of the defaults; see `BreakerBuilder`'s `# Defaults`")]
#[doc(hidden)]
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// The failure rate at which a breaker with no trip rule set opens: nearly every call
/// of its window failed (a dead downstream; partial failure is left to adaptive
/// throttling).
#[doc(hidden)]
pub const DEFAULT_FAILURE_RATE: f64 = 0.95;
/// The count window of a rate rule set with no window.
#[doc(hidden)]
pub const DEFAULT_COUNT_WINDOW: u32 = 100;
/// The minimum number of calls in the window before a rate rule applies.
#[doc(hidden)]
pub const DEFAULT_MIN_CALLS: u32 = 20;
/// Trial calls admitted in half-open.
#[doc(hidden)]
pub const DEFAULT_HALF_OPEN_CALLS: u32 = 3;
/// How long a half-open trial call may run before it counts as a failure.
#[doc(hidden)]
pub const DEFAULT_HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The default open duration: 5 s, doubling on each trip in a row up to 60 s, with
/// [`Jitter::Equal`] (each delay in `[d / 2, d]`). Unused while a watchdog owns
/// recovery.
#[doc(hidden)]
pub const DEFAULT_OPEN_BACKOFF: Backoff =
    Backoff::exponential(Duration::from_secs(5), Duration::from_secs(60)).jitter(Jitter::Equal);

/// The time window of a breaker with no trip rule set, and of adaptive throttling set
/// without a window.
const DEFAULT_TIME_WINDOW: Duration = Duration::from_millis(2_500);
/// Adaptive throttling's multiplier in the defaults.
const DEFAULT_THROTTLE: f64 = 2.0;
const MAX_THROTTLE: f64 = 100.0;
pub(super) const MAX_COUNT_WINDOW: u32 = 100_000;
const MAX_HALF_OPEN_CALLS: u32 = 1_000;
const MIN_TIME_WINDOW: Duration = Duration::from_millis(10);

/// Where a rate rule counts its calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum WindowKind {
    Count(u32),
    Time(Duration),
}

/// The rate rules and the window they share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RateRules {
    pub(crate) window: WindowKind,
    pub(crate) min_calls: u32,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) slow: Option<(Duration, f64)>,
}

/// What a [`BreakerService`](super::BreakerService)'s `poll_ready` does while the
/// breaker rejects calls; set with [`BreakerBuilder::readiness`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Readiness {
    /// `poll_ready` answers `Ready(Ok(()))` at once and the next `call` fails fast with
    /// an [`Open`](super::error::Open) error (the default): right for a client that
    /// wants to know at once and degrade.
    #[default]
    FailFast,
    /// `poll_ready` answers `Pending` while the breaker rejects, and wakes the task
    /// when a call could go through: when the open delay ends (a timer, not polling),
    /// or on any state change (a watchdog closing the breaker, `force_closed`,
    /// `reset`, a half-open trial finishing). Right for an endpoint inside a load
    /// balancer such as `tower::balance::p2c`, which then routes around it. Never
    /// `Err`. Needs a tokio runtime with time enabled; outside a runtime it behaves as
    /// [`FailFast`](Self::FailFast).
    Wait,
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    pub(crate) consecutive: Option<u32>,
    pub(crate) rates: Option<RateRules>,
    pub(crate) open_backoff: Backoff,
    pub(crate) half_open_calls: u32,
    pub(crate) half_open_timeout: Duration,
    pub(crate) start_open: bool,
    pub(crate) readiness: Readiness,
    /// Adaptive throttling's multiplier `k`; its window is `rates`' time window.
    pub(crate) throttle: Option<f64>,
    /// Seeds the throttling draws (and the open backoff, if it has no seed).
    pub(crate) seed: Option<u64>,
    /// Whether a time window may run a coarse clock (a ticker task); not for the
    /// breakers of a keyed breaker, made and dropped by the thousand.
    pub(crate) coarse_clock: bool,
    /// The set whose ejections are capped, if any.
    pub(crate) ejection: Option<EjectionCap>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            consecutive: None,
            rates: Some(RateRules {
                window: WindowKind::Time(DEFAULT_TIME_WINDOW),
                min_calls: DEFAULT_MIN_CALLS,
                failure_rate: Some(DEFAULT_FAILURE_RATE),
                slow: None,
            }),
            open_backoff: DEFAULT_OPEN_BACKOFF,
            half_open_calls: DEFAULT_HALF_OPEN_CALLS,
            half_open_timeout: DEFAULT_HALF_OPEN_TIMEOUT,
            start_open: false,
            readiness: Readiness::FailFast,
            throttle: Some(DEFAULT_THROTTLE),
            seed: None,
            coarse_clock: true,
            ejection: None,
        }
    }
}

/// Builds a [`Breaker`]; from [`Breaker::builder`].
///
/// # Trip rules
///
/// The breaker opens as soon as any rule it has holds:
///
/// - [`consecutive_failures(n)`](Self::consecutive_failures): `n` failures in a row;
/// - [`failure_rate(r)`](Self::failure_rate): failures make up at least `r` of the calls
///   in the window;
/// - [`slow_calls(t, r)`](Self::slow_calls): calls slower than `t` make up at least `r`
///   of the calls in the window.
///
/// The two rate rules share one window, the last [`count_window`](Self::count_window)
/// calls or the calls of the last [`time_window`](Self::time_window), and apply once
/// it holds at least [`min_calls`](Self::min_calls). Rules are checked when a call
/// fails or is slow: a fast success never opens the breaker.
///
/// # Defaults
///
/// With no trip rule set, a breaker is made for an incident at any call rate:
///
/// - it opens when at least 95% of the calls of the last 2.5 s failed, once 20 calls
///   are in: a dead downstream (with a [watchdog](crate::watchdog), which then owns
///   recovery). A downstream that answers some calls, or is down for less than about
///   2 s at a time, keeps getting calls, as it would with no breaker;
/// - below that it sheds load when fewer than half the calls succeed, with
///   [`adaptive_throttling(2.0)`](Self::adaptive_throttling): an overloaded
///   downstream's accepted load keeps flowing, the excess is rejected fast;
/// - open delays: 5 s doubling to 60 s, equal jitter (unused under a watchdog);
///   half-open: 3 trials, each given 10 s.
///
/// Setting any trip rule replaces the 95% rule and the throttling (set
/// [`adaptive_throttling`](Self::adaptive_throttling) again to keep it); a window
/// setting alone adjusts the defaults (with a count window, which has no time to
/// throttle over, the defaults do not throttle). A rate rule set with no window counts
/// the last 100 calls, once 20 are in.
///
/// The defaults need about 8 calls a second to judge (20 calls in 2.5 s), as rate
/// rules with a minimum do elsewhere; a downstream called less often than that is better
/// watched with [`consecutive_failures`](Self::consecutive_failures) or a watchdog's
/// [`probe_while_closed`](crate::watchdog::WatchdogBuilder::probe_while_closed).
///
/// Each call counts once: under a [retry](crate::retry) layer, each attempt is a call
/// of the breaker, so one request with 3 attempts adds 3 calls (and with
/// `consecutive_failures(3)`, can trip the breaker alone). With the defaults of both,
/// one request cannot: it makes at most 3 calls, and the rule needs 20.
///
/// ```
/// use std::time::Duration;
/// use steadfast::backoff::Backoff;
/// use steadfast::breaker::Breaker;
///
/// let breaker = Breaker::builder("payments")
///     .consecutive_failures(3)
///     .failure_rate(0.25)
///     .time_window(Duration::from_secs(30))
///     .min_calls(10)
///     .open_backoff(Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30)))
///     .build()?;
/// # let _ = breaker;
/// # Ok::<(), steadfast::ConfigError>(())
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct BreakerBuilder {
    name: Arc<str>,
    consecutive: Option<u32>,
    failure_rate: Option<f64>,
    count_window: Option<u32>,
    time_window: Option<Duration>,
    min_calls: Option<u32>,
    slow: Option<(Duration, f64)>,
    open_backoff: Backoff,
    half_open_calls: u32,
    half_open_timeout: Duration,
    start_open: bool,
    readiness: Readiness,
    throttle: Option<f64>,
    seed: Option<u64>,
    ejection: Option<EjectionCap>,
}

impl fmt::Debug for BreakerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerBuilder")
            .field("name", &self.name)
            .field("consecutive_failures", &self.consecutive)
            .field("failure_rate", &self.failure_rate)
            .field("count_window", &self.count_window)
            .field("time_window", &self.time_window)
            .field("min_calls", &self.min_calls)
            .field("slow_calls", &self.slow)
            .field("open_backoff", &self.open_backoff)
            .field("half_open_calls", &self.half_open_calls)
            .field("half_open_timeout", &self.half_open_timeout)
            .field("start_open", &self.start_open)
            .field("readiness", &self.readiness)
            .field("adaptive_throttling", &self.throttle)
            .field("seed", &self.seed)
            .field("ejection_cap", &self.ejection)
            .finish()
    }
}

impl BreakerBuilder {
    pub(crate) fn new(name: Arc<str>) -> Self {
        Self {
            name,
            consecutive: None,
            failure_rate: None,
            count_window: None,
            time_window: None,
            min_calls: None,
            slow: None,
            open_backoff: DEFAULT_OPEN_BACKOFF,
            half_open_calls: DEFAULT_HALF_OPEN_CALLS,
            half_open_timeout: DEFAULT_HALF_OPEN_TIMEOUT,
            start_open: false,
            readiness: Readiness::FailFast,
            throttle: None,
            seed: None,
            ejection: None,
        }
    }

    /// The name breakers built from this builder get.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Trip after `n` failures in a row (at least 1). A success resets the count.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive = Some(n);
        self
    }

    /// Trip when failures are at least `rate` of the calls in the window; `rate` in
    /// `(0, 1]`.
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = Some(rate);
        self
    }

    /// Rate rules count the last `n` calls (1 to 100,000; default 100). Cannot be
    /// combined with [`time_window`](Self::time_window).
    ///
    /// Exactly the last `n` calls while one thread calls. Threads calling at once take
    /// their positions in the window `n / 4` at a time (1 to 64), so that they do not
    /// meet on one counter on every call: the window then holds `n` calls from among
    /// the last `n + (n / 4 - 1) * (threads - 1)`, each other thread adding at most a
    /// quarter of the window and at most 63 calls.
    pub fn count_window(mut self, n: u32) -> Self {
        self.count_window = Some(n);
        self
    }

    /// Rate rules count the calls of the last `window` (10 ms to one day). The window
    /// slides in tenths: a call is forgotten between 0.9 and 1.0 `window` after it ended.
    ///
    /// A breaker built within a tokio runtime keeps the window's current tenth with a
    /// small task on that runtime, so that a successful call reads no clock; it runs
    /// only while tokio's clock follows the real one (never when paused), it is
    /// checked against the real clock before the breaker opens or sheds on it and on
    /// every 256th call of a thread, and without it (no runtime, the runtime gone, a
    /// paused clock) each call reads the clock. A call in
    /// the last millisecond of a tenth may count in the next one.
    ///
    /// A thread counts about 16.7 million calls in a tenth; past that, a tenth
    /// keeps the failure and slow-call rates of the calls it counted and counts no
    /// more of that thread's calls, failed or not.
    pub fn time_window(mut self, window: Duration) -> Self {
        self.time_window = Some(window);
        self
    }

    /// Rate rules apply once the window holds at least `n` calls (default 20, or the
    /// count window's size if smaller; at most the count window's size).
    pub fn min_calls(mut self, n: u32) -> Self {
        self.min_calls = Some(n);
        self
    }

    /// Calls that take longer than `threshold` are slow; trip when slow calls are at
    /// least `rate` of the calls in the window. A slow call still counts as a success
    /// or failure as classified, except that a slow half-open trial is a failed one
    /// (see [`half_open_calls`](Self::half_open_calls)).
    ///
    /// A call's time runs from `call` to its response future's end. It is read from
    /// the CPU's time-stamp counter where that is steady (about 10 ns a read, against
    /// about 24 ns for `Instant::now()` on the machine of `docs/performance.md`), so a
    /// call that never waits is timed in real time, even under a paused tokio clock. From
    /// the first time its future returns `Pending`, a call is timed on tokio's clock, so
    /// under a paused clock it sees the time its runtime skips while it waits (time
    /// skipped between `call` and the first poll is not seen). The counter is
    /// calibrated once per process, when the first breaker with this rule is built
    /// (up to 200 ms).
    pub fn slow_calls(mut self, threshold: Duration, rate: f64) -> Self {
        self.slow = Some((threshold, rate));
        self
    }

    /// How long the breaker stays open: the `n`th delay for the `n`th trip in a row
    /// (default 5 s doubling to 60 s, equal jitter). The
    /// count of trips in a row resets when the breaker closes.
    ///
    /// While a [watchdog](crate::watchdog) is attached, it owns recovery and this
    /// backoff is not used: the breaker stays open until the watchdog's probes pass,
    /// on the watchdog's schedule. It applies again if the watchdog ends.
    pub fn open_backoff(mut self, backoff: Backoff) -> Self {
        self.open_backoff = backoff;
        self
    }

    /// Trial calls admitted in half-open (default 3, at most 1,000). All must succeed
    /// for the breaker to close; one failure opens it again. Other calls are rejected.
    /// With a [`slow_calls`](Self::slow_calls) rule, a trial slower than its threshold
    /// is a failed trial, even if it succeeded: the downstream answers, but not yet as
    /// the rule asks.
    pub fn half_open_calls(mut self, n: u32) -> Self {
        self.half_open_calls = n;
        self
    }

    /// A trial call not done after `timeout` counts as a failed trial (default 10 s):
    /// the next call in half-open after that reopens the breaker, so a hung trial can
    /// never wedge it in half-open. The trial call itself is left to run.
    pub fn half_open_timeout(mut self, timeout: Duration) -> Self {
        self.half_open_timeout = timeout;
        self
    }

    /// Start open, as if the downstream were known to be down: the first calls are
    /// rejected until the first open delay has passed (or a watchdog closes it). Not
    /// counted as a trip.
    pub fn start_open(mut self) -> Self {
        self.start_open = true;
        self
    }

    /// What `poll_ready` does while the breaker rejects (default
    /// [`Readiness::FailFast`]). [`Readiness::Wait`] makes a rejecting breaker's
    /// service not ready, so a load balancer routes around it:
    ///
    /// ```
    /// use steadfast::breaker::{Breaker, Readiness};
    ///
    /// let endpoint = Breaker::builder("replica-2")
    ///     .consecutive_failures(3)
    ///     .readiness(Readiness::Wait)
    ///     .build()?;
    /// # let _ = endpoint;
    /// # Ok::<(), steadfast::ConfigError>(())
    /// ```
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Sheds calls in proportion to how many fail: client-side adaptive throttling, as
    /// in the Google SRE book ("Handling Overload"). Over the last two lengths of the
    /// breaker's time window, a call is rejected with probability
    /// `max(0, (requests - k * accepts - min_calls) / (requests + 1))`, where
    /// `requests` counts every call, shed ones included, and `accepts` the successes.
    /// Twice the window, so that a stretch the trip rules leave alone (a downstream
    /// down for less than the window) is not remembered as a lasting lack of accepts
    /// once it answers again.
    /// While at least `1 / k` of the requests succeed nothing is shed; past that, calls
    /// go through at about `k` times the rate the downstream answers well, and the
    /// rest fail fast. It keeps a brownout's accepted load flowing where opening the
    /// breaker would cut it all, while the trip rules still open the breaker for a
    /// dead downstream.
    ///
    /// `k` is at least 1 and at most 100: 2 is the book's choice (and the
    /// default's); nearer 1 sheds sooner. The window is the
    /// [`time_window`](Self::time_window) (2.5 s if none is set); `min_calls` calls
    /// are never shed. A shed call is an [`Open`](super::error::Open) rejection with
    /// [`is_shed`](super::error::Open::is_shed) true, handled as any other: never
    /// retried, a 503, counted in `Snapshot::rejected` and `Snapshot::shed`.
    ///
    /// It assumes failures mean overload. A downstream that fails more than `1 - 1 / k`
    /// of the calls whatever the load (a broken shard, a bad deploy) is shed to a
    /// trickle; without throttling those calls would still have succeeded at that
    /// rate (`tests/breaker_rules.rs` shows both cases).
    ///
    /// Costs nothing on a closed call while nothing is shed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use steadfast::breaker::Breaker;
    ///
    /// let breaker = Breaker::builder("search")
    ///     .failure_rate(0.9)
    ///     .time_window(Duration::from_secs(5))
    ///     .adaptive_throttling(2.0)
    ///     .build()?;
    /// # let _ = breaker;
    /// # Ok::<(), steadfast::ConfigError>(())
    /// ```
    pub fn adaptive_throttling(mut self, k: f64) -> Self {
        self.throttle = Some(k);
        self
    }

    /// Fixes the breaker's random choices: the draws of adaptive throttling, and the
    /// jitter of the open backoff unless it has a [seed](Backoff::seed) of its own.
    /// Without it they are random; with it, the same calls get the same decisions (for
    /// tests and simulations).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Makes the breaker one of the set that `cap` bounds: of the set's open
    /// breakers, only the most recently opened reject, up to the cap's share of the
    /// set; the others let calls through (see [`EjectionCap`]). Set it on each
    /// endpoint's breaker under a load balancer, or on the template of a
    /// [`KeyedBreaker`](crate::keyed::KeyedBreaker) to cap its keys. Default: no cap.
    pub fn ejection_cap(mut self, cap: &EjectionCap) -> Self {
        self.ejection = Some(cap.clone());
        self
    }

    /// Checks the configuration and builds the breaker.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting that cannot work: a rate outside
    /// `(0, 1]` or NaN; a zero count, window or threshold; a count window above 100,000
    /// or a `min_calls` above it; both a count and a time window; a window or
    /// `min_calls` with no rate rule to use it; zero or more than 1,000 half-open
    /// calls; a zero duration or one longer than a day; an open backoff whose base is
    /// zero or above its max, or whose factor is below 1.
    pub fn build(self) -> Result<Breaker, ConfigError> {
        let config = self.config()?;
        Ok(Breaker::from_config(self.name, config))
    }

    pub(crate) fn config(&self) -> Result<Config, ConfigError> {
        if let Some(0) = self.consecutive {
            return Err(ConfigError::new(
                "consecutive_failures",
                "must be at least 1",
            ));
        }
        if let Some(rate) = self.failure_rate {
            check_rate("failure_rate", rate)?;
        }
        if let Some((threshold, rate)) = self.slow {
            check_duration("slow_calls", threshold)?;
            check_rate("slow_calls", rate)?;
        }
        match self.count_window {
            Some(0) => return Err(ConfigError::new("count_window", "must be at least 1")),
            Some(n) if n > MAX_COUNT_WINDOW => {
                return Err(ConfigError::new(
                    "count_window",
                    format!("must be at most {MAX_COUNT_WINDOW}, got {n}"),
                ))
            }
            _ => {}
        }
        if let Some(window) = self.time_window {
            check_duration("time_window", window)?;
            if window < MIN_TIME_WINDOW {
                return Err(ConfigError::new(
                    "time_window",
                    format!("must be at least 10ms, got {window:?}"),
                ));
            }
            if self.count_window.is_some() {
                return Err(ConfigError::new(
                    "time_window",
                    "cannot be combined with count_window: choose one window",
                ));
            }
        }
        if let Some(0) = self.min_calls {
            return Err(ConfigError::new("min_calls", "must be at least 1"));
        }
        if self.half_open_calls == 0 {
            return Err(ConfigError::new("half_open_calls", "must be at least 1"));
        }
        if self.half_open_calls > MAX_HALF_OPEN_CALLS {
            return Err(ConfigError::new(
                "half_open_calls",
                format!(
                    "must be at most {MAX_HALF_OPEN_CALLS}, got {}",
                    self.half_open_calls
                ),
            ));
        }
        check_duration("half_open_timeout", self.half_open_timeout)?;
        self.open_backoff.validate("open_backoff", false)?;

        if let Some(k) = self.throttle {
            if !(1.0..=MAX_THROTTLE).contains(&k) {
                return Err(ConfigError::new(
                    "adaptive_throttling",
                    format!("must be in [1, {MAX_THROTTLE}], got {k}"),
                ));
            }
            if self.count_window.is_some() {
                return Err(ConfigError::new(
                    "adaptive_throttling",
                    "needs a time window, not count_window: set time_window or no window",
                ));
            }
        }

        let explicit =
            self.consecutive.is_some() || self.failure_rate.is_some() || self.slow.is_some();
        let (consecutive, failure_rate, throttle) = if explicit {
            (self.consecutive, self.failure_rate, self.throttle)
        } else {
            // The defaults throttle over a time window; a count window has no time.
            let throttle = match self.count_window {
                Some(_) => None,
                None => self.throttle.or(Some(DEFAULT_THROTTLE)),
            };
            (None, Some(DEFAULT_FAILURE_RATE), throttle)
        };
        let rates = if failure_rate.is_some() || self.slow.is_some() || throttle.is_some() {
            let window = match (self.time_window, self.count_window) {
                (Some(t), _) => WindowKind::Time(t),
                (None, Some(n)) => WindowKind::Count(n),
                (None, None) if throttle.is_some() => WindowKind::Time(DEFAULT_TIME_WINDOW),
                (None, None) => WindowKind::Count(DEFAULT_COUNT_WINDOW),
            };
            let min_calls = match (self.min_calls, window) {
                (Some(m), WindowKind::Count(n)) if m > n => {
                    return Err(ConfigError::new(
                        "min_calls",
                        format!("must not exceed count_window ({n}), got {m}"),
                    ))
                }
                (Some(m), _) => m,
                (None, WindowKind::Count(n)) => DEFAULT_MIN_CALLS.min(n),
                (None, WindowKind::Time(_)) => DEFAULT_MIN_CALLS,
            };
            Some(RateRules {
                window,
                min_calls,
                failure_rate,
                slow: self.slow,
            })
        } else {
            let unused = [
                ("count_window", self.count_window.is_some()),
                ("time_window", self.time_window.is_some()),
                ("min_calls", self.min_calls.is_some()),
            ];
            if let Some((field, _)) = unused.iter().find(|(_, set)| *set) {
                return Err(ConfigError::new(
                    field,
                    "has no effect without failure_rate, slow_calls or adaptive_throttling",
                ));
            }
            None
        };
        let open_backoff = match (self.seed, self.open_backoff.seed_value()) {
            (Some(seed), None) => self.open_backoff.seed(seed),
            _ => self.open_backoff,
        };
        Ok(Config {
            consecutive,
            rates,
            open_backoff,
            half_open_calls: self.half_open_calls,
            half_open_timeout: self.half_open_timeout,
            start_open: self.start_open,
            readiness: self.readiness,
            throttle,
            seed: self.seed,
            coarse_clock: true,
            ejection: self.ejection.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> BreakerBuilder {
        BreakerBuilder::new("t".into())
    }

    #[test]
    fn no_rule_means_defaults() {
        assert_eq!(b().config().unwrap(), Config::default());
    }

    #[test]
    fn window_settings_alone_adjust_the_defaults() {
        let c = b().count_window(10).config().unwrap();
        assert_eq!((c.consecutive, c.throttle), (None, None));
        let r = c.rates.unwrap();
        assert_eq!((r.window, r.min_calls), (WindowKind::Count(10), 10));
        assert_eq!(r.failure_rate, Some(DEFAULT_FAILURE_RATE));
        let c = b().time_window(Duration::from_secs(9)).config().unwrap();
        assert_eq!(c.throttle, Some(DEFAULT_THROTTLE));
        let r = c.rates.unwrap();
        assert_eq!(r.window, WindowKind::Time(Duration::from_secs(9)));
    }

    #[test]
    fn adaptive_throttling_keeps_its_window() {
        // With an explicit rule the defaults go, throttling included, unless set again.
        let c = b().consecutive_failures(3).config().unwrap();
        assert_eq!((c.throttle, c.rates), (None, None));
        let c = b()
            .consecutive_failures(3)
            .adaptive_throttling(1.5)
            .config()
            .unwrap();
        assert_eq!(c.throttle, Some(1.5));
        let r = c.rates.unwrap();
        assert_eq!(r.window, WindowKind::Time(DEFAULT_TIME_WINDOW));
        assert_eq!((r.failure_rate, r.slow), (None, None));
        let c = b().failure_rate(0.5).config().unwrap();
        assert_eq!(
            c.rates.unwrap().window,
            WindowKind::Count(DEFAULT_COUNT_WINDOW)
        );
    }

    #[test]
    fn any_rule_replaces_the_defaults() {
        let c = b().consecutive_failures(2).config().unwrap();
        assert_eq!((c.consecutive, c.rates), (Some(2), None));
        let c = b().failure_rate(0.3).config().unwrap();
        assert_eq!(c.consecutive, None);
        assert_eq!(c.rates.unwrap().failure_rate, Some(0.3));
        let c = b()
            .slow_calls(Duration::from_secs(1), 0.5)
            .config()
            .unwrap();
        assert_eq!(c.consecutive, None);
        assert_eq!(c.rates.unwrap().failure_rate, None);
    }

    #[test]
    fn every_bad_value_is_a_config_error() {
        let ms = Duration::from_millis;
        let day = Duration::from_secs(86_400);
        let exp = Backoff::exponential;
        #[rustfmt::skip]
        let cases: Vec<(BreakerBuilder, &str)> = vec![
            (b().consecutive_failures(0), "consecutive_failures"),
            (b().failure_rate(0.0), "failure_rate"),
            (b().failure_rate(-0.1), "failure_rate"),
            (b().failure_rate(1.01), "failure_rate"),
            (b().failure_rate(f64::NAN), "failure_rate"),
            (b().failure_rate(f64::INFINITY), "failure_rate"),
            (b().slow_calls(ms(100), 0.0), "slow_calls"),
            (b().slow_calls(ms(100), f64::NAN), "slow_calls"),
            (b().slow_calls(Duration::ZERO, 0.5), "slow_calls"),
            (b().slow_calls(day * 2, 0.5), "slow_calls"),
            (b().count_window(0), "count_window"),
            (b().count_window(100_001), "count_window"),
            (b().time_window(Duration::ZERO), "time_window"),
            (b().time_window(ms(9)), "time_window"),
            (b().time_window(day + ms(1)), "time_window"),
            (b().count_window(10).time_window(ms(100)), "time_window"),
            (b().min_calls(0), "min_calls"),
            (b().count_window(10).min_calls(11), "min_calls"),
            (b().failure_rate(0.5).count_window(10).min_calls(11), "min_calls"),
            (b().consecutive_failures(3).count_window(10), "count_window"),
            (b().consecutive_failures(3).time_window(ms(100)), "time_window"),
            (b().consecutive_failures(3).min_calls(5), "min_calls"),
            (b().half_open_calls(0), "half_open_calls"),
            (b().half_open_calls(1_001), "half_open_calls"),
            (b().half_open_timeout(Duration::ZERO), "half_open_timeout"),
            (b().half_open_timeout(day * 7), "half_open_timeout"),
            (b().open_backoff(exp(ms(10), ms(5))), "open_backoff"),
            (b().open_backoff(exp(Duration::ZERO, ms(5))), "open_backoff"),
            (b().open_backoff(exp(ms(1), ms(5)).factor(0.5)), "open_backoff"),
            (b().open_backoff(exp(ms(1), ms(5)).factor(f64::NAN)), "open_backoff"),
            (b().open_backoff(Backoff::constant(Duration::ZERO)), "open_backoff"),
            (b().open_backoff(Backoff::constant(day * 2)), "open_backoff"),
            (b().adaptive_throttling(0.99), "adaptive_throttling"),
            (b().adaptive_throttling(100.5), "adaptive_throttling"),
            (b().adaptive_throttling(f64::NAN), "adaptive_throttling"),
            (b().adaptive_throttling(2.0).count_window(10), "adaptive_throttling"),
        ];
        for (builder, field) in cases {
            let debug = format!("{builder:?}");
            match builder.build() {
                Err(e) => {
                    assert_eq!(e.field(), field, "{debug}: {e}");
                    // The message is the field and the rule, and the rule says something.
                    assert!(!e.rule().is_empty(), "{e}");
                    assert_eq!(e.to_string(), format!("invalid `{field}`: {}", e.rule()));
                }
                Ok(_) => panic!("accepted: {debug}"),
            }
        }
    }

    #[test]
    fn edges_are_accepted() {
        let ms = Duration::from_millis;
        let day = Duration::from_secs(86_400);
        for builder in [
            b().failure_rate(1.0),
            b().failure_rate(f64::MIN_POSITIVE),
            b().count_window(1).min_calls(1),
            b().count_window(100_000).min_calls(100_000),
            b().time_window(ms(10)),
            b().time_window(day),
            b().half_open_calls(1_000),
            b().half_open_timeout(day),
            b().open_backoff(Backoff::constant(day)),
            b().failure_rate(0.5)
                .time_window(ms(100))
                .min_calls(1_000_000),
        ] {
            let debug = format!("{builder:?}");
            assert!(builder.build().is_ok(), "{debug}");
        }
    }
}
