//! HTTP: classifiers for responses and client errors, `Retry-After`, retries that are
//! safe (idempotent requests only, bodies replayed byte for byte), and breaker
//! rejections as `503 Service Unavailable`. Feature `http`.

mod classify;
pub mod open;
pub mod replay;
mod retry;
pub mod retry_after;

pub use self::classify::{is_connect_error, BreakerClassifier, RetryClassifier};
pub use self::retry::{retry_policy, Attempts, HttpRequests, HttpResponses, IDEMPOTENCY_KEY};
