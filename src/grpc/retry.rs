//! gRPC retries after gRFC A6: retryable codes, server pushback, request messages
//! replayed.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;

use super::codes::{status_of, Codes};
use crate::http::is_connect_error;
use crate::http::replay::{replayable, RequestReplay, DEFAULT_REPLAY_CAP};
use crate::http::Attempts;
use crate::retry::{RetryPolicy, RetryRequest, RetryResponse};
use crate::{BoxError, Classify, Outcome};

/// The header (or trailer) with which a server asks a client to wait before retrying,
/// or not to retry (gRFC A6).
pub const PUSHBACK: &str = "grpc-retry-pushback-ms";

/// What a `grpc-retry-pushback-ms` value asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// No value: retry after the backoff.
    None,
    /// Retry after this long.
    After(Duration),
    /// A negative or malformed value: do not retry.
    Stop,
}

/// The pushback of a response head.
pub(crate) fn pushback(headers: &HeaderMap) -> Pushback {
    let Some(value) = headers.get(PUSHBACK) else {
        return Pushback::None;
    };
    match value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
    {
        // gRPC sends an int32: anything above i32::MAX is malformed too.
        Some(ms) if ms <= i32::MAX as u32 => Pushback::After(Duration::from_millis(ms.into())),
        _ => Pushback::Stop,
    }
}

/// Which gRPC results are retried: a trailers-only response whose `grpc-status` is in
/// the retryable set (default [`Codes::RETRYABLE`]: `UNAVAILABLE`) unless its
/// pushback says not to, an HTTP `502`, `503` or `504` with no gRPC status (gRPC maps
/// them to `UNAVAILABLE`), and connect errors. Everything else is returned as it is.
///
/// Only the response head is looked at: once a server has sent headers the call is
/// committed (gRFC A6), and a status in the trailers is never retried.
///
/// ```
/// use steadfast::grpc::{Codes, GrpcRetryClassifier};
/// use steadfast::{BoxError, Classify, Outcome};
///
/// let c = GrpcRetryClassifier::new();
/// let status = |code: &str, pushback: Option<&str>| {
///     let mut res = http::Response::builder().header("grpc-status", code);
///     if let Some(ms) = pushback {
///         res = res.header("grpc-retry-pushback-ms", ms);
///     }
///     Ok::<_, BoxError>(res.body(()).unwrap())
/// };
/// assert_eq!(c.classify(&status("14", None)), Outcome::Failure); // retried
/// assert_eq!(c.classify(&status("14", Some("250"))), Outcome::Failure); // after 250 ms
/// assert_eq!(c.classify(&status("14", Some("-1"))), Outcome::Ignored); // told not to
/// assert_eq!(c.classify(&status("13", None)), Outcome::Success); // INTERNAL: as it is
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcRetryClassifier {
    retryable: Codes,
}

impl GrpcRetryClassifier {
    /// Retries the codes of [`Codes::RETRYABLE`].
    pub const fn new() -> Self {
        Self {
            retryable: Codes::RETRYABLE,
        }
    }

    /// The codes retried.
    pub const fn retryable(mut self, codes: Codes) -> Self {
        self.retryable = codes;
        self
    }
}

impl Default for GrpcRetryClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl<B, E: 'static> Classify<Response<B>, E> for GrpcRetryClassifier {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        let response = match result {
            Ok(response) => response,
            Err(e) if is_connect_error(e) => return Outcome::Failure,
            Err(_) => return Outcome::Ignored,
        };
        let retry = match status_of(response.headers()) {
            Some(code) => self.retryable.contains(code),
            None => matches!(
                response.status(),
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ),
        };
        match (retry, pushback(response.headers())) {
            (false, _) => Outcome::Success,
            (true, Pushback::Stop) => Outcome::Ignored,
            (true, _) => Outcome::Failure,
        }
    }
}

/// Which gRPC requests are sent again: every call whose request has carried at most
/// one message (unary and server-streaming calls), its body replayed byte for byte up
/// to a cap (64 KiB by default). A request that has carried a second message (client
/// or bidirectional streaming) is sent once. Headers (metadata), URI and extensions
/// are kept on every attempt. Each attempt's request has a [`tonic::body::Body`], the
/// body a tonic `Channel` takes, so the retry layer sits right over a channel or a
/// stack over one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcRequests {
    cap: usize,
}

impl GrpcRequests {
    /// The defaults described on the type.
    pub const fn new() -> Self {
        Self {
            cap: DEFAULT_REPLAY_CAP,
        }
    }

    /// The largest request body kept for replay, in bytes (default 64 KiB).
    pub const fn replay_cap(mut self, bytes: usize) -> Self {
        self.cap = bytes;
        self
    }
}

impl Default for GrpcRequests {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> RetryRequest<Request<B>> for GrpcRequests
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Out = Request<tonic::body::Body>;
    type Replay = RequestReplay<B>;

    fn prepare(&self, request: Request<B>) -> (Self::Out, Option<Self::Replay>) {
        let (request, replay) = replayable(request, self.cap);
        (request.map(tonic::body::Body::new), Some(replay))
    }

    fn next(&self, replay: &mut Self::Replay) -> Option<Self::Out> {
        if replay.messages_seen() > 1 {
            return None;
        }
        Some(replay.next_request()?.map(tonic::body::Body::new))
    }

    fn last(&self, replay: Self::Replay) -> Option<Self::Out> {
        if replay.messages_seen() > 1 {
            return None;
        }
        Some(replay.into_last_request()?.map(tonic::body::Body::new))
    }

    fn once(&self, request: Request<B>) -> Self::Out {
        request.map(tonic::body::Body::new)
    }
}

/// Honours `grpc-retry-pushback-ms`: the next retry waits at least that long, and is
/// not made if that would pass `max_elapsed`. Puts
/// [`Attempts`] in the final response's extensions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcResponses;

impl<B, E> RetryResponse<Response<B>, E> for GrpcResponses {
    fn retry_after(&self, result: &Result<Response<B>, E>) -> Option<Duration> {
        match pushback(result.as_ref().ok()?.headers()) {
            Pushback::After(after) => Some(after),
            Pushback::None | Pushback::Stop => None,
        }
    }

    fn record_attempts(&self, result: &mut Result<Response<B>, E>, attempts: u32) {
        if let Ok(response) = result {
            response.extensions_mut().insert(Attempts(attempts));
        }
    }
}

/// A retry policy for gRPC clients: [`GrpcRetryClassifier`], [`GrpcRequests`] and
/// [`GrpcResponses`], with the default attempts, backoff and budget of
/// [`RetryPolicy::new`].
///
/// ```
/// use steadfast::retry::RetryLayer;
/// let layer = RetryLayer::new(steadfast::grpc::retry_policy().max_attempts(4))?;
/// # let _ = layer;
/// # Ok::<(), steadfast::ConfigError>(())
/// ```
pub fn retry_policy() -> RetryPolicy<GrpcRetryClassifier, GrpcRequests, GrpcResponses> {
    RetryPolicy::new()
        .retry_if(GrpcRetryClassifier::new())
        .requests(GrpcRequests::new())
        .responses(GrpcResponses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushback_values() {
        let of = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(PUSHBACK, v.parse().unwrap());
            pushback(&headers)
        };
        assert_eq!(pushback(&HeaderMap::new()), Pushback::None);
        assert_eq!(of("0"), Pushback::After(Duration::ZERO));
        assert_eq!(of("1500"), Pushback::After(Duration::from_millis(1500)));
        assert_eq!(of("-1"), Pushback::Stop);
        assert_eq!(of("soon"), Pushback::Stop);
        assert_eq!(of("2147483648"), Pushback::Stop);
        assert_eq!(
            of("2147483647"),
            Pushback::After(Duration::from_millis(i32::MAX as u64))
        );
    }
}
