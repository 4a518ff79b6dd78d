//! Safe HTTP retries: [`HttpRequests`] decides which requests may be sent again and
//! replays their bodies; [`HttpResponses`] honours `Retry-After` and records the
//! number of attempts; [`retry_policy`] puts them together with [`RetryClassifier`].

use std::time::Duration;

use http::{HeaderName, Method, Request, Response};
use http_body::Body;

use super::replay::{replayable, ReplayBody, RequestReplay, DEFAULT_REPLAY_CAP};
use super::retry_after::retry_after_now;
use super::RetryClassifier;
use crate::retry::{RetryPolicy, RetryRequest, RetryResponse};

/// The number of attempts a request took, put in the final response's extensions by
/// [`HttpResponses`].
///
/// ```
/// # fn f(response: http::Response<()>) {
/// use steadfast::http::Attempts;
/// let attempts = response.extensions().get::<Attempts>().map_or(1, |a| a.0);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attempts(pub u32);

/// The standard methods, as a bitset (custom methods are never retried). The first
/// six of `STANDARD` are the idempotent ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Methods(u16);

const STANDARD: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::PUT,
    Method::DELETE,
    Method::TRACE,
    Method::POST,
    Method::PATCH,
    Method::CONNECT,
];

impl Methods {
    fn bit(method: &Method) -> Option<u16> {
        STANDARD.iter().position(|m| m == method).map(|i| 1 << i)
    }

    fn contains(self, method: &Method) -> bool {
        Self::bit(method).is_some_and(|b| self.0 & b != 0)
    }
}

/// Which HTTP requests are retried, and how their bodies are replayed.
///
/// By default only idempotent methods (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`,
/// `TRACE`) are retried, or any request carrying an `Idempotency-Key` header: a `POST`
/// is sent once. A retried request's body is kept as the first attempt sends it, up to
/// a cap (64 KiB by default); a larger body is sent once and not retried. Method, URI,
/// version, headers and extensions are kept on every attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpRequests {
    methods: Methods,
    idempotency_key: bool,
    cap: usize,
}

/// The header that makes any request retryable, when honoured.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

impl HttpRequests {
    /// The defaults described on the type.
    pub fn new() -> Self {
        // The first six standard methods are the idempotent ones (RFC 9110, 9.2.2).
        let bits = STANDARD[..6]
            .iter()
            .filter_map(Methods::bit)
            .fold(0, |a, b| a | b);
        Self {
            methods: Methods(bits),
            idempotency_key: true,
            cap: DEFAULT_REPLAY_CAP,
        }
    }

    /// Retries requests with `method` too (a standard method; others are ignored).
    pub fn retry_method(mut self, method: Method) -> Self {
        if let Some(bit) = Methods::bit(&method) {
            self.methods.0 |= bit;
        }
        self
    }

    /// Never retries requests with `method` (unless they carry an idempotency key).
    pub fn no_retry_method(mut self, method: Method) -> Self {
        if let Some(bit) = Methods::bit(&method) {
            self.methods.0 &= !bit;
        }
        self
    }

    /// Whether an `Idempotency-Key` header makes any request retryable (default true).
    pub fn idempotency_key(mut self, honour: bool) -> Self {
        self.idempotency_key = honour;
        self
    }

    /// The largest body kept for replay, in bytes (default 64 KiB).
    pub fn replay_cap(mut self, bytes: usize) -> Self {
        self.cap = bytes;
        self
    }

    /// Whether `request` may be sent more than once.
    pub fn is_retryable<B>(&self, request: &Request<B>) -> bool {
        self.methods.contains(request.method())
            || (self.idempotency_key && request.headers().contains_key(&IDEMPOTENCY_KEY))
    }
}

impl Default for HttpRequests {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Body> RetryRequest<Request<B>> for HttpRequests {
    type Out = Request<ReplayBody<B>>;
    type Replay = RequestReplay<B>;

    fn prepare(&self, request: Request<B>) -> (Self::Out, Option<Self::Replay>) {
        if self.is_retryable(&request) {
            let (request, replay) = replayable(request, self.cap);
            (request, Some(replay))
        } else {
            (request.map(ReplayBody::once), None)
        }
    }

    fn next(&self, replay: &mut Self::Replay) -> Option<Self::Out> {
        replay.next_request()
    }

    fn last(&self, replay: Self::Replay) -> Option<Self::Out> {
        replay.into_last_request()
    }

    fn once(&self, request: Request<B>) -> Self::Out {
        request.map(ReplayBody::once)
    }
}

/// Honours `Retry-After` (delta-seconds or HTTP-date): the next retry waits at least
/// that long, and is not made if that would pass `max_elapsed`. Puts [`Attempts`] in
/// the final response's extensions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpResponses;

impl HttpResponses {
    /// The hooks described on the type.
    pub const fn new() -> Self {
        Self
    }
}

impl<B, E> RetryResponse<Response<B>, E> for HttpResponses {
    fn retry_after(&self, result: &Result<Response<B>, E>) -> Option<Duration> {
        result
            .as_ref()
            .ok()
            .and_then(|response| retry_after_now(response.headers()))
    }

    #[inline]
    fn record_attempts(&self, result: &mut Result<Response<B>, E>, attempts: u32) {
        if let Ok(response) = result {
            response.extensions_mut().insert(Attempts(attempts));
        }
    }
}

/// A retry policy for HTTP clients: [`RetryClassifier`], [`HttpRequests`] and
/// [`HttpResponses`], with the default attempts, backoff and budget of
/// [`RetryPolicy::new`].
///
/// ```
/// use steadfast::retry::RetryLayer;
/// let layer = RetryLayer::new(steadfast::http::retry_policy().max_attempts(4))?;
/// # let _ = layer;
/// # Ok::<(), steadfast::ConfigError>(())
/// ```
pub fn retry_policy() -> RetryPolicy<RetryClassifier, HttpRequests, HttpResponses> {
    RetryPolicy::new()
        .retry_if(RetryClassifier::new())
        .requests(HttpRequests::new())
        .responses(HttpResponses::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_methods_and_keys() {
        let r = HttpRequests::new();
        let req = |m: Method| Request::builder().method(m).body(()).unwrap();
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert!(r.is_retryable(&req(m.clone())), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!r.is_retryable(&req(m.clone())), "{m}");
        }
        let keyed = Request::builder()
            .method(Method::POST)
            .header("Idempotency-Key", "abc")
            .body(())
            .unwrap();
        assert!(r.is_retryable(&keyed));
        assert!(!r.idempotency_key(false).is_retryable(&keyed));
        assert!(r
            .retry_method(Method::POST)
            .is_retryable(&req(Method::POST)));
        assert!(!r
            .no_retry_method(Method::GET)
            .is_retryable(&req(Method::GET)));
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert!(!r.retry_method(custom.clone()).is_retryable(&req(custom)));
    }

    #[test]
    fn responses_hint_and_record() {
        let h = HttpResponses::new();
        let mut ok: Result<Response<()>, ()> = Ok(Response::builder()
            .status(503)
            .header("retry-after", "7")
            .body(())
            .unwrap());
        assert_eq!(h.retry_after(&ok), Some(Duration::from_secs(7)));
        h.record_attempts(&mut ok, 3);
        assert_eq!(
            ok.unwrap().extensions().get::<Attempts>(),
            Some(&Attempts(3))
        );
    }
}
