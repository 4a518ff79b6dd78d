//! Keys for [keyed breakers](crate::keyed): which breaker an HTTP request goes through.

use std::fmt;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri};

use crate::keyed::KeyFn;

/// Keys an HTTP request by its URI's authority (`host:port`), or its `Host` header
/// when the URI has none (as on a server); `None` when it has neither, and all such
/// requests share one breaker.
///
/// ```
/// use steadfast::breaker::Breaker;
/// use steadfast::http::ByAuthority;
/// use steadfast::keyed::{KeyFn, KeyedBreaker};
///
/// let req = http::Request::get("http://10.0.0.7:8080/users").body(()).unwrap();
/// assert_eq!(ByAuthority.key(&req).unwrap().as_str(), "10.0.0.7:8080");
/// let upstreams = KeyedBreaker::<Option<http::uri::Authority>>::builder(
///     Breaker::builder("upstreams"),
/// )
/// .build()?;
/// let layer = upstreams.layer(ByAuthority);
/// # let _ = layer;
/// # Ok::<(), steadfast::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ByAuthority;

impl<B> KeyFn<Request<B>> for ByAuthority {
    type Key = Option<Authority>;

    #[inline]
    fn key(&self, req: &Request<B>) -> Self::Key {
        match req.uri().authority() {
            Some(authority) => Some(authority.clone()),
            None => req
                .headers()
                .get(http::header::HOST)
                .and_then(|host| http::uri::Authority::try_from(host.as_bytes()).ok()),
        }
    }
}

/// Where a request goes: its URI's scheme and authority. The key of a client's
/// breakers per origin.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: Scheme,
    authority: Authority,
}

impl Origin {
    /// The origin of `uri`; `None` for a URI without scheme or authority.
    pub fn of(uri: &Uri) -> Option<Self> {
        Some(Self {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
        })
    }

    /// The scheme, `http` or `https`.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// The host and port.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The URI of `path` at this origin.
    #[cfg_attr(not(feature = "client"), allow(dead_code))]
    pub(crate) fn uri(&self, path: &PathAndQuery) -> Option<Uri> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path.clone())
            .build()
            .ok()
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Keys a request by its [`Origin`]: the key of [`Client`](crate::http::Client)'s
/// breakers per origin.
///
/// ```
/// use steadfast::http::ByOrigin;
/// use steadfast::keyed::KeyFn;
///
/// let req = http::Request::get("https://api.example:8443/v1").body(()).unwrap();
/// assert_eq!(ByOrigin.key(&req).unwrap().to_string(), "https://api.example:8443");
/// let relative = http::Request::get("/v1").body(()).unwrap();
/// assert!(ByOrigin.key(&relative).is_none());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ByOrigin;

impl<B> KeyFn<Request<B>> for ByOrigin {
    type Key = Option<Origin>;

    #[inline]
    fn key(&self, req: &Request<B>) -> Self::Key {
        Origin::of(req.uri())
    }
}
