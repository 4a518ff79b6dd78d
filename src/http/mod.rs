//! HTTP: classifiers for responses and client errors, `Retry-After`, retries that are
//! safe (idempotent requests only, bodies replayed byte for byte), and breaker
//! rejections as `503 Service Unavailable`. Feature `http`.
//!
//! With the feature `client`, [`Client`] puts it all together over hyper-util: one
//! builder for a client with retry, a breaker per origin, an attempt timeout and an
//! optional watchdog. With the feature `axum`, its [`Error`] is a response and
//! [`axum::health_routes`] serves `/health` and `/ready`.
//!
//! # Known limitation
//!
//! A task that drives the retry stack over a client sending
//! `ReplayBody<BoxBody<Bytes, BoxError>>` may not compile when spawned ("implementation
//! of `Service` is not general enough"): a rustc limitation with higher-ranked
//! lifetimes in spawned futures (rust-lang/rust#102211), which tower's own retry hits
//! too. Use a concrete body error type (`BoxBody<Bytes, std::io::Error>`, say), or box
//! the call future before awaiting it in the spawned task.
//!
//! Without `max_elapsed`, a `Retry-After` is honoured up to one day: set `max_elapsed`
//! to bound how long a request may wait.

#[cfg(feature = "axum")]
pub mod axum;
mod classify;
#[cfg(feature = "client")]
mod client;
mod key;
pub mod open;
pub mod replay;
mod retry;
pub mod retry_after;

pub use self::classify::{is_connect_error, BreakerClassifier, RetryClassifier, TowerHttp};
#[cfg(feature = "client")]
pub use self::client::{
    Breakers, Client, ClientBuilder, Error, ErrorKind, HttpProbe, HttpRetryPolicy, HyperClient,
    ResponseFuture,
};
pub use self::key::{ByAuthority, ByOrigin, Origin};
pub use self::retry::{retry_policy, Attempts, HttpRequests, HttpResponses, IDEMPOTENCY_KEY};
