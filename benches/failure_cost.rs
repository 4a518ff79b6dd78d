//! What a failure costs a closed breaker, apart from what an inner service able to
//! fail costs every call: 50 million calls in one task through a consecutive-failure
//! breaker, over an inner service that cannot fail (`Infallible`), one that can but
//! never does, and one failing 1% and 10% of calls (a countdown, as the breaker bench's
//! `support::failing`), plus the failing service alone; and what boxing its error into
//! the `BoxError` the breaker returns costs by itself, per error. Prints ns per call; a
//! plain timing loop rather than criterion, to keep the rows in one steady process.
//!
//! ```text
//! cargo bench --bench failure_cost
//! ```

use std::cell::Cell;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::time::Instant;

use steadfast::breaker::Breaker;
use tower::{service_fn, Layer, Service, ServiceExt};

const CALLS: u64 = 50_000_000;

/// Fails one call in `every` (never for `u64::MAX`).
fn failing(
    every: u64,
) -> impl Service<u64, Response = u64, Error = std::io::Error, Future = Ready<Result<u64, std::io::Error>>>
{
    let left = Cell::new(7 % every);
    service_fn(move |x: u64| {
        let n = left.get();
        left.set(if n == 0 { every - 1 } else { n - 1 });
        ready(if n == 0 {
            Err(std::io::ErrorKind::Other.into())
        } else {
            Ok(x)
        })
    })
}

async fn drive<S>(name: &str, mut svc: S)
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for i in 0..CALLS {
        let resp = svc.ready().await.expect("ready").call(black_box(i)).await;
        black_box(resp.ok());
    }
    let ns = start.elapsed().as_nanos() as f64 / CALLS as f64;
    println!("{name:<40} {ns:6.2} ns/call");
}

/// The inner service's error made and dropped, and made, boxed and dropped.
fn boxing() {
    let time = |boxed: bool| {
        let start = Instant::now();
        for _ in 0..CALLS {
            let e: std::io::Error = black_box(std::io::ErrorKind::Other).into();
            if boxed {
                black_box(steadfast::BoxError::from(e));
            } else {
                black_box(e);
            }
        }
        start.elapsed().as_nanos() as f64 / CALLS as f64
    };
    let (plain, boxed) = (time(false), time(true));
    println!(
        "{:<40} {:6.2} ns/error",
        "boxing an io::Error into a BoxError",
        boxed - plain
    );
}

fn breaker() -> Breaker {
    Breaker::builder("cost")
        .consecutive_failures(5)
        .build()
        .expect("valid")
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is ignored as well.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        drive("bare, 1% failing", failing(100)).await;
        let infallible = service_fn(|x: u64| ready(Ok::<u64, Infallible>(x)));
        drive(
            "breaker over Infallible",
            breaker().layer().layer(infallible),
        )
        .await;
        for (name, every) in [
            ("breaker, able to fail, never fails", u64::MAX),
            ("breaker, 1% failing", 100),
            ("breaker, 10% failing", 10),
        ] {
            drive(name, breaker().layer().layer(failing(every))).await;
        }
    });
    boxing();
}
