//! Walking an error's causes, for the checks that look for a breaker rejection or a
//! connect error wherever a layer in between wrapped it.

use std::error::Error;
use std::io;

use crate::breaker::error::Open;
use crate::BoxError;

/// How many links are followed, in case a hand-written `source` loops.
const MAX_CHAIN: usize = 64;

/// The error, then its causes down the `source` chain. An `io::Error`'s payload is
/// followed too (`io::Error::source` skips it, so `io::Error::other(open)` would
/// otherwise hide the rejection).
pub(crate) fn chain<'a>(
    error: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |&e| cause(e)).take(MAX_CHAIN)
}

fn cause<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a (dyn Error + 'static)> {
    match e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
        Some(payload) => Some(payload as &(dyn Error + 'static)),
        None => e.source(),
    }
}

/// A generic error as a `dyn Error`, when it is one of the types a stack passes
/// between layers: a [`BoxError`], an `io::Error`, or a breaker's [`Open`].
pub(crate) fn as_dyn<E: 'static>(error: &E) -> Option<&(dyn Error + 'static)> {
    let any: &dyn std::any::Any = error;
    if let Some(boxed) = any.downcast_ref::<BoxError>() {
        Some(boxed.as_ref())
    } else if let Some(io) = any.downcast_ref::<io::Error>() {
        Some(io)
    } else {
        any.downcast_ref::<Open>()
            .map(|open| open as &(dyn Error + 'static))
    }
}
