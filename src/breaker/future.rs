//! [`ResponseFuture`], the future returned by [`BreakerService`](super::BreakerService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

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
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called {
            #[pin]
            future: F,
            recorder: Recorder,
            classify: C,
        },
        Rejected {
            // Boxed once at `call`, where it would be boxed on return anyway; `None`
            // once returned.
            error: Option<BoxError>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline(always)]
    pub(crate) fn called(future: F, recorder: Recorder, classify: C) -> Self {
        Self {
            kind: Kind::Called {
                future,
                recorder,
                classify,
            },
        }
    }

    pub(crate) fn rejected(error: Open) -> Self {
        Self {
            kind: Kind::Rejected {
                error: Some(error.into()),
            },
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

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                recorder,
                classify,
            } => {
                let result = ready!(future.poll(cx));
                recorder.finish(classify.classify(&result));
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "breaker response future polled after completion".into()))),
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Called { .. } => f.write_str("ResponseFuture::Called"),
            Kind::Rejected { error } => f
                .debug_tuple("ResponseFuture::Rejected")
                .field(error)
                .finish(),
        }
    }
}
