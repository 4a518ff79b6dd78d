// A common mistake: `RetryPolicy::new()` (which clones requests) on HTTP requests.
// expect: error[E0277]: `CloneRequests` cannot send `axum::http::Request<Body>` again
// expect: use `steadfast::http::retry_policy()`
use axum::body::Body;
use axum::http::Request;
use steadfast::retry::{RetryLayer, RetryPolicy};
use tower::util::BoxCloneSyncService;
use tower::{service_fn, ServiceBuilder};

fn main() {
    let layer = RetryLayer::new(RetryPolicy::new()).unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|req: Request<Body>| async move {
            Ok::<_, std::io::Error>(req.into_body())
        }));
    // Stored boxed, as in an app's state (a method call instead gives rustc's E0599).
    let _: BoxCloneSyncService<Request<Body>, Body, std::io::Error> = BoxCloneSyncService::new(svc);
}
