//! How a call's result counts: [`Outcome`] and the [`Classify`] trait.
//!
//! Not every error means the downstream is unhealthy. A `404` from an HTTP API, a
//! validation error or a cancelled request say nothing about whether the next call will
//! work, and counting them would open a breaker on a healthy service. A classifier
//! decides, per result, whether it is a [`Outcome::Success`], a [`Outcome::Failure`],
//! or [`Outcome::Ignored`] (not counted at all).

/// How one call's result counts toward a breaker's rules or a retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The downstream did its job.
    Success,
    /// The downstream failed in a way that says something about its health.
    Failure,
    /// Neither: the call is not counted by any rule.
    Ignored,
}

/// Decides the [`Outcome`] of a call from its result.
///
/// Implemented for every `Fn(&Result<T, E>) -> Outcome`, so a closure is a classifier:
///
/// ```
/// use steadfast::{Classify, Outcome};
///
/// // A timeout-like error counts, a "not found" does not.
/// let classify = |result: &Result<u16, &str>| match result {
///     Ok(_) => Outcome::Success,
///     Err(e) if *e == "not found" => Outcome::Ignored,
///     Err(_) => Outcome::Failure,
/// };
/// assert_eq!(classify.classify(&Err("not found")), Outcome::Ignored);
/// assert_eq!(classify.classify(&Err("timed out")), Outcome::Failure);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot classify a `Result<{T}, {E}>`",
    label = "this classifier is for another response type",
    note = "the HTTP classifiers (`BreakerClassifier`, `RetryClassifier`, `TowerHttp`) classify `Result<http::Response<B>, E>`: use them on an HTTP client or server",
    note = "for other services pass a closure `|result: &Result<{T}, {E}>| -> Outcome`, or implement `Classify<{T}, {E}>`"
)]
pub trait Classify<T, E> {
    /// Classifies one result.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

#[diagnostic::do_not_recommend]
impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// The default classifier: `Ok` is a [`Outcome::Success`], `Err` a [`Outcome::Failure`].
///
/// ```
/// use steadfast::{Classify, ErrorsAsFailures, Outcome};
///
/// assert_eq!(ErrorsAsFailures.classify(&Ok::<_, ()>(1)), Outcome::Success);
/// assert_eq!(ErrorsAsFailures.classify(&Err::<(), _>("boom")), Outcome::Failure);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorsAsFailures;

impl<T, E> Classify<T, E> for ErrorsAsFailures {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_maps_ok_and_err() {
        assert_eq!(
            ErrorsAsFailures.classify(&Ok::<u8, u8>(0)),
            Outcome::Success
        );
        assert_eq!(
            ErrorsAsFailures.classify(&Err::<u8, u8>(0)),
            Outcome::Failure
        );
    }

    #[test]
    fn closures_classify() {
        let c = |r: &Result<u8, u8>| match r {
            Ok(0) => Outcome::Ignored,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        };
        assert_eq!(c.classify(&Ok(0)), Outcome::Ignored);
        assert_eq!(c.classify(&Ok(1)), Outcome::Success);
        assert_eq!(c.classify(&Err(1)), Outcome::Failure);
    }
}
