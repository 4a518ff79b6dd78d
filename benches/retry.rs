//! Retry overhead on the success path: what a retry layer costs per call when the
//! inner service never fails, so no retry is ever made. This is the cost every
//! request pays for having retries configured at all.
//!
//! The inner service is a trivial `service_fn` returning its request. Rows:
//!
//! - `bare`: the inner service alone, the baseline;
//! - `steadfast/budget`: steadfast's `RetryLayer` with the default policy (3 attempts,
//!   a budget of 20% of requests plus 10/s over 10 s): each call deposits;
//! - `steadfast/unlimited`: the same with `Budget::unlimited()` (no deposit);
//! - `tower/never_retry`: `tower::retry::RetryLayer` with a policy that clones the
//!   request and never retries (the cost of tower's retry machinery alone);
//! - `tower/budget`: `tower::retry::RetryLayer` with a policy holding a
//!   `tower::retry::budget::TpsBudget` of the same figures (10 s, 10/s, 20%),
//!   depositing on every success as tower's docs show.
//!
//! Two groups: `retry/single` (one task on a current-thread runtime) and
//! `retry/shared_2_threads` (two OS threads, each with its own current-thread runtime
//! and its own clone of a service built once, so both share one layer and one budget).
//! Figures are time per call (per thread in the shared group).
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench retry
//! ```

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Ready;
use std::sync::Arc;
use std::time::Duration;

use steadfast::retry::{Budget, RetryLayer, RetryPolicy};
use tower::retry::budget::{Budget as _, TpsBudget};
use tower::{Layer, Service};

// ---------------------------------------------------------------------------
// tower retry policies
// ---------------------------------------------------------------------------

/// A tower policy that keeps a copy of the request (as any retrying policy must) and
/// never retries.
#[derive(Clone, Copy, Debug)]
struct NeverRetry;

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for NeverRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, _result: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// The budgeted policy of tower's `retry::budget` docs: a success deposits and is not
/// retried; an error is retried (at once) if the budget allows a withdrawal. The
/// budget is shared by every clone through the `Arc`.
#[derive(Clone, Debug)]
struct TpsBudgetPolicy {
    budget: Arc<TpsBudget>,
}

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for TpsBudgetPolicy {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.budget.deposit();
                None
            }
            Err(_) => self.budget.withdraw().then(|| std::future::ready(())),
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

// ---------------------------------------------------------------------------
// Row constructors
// ---------------------------------------------------------------------------

/// steadfast: the default policy, which has a budget (20% + 10/s over 10 s).
fn steadfast_budget(
) -> impl Service<u64, Response = u64, Error = Infallible> + Clone + Send + 'static {
    RetryLayer::new(RetryPolicy::new())
        .expect("valid steadfast policy")
        .layer(inner())
}

/// steadfast: the default policy with `Budget::unlimited()`.
fn steadfast_unlimited(
) -> impl Service<u64, Response = u64, Error = Infallible> + Clone + Send + 'static {
    RetryLayer::new(RetryPolicy::new().budget(Budget::unlimited()))
        .expect("valid steadfast policy")
        .layer(inner())
}

/// tower: `tower::retry::RetryLayer` with a policy that never retries.
fn tower_never_retry(
) -> impl Service<u64, Response = u64, Error = Infallible> + Clone + Send + 'static {
    tower::retry::RetryLayer::new(NeverRetry).layer(inner())
}

/// tower: `tower::retry::RetryLayer` with a `TpsBudget` of steadfast's default figures
/// (ttl 10 s, 10 retries a second, 20% of requests).
fn tower_budget() -> impl Service<u64, Response = u64, Error = Infallible> + Clone + Send + 'static
{
    let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
    tower::retry::RetryLayer::new(TpsBudgetPolicy { budget }).layer(inner())
}

// ---------------------------------------------------------------------------
// Drivers
// ---------------------------------------------------------------------------

#[path = "support/mod.rs"]
mod support;
use support::{bench_shared, bench_single, inner};

/// Runs `$bench` once per row, so both groups have the same rows in the same order.
/// A macro rather than a list because every row is a different service type.
macro_rules! rows {
    ($bench:ident, $group:expr, $rt:expr) => {{
        $bench($group, $rt, "bare", inner());
        $bench($group, $rt, "steadfast/budget", steadfast_budget());
        $bench($group, $rt, "steadfast/unlimited", steadfast_unlimited());
        $bench($group, $rt, "tower/never_retry", tower_never_retry());
        $bench($group, $rt, "tower/budget", tower_budget());
    }};
}

bench_groups!("retry");
