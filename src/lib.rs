//! Tower middleware for calling a downstream that fails.
//!
//! When a downstream dies, a naive client keeps hammering it, piles up timeouts, and
//! the usual fix is to let the worker crash and be restarted. steadfast lets the worker
//! handle that known failure where it happens instead:
//!
//! - a [circuit breaker](breaker) stops calling a failing downstream and fails fast
//!   with a typed error that says when to retry;
//! - [`retry`] absorbs transient failures with jittered backoff, inside a budget that
//!   keeps an outage from turning into a retry storm;
//! - [`backoff`] gives the growing, jittered delays both wait.
//!
//! Every timing rule runs on [`tokio::time`], so it can be tested on paused time, and
//! every bad setting is a [`ConfigError`] from `build()`, never a panic.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), steadfast::BoxError> {
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use steadfast::breaker::Breaker;
//!
//! let breaker = Breaker::builder("users-api")
//!     .consecutive_failures(5)
//!     .failure_rate(0.5)
//!     .count_window(100)
//!     .build()?;
//!
//! let mut client = ServiceBuilder::new()
//!     .layer(breaker.layer())
//!     .timeout(Duration::from_secs(2))
//!     .service(service_fn(|id: u32| async move { Ok::<_, std::io::Error>(id * 2) }));
//!
//! let answer = client.ready().await?.call(21).await?;
//! assert_eq!(answer, 42);
//! # Ok(())
//! # }
//! ```
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
pub mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod keyed;
mod outcome;
pub mod retry;
mod stripe;
mod sync;
pub mod watchdog;

pub use config::ConfigError;

// The README's examples compile and run as doctests (with the `http` feature, which
// its HTTP example needs; the README's test command enables every feature).
#[cfg(all(doctest, feature = "http"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
pub use outcome::{Classify, ErrorsAsFailures, Outcome};

/// A boxed error, as the breaker returns (like `tower::BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
