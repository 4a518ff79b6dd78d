//! A scriptable downstream for breaker tests: each request says how the call behaves.
#![allow(dead_code)]

pub mod process;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use steadfast::breaker::error::Open;
use steadfast::breaker::{Breaker, BreakerService};
use steadfast::{BoxError, Outcome};
use tokio::sync::oneshot;
use tower::{Service, ServiceExt};

/// How one call to the downstream behaves.
#[derive(Debug)]
pub enum Req {
    Ok,
    Err,
    /// An error the test classifier counts as `Ignored`.
    Ignore,
    /// Succeeds (true) or fails (false) after the delay.
    After(Duration, bool),
    /// Never completes.
    Hang,
    /// Completes as the sender says: true ok, false err.
    Gate(oneshot::Receiver<bool>),
}

pub type Downstream = tower::util::BoxCloneService<Req, (), &'static str>;

/// A downstream that counts the calls that reach it.
pub fn downstream(reached: Arc<AtomicUsize>) -> Downstream {
    tower::util::BoxCloneService::new(tower::service_fn(move |req: Req| {
        reached.fetch_add(1, Ordering::SeqCst);
        async move {
            match req {
                Req::Ok => Ok(()),
                Req::Err => Err("boom"),
                Req::Ignore => Err("ignore"),
                Req::After(d, ok) => {
                    tokio::time::sleep(d).await;
                    if ok {
                        Ok(())
                    } else {
                        Err("slow boom")
                    }
                }
                Req::Hang => std::future::pending().await,
                Req::Gate(rx) => match rx.await {
                    Ok(true) => Ok(()),
                    _ => Err("gate"),
                },
            }
        }
    }))
}

pub fn classify(r: &Result<(), &'static str>) -> Outcome {
    match r {
        Ok(()) => Outcome::Success,
        Err("ignore") => Outcome::Ignored,
        Err(_) => Outcome::Failure,
    }
}

pub type Svc = BreakerService<Downstream, fn(&Result<(), &'static str>) -> Outcome>;

/// The downstream behind `breaker`, and the count of calls that reached it.
pub fn guarded(breaker: &Breaker) -> (Svc, Arc<AtomicUsize>) {
    let reached = Arc::new(AtomicUsize::new(0));
    let svc = BreakerService::new(downstream(reached.clone()), breaker.clone())
        .classify(classify as fn(&Result<(), &'static str>) -> Outcome);
    (svc, reached)
}

/// What a caller saw.
#[derive(Debug, PartialEq)]
pub enum Seen {
    Ok,
    Failed,
    Rejected(Option<Duration>),
}

pub fn seen(result: Result<(), BoxError>) -> Seen {
    match result {
        Ok(()) => Seen::Ok,
        Err(e) => match e.downcast_ref::<Open>() {
            Some(open) => Seen::Rejected(open.retry_after()),
            None => Seen::Failed,
        },
    }
}

/// What a caller of any service with the breaker's error type saw, calling once with
/// `req` (after `ready`).
pub async fn call_with<S, R>(svc: &mut S, req: R) -> Seen
where
    S: Service<R, Error = BoxError>,
{
    let ready = svc.ready().await.expect("poll_ready never fails here");
    seen(ready.call(req).await.map(drop))
}

impl Seen {
    /// Whether the breaker rejected the call, whatever its hint.
    pub fn is_rejected(&self) -> bool {
        matches!(self, Seen::Rejected(_))
    }
}

pub async fn call(svc: &mut Svc, req: Req) -> Seen {
    seen(
        svc.ready()
            .await
            .expect("poll_ready never fails here")
            .call(req)
            .await,
    )
}

/// Calls `n` times with requests made by `req`.
pub async fn calls(svc: &mut Svc, n: usize, req: impl Fn() -> Req) -> Vec<Seen> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(call(svc, req()).await);
    }
    out
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
