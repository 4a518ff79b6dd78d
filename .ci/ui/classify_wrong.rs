// A common mistake: an HTTP classifier on a service that does not answer HTTP.
// expect: error[E0277]: `BreakerClassifier` cannot classify a `Result<String, std::io::Error>`
// expect: pass a closure `|result: &Result<String, std::io::Error>| -> Outcome`
use steadfast::breaker::Breaker;
use steadfast::http::BreakerClassifier;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, ServiceBuilder};

fn main() {
    let breaker = Breaker::new("db");
    let svc = ServiceBuilder::new()
        .layer(breaker.layer().classify(BreakerClassifier::new()))
        .service(service_fn(|q: String| async move { Ok::<_, std::io::Error>(q) }));
    // Stored boxed, as in an app's state (a method call instead gives rustc's E0599).
    let _: BoxCloneSyncService<String, String, steadfast::BoxError> = BoxCloneSyncService::new(svc);
}
