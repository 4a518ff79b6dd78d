//! The checks behind the fuzz targets (`fuzz/fuzz_targets/*.rs`) and their short
//! proptest versions (`tests/fuzz_inputs.rs`): each takes raw bytes, decodes them into
//! settings biased toward the edges (zero, the limits, one past them, NaN, infinities,
//! `Duration::MAX`), feeds them to a parser or builder, and checks that nothing panics
//! and that the result is the documented one: `Ok` exactly when every setting is
//! within its documented range, else a `ConfigError` naming one of the settings out
//! of range.
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use steadfast::backoff::{Backoff, Jitter};
use steadfast::breaker::{Breaker, BreakerBuilder, BreakerService};
use steadfast::retry::{Budget, RetryLayer, RetryPolicy};
use steadfast::watchdog::Watchdog;
use steadfast::{ConfigError, Outcome};
use tower::Service;

pub const DAY: Duration = Duration::from_secs(86_400);

/// Reads settings from fuzz bytes; past the end every read gives zero.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input(data)
    }

    pub fn rest(&self) -> &'a [u8] {
        self.0
    }

    pub fn u8(&mut self) -> u8 {
        match self.0 {
            [b, rest @ ..] => {
                self.0 = rest;
                *b
            }
            [] => 0,
        }
    }

    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0, |n, _| n << 8 | u64::from(self.u8()))
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u32(&mut self) -> u32 {
        match self.u8() % 10 {
            0 => 0,
            1 => 1,
            2 => 1_000,
            3 => 1_001,
            4 => 100_000,
            5 => 100_001,
            6 => u32::MAX,
            7 => u32::from(self.u8()),
            _ => self.u64() as u32,
        }
    }

    pub fn f64(&mut self) -> f64 {
        match self.u8() % 16 {
            0 => 0.0,
            1 => -0.0,
            2 => 1.0,
            3 => 0.5,
            4 => f64::NAN,
            5 => f64::INFINITY,
            6 => f64::NEG_INFINITY,
            7 => f64::MIN_POSITIVE,
            8 => 1.0 + f64::EPSILON,
            9 => 1_000.0,
            10 => 1_000.000_1,
            11 => -1.0,
            12 => f64::from(self.u8()) / 255.0,
            _ => f64::from_bits(self.u64()),
        }
    }

    pub fn duration(&mut self) -> Duration {
        let ms = Duration::from_millis;
        match self.u8() % 14 {
            0 => Duration::ZERO,
            1 => Duration::from_nanos(1),
            2 => ms(10) - Duration::from_nanos(1),
            3 => ms(10),
            4 => ms(100) - Duration::from_nanos(1),
            5 => ms(100),
            6 => DAY,
            7 => DAY + Duration::from_nanos(1),
            8 => Duration::MAX,
            9 => ms(u64::from(self.u8())),
            10 => Duration::from_secs(u64::from(self.u8())),
            _ => Duration::new(self.u64(), self.u64() as u32 % 1_000_000_000),
        }
    }

    pub fn jitter(&mut self) -> Jitter {
        match self.u8() % 4 {
            0 => Jitter::None,
            1 => Jitter::Full,
            2 => Jitter::Equal,
            _ => Jitter::Decorrelated,
        }
    }

    pub fn option<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        self.bool().then(|| f(self))
    }

    pub fn backoff(&mut self) -> BackoffInput {
        BackoffInput {
            exponential: self.bool(),
            base: self.duration(),
            max: self.duration(),
            factor: self.option(Self::f64),
            jitter: self.jitter(),
            seed: self.option(Self::u64),
        }
    }
}

/// A backoff's settings, kept so the expected validity can be worked out.
#[derive(Debug, Clone, Copy)]
pub struct BackoffInput {
    exponential: bool,
    base: Duration,
    max: Duration,
    factor: Option<f64>,
    jitter: Jitter,
    seed: Option<u64>,
}

impl BackoffInput {
    pub fn build(&self) -> Backoff {
        let mut b = if self.exponential {
            Backoff::exponential(self.base, self.max)
        } else {
            Backoff::constant(self.base)
        };
        if let Some(f) = self.factor {
            b = b.factor(f);
        }
        b = b.jitter(self.jitter);
        if let Some(seed) = self.seed {
            b = b.seed(seed);
        }
        b
    }

    /// Documented: a base above zero (unless a zero wait is allowed), at most the max,
    /// a max of at most a day, and a finite factor of at least 1.
    pub fn is_valid(&self, allow_zero: bool) -> bool {
        let max = if self.exponential {
            self.max
        } else {
            self.base
        };
        let factor = if self.exponential {
            self.factor.unwrap_or(2.0)
        } else {
            1.0
        };
        (allow_zero || !self.base.is_zero())
            && self.base <= max
            && max <= DAY
            && factor.is_finite()
            && factor >= 1.0
    }
}

fn rate_ok(r: f64) -> bool {
    r > 0.0 && r <= 1.0
}

fn duration_ok(d: Duration) -> bool {
    !d.is_zero() && d <= DAY
}

/// `Ok` exactly when `bad` is empty, else an error naming one of `bad`.
fn expect_split<T>(what: &str, result: Result<T, ConfigError>, bad: &[&str]) -> Option<T> {
    match result {
        Ok(v) => {
            assert!(
                bad.is_empty(),
                "{what}: accepted although {bad:?} are invalid"
            );
            Some(v)
        }
        Err(e) => {
            assert!(
                bad.contains(&e.field()),
                "{what}: refused with {e} but the invalid settings are {bad:?}"
            );
            assert!(e.to_string().contains(e.field()), "{e}");
            None
        }
    }
}

// --- Retry-After -------------------------------------------------------------------------

/// Any header bytes, as of any time: `None` or a wait of at most a day, never a panic.
#[cfg(feature = "http")]
pub fn retry_after(data: &[u8]) {
    use std::time::UNIX_EPOCH;
    use steadfast::http::retry_after::{parse_retry_after, retry_after, MAX_RETRY_AFTER};

    let mut input = Input::new(data);
    let now = UNIX_EPOCH + Duration::from_secs(input.u64() % 300_000_000_000);
    let bytes = input.rest();
    let Ok(value) = http::HeaderValue::from_bytes(bytes) else {
        return;
    };
    let parsed = parse_retry_after(&value, now);
    if let Some(wait) = parsed {
        assert!(wait <= MAX_RETRY_AFTER, "{value:?} gave {wait:?}");
    }
    // Digits (after trimming spaces and tabs) are delta-seconds; nothing else numeric is.
    let trimmed = String::from_utf8_lossy(bytes);
    let trimmed = trimmed.trim_matches([' ', '\t']);
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let secs = trimmed.parse::<u64>().unwrap_or(u64::MAX);
        let expected = Duration::from_secs(secs).min(MAX_RETRY_AFTER);
        assert_eq!(parsed, Some(expected), "{value:?}");
    } else if trimmed.starts_with(|c: char| c.is_ascii_digit()) || trimmed.is_empty() {
        assert_eq!(parsed, None, "{value:?}");
    }
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::RETRY_AFTER, value);
    assert_eq!(retry_after(&headers, now), parsed);
}

// --- breaker builder ---------------------------------------------------------------------

/// Any breaker settings: the documented `Ok` / `ConfigError` split, and a built breaker
/// survives a few calls, forced states and a reset.
pub fn breaker_builder(data: &[u8]) {
    let mut input = Input::new(data);
    let consecutive = input.option(Input::u32);
    let rate = input.option(Input::f64);
    let slow = input.option(|i| (i.duration(), i.f64()));
    let count_window = input.option(Input::u32);
    let time_window = input.option(Input::duration);
    let min_calls = input.option(Input::u32);
    let half_open_calls = input.option(Input::u32);
    let half_open_timeout = input.option(Input::duration);
    let backoff = input.option(Input::backoff);
    let start_open = input.bool();

    let mut b: BreakerBuilder = Breaker::builder("fuzz");
    let mut bad = Vec::new();
    if let Some(n) = consecutive {
        b = b.consecutive_failures(n);
        if n == 0 {
            bad.push("consecutive_failures");
        }
    }
    if let Some(r) = rate {
        b = b.failure_rate(r);
        if !rate_ok(r) {
            bad.push("failure_rate");
        }
    }
    if let Some((t, r)) = slow {
        b = b.slow_calls(t, r);
        if !duration_ok(t) || !rate_ok(r) {
            bad.push("slow_calls");
        }
    }
    if let Some(n) = count_window {
        b = b.count_window(n);
        if n == 0 || n > 100_000 {
            bad.push("count_window");
        }
    }
    if let Some(t) = time_window {
        b = b.time_window(t);
        if !duration_ok(t) || t < Duration::from_millis(10) || count_window.is_some() {
            bad.push("time_window");
        }
    }
    if let Some(m) = min_calls {
        b = b.min_calls(m);
        if m == 0 {
            bad.push("min_calls");
        }
    }
    if let Some(n) = half_open_calls {
        b = b.half_open_calls(n);
        if n == 0 || n > 1_000 {
            bad.push("half_open_calls");
        }
    }
    if let Some(t) = half_open_timeout {
        b = b.half_open_timeout(t);
        if !duration_ok(t) {
            bad.push("half_open_timeout");
        }
    }
    if let Some(backoff) = backoff {
        b = b.open_backoff(backoff.build());
        if !backoff.is_valid(false) {
            bad.push("open_backoff");
        }
    }
    if start_open {
        b = b.start_open();
    }
    // No rule set means the default rules, a rate rule among them.
    let explicit = consecutive.is_some() || rate.is_some() || slow.is_some();
    let has_rate = !explicit || rate.is_some() || slow.is_some();
    if has_rate {
        // The defaults count over a 4 s time window unless a count window is set; a
        // rate rule set with no window counts the last 100 calls.
        let window = match (time_window, count_window) {
            (Some(_), _) => None,
            (None, Some(n)) => Some(n),
            (None, None) if explicit => Some(100),
            (None, None) => None,
        };
        if let (Some(m), Some(n)) = (min_calls, window) {
            if m > n {
                bad.push("min_calls");
            }
        }
    } else {
        // A window or min_calls with no rate rule to use it.
        for (set, name) in [
            (count_window.is_some(), "count_window"),
            (time_window.is_some(), "time_window"),
            (min_calls.is_some(), "min_calls"),
        ] {
            if set {
                bad.push(name);
            }
        }
    }
    let debug = format!("{b:?}");
    let Some(breaker) = expect_split(&debug, b.build(), &bad) else {
        return;
    };

    // Drive calls by hand (every future is ready at once).
    let inner = tower::service_fn(|ok: Option<bool>| async move {
        match ok {
            Some(true) => Ok(()),
            Some(false) => Err("failed"),
            None => Err("ignored"),
        }
    });
    let classify = |r: &Result<(), &'static str>| match r {
        Ok(()) => Outcome::Success,
        Err("ignored") => Outcome::Ignored,
        Err(_) => Outcome::Failure,
    };
    let mut svc = BreakerService::new(inner, breaker.clone()).classify(classify);
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    for _ in 0..input.u8() {
        match input.u8() % 8 {
            0 => breaker.force_open(),
            1 => breaker.force_closed(),
            2 => breaker.reset(),
            n => {
                assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
                let ok = [Some(true), Some(false), None][usize::from(n) % 3];
                let fut = pin!(svc.call(ok));
                assert!(fut.poll(&mut cx).is_ready());
            }
        }
        let snap = breaker.snapshot();
        assert_eq!(snap.calls, snap.successes + snap.failures + snap.ignored);
        if let Some(rate) = snap.failure_rate {
            assert!((0.0..=1.0).contains(&rate), "{snap:?}");
        }
    }
}

// --- backoff -----------------------------------------------------------------------------

/// Any backoff: iterating never panics; a valid one stays within `[0, max]`, and a
/// decorrelated one within `[base, max]`.
pub fn backoff(data: &[u8]) {
    let mut input = Input::new(data);
    let settings = input.backoff();
    let take = usize::from(input.u8()) * 8;
    let backoff = settings.build();
    let valid = settings.is_valid(true);
    // The breaker's open backoff is the strictest user of a backoff: it checks it.
    let accepted = Breaker::builder("fuzz")
        .open_backoff(backoff)
        .build()
        .is_ok();
    assert_eq!(accepted, settings.is_valid(false), "{backoff:?}");
    let mut iter = backoff.iter();
    for (n, d) in iter.by_ref().take(take).enumerate() {
        if valid {
            assert!(d <= backoff.max(), "{backoff:?}: delay {n} is {d:?}");
            if backoff.get_jitter() == Jitter::Decorrelated {
                assert!(d >= backoff.base(), "{backoff:?}: delay {n} is {d:?}");
            }
        }
    }
    assert_eq!(iter.attempt() as usize, take);
    iter.reset();
    assert_eq!(iter.attempt(), 0);
    let _ = iter.next();
    if backoff.get_jitter() == Jitter::None && valid {
        // Without jitter the same backoff gives the same delays.
        let a: Vec<_> = backoff.iter().take(16).collect();
        let b: Vec<_> = backoff.iter().take(16).collect();
        assert_eq!(a, b);
    }
}

// --- retry budget and policy -------------------------------------------------------------

/// Any budget: `Ok` exactly for a ratio in `[0, 1000]` and a ttl from 100 ms to a day.
pub fn budget(data: &[u8]) {
    let mut input = Input::new(data);
    let (ratio, min_per_sec, ttl) = (input.f64(), input.u32(), input.duration());
    let ratio_ok = (0.0..=1000.0).contains(&ratio);
    let ttl_ok = ttl >= Duration::from_millis(100) && ttl <= DAY;
    // The first bad value is named: the ratio is checked first.
    let bad: &[&str] = match (ratio_ok, ttl_ok) {
        (true, true) => &[],
        (false, _) => &["ratio"],
        (true, false) => &["ttl"],
    };
    let what = format!("Budget::new({ratio}, {min_per_sec}, {ttl:?})");
    if let Some(budget) = expect_split(&what, Budget::new(ratio, min_per_sec, ttl), bad) {
        let balance = budget.balance().expect("a limited budget has a balance");
        assert!(balance.is_finite() && balance >= 0.0, "{what}: {balance}");
    }
}

/// Any retry policy: `Ok` exactly for 1 to 100 attempts, a valid backoff (a zero base
/// allowed) and a `max_elapsed` from above zero to a day.
pub fn retry_policy(data: &[u8]) {
    let mut input = Input::new(data);
    let attempts = input.option(Input::u32);
    let backoff = input.option(Input::backoff);
    let max_elapsed = input.option(Input::duration);
    let mut policy = RetryPolicy::new();
    let mut bad = Vec::new();
    if let Some(n) = attempts {
        policy = policy.max_attempts(n);
        if n == 0 || n > 100 {
            bad.push("max_attempts");
        }
    }
    if let Some(b) = backoff {
        policy = policy.backoff(b.build());
        if !b.is_valid(true) {
            bad.push("backoff");
        }
    }
    if let Some(d) = max_elapsed {
        policy = policy.max_elapsed(d);
        if !duration_ok(d) {
            bad.push("max_elapsed");
        }
    }
    let what = format!("{policy:?}");
    expect_split(&what, RetryLayer::new(policy), &bad);
}

// --- watchdog builder --------------------------------------------------------------------

/// Any watchdog settings: `Ok` exactly for durations from above zero to a day, periods
/// of at least 1 ms, a valid backoff (base at least 1 ms), thresholds from 1 to 1,000
/// and a trip count of at least 1.
pub fn watchdog_builder(data: &[u8]) {
    let mut input = Input::new(data);
    let breaker = Breaker::new("fuzz");
    let probe = || async { Ok::<(), std::io::Error>(()) };
    let mut b = Watchdog::builder(&breaker, probe);
    let mut bad = Vec::new();
    let duration = |input: &mut Input<'_>, name: &'static str, bad: &mut Vec<_>| {
        let d = input.duration();
        if !duration_ok(d) {
            bad.push(name);
        }
        d
    };
    // A period between probes is also at least 1 ms (no busy loop).
    let period = |input: &mut Input<'_>, name: &'static str, bad: &mut Vec<_>| {
        let d = input.duration();
        if !duration_ok(d) || d < Duration::from_millis(1) {
            bad.push(name);
        }
        d
    };
    if input.bool() {
        b = b.interval(period(&mut input, "interval", &mut bad));
    }
    if input.bool() {
        b = b.timeout(duration(&mut input, "timeout", &mut bad));
    }
    if input.bool() {
        b = b.probe_while_closed(period(&mut input, "probe_while_closed", &mut bad));
    }
    if let Some(backoff) = input.option(Input::backoff) {
        let built = backoff.build();
        b = b.backoff(built);
        if !backoff.is_valid(false) || built.base() < Duration::from_millis(1) {
            bad.push("backoff");
        }
    }
    if let Some(n) = input.option(Input::u32) {
        b = b.healthy_threshold(n);
        if n == 0 || n > 1_000 {
            bad.push("healthy_threshold");
        }
    }
    if let Some(n) = input.option(Input::u32) {
        b = b.unhealthy_threshold(n);
        if n == 0 || n > 1_000 {
            bad.push("unhealthy_threshold");
        }
    }
    if input.bool() {
        let n = input.u32();
        let within = duration(&mut input, "max_trips", &mut bad);
        b = b.max_trips(n, within);
        if n == 0 {
            bad.push("max_trips");
        }
    }
    let what = format!("{b:?}");
    // `pair` checks without needing a runtime; the worker is never run.
    expect_split(&what, b.pair(), &bad);
}

/// A waker that does nothing (`Waker::noop` is newer than the crate's MSRV).
fn noop_waker() -> std::task::Waker {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: std::sync::Arc<Self>) {}
    }
    std::task::Waker::from(std::sync::Arc::new(Noop))
}
