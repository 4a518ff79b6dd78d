//! [`Codes`]: a set of gRPC status codes, and reading a status from a header map.

use std::fmt;

use http::HeaderMap;
use tonic::Code;

/// A set of gRPC status codes: which count against the breaker, which are retried.
///
/// ```
/// use steadfast::grpc::Codes;
/// use tonic::Code;
///
/// let codes = Codes::FAILURES.without(Code::Internal).with(Code::Aborted);
/// assert!(codes.contains(Code::Unavailable));
/// assert!(!codes.contains(Code::Internal));
/// assert!(codes.contains(Code::Aborted));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Codes(u32);

impl Codes {
    /// The codes that say the server or the path to it is unwell, the breaker's
    /// failures by default: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`,
    /// `INTERNAL`, `UNKNOWN`. The others (`NOT_FOUND`, `INVALID_ARGUMENT`, ...) are
    /// answers from a healthy server: successes.
    pub const FAILURES: Codes = Codes::empty()
        .with(Code::Unavailable)
        .with(Code::DeadlineExceeded)
        .with(Code::ResourceExhausted)
        .with(Code::Internal)
        .with(Code::Unknown);

    /// The codes retried by default: `UNAVAILABLE` only, as gRFC A6 suggests (the
    /// server did not process the call).
    pub const RETRYABLE: Codes = Codes::empty().with(Code::Unavailable);

    /// No codes.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// This set and `code`.
    pub const fn with(self, code: Code) -> Self {
        Self(self.0 | 1 << (code as u32))
    }

    /// This set without `code`.
    pub const fn without(self, code: Code) -> Self {
        Self(self.0 & !(1 << (code as u32)))
    }

    /// Whether `code` is in the set.
    pub const fn contains(self, code: Code) -> bool {
        self.0 & 1 << (code as u32) != 0
    }
}

impl fmt::Debug for Codes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries((0..=16).map(Code::from_i32).filter(|c| self.contains(*c)))
            .finish()
    }
}

/// The `grpc-status` in `headers` (of a trailers-only response, or trailers); a
/// malformed value is `UNKNOWN`, as the gRPC spec has it.
pub(crate) fn status_of(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_statuses() {
        assert!(Codes::FAILURES.contains(Code::DeadlineExceeded));
        assert!(!Codes::FAILURES.contains(Code::NotFound));
        assert!(!Codes::FAILURES.contains(Code::Ok));
        assert!(Codes::RETRYABLE.contains(Code::Unavailable));
        assert!(!Codes::RETRYABLE.contains(Code::Internal));
        assert_eq!(format!("{:?}", Codes::RETRYABLE), "{Unavailable}");
        let mut headers = HeaderMap::new();
        assert_eq!(status_of(&headers), None);
        headers.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(status_of(&headers), Some(Code::Unavailable));
        headers.insert("grpc-status", "fourteen".parse().unwrap());
        assert_eq!(status_of(&headers), Some(Code::Unknown));
    }
}
