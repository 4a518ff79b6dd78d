#![cfg(feature = "http")]
//! Replayable request bodies: what each attempt sends.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, BodyStream, Empty, Full, StreamBody};
use proptest::prelude::*;
use steadfast::http::replay::{replayable, Replay, ReplayBody, Superseded, DEFAULT_REPLAY_CAP};
use steadfast::BoxError;

/// A streamed body: data chunks, then trailers, with `Pending` before every frame.
struct Chunked {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// The exact size, if the body tells it.
    exact: Option<u64>,
    pending: bool,
}

impl Chunked {
    fn new<I, C>(chunks: I) -> Self
    where
        I: IntoIterator<Item = C>,
        C: Into<Bytes>,
    {
        Self {
            chunks: chunks.into_iter().map(Into::into).collect(),
            trailers: None,
            exact: None,
            pending: false,
        }
    }

    fn trailers(mut self, trailers: HeaderMap) -> Self {
        self.trailers = Some(trailers);
        self
    }

    fn exact_size(mut self) -> Self {
        self.exact = Some(self.chunks.iter().map(|c| c.len() as u64).sum());
        self
    }
}

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.chunks.is_empty() && self.trailers.is_none() {
            return Poll::Ready(None);
        }
        self.pending = !self.pending;
        if self.pending {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(chunk) = self.chunks.pop_front() {
            if let Some(exact) = self.exact.as_mut() {
                *exact -= chunk.len() as u64;
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.exact.map_or_else(SizeHint::new, SizeHint::with_exact)
    }
}

/// Everything a body yields: its data, and its trailers if any.
async fn read<B>(body: B) -> Result<(Bytes, Option<HeaderMap>), BoxError>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes(), trailers))
}

async fn data<B>(body: B) -> Bytes
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    read(body).await.expect("body fails").0
}

fn trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
    trailers
}

#[tokio::test]
async fn streamed_body_under_cap_is_replayed_on_three_attempts() {
    let chunks = ["hello", ", ", "streamed", " ", "world"];
    let (first, replay) = ReplayBody::new(Chunked::new(chunks), DEFAULT_REPLAY_CAP);
    assert_eq!(data(first).await, "hello, streamed world");
    for _ in 0..2 {
        let next = replay.next_body().expect("replayable");
        assert_eq!(data(next).await, "hello, streamed world");
    }
    assert!(replay.is_replayable());
}

#[tokio::test]
async fn stream_body_is_replayed_chunk_for_chunk() {
    // A `StreamBody` over a stream of frames (the frames of a `Chunked`, `Pending`
    // between them).
    let stream = BodyStream::new(Chunked::new(["ab", "cd", "ef"]));
    let (mut first, replay) = ReplayBody::new(StreamBody::new(stream), DEFAULT_REPLAY_CAP);
    let mut sent = Vec::new();
    while let Some(frame) = first.frame().await {
        sent.push(frame.unwrap().into_data().unwrap());
    }
    assert_eq!(sent, ["ab", "cd", "ef"]);
    for _ in 0..2 {
        let next = replay.next_body().expect("replayable");
        assert_eq!(data(next).await, "abcdef");
    }
}

#[tokio::test]
async fn body_over_cap_is_sent_once() {
    let chunks = ["0123456789", "0123456789", "0123456789"];
    let (first, replay) = ReplayBody::new(Chunked::new(chunks), 25);
    assert!(replay.is_replayable(), "not over the cap yet");
    assert_eq!(data(first).await, chunks.concat());
    assert!(!replay.is_replayable());
    assert!(replay.next_body().is_none());
}

#[tokio::test]
async fn a_request_is_replayable_until_its_body_passes_the_cap() {
    let chunks = ["0123456789", "0123456789", "0123456789"];
    let (first, replay) = replayable(Request::new(Chunked::new(chunks)), 25);
    assert!(replay.is_replayable(), "nothing read yet");
    assert_eq!(data(first.into_body()).await, chunks.concat());
    assert!(!replay.is_replayable(), "30 bytes read, over the cap of 25");
    let (first, replay) = replayable(Request::new(Chunked::new(chunks)), 30);
    assert_eq!(data(first.into_body()).await, chunks.concat());
    assert!(replay.is_replayable(), "at the cap");
    assert!(replay.next_request().is_some());
}

#[tokio::test]
async fn body_exactly_at_cap_is_replayed() {
    let (first, replay) = ReplayBody::new(Chunked::new(["01234", "56789"]), 10);
    assert_eq!(data(first).await, "0123456789");
    assert_eq!(data(replay.next_body().unwrap()).await, "0123456789");
}

#[tokio::test]
async fn body_known_over_cap_is_sent_once() {
    let body = Full::new(Bytes::from(vec![1u8; 100]));
    let (first, replay) = ReplayBody::new(body, 99);
    assert!(replay.next_body().is_none());
    assert_eq!(data(first).await.len(), 100);
}

#[tokio::test]
async fn attempt_cut_short_is_followed_by_the_full_body() {
    let chunks = ["first ", "second ", "third"];
    let (mut first, replay) = ReplayBody::new(Chunked::new(chunks), DEFAULT_REPLAY_CAP);
    let chunk = first.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(chunk, "first ");
    // The server answered before reading the rest: the attempt is dropped.
    drop(first);

    // The second attempt is cut short too, after the kept chunk and one more.
    let mut second = replay.next_body().unwrap();
    let mut sent = Vec::new();
    for _ in 0..2 {
        sent.push(second.frame().await.unwrap().unwrap().into_data().unwrap());
    }
    assert_eq!(sent, ["first ", "second "]);
    drop(second);

    let third = replay.next_body().unwrap();
    assert_eq!(data(third).await, "first second third");
    let fourth = replay.next_body().unwrap();
    assert_eq!(data(fourth).await, "first second third");
}

#[tokio::test]
async fn older_attempt_is_superseded_mid_stream() {
    let (mut first, replay) = ReplayBody::new(Chunked::new(["a", "b", "c"]), 64);
    first.frame().await.unwrap().unwrap();
    let second = replay.next_body().unwrap();
    let error = first.frame().await.unwrap().unwrap_err();
    assert!(error.is::<Superseded>());
    // The newer attempt is whole, and not disturbed by the older one's poll.
    assert_eq!(data(second).await, "abc");
}

#[tokio::test]
async fn trailers_are_replayed() {
    let body = Chunked::new(["some ", "data"]).trailers(trailers());
    let (first, replay) = ReplayBody::new(body, DEFAULT_REPLAY_CAP);
    let (sent, sent_trailers) = read(first).await.unwrap();
    assert_eq!(sent, "some data");
    assert_eq!(sent_trailers, Some(trailers()));
    for _ in 0..2 {
        let (sent, sent_trailers) = read(replay.next_body().unwrap()).await.unwrap();
        assert_eq!(sent, "some data");
        assert_eq!(sent_trailers, Some(trailers()));
    }
}

#[tokio::test]
async fn trailers_after_an_attempt_cut_short_at_the_trailers() {
    let body = Chunked::new(["data"]).trailers(trailers());
    let (mut first, replay) = ReplayBody::new(body, DEFAULT_REPLAY_CAP);
    first.frame().await.unwrap().unwrap();
    let frame = first.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_trailers().unwrap(), trailers());
    drop(first); // before the end was polled
    let (sent, sent_trailers) = read(replay.next_body().unwrap()).await.unwrap();
    assert_eq!(sent, "data");
    assert_eq!(sent_trailers, Some(trailers()));
}

#[tokio::test]
async fn size_hint_is_exact_on_every_attempt() {
    let body = Chunked::new(["abc", "defg", "hi"]).exact_size();
    let (mut first, replay) = ReplayBody::new(body, DEFAULT_REPLAY_CAP);
    assert_eq!(first.size_hint().exact(), Some(9));
    first.frame().await.unwrap().unwrap();
    assert_eq!(first.size_hint().exact(), Some(6));
    drop(first);

    let mut second = replay.next_body().unwrap();
    assert_eq!(second.size_hint().exact(), Some(9));
    assert!(!second.is_end_stream());
    let mut left = 9;
    while let Some(frame) = second.frame().await {
        left -= frame.unwrap().into_data().unwrap().len() as u64;
        assert_eq!(second.size_hint().exact(), Some(left));
    }
    assert!(second.is_end_stream());

    // Once the original body has ended, every byte is known.
    let third = replay.next_body().unwrap();
    assert_eq!(third.size_hint().exact(), Some(9));
    assert_eq!(data(third).await, "abcdefghi");
}

#[tokio::test]
async fn size_hint_of_an_unknown_length_body() {
    let (mut first, replay) = ReplayBody::new(Chunked::new(["abc", "de"]), 64);
    assert_eq!(first.size_hint().exact(), None);
    first.frame().await.unwrap().unwrap();
    drop(first);
    let second = replay.next_body().unwrap();
    let hint = second.size_hint();
    // The kept bytes are a lower bound; the rest is unknown.
    assert_eq!((hint.lower(), hint.upper()), (3, None));
}

#[tokio::test]
async fn empty_body_is_replayed() {
    let (first, replay) = ReplayBody::new(Empty::<Bytes>::new(), DEFAULT_REPLAY_CAP);
    assert!(first.is_end_stream());
    assert_eq!(first.size_hint().exact(), Some(0));
    assert_eq!(data(first).await, "");
    for _ in 0..2 {
        let next = replay.next_body().unwrap();
        assert!(next.is_end_stream());
        assert_eq!(next.size_hint().exact(), Some(0));
        assert_eq!(data(next).await, "");
    }

    // With a cap of zero too.
    let (first, replay) = ReplayBody::new(Chunked::new(Vec::<Bytes>::new()), 0);
    assert_eq!(data(first).await, "");
    assert_eq!(data(replay.next_body().unwrap()).await, "");
}

#[derive(Clone, Debug, PartialEq)]
struct RequestId(u64);

#[tokio::test]
async fn headers_and_extensions_are_kept_on_every_attempt() {
    let mut request = Request::builder()
        .method(Method::PUT)
        .uri("http://example.com/items/7?x=1")
        .version(Version::HTTP_2)
        .header("content-type", "text/plain")
        .header("idempotency-key", "k-1")
        .body(Chunked::new(["put ", "this"]))
        .unwrap();
    request.extensions_mut().insert(RequestId(42));

    let (first, replay) = replayable(request, DEFAULT_REPLAY_CAP);
    assert_eq!(replay.method(), Method::PUT);
    assert_eq!(replay.uri(), "http://example.com/items/7?x=1");
    assert_eq!(replay.headers()["idempotency-key"], "k-1");

    let check = |request: &Request<ReplayBody<Chunked>>| {
        assert_eq!(request.method(), Method::PUT);
        assert_eq!(request.uri(), "http://example.com/items/7?x=1");
        assert_eq!(request.version(), Version::HTTP_2);
        assert_eq!(request.headers().len(), 2);
        assert_eq!(request.headers()["content-type"], "text/plain");
        assert_eq!(request.headers()["idempotency-key"], "k-1");
        assert_eq!(
            request.extensions().get::<RequestId>(),
            Some(&RequestId(42))
        );
    };
    check(&first);
    assert_eq!(data(first.into_body()).await, "put this");

    let mut second = replay.next_request().unwrap();
    check(&second);
    // A change made to one attempt's request stays with it.
    second
        .headers_mut()
        .insert("x-attempt", HeaderValue::from_static("2"));
    second.extensions_mut().insert(RequestId(2));
    assert_eq!(data(second.into_body()).await, "put this");

    let last = replay.into_last_request().unwrap();
    check(&last);
    assert_eq!(data(last.into_body()).await, "put this");
}

#[tokio::test]
async fn request_over_cap_is_not_replayed() {
    let request = Request::post("http://example.com/upload")
        .body(Chunked::new(["0123456789"; 10]))
        .unwrap();
    let (first, replay) = replayable(request, 64);
    assert_eq!(data(first.into_body()).await.len(), 100);
    assert!(!replay.is_replayable());
    assert!(replay.next_request().is_none());
    assert!(replay.into_last_request().is_none());
}

#[tokio::test]
async fn once_body_is_sent_as_is() {
    let body = ReplayBody::once(Chunked::new(["a", "b"]).trailers(trailers()).exact_size());
    assert_eq!(body.size_hint().exact(), Some(2));
    let (sent, sent_trailers) = read(body).await.unwrap();
    assert_eq!(sent, "ab");
    assert_eq!(sent_trailers, Some(trailers()));
}

#[test]
fn types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ReplayBody<Full<Bytes>>>();
    send_sync::<Replay<Full<Bytes>>>();
    send_sync::<steadfast::http::replay::RequestReplay<Full<Bytes>>>();
}

/// A loopback HTTP/1 server: answers `503` without reading the body on the connections
/// whose number is in `refuse`, and echoes the body on the others.
async fn server(refuse: &'static [usize]) -> std::net::SocketAddr {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let refused = refuse.contains(&n);
            let service = service_fn(move |request: Request<hyper::body::Incoming>| async move {
                if refused {
                    let response = http::Response::builder().status(503).body(Full::default());
                    return response;
                }
                let body = request.into_body().collect().await.unwrap().to_bytes();
                http::Response::builder().body(Full::new(body))
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Sends `request` on a new connection to `addr`: the status and the response body.
async fn send(
    addr: std::net::SocketAddr,
    request: Request<ReplayBody<Chunked>>,
) -> Result<(http::StatusCode, Bytes), BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

#[tokio::test]
async fn hyper_sends_every_attempt_byte_for_byte() {
    let addr = server(&[0]).await;
    let chunks: Vec<Bytes> = (0..50)
        .map(|i| Bytes::from(format!("chunk {i}; ")))
        .collect();
    let whole: Bytes = chunks.concat().into();
    let request = Request::post(format!("http://{addr}/echo"))
        .header("host", addr.to_string())
        .body(Chunked::new(chunks.clone()))
        .unwrap();
    let (first, replay) = replayable(request, DEFAULT_REPLAY_CAP);

    // The first attempt is answered 503 before its body is read (or fails when the
    // server closes the connection mid-body).
    if let Ok((status, _)) = send(addr, first).await {
        assert_eq!(status, 503);
    }
    for _ in 0..2 {
        let next = replay.next_request().unwrap();
        let (status, echoed) = send(addr, next).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(echoed, whole);
    }

    // With a known length (sent with `content-length`), too.
    let request = Request::put(format!("http://{addr}/echo"))
        .header("host", addr.to_string())
        .body(Chunked::new(chunks).exact_size())
        .unwrap();
    let (first, replay) = replayable(request, DEFAULT_REPLAY_CAP);
    assert_eq!(send(addr, first).await.unwrap().1, whole);
    let (_, echoed) = send(addr, replay.into_last_request().unwrap())
        .await
        .unwrap();
    assert_eq!(echoed, whole);
}

/// Reads `body`, dropping it after `stop` frames if given.
async fn read_some(mut body: ReplayBody<Chunked>, stop: Option<usize>) -> Vec<u8> {
    let mut sent = Vec::new();
    let mut frames = 0;
    while stop.is_none_or(|stop| frames < stop) {
        let Some(frame) = body.frame().await else {
            break;
        };
        sent.extend_from_slice(&frame.unwrap().into_data().unwrap());
        frames += 1;
    }
    sent
}

/// `data` cut into chunks at the given points.
fn cut(data: &[u8], mut cuts: Vec<usize>) -> Vec<Bytes> {
    cuts.iter_mut().for_each(|c| *c %= data.len() + 1);
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain([data.len()]) {
        chunks.push(Bytes::copy_from_slice(&data[start..cut]));
        start = cut;
    }
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_replay_equals_the_original(
        data in prop::collection::vec(any::<u8>(), 0..3000),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
        cap in 0usize..3500,
        stop in prop::option::of(0usize..40),
        exact in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut body = Chunked::new(cut(&data, cuts));
            if exact {
                body = body.exact_size();
            }
            let (first, replay) = ReplayBody::new(body, cap);
            // The first attempt may be cut short; what it sends is a prefix.
            let sent = read_some(first, stop).await;
            prop_assert_eq!(&sent[..], &data[..sent.len()]);
            if data.len() <= cap {
                for _ in 0..3 {
                    let next = replay.next_body();
                    prop_assert!(next.is_some());
                    let Some(next) = next else { break };
                    if exact {
                        prop_assert_eq!(next.size_hint().exact(), Some(data.len() as u64));
                    }
                    prop_assert_eq!(read_some(next, None).await, data.clone());
                }
                prop_assert!(replay.is_replayable());
            } else if exact {
                // Known to be over the cap from the start: never kept.
                prop_assert!(replay.next_body().is_none());
            } else {
                // Replayable as long as no more than the cap was read.
                prop_assert_eq!(replay.is_replayable(), sent.len() <= cap);
                if let Some(next) = replay.next_body() {
                    // The next attempt reads on, passes the cap, and is the last.
                    prop_assert_eq!(read_some(next, None).await, data.clone());
                }
                prop_assert!(replay.next_body().is_none());
            }
            Ok(())
        })?;
    }
}
