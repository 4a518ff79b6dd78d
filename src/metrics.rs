//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): breakers and watchdogs as series a Prometheus, StatsD or OpenTelemetry
//! exporter can serve.
//!
//! # Why read at scrape time?
//!
//! A breaker already counts every call, in per-thread shards written with plain stores.
//! Writing each call to a metrics recorder as well would add a read-modify-write, a
//! map lookup or a lock to every call: more than the rest of a closed call costs. So
//! the counts are read when they are wanted instead: call [`record`] (or
//! [`Health::record_metrics`](crate::health::Health::record_metrics) for every
//! registered breaker) in the `/metrics` handler just before the exporter renders, or
//! every few seconds from a task. A closed call costs the same with the feature on.
//! What happens rarely (a probe, an escalation) is counted as it happens.
//!
//! # Series
//!
//! Breaker, keyed and watchdog series have the label `breaker`: the breaker's name (a
//! keyed breaker's keys are never labels, so the cardinality stays bounded); retry
//! series have `policy`, the name given with
//! [`RetryPolicy::name`](crate::retry::RetryPolicy::name).
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `steadfast_breaker_calls_total` | counter | `outcome`: `success`, `failure`, `ignored` | completed calls |
//! | `steadfast_breaker_rejected_total` | counter | | calls rejected without calling the downstream (shed ones included) |
//! | `steadfast_breaker_shed_total` | counter | | calls shed by adaptive throttling |
//! | `steadfast_breaker_slow_total` | counter | | calls slower than the slow-call threshold |
//! | `steadfast_breaker_trips_total` | counter | | times the breaker opened |
//! | `steadfast_breaker_state` | gauge | `state`: `closed`, `open`, `half-open`, `forced-open`, `forced-closed` | 1 for the current state, 0 for the others |
//! | `steadfast_breaker_failure_rate` | gauge | | failures / calls in the current window (absent without a rate rule) |
//! | `steadfast_breaker_retry_after_seconds` | gauge | | while rejecting, when a call could next go through; 0 otherwise |
//! | `steadfast_breaker_escalated` | gauge | | 1 while a watchdog reports the dependency escalated |
//! | `steadfast_breaker_capped` | gauge | | 1 while an [`EjectionCap`](crate::breaker::EjectionCap) lets calls through the open breaker |
//! | `steadfast_keyed_keys` | gauge | | keys a keyed breaker holds ([`record_keyed`]) |
//! | `steadfast_keyed_rejecting` | gauge | | its keys whose breaker rejects calls |
//! | `steadfast_keyed_capped` | gauge | | its keys open but let through by an ejection cap |
//! | `steadfast_keyed_evictions_total` | counter | | its keys evicted (idle or at the cap) |
//! | `steadfast_retry_retries_total` | counter | `policy` | retries made, counted as they are decided |
//! | `steadfast_retry_refused_total` | counter | `policy`, `reason`: `budget`, `max_elapsed`, `no_runtime` | retries a policy wanted and did not make |
//! | `steadfast_retry_budget_balance` | gauge | `policy` | retries the budget allows now ([`record_budget`]) |
//! | `steadfast_watchdog_probes_total` | counter | `result`: `passed`, `failed` | probes, counted as they end |
//! | `steadfast_watchdog_escalations_total` | counter | | escalations, counted as they happen |
//!
//! ```
//! use steadfast::breaker::Breaker;
//! use steadfast::health::Health;
//!
//! let health = Health::new();
//! health.register(&Breaker::new("users-api"));
//! // In the /metrics handler, before the exporter renders:
//! health.record_metrics();
//! ```

use metrics::{counter, gauge};

use crate::breaker::{Breaker, State};
use crate::keyed::KeyedSnapshot;
use crate::retry::Budget;

const STATES: [State; 5] = [
    State::Closed,
    State::Open,
    State::HalfOpen,
    State::ForcedOpen,
    State::ForcedClosed,
];

/// Records `breaker`'s figures now: its counters (as absolute values) and gauges.
pub fn record(breaker: &Breaker) {
    let s = breaker.snapshot();
    let name = s.name.to_string();
    for (outcome, n) in [
        ("success", s.successes),
        ("failure", s.failures),
        ("ignored", s.ignored),
    ] {
        counter!("steadfast_breaker_calls_total", "breaker" => name.clone(), "outcome" => outcome)
            .absolute(n);
    }
    counter!("steadfast_breaker_rejected_total", "breaker" => name.clone()).absolute(s.rejected);
    counter!("steadfast_breaker_shed_total", "breaker" => name.clone()).absolute(s.shed);
    counter!("steadfast_breaker_slow_total", "breaker" => name.clone()).absolute(s.slow);
    counter!("steadfast_breaker_trips_total", "breaker" => name.clone()).absolute(s.trips);
    for state in STATES {
        let on = if state == s.state { 1.0 } else { 0.0 };
        gauge!("steadfast_breaker_state", "breaker" => name.clone(), "state" => state.as_str())
            .set(on);
    }
    if let Some(rate) = s.failure_rate {
        gauge!("steadfast_breaker_failure_rate", "breaker" => name.clone()).set(rate);
    }
    let after = s.retry_after.map_or(0.0, |d| d.as_secs_f64());
    gauge!("steadfast_breaker_retry_after_seconds", "breaker" => name.clone()).set(after);
    let escalated = if breaker.is_escalated() { 1.0 } else { 0.0 };
    gauge!("steadfast_breaker_escalated", "breaker" => name.clone()).set(escalated);
    let capped = if s.capped { 1.0 } else { 0.0 };
    gauge!("steadfast_breaker_capped", "breaker" => name).set(capped);
}

/// Records a keyed breaker's figures: keys held, keys rejecting, keys evicted (labelled
/// by its name, never by key).
pub fn record_keyed(keyed: &KeyedSnapshot) {
    let name = keyed.name.to_string();
    gauge!("steadfast_keyed_keys", "breaker" => name.clone()).set(keyed.keys as f64);
    gauge!("steadfast_keyed_rejecting", "breaker" => name.clone()).set(keyed.rejecting as f64);
    gauge!("steadfast_keyed_capped", "breaker" => name.clone()).set(keyed.capped as f64);
    counter!("steadfast_keyed_evictions_total", "breaker" => name).absolute(keyed.evicted);
}

/// Records a retry budget's balance (the retries it would allow now) as
/// `steadfast_retry_budget_balance{policy}`; nothing for an unlimited budget.
pub fn record_budget(policy: &str, budget: &Budget) {
    if let Some(balance) = budget.balance() {
        gauge!("steadfast_retry_budget_balance", "policy" => policy.to_string()).set(balance);
    }
}

/// Counts a retry made.
pub(crate) fn retry(policy: &str) {
    counter!("steadfast_retry_retries_total", "policy" => policy.to_string()).increment(1);
}

/// Counts a retry refused, and why.
pub(crate) fn refused(policy: &str, reason: &'static str) {
    counter!("steadfast_retry_refused_total", "policy" => policy.to_string(), "reason" => reason)
        .increment(1);
}

/// Counts a probe that ended.
pub(crate) fn probe(breaker: &str, passed: bool) {
    let result = if passed { "passed" } else { "failed" };
    counter!("steadfast_watchdog_probes_total", "breaker" => breaker.to_string(), "result" => result)
        .increment(1);
}

/// Counts an escalation.
pub(crate) fn escalation(breaker: &str) {
    counter!("steadfast_watchdog_escalations_total", "breaker" => breaker.to_string()).increment(1);
}
