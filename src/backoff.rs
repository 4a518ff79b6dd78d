//! Delays that grow, with jitter: [`Backoff`] and [`Jitter`].
//!
//! One type serves every place steadfast waits: the delay between retries, how long a
//! breaker stays open after each trip in a row, and the spacing of a watchdog's probes.
//! A backoff is only a recipe; [`Backoff::iter`] gives the delays attempt by attempt as
//! an ordinary [`Iterator`], so it can be inspected, tested and reused anywhere.
//!
//! # Why jitter?
//!
//! When a downstream fails, every client sees it fail at the same moment. Without
//! jitter they all wait the same delay and come back together, in waves that keep the
//! downstream down. Spreading the delays at random breaks the waves up; the variants
//! follow the AWS article "Exponential Backoff and Jitter" (Marc Brooker, 2015).
//!
//! Jitter is random, which makes tests awkward; [`Backoff::seed`] fixes the sequence.
//!
//! ```
//! use std::time::Duration;
//! use steadfast::backoff::{Backoff, Jitter};
//!
//! let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
//! let delays: Vec<_> = backoff.iter().take(5).collect();
//! assert_eq!(delays, [100, 200, 400, 800, 1000].map(Duration::from_millis));
//!
//! // Full jitter: each delay is anywhere in [0, the delay above], the same for a seed.
//! let jittered = backoff.jitter(Jitter::Full).seed(7);
//! let a: Vec<_> = jittered.iter().take(5).collect();
//! let b: Vec<_> = jittered.iter().take(5).collect();
//! assert_eq!(a, b);
//! assert!(a.iter().zip(&delays).all(|(j, d)| j <= d));
//! ```

use std::time::Duration;

use crate::config::{ConfigError, MAX_DURATION};
use crate::nanos::nanos;

/// How a delay is randomized. See the [module docs](self) for why.
///
/// With `d` the un-jittered delay of an attempt (`base × factor^attempt`, capped at
/// `max`):
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// Exactly `d`. The default.
    #[default]
    None,
    /// Uniform in `[0, d]`: the widest spread, and the least total work for the
    /// downstream, but a delay can be close to zero.
    Full,
    /// Uniform in `[d / 2, d]`: always waits at least half.
    Equal,
    /// `min(max, uniform in [base, 3 × previous delay])`, starting from `base`: each
    /// delay depends on the one before, not on the attempt number. Ignores `factor`.
    /// Always in `[base, max]`.
    Decorrelated,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Exponential {
        base: Duration,
        max: Duration,
        factor: f64,
    },
    Constant(Duration),
}

/// A recipe for delays: exponential or constant, optionally jittered and seeded.
///
/// Build one with [`Backoff::exponential`] or [`Backoff::constant`], adjust it with
/// the consuming setters, and read the delays with [`Backoff::iter`]. The iterator
/// never ends; whoever uses it decides how many attempts to make.
///
/// A backoff is checked where it is used: a `build()` that takes one returns a
/// [`ConfigError`] when its base exceeds its max, its factor is below 1, or a delay is
/// longer than a day. The iterator itself never panics, whatever the values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    shape: Shape,
    jitter: Jitter,
    seed: Option<u64>,
}

impl Backoff {
    /// Delays of `base`, `base × 2`, `base × 4`, ... capped at `max`.
    ///
    /// Defaults: factor 2 ([`Backoff::factor`]), no jitter ([`Backoff::jitter`]), a
    /// random seed ([`Backoff::seed`]).
    pub const fn exponential(base: Duration, max: Duration) -> Self {
        Self {
            shape: Shape::Exponential {
                base,
                max,
                factor: 2.0,
            },
            jitter: Jitter::None,
            seed: None,
        }
    }

    /// The same `delay` every time (jitter still applies, within `[0, delay]`).
    pub const fn constant(delay: Duration) -> Self {
        Self {
            shape: Shape::Constant(delay),
            jitter: Jitter::None,
            seed: None,
        }
    }

    /// The growth factor of an exponential backoff (default 2; must be at least 1).
    /// A constant backoff ignores it.
    pub const fn factor(mut self, factor: f64) -> Self {
        if let Shape::Exponential { base, max, .. } = self.shape {
            self.shape = Shape::Exponential { base, max, factor };
        }
        self
    }

    /// How each delay is randomized (default [`Jitter::None`]).
    pub const fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The seed set with [`seed`](Self::seed), if any.
    pub(crate) const fn seed_value(&self) -> Option<u64> {
        self.seed
    }

    /// Fixes the jitter's random sequence: the same seed gives the same delays.
    /// Without it, each iterator draws a fresh random seed.
    pub const fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The first delay before jitter (`base`, or the constant delay).
    pub const fn base(&self) -> Duration {
        match self.shape {
            Shape::Exponential { base, .. } => base,
            Shape::Constant(delay) => delay,
        }
    }

    /// The largest delay the backoff can give (`max`, or the constant delay).
    pub const fn max(&self) -> Duration {
        match self.shape {
            Shape::Exponential { max, .. } => max,
            Shape::Constant(delay) => delay,
        }
    }

    /// The jitter in use. (A value that is its own builder reads its settings with
    /// `get_`: [`jitter`](Self::jitter) sets it.)
    pub const fn get_jitter(&self) -> Jitter {
        self.jitter
    }

    /// The jitter in use.
    #[deprecated(
        since = "0.2.0",
        note = "renamed `get_jitter`, as `RetryPolicy::get_budget`"
    )]
    pub const fn jitter_kind(&self) -> Jitter {
        self.jitter
    }

    /// The delays, attempt by attempt. The iterator is endless.
    pub fn iter(&self) -> Iter {
        self.iter_stream(0)
    }

    /// The delays of the independent sequence number `stream`.
    ///
    /// With a seed, each stream is its own reproducible sequence, and stream 0 is the
    /// one [`iter`](Self::iter) gives. Clients sharing one seeded backoff should each
    /// take their own stream: with the same sequence they would all retry in lockstep,
    /// which is what jitter is there to prevent. The retry layer gives each request
    /// that retries the next stream. Without a seed this is [`iter`](Self::iter).
    ///
    /// ```
    /// use std::time::Duration;
    /// use steadfast::backoff::{Backoff, Jitter};
    ///
    /// let backoff = Backoff::constant(Duration::from_secs(1))
    ///     .jitter(Jitter::Full)
    ///     .seed(7);
    /// let first: Vec<_> = backoff.iter_stream(1).take(4).collect();
    /// assert_eq!(first, backoff.iter_stream(1).take(4).collect::<Vec<_>>());
    /// assert_ne!(first, backoff.iter_stream(2).take(4).collect::<Vec<_>>());
    /// ```
    pub fn iter_stream(&self, stream: u64) -> Iter {
        let rng = match self.seed {
            Some(seed) if stream == 0 => fastrand::Rng::with_seed(seed),
            Some(seed) => fastrand::Rng::with_seed(mix(seed ^ mix(stream))),
            None => fastrand::Rng::new(),
        };
        Iter {
            backoff: *self,
            attempt: 0,
            prev: nanos(self.base()),
            rng,
        }
    }

    /// Checks the backoff can work; `field` names the setting it was given to.
    /// `allow_zero` permits a zero base (a retry may legitimately not wait).
    pub(crate) fn validate(
        &self,
        field: &'static str,
        allow_zero: bool,
    ) -> Result<(), ConfigError> {
        let (base, max) = (self.base(), self.max());
        if !allow_zero && base.is_zero() {
            return Err(ConfigError::new(field, "base delay must be above zero"));
        }
        if base > max {
            return Err(ConfigError::new(
                field,
                format!("base delay {base:?} exceeds the max {max:?}"),
            ));
        }
        if max > MAX_DURATION {
            return Err(ConfigError::new(
                field,
                format!("max delay must be at most one day, got {max:?}"),
            ));
        }
        if let Shape::Exponential { factor, .. } = self.shape {
            if !(factor >= 1.0 && factor.is_finite()) {
                return Err(ConfigError::new(
                    field,
                    format!("factor must be a finite number of at least 1, got {factor}"),
                ));
            }
        }
        Ok(())
    }
}

/// SplitMix64's finalizer: spreads consecutive stream numbers over unrelated seeds.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl IntoIterator for &Backoff {
    type Item = Duration;
    type IntoIter = Iter;

    fn into_iter(self) -> Iter {
        self.iter()
    }
}

/// The endless iterator of a [`Backoff`]'s delays, from [`Backoff::iter`].
#[derive(Debug, Clone)]
pub struct Iter {
    backoff: Backoff,
    attempt: u32,
    /// The previous delay in nanoseconds, for decorrelated jitter.
    prev: u64,
    rng: fastrand::Rng,
}

impl Iter {
    /// Starts over from the first delay. The random sequence goes on where it was, so
    /// a seeded backoff does not repeat the same jitter after a reset.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.prev = nanos(self.backoff.base());
    }

    /// How many delays have been given since the start or the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    fn undithered(&self) -> u64 {
        match self.backoff.shape {
            Shape::Constant(delay) => nanos(delay),
            Shape::Exponential { base, max, factor } => {
                let exp = i32::try_from(self.attempt).unwrap_or(i32::MAX);
                let d = nanos(base) as f64 * factor.powi(exp);
                // `as` saturates (and maps NaN to 0), so this never overflows.
                (d as u64).min(nanos(max))
            }
        }
    }
}

impl Iterator for Iter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.undithered();
        let out = match self.backoff.jitter {
            Jitter::None => d,
            Jitter::Full => self.rng.u64(0..=d),
            Jitter::Equal => d / 2 + self.rng.u64(0..=d - d / 2),
            Jitter::Decorrelated => {
                let base = nanos(self.backoff.base());
                let cap = nanos(self.backoff.max());
                let hi = self.prev.saturating_mul(3).max(base);
                self.rng.u64(base..=hi).min(cap)
            }
        };
        self.prev = out;
        self.attempt = self.attempt.saturating_add(1);
        Some(Duration::from_nanos(out))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn exponential_doubles_to_the_cap() {
        let got: Vec<_> = Backoff::exponential(ms(10), ms(100))
            .iter()
            .take(6)
            .collect();
        assert_eq!(got, [10, 20, 40, 80, 100, 100].map(ms));
    }

    #[test]
    fn factor_changes_growth() {
        let got: Vec<_> = Backoff::exponential(ms(10), ms(1000))
            .factor(3.0)
            .iter()
            .take(4)
            .collect();
        assert_eq!(got, [10, 30, 90, 270].map(ms));
    }

    #[test]
    fn constant_is_constant() {
        let got: Vec<_> = Backoff::constant(ms(7)).iter().take(3).collect();
        assert_eq!(got, [7, 7, 7].map(ms));
    }

    #[test]
    fn the_delays_never_end() {
        let mut delays = Backoff::exponential(ms(1), ms(2)).iter();
        assert_eq!(delays.size_hint(), (usize::MAX, None));
        assert_eq!(delays.nth(10_000), Some(ms(2)));
        assert_eq!(delays.size_hint(), (usize::MAX, None));
    }

    #[test]
    fn every_stream_of_a_seed_is_its_own() {
        // Whatever the seed's bits (all ones included), the streams' first delays
        // differ: the stream number is mixed into the seed, not masked by it.
        for seed in [0, 1, 42, u64::MAX] {
            let backoff = Backoff::constant(Duration::from_secs(1))
                .jitter(Jitter::Full)
                .seed(seed);
            let firsts: std::collections::HashSet<Duration> = (0..256)
                .map(|stream| backoff.iter_stream(stream).next().unwrap())
                .collect();
            assert_eq!(firsts.len(), 256, "seed {seed}");
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut it = Backoff::exponential(ms(1), ms(100)).iter();
        it.by_ref().take(4).for_each(drop);
        assert_eq!(it.attempt(), 4);
        it.reset();
        assert_eq!(it.next(), Some(ms(1)));
    }

    #[test]
    fn no_panic_on_nonsense() {
        // base above max, zero everything, NaN factor: no panic, all within the cap.
        for b in [
            Backoff::exponential(ms(100), ms(10)),
            Backoff::exponential(Duration::ZERO, Duration::ZERO),
            Backoff::exponential(ms(1), ms(5)).factor(f64::NAN),
            Backoff::exponential(Duration::MAX, Duration::MAX).factor(f64::INFINITY),
        ] {
            for j in [
                Jitter::None,
                Jitter::Full,
                Jitter::Equal,
                Jitter::Decorrelated,
            ] {
                let b = b.jitter(j).seed(1);
                for d in b.iter().take(100) {
                    assert!(d <= b.max().max(b.base()), "{b:?} gave {d:?}");
                }
            }
        }
    }

    #[test]
    fn validate_names_the_field() {
        let err = Backoff::exponential(ms(100), ms(10))
            .validate("open_backoff", false)
            .unwrap_err();
        assert_eq!(err.field(), "open_backoff");
        assert!(Backoff::exponential(ms(1), ms(10))
            .factor(0.5)
            .validate("x", false)
            .is_err());
        assert!(Backoff::constant(Duration::ZERO)
            .validate("x", false)
            .is_err());
        assert!(Backoff::constant(Duration::ZERO)
            .validate("x", true)
            .is_ok());
        assert!(Backoff::constant(Duration::from_secs(86_401))
            .validate("x", true)
            .is_err());
    }

    fn jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated)
        ]
    }

    proptest! {
        #[test]
        fn delays_stay_in_bounds(
            base in 1u64..10_000,
            extra in 0u64..1_000_000,
            factor in 1.0f64..8.0,
            jitter in jitter(),
            seed: u64,
        ) {
            let (base, max) = (Duration::from_micros(base), Duration::from_micros(base + extra));
            let b = Backoff::exponential(base, max).factor(factor).jitter(jitter).seed(seed);
            for (n, d) in b.iter().take(64).enumerate() {
                let plain = (base.as_nanos() as f64 * factor.powi(n as i32))
                    .min(max.as_nanos() as f64) as u128;
                let d = d.as_nanos();
                prop_assert!(d <= max.as_nanos(), "attempt {n}: {d} above max");
                match jitter {
                    Jitter::None => prop_assert_eq!(d, plain),
                    Jitter::Full => prop_assert!(d <= plain),
                    Jitter::Equal => prop_assert!(d >= plain / 2 && d <= plain),
                    Jitter::Decorrelated => prop_assert!(d >= base.as_nanos()),
                }
            }
        }

        #[test]
        fn same_seed_same_delays(
            base in 1u64..10_000,
            extra in 0u64..1_000_000,
            jitter in jitter(),
            seed: u64,
        ) {
            let b = Backoff::exponential(Duration::from_micros(base), Duration::from_micros(base + extra))
                .jitter(jitter)
                .seed(seed);
            let a: Vec<_> = b.iter().take(32).collect();
            let c: Vec<_> = b.iter().take(32).collect();
            prop_assert_eq!(a, c);
        }

        #[test]
        fn constant_jitter_within_delay(delay in 0u64..1_000_000, jitter in jitter(), seed: u64) {
            let delay = Duration::from_micros(delay);
            for d in Backoff::constant(delay).jitter(jitter).seed(seed).iter().take(32) {
                prop_assert!(d <= delay);
                if jitter == Jitter::Equal { prop_assert!(d >= delay / 2); }
                if matches!(jitter, Jitter::None | Jitter::Decorrelated) { prop_assert_eq!(d, delay); }
            }
        }
    }
}
