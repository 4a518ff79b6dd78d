//! The retry layer on paused time: attempts, delays, limits, budget, breaker
//! rejections, classification, cancellation, readiness, request copies, events, hints,
//! and retries outside a tokio runtime (the only tests not on paused time).
//!
//! Every test reads as a timeline on tokio's paused clock. The downstreams record the
//! instant and the request of each call they receive, so a test can say exactly when and
//! what the retry layer sent. A sleep auto-advances the clock to the next timer; tokio's
//! timers fire on whole milliseconds, so a delay of `d` is observed as `d` rounded up to
//! the next millisecond (exactly `d` when `d` is whole milliseconds).

mod common;

use common::{ms, secs};
use std::collections::BTreeMap;
use std::error::Error;
use std::fmt;
use std::future::{ready, Future, Ready};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use steadfast::backoff::{Backoff, Jitter};
use steadfast::breaker::error::Open;
use steadfast::breaker::Breaker;
use steadfast::retry::{
    Budget, Retry, RetryLayer, RetryPolicy, RetryRequest, RetryResponse, DEFAULT_MAX_ATTEMPTS,
};
use steadfast::{BoxError, Outcome};
use tokio::time::{advance, Instant};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

// --- helpers -----------------------------------------------------------------------------

/// Attempts and a constant delay, and nothing else: no budget, no `max_elapsed`.
fn plain(max_attempts: u32, delay: Duration) -> RetryPolicy {
    RetryPolicy::new()
        .max_attempts(max_attempts)
        .backoff(Backoff::constant(delay))
        .budget(Budget::unlimited())
}

/// `inner` behind a retry layer applying `policy`.
fn retry<S, C: Clone>(policy: RetryPolicy<C>, inner: S) -> Retry<S, C> {
    ServiceBuilder::new()
        .layer(RetryLayer::new(policy).expect("a valid policy"))
        .service(inner)
}

/// Waits for readiness, then calls.
async fn call<S: Service<R>, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error> {
    svc.ready().await?.call(req).await
}

/// What a downstream saw: the paused-clock instant and the request of each call.
#[derive(Debug)]
struct Log<R>(Arc<Mutex<Vec<(Instant, R)>>>);

impl<R> Clone for Log<R> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<R> Default for Log<R> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<R> Log<R> {
    /// Records a call now; returns its number, from 1.
    fn push(&self, req: R) -> usize {
        let mut calls = self.0.lock().unwrap();
        calls.push((Instant::now(), req));
        calls.len()
    }

    fn calls(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn times(&self) -> Vec<Instant> {
        self.0.lock().unwrap().iter().map(|(t, _)| *t).collect()
    }

    /// The time between each call and the next.
    fn gaps(&self) -> Vec<Duration> {
        self.times().windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// When each call came, counted from `t0`.
    fn offsets(&self, t0: Instant) -> Vec<Duration> {
        self.times().into_iter().map(|t| t - t0).collect()
    }
}

impl<R: Clone> Log<R> {
    fn requests(&self) -> Vec<R> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// A downstream whose `n`th call (from 1) answers `Err(n)` while `n <= failures`, then
/// `Ok(n)`. `usize::MAX` failures: it always fails.
fn flaky<R>(
    failures: usize,
    log: Log<R>,
) -> impl Service<R, Response = usize, Error = usize, Future = Ready<Result<usize, usize>>> + Clone
{
    service_fn(move |req: R| {
        let n = log.push(req);
        ready(if n <= failures { Err(n) } else { Ok(n) })
    })
}

/// What [`echo`] answers: the request itself.
type Answer = Result<u16, &'static str>;

/// A downstream that answers each request with the request: `Ok(503)` answers `Ok(503)`.
fn echo(
    log: Log<Answer>,
) -> impl Service<Answer, Response = u16, Error = &'static str, Future = Ready<Answer>> + Clone {
    service_fn(move |answer: Answer| {
        log.push(answer);
        ready(answer)
    })
}

/// A waker that counts its wake-ups, for futures polled by hand.
#[derive(Debug, Default)]
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

impl Wakes {
    fn count(&self) -> usize {
        self.0.load(SeqCst)
    }
}

// --- attempts ------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn max_attempts_is_the_exact_number_of_calls() {
    for n in [1, 2, 3, 5, 10, 100] {
        let log = Log::default();
        let mut svc = retry(plain(n, ms(10)), flaky(usize::MAX, log.clone()));
        let t0 = Instant::now();
        let result = call(&mut svc, ()).await;
        assert_eq!(log.calls(), n as usize, "max_attempts({n})");
        assert_eq!(
            result,
            Err(n as usize),
            "the last attempt's error comes back"
        );
        // Calls at 0, 10, 20 ms ...; the last error is returned at once.
        let expected: Vec<_> = (0..u64::from(n)).map(|k| ms(10 * k)).collect();
        assert_eq!(log.offsets(t0), expected, "max_attempts({n})");
        assert_eq!(t0.elapsed(), ms(10 * (u64::from(n) - 1)));
    }
}

#[tokio::test(start_paused = true)]
async fn max_attempts_one_never_retries() {
    let log = Log::default();
    let mut svc = retry(
        RetryPolicy::new()
            .max_attempts(1)
            .budget(Budget::unlimited()),
        flaky(usize::MAX, log.clone()),
    );
    let t0 = Instant::now();
    for k in 1..=3 {
        assert_eq!(call(&mut svc, ()).await, Err(k));
    }
    assert_eq!(log.calls(), 3, "one call per request");
    assert_eq!(t0.elapsed(), Duration::ZERO, "no wait at all");
}

#[tokio::test(start_paused = true)]
async fn a_success_stops_the_retries_at_its_attempt() {
    for k in 1..=5 {
        let log = Log::default();
        let mut svc = retry(plain(5, ms(10)), flaky(k - 1, log.clone()));
        assert_eq!(call(&mut svc, ()).await, Ok(k), "success on attempt {k}");
        assert_eq!(log.calls(), k, "success on attempt {k}");
    }
    // A success that would come on attempt 6 never comes: 5 calls, the 5th error.
    let log = Log::default();
    let mut svc = retry(plain(5, ms(10)), flaky(5, log.clone()));
    assert_eq!(call(&mut svc, ()).await, Err(5));
    assert_eq!(log.calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn the_default_policy_makes_three_attempts() {
    let log = Log::default();
    let mut svc = retry(RetryPolicy::new(), flaky(usize::MAX, log.clone()));
    assert_eq!(call(&mut svc, ()).await, Err(3));
    assert_eq!(log.calls(), DEFAULT_MAX_ATTEMPTS as usize);
    assert_eq!(DEFAULT_MAX_ATTEMPTS, 3);
}

// --- delays ------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_constant_backoff_spaces_attempts_exactly() {
    let log = Log::default();
    let mut svc = retry(plain(5, ms(100)), flaky(usize::MAX, log.clone()));
    let t0 = Instant::now();
    assert_eq!(call(&mut svc, ()).await, Err(5));
    assert_eq!(log.gaps(), [ms(100); 4]);
    assert_eq!(
        log.offsets(t0)[0],
        Duration::ZERO,
        "the first call is not delayed"
    );
    assert_eq!(t0.elapsed(), ms(400), "no wait after the last attempt");
}

#[tokio::test(start_paused = true)]
async fn exponential_delays_double_to_the_cap() {
    let log = Log::default();
    let policy = plain(7, ms(1)).backoff(Backoff::exponential(ms(10), ms(100)));
    let mut svc = retry(policy, flaky(usize::MAX, log.clone()));
    assert_eq!(call(&mut svc, ()).await, Err(7));
    assert_eq!(log.gaps(), [10, 20, 40, 80, 100, 100].map(ms));
}

/// The jitter bounds of the `i`th delay (from 0) of `exponential(10 ms, 200 ms)`, given
/// the delay before it.
fn jitter_bounds(jitter: Jitter, i: usize, prev: Duration) -> (Duration, Duration) {
    let (base, max) = (ms(10), ms(200));
    let plain = (base * 2u32.pow(i as u32)).min(max);
    match jitter {
        Jitter::Full => (Duration::ZERO, plain),
        Jitter::Equal => (plain / 2, plain),
        Jitter::Decorrelated => (base, (prev * 3).max(base).min(max)),
        _ => (plain, plain),
    }
}

#[tokio::test(start_paused = true)]
async fn seeded_jitter_reproduces_the_backoff_sequence_within_its_bounds() {
    for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
        let mut sequences = Vec::new();
        for seed in 0..50 {
            let backoff = Backoff::exponential(ms(10), ms(200))
                .jitter(jitter)
                .seed(seed);
            let log = Log::default();
            let mut svc = retry(
                plain(6, ms(1)).backoff(backoff),
                flaky(usize::MAX, log.clone()),
            );
            assert_eq!(call(&mut svc, ()).await, Err(6));
            let gaps = log.gaps();
            let expected: Vec<Duration> = backoff.iter().take(5).collect();
            assert_eq!(gaps.len(), 5);
            let mut prev = ms(10);
            for (i, (&gap, &want)) in gaps.iter().zip(&expected).enumerate() {
                // The future draws from `backoff.iter()`: the seeded sequence exactly,
                // observed through the 1 ms timer resolution.
                assert!(
                    want <= gap && gap < want + ms(1),
                    "{jitter:?} seed {seed} delay {i}: waited {gap:?}, backoff says {want:?}"
                );
                // And every observed delay is within the jitter's bounds (whole
                // milliseconds, so rounding up to the timer keeps it within them).
                let (lo, hi) = jitter_bounds(jitter, i, prev);
                assert!(
                    lo <= gap && gap <= hi,
                    "{jitter:?} seed {seed} delay {i}: {gap:?} not in [{lo:?}, {hi:?}]"
                );
                prev = gap;
            }
            sequences.push(gaps);
        }
        // The seeds really change the delays: jitter is applied.
        sequences.sort();
        sequences.dedup();
        assert!(sequences.len() >= 45, "{jitter:?}: {sequences:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn seeded_jitter_gives_each_request_its_own_reproducible_stream() {
    let backoff = Backoff::constant(ms(100)).jitter(Jitter::Full).seed(42);
    let run = || async {
        let log = Log::default();
        let mut svc = retry(
            plain(2, ms(1)).backoff(backoff),
            flaky(usize::MAX, log.clone()),
        );
        for _ in 0..40 {
            call(&mut svc, ()).await.unwrap_err();
        }
        let times = log.times();
        times
            .chunks(2)
            .map(|p| p[1] - p[0])
            .collect::<Vec<Duration>>()
    };
    let delays = run().await;
    assert_eq!(delays.len(), 40);
    // Request k waits the first delay of stream k, observed through the 1 ms timer.
    for (k, d) in delays.iter().enumerate() {
        let want = backoff.iter_stream(k as u64).next().unwrap();
        assert!(
            want <= *d && *d < want + ms(1),
            "request {k}: {d:?} vs {want:?}"
        );
    }
    // One seed does not put every request in lockstep ...
    let mut distinct = delays.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 30, "{delays:?}");
    // ... and the same seed repeats the run exactly.
    assert_eq!(run().await, delays);
}

#[tokio::test(start_paused = true)]
async fn unseeded_jitter_differs_per_request_within_its_bounds() {
    for (jitter, lo) in [(Jitter::Full, Duration::ZERO), (Jitter::Equal, ms(50))] {
        let log = Log::default();
        let policy = plain(2, ms(1)).backoff(Backoff::constant(ms(100)).jitter(jitter));
        let mut svc = retry(policy, flaky(usize::MAX, log.clone()));
        for _ in 0..50 {
            call(&mut svc, ()).await.unwrap_err();
        }
        // Two calls per request: the gap inside each pair is that request's delay.
        let times = log.times();
        let mut delays: Vec<Duration> = times.chunks(2).map(|p| p[1] - p[0]).collect();
        assert_eq!(delays.len(), 50);
        for d in &delays {
            assert!(lo <= *d && *d <= ms(100), "{jitter:?}: {d:?}");
        }
        // Each request draws its own delays: no thundering herd of equal waits.
        delays.sort();
        delays.dedup();
        assert!(delays.len() > 10, "{jitter:?}: only {delays:?}");
    }
}

// --- max_elapsed ----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn max_elapsed_refuses_a_retry_that_would_end_past_it() {
    // Delay 100 ms: calls at 0, 100, 200, 300 ms ... A retry is made only if the delay
    // ends no later than `max_elapsed` after the request started.
    for (max_elapsed, calls) in [(100, 2), (250, 3), (299, 3), (300, 4), (301, 4)] {
        let log = Log::default();
        let policy = plain(10, ms(100)).max_elapsed(ms(max_elapsed));
        let mut svc = retry(policy, flaky(usize::MAX, log.clone()));
        let t0 = Instant::now();
        assert_eq!(
            call(&mut svc, ()).await,
            Err(calls),
            "max_elapsed {max_elapsed}"
        );
        let expected: Vec<_> = (0..calls as u64).map(|k| ms(100 * k)).collect();
        assert_eq!(log.offsets(t0), expected, "max_elapsed {max_elapsed}");
        // The refused retry is not waited for: the last result comes back at once.
        assert_eq!(t0.elapsed(), ms(100 * (calls as u64 - 1)));
    }
}

#[tokio::test(start_paused = true)]
async fn max_elapsed_counts_the_time_spent_in_calls() {
    // Each call takes 30 ms, then a 100 ms delay; max_elapsed 250 ms:
    //   0..30 call 1; 30 + 100 = 130 <= 250, retry
    //   130..160 call 2; 160 + 100 = 260 > 250: refused, the error returns at 160.
    let log = Log::default();
    let slow = service_fn({
        let log = log.clone();
        move |_: ()| {
            let n = log.push(());
            async move {
                tokio::time::sleep(ms(30)).await;
                Err::<(), usize>(n)
            }
        }
    });
    let mut svc = retry(plain(10, ms(100)).max_elapsed(ms(250)), slow);
    let t0 = Instant::now();
    assert_eq!(call(&mut svc, ()).await, Err(2));
    assert_eq!(log.offsets(t0), [ms(0), ms(130)]);
    assert_eq!(t0.elapsed(), ms(160));
}

// --- budget ----------------------------------------------------------------------------------

/// Sends `requests` requests to the services of `svcs` in turn, one every `spacing` of
/// paused time, each against a downstream that always fails.
async fn outage<S>(svcs: &mut [S], requests: u32, spacing: Duration)
where
    S: Service<(), Response = usize, Error = usize>,
{
    let t0 = Instant::now();
    for i in 0..requests {
        let at = t0 + spacing * i;
        assert!(
            Instant::now() <= at,
            "request {i} is late: spacing too small"
        );
        tokio::time::sleep_until(at).await;
        let n = svcs.len();
        call(&mut svcs[i as usize % n], ()).await.unwrap_err();
    }
}

#[tokio::test(start_paused = true)]
async fn the_budget_holds_an_outage_near_the_ratio_of_requests() {
    // 1,000 requests, one every 10 ms (0 to 9.99 s), at 100% downstream failure, with
    // max_attempts 5 (4 retries of 1 ms each, done well before the next request).
    //
    // Budget: ratio 0.1, min_per_sec 1, ttl 10 s. Each second of 100 requests allows
    //   min_per_sec + ratio x requests = 1 + 0.1 x 100 = 11 retries,
    // so the 10 s allow at most 110 (as does the ttl: 1 x 10 + 0.1 x 1,000), i.e. at most
    // 1,000 + 110 = 1,110 downstream calls, instead of 1,000 x 5 = 5,000 without a
    // budget. Since every call fails, a retry is taken whenever a whole one is in the
    // balance, so the deposits are used: at least 1,000 + 100 calls, less what late
    // filing loses (see `an_outage_gets_the_ratio_plus_min_per_sec`).
    //
    // Two layers share the budget (a clone of it in each policy) and two clones of each
    // service take turns: the bound is for the total.
    let budget = Budget::new(0.1, 1, secs(10)).unwrap();
    let log = Log::default();
    let policy = RetryPolicy::new()
        .max_attempts(5)
        .backoff(Backoff::constant(ms(1)))
        .budget(budget.clone());
    let a = retry(policy.clone(), flaky(usize::MAX, log.clone()));
    let b = retry(policy, flaky(usize::MAX, log.clone()));
    let mut svcs = [a.clone(), b.clone(), a, b];
    outage(&mut svcs, 1000, ms(10)).await;

    let calls = log.calls();
    let bound = 1000.0 * (1.0 + 0.1) + 10.0;
    assert!(calls as f64 <= bound, "{calls} calls, above {bound}");
    assert!(
        calls >= 1095,
        "{calls} calls: the budget lent less than its ratio"
    );
    assert!(calls < 5000 / 4, "{calls} calls");
    assert!(
        budget.balance().unwrap() < 1.0,
        "the outage spent the budget"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_budget_an_outage_gets_every_attempt() {
    // The same run with Budget::unlimited(): 1,000 x 5 calls exactly.
    let log = Log::default();
    let mut svcs = [retry(plain(5, ms(1)), flaky(usize::MAX, log.clone()))];
    outage(&mut svcs, 1000, ms(10)).await;
    assert_eq!(log.calls(), 5000);
    assert_eq!(svcs[0].budget().balance(), None);
}

#[tokio::test(start_paused = true)]
async fn the_balance_falls_during_an_outage_and_recovers_after_a_second() {
    // ratio 0.1, min_per_sec 1, ttl 10 s: the ttl holds a reserve of 10 retries, but a
    // second allows 1 + 0.1 per request, and the balance is what both allow. Each
    // request deposits 0.1 and each retry (4 per request at most) withdraws 1:
    //   request 1: 1 + 0.1 - 1 = 0.1
    //   request 2: 0.1 + 0.1   = 0.2
    //   ...
    //   request 10: 0.9 + 0.1 - 1 = 0
    // about one retry every 10 requests, the balance staying below 1.
    let log = Log::default();
    let policy = RetryPolicy::new()
        .max_attempts(5)
        .backoff(Backoff::constant(ms(1)))
        .budget(Budget::new(0.1, 1, secs(10)).unwrap());
    let mut svc = retry(policy, flaky(usize::MAX, log.clone()));
    assert_eq!(svc.budget().balance(), Some(1.0));
    let t0 = Instant::now();
    let mut balances = Vec::new();
    for i in 0..200 {
        tokio::time::sleep_until(t0 + ms(10) * i).await;
        call(&mut svc, ()).await.unwrap_err();
        balances.push(svc.budget().balance().unwrap());
    }
    assert_eq!(balances[..3], [0.1, 0.2, 0.3]);
    assert!(
        balances.iter().all(|b| (0.0..1.0).contains(b)),
        "{balances:?}"
    );
    // Two seconds of 100 requests: at most 1 + 10 retries in each.
    assert!(log.calls() <= 200 + 22, "{} calls", log.calls());

    // A second without traffic: that second's deposits and withdrawals have left its
    // window, its reserve is whole again.
    advance(secs(1)).await;
    assert_eq!(svc.budget().balance(), Some(1.0));
}

#[tokio::test(start_paused = true)]
async fn budget_credit_expires_after_the_ttl() {
    // ratio 0.5, no reserve, ttl 1 s: 10 successful requests deposit 5 retries.
    let log = Log::default();
    let policy = plain(3, ms(10)).budget(Budget::new(0.5, 0, secs(1)).unwrap());
    let mut svc = retry(policy, echo(log.clone()));
    for _ in 0..10 {
        call(&mut svc, Ok(200)).await.unwrap();
    }
    assert_eq!(svc.budget().balance(), Some(5.0));
    // While the credit is live, a failing request is retried: 5 + 0.5 - 2 = 3.5 ...
    assert_eq!(call(&mut svc, Err("timeout")).await, Err("timeout"));
    assert_eq!(log.calls(), 10 + 3);
    assert_eq!(svc.budget().balance(), Some(3.5));
    // ... but once the ttl has passed, the credit is gone: no retry.
    advance(secs(2)).await;
    assert_eq!(svc.budget().balance(), Some(0.0));
    assert_eq!(call(&mut svc, Err("timeout")).await, Err("timeout"));
    assert_eq!(log.calls(), 13 + 1);
}

#[tokio::test(start_paused = true)]
async fn every_request_deposits_its_ratio() {
    // ratio 1.0, no reserve: after n requests the balance is n retries.
    let budget = Budget::new(1.0, 0, secs(10)).unwrap();
    let policy = plain(2, ms(1)).budget(budget.clone());
    let mut svc = retry(policy, echo(Log::default()));
    let mut balances = Vec::new();
    for _ in 0..40 {
        call(&mut svc, Ok(200)).await.unwrap();
        balances.push(budget.balance().unwrap());
    }
    // Today: [1.0, .., 16.0, 16.0, 17.0, .., 31.0, 31.0, 32.0, ..]: the 17th and the
    // 33rd requests deposit nothing.
    let expected: Vec<f64> = (1..=40).map(f64::from).collect();
    assert_eq!(balances, expected);
}

#[tokio::test(start_paused = true)]
async fn an_outage_gets_the_ratio_plus_min_per_sec() {
    // The run of `the_budget_holds_an_outage_near_the_ratio_of_requests`: every whole
    // retry a second allows is taken, 1 + 0.1 x its 100 requests = 11 at most. A
    // thread files its deposits every 16th request, under the time of the first of
    // them, so up to 15 leave the window early: about 10 a second are taken, 9.8 when
    // the thread shares its stripe with others (the stripe is filed with its last
    // deposit: all 16 filed early). Seconds: 10, then 2.
    for (requests, seconds) in [(1000, 10), (200, 2)] {
        let log = Log::default();
        let policy = RetryPolicy::new()
            .max_attempts(5)
            .backoff(Backoff::constant(ms(1)))
            .budget(Budget::new(0.1, 1, secs(10)).unwrap());
        let mut svcs = [retry(policy, flaky(usize::MAX, log.clone()))];
        outage(&mut svcs, requests, ms(10)).await;
        let retries = log.calls() - requests as usize;
        assert!(
            retries <= 11 * seconds,
            "{requests} requests: {retries} retries"
        );
        assert!(
            retries * 10 >= 98 * seconds,
            "{requests} requests: {retries} retries"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_outage_after_a_healthy_period_gets_the_ratio_every_second_and_no_echo() {
    // 1,000 requests a second (one a millisecond): 20 s healthy, then 60 s in which
    // every call fails. 3 attempts and the default budget (10% of requests + 10 a
    // second, credit kept 10 s), no delay between attempts: the calls of a second are
    // its requests and the retries decided in it.
    //
    // The healthy seconds fill the ttl with 1,000 retries of credit. The outage's
    // first second used to spend it all (every request retried twice: 3,000 calls),
    // and the second a ttl later again, when that burst's withdrawals expired together,
    // an echo every ttl. Now every second is held to its own requests' ratio plus
    // min_per_sec: at most 1,000 + 0.1 x 1,000 + 10 = 1,110 calls (the ratio is a
    // whole number of thousandths: no rounding slack; one thread: no overdraw).
    let t0 = Instant::now();
    let log = Log::default();
    let downstream = service_fn({
        let log = log.clone();
        move |_: ()| {
            log.push(());
            let down = Instant::now() >= t0 + secs(20);
            ready(if down { Err("down") } else { Ok(()) })
        }
    });
    // Made at t0: the budget's 100 ms slots and seconds start with the test's.
    let policy = RetryPolicy::new()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::ZERO));
    let mut svc = retry(policy, downstream);
    for i in 0..80_000 {
        tokio::time::sleep_until(t0 + ms(i)).await;
        let _ = call(&mut svc, ()).await;
    }

    let mut per_second = [0_usize; 80];
    for t in log.times() {
        per_second[(t - t0).as_secs() as usize] += 1;
    }
    let bound = 1000 + 100 + 10;
    for (second, &calls) in per_second.iter().enumerate() {
        if second < 20 {
            assert_eq!(calls, 1000, "second {second}: {per_second:?}");
        } else {
            assert!(
                calls <= bound,
                "second {second}: {calls} calls, {per_second:?}"
            );
            // Not starved either: the ratio of the requests, less what late filing of
            // deposits loses (see the budget's docs).
            assert!(
                calls >= 1090,
                "second {second}: {calls} calls, {per_second:?}"
            );
        }
    }
}

// --- breaker rejections ------------------------------------------------------------------------

/// The downstream calls behind a breaker, and the attempts the retry layer made into it.
#[derive(Debug, Clone, Default)]
struct Counts {
    reached: Arc<AtomicUsize>,
    attempts: Arc<AtomicUsize>,
}

impl Counts {
    fn reached(&self) -> usize {
        self.reached.load(SeqCst)
    }
    fn attempts(&self) -> usize {
        self.attempts.load(SeqCst)
    }
}

/// A downstream that always fails with "down", counting the calls that reach it.
fn always_down(
    counts: &Counts,
) -> impl Service<
    (),
    Response = &'static str,
    Error = &'static str,
    Future = Ready<Result<&'static str, &'static str>>,
> + Clone {
    let reached = counts.reached.clone();
    service_fn(move |_: ()| {
        reached.fetch_add(1, SeqCst);
        ready(Err("down"))
    })
}

/// Every `Err` is a failure to retry, an `Open` rejection included as far as the
/// classifier is concerned.
fn every_err_fails(result: &Result<&'static str, BoxError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_rejection_is_never_retried() {
    let breaker = Breaker::builder("payments")
        .consecutive_failures(2)
        .open_backoff(Backoff::constant(secs(30)))
        .build()
        .unwrap();
    let counts = Counts::default();
    let policy = plain(5, ms(10)).retry_if(every_err_fails);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy).unwrap())
        .map_request({
            let attempts = counts.attempts.clone();
            move |req: ()| {
                attempts.fetch_add(1, SeqCst);
                req
            }
        })
        .layer(breaker.layer())
        .service(always_down(&counts));

    // Request 1: attempts at 0 and 10 ms reach the downstream and fail; the second
    // failure trips the breaker; the retry at 20 ms is rejected and that is final,
    // though the classifier calls every error a failure.
    let t0 = Instant::now();
    let err = call(&mut svc, ()).await.unwrap_err();
    let open = err.downcast_ref::<Open>().expect("the Open rejection");
    assert_eq!(open.breaker(), "payments");
    assert!(open.retry_after().is_some_and(|d| d <= secs(30)));
    assert_eq!(counts.reached(), 2);
    assert_eq!(counts.attempts(), 3);
    assert_eq!(t0.elapsed(), ms(20));

    // Request 2, breaker open: one attempt, the downstream is not called, and the
    // rejection comes back at once.
    let t1 = Instant::now();
    let err = call(&mut svc, ()).await.unwrap_err();
    assert!(err.is::<Open>(), "{err}");
    assert_eq!(counts.attempts(), 4, "exactly one attempt");
    assert_eq!(counts.reached(), 2, "the downstream is not called");
    assert_eq!(t1.elapsed(), Duration::ZERO);

    // Forced open: the same.
    breaker.force_open();
    let err = call(&mut svc, ()).await.unwrap_err();
    assert!(err.is::<Open>(), "{err}");
    assert_eq!((counts.attempts(), counts.reached()), (5, 2));
}

/// An error of a layer between the retry and the breaker, wrapping the breaker's error
/// as its source.
#[derive(Debug)]
struct Wrapped(BoxError);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the payments call failed")
    }
}

impl Error for Wrapped {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_rejection_wrapped_as_a_source_is_not_retried() {
    let breaker = Breaker::builder("payments")
        .consecutive_failures(100)
        .build()
        .unwrap();
    let counts = Counts::default();
    let policy = plain(5, ms(10)).retry_if(every_err_fails);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy).unwrap())
        .map_request({
            let attempts = counts.attempts.clone();
            move |req: ()| {
                attempts.fetch_add(1, SeqCst);
                req
            }
        })
        .map_err(|e: BoxError| -> BoxError { Box::new(Wrapped(e)) })
        .layer(breaker.layer())
        .service(always_down(&counts));

    // Control: a wrapped ordinary error is retried, all 5 attempts.
    let err = call(&mut svc, ()).await.unwrap_err();
    assert!(err.is::<Wrapped>());
    assert_eq!((counts.attempts(), counts.reached()), (5, 5));

    // A wrapped Open is not: one attempt, no downstream call.
    breaker.force_open();
    let err = call(&mut svc, ()).await.unwrap_err();
    let wrapped = err.downcast_ref::<Wrapped>().expect("the wrapping error");
    assert!(wrapped.source().is_some_and(|s| s.is::<Open>()));
    assert_eq!(counts.attempts(), 6, "exactly one attempt");
    assert_eq!(counts.reached(), 5, "the downstream is not called");
}

#[tokio::test(start_paused = true)]
async fn an_open_rejection_inside_an_io_error_is_not_retried() {
    let breaker = Breaker::new("payments");
    breaker.force_open();
    let counts = Counts::default();
    let policy = plain(5, ms(10)).retry_if(every_err_fails);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy).unwrap())
        .map_request({
            let attempts = counts.attempts.clone();
            move |req: ()| {
                attempts.fetch_add(1, SeqCst);
                req
            }
        })
        // A layer that speaks io::Error, boxed again on the way out.
        .map_err(|e: BoxError| -> BoxError { Box::new(std::io::Error::other(e)) })
        .layer(breaker.layer())
        .service(always_down(&counts));

    let err = call(&mut svc, ()).await.unwrap_err();
    let io = err.downcast_ref::<std::io::Error>().expect("the io error");
    assert!(io.get_ref().is_some_and(|e| e.is::<Open>()));
    assert_eq!(counts.reached(), 0);
    assert_eq!(counts.attempts(), 1, "exactly one attempt");
}

// --- classification ----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_classifier_decides_what_is_retried() {
    let classify = |result: &Answer| match result {
        Ok(503) => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err("invalid") => Outcome::Ignored,
        Err("not found") => Outcome::Success,
        Err(_) => Outcome::Failure,
    };
    let cases: [(Answer, usize); 5] = [
        (Err("invalid"), 1),   // Ignored: returned as it is
        (Err("not found"), 1), // Success: returned as it is
        (Ok(200), 1),          // Success
        (Ok(503), 4),          // Failure, though Ok: retried, the last Ok(503) returned
        (Err("timeout"), 4),   // Failure: retried
    ];
    for (answer, calls) in cases {
        let log = Log::default();
        let mut svc = retry(plain(4, ms(10)).retry_if(classify), echo(log.clone()));
        assert_eq!(call(&mut svc, answer).await, answer);
        assert_eq!(log.calls(), calls, "{answer:?}");
        assert_eq!(log.requests(), vec![answer; calls]);
    }
}

// --- cancellation ----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_waiting_makes_no_further_attempt() {
    let wakes = Arc::new(Wakes::default());
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);

    for drop_it in [false, true] {
        let log = Log::default();
        let mut svc = retry(plain(3, ms(100)), flaky(usize::MAX, log.clone()));
        svc.ready().await.unwrap();
        let mut fut = Box::pin(svc.call(()));
        // t = 0: the first attempt fails; the retry waits 100 ms.
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(log.calls(), 1);
        // t = 60 ms: still waiting.
        advance(ms(60)).await;
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(log.calls(), 1);
        if drop_it {
            drop(fut);
            // t = 560 ms: well past the delay, and past a second one.
            advance(ms(500)).await;
            tokio::task::yield_now().await;
            assert_eq!(log.calls(), 1, "a dropped call made an attempt");
        } else {
            // Control: kept, it makes the second attempt at 100 ms.
            advance(ms(40)).await;
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            assert_eq!(log.calls(), 2);
        }
    }
}

// --- readiness -------------------------------------------------------------------------------

/// Readiness of a [`Strict`] service, set by the test and shared by its clones.
#[derive(Debug)]
struct Gate {
    ready: AtomicBool,
    waker: Mutex<Option<Waker>>,
    polls: AtomicUsize,
    calls: AtomicUsize,
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            ready: AtomicBool::new(true),
            waker: Mutex::new(None),
            polls: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        })
    }

    /// Makes the service ready and wakes the task waiting for it.
    fn open(&self) {
        let mut waker = self.waker.lock().unwrap();
        self.ready.store(true, SeqCst);
        if let Some(waker) = waker.take() {
            waker.wake();
        }
    }

    fn polls(&self) -> usize {
        self.polls.load(SeqCst)
    }

    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
}

/// A service that panics when called without a successful `poll_ready` since its last
/// call. Its first call fails and leaves it not ready until the gate opens.
#[derive(Debug)]
struct Strict {
    gate: Arc<Gate>,
    readied: bool,
}

impl Clone for Strict {
    // Readiness belongs to an instance: a clone has not been polled ready.
    fn clone(&self) -> Self {
        Self {
            gate: self.gate.clone(),
            readied: false,
        }
    }
}

impl Service<u32> for Strict {
    type Response = u32;
    type Error = &'static str;
    type Future = Ready<Result<u32, &'static str>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.gate.polls.fetch_add(1, SeqCst);
        let mut waker = self.gate.waker.lock().unwrap();
        if self.gate.ready.load(SeqCst) {
            self.readied = true;
            Poll::Ready(Ok(()))
        } else {
            *waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn call(&mut self, req: u32) -> Self::Future {
        assert!(
            std::mem::take(&mut self.readied),
            "Strict::call without a successful poll_ready since the last call"
        );
        if self.gate.calls.fetch_add(1, SeqCst) == 0 {
            self.gate.ready.store(false, SeqCst);
            ready(Err("overloaded"))
        } else {
            ready(Ok(req))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_for_readiness_and_never_calls_an_unready_service() {
    let gate = Gate::new();
    let mut svc = retry(
        plain(3, ms(10)),
        Strict {
            gate: gate.clone(),
            readied: false,
        },
    );
    let wakes = Arc::new(Wakes::default());
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);

    svc.ready().await.unwrap();
    let mut fut = pin!(svc.call(7));
    // t = 0: the first call fails and leaves the service not ready.
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(gate.calls(), 1);

    // t = 10 ms: the delay is over and wakes the call, which asks the service: not ready.
    advance(ms(10)).await;
    assert_eq!(wakes.count(), 1, "the delay's timer woke the call");
    let polls = gate.polls();
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert!(gate.polls() > polls, "readiness was asked");
    assert_eq!(gate.calls(), 1, "no call while not ready");

    // t = 1.01 s: still not ready. The retry keeps waiting: no call, no error, and no
    // wake-up but the service's.
    advance(secs(1)).await;
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(gate.calls(), 1);
    assert_eq!(wakes.count(), 1);

    // The service becomes ready and wakes the call: the retry is made at once.
    gate.open();
    assert_eq!(wakes.count(), 2, "the service's waker was the call's");
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(7)));
    assert_eq!(gate.calls(), 2);
}

// --- request copies ---------------------------------------------------------------------------

/// A request that counts its copies.
#[derive(Debug)]
struct Order {
    id: u64,
    lines: Vec<String>,
    copies: Arc<AtomicUsize>,
}

impl Clone for Order {
    fn clone(&self) -> Self {
        self.copies.fetch_add(1, SeqCst);
        Self {
            id: self.id,
            lines: self.lines.clone(),
            copies: self.copies.clone(),
        }
    }
}

impl PartialEq for Order {
    fn eq(&self, other: &Self) -> bool {
        (self.id, &self.lines) == (other.id, &other.lines)
    }
}

#[tokio::test(start_paused = true)]
async fn every_attempt_sends_a_copy_of_the_original_request() {
    for max_attempts in [1, 2, 4] {
        let copies = Arc::new(AtomicUsize::new(0));
        let order = Order {
            id: 42,
            lines: vec!["2 x tea".into(), "1 x cake".into()],
            copies: copies.clone(),
        };
        let original = Order {
            copies: Arc::default(),
            ..order.clone()
        };
        copies.store(0, SeqCst);

        let log = Log::default();
        let mut svc = retry(plain(max_attempts, ms(10)), flaky(usize::MAX, log.clone()));
        call(&mut svc, order).await.unwrap_err();
        // One copy per retry: none when no retry can be made.
        assert_eq!(copies.load(SeqCst), max_attempts as usize - 1);
        let sent = log.requests();
        assert_eq!(sent.len(), max_attempts as usize);
        assert!(sent.iter().all(|r| *r == original), "{sent:?}");
    }
}

// --- events ----------------------------------------------------------------------------------

/// One event of target `steadfast::retry`.
#[derive(Debug, Clone)]
struct Seen {
    level: tracing::Level,
    fields: BTreeMap<&'static str, String>,
}

impl Seen {
    fn message(&self) -> &str {
        &self.fields["message"]
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// A tracing layer keeping the events of target `steadfast::retry`.
#[derive(Debug, Clone, Default)]
struct Catcher(Arc<Mutex<Vec<Seen>>>);

impl Catcher {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Fields<'a>(&'a mut BTreeMap<&'static str, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Catcher {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "steadfast::retry" {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().push(Seen {
                level: *event.metadata().level(),
                fields,
            });
        }
    }
}

#[tokio::test(start_paused = true)]
async fn one_event_per_retry_and_one_per_refusal() {
    use tracing_subscriber::layer::SubscriberExt;

    // With a single dispatcher alive in the process, tracing-core decides a callsite's
    // interest with the default of whichever thread reaches it first: a test on another
    // thread, without a subscriber, would make it "never" for good. A second live
    // dispatcher makes it ask every dispatcher.
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());
    let catcher = Catcher::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(catcher.clone()));

    // Attempts run out: one event per retry made, none for the end.
    let mut svc = retry(plain(3, ms(10)), flaky(usize::MAX, Log::default()));
    call(&mut svc, ()).await.unwrap_err();
    let seen = catcher.take();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (k, event) in seen.iter().enumerate() {
        assert_eq!(event.level, tracing::Level::DEBUG);
        assert_eq!(event.message(), "retrying");
        assert_eq!(event.field("attempt"), Some((k + 1).to_string().as_str()));
        assert_eq!(event.field("delay_ms"), Some("10"));
        assert_eq!(event.field("why"), Some("error"));
    }

    // A failure response says so.
    let classify = |r: &Answer| match r {
        Ok(503) => Outcome::Failure,
        _ => Outcome::Success,
    };
    let mut svc = retry(plain(2, ms(10)).retry_if(classify), echo(Log::default()));
    call(&mut svc, Ok(503)).await.unwrap();
    let seen = catcher.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].field("why"), Some("failure response"));

    // max_elapsed: retries at 100 and 200 ms, then one refusal.
    let policy = plain(10, ms(100)).max_elapsed(ms(250));
    let mut svc = retry(policy, flaky(usize::MAX, Log::default()));
    call(&mut svc, ()).await.unwrap_err();
    let seen = catcher.take();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[..2].iter().all(|e| e.message() == "retrying"));
    let refused = &seen[2];
    assert_eq!(refused.level, tracing::Level::INFO);
    assert!(refused.message().contains("max_elapsed"), "{refused:?}");
    assert_eq!(refused.field("attempt"), Some("3"));
    assert_eq!(refused.field("elapsed_ms"), Some("200"));
    assert_eq!(refused.field("delay_ms"), Some("100"));

    // An empty budget: no retry, one refusal.
    let policy = plain(5, ms(10)).budget(Budget::new(0.0, 0, secs(10)).unwrap());
    let mut svc = retry(policy, flaky(usize::MAX, Log::default()));
    call(&mut svc, ()).await.unwrap_err();
    let seen = catcher.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].level, tracing::Level::INFO);
    assert!(seen[0].message().contains("budget"), "{:?}", seen[0]);
    assert_eq!(seen[0].field("attempt"), Some("1"));

    // A success: nothing at all.
    let mut svc = retry(plain(5, ms(10)), flaky(0, Log::default()));
    call(&mut svc, ()).await.unwrap();
    assert!(catcher.take().is_empty());
}

// --- without a runtime ------------------------------------------------------------------------

/// Runs a future to completion on this thread, outside any tokio runtime: a minimal
/// executor (like `futures::executor::block_on`) that parks the thread until woken.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

#[test]
fn a_zero_delay_retries_without_a_runtime() {
    assert!(tokio::runtime::Handle::try_current().is_err());
    // Regression: the first failure made a zero `Sleep`, which panicked ("there is no
    // reactor running"). Now the retry is made at once, with no timer.
    let log = Log::default();
    let budget = Budget::new(0.2, 10, secs(10)).unwrap();
    let policy = RetryPolicy::new()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::ZERO))
        .budget(budget.clone());
    let mut svc = retry(policy, flaky(2, log.clone()));
    assert_eq!(block_on(call(&mut svc, ())), Ok(3));
    assert_eq!(log.calls(), 3);
    // The budget works without a runtime too: 10 a second, 0.2 deposited, 2 taken.
    assert_eq!(budget.balance(), Some(8.2));
}

#[test]
fn a_delay_without_a_runtime_returns_the_last_result_with_a_warning() {
    use tracing_subscriber::layer::SubscriberExt;

    assert!(tokio::runtime::Handle::try_current().is_err());
    // See `one_event_per_retry_and_one_per_refusal` for the second dispatcher.
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());
    let catcher = Catcher::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(catcher.clone()));

    // A nonzero delay has no timer to wait on: the retry is not made, and the budget
    // is not charged for it.
    let log = Log::default();
    let budget = Budget::new(0.0, 5, secs(10)).unwrap();
    let mut svc = retry(
        plain(3, ms(10)).budget(budget.clone()),
        flaky(usize::MAX, log.clone()),
    );
    assert_eq!(block_on(call(&mut svc, ())), Err(1));
    assert_eq!(log.calls(), 1);
    assert_eq!(budget.balance(), Some(5.0));
    let seen = catcher.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].level, tracing::Level::WARN);
    assert!(seen[0].message().contains("runtime"), "{:?}", seen[0]);
    assert_eq!(seen[0].field("delay_ms"), Some("10"));

    // A success needs no retry and no runtime.
    let mut svc = retry(plain(3, ms(10)), flaky(0, Log::default()));
    assert_eq!(block_on(call(&mut svc, ())), Ok(1));
}

// --- hints -----------------------------------------------------------------------------------

/// A [`RetryResponse`] hinting `Duration::MAX` before every retry.
#[derive(Debug, Clone, Copy)]
struct Forever;

impl<T, E> RetryResponse<T, E> for Forever {
    fn retry_after(&self, _: &Result<T, E>) -> Option<Duration> {
        Some(Duration::MAX)
    }
}

#[tokio::test(start_paused = true)]
async fn a_hint_of_duration_max_waits_without_panicking() {
    // Regression: `Instant::now() + Duration::MAX` overflowed and panicked. The
    // deadline saturates to tokio's far future: the retry waits until dropped.
    let log = Log::default();
    let layer = RetryLayer::new(plain(3, ms(10)).responses(Forever)).unwrap();
    let mut svc = tower::Layer::layer(&layer, flaky(usize::MAX, log.clone()));
    let wakes = Arc::new(Wakes::default());
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    svc.ready().await.unwrap();
    let mut fut = pin!(svc.call(()));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(log.calls(), 1);
    // A year later: still waiting, no second call.
    advance(secs(365 * 86_400)).await;
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(log.calls(), 1);
    // Twenty-nine years on: still short of tokio's far future (30 years).
    advance(secs(28 * 365 * 86_400)).await;
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(log.calls(), 1);
    assert_eq!(wakes.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hint_of_duration_max_past_max_elapsed_is_refused_at_once() {
    // Regression: `elapsed + Duration::MAX` overflowed and panicked (once any time had
    // passed: here the call takes 5 ms). Saturating, the retry would end past
    // max_elapsed: refused, the last result returned when the call ends.
    let log = Log::default();
    let slow = service_fn({
        let log = log.clone();
        move |_: ()| {
            let n = log.push(());
            async move {
                tokio::time::sleep(ms(5)).await;
                Err::<(), usize>(n)
            }
        }
    });
    let policy = plain(3, ms(10)).max_elapsed(secs(1)).responses(Forever);
    let layer = RetryLayer::new(policy).unwrap();
    let mut svc = tower::Layer::layer(&layer, slow);
    let t0 = Instant::now();
    assert_eq!(call(&mut svc, ()).await, Err(1));
    assert_eq!(log.calls(), 1);
    assert_eq!(t0.elapsed(), ms(5));
}

// --- configuration ---------------------------------------------------------------------------

#[test]
fn bad_configuration_is_a_config_error() {
    let err = RetryLayer::new(RetryPolicy::new().max_attempts(0)).unwrap_err();
    assert_eq!(err.field(), "max_attempts");
    let err = RetryLayer::new(RetryPolicy::new().max_attempts(101)).unwrap_err();
    assert_eq!(err.field(), "max_attempts");
    let err = RetryLayer::new(RetryPolicy::new().backoff(Backoff::exponential(ms(10), ms(1))))
        .unwrap_err();
    assert_eq!(err.field(), "backoff");
    let err = RetryLayer::new(RetryPolicy::new().max_elapsed(Duration::ZERO)).unwrap_err();
    assert_eq!(err.field(), "max_elapsed");

    for (ratio, ttl, field) in [
        (f64::NAN, secs(10), "ratio"),
        (-0.1, secs(10), "ratio"),
        (f64::INFINITY, secs(10), "ratio"),
        (0.1, Duration::ZERO, "ttl"),
        (0.1, ms(99), "ttl"),
    ] {
        let err = Budget::new(ratio, 1, ttl).unwrap_err();
        assert_eq!(err.field(), field, "{ratio} {ttl:?}");
    }

    assert!(RetryLayer::new(RetryPolicy::new().max_attempts(1)).is_ok());
    assert!(RetryLayer::new(RetryPolicy::new().max_attempts(100)).is_ok());
    assert!(Budget::new(0.0, 0, ms(100)).is_ok());
}

#[test]
fn only_an_unlimited_budget_says_it_is_unlimited() {
    assert!(Budget::unlimited().is_unlimited());
    let budget = Budget::new(0.0, 0, secs(1)).unwrap();
    assert!(!budget.is_unlimited());
    assert_eq!(budget.balance(), Some(0.0));
    assert!(!RetryPolicy::new().get_budget().is_unlimited());
}

/// More live threads than the budget has stripes of their own: the extra threads share
/// one stripe, whose deposits must all be filed exactly once too. Regression: two
/// threads refreshing the shared stripe at once each added their own deposit back
/// after the other's swap had taken it, counting it twice (more retries than the ratio).
#[test]
fn deposits_from_threads_sharing_a_stripe_are_all_counted() {
    const THREADS: usize = 40;
    const REQUESTS: usize = 2_000;
    let budget = Budget::new(0.5, 0, secs(60)).unwrap();
    let policy = RetryPolicy::new().budget(budget.clone());
    let layer = RetryLayer::new(policy).unwrap();
    let ready = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let (layer, ready) = (layer.clone(), &ready);
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                let mut svc = tower::Layer::layer(
                    &layer,
                    tower::service_fn(|_: u32| async { Ok::<_, std::convert::Infallible>(()) }),
                );
                rt.block_on(async {
                    // The first deposit takes this thread's slot, held until it ends.
                    call(&mut svc, 0).await.unwrap();
                    // Wait until every thread holds one, so the slots are all distinct
                    // (bounded: a thread that panicked never arrives).
                    ready.fetch_add(1, SeqCst);
                    let t0 = std::time::Instant::now();
                    while ready.load(SeqCst) < THREADS && t0.elapsed() < secs(10) {
                        std::thread::yield_now();
                    }
                    for i in 1..REQUESTS {
                        call(&mut svc, i as u32).await.unwrap();
                    }
                });
            });
        }
    });
    // Each request deposited half a retry; nothing was withdrawn or expired.
    assert_eq!(budget.balance(), Some((THREADS * REQUESTS) as f64 * 0.5));
}

// --- a custom RetryRequest --------------------------------------------------------------

/// A [`RetryRequest`] that numbers each attempt's request from the first one, and keeps
/// the trait's default `last` (which makes the last request with `next`).
#[derive(Debug, Clone, Copy)]
struct Numbered;

impl RetryRequest<u32> for Numbered {
    type Out = u32;
    type Replay = u32;

    fn prepare(&self, request: u32) -> (u32, Option<u32>) {
        (request, Some(request))
    }

    fn next(&self, replay: &mut u32) -> Option<u32> {
        *replay += 1;
        Some(*replay)
    }

    fn once(&self, request: u32) -> u32 {
        request
    }
}

#[tokio::test(start_paused = true)]
async fn the_default_last_request_is_made_with_next() {
    let log = Log::default();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(plain(3, ms(10)).requests(Numbered)).expect("a valid policy"))
        .service(flaky(usize::MAX, log.clone()));
    assert_eq!(call(&mut svc, 10).await, Err(3));
    assert_eq!(log.requests(), [10, 11, 12]);
}
