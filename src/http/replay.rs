//! Replayable request bodies: retry a request whose body is not `Clone`.
//!
//! A retry needs the request again, but an HTTP body is a stream: once the first attempt
//! has sent it, it is gone. [`ReplayBody`] keeps what the first attempt reads from the
//! original body, up to a cap in bytes, so that a later attempt can send it again byte
//! for byte. A body larger than the cap is sent once and not retried: buffering stops
//! as soon as more than `cap` bytes have been read, and the [`Replay`] handle then
//! reports that no further attempt can be made.
//!
//! # How it works
//!
//! [`ReplayBody::new`] returns the first attempt's body and a [`Replay`] handle. The
//! state (the original body, the chunks read so far, the trailers) is shared by the
//! handle and every attempt's body, behind one mutex that is taken once per poll, never
//! per byte. Each attempt's body, made by [`Replay::next_body`], first yields what
//! earlier attempts read, then goes on reading the original body *from where the
//! previous attempt stopped*: an attempt may be cut short (the server answered
//! `503 Service Unavailable` before reading the whole body, say), and the next one
//! still sends the whole body. What it reads is kept for the attempt after it.
//!
//! Chunks are kept as [`Bytes`]: a chunk that already is `Bytes` is kept without a
//! copy; small chunks are gathered into larger ones, so that a body streamed a few
//! bytes at a time does not cost a buffer per few bytes. Trailers are kept and replayed
//! too; they do not count towards the cap.
//!
//! # Superseded attempts
//!
//! Only the newest attempt's body may be read. Once [`Replay::next_body`] has made a
//! new body, polling an older one yields a [`Superseded`] error (its
//! [`is_end_stream`](Body::is_end_stream) is `false`, so that a client does not take
//! it for a complete, empty body). The older attempt has lost its race anyway: its
//! response was the reason for the retry.
//!
//! A body dropped at any point, mid-stream included, leaves the shared state ready for
//! the next attempt. When the original body fails (returns an error, or panics while
//! polled), the request cannot be replayed: [`Replay::next_body`] returns `None`, and a
//! later poll of the failed source yields [`SourceFailed`].
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), steadfast::BoxError> {
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use steadfast::http::replay::{replayable, DEFAULT_REPLAY_CAP};
//!
//! let request = http::Request::put("http://example.com/items/7")
//!     .header("content-type", "text/plain")
//!     .body(Full::new(Bytes::from_static(b"hello")))?;
//! let (first, replay) = replayable(request, DEFAULT_REPLAY_CAP);
//!
//! // The first attempt sends the body...
//! assert_eq!(first.into_body().collect().await?.to_bytes(), "hello");
//!
//! // ... and the next one sends it again, with the same head.
//! let second = replay.next_request().ok_or("the body was over the cap")?;
//! assert_eq!(second.method(), http::Method::PUT);
//! assert_eq!(second.headers()["content-type"], "text/plain");
//! assert_eq!(second.into_body().collect().await?.to_bytes(), "hello");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::mem;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;

/// The default cap of a replayable body, in bytes: 64 KiB.
///
/// A body longer than the cap is sent once and not retried.
pub const DEFAULT_REPLAY_CAP: usize = 64 * 1024;

/// A data chunk shorter than this is copied into the chunk being gathered rather than
/// kept on its own.
const GATHER_BELOW: usize = 1024;

/// A gathered chunk this long is kept as it is, and a new one is started.
const GATHERED_MAX: usize = 16 * 1024;

/// Makes a request replayable: the first attempt's request and a handle that makes
/// the next attempts' requests.
///
/// Every request made by the handle has the same method, URI, version, headers and
/// extensions as `request` had, and a body that replays `request`'s body (see
/// [`ReplayBody`]). `cap` is the most bytes kept for replay
/// ([`DEFAULT_REPLAY_CAP`] is a good default): a body longer than that is sent once and
/// [`RequestReplay::next_request`] returns `None` from then on.
///
/// The head is cloned once here, and once per [`next_request`](RequestReplay::next_request).
///
/// ```
/// # fn main() -> Result<(), steadfast::BoxError> {
/// use http_body_util::Empty;
/// use steadfast::http::replay::replayable;
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct TraceId(u64);
///
/// let mut request = http::Request::get("http://example.com/").body(Empty::<bytes::Bytes>::new())?;
/// request.extensions_mut().insert(TraceId(7));
/// let (_first, replay) = replayable(request, 1024);
/// let second = replay.next_request().ok_or("not replayable")?;
/// assert_eq!(second.extensions().get::<TraceId>(), Some(&TraceId(7)));
/// # Ok(())
/// # }
/// ```
pub fn replayable<B: Body>(
    request: Request<B>,
    cap: usize,
) -> (Request<ReplayBody<B>>, RequestReplay<B>) {
    let (parts, body) = request.into_parts();
    let head = Head {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        extensions: parts.extensions.clone(),
    };
    let (body, replay) = ReplayBody::new(body, cap);
    (
        Request::from_parts(parts, body),
        RequestReplay { head, body: replay },
    )
}

/// Makes the next attempts' requests of a request made replayable by [`replayable`].
///
/// Dropping the handle (or calling [`into_last_request`](Self::into_last_request))
/// tells the bodies that no further attempt will be made: from then on, nothing more is
/// kept.
pub struct RequestReplay<B> {
    head: Head,
    body: Replay<B>,
}

/// What every attempt's request is made with.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
}

impl Head {
    fn request<B>(self, body: B) -> Request<B> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        *request.extensions_mut() = self.extensions;
        request
    }
}

impl<B> RequestReplay<B> {
    /// The next attempt's request: the same head, and a body that replays the original
    /// body; `None` if the body cannot be replayed (it was longer than the cap, or it
    /// failed).
    ///
    /// The new request's body supersedes every earlier attempt's body (see
    /// [`ReplayBody`]).
    pub fn next_request(&self) -> Option<Request<ReplayBody<B>>> {
        let body = self.body.next_body()?;
        let head = Head {
            method: self.head.method.clone(),
            uri: self.head.uri.clone(),
            version: self.head.version,
            headers: self.head.headers.clone(),
            extensions: self.head.extensions.clone(),
        };
        Some(head.request(body))
    }

    /// The last attempt's request: like [`next_request`](Self::next_request), but the
    /// head is moved rather than cloned, and the body keeps nothing more for replay.
    pub fn into_last_request(self) -> Option<Request<ReplayBody<B>>> {
        let Self { head, body } = self;
        let body = body.into_last_body()?;
        Some(head.request(body))
    }

    /// Whether a next attempt can still be made: `false` once more than the cap has
    /// been read from the body, or the body failed.
    pub fn is_replayable(&self) -> bool {
        self.body.is_replayable()
    }

    /// The gRPC messages (length-prefixed) the body has carried so far, a started one
    /// included; for retries of unary calls only.
    #[cfg(feature = "grpc")]
    pub(crate) fn messages_seen(&self) -> usize {
        self.body.messages_seen()
    }

    /// The request's method.
    pub fn method(&self) -> &Method {
        &self.head.method
    }

    /// The request's URI.
    pub fn uri(&self) -> &Uri {
        &self.head.uri
    }

    /// The request's headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.head.headers
    }

    /// The body's replay handle.
    pub fn body(&self) -> &Replay<B> {
        &self.body
    }
}

impl<B> fmt::Debug for RequestReplay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestReplay")
            .field("method", &self.head.method)
            .field("uri", &self.head.uri)
            .field("version", &self.head.version)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// A request body that can be sent again: see the [module docs](self).
    ///
    /// Its data is [`Bytes`] (a chunk of the original body that is not `Bytes` is
    /// copied into one) and its error is a [`BoxError`]: the original body's error, or
    /// [`Superseded`] or [`SourceFailed`].
    ///
    /// [`ReplayBody::new`] makes a body that keeps what it reads for later attempts;
    /// [`ReplayBody::once`] wraps a body that will be sent once, at no cost (for a
    /// request that is not retried, so that it has the same type as one that is).
    pub struct ReplayBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        // Sent once: the original body, read straight through.
        Once {
            #[pin]
            body: B,
        },
        // One attempt of a replayable body.
        Replay {
            shared: Arc<Mutex<State<B>>>,
            // This body's attempt: only the newest may be read.
            attempt: u64,
            // The next kept frame to yield.
            next: usize,
            // The kept data bytes yielded so far.
            replayed: u64,
        },
    }
}

/// The state shared by a [`Replay`] handle and its bodies.
struct State<B> {
    source: Source<B>,
    /// Frames kept so far, in order, while buffering.
    frames: Vec<Kept>,
    /// Small data chunks gathered, not yet a frame of `frames`.
    gathering: BytesMut,
    /// The data bytes in `frames` and `gathering`.
    kept: u64,
    /// The data bytes read from the original body in all.
    read: u64,
    cap: u64,
    /// The newest attempt, the only one that may be read.
    newest: u64,
    /// Whether a later attempt can be made: false once over the cap, after an error, or
    /// after a frame of a kind this module does not know.
    replayable: bool,
    /// Whether the [`Replay`] handle is alive, so that later attempts may be made.
    handle: bool,
}

/// The original body.
enum Source<B> {
    /// Not read to its end yet. Boxed so that it can be pinned behind the mutex.
    Streaming(Pin<Box<B>>),
    /// Read to its end (and dropped).
    Ended,
    /// It returned an error, or panicked while polled.
    Failed,
}

/// A frame kept for replay.
enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

fn lock<B>(shared: &Mutex<State<B>>) -> MutexGuard<'_, State<B>> {
    // A panic while the lock is held can only come from the original body's
    // `poll_frame`, which leaves the source `Failed`: the rest of the state is whole.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B> State<B> {
    fn can_replay(&self) -> bool {
        self.replayable && !matches!(self.source, Source::Failed)
    }

    /// Whether what is read now is kept.
    fn keeping(&self) -> bool {
        self.handle && self.can_replay()
    }

    /// Makes the gathered chunk a frame.
    fn seal(&mut self) {
        if !self.gathering.is_empty() {
            let data = self.gathering.split().freeze();
            self.frames.push(Kept::Data(data));
        }
    }

    /// Drops everything kept: no later attempt will need it.
    fn release(&mut self) {
        self.frames = Vec::new();
        self.gathering = BytesMut::new();
        self.kept = 0;
    }

    /// Counts and, while keeping, keeps a frame just read from the original body.
    fn record(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
            self.read = self.read.saturating_add(len);
            if self.read > self.cap {
                self.replayable = false;
            }
            if !self.keeping() {
                self.release();
            } else if data.len() < GATHER_BELOW {
                self.gathering.extend_from_slice(data);
                self.kept = self.kept.saturating_add(len);
                if self.gathering.len() >= GATHERED_MAX {
                    self.seal();
                }
            } else {
                self.seal();
                self.frames.push(Kept::Data(data.clone()));
                self.kept = self.kept.saturating_add(len);
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            if self.keeping() {
                self.seal();
                self.frames.push(Kept::Trailers(trailers.clone()));
            } else {
                self.release();
            }
        } else {
            // A kind of frame added to `http-body` after this was written: it cannot be
            // kept, so the body is sent once.
            self.replayable = false;
            self.release();
        }
    }
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body` to be replayed: the first attempt's body and the handle that makes
    /// the next attempts' bodies.
    ///
    /// At most `cap` bytes of data are kept ([`DEFAULT_REPLAY_CAP`] is a good default):
    /// once more have been read, nothing more is kept and the body is not replayed. A
    /// body whose [`size_hint`](Body::size_hint) already says it is longer than `cap`
    /// is never kept at all.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), steadfast::BoxError> {
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use steadfast::http::replay::ReplayBody;
    ///
    /// let (first, replay) = ReplayBody::new(Full::new(Bytes::from_static(b"abc")), 16);
    /// assert_eq!(first.collect().await?.to_bytes(), "abc");
    /// let second = replay.next_body().ok_or("not replayable")?;
    /// assert_eq!(second.collect().await?.to_bytes(), "abc");
    ///
    /// // Over the cap: sent once, and not replayed.
    /// let (first, replay) = ReplayBody::new(Full::new(Bytes::from_static(b"abc")), 2);
    /// assert_eq!(first.collect().await?.to_bytes(), "abc");
    /// assert!(replay.next_body().is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(body: B, cap: usize) -> (Self, Replay<B>) {
        let cap = u64::try_from(cap).unwrap_or(u64::MAX);
        // A body known to be longer than the cap is not kept from the start.
        let replayable = body.size_hint().lower() <= cap;
        let shared = Arc::new(Mutex::new(State {
            source: Source::Streaming(Box::pin(body)),
            frames: Vec::new(),
            gathering: BytesMut::new(),
            kept: 0,
            read: 0,
            cap,
            newest: 0,
            replayable,
            handle: true,
        }));
        let body = Self::attempt(shared.clone(), 0);
        (body, Replay { shared })
    }
}

impl<B> ReplayBody<B> {
    /// Wraps `body` to be sent once, with nothing kept and no lock taken: for a request
    /// that is not retried, so that it has the same type as one that is.
    pub fn once(body: B) -> Self {
        Self {
            kind: Kind::Once { body },
        }
    }

    fn attempt(shared: Arc<Mutex<State<B>>>, attempt: u64) -> Self {
        Self {
            kind: Kind::Replay {
                shared,
                attempt,
                next: 0,
                replayed: 0,
            },
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Once { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(to_bytes(frame)))),
                Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            KindProj::Replay {
                shared,
                attempt,
                next,
                replayed,
            } => poll_attempt(shared, *attempt, next, replayed, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Once { body } => body.is_end_stream(),
            Kind::Replay {
                shared,
                attempt,
                next,
                ..
            } => {
                let state = lock(shared);
                if state.newest != *attempt || *next < state.frames.len() {
                    return false;
                }
                match &state.source {
                    Source::Streaming(body) => body.is_end_stream(),
                    Source::Ended => true,
                    Source::Failed => false,
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Once { body } => body.size_hint(),
            Kind::Replay {
                shared,
                attempt,
                replayed,
                ..
            } => {
                let state = lock(shared);
                if state.newest != *attempt {
                    return SizeHint::default();
                }
                let kept = state.kept.saturating_sub(*replayed);
                match &state.source {
                    Source::Streaming(body) => add(kept, &body.size_hint()),
                    Source::Ended => SizeHint::with_exact(kept),
                    Source::Failed => SizeHint::default(),
                }
            }
        }
    }
}

/// `hint` plus `kept` bytes; an upper bound past `u64::MAX` is dropped.
fn add(kept: u64, hint: &SizeHint) -> SizeHint {
    let mut sum = SizeHint::new();
    match hint.upper().and_then(|upper| upper.checked_add(kept)) {
        // `hint.lower() <= upper`, so the lower sum cannot overflow either.
        Some(upper) => {
            sum.set_upper(upper);
            sum.set_lower(hint.lower().saturating_add(kept));
        }
        None => sum.set_lower(hint.lower().saturating_add(kept)),
    }
    sum
}

fn to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    // Free for `Bytes`, a copy for other buffers.
    frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
}

/// Polls one attempt of a replayable body: the kept frames, then the original body.
fn poll_attempt<B>(
    shared: &Mutex<State<B>>,
    attempt: u64,
    next: &mut usize,
    replayed: &mut u64,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut state = lock(shared);
    if state.newest != attempt {
        return Poll::Ready(Some(Err(Superseded(()).into())));
    }
    if let Some(kept) = state.frames.get(*next) {
        *next += 1;
        let frame = match kept {
            Kept::Data(data) => {
                let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
                *replayed = replayed.saturating_add(len);
                Frame::data(data.clone())
            }
            Kept::Trailers(trailers) => Frame::trailers(trailers.clone()),
        };
        return Poll::Ready(Some(Ok(frame)));
    }
    // Everything kept has been yielded: read on from the original body. This body is
    // the newest, so it is the only one that reads it, and everything gathered since
    // it was made was read (and yielded) by it.
    if !state.keeping() {
        state.release();
    }
    // The source is `Failed` while polled: if it panics, it stays so.
    let poll = match mem::replace(&mut state.source, Source::Failed) {
        Source::Streaming(mut body) => {
            let poll = body.as_mut().poll_frame(cx);
            state.source = match &poll {
                Poll::Ready(None) => Source::Ended,
                Poll::Ready(Some(Err(_))) => Source::Failed,
                Poll::Ready(Some(Ok(_))) | Poll::Pending => Source::Streaming(body),
            };
            poll
        }
        Source::Ended => {
            state.source = Source::Ended;
            Poll::Ready(None)
        }
        Source::Failed => return Poll::Ready(Some(Err(SourceFailed(()).into()))),
    };
    let result = match poll {
        Poll::Ready(Some(Ok(frame))) => {
            let frame = to_bytes(frame);
            state.record(&frame);
            Poll::Ready(Some(Ok(frame)))
        }
        Poll::Ready(Some(Err(error))) => {
            state.replayable = false;
            state.release();
            Poll::Ready(Some(Err(error.into())))
        }
        Poll::Ready(None) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    };
    *next = state.frames.len();
    *replayed = state.kept;
    result
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ReplayBody");
        match &self.kind {
            Kind::Once { .. } => d.field("once", &true),
            Kind::Replay { attempt, next, .. } => {
                d.field("attempt", attempt).field("next_frame", next)
            }
        };
        d.finish_non_exhaustive()
    }
}

/// Makes the next attempts' bodies of a [`ReplayBody`].
///
/// Dropping it (or calling [`into_last_body`](Self::into_last_body)) tells the bodies
/// that no further attempt will be made: from then on, nothing more is kept.
pub struct Replay<B> {
    shared: Arc<Mutex<State<B>>>,
}

impl<B> Replay<B> {
    /// See [`RequestReplay::messages_seen`].
    #[cfg(feature = "grpc")]
    fn messages_seen(&self) -> usize {
        let state = lock(&self.shared);
        let chunks = state.frames.iter().filter_map(|kept| match kept {
            Kept::Data(data) => Some(&data[..]),
            Kept::Trailers(_) => None,
        });
        grpc_messages(chunks.chain(std::iter::once(&state.gathering[..])))
    }

    /// The next attempt's body, which yields what earlier attempts read and then reads
    /// on; `None` if the body cannot be replayed: more than the cap was read, or the
    /// original body failed.
    ///
    /// The new body supersedes every earlier one: polling an earlier one from now on
    /// yields a [`Superseded`] error.
    pub fn next_body(&self) -> Option<ReplayBody<B>> {
        let mut state = lock(&self.shared);
        if !state.can_replay() {
            return None;
        }
        state.seal();
        state.newest = state.newest.wrapping_add(1);
        let attempt = state.newest;
        drop(state);
        Some(ReplayBody::attempt(self.shared.clone(), attempt))
    }

    /// The last attempt's body: like [`next_body`](Self::next_body), but nothing more
    /// is kept for replay once the kept frames have been yielded.
    pub fn into_last_body(self) -> Option<ReplayBody<B>> {
        self.next_body()
        // `self` is dropped here, which stops the keeping.
    }

    /// Whether a next attempt can still be made: `false` once more than the cap has
    /// been read, or the original body failed.
    pub fn is_replayable(&self) -> bool {
        lock(&self.shared).can_replay()
    }
}

impl<B> Drop for Replay<B> {
    fn drop(&mut self) {
        lock(&self.shared).handle = false;
    }
}

impl<B> fmt::Debug for Replay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.shared);
        f.debug_struct("Replay")
            .field("cap", &state.cap)
            .field("read", &state.read)
            .field("kept", &state.kept)
            .field("replayable", &state.can_replay())
            .finish_non_exhaustive()
    }
}

/// An attempt's body was polled after a newer attempt's body was made by
/// [`Replay::next_body`]: only the newest attempt's body may be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superseded(());

impl fmt::Display for Superseded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body superseded by a newer attempt")
    }
}

impl std::error::Error for Superseded {}

/// The original body failed earlier (it returned an error, or panicked), so it cannot
/// be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceFailed(());

impl fmt::Display for SourceFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body failed earlier")
    }
}

impl std::error::Error for SourceFailed {}

/// How many length-prefixed gRPC messages (a flag byte, a big-endian `u32` length,
/// the message) `chunks` hold, a started one included.
#[cfg(feature = "grpc")]
fn grpc_messages<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> usize {
    let mut messages = 0;
    // The bytes still to skip of the current message, or the prefix read so far.
    let mut skip: u64 = 0;
    let mut prefix = [0u8; 5];
    let mut have = 0;
    for mut chunk in chunks {
        while !chunk.is_empty() {
            if skip > 0 {
                let n = chunk.len().min(usize::try_from(skip).unwrap_or(usize::MAX));
                chunk = &chunk[n..];
                skip -= n as u64;
                continue;
            }
            if have == 0 {
                messages += 1;
            }
            let n = chunk.len().min(5 - have);
            prefix[have..have + n].copy_from_slice(&chunk[..n]);
            have += n;
            chunk = &chunk[n..];
            if have == 5 {
                skip = u64::from(u32::from_be_bytes([
                    prefix[1], prefix[2], prefix[3], prefix[4],
                ]));
                have = 0;
            }
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body_util::BodyExt;

    use super::*;

    /// A body of the given data chunks (then trailers), `Pending` before each frame.
    struct Chunks {
        frames: VecDeque<Frame<Bytes>>,
        pending: bool,
        panic_after: Option<usize>,
    }

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        Chunks {
            frames: parts
                .iter()
                .map(|part| Frame::data(Bytes::from_static(part)))
                .collect(),
            pending: false,
            panic_after: None,
        }
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if let Some(n) = self.panic_after.as_mut() {
                if *n == 0 {
                    panic!("source body panics");
                }
                *n -= 1;
            }
            self.pending = !self.pending;
            if self.pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(self.frames.pop_front().map(Ok))
        }
    }

    async fn read_all<B>(body: ReplayBody<B>) -> Result<Bytes, BoxError>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        Ok(body.collect().await?.to_bytes())
    }

    fn kept_frames<B>(replay: &Replay<B>) -> usize {
        lock(&replay.shared).frames.len()
    }

    #[tokio::test]
    async fn replay_gathers_small_chunks() {
        let parts: Vec<&'static [u8]> = vec![b"ab"; 3000];
        let (first, replay) = ReplayBody::new(chunks(&parts), DEFAULT_REPLAY_CAP);
        assert_eq!(read_all(first).await.unwrap().len(), 6000);
        let second = replay.next_body().unwrap();
        // 6000 bytes in two-byte chunks are kept as one sealed frame of 16 KiB or less.
        assert_eq!(kept_frames(&replay), 1);
        assert_eq!(read_all(second).await.unwrap(), "ab".repeat(3000));
    }

    #[tokio::test]
    async fn replay_keeps_large_chunks_without_copy() {
        let big = Bytes::from(vec![7u8; 4096]);
        let (mut first, replay) = ReplayBody::new(
            Chunks {
                frames: VecDeque::from([Frame::data(big.clone())]),
                pending: false,
                panic_after: None,
            },
            DEFAULT_REPLAY_CAP,
        );
        let sent = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(sent.as_ptr(), big.as_ptr());
        drop(first);
        let mut second = replay.next_body().unwrap();
        let resent = second.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(resent.as_ptr(), big.as_ptr());
    }

    #[tokio::test]
    async fn replay_stops_keeping_without_handle() {
        let (first, replay) =
            ReplayBody::new(chunks(&[b"one", b"two", b"three"]), DEFAULT_REPLAY_CAP);
        let shared = replay.shared.clone();
        drop(replay);
        assert_eq!(read_all(first).await.unwrap(), "onetwothree");
        let state = lock(&shared);
        assert!(state.frames.is_empty() && state.gathering.is_empty() && state.kept == 0);
    }

    #[tokio::test]
    async fn replay_last_body_replays_then_keeps_nothing() {
        let (mut first, replay) =
            ReplayBody::new(chunks(&[b"one", b"two", b"three"]), DEFAULT_REPLAY_CAP);
        first.frame().await.unwrap().unwrap();
        let shared = replay.shared.clone();
        let last = replay.into_last_body().unwrap();
        assert_eq!(read_all(last).await.unwrap(), "onetwothree");
        assert_eq!(lock(&shared).kept, 0);
    }

    #[tokio::test]
    async fn replay_superseded_body_errors() {
        let (mut first, replay) = ReplayBody::new(chunks(&[b"a", b"b"]), DEFAULT_REPLAY_CAP);
        first.frame().await.unwrap().unwrap();
        let second = replay.next_body().unwrap();
        assert!(!first.is_end_stream());
        assert_eq!(first.size_hint().exact(), None);
        let error = first.frame().await.unwrap().unwrap_err();
        assert!(error.is::<Superseded>());
        assert_eq!(
            error.to_string(),
            "request body superseded by a newer attempt"
        );
        assert_eq!(read_all(second).await.unwrap(), "ab");
    }

    #[tokio::test]
    async fn replay_source_error_is_not_replayed() {
        struct Fails;
        impl Body for Fails {
            type Data = Bytes;
            type Error = std::io::Error;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
                Poll::Ready(Some(Err(std::io::Error::other("boom"))))
            }
        }
        let (mut first, replay) = ReplayBody::new(Fails, DEFAULT_REPLAY_CAP);
        let error = first.frame().await.unwrap().unwrap_err();
        assert!(error.is::<std::io::Error>());
        assert!(!replay.is_replayable());
        assert!(replay.next_body().is_none());
        let again = first.frame().await.unwrap().unwrap_err();
        assert!(again.is::<SourceFailed>());
    }

    #[tokio::test]
    async fn replay_source_panic_leaves_state_usable() {
        let mut body = chunks(&[b"a", b"b"]);
        body.panic_after = Some(2);
        let (first, replay) = ReplayBody::new(body, DEFAULT_REPLAY_CAP);
        let join = tokio::spawn(read_all(first)).await;
        assert!(join.unwrap_err().is_panic());
        assert!(!replay.is_replayable());
        assert!(replay.next_body().is_none());
        assert!(format!("{replay:?}").contains("replayable: false"));
    }

    #[test]
    fn replay_size_hint_known_over_cap_is_not_kept() {
        let body = http_body_util::Full::new(Bytes::from_static(b"0123456789"));
        let (first, replay) = ReplayBody::new(body, 9);
        assert!(!replay.is_replayable());
        assert_eq!(first.size_hint().exact(), Some(10));
    }

    #[test]
    fn replay_size_hint_sum_saturates() {
        let mut hint = SizeHint::new();
        hint.set_lower(u64::MAX - 1);
        let sum = add(5, &hint);
        assert_eq!((sum.lower(), sum.upper()), (u64::MAX, None));
        let sum = add(5, &SizeHint::with_exact(u64::MAX - 1));
        assert_eq!((sum.lower(), sum.upper()), (u64::MAX, None));
        let sum = add(5, &SizeHint::with_exact(10));
        assert_eq!(sum.exact(), Some(15));
    }

    #[tokio::test]
    async fn replay_once_passes_through() {
        let body = ReplayBody::once(chunks(&[b"x", b"y"]));
        assert!(format!("{body:?}").contains("once"));
        assert_eq!(read_all(body).await.unwrap(), "xy");
    }

    #[cfg(feature = "grpc")]
    #[test]
    fn grpc_message_count() {
        let frame = |len: u32| {
            let mut f = vec![0u8];
            f.extend_from_slice(&len.to_be_bytes());
            f.extend(std::iter::repeat_n(7u8, len as usize));
            f
        };
        let one = frame(3);
        assert_eq!(grpc_messages(std::iter::empty()), 0);
        assert_eq!(grpc_messages([&one[..]].into_iter()), 1);
        // Split anywhere, even inside the prefix.
        for at in 0..one.len() {
            assert_eq!(
                grpc_messages([&one[..at], &one[at..]].into_iter()),
                1,
                "{at}"
            );
        }
        let two: Vec<u8> = one.iter().chain(frame(0).iter()).copied().collect();
        assert_eq!(grpc_messages([&two[..]].into_iter()), 2);
        assert_eq!(
            grpc_messages([&two[..9]].into_iter()),
            2,
            "a started second"
        );
        assert_eq!(grpc_messages([&two[..8]].into_iter()), 1);
    }
}
