//! A circuit breaker: stop calling a downstream that is failing, and fail fast instead.
//!
//! # Why a breaker?
//!
//! When a downstream dies, every call to it waits for a timeout. Callers pile up,
//! threads and sockets run out, and the failure spreads upstream; retries make it
//! worse by multiplying the load on the one service that can least take it. A breaker
//! notices the failures, stops sending calls for a while (rejecting them at once with a
//! typed [`Open`](error::Open) error that says when to retry), then lets a few trial
//! calls through to see whether the downstream is back.
//!
//! # States
//!
//! - **Closed**: calls go through and their outcomes are counted by the trip rules
//!   (see [`BreakerBuilder`]). When a rule holds, the breaker opens.
//! - **Open**: calls are rejected for the next delay of the open backoff, which grows
//!   with each trip in a row. The first call after the delay moves the breaker to
//!   half-open; no timer task is involved.
//! - **HalfOpen**: up to `half_open_calls` trial calls go through; the rest are
//!   rejected. If all succeed the breaker closes (and the backoff starts over); one
//!   failure opens it again, for longer.
//! - **ForcedOpen** / **ForcedClosed**: set by hand, held until [`Breaker::reset`].
//!
//! A breaker can be one of a set (the endpoints of a balancer) sharing an
//! [`EjectionCap`]: at most a share of the set rejects at once, and the other open
//! breakers let calls through.
//!
//! Each transition emits one `tracing` event (target `steadfast::breaker`, fields
//! `breaker`, `from`, `to`, `reason`) and one update on [`Breaker::subscribe`].
//!
//! # Cost
//!
//! In the closed state a call reads one atomic word to be admitted and adds to a
//! per-thread counter when done: no lock, no allocation, and no clock read but for a
//! slow-call rule, which reads the CPU's counter at a call's start and end (see
//! [`BreakerBuilder::slow_calls`]). A time window reads a coarse clock kept by a
//! task (see [`BreakerBuilder::time_window`]), and the real one only on failures.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), steadfast::BoxError> {
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use steadfast::breaker::{error::Open, Breaker, State};
//!
//! let breaker = Breaker::builder("inventory").consecutive_failures(2).build()?;
//! let mut svc = ServiceBuilder::new()
//!     .layer(breaker.layer())
//!     .service(service_fn(|_: ()| async { Err::<(), _>("connection refused") }));
//!
//! for _ in 0..2 {
//!     let _ = svc.ready().await?.call(()).await; // two failures
//! }
//! assert_eq!(breaker.state(), State::Open);
//! let err = svc.ready().await?.call(()).await.unwrap_err();
//! assert!(err.downcast_ref::<Open>().is_some()); // rejected, downstream not called
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

mod builder;
mod ejection;
mod event;
mod layer;
mod local;
pub(crate) mod machine;
mod recorder;
mod recovery;
pub(crate) mod service;
mod shard;
pub(crate) mod window;
mod word;

pub mod error;
pub mod future;

#[allow(deprecated)]
pub use self::builder::DEFAULT_CONSECUTIVE_FAILURES;
pub use self::builder::{
    BreakerBuilder, Readiness, DEFAULT_COUNT_WINDOW, DEFAULT_FAILURE_RATE, DEFAULT_HALF_OPEN_CALLS,
    DEFAULT_HALF_OPEN_TIMEOUT, DEFAULT_MIN_CALLS, DEFAULT_OPEN_BACKOFF,
};
pub use self::ejection::{EjectionCap, EjectionSnapshot};
pub use self::layer::BreakerLayer;
pub use self::service::BreakerService;

pub(crate) use self::builder::Config;
pub(crate) use self::machine::Core;
pub(crate) use self::recovery::Recovery;

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "kebab-case")
)]
#[non_exhaustive]
pub enum State {
    /// Calls go through and are counted.
    Closed,
    /// Calls are rejected until the open delay has passed.
    Open,
    /// A few trial calls go through; the rest are rejected.
    HalfOpen,
    /// Rejecting every call, by hand, until [`Breaker::reset`].
    ForcedOpen,
    /// Letting every call through uncounted by the rules, by hand, until
    /// [`Breaker::reset`].
    ForcedClosed,
}

impl State {
    /// The state's name in lower case: `"closed"`, `"open"`, `"half-open"`,
    /// `"forced-open"`, `"forced-closed"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
            State::ForcedOpen => "forced-open",
            State::ForcedClosed => "forced-closed",
        }
    }

    /// Whether calls are being rejected (open or forced open). Half-open is not:
    /// some calls go through.
    pub const fn is_rejecting(self) -> bool {
        matches!(self, State::Open | State::ForcedOpen)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A breaker's figures at one moment, from [`Breaker::snapshot`].
///
/// Cumulative since the breaker was built: `calls == successes + failures + ignored`
/// (calls that completed; rejected calls are counted only in `rejected`, and calls
/// dropped before completing are not counted). `trips` counts every opening, from
/// closed or from half-open. Current: `failure_rate` of the window, if there is one;
/// `retry_after` while open.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Snapshot {
    /// The breaker's name.
    pub name: Arc<str>,
    /// The state now.
    pub state: State,
    /// Completed calls: successes + failures + ignored.
    pub calls: u64,
    /// Calls classified as successes.
    pub successes: u64,
    /// Calls classified as failures.
    pub failures: u64,
    /// Calls classified as ignored.
    pub ignored: u64,
    /// Counted calls slower than the slow-call threshold (zero without that rule).
    pub slow: u64,
    /// Calls rejected without calling the inner service (shed ones included).
    pub rejected: u64,
    /// Calls shed by adaptive throttling (also counted in `rejected`).
    pub shed: u64,
    /// Times the breaker opened (from closed or half-open; not `start_open`).
    pub trips: u64,
    /// Failures / calls in the current window; `None` without a rate rule, or while
    /// the window is empty.
    pub failure_rate: Option<f64>,
    /// While open, when a call could next go through, as
    /// [`Open::retry_after`](error::Open::retry_after) gives it; `None` in any other
    /// state. Serialized as `retry_after_ms`, whole milliseconds rounded up.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "retry_after_ms", serialize_with = "millis")
    )]
    pub retry_after: Option<Duration>,
    /// Whether the breaker's [`EjectionCap`] lets calls through it although it is open
    /// or half-open: more of its set are open than the cap lets reject.
    pub capped: bool,
}

/// A duration as whole milliseconds, rounded up (so never 0 for a nonzero wait).
#[cfg(feature = "serde")]
fn millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => {
            s.serialize_some(&u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX))
        }
        None => s.serialize_none(),
    }
}

/// A circuit breaker: a cheap handle on state shared by every clone.
///
/// Build one with [`Breaker::builder`] (or [`Breaker::new`] for the defaults), apply it
/// with [`Breaker::layer`], and watch it with [`Breaker::state`],
/// [`Breaker::snapshot`] and [`Breaker::subscribe`]. See the [module docs](self).
#[derive(Clone)]
pub struct Breaker {
    core: Arc<Core>,
    /// `core.shared` again, one pointer hop closer for the per-call admission check.
    shared: Arc<machine::Shared>,
}

impl Breaker {
    /// Starts building a breaker named `name` (used in errors, events and snapshots).
    pub fn builder(name: impl Into<Arc<str>>) -> BreakerBuilder {
        BreakerBuilder::new(name.into())
    }

    /// A breaker with the default rules; see [`BreakerBuilder`] for them.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self::from_config(name.into(), Config::default())
    }

    pub(crate) fn from_config(name: Arc<str>, config: Config) -> Self {
        let core = Arc::new(Core::new(name, config));
        let shared = core.shared.clone();
        Self { core, shared }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.core.shared.name
    }

    /// The state now. An open breaker whose delay has passed still reads `Open` until
    /// the next call moves it to half-open.
    pub fn state(&self) -> State {
        self.core.shared.state()
    }

    /// The breaker's figures now.
    pub fn snapshot(&self) -> Snapshot {
        let shared = &self.core.shared;
        let counts = self.core.counts();
        let window = shared.window_totals();
        Snapshot {
            name: shared.name.clone(),
            state: shared.state(),
            calls: counts.successes + counts.failures + counts.ignored,
            successes: counts.successes,
            failures: counts.failures,
            ignored: counts.ignored,
            slow: counts.slow,
            rejected: counts.rejected,
            shed: counts.shed,
            trips: shared.trips(),
            failure_rate: window
                .filter(|w| w.calls > 0)
                .map(|w| w.failures as f64 / w.calls as f64),
            retry_after: shared.retry_after(),
            capped: shared.capped(),
        }
    }

    /// A receiver that sees every state change.
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.core.shared.subscribe()
    }

    /// Rejects every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.core.shared.set(State::ForcedOpen);
    }

    /// Lets every call through, not counted by the rules, until [`reset`](Self::reset).
    pub fn force_closed(&self) {
        self.core.shared.set(State::ForcedClosed);
    }

    /// Closes the breaker with fresh windows and a fresh open backoff, from any state.
    pub fn reset(&self) {
        self.core.shared.set(State::Closed);
    }

    /// Whether the breaker's [`EjectionCap`] lets calls through it although it is open
    /// or half-open (see [`Snapshot::capped`]); `false` without a cap.
    pub fn is_capped(&self) -> bool {
        self.core.shared.capped()
    }

    /// Whether a [watchdog](crate::watchdog) reports this dependency escalated: it
    /// tripped more often than its restart intensity allows.
    pub fn is_escalated(&self) -> bool {
        self.core.shared.is_escalated()
    }

    pub(crate) fn from_core(core: Arc<Core>) -> Self {
        let shared = core.shared.clone();
        Self { core, shared }
    }

    /// A [`BreakerLayer`] applying this breaker, with the default classifier.
    pub fn layer(&self) -> BreakerLayer {
        BreakerLayer::new(self.clone())
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}
