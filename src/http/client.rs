//! [`Client`]: a protected HTTP client over hyper-util, built in one call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use tokio::time::Timeout;
use tower_service::Service;

use super::replay::ReplayBody;
use super::{retry_policy, BreakerClassifier, HttpRequests, HttpResponses, RetryClassifier};
use super::{ByOrigin, Origin};
use crate::breaker::error::Open;
use crate::breaker::service::call_through;
use crate::breaker::{Breaker, BreakerBuilder};
use crate::config::check_duration;
use crate::health::Health;
use crate::keyed::{KeyFn, KeyedBreaker};
use crate::retry::{Retry, RetryLayer, RetryPolicy};
use crate::watchdog::{Watchdog, WatchdogBuilder};
use crate::{BoxError, ConfigError};

/// The retry policy a [`Client`] takes: [`retry_policy`] and its
/// settings.
pub type HttpRetryPolicy = RetryPolicy<RetryClassifier, HttpRequests, HttpResponses>;

/// The hyper-util client under a [`Client`]: its bodies are [`ReplayBody`], so a
/// retried request sends the same bytes.
pub type HyperClient<B, C = HttpConnector> = hyper_util::client::legacy::Client<C, ReplayBody<B>>;

/// The default time each attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default bound on a request's retries.
const MAX_ELAPSED: Duration = Duration::from_secs(30);
/// The default number of origins that keep a breaker.
const MAX_ORIGINS: usize = 1024;

type Configure =
    Arc<dyn Fn(WatchdogBuilder<HttpProbe>) -> WatchdogBuilder<HttpProbe> + Send + Sync>;

/// Builds a [`Client`]; from [`Client::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClientBuilder {
    name: Arc<str>,
    breaker: BreakerBuilder,
    classify: BreakerClassifier,
    per_origin: bool,
    max_origins: usize,
    retry: HttpRetryPolicy,
    timeout: Duration,
    probe: Option<String>,
    watchdog: Configure,
    health: Option<Health>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("name", &self.name)
            .field("breaker", &self.breaker)
            .field("classify", &self.classify)
            .field("per_origin", &self.per_origin)
            .field("max_origins", &self.max_origins)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The breaker settings (by default `Breaker::builder(name)` with its defaults).
    /// Per origin, this is the template of every origin's breaker.
    pub fn breaker(mut self, breaker: BreakerBuilder) -> Self {
        self.breaker = breaker;
        self
    }

    /// Which responses count against the breaker (default [`BreakerClassifier::new`]).
    pub fn breaker_classifier(mut self, classify: BreakerClassifier) -> Self {
        self.classify = classify;
        self
    }

    /// One breaker for every request of the client, whatever its origin (default:
    /// one per origin). Use it for a client of one downstream whose readiness should
    /// count in [`Health`]: a single breaker blocks readiness when escalated, a
    /// breaker per origin never does.
    pub fn one_breaker(mut self) -> Self {
        self.per_origin = false;
        self
    }

    /// The most origins that keep a breaker at once (default 1,024); past it the
    /// least recently used is forgotten (see
    /// [`KeyedBreakerBuilder::max_keys`](crate::keyed::KeyedBreakerBuilder::max_keys)).
    pub fn max_origins(mut self, n: usize) -> Self {
        self.max_origins = n;
        self
    }

    /// The retry settings (default: [`retry_policy`] retrying
    /// every error of an idempotent request, `max_elapsed` 30 s). A policy given here
    /// keeps its own classifier (`retry_policy()` retries connect errors only, not
    /// timeouts: add `.retry_if(RetryClassifier::new().retry_all_errors(true))` for
    /// the client's); without `max_elapsed` it gets the client's 30 s, and without a
    /// name the client's name (its metrics label).
    ///
    /// ```
    /// use steadfast::http::{retry_policy, Client};
    /// let client = Client::builder("search")
    ///     .retry(retry_policy().max_attempts(2))
    ///     .build()?;
    /// # let _: Client = client;
    /// # Ok::<(), steadfast::ConfigError>(())
    /// ```
    pub fn retry(mut self, mut policy: HttpRetryPolicy) -> Self {
        // The client's defaults where the policy leaves them unset.
        if policy.max_elapsed.is_none() {
            policy = policy.max_elapsed(MAX_ELAPSED);
        }
        if &*policy.name == "retry" {
            policy = policy.name(self.name.clone());
        }
        self.retry = policy;
        self
    }

    /// No retries: each request is sent once.
    pub fn no_retry(mut self) -> Self {
        self.retry = self.retry.max_attempts(1);
        self
    }

    /// The time each attempt may take, from sending the request to the response head
    /// (default 10 s). An attempt over it fails with [`ErrorKind::Timeout`] and counts
    /// against the breaker.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Attaches a [watchdog](crate::watchdog) that owns the breaker's recovery: while
    /// the breaker is open it sends `GET probe` (outside the breaker) and closes the
    /// breaker when the answer is a `2xx`.
    ///
    /// Per origin, `probe` is a path (`"/health"`) asked of each origin's own
    /// downstream; with [`one_breaker`](Self::one_breaker) it is an absolute URI
    /// (`"http://10.0.0.7:8080/health"`). `build` must then be called within a tokio
    /// runtime.
    pub fn probe(mut self, probe: impl Into<String>) -> Self {
        self.probe = Some(probe.into());
        self
    }

    /// The watchdog's settings, when [`probe`](Self::probe) is set (default: the
    /// watchdog's defaults).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), steadfast::ConfigError> {
    /// use std::time::Duration;
    /// use steadfast::http::Client;
    /// let client = Client::builder("search")
    ///     .probe("/health")
    ///     .watchdog(|w| w.interval(Duration::from_millis(500)).healthy_threshold(2))
    ///     .build()?;
    /// # let _: Client = client;
    /// # Ok(())
    /// # }
    /// ```
    pub fn watchdog(
        mut self,
        configure: impl Fn(WatchdogBuilder<HttpProbe>) -> WatchdogBuilder<HttpProbe>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.watchdog = Arc::new(configure);
        self
    }

    /// Registers the client's breakers with `health` when built: the one breaker as a
    /// dependency, or the breakers per origin as a keyed breaker.
    pub fn health(mut self, health: &Health) -> Self {
        self.health = Some(health.clone());
        self
    }

    /// Builds the client over hyper-util's client with an `HttpConnector` (plain
    /// HTTP/1), sending [`Full<Bytes>`] bodies.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for settings out of range: the breaker's (see
    /// [`BreakerBuilder::build`]), the retry's (see
    /// [`RetryLayer::new`]), a zero or over-a-day `timeout`, `max_origins` of 0,
    /// a `probe` that is not a path (per origin) or not an absolute URI (one breaker),
    /// the watchdog's settings, or a probe set outside a tokio runtime.
    pub fn build(self) -> Result<Client, ConfigError> {
        let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build(HttpConnector::new());
        self.build_with(hyper)
    }

    /// Builds the client over a hyper-util client of your own: another connector
    /// (TLS), HTTP/2, pool settings, another body type.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::Empty;
    /// use hyper_util::client::legacy::{connect::HttpConnector, Client as Hyper};
    /// use hyper_util::rt::TokioExecutor;
    /// use steadfast::http::Client;
    ///
    /// let mut connector = HttpConnector::new();
    /// connector.set_nodelay(true);
    /// let hyper = Hyper::builder(TokioExecutor::new()).build(connector);
    /// let client: Client<Empty<Bytes>> = Client::builder("search").build_with(hyper)?;
    /// # Ok::<(), steadfast::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    pub fn build_with<B, C>(self, hyper: HyperClient<B, C>) -> Result<Client<B, C>, ConfigError>
    where
        B: Body + Default + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        C: Connect + Clone + Send + Sync + 'static,
    {
        check_duration("timeout", self.timeout)?;
        let layer = RetryLayer::new(self.retry)?;
        let breaker = self.breaker;
        let configure = self.watchdog;
        let breakers = if self.per_origin {
            let mut keyed = KeyedBreaker::builder(breaker).max_keys(self.max_origins);
            if let Some(probe) = &self.probe {
                let path = probe_path(probe)?;
                let hyper = hyper.clone();
                keyed = keyed.watchdog(
                    move |origin: &Option<Origin>| HttpProbe {
                        uri: origin.as_ref().and_then(|o| o.uri(&path)),
                        client: probe_client(&hyper),
                    },
                    move |w| configure(w),
                );
                check_runtime()?;
            }
            Breakers::PerOrigin(keyed.build()?)
        } else {
            let breaker = breaker.build()?;
            if let Some(probe) = &self.probe {
                let uri = probe_uri(probe)?;
                let probe = HttpProbe {
                    uri: Some(uri),
                    client: probe_client(&hyper),
                };
                // Detached: the watchdog ends with the last clone of the breaker.
                drop(configure(Watchdog::builder(&breaker, probe)).spawn()?);
            }
            Breakers::One(breaker)
        };
        if let Some(health) = &self.health {
            match &breakers {
                Breakers::One(b) => health.register(b),
                Breakers::PerOrigin(k) => health.register_keyed(k),
            };
        }
        let guard = Guard {
            attempt: Attempt {
                hyper,
                timeout: self.timeout,
            },
            breakers: breakers.clone(),
            classify: self.classify,
        };
        Ok(Client {
            retry: tower_layer::Layer::layer(&layer, guard),
            name: self.name,
            breakers,
        })
    }
}

fn probe_path(probe: &str) -> Result<PathAndQuery, ConfigError> {
    let uri: Uri = probe
        .parse()
        .map_err(|e| ConfigError::new("probe", format!("not a URI path: {e}")))?;
    match uri.path_and_query() {
        Some(path) if uri.authority().is_none() && path.as_str().starts_with('/') => {
            Ok(path.clone())
        }
        _ => Err(ConfigError::new(
            "probe",
            format!("with a breaker per origin, give a path such as \"/health\", got {probe:?}"),
        )),
    }
}

fn probe_uri(probe: &str) -> Result<Uri, ConfigError> {
    match probe.parse::<Uri>() {
        Ok(uri) if uri.scheme().is_some() && uri.authority().is_some() => Ok(uri),
        _ => Err(ConfigError::new(
            "probe",
            format!(
                "with one breaker, give an absolute URI such as \"http://host/health\", got {probe:?}"
            ),
        )),
    }
}

fn check_runtime() -> Result<(), ConfigError> {
    tokio::runtime::Handle::try_current()
        .map(drop)
        .map_err(|_| ConfigError::new("probe", "a watchdog must be built within a tokio runtime"))
}

/// The probe's own client: the same connector and pool settings, an empty body.
fn probe_client<B, C>(hyper: &HyperClient<B, C>) -> ProbeClient
where
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    C: Connect + Clone + Send + Sync + 'static,
{
    Arc::new(ProbeHyper(hyper.clone()))
}

/// A client's breakers: one, or one per [`Origin`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Breakers {
    /// One breaker for every request.
    One(Breaker),
    /// A breaker per origin.
    PerOrigin(KeyedBreaker<Option<Origin>>),
}

impl Breakers {
    /// The breaker of requests to `uri`: the one breaker, or `uri`'s origin's (made if
    /// it has none yet).
    pub fn breaker_for(&self, uri: &Uri) -> Breaker {
        match self {
            Self::One(breaker) => breaker.clone(),
            Self::PerOrigin(keyed) => keyed.breaker(&Origin::of(uri)),
        }
    }
}

/// A protected HTTP client: retry, breaker and attempt timeout over hyper-util's
/// client, built in one call by [`Client::builder`]. Feature `client`.
///
/// A dependency called over HTTP needs the same four things every time: retries of
/// the requests that are safe to send again, a breaker that fails fast while the
/// downstream is down, a bound on each attempt, and something that notices when the
/// downstream is back. [`Client::builder`] puts them together with defaults that hold
/// up through an outage, over the crate's public layers:
///
/// ```text
/// Client ── retry (idempotent requests, in a budget, Retry-After honoured)
///        └─ breaker, one per origin (scheme://host:port), or one for the client
///           └─ timeout per attempt
///              └─ hyper-util's client (connection pool)
/// ```
///
/// Errors are one type, [`Error`], that says which dependency failed and how
/// ([`ErrorKind`]); with the `axum` feature it is a response (see
/// [`steadfast::http::axum`](crate::http::axum)).
///
/// ```no_run
/// # async fn run() -> Result<(), steadfast::BoxError> {
/// use steadfast::http::Client;
///
/// let prices = Client::builder("prices").probe("/health").build()?;
/// let body = prices.get_bytes("http://127.0.0.1:3000/price/7").await?;
/// # let _ = body;
/// # Ok(())
/// # }
/// ```
///
/// # Defaults
///
/// - retry: [`retry_policy`] (idempotent methods or an
///   `Idempotency-Key`; `502`, `503`, `504`, `429`, `408` and every error, since only
///   idempotent requests are retried), at most 3 attempts, the retry budget of
///   [`RetryPolicy::new`](crate::retry::RetryPolicy::new), and `max_elapsed` 30 s;
/// - breaker: the [default rule](crate::breaker::BreakerBuilder) (failure rate over a
///   time window, adaptive throttling), one per origin, at most 1,024 origins,
///   [`BreakerClassifier`] (`5xx`, `429` and errors fail);
/// - 10 s per attempt;
/// - no watchdog until [`probe`](ClientBuilder::probe) is set.
///
/// Cheap to clone; clones share the connection pool, the breakers, the retry budget
/// and the watchdogs: store one in your app's state. It is a tower [`Service`] of
/// `Request<B>`, and has [`get`](Self::get), [`get_bytes`](Self::get_bytes) and
/// [`send`](Self::send) for use without tower.
pub struct Client<B = Full<Bytes>, C = HttpConnector> {
    retry: Retry<Guard<B, C>, RetryClassifier, HttpRequests, HttpResponses>,
    name: Arc<str>,
    breakers: Breakers,
}

impl Client {
    /// A builder for a client of the dependency `name` (it names the breakers and
    /// appears in every error), with the [defaults](Client#defaults).
    pub fn builder(name: impl Into<Arc<str>>) -> ClientBuilder {
        let name = name.into();
        ClientBuilder {
            breaker: Breaker::builder(name.clone()),
            classify: BreakerClassifier::new(),
            per_origin: true,
            max_origins: MAX_ORIGINS,
            retry: retry_policy()
                .retry_if(RetryClassifier::new().retry_all_errors(true))
                .max_elapsed(MAX_ELAPSED)
                .name(name.clone()),
            timeout: ATTEMPT_TIMEOUT,
            probe: None,
            watchdog: Arc::new(|w| w),
            health: None,
            name,
        }
    }
}

impl<B, C> Client<B, C> {
    /// The dependency's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client's breakers.
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }
}

impl<B, C> Client<B, C>
where
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    C: Connect + Clone + Send + Sync + 'static,
{
    /// Sends `request` through retry, breaker and timeout.
    pub async fn send(&self, request: Request<B>) -> Result<Response<Incoming>, Error> {
        self.clone().call(request).await
    }

    /// `GET uri`, with an empty body.
    pub async fn get<U>(&self, uri: U) -> Result<Response<Incoming>, Error>
    where
        U: TryInto<Uri>,
        U::Error: Into<http::Error>,
    {
        let request = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .body(B::default())
            .map_err(|e| Error::new(&self.name, ErrorKind::InvalidRequest, Some(e.into())))?;
        self.send(request).await
    }

    /// `GET uri` and its body, for a `2xx` answer; any other status is an
    /// [`ErrorKind::Status`] error. Reading the body is bounded by the attempt
    /// timeout too.
    pub async fn get_bytes<U>(&self, uri: U) -> Result<Bytes, Error>
    where
        U: TryInto<Uri>,
        U::Error: Into<http::Error>,
    {
        let response = self.get(uri).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::new(&self.name, ErrorKind::Status(status), None));
        }
        let timeout = self.retry.get_ref().attempt.timeout;
        match tokio::time::timeout(timeout, response.into_body().collect()).await {
            Ok(Ok(body)) => Ok(body.to_bytes()),
            Ok(Err(e)) => Err(Error::new(&self.name, ErrorKind::Other, Some(e.into()))),
            Err(_) => Err(Error::new(&self.name, ErrorKind::Timeout, None)),
        }
    }
}

impl<B, C: Clone> Clone for Client<B, C> {
    fn clone(&self) -> Self {
        Self {
            retry: self.retry.clone(),
            name: self.name.clone(),
            breakers: self.breakers.clone(),
        }
    }
}

impl<B, C> fmt::Debug for Client<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("breakers", &self.breakers)
            .finish_non_exhaustive()
    }
}

impl<B, C> Service<Request<B>> for Client<B, C>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    C: Connect + Clone + Send + Sync + 'static,
{
    type Response = Response<Incoming>;
    type Error = Error;
    type Future = ResponseFuture<B, C>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // The guard admits in `call` and hyper's pool is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ResponseFuture {
            inner: self.retry.call(request),
            name: self.name.clone(),
        }
    }
}

pin_project! {
    /// The future of a [`Client`] call.
    pub struct ResponseFuture<B, C>
    where
        B: Body,
        B: Send,
        B: Unpin,
        B: 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        C: Connect,
        C: Clone,
        C: Send,
        C: Sync,
        C: 'static,
    {
        #[pin]
        inner: crate::retry::future::ResponseFuture<
            Guard<B, C>,
            Request<B>,
            RetryClassifier,
            HttpRequests,
            HttpResponses,
        >,
        name: Arc<str>,
    }
}

impl<B, C> Future for ResponseFuture<B, C>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    C: Connect + Clone + Send + Sync + 'static,
{
    type Output = Result<Response<Incoming>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(result) => Poll::Ready(result.map_err(|e| Error::from_box(this.name, e))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<B, C> fmt::Debug for ResponseFuture<B, C>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    C: Connect + Clone + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The breaker (one, or the request's origin's) over one attempt. Admission happens
/// in `call`, so `poll_ready` is always ready.
pub(crate) struct Guard<B, C> {
    attempt: Attempt<B, C>,
    breakers: Breakers,
    classify: BreakerClassifier,
}

impl<B, C: Clone> Clone for Guard<B, C> {
    fn clone(&self) -> Self {
        Self {
            attempt: self.attempt.clone(),
            breakers: self.breakers.clone(),
            classify: self.classify,
        }
    }
}

impl<B, C> Service<Request<ReplayBody<B>>> for Guard<B, C>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    C: Connect + Clone + Send + Sync + 'static,
{
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = crate::breaker::future::ResponseFuture<AttemptFuture, BreakerClassifier>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody<B>>) -> Self::Future {
        let attempt = &self.attempt;
        match &self.breakers {
            Breakers::One(breaker) => {
                call_through(breaker, self.classify, || attempt.send(request))
            }
            Breakers::PerOrigin(keyed) => {
                let key = ByOrigin.key(&request);
                keyed.with(&key, |breaker| {
                    call_through(breaker, self.classify, || attempt.send(request))
                })
            }
        }
    }
}

/// One attempt: hyper's request under the attempt timeout.
struct Attempt<B, C> {
    hyper: HyperClient<B, C>,
    timeout: Duration,
}

impl<B, C: Clone> Clone for Attempt<B, C> {
    fn clone(&self) -> Self {
        Self {
            hyper: self.hyper.clone(),
            timeout: self.timeout,
        }
    }
}

impl<B, C> Attempt<B, C>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    C: Connect + Clone + Send + Sync + 'static,
{
    fn send(&self, request: Request<ReplayBody<B>>) -> AttemptFuture {
        AttemptFuture {
            inner: tokio::time::timeout(self.timeout, self.hyper.request(request)),
        }
    }
}

pin_project! {
    pub(crate) struct AttemptFuture {
        #[pin]
        inner: Timeout<hyper_util::client::legacy::ResponseFuture>,
    }
}

impl Future for AttemptFuture {
    type Output = Result<Response<Incoming>, AttemptError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.poll(cx) {
            Poll::Ready(Ok(Ok(response))) => Poll::Ready(Ok(response)),
            Poll::Ready(Ok(Err(e))) => {
                let kind = if e.is_connect() {
                    ErrorKind::Connect
                } else {
                    ErrorKind::Other
                };
                Poll::Ready(Err(AttemptError {
                    kind,
                    source: Some(e.into()),
                }))
            }
            Poll::Ready(Err(_elapsed)) => Poll::Ready(Err(AttemptError {
                kind: ErrorKind::Timeout,
                source: None,
            })),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// An attempt's failure, before the client names it.
#[derive(Debug)]
pub(crate) struct AttemptError {
    kind: ErrorKind,
    source: Option<BoxError>,
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Timeout => f.write_str("attempt timed out"),
            ErrorKind::Connect => f.write_str("could not connect"),
            _ => f.write_str("request failed"),
        }
    }
}

impl std::error::Error for AttemptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// What went wrong with a [`Client`] request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The breaker rejected the request (open, or shedding): the dependency is known
    /// to be down. See [`Error::open`] and [`Error::retry_after`].
    Unavailable,
    /// No connection could be made (refused, reset, unreachable).
    Connect,
    /// An attempt (or reading the body in [`Client::get_bytes`]) took longer than the
    /// timeout.
    Timeout,
    /// [`Client::get_bytes`] got this non-`2xx` status.
    Status(StatusCode),
    /// The request could not be built (a bad URI).
    InvalidRequest,
    /// Anything else: the connection closed mid-response, a malformed response, a
    /// body that failed.
    Other,
}

/// The error of a [`Client`] request: which dependency, what went wrong, and for a
/// breaker rejection when to try again.
///
/// With the `axum` feature it is a response (`503` with `Retry-After` for
/// [`ErrorKind::Unavailable`], `502` for `Connect`, `Status` and `Other`, `504` for
/// `Timeout`, `500` for `InvalidRequest`), so a handler can return it with `?`.
pub struct Error {
    dependency: Arc<str>,
    kind: ErrorKind,
    open: Option<Open>,
    source: Option<BoxError>,
}

impl Error {
    fn new(dependency: &Arc<str>, kind: ErrorKind, source: Option<BoxError>) -> Self {
        Self {
            dependency: dependency.clone(),
            kind,
            open: None,
            source,
        }
    }

    fn from_box(dependency: &Arc<str>, error: BoxError) -> Self {
        let error = match error.downcast::<Open>() {
            Ok(open) => {
                return Self {
                    dependency: dependency.clone(),
                    kind: ErrorKind::Unavailable,
                    open: Some(*open),
                    source: None,
                }
            }
            Err(error) => error,
        };
        match error.downcast::<AttemptError>() {
            Ok(attempt) => Self::new(dependency, attempt.kind, attempt.source),
            Err(other) => Self::new(dependency, ErrorKind::Other, Some(other)),
        }
    }

    /// The dependency: the client's name.
    pub fn dependency(&self) -> &str {
        &self.dependency
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The breaker's rejection, for [`ErrorKind::Unavailable`].
    pub fn open(&self) -> Option<&Open> {
        self.open.as_ref()
    }

    /// When the breaker could let a request through ([`Open::retry_after`]); `None`
    /// for other errors.
    pub fn retry_after(&self) -> Option<Duration> {
        self.open.as_ref().and_then(Open::retry_after)
    }

    /// The status a server answers its own client with when this error stops it:
    /// `503` (unavailable), `504` (timeout), `500` (invalid request), `502` otherwise.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::InvalidRequest => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("dependency", &self.dependency)
            .field("kind", &self.kind)
            .field("open", &self.open)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.dependency;
        match self.kind {
            ErrorKind::Unavailable => {
                write!(f, "{name} is unavailable")?;
                if let Some(after) = self.retry_after() {
                    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
                    write!(f, "; retry after {secs} s")?;
                }
                Ok(())
            }
            ErrorKind::Connect => write!(f, "{name} is unreachable"),
            ErrorKind::Timeout => write!(f, "{name} timed out"),
            ErrorKind::Status(status) => write!(f, "{name} answered {status}"),
            ErrorKind::InvalidRequest => write!(f, "invalid request to {name}"),
            ErrorKind::Other => write!(f, "request to {name} failed"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.open {
            Some(open) => Some(open),
            None => self.source.as_deref().map(|e| e as _),
        }
    }
}

/// A watchdog probe over HTTP: `GET uri` with the client's connector, outside the
/// breaker; a `2xx` passes. From [`ClientBuilder::probe`].
pub struct HttpProbe {
    uri: Option<Uri>,
    client: ProbeClient,
}

impl fmt::Debug for HttpProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProbe").field("uri", &self.uri).finish()
    }
}

type ProbeClient = Arc<dyn SendGet>;

/// The probe's `GET`, whatever the client's body and connector types.
trait SendGet: Send + Sync {
    fn get(&self, uri: Uri) -> Pin<Box<dyn Future<Output = Result<StatusCode, BoxError>> + Send>>;
}

struct ProbeHyper<B, C>(HyperClient<B, C>);

impl<B, C> SendGet for ProbeHyper<B, C>
where
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    C: Connect + Clone + Send + Sync + 'static,
{
    fn get(&self, uri: Uri) -> Pin<Box<dyn Future<Output = Result<StatusCode, BoxError>> + Send>> {
        let mut request = Request::new(ReplayBody::once(B::default()));
        *request.uri_mut() = uri;
        let response = self.0.request(request);
        Box::pin(async move { Ok(response.await?.status()) })
    }
}

impl crate::watchdog::Probe for HttpProbe {
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn probe(&mut self) -> Self::Future {
        let Some(uri) = self.uri.clone() else {
            return Box::pin(async { Err("no origin to probe".into()) });
        };
        let get = self.client.get(uri.clone());
        Box::pin(async move {
            let status = get.await?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("GET {uri} answered {status}").into())
            }
        })
    }
}
