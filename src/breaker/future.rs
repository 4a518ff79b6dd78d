//! [`ResponseFuture`], the future returned by [`BreakerService`](super::BreakerService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use super::error::Open;
use super::machine::Recorder;
use crate::{BoxError, Classify};

pin_project! {
    /// The response future of [`BreakerService`](super::BreakerService): the inner
    /// call, whose outcome it counts when it completes, or an immediate rejection.
    ///
    /// Dropping it before it completes counts nothing; a half-open trial gives its
    /// permit back.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        // Outside `kind`, so that dropping a finished future only checks that its
        // recorder is spent; a rejection's recorder holds the breaker's shard, for
        // its name.
        recorder: Recorder,
        classify: C,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called {
            #[pin]
            future: F,
        },
        Rejected {
            retry_after: Option<Duration>,
            shed: bool,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline(always)]
    pub(crate) fn called(future: F, recorder: Recorder, classify: C) -> Self {
        Self {
            kind: Kind::Called { future },
            recorder,
            classify,
        }
    }

    /// A rejection; `recorder` (see [`Recorder::rejected`]) names the breaker.
    pub(crate) fn rejected(
        recorder: Recorder,
        retry_after: Option<Duration>,
        shed: bool,
        classify: C,
    ) -> Self {
        Self {
            kind: Kind::Rejected { retry_after, shed },
            recorder,
            classify,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Called { future } => {
                let Poll::Ready(result) = future.poll(cx) else {
                    this.recorder.waited();
                    return Poll::Pending;
                };
                this.recorder.finish(this.classify.classify(&result));
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { retry_after, shed } => {
                Poll::Ready(Err(rejection(this.recorder, *retry_after, *shed)))
            }
        }
    }
}

/// The error of a rejected call, once; out of line so that the closed path stays small
/// enough to be inlined into the caller's loop.
#[cold]
#[inline(never)]
pub(crate) fn rejection(
    recorder: &mut Recorder,
    retry_after: Option<Duration>,
    shed: bool,
) -> BoxError {
    match recorder.reject() {
        Some(name) if shed => Open::shed(name, retry_after).into(),
        Some(name) => Open::new(name, retry_after).into(),
        None => "breaker response future polled after completion".into(),
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Called { .. } => f.write_str("ResponseFuture::Called"),
            Kind::Rejected { retry_after, shed } => f
                .debug_struct("ResponseFuture::Rejected")
                .field("retry_after", retry_after)
                .field("shed", shed)
                .finish(),
        }
    }
}
