//! [`BreakerService`]: a service guarded by a breaker, and the call-time admission
//! of services that pick their breaker per request ([`call_through`], [`admit`]).
//!
//! # A closed call, step by step
//!
//! 1. `poll_ready` asks [`Shared::admit_closed`], the inline half of
//!    [`Shared::admit`]: one load of the state word. Closed: the pass, with the
//!    state's epoch, is kept in the service as a [`Decision`] (one word), and the inner
//!    service is polled ready. Any other state goes out of line
//!    (`poll_ready_slow`, `decide_slow`, [`Shared::admit`]): trial permits,
//!    rejections, shedding, `Readiness::Wait`.
//! 2. `call` takes the decision and leases the thread's shard of counters
//!    ([`Core::lease`](super::machine::Core::lease)) into a
//!    [`Recorder::pass`]; the inner call's future and the recorder make the
//!    [`ResponseFuture`].
//! 3. When the inner future completes, the classifier names the outcome and
//!    [`Recorder::finish`] counts it on the thread's own shard with a plain store, then
//!    [`Shared::record`] feeds the rules: a success clears the failure streak (and
//!    adds to the thread's stripe of a window); a failure goes to
//!    [`Shared::record_timed`], which may trip the breaker.
//! 4. The shard goes back to the thread for its next call: no reference count moves
//!    on the closed path.
//!
//! A call whose epoch is no longer current when it finishes (the breaker moved on)
//! counts in the totals but not in the rules.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::future::ResponseFuture;
use super::machine::{Admission, Recorder, Shared};
use super::Breaker;
use crate::outcome::ErrorsAsFailures;
use crate::{BoxError, Classify};

/// What `poll_ready` decided for the next call, packed in one word: it is written by
/// `poll_ready` and read by `call` on every call, and a value stored and loaded whole
/// is forwarded straight from the store (a multi-field enum here cost ~10 ns a call).
///
/// Low byte: the tag; high 32 bits: the epoch of a pass. A rejection's `retry_after`
/// lives in `BreakerService::retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decision(u64);

impl Decision {
    const EMPTY: Decision = Decision(0);
    const TRIAL: Decision = Decision(2);
    const REJECT: Decision = Decision(3);
    /// Shed by adaptive throttling: a rejection that is never waited on.
    const SHED: Decision = Decision(4);

    #[inline(always)]
    fn pass(epoch: u32) -> Self {
        Decision(1 | u64::from(epoch) << 32)
    }

    /// The epoch of a pass.
    #[inline(always)]
    fn as_pass(self) -> Option<u32> {
        (self.0 & 0xff == 1).then_some((self.0 >> 32) as u32)
    }
}

pin_project! {
    /// What a service in `Readiness::Wait` waits on while its breaker rejects: the next
    /// transition, and the time at which deciding again could let a call through.
    /// Made on the first wait and kept (reset in place) for the service's life.
    struct Waiter {
        #[pin]
        changed: OwnedNotified,
        #[pin]
        sleep: Sleep,
    }
}

/// A service guarded by a [`Breaker`]; built by [`BreakerLayer`](super::BreakerLayer).
///
/// # Readiness
///
/// `poll_ready` decides whether the next call goes through. While the breaker
/// rejects, by default ([`Readiness::FailFast`](super::Readiness::FailFast)) it
/// answers `Ready(Ok(()))` at once *without* polling the inner service, and the next
/// `call` returns a ready [`Open`](super::error::Open) error: a stack waiting for
/// readiness never stalls on a dead downstream, and `poll_ready` never returns the
/// breaker's own error (tower treats an error there as the service being gone for
/// good). When the call will go through, the inner service has been polled ready
/// first. Errors from the inner `poll_ready` are passed on.
///
/// With [`Readiness::Wait`](super::Readiness::Wait), `poll_ready` answers `Pending`
/// while the breaker rejects, still without polling the inner service, and wakes the
/// task when deciding again could let a call through: a timer at the end of the open
/// delay (or at a half-open trial's deadline), and every transition (a watchdog
/// closing the breaker, `force_closed`, `reset`, a trial finishing). A load balancer
/// then routes around the endpoint until it can take a call again. A `call` made
/// without `poll_ready` still fails fast.
///
/// A half-open trial permit is taken by `poll_ready` and held until `call`; dropping
/// the service gives it back. `call` without `poll_ready` decides then, and forwards an
/// admitted call to the inner service as is.
pub struct BreakerService<S, C = ErrorsAsFailures> {
    inner: S,
    breaker: Breaker,
    classify: C,
    decision: Decision,
    /// The permit of a `Decision::TRIAL`; dropping it gives the permit back.
    trial: Option<Recorder>,
    /// The hint of a `Decision::REJECT`.
    retry_after: Option<Duration>,
    /// `Readiness::Wait` only, made on the first wait.
    waiter: Option<Pin<Box<Waiter>>>,
}

impl<S> BreakerService<S> {
    /// Guards `inner` with `breaker`, counting every `Err` as a failure.
    pub fn new(inner: S, breaker: Breaker) -> Self {
        Self {
            inner,
            breaker,
            classify: ErrorsAsFailures,
            decision: Decision::EMPTY,
            trial: None,
            retry_after: None,
            waiter: None,
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
            decision: self.decision,
            trial: self.trial,
            retry_after: self.retry_after,
            waiter: self.waiter,
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

    /// Decides the next call: the closed state inline, the rest out of line.
    #[inline(always)]
    fn decide(&mut self) -> Decision {
        match self.breaker.shared.admit_closed() {
            Some(epoch) => Decision::pass(epoch),
            None => self.decide_slow(),
        }
    }

    /// [`decide`](Self::decide) past the closed state.
    #[cold]
    #[inline(never)]
    fn decide_slow(&mut self) -> Decision {
        let admission = self.breaker.shared.admit();
        match admission {
            Admission::Pass { epoch } => Decision::pass(epoch),
            Admission::Trial { .. } => {
                self.trial = Recorder::new(self.breaker.core.shard(), admission);
                Decision::TRIAL
            }
            Admission::Reject { retry_after } => {
                self.retry_after = retry_after;
                Decision::REJECT
            }
            Admission::Shed { retry_after } => {
                self.retry_after = Some(retry_after);
                Decision::SHED
            }
        }
    }

    /// A call the breaker rejected: counted; the parts of a future that answers with
    /// [`Open`](super::error::Open) when polled.
    #[cold]
    #[inline(never)]
    fn reject(&mut self, shed: bool) -> (Recorder, Option<Duration>) {
        let core = &self.breaker.core;
        core.count_rejected(shed);
        let recorder = Recorder::rejected(core.lease(&self.breaker.shared));
        (recorder, self.retry_after.take())
    }

    /// `poll_ready` found the breaker rejecting: `Some` to answer now (ready, to fail
    /// fast; or pending, to wait), `None` when deciding again let the call through.
    #[cold]
    #[inline(never)]
    fn poll_rejecting(&mut self, cx: &mut Context<'_>) -> Option<Poll<Result<(), BoxError>>> {
        let shared = self.breaker.shared.clone();
        // A `Sleep` needs a runtime: outside one, fail fast rather than panic.
        if !shared.waits() || tokio::runtime::Handle::try_current().is_err() {
            return Some(Poll::Ready(Ok(())));
        }
        let mut waiter = self.waiter.take().unwrap_or_else(|| {
            Box::pin(Waiter {
                changed: shared.changed(),
                sleep: tokio::time::sleep_until(Instant::now()),
            })
        });
        let answer = self.wait(&shared, waiter.as_mut(), cx);
        self.waiter = Some(waiter);
        answer
    }

    fn wait(
        &mut self,
        shared: &Shared,
        mut waiter: Pin<&mut Waiter>,
        cx: &mut Context<'_>,
    ) -> Option<Poll<Result<(), BoxError>>> {
        // Each round either sees the call admitted, registers both wake-ups, or finds
        // its timer already due and decides again; a few rounds cover a racing
        // transition, and past them the task is woken at once rather than stalled.
        for _ in 0..4 {
            let mut w = waiter.as_mut().project();
            // Register for the next transition before deciding, so none is missed.
            if w.changed.as_mut().poll(cx).is_ready() {
                w.changed.set(shared.changed());
                let _ = w.changed.as_mut().poll(cx);
            }
            self.decision = self.decide();
            if self.decision != Decision::REJECT {
                return None;
            }
            let Some(delay) = shared.next_decision() else {
                return Some(Poll::Pending);
            };
            w.sleep.as_mut().reset(Instant::now() + delay);
            if w.sleep.poll(cx).is_pending() {
                return Some(Poll::Pending);
            }
        }
        cx.waker().wake_by_ref();
        Some(Poll::Pending)
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
            decision: Decision::EMPTY,
            trial: None,
            retry_after: None,
            waiter: None,
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
        // The common case inline: undecided, and closed.
        if self.decision == Decision::EMPTY {
            if let Some(epoch) = self.breaker.shared.admit_closed() {
                self.decision = Decision::pass(epoch);
                return self.poll_inner(cx);
            }
        }
        self.poll_ready_slow(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let mut decision = std::mem::replace(&mut self.decision, Decision::EMPTY);
        if decision == Decision::EMPTY {
            decision = self.decide();
        }
        let core = &self.breaker.core;
        let recorder = if let Some(epoch) = decision.as_pass() {
            Recorder::pass(core.lease(&self.breaker.shared), epoch)
        } else if decision == Decision::TRIAL {
            self.trial
                .take()
                .map_or_else(Recorder::idle, |mut recorder| {
                    recorder.restart();
                    recorder
                })
        } else {
            let shed = decision == Decision::SHED;
            let (recorder, retry_after) = self.reject(shed);
            return ResponseFuture::rejected(recorder, retry_after, shed, self.classify.clone());
        };
        ResponseFuture::called(self.inner.call(req), recorder, self.classify.clone())
    }
}

impl<S, C> BreakerService<S, C> {
    /// `poll_ready` past the common case: a decision to make again, or a breaker
    /// that is not closed.
    #[inline(never)]
    fn poll_ready_slow<Req>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        let stale = match self.decision {
            Decision::EMPTY => true,
            // A rejection is decided again: the breaker may have closed since (this
            // path is the slow one anyway).
            Decision::REJECT => true,
            // A pass from before a transition is decided again (the breaker may have
            // opened while the inner service was not ready).
            decision => decision
                .as_pass()
                .is_some_and(|epoch| !self.breaker.shared.is_current(epoch)),
        };
        if stale {
            self.decision = self.decide();
        }
        if self.decision == Decision::SHED {
            // Decided: the next call is shed, at once. Deciding again would draw
            // again, and shed less than the throttle means to.
            return Poll::Ready(Ok(()));
        }
        if self.decision == Decision::REJECT {
            if let Some(answer) = self.poll_rejecting(cx) {
                return answer;
            }
        }
        self.poll_inner(cx)
    }

    /// Polls the inner service for a call the breaker lets through.
    #[inline(always)]
    fn poll_inner<Req>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.inner_failed(e))),
        }
    }

    /// The inner service failed in `poll_ready`: the decision is void, and a trial
    /// permit goes back.
    #[cold]
    #[inline(never)]
    fn inner_failed(&mut self, e: impl Into<BoxError>) -> BoxError {
        self.decision = Decision::EMPTY;
        self.trial = None;
        e.into()
    }
}

/// Decides and makes one call at `call` time, for a service that can only pick its
/// breaker once it sees the request (the keyed service): `call` makes the inner call
/// if the breaker admits it. The closed path costs what `BreakerService::call` does.
#[inline]
pub(crate) fn call_through<F, C>(
    breaker: &Breaker,
    classify: C,
    call: impl FnOnce() -> F,
) -> ResponseFuture<F, C> {
    match admit(breaker) {
        Admitted::Call(recorder) => ResponseFuture::called(call(), recorder, classify),
        Admitted::Rejected {
            recorder,
            retry_after,
            shed,
        } => ResponseFuture::rejected(recorder, retry_after, shed, classify),
    }
}

/// What [`admit`] decided for one call.
pub(crate) enum Admitted {
    /// Make the call, and finish its recorder with its outcome.
    Call(Recorder),
    /// Rejected: the recorder names the breaker (see [`Recorder::reject`]).
    Rejected {
        recorder: Recorder,
        retry_after: Option<Duration>,
        shed: bool,
    },
}

/// Decides one call at `call` time: the admission behind [`call_through`], for
/// services that carry the recorder past the response future (gRPC, whose outcome
/// comes with the end of the body).
#[inline(always)]
pub(crate) fn admit(breaker: &Breaker) -> Admitted {
    let core = &breaker.core;
    let admission = breaker.shared.admit();
    match admission {
        Admission::Pass { epoch } => {
            Admitted::Call(Recorder::pass(core.lease(&breaker.shared), epoch))
        }
        Admission::Trial { .. } => {
            Admitted::Call(Recorder::new(core.shard(), admission).unwrap_or_else(Recorder::idle))
        }
        Admission::Reject { retry_after } => {
            core.count_rejected(false);
            Admitted::Rejected {
                recorder: Recorder::rejected(core.lease(&breaker.shared)),
                retry_after,
                shed: false,
            }
        }
        Admission::Shed { retry_after } => {
            core.count_rejected(true);
            Admitted::Rejected {
                recorder: Recorder::rejected(core.lease(&breaker.shared)),
                retry_after: Some(retry_after),
                shed: true,
            }
        }
    }
}
