//! Measurement drivers shared by the benches: one task, and two threads sharing one
//! layer, both timing `iters` calls as a batch with `iter_custom`.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Ready;
use std::sync::Barrier;
use std::time::Instant;

use criterion::measurement::WallTime;
use criterion::{black_box, BenchmarkGroup};
use tokio::runtime::{Builder, Runtime};
use tower::{Service, ServiceExt};

/// The trivial inner service every bench row wraps. Returned as `impl Service` (not a `fn` pointer) so the
/// closure stays a zero-sized, inlinable type in every row.
pub fn inner(
) -> impl Service<u64, Response = u64, Error = Infallible, Future = Ready<Result<u64, Infallible>>>
       + Clone
       + Send
       + 'static {
    tower::service_fn(|x: u64| std::future::ready(Ok::<u64, Infallible>(x)))
}

/// The inner service of the rows with failures: each clone fails one call in `every`
/// (1% with `every = 100`, 10% with 10), its eighth and then every `every`th, spread
/// out so that no run of failures trips a consecutive-failure rule. The error is an
/// `io::Error` of a kind only, which allocates nothing.
#[allow(dead_code)] // used by the breaker bench only
pub fn failing(
    every: u64,
) -> impl Service<
    u64,
    Response = u64,
    Error = std::io::Error,
    Future = Ready<Result<u64, std::io::Error>>,
> + Clone
       + Send
       + 'static {
    // A countdown rather than `x % every`: a division per call (the divisor is only
    // known at run time) cost every row about 10 ns, more than some breakers do.
    let left = std::cell::Cell::new(7 % every);
    tower::service_fn(move |x: u64| {
        let n = left.get();
        left.set(if n == 0 { every - 1 } else { n - 1 });
        std::future::ready(if n == 0 {
            Err(std::io::ErrorKind::Other.into())
        } else {
            Ok(x)
        })
    })
}

/// Makes `iters` calls through `svc`, one after another, in the calling task.
pub async fn drive<S>(svc: &mut S, iters: u64)
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    for i in 0..iters {
        // Rows with failures get errors back; every row pays for the `Result`.
        let resp = svc
            .ready()
            .await
            .expect("poll_ready failed")
            .call(black_box(i))
            .await;
        black_box(resp.ok());
    }
}

/// The application's runtime, as a server would have one: breakers are built in its
/// context, so a time window's coarse clock runs on its worker while the benches
/// drive calls on their own current-thread runtimes (which never yield to a task of
/// theirs in a batch).
pub fn app_runtime() -> &'static Runtime {
    static APP: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
    APP.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// `svc`, once a time window's coarse clock has had time to start (it publishes from
/// its second tick, at most two ticks after the breaker's build: 2 s with a 10 s
/// window).
#[allow(dead_code)] // used by the breaker bench only
pub fn settled<S>(svc: S) -> S {
    std::thread::sleep(std::time::Duration::from_millis(2_200));
    svc
}

pub fn current_thread_runtime() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// One task: time `iters` calls as one batch.
pub fn bench_single<S>(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, id: &str, svc: S)
where
    S: Service<u64, Response = u64> + Clone,
    S::Error: Debug,
{
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut svc = svc.clone();
            rt.block_on(async move {
                let start = Instant::now();
                drive(&mut svc, iters).await;
                start.elapsed()
            })
        })
    });
}

/// Two OS threads, each on its own current-thread runtime with its own clone of
/// `svc` (all clones share one layer), each making `iters` calls. Returns the wall
/// time from the first thread's start to the last thread's finish, so criterion
/// reports time per call per thread.
pub fn bench_shared<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rts: &[Runtime; 2],
    id: &str,
    svc: S,
) where
    S: Service<u64, Response = u64> + Clone + Send,
    S::Error: Debug,
{
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(rts.len());
            let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
                let handles: Vec<_> = rts
                    .iter()
                    .map(|rt| {
                        let mut svc = svc.clone();
                        let barrier = &barrier;
                        scope.spawn(move || {
                            barrier.wait();
                            rt.block_on(async move {
                                let start = Instant::now();
                                drive(&mut svc, iters).await;
                                (start, Instant::now())
                            })
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("bench thread panicked"))
                    .collect()
            });
            let first_start = spans.iter().map(|s| s.0).min().expect("two spans");
            let last_end = spans.iter().map(|s| s.1).max().expect("two spans");
            last_end - first_start
        })
    });
}

/// The two groups (`<prefix>/single`, `<prefix>/shared_2_threads`) over the bench's
/// `rows!` macro, with the shared criterion settings, and the bench's `main`.
#[macro_export]
macro_rules! bench_groups {
    ($prefix:literal) => {
        fn single(c: &mut criterion::Criterion) {
            let rt = support::current_thread_runtime();
            // Build the services inside the application's runtime context.
            let _enter = support::app_runtime().enter();
            let mut group = c.benchmark_group(concat!($prefix, "/single"));
            rows!(bench_single, &mut group, &rt);
            group.finish();
        }

        fn shared_2_threads(c: &mut criterion::Criterion) {
            let rts = [
                support::current_thread_runtime(),
                support::current_thread_runtime(),
            ];
            let _enter = support::app_runtime().enter();
            let mut group = c.benchmark_group(concat!($prefix, "/shared_2_threads"));
            rows!(bench_shared, &mut group, &rts);
            group.finish();
        }

        criterion::criterion_group! {
            name = benches;
            config = criterion::Criterion::default()
                .warm_up_time(std::time::Duration::from_secs(1))
                .measurement_time(std::time::Duration::from_secs(3))
                .sample_size(30);
            targets = single, shared_2_threads
        }
        criterion::criterion_main!(benches);
    };
}
