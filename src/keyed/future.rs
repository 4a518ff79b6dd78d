//! [`ResponseFuture`], the future returned by
//! [`KeyedBreakerService`](super::KeyedBreakerService): the breaker's own, since a
//! keyed call is a call through one key's breaker.

pub use crate::breaker::future::ResponseFuture;
