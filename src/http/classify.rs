//! What counts as a failure for HTTP: [`BreakerClassifier`] for the breaker,
//! [`RetryClassifier`] for retries.
//!
//! The two differ on purpose. A breaker counts what says the downstream is unhealthy:
//! server errors, `429 Too Many Requests`, and errors reaching it. A retry only
//! re-sends what is likely to work a moment later: a gateway that could not reach the
//! server (`502`, `503`, `504`), `429`, `408 Request Timeout`, and a connection that
//! could not be made. Which requests may be sent again at all (idempotent methods) is
//! decided by [`HttpRequests`](super::HttpRequests), before the first attempt.

use std::error::Error;
use std::fmt;
use std::io;

use http::{Response, StatusCode};

use crate::{Classify, Outcome};

/// A set of status codes (100 to 999), as a bitset.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Statuses([u64; 16]);

impl Statuses {
    const fn empty() -> Self {
        Statuses([0; 16])
    }

    const fn with(mut self, code: u16) -> Self {
        let i = (code % 1024) as usize;
        self.0[i / 64] |= 1 << (i % 64);
        self
    }

    const fn without(mut self, code: u16) -> Self {
        let i = (code % 1024) as usize;
        self.0[i / 64] &= !(1 << (i % 64));
        self
    }

    const fn with_range(mut self, from: u16, to: u16) -> Self {
        let mut code = from;
        while code <= to {
            self = self.with(code);
            code += 1;
        }
        self
    }

    #[inline]
    fn contains(&self, status: StatusCode) -> bool {
        let i = (status.as_u16() % 1024) as usize;
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    fn list(&self) -> Vec<u16> {
        (100..1000)
            .filter(|c| self.0[*c as usize / 64] & (1 << (c % 64)) != 0)
            .collect()
    }
}

impl fmt::Debug for Statuses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.list()).finish()
    }
}

/// Whether an error is, or is caused by, a failure to connect: an `io::Error` of kind
/// connection refused, reset, aborted, not connected, address not available or timed
/// out, anywhere down the source chain of the error (as a boxed error, an
/// `io::Error`, or any `'static` error type the caller boxes).
pub fn is_connect_error<E: 'static>(error: &E) -> bool {
    use io::ErrorKind::*;
    let connect = |e: &(dyn Error + 'static)| {
        e.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | NotConnected
                    | AddrNotAvailable
                    | TimedOut
            )
        })
    };
    crate::chain::as_dyn(error).is_some_and(|e| crate::chain::chain(e).any(connect))
}

/// The breaker's HTTP classifier: `5xx` and `429` responses and every error are
/// failures; other responses are successes.
///
/// ```
/// use http::{Response, StatusCode};
/// use steadfast::http::BreakerClassifier;
/// use steadfast::{BoxError, Classify, Outcome};
///
/// let c = BreakerClassifier::new();
/// let res = |s: u16| Ok::<_, BoxError>(Response::builder().status(s).body(()).unwrap());
/// assert_eq!(c.classify(&res(503)), Outcome::Failure);
/// assert_eq!(c.classify(&res(404)), Outcome::Success);
/// // A 501 says nothing about health: not a failure.
/// assert_eq!(c.not_failure(StatusCode::NOT_IMPLEMENTED).classify(&res(501)), Outcome::Success);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerClassifier {
    failures: Statuses,
    errors: Outcome,
}

impl BreakerClassifier {
    /// `500`–`599` and `429` fail, errors fail.
    pub const fn new() -> Self {
        Self {
            failures: Statuses::empty().with_range(500, 599).with(429),
            errors: Outcome::Failure,
        }
    }

    /// Counts `status` as a failure too.
    pub const fn failure(mut self, status: StatusCode) -> Self {
        self.failures = self.failures.with(status.as_u16());
        self
    }

    /// Counts `status` as a success.
    pub const fn not_failure(mut self, status: StatusCode) -> Self {
        self.failures = self.failures.without(status.as_u16());
        self
    }

    /// How errors count (default [`Outcome::Failure`]).
    pub const fn errors(mut self, outcome: Outcome) -> Self {
        self.errors = outcome;
        self
    }
}

impl Default for BreakerClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl<B, E> Classify<Response<B>, E> for BreakerClassifier {
    #[inline]
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response) if self.failures.contains(response.status()) => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => self.errors,
        }
    }
}

/// The retry's HTTP classifier: `502`, `503`, `504`, `429` and `408` responses and
/// connect errors ([`is_connect_error`]) are retried ([`Outcome::Failure`]); other
/// responses and errors are returned as they are.
///
/// ```
/// use http::{Response, StatusCode};
/// use steadfast::http::RetryClassifier;
/// use steadfast::{BoxError, Classify, Outcome};
///
/// let c = RetryClassifier::new();
/// let res = |s: u16| Ok::<_, BoxError>(Response::builder().status(s).body(()).unwrap());
/// assert_eq!(c.classify(&res(503)), Outcome::Failure); // retried
/// assert_eq!(c.classify(&res(500)), Outcome::Success); // returned as is
/// let refused: BoxError = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
/// assert_eq!(c.classify(&Err::<Response<()>, _>(refused)), Outcome::Failure);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryClassifier {
    retried: Statuses,
    all_errors: bool,
}

impl RetryClassifier {
    /// Retries `502`, `503`, `504`, `429`, `408` and connect errors.
    pub const fn new() -> Self {
        Self {
            retried: Statuses::empty()
                .with(502)
                .with(503)
                .with(504)
                .with(429)
                .with(408),
            all_errors: false,
        }
    }

    /// Retries `status` too.
    pub const fn retry(mut self, status: StatusCode) -> Self {
        self.retried = self.retried.with(status.as_u16());
        self
    }

    /// Does not retry `status`.
    pub const fn no_retry(mut self, status: StatusCode) -> Self {
        self.retried = self.retried.without(status.as_u16());
        self
    }

    /// Retries every error, not only connect errors (default false). Only safe when
    /// every retried request is idempotent, which [`HttpRequests`](super::HttpRequests)
    /// ensures by default.
    pub const fn retry_all_errors(mut self, all: bool) -> Self {
        self.all_errors = all;
        self
    }
}

impl Default for RetryClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl<B, E: 'static> Classify<Response<B>, E> for RetryClassifier {
    #[inline]
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response) if self.retried.contains(response.status()) => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(e) if self.all_errors || is_connect_error(e) => Outcome::Failure,
            Err(_) => Outcome::Ignored,
        }
    }
}

/// Uses a tower-http response classifier ([`ServerErrorsAsFailures`],
/// [`StatusInRangeAsFailures`], or your own [`ClassifyResponse`]) as a steadfast
/// [`Classify`]: a response it calls a failure is a [`Outcome::Failure`], others a
/// success, and every error a failure. A classifier that can only decide at the end of
/// a streaming response (gRPC) cannot be used by a breaker or a retry, which decide on
/// the response head: such responses count as successes.
///
/// [`ServerErrorsAsFailures`]: tower_http::classify::ServerErrorsAsFailures
/// [`StatusInRangeAsFailures`]: tower_http::classify::StatusInRangeAsFailures
/// [`ClassifyResponse`]: tower_http::classify::ClassifyResponse
///
/// ```
/// use http::Response;
/// use steadfast::http::TowerHttp;
/// use steadfast::{BoxError, Classify, Outcome};
/// use tower_http::classify::StatusInRangeAsFailures;
///
/// // 4xx and 5xx both count against the breaker.
/// let c = TowerHttp(StatusInRangeAsFailures::new_for_client_and_server_errors());
/// let res = |s: u16| Ok::<_, BoxError>(Response::builder().status(s).body(()).unwrap());
/// assert_eq!(c.classify(&res(404)), Outcome::Failure);
/// assert_eq!(c.classify(&res(200)), Outcome::Success);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TowerHttp<C>(pub C);

impl<C, B, E> Classify<Response<B>, E> for TowerHttp<C>
where
    C: tower_http::classify::ClassifyResponse + Clone,
{
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        use tower_http::classify::ClassifiedResponse;
        match result {
            Ok(response) => match self.0.clone().classify_response(response) {
                ClassifiedResponse::Ready(Ok(())) => Outcome::Success,
                ClassifiedResponse::Ready(Err(_)) => Outcome::Failure,
                ClassifiedResponse::RequiresEos(_) => Outcome::Success,
            },
            Err(_) => Outcome::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;

    #[test]
    fn tower_http_classifiers_are_reused() {
        use tower_http::classify::{GrpcErrorsAsFailures, ServerErrorsAsFailures};
        let c = TowerHttp(ServerErrorsAsFailures::new());
        assert_eq!(c.classify(&res(503)), Outcome::Failure);
        assert_eq!(c.classify(&res(404)), Outcome::Success);
        assert_eq!(
            c.classify(&Err::<Response<()>, BoxError>("x".into())),
            Outcome::Failure
        );
        // gRPC decides at the end of the stream: counted as a success here.
        let grpc = TowerHttp(GrpcErrorsAsFailures::new());
        assert_eq!(grpc.classify(&res(200)), Outcome::Success);
    }

    fn res(status: u16) -> Result<Response<()>, BoxError> {
        Ok(Response::builder().status(status).body(()).unwrap())
    }

    #[test]
    fn breaker_defaults() {
        let c = BreakerClassifier::new();
        for s in [500, 502, 503, 599, 429] {
            assert_eq!(c.classify(&res(s)), Outcome::Failure, "{s}");
        }
        for s in [200, 204, 301, 400, 404, 428, 430] {
            assert_eq!(c.classify(&res(s)), Outcome::Success, "{s}");
        }
        assert_eq!(
            c.classify(&Err::<Response<()>, BoxError>("x".into())),
            Outcome::Failure
        );
        let c = c.errors(Outcome::Ignored).failure(StatusCode::NOT_FOUND);
        assert_eq!(c.classify(&res(404)), Outcome::Failure);
        assert_eq!(
            c.classify(&Err::<Response<()>, BoxError>("x".into())),
            Outcome::Ignored
        );
    }

    #[test]
    fn retry_defaults() {
        let c = RetryClassifier::new();
        for s in [502, 503, 504, 429, 408] {
            assert_eq!(c.classify(&res(s)), Outcome::Failure, "{s}");
        }
        for s in [200, 400, 404, 500, 501] {
            assert_eq!(c.classify(&res(s)), Outcome::Success, "{s}");
        }
        let other: BoxError = "protocol error".into();
        assert_eq!(c.classify(&Err::<Response<()>, _>(other)), Outcome::Ignored);
        let c = c
            .retry(StatusCode::INTERNAL_SERVER_ERROR)
            .no_retry(StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(c.classify(&res(500)), Outcome::Failure);
        assert_eq!(c.classify(&res(429)), Outcome::Success);
    }

    #[derive(Debug)]
    struct Wrapper(io::Error);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("client error (Connect)")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn connect_errors_are_found_down_the_chain() {
        let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let boxed: BoxError = Box::new(Wrapper(refused()));
        assert!(is_connect_error(&boxed));
        assert!(is_connect_error(&refused()));
        let wrapped: BoxError = io::Error::other(Wrapper(refused())).into();
        assert!(is_connect_error(&wrapped));
        let other: BoxError = Box::new(Wrapper(io::Error::from(io::ErrorKind::InvalidData)));
        assert!(!is_connect_error(&other));
        assert!(!is_connect_error(&"not an error type"));
    }
}
