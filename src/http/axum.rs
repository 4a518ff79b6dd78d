//! axum integration: a [`Client`](super::Client)'s [`Error`] is a response, and
//! [`health_routes`] serves `/health` and `/ready` from a [`Health`]. Feature `axum`.
//!
//! ```
//! use axum::extract::{Path, State};
//! use axum::routing::get;
//! use axum::Router;
//! use steadfast::health::Health;
//! use steadfast::http::{axum::health_routes, Client, Error};
//!
//! async fn price(State(prices): State<Client>, Path(id): Path<u32>) -> Result<String, Error> {
//!     let body = prices.get_bytes(format!("http://127.0.0.1:3000/price/{id}")).await?;
//!     Ok(String::from_utf8_lossy(&body).into_owned())
//! }
//!
//! # fn app() -> Result<Router, steadfast::ConfigError> {
//! let health = Health::new();
//! let prices = Client::builder("prices").one_breaker().health(&health).build()?;
//! let app = Router::new()
//!     .route("/price/{id}", get(price))
//!     .with_state(prices)
//!     .merge(health_routes(health));
//! # Ok(app)
//! # }
//! ```
//!
//! # Responses
//!
//! | [`ErrorKind`] | status | body |
//! | --- | --- | --- |
//! | `Unavailable` (breaker open or shedding) | `503`, `Retry-After` in whole seconds (rounded up; left out when unknown) | `prices is unavailable; retry after 2 s` |
//! | `Connect` | `502` | `prices is unreachable` |
//! | `Timeout` | `504` | `prices timed out` |
//! | `Status(s)` (from `get_bytes`) | `502` | `prices answered 500 Internal Server Error` |
//! | `Other` | `502` | `request to prices failed` |
//! | `InvalidRequest` | `500` | `invalid request to prices` |
//!
//! Bodies are `text/plain; charset=utf-8`. The cause (an address, an OS error) is
//! not sent to the caller; log the error's `source` chain for it.
//!
//! # `/health` and `/ready`
//!
//! `GET /ready` answers `200 ready` while [`Health::is_ready`], else
//! `503 not ready`: for a load balancer's readiness check. `GET /health` answers
//! `200` (or `503` when not ready) with [`Health::snapshot`] as JSON, in this schema
//! (durations in milliseconds; fields may be added, never renamed or removed within
//! a major version):
//!
//! ```json
//! {
//!   "ready": true,
//!   "dependencies": [
//!     {
//!       "breaker": {
//!         "name": "prices", "state": "open", "calls": 40, "successes": 12,
//!         "failures": 28, "ignored": 0, "slow": 0, "rejected": 115, "shed": 0,
//!         "trips": 1, "failure_rate": 0.7, "retry_after_ms": 1800, "capped": false
//!       },
//!       "escalated": false,
//!       "blocks_readiness": false
//!     }
//!   ],
//!   "keyed": [
//!     {
//!       "name": "hosts", "keys": 2, "rejecting": 1, "capped": 0, "evicted": 0,
//!       "shown": [{ "key": "Some(http://10.0.0.7:8080)", "breaker": { "name": "hosts", "...": "as above" } }]
//!     }
//!   ]
//! }
//! ```
//!
//! `state` is one of `closed`, `open`, `half-open`, `forced-open`, `forced-closed`;
//! `failure_rate` is `null` without a rate rule or with an empty window;
//! `retry_after_ms` (whole milliseconds, rounded up) is `null` unless open with a
//! known time; `capped` is true while an
//! [`EjectionCap`](crate::breaker::EjectionCap) lets calls through the open breaker;
//! `keyed` lists the [keyed breakers](crate::keyed::KeyedSnapshot) (a
//! client's breakers per origin among them), up to their `snapshot_keys` keys each,
//! and is left out when empty. The fields are those of
//! [`HealthSnapshot`](crate::health::HealthSnapshot) and
//! [`Snapshot`](crate::breaker::Snapshot).

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};

use super::open::open_to_response;
use super::{Error, ErrorKind};
use crate::health::Health;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut response = (self.status(), self.to_string()).into_response();
        if let (ErrorKind::Unavailable, Some(open)) = (self.kind(), self.open()) {
            let unavailable: http::Response<()> = open_to_response(open);
            if let Some(after) = unavailable.headers().get(RETRY_AFTER) {
                response.headers_mut().insert(RETRY_AFTER, after.clone());
            }
        }
        response
    }
}

/// A router with `GET /health` (JSON) and `GET /ready` from `health`; merge it into
/// your app's. See the [module docs](self#health-and-ready) for the answers.
pub fn health_routes<S>(health: Health) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let ready = health.clone();
    Router::new()
        .route(
            "/health",
            get(move || {
                let health = health.clone();
                async move { health_json(&health) }
            }),
        )
        .route(
            "/ready",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.is_ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
}

fn health_json(health: &Health) -> Response {
    let snapshot = health.snapshot();
    let status = if snapshot.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    match serde_json::to_vec(&snapshot) {
        Ok(json) => (
            status,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            Body::from(json),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
