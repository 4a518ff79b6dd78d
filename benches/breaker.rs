//! Per-call overhead of circuit breakers in the **closed** state.
//!
//! Every row drives the same trivial inner service
//! (`service_fn(|x: u64| ready(Ok::<u64, Infallible>(x)))`) with
//! `svc.ready().await?.call(req).await`, so the difference between a row and `bare`
//! is what the breaker adds on the healthy path. The calls never fail, so no breaker
//! ever leaves the closed state.
//!
//! - `breaker/single`: one task on a current-thread runtime, `iters` calls in a row,
//!   timed as one batch (`iter_custom`), so runtime overhead is paid once per batch.
//! - `breaker/shared_2_threads`: two OS threads, each with its own current-thread
//!   runtime and its OWN clone of the service; all clones share ONE breaker. Reported
//!   time = wall time of both threads (first start to last finish) / calls per thread.
//!
//! Rows: `bare`, steadfast with each trip rule (the count window once more with 1% of
//! calls failing; the slow-call rule over a count window), and the peers `failsafe`,
//! `recloser` and `tower-resilience` (tower-resilience-circuitbreaker) with comparable
//! rules.
//! failsafe and recloser are not tower middleware, so they are wrapped in the thin
//! adapters below.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench breaker
//! ```

use std::fmt::Debug;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

/// The open duration every breaker is given. The breakers never open in these
/// benches; a common value just keeps the configurations alike.
const OPEN_FOR: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Peer adapters: thin tower `Service`s over failsafe and recloser
// ---------------------------------------------------------------------------

/// failsafe as a tower `Service`.
///
/// `poll_ready` forwards to the inner service; `call` hands the inner future to
/// failsafe's own `futures::CircuitBreaker::call`, and the returned
/// `failsafe::futures::ResponseFuture` is the service's future as is: no boxing, no
/// error conversion beyond failsafe's own `Error<E>`. failsafe asks permission when
/// that future is first polled and records the outcome when it completes. (The
/// `Arc` clone of the state machine per call and the mutex it takes are failsafe's
/// own API, not the adapter's.)
struct FailsafeService<S, P> {
    inner: S,
    breaker: failsafe::StateMachine<P, ()>,
}

impl<S: Clone, P> Clone for FailsafeService<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
        }
    }
}

impl<S, P, Req> Service<Req> for FailsafeService<S, P>
where
    S: Service<Req>,
    P: failsafe::FailurePolicy + Send + Sync,
{
    type Response = S::Response;
    type Error = failsafe::Error<S::Error>;
    type Future = failsafe::futures::ResponseFuture<S::Future, P, (), failsafe::Any>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(failsafe::Error::Inner)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        failsafe::futures::CircuitBreaker::call(&self.breaker, self.inner.call(req))
    }
}

/// recloser as a tower `Service`.
///
/// `poll_ready` forwards to the inner service; `call` hands the inner future to
/// `AsyncRecloser::call`, and the returned `recloser::RecloserFuture` is the
/// service's future as is: no boxing, no error conversion beyond recloser's own
/// `Error<E>`. recloser checks permission when that future is first polled and
/// records the outcome when it completes. (The `Arc` clone per call and the
/// crossbeam-epoch pin per poll are recloser's own API, not the adapter's.)
#[derive(Clone)]
struct RecloserService<S> {
    inner: S,
    breaker: recloser::AsyncRecloser,
}

impl<S, Req> Service<Req> for RecloserService<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = recloser::Error<S::Error>;
    type Future = recloser::RecloserFuture<S::Future, recloser::AnyError>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(recloser::Error::Inner)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        self.breaker.call(self.inner.call(req))
    }
}

// ---------------------------------------------------------------------------
// Row constructors
// ---------------------------------------------------------------------------

/// steadfast: trip after 5 failures in a row.
fn steadfast_consecutive(
) -> impl Service<u64, Response = u64, Error = steadfast::BoxError> + Clone + Send + 'static {
    let breaker = steadfast::breaker::Breaker::builder("b")
        .consecutive_failures(5)
        .build()
        .expect("valid steadfast config");
    breaker.layer().layer(inner())
}

/// steadfast: trip at >= 50% failures over the last 100 calls.
fn count_window_breaker() -> steadfast::breaker::Breaker {
    steadfast::breaker::Breaker::builder("b")
        .failure_rate(0.5)
        .count_window(100)
        .build()
        .expect("valid steadfast config")
}

fn steadfast_count_window(
) -> impl Service<u64, Response = u64, Error = steadfast::BoxError> + Clone + Send + 'static {
    count_window_breaker().layer().layer(inner())
}

/// steadfast: the count window over an inner service whose calls fail one in
/// `every` (see `support::failing`), far below the 50% rule: a failure is nearly
/// always in the window, so every call takes a position in it (the clean-window row
/// above takes none).
fn steadfast_count_window_failing(
    every: u64,
) -> impl Service<u64, Response = u64, Error = steadfast::BoxError> + Clone + Send + 'static {
    count_window_breaker()
        .layer()
        .layer(support::failing(every))
}

/// steadfast: the consecutive rule over calls failing one in `every`.
fn steadfast_consecutive_failing(
    every: u64,
) -> impl Service<u64, Response = u64, Error = steadfast::BoxError> + Clone + Send + 'static {
    let breaker = steadfast::breaker::Breaker::builder("b")
        .consecutive_failures(5)
        .build()
        .expect("valid steadfast config");
    breaker.layer().layer(support::failing(every))
}

/// steadfast: the 10 s time window over calls failing one in `every`.
fn steadfast_time_window_failing(
    every: u64,
) -> impl Service<u64, Response = u64, Error = steadfast::BoxError> + Clone + Send + 'static {
    let breaker = steadfast::breaker::Breaker::builder("b")
        .failure_rate(0.5)
        .time_window(Duration::from_secs(10))
        .build()
        .expect("valid steadfast config");
    support::settled(breaker.layer().layer(support::failing(every)))
}

/// steadfast: `Breaker::new` over calls failing one in `every` (10% is far from its
/// 95% rule, and from shedding: accepts stay above half the requests).
fn steadfast_defaults_failing(
    every: u64,
) -> impl Service<u64, Response = u64, Error = steadfast::BoxError> + Clone + Send + 'static {
    support::settled(
        steadfast::breaker::Breaker::new("b")
            .layer()
            .layer(support::failing(every)),
    )
}

/// failsafe: its consecutive rule over calls failing one in `every`.
fn failsafe_consecutive_failing(
    every: u64,
) -> impl Service<u64, Response = u64, Error = impl Debug> + Clone + Send + 'static {
    let policy =
        failsafe::failure_policy::consecutive_failures(5, failsafe::backoff::constant(OPEN_FOR));
    FailsafeService {
        inner: support::failing(every),
        breaker: failsafe::Config::new().failure_policy(policy).build(),
    }
}

/// recloser: its count window over calls failing one in `every`.
fn recloser_count_window_failing(
    every: u64,
) -> impl Service<u64, Response = u64, Error = impl Debug> + Clone + Send + 'static {
    let breaker = recloser::Recloser::custom()
        .error_rate(0.5)
        .closed_len(100)
        .open_wait(OPEN_FOR)
        .build();
    RecloserService {
        inner: support::failing(every),
        breaker: recloser::AsyncRecloser::from(breaker),
    }
}

/// steadfast: trip at >= 50% failures over the last 10 s.
fn steadfast_time_window(
) -> impl Service<u64, Response = u64, Error = steadfast::BoxError> + Clone + Send + 'static {
    let breaker = steadfast::breaker::Breaker::builder("b")
        .failure_rate(0.5)
        .time_window(Duration::from_secs(10))
        .build()
        .expect("valid steadfast config");
    support::settled(breaker.layer().layer(inner()))
}

/// steadfast: the time window with adaptive throttling on (nothing to shed on a clean
/// path): the cost of the feature is this row less `steadfast/time_window`.
fn steadfast_time_window_throttled(
) -> impl Service<u64, Response = u64, Error = steadfast::BoxError> + Clone + Send + 'static {
    let breaker = steadfast::breaker::Breaker::builder("b")
        .failure_rate(0.5)
        .time_window(Duration::from_secs(10))
        .adaptive_throttling(2.0)
        .build()
        .expect("valid steadfast config");
    support::settled(breaker.layer().layer(inner()))
}

/// steadfast: `Breaker::new`, the defaults (95% over a 2.5 s time window, adaptive
/// throttling).
fn steadfast_defaults(
) -> impl Service<u64, Response = u64, Error = steadfast::BoxError> + Clone + Send + 'static {
    support::settled(steadfast::breaker::Breaker::new("b").layer().layer(inner()))
}

/// steadfast: trip at >= 50% calls slower than 1 s over the last 100 calls. The rule
/// reads the clock at the start and at the end of each call.
fn steadfast_slow_call(
) -> impl Service<u64, Response = u64, Error = steadfast::BoxError> + Clone + Send + 'static {
    let breaker = steadfast::breaker::Breaker::builder("b")
        .slow_calls(Duration::from_secs(1), 0.5)
        .count_window(100)
        .build()
        .expect("valid steadfast config");
    breaker.layer().layer(inner())
}

/// failsafe: trip after 5 failures in a row (`ConsecutiveFailures`), constant 30 s
/// open duration.
fn failsafe_consecutive(
) -> impl Service<u64, Response = u64, Error = impl Debug> + Clone + Send + 'static {
    let policy =
        failsafe::failure_policy::consecutive_failures(5, failsafe::backoff::constant(OPEN_FOR));
    FailsafeService {
        inner: inner(),
        breaker: failsafe::Config::new().failure_policy(policy).build(),
    }
}

/// failsafe: its time-based rule, `SuccessRateOverTimeWindow`: trip when the
/// (exponentially weighted) success rate over the last 10 s drops below 50%, once at
/// least 5 requests were seen (failsafe's default minimum). failsafe has no count
/// window; this is its nearest rule to a failure-rate window.
fn failsafe_time_window(
) -> impl Service<u64, Response = u64, Error = impl Debug> + Clone + Send + 'static {
    let policy = failsafe::failure_policy::success_rate_over_time_window(
        0.5,
        5,
        Duration::from_secs(10),
        failsafe::backoff::constant(OPEN_FOR),
    );
    FailsafeService {
        inner: inner(),
        breaker: failsafe::Config::new().failure_policy(policy).build(),
    }
}

/// recloser: trip at >= 50% failures over its ring buffer of the last 100 calls.
/// recloser has only this rule (a ring buffer with an error rate), so it appears
/// only as a count window.
fn recloser_count_window(
) -> impl Service<u64, Response = u64, Error = impl Debug> + Clone + Send + 'static {
    let breaker = recloser::Recloser::custom()
        .error_rate(0.5)
        .closed_len(100)
        .open_wait(OPEN_FOR)
        .build();
    RecloserService {
        inner: inner(),
        breaker: recloser::AsyncRecloser::from(breaker),
    }
}

/// tower-resilience: `FailureModel::ConsecutiveFailures { k: 5 }`.
///
/// tower-resilience is tower middleware already, so no adapter: clones of its
/// service share one circuit. Its own `call` boxes a future and takes a
/// `tokio::sync::Mutex` twice per call (and clones the breaker's name `String` for an
/// event on every success); that is its design, not the bench's.
fn tower_resilience_consecutive(
) -> impl Service<u64, Response = u64, Error = impl Debug> + Clone + Send + 'static {
    tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .wait_duration_in_open(OPEN_FOR)
        .build()
        .expect("valid tower-resilience config")
        .layer(inner())
}

/// tower-resilience's count-based window of 100 calls. (In 0.14 its count-based mode
/// keeps running totals rather than the last 100 outcomes; the per-call cost is that
/// of plain counters.)
fn tower_resilience_count_based() -> tower_resilience_circuitbreaker::CircuitBreakerConfigBuilder {
    tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .sliding_window_type(tower_resilience_circuitbreaker::SlidingWindowType::CountBased)
        .sliding_window_size(100)
        .wait_duration_in_open(OPEN_FOR)
}

/// tower-resilience: the count-based window, 50% failure rate.
fn tower_resilience_count_window(
) -> impl Service<u64, Response = u64, Error = impl Debug> + Clone + Send + 'static {
    tower_resilience_count_based()
        .failure_rate_threshold(0.5)
        .build()
        .expect("valid tower-resilience config")
        .layer(inner())
}

/// tower-resilience: the count-based window with a slow-call rule (1 s, 50%), as
/// `steadfast/slow_call`.
fn tower_resilience_slow_call(
) -> impl Service<u64, Response = u64, Error = impl Debug> + Clone + Send + 'static {
    tower_resilience_count_based()
        .slow_call_duration_threshold(Duration::from_secs(1))
        .slow_call_rate_threshold(0.5)
        .build()
        .expect("valid tower-resilience config")
        .layer(inner())
}

/// tower-resilience: time-based sliding window of 10 s, 50% failure rate.
///
/// It keeps one record per call in a `VecDeque` and scans them all on every
/// outcome, so its per-call cost grows with the calls inside the window: it depends
/// on throughput and on how long the row has run (the window never reaches steady
/// state within one row's 4 s). Read this row as O(n), not as a fixed figure.
fn tower_resilience_time_window(
) -> impl Service<u64, Response = u64, Error = impl Debug> + Clone + Send + 'static {
    tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_type(tower_resilience_circuitbreaker::SlidingWindowType::TimeBased)
        .sliding_window_duration(Duration::from_secs(10))
        .wait_duration_in_open(OPEN_FOR)
        .build()
        .expect("valid tower-resilience config")
        .layer(inner())
}

// ---------------------------------------------------------------------------
// Drivers: benches/support
// ---------------------------------------------------------------------------

#[path = "support/mod.rs"]
mod support;
use support::{bench_shared, bench_single, inner};

/// Runs `$bench` once per row, so both groups have the same rows in the same order.
/// A macro rather than a list because every row is a different service type.
macro_rules! rows {
    ($bench:ident, $group:expr, $rt:expr) => {{
        $bench($group, $rt, "bare", inner());
        $bench(
            $group,
            $rt,
            "steadfast/consecutive",
            steadfast_consecutive(),
        );
        $bench(
            $group,
            $rt,
            "steadfast/count_window",
            steadfast_count_window(),
        );
        // The paths real traffic takes: 1% and 10% of calls failing.
        for (pct, every) in [("1pct", 100), ("10pct", 10)] {
            let id = |row: &str| format!("{row}_{pct}");
            $bench($group, $rt, &id("bare"), support::failing(every));
            $bench(
                $group,
                $rt,
                &id("steadfast/consecutive"),
                steadfast_consecutive_failing(every),
            );
            $bench(
                $group,
                $rt,
                &id("steadfast/count_window"),
                steadfast_count_window_failing(every),
            );
            $bench(
                $group,
                $rt,
                &id("steadfast/time_window"),
                steadfast_time_window_failing(every),
            );
            $bench(
                $group,
                $rt,
                &id("steadfast/defaults"),
                steadfast_defaults_failing(every),
            );
            $bench(
                $group,
                $rt,
                &id("failsafe/consecutive"),
                failsafe_consecutive_failing(every),
            );
            $bench(
                $group,
                $rt,
                &id("recloser/count_window"),
                recloser_count_window_failing(every),
            );
        }
        $bench(
            $group,
            $rt,
            "steadfast/time_window",
            steadfast_time_window(),
        );
        $bench(
            $group,
            $rt,
            "steadfast/time_window_throttled",
            steadfast_time_window_throttled(),
        );
        $bench($group, $rt, "steadfast/defaults", steadfast_defaults());
        $bench($group, $rt, "steadfast/slow_call", steadfast_slow_call());
        $bench($group, $rt, "failsafe/consecutive", failsafe_consecutive());
        $bench($group, $rt, "failsafe/time_window", failsafe_time_window());
        $bench(
            $group,
            $rt,
            "recloser/count_window",
            recloser_count_window(),
        );
        $bench(
            $group,
            $rt,
            "tower-resilience/consecutive",
            tower_resilience_consecutive(),
        );
        $bench(
            $group,
            $rt,
            "tower-resilience/count_window",
            tower_resilience_count_window(),
        );
        $bench(
            $group,
            $rt,
            "tower-resilience/slow_call",
            tower_resilience_slow_call(),
        );
        $bench(
            $group,
            $rt,
            "tower-resilience/time_window",
            tower_resilience_time_window(),
        );
    }};
}

bench_groups!("breaker");
