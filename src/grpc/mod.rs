//! gRPC over tonic: a breaker that reads `grpc-status` where gRPC puts it, retries
//! after gRFC A6, rejections as `UNAVAILABLE` with pushback, and a health-check probe.
//! Feature `grpc`.
//!
//! # Why
//!
//! A gRPC call's outcome is not its HTTP status (always `200`): it is the
//! `grpc-status` in the response head of a trailers-only response (an error before
//! any message), or in the trailers at the end of the body (after the messages of a
//! streaming call, or from a server that sends headers first). A breaker that only
//! sees the head counts every such failure as a success. [`GrpcBreakerLayer`] reads
//! both: the outcome is counted when the body ends.
//!
//! # A tonic client
//!
//! tonic's clients take any `http` service, so the stack is the usual one, outermost
//! first: retry, breaker, timeout, over a `Channel`.
//!
//! ```no_run
//! # async fn run() -> Result<(), steadfast::BoxError> {
//! use std::time::Duration;
//! use steadfast::breaker::Breaker;
//! use steadfast::grpc::{health_probe, retry_policy, GrpcBreakerLayer};
//! use steadfast::retry::RetryLayer;
//! use steadfast::watchdog::Watchdog;
//! use tonic::transport::Channel;
//! use tower::ServiceBuilder;
//!
//! let channel = Channel::from_static("http://127.0.0.1:50051").connect_lazy();
//! let prices = Breaker::new("prices");
//! let _watchdog = Watchdog::builder(&prices, health_probe(channel.clone(), "")).spawn()?;
//! let stack = ServiceBuilder::new()
//!     .layer(RetryLayer::new(retry_policy())?) // UNAVAILABLE, pushback honoured
//!     .layer(GrpcBreakerLayer::new(&prices)) // grpc-status from head or trailers
//!     .timeout(Duration::from_secs(2))
//!     .service(channel);
//! // let client = PricesClient::new(stack); // any tonic-generated client
//! # let _ = stack;
//! # Ok(())
//! # }
//! ```
//!
//! - [`GrpcBreakerLayer`]: failures are [`Codes::FAILURES`] (`UNAVAILABLE`,
//!   `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL`, `UNKNOWN`), transport
//!   errors, a body that ends without a status; a body dropped before its end counts
//!   nothing.
//! - [`retry_policy`]: retries a trailers-only `UNAVAILABLE` ([`Codes::RETRYABLE`]) and
//!   connect errors, never once the server has sent headers; waits at least
//!   `grpc-retry-pushback-ms` when the server sends it, and does not retry when it is
//!   negative or malformed; replays the request of unary and server-streaming calls
//!   (a request that carried a second message is sent once).
//! - [`health_probe`]: the watchdog's probe, `grpc.health.v1.Health/Check`.
//!
//! # A tonic server
//!
//! In a server stack with a breaker, [`OpenAsStatusLayer`] turns a rejection into a
//! trailers-only `UNAVAILABLE` with `grpc-retry-pushback-ms`; in a handler,
//! `Status::from(open)` (or [`status`]) does the same.

mod breaker;
mod codes;
mod probe;
mod retry;
mod status;

pub use self::breaker::{GrpcBody, GrpcBreaker, GrpcBreakerLayer, ResponseFuture};
pub use self::codes::Codes;
pub use self::probe::{health_probe, HealthProbe};
pub use self::retry::{retry_policy, GrpcRequests, GrpcResponses, GrpcRetryClassifier, PUSHBACK};
pub use self::status::{status, OpenAsStatus, OpenAsStatusLayer, StatusFuture};
