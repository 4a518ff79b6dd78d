//! Extension points: how a request is sent again ([`RetryRequest`]) and what a
//! response says about retrying ([`RetryResponse`]). The defaults clone the request
//! and read nothing; the `http` feature provides both for HTTP.

use std::time::Duration;

/// How a request is prepared for retries and copied for each attempt.
///
/// [`prepare`](Self::prepare) is called once per request, when more than one attempt
/// is allowed: it returns the request for the first attempt and, if the request may be
/// retried at all, a replay from which [`next`](Self::next) makes each later attempt's
/// request. Returning no replay means the request is sent once (an HTTP `POST`, say).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot send `{Req}` again",
    label = "a retried request must be sent more than once",
    note = "`RetryPolicy::new()` resends a clone of the request (`CloneRequests`), and an HTTP request with a streaming body cannot be cloned",
    note = "for HTTP use `steadfast::http::retry_policy()`, which replays bodies (feature `http`), or `steadfast::http::Client` (feature `client`); for another request type, make it `Clone` or implement `RetryRequest`"
)]
pub trait RetryRequest<Req> {
    /// The request type sent to the inner service.
    type Out;
    /// What is kept to make later attempts' requests.
    type Replay;

    /// The first attempt's request, and a replay if the request may be retried.
    fn prepare(&self, request: Req) -> (Self::Out, Option<Self::Replay>);

    /// The next attempt's request; `None` if it cannot be made (the retry is not made).
    fn next(&self, replay: &mut Self::Replay) -> Option<Self::Out>;

    /// The last attempt's request: the replay is not needed after it (by default,
    /// [`next`](Self::next)).
    fn last(&self, mut replay: Self::Replay) -> Option<Self::Out> {
        self.next(&mut replay)
    }

    /// The request sent when only one attempt is allowed.
    fn once(&self, request: Req) -> Self::Out;
}

/// The default [`RetryRequest`]: every attempt sends a clone of the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloneRequests;

#[diagnostic::do_not_recommend]
impl<Req: Clone> RetryRequest<Req> for CloneRequests {
    type Out = Req;
    type Replay = Req;

    #[inline]
    fn prepare(&self, request: Req) -> (Req, Option<Req>) {
        (request.clone(), Some(request))
    }

    #[inline]
    fn next(&self, replay: &mut Req) -> Option<Req> {
        Some(replay.clone())
    }

    /// The kept copy itself: `max_attempts` attempts make `max_attempts - 1` clones.
    #[inline]
    fn last(&self, replay: Req) -> Option<Req> {
        Some(replay)
    }

    #[inline]
    fn once(&self, request: Req) -> Req {
        request
    }
}

/// What a result says about retrying, and where the attempt count goes.
pub trait RetryResponse<T, E> {
    /// A delay the result asks for before the next attempt (HTTP `Retry-After`): the
    /// next retry waits at least this long.
    ///
    /// Any duration is accepted: one too long for the clock (`Duration::MAX`) waits
    /// until tokio's far future (about 30 years), that is until the call is dropped,
    /// and with [`max_elapsed`](super::RetryPolicy::max_elapsed) set such a retry is
    /// refused at once. A nonzero hint needs a tokio runtime to wait in (see the
    /// [module docs](super#without-a-tokio-runtime)).
    fn retry_after(&self, result: &Result<T, E>) -> Option<Duration> {
        let _ = result;
        None
    }

    /// Called on the final result with the number of attempts made.
    fn record_attempts(&self, result: &mut Result<T, E>, attempts: u32) {
        let _ = (result, attempts);
    }
}

/// The default [`RetryResponse`]: no hints, attempts not recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoHints;

impl<T, E> RetryResponse<T, E> for NoHints {}
