//! Tower middleware for calling a downstream that fails.
//!
//! When a downstream dies, a naive client keeps hammering it, piles up timeouts, and
//! the usual fix is to let the worker crash and be restarted. steadfast lets the worker
//! handle that known failure where it happens instead, with layers for a tower
//! [`ServiceBuilder`](https://docs.rs/tower/0.5/tower/builder/struct.ServiceBuilder.html).
//!
//! # Which layer for which failure
//!
//! | the downstream... | use | what it does |
//! | --- | --- | --- |
//! | fails a call now and then (a blip) | [`retry`] | retries with jittered [`backoff`], inside a [budget](retry::Budget) that keeps an outage from becoming a retry storm |
//! | is dead | [`breaker`] | stops calling it and fails fast with a typed [`Open`](breaker::error::Open) error that says when to retry |
//! | comes back | [`watchdog`] | probes it while the breaker is open and closes the breaker when it answers, so user requests are never the probes |
//! | is overloaded, answering some calls | [`breaker`]'s [adaptive throttling](breaker::BreakerBuilder::adaptive_throttling) | sheds the calls it cannot take, keeps the rest flowing |
//! | is slow | a timeout (tower's), and a breaker's [`slow_calls`](breaker::BreakerBuilder::slow_calls) rule | bounds each attempt; opens when too many calls are slow |
//! | is one bad host of several | [`keyed`] breakers, or a breaker per endpoint with [`Readiness::Wait`](breaker::Readiness::Wait) behind a balancer | takes that host out, keeps the others |
//! | looks bad on most hosts at once | an [`EjectionCap`](breaker::EjectionCap) over the endpoints' breakers, and [`Health::register_endpoints`](health::Health::register_endpoints) | never ejects more than a share of them; takes the process out of rotation if it reaches none (its own network) |
//! | keeps failing, again and again | the watchdog's [`max_trips`](watchdog::WatchdogBuilder::max_trips) and [`health`] | reports the service not ready instead of crashing it |
//!
//! With the `http` feature, [`http`] adds HTTP classifiers, `Retry-After`, retries of
//! idempotent requests with their bodies replayed, and rejections as `503`; with
//! `client`, [`http::Client`] is all of it over hyper-util in one builder, and with
//! `axum` its errors are responses and `/health` and `/ready` come ready-made.
//!
//! # How they stack
//!
//! Retry outside the breaker, the breaker outside the timeout:
//!
//! - the timeout bounds each attempt, and the breaker counts each timed-out attempt as
//!   a failure (each attempt is one breaker call);
//! - the retry layer sees the breaker's rejections and never retries them: an open
//!   breaker ends a request at once instead of multiplying it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), steadfast::BoxError> {
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use steadfast::breaker::Breaker;
//! use steadfast::retry::{RetryLayer, RetryPolicy};
//! use steadfast::watchdog::Watchdog;
//!
//! // The defaults are made for an incident; see each builder's `# Defaults`.
//! let breaker = Breaker::new("users-api");
//! let watchdog = Watchdog::builder(&breaker, || async {
//!     Ok::<_, std::io::Error>(()) // a health check of users-api
//! })
//! .interval(Duration::from_secs(1))
//! .spawn()?;
//!
//! let mut client = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryPolicy::new())?)
//!     .layer(breaker.layer())
//!     .timeout(Duration::from_secs(2))
//!     .service(service_fn(|id: u32| async move { Ok::<_, std::io::Error>(id * 2) }));
//!
//! let answer = client.ready().await?.call(21).await?;
//! assert_eq!(answer, 42);
//! watchdog.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # The modules
//!
//! - [`backoff`]: delays that grow and jitter (none, full, equal, decorrelated),
//!   seedable; used by retries, open delays and probes.
//! - [`breaker`]: the circuit breaker, its trip rules, adaptive throttling,
//!   [`Readiness`](breaker::Readiness) for balancers, and the
//!   [`EjectionCap`](breaker::EjectionCap) of a set of endpoints.
//! - [`retry`]: the retry layer, its policy and its budget.
//! - [`watchdog`]: probing a dead downstream, and restart intensity (escalation).
//! - [`health`]: readiness from breakers, for `/ready` and `/health` routes.
//! - [`keyed`]: a breaker per key of the request, with bounded memory.
//! - [`http`] (feature `http`): HTTP classifiers, retries and responses; the
//!   protected [`Client`](http::Client) (feature `client`); axum integration
//!   (feature `axum`).
//! - [`grpc`] (feature `grpc`): tonic clients and servers: `grpc-status` from trailers,
//!   gRFC A6 retries with pushback, rejections as `UNAVAILABLE`, a health-check probe.
//! - [`metrics`] (feature `metrics`): breakers and watchdogs as metrics series, read
//!   at scrape time.
//!
//! Every timing rule runs on tokio's clock
//! ([`tokio::time`](https://docs.rs/tokio/1/tokio/time/index.html)), so it can be
//! tested on paused time, and every bad setting is a [`ConfigError`] from `build()`,
//! never a panic.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

pub mod backoff;
pub mod breaker;
mod chain;
mod config;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod keyed;
#[cfg(feature = "metrics")]
pub mod metrics;
mod nanos;
mod outcome;
pub mod retry;
mod stripe;
mod sync;
pub mod watchdog;

pub use config::ConfigError;

// The README's examples compile and run as doctests (with the `axum` feature, which
// its HTTP example needs; the README's test command enables every feature).
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
pub use outcome::{Classify, ErrorsAsFailures, Outcome};

/// A boxed error, as the breaker returns (like `tower::BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
