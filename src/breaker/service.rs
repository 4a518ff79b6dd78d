use std::fmt;
use std::task::{Context, Poll};

use tower_service::Service;

use super::error::Open;
use super::future::ResponseFuture;
use super::machine::{Admission, Recorder};
use super::Breaker;
use crate::outcome::ErrorsAsFailures;
use crate::{BoxError, Classify};

/// What `poll_ready` decided for the next call.
#[derive(Debug)]
enum Slot {
    Pass { epoch: u32 },
    /// A half-open permit; the recorder gives it back if dropped unused.
    Trial(Recorder),
    Reject(Open),
}

/// A service guarded by a [`Breaker`]; built by [`BreakerLayer`](super::BreakerLayer).
///
/// # Readiness
///
/// `poll_ready` decides whether the next call goes through. While the breaker
/// rejects, it answers `Ready(Ok(()))` at once *without* polling the inner service,
/// and the next `call` returns a ready [`Open`] error: a stack waiting for readiness
/// never stalls on a dead downstream, and `poll_ready` never returns the breaker's own
/// error (tower treats an error there as the service being gone for good). When the
/// call will go through, the inner service has been polled ready first. Errors from the
/// inner `poll_ready` are passed on.
///
/// A half-open trial permit is taken by `poll_ready` and held until `call`; dropping
/// the service gives it back. `call` without `poll_ready` decides then, and forwards an
/// admitted call to the inner service as is.
pub struct BreakerService<S, C = ErrorsAsFailures> {
    inner: S,
    breaker: Breaker,
    classify: C,
    slot: Option<Slot>,
}

impl<S> BreakerService<S> {
    /// Guards `inner` with `breaker`, counting every `Err` as a failure.
    pub fn new(inner: S, breaker: Breaker) -> Self {
        Self {
            inner,
            breaker,
            classify: ErrorsAsFailures,
            slot: None,
        }
    }
}

impl<S, C> BreakerService<S, C> {
    /// Uses `classify` to decide each call's [`Outcome`](crate::Outcome).
    pub fn classify<C2>(self, classify: C2) -> BreakerService<S, C2> {
        BreakerService {
            inner: self.inner,
            breaker: self.breaker,
            classify,
            slot: self.slot,
        }
    }

    /// The breaker guarding this service.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service; a trial permit held by this service is given back.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn decide(&self) -> Slot {
        let core = &self.breaker.core;
        match core.shared.admit() {
            Admission::Pass { epoch } => Slot::Pass { epoch },
            admission @ Admission::Trial { .. } => match Recorder::new(core.shard().clone(), admission) {
                Some(recorder) => Slot::Trial(recorder),
                None => Slot::Reject(Open::new(core.shared.name.clone(), None)),
            },
            Admission::Reject { retry_after } => {
                Slot::Reject(Open::new(core.shared.name.clone(), retry_after))
            }
        }
    }
}

/// Per-instance readiness must not be shared: a clone starts undecided, and a trial
/// permit taken by one instance's `poll_ready` stays with that instance.
impl<S: Clone, C: Clone> Clone for BreakerService<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
            slot: None,
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for BreakerService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerService")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C, Req> Service<Req> for BreakerService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let stale = match &self.slot {
            None => true,
            // A pass from before a transition is decided again (the breaker may have
            // opened while the inner service was not ready).
            Some(Slot::Pass { epoch }) => !self.breaker.core.shared.is_current(*epoch),
            Some(_) => false,
        };
        if stale {
            self.slot = Some(self.decide());
        }
        if let Some(Slot::Reject(_)) = self.slot {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                // Gives a trial permit back.
                self.slot = None;
                Poll::Ready(Err(e.into()))
            }
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let slot = match self.slot.take() {
            Some(slot) => slot,
            None => self.decide(),
        };
        let core = &self.breaker.core;
        let recorder = match slot {
            Slot::Pass { epoch } => Recorder::new(core.shard().clone(), Admission::Pass { epoch }),
            Slot::Trial(mut recorder) => {
                recorder.restart();
                Some(recorder)
            }
            Slot::Reject(open) => {
                core.shard().count_rejected();
                return ResponseFuture::rejected(open);
            }
        };
        ResponseFuture::called(self.inner.call(req), recorder, self.classify.clone())
    }
}
