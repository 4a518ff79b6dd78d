//! Trip rules: each trips exactly at its threshold and not one call before.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use steadfast::backoff::Backoff;
use steadfast::breaker::{Breaker, State};

fn builder() -> steadfast::breaker::BreakerBuilder {
    Breaker::builder("rules").open_backoff(Backoff::constant(secs(10)))
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip_at_the_threshold() {
    let breaker = builder().consecutive_failures(3).build().unwrap();
    let (mut svc, reached) = guarded(&breaker);

    // Two failures, a success: the run of failures starts over.
    assert_eq!(
        calls(&mut svc, 2, || Req::Err).await,
        [Seen::Failed, Seen::Failed]
    );
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok);
    assert_eq!(
        calls(&mut svc, 2, || Req::Err).await,
        [Seen::Failed, Seen::Failed]
    );
    assert_eq!(breaker.state(), State::Closed);

    assert_eq!(call(&mut svc, Req::Err).await, Seen::Failed);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        call(&mut svc, Req::Ok).await,
        Seen::Rejected(Some(secs(10)))
    );
    assert_eq!(reached.load(Ordering::SeqCst), 6);
    assert_eq!(breaker.snapshot().trips, 1);
}

#[tokio::test(start_paused = true)]
async fn count_window_slides() {
    // 1,000 successes, then 5 failures trip a 50% rule over the last 10 calls.
    let breaker = builder()
        .failure_rate(0.5)
        .count_window(10)
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    calls(&mut svc, 1000, || Req::Ok).await;
    calls(&mut svc, 4, || Req::Err).await;
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.snapshot().failure_rate, Some(0.4));

    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.snapshot().failure_rate, Some(0.5));
}

#[tokio::test(start_paused = true)]
async fn count_window_drops_failures_that_slid_out() {
    let breaker = builder()
        .failure_rate(0.5)
        .count_window(10)
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    // 4 failures, then 10 successes push them out of the window.
    calls(&mut svc, 4, || Req::Err).await;
    calls(&mut svc, 10, || Req::Ok).await;
    assert_eq!(breaker.snapshot().failure_rate, Some(0.0));
    // 4 more failures make 4 of the last 10: still closed. A window that never
    // dropped old calls would hold 8 of 18 here, and trip at the next.
    calls(&mut svc, 4, || Req::Err).await;
    call(&mut svc, Req::Ok).await;
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.snapshot().failure_rate, Some(0.4));
}

#[tokio::test(start_paused = true)]
async fn min_calls_holds_a_rate_rule_back() {
    let breaker = builder()
        .failure_rate(0.5)
        .count_window(10)
        .min_calls(5)
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    // 100% failures, but only 4 calls.
    calls(&mut svc, 4, || Req::Err).await;
    assert_eq!(breaker.state(), State::Closed);
    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_success_never_trips() {
    // At the 6th call the rate is 5/6 with min_calls met, but it was a success.
    let breaker = builder()
        .failure_rate(0.5)
        .count_window(10)
        .min_calls(6)
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    calls(&mut svc, 5, || Req::Err).await;
    call(&mut svc, Req::Ok).await;
    assert_eq!(breaker.state(), State::Closed);
    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let breaker = builder()
        .failure_rate(0.5)
        .time_window(secs(10))
        .min_calls(4)
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    calls(&mut svc, 3, || Req::Err).await;
    call(&mut svc, Req::Ok).await;
    assert_eq!(breaker.state(), State::Closed);

    tokio::time::advance(secs(10)).await;
    // The 4 calls of 10 s ago are gone: a failure now is 1 call of 1, below min_calls.
    // With them still counted it would be 4 failures of 5 and trip.
    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.snapshot().failure_rate, Some(1.0));
    call(&mut svc, Req::Ok).await;
    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.state(), State::Closed);

    // Still inside the window: 3 failures of 4 trips.
    tokio::time::advance(secs(5)).await;
    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_trips_exactly_at_the_rate() {
    let breaker = builder()
        .failure_rate(0.5)
        .time_window(secs(60))
        .min_calls(10)
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    for _ in 0..6 {
        call(&mut svc, Req::Ok).await;
        tokio::time::advance(secs(1)).await;
    }
    for _ in 0..5 {
        call(&mut svc, Req::Err).await;
        tokio::time::advance(secs(1)).await;
    }
    // 5 of 11.
    assert_eq!(breaker.state(), State::Closed);
    call(&mut svc, Req::Err).await;
    // 6 of 12.
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_the_slow_rule() {
    let breaker = builder()
        .slow_calls(ms(100), 0.5)
        .count_window(4)
        .min_calls(4)
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    call(&mut svc, Req::Ok).await;
    call(&mut svc, Req::After(ms(100), true)).await; // exactly the threshold: not slow
    call(&mut svc, Req::After(ms(101), true)).await; // slow, 3 calls: below min_calls
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.snapshot().slow, 1);
    // Slow successes: 2 of 4.
    assert_eq!(call(&mut svc, Req::After(secs(1), true)).await, Seen::Ok);
    assert_eq!(breaker.state(), State::Open);
    let snap = breaker.snapshot();
    assert_eq!((snap.slow, snap.successes, snap.failures), (2, 4, 0));
}

/// Trips when one of the last two calls took longer than `threshold`.
fn slow_rule(threshold: Duration) -> Breaker {
    builder()
        .slow_calls(threshold, 0.5)
        .count_window(2)
        .min_calls(2)
        .build()
        .unwrap()
}

/// Busy for `time` of real time: work, not a sleep (nothing waits).
fn work_for(time: Duration) {
    let begun = std::time::Instant::now();
    while begun.elapsed() < time {
        std::hint::spin_loop();
    }
}

/// A call whose future is ready at its first poll is timed in real time, even under a
/// paused clock: one that computes for 60 ms is slow against a 50 ms threshold, one
/// that returns at once is not. (Work, not a sleep: nothing waits.)
#[tokio::test(start_paused = true)]
async fn a_call_that_never_waits_is_timed_in_real_time() {
    use tower::{Service, ServiceExt};
    let breaker = slow_rule(ms(50));
    let work = tower::service_fn(|spin: Duration| async move {
        work_for(spin);
        Ok::<_, &'static str>(())
    });
    let mut svc = steadfast::breaker::BreakerService::new(work, breaker.clone());
    svc.ready()
        .await
        .unwrap()
        .call(Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(breaker.snapshot().slow, 0);
    svc.ready().await.unwrap().call(ms(60)).await.unwrap();
    assert_eq!(breaker.snapshot().slow, 1);
    assert_eq!(breaker.state(), State::Open, "1 slow call of 2");
}

/// On a running (not paused) clock, what a call does before it first waits counts
/// too: 60 ms of work, then a wait, is slow against a 50 ms threshold. (Work and a
/// yield, not a sleep.)
#[tokio::test]
async fn work_before_a_calls_first_wait_counts_on_a_running_clock() {
    use tower::{Service, ServiceExt};
    let breaker = slow_rule(ms(50));
    let work_then_wait = tower::service_fn(|spin: Duration| async move {
        work_for(spin);
        tokio::task::yield_now().await;
        Ok::<_, &'static str>(())
    });
    let mut svc = steadfast::breaker::BreakerService::new(work_then_wait, breaker.clone());
    svc.ready().await.unwrap().call(ms(60)).await.unwrap();
    assert_eq!(breaker.snapshot().slow, 1);
}

/// A call that waits more than once is timed from its start, not from its last wait:
/// two waits of 60 ms make a slow call against a 100 ms threshold.
#[tokio::test(start_paused = true)]
async fn a_call_that_waits_twice_is_timed_from_its_start() {
    use tower::{Service, ServiceExt};
    let breaker = slow_rule(ms(100));
    let twice = tower::service_fn(|wait: Duration| async move {
        tokio::time::sleep(wait).await;
        tokio::time::sleep(wait).await;
        Ok::<_, &'static str>(())
    });
    let mut svc = steadfast::breaker::BreakerService::new(twice, breaker.clone());
    svc.ready().await.unwrap().call(ms(30)).await.unwrap();
    assert_eq!(breaker.snapshot().slow, 0, "60 ms in all");
    svc.ready().await.unwrap().call(ms(60)).await.unwrap();
    assert_eq!(breaker.snapshot().slow, 1, "120 ms in all");
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn breakers_called_in_turn_count_successes_in_their_own_ticks() {
    // Six time windows (more than a thread keeps ticks for), started 300 ms apart so
    // that their buckets do not line up, called in turn from one thread.
    let mut all = Vec::new();
    for _ in 0..6 {
        let breaker = builder()
            .failure_rate(0.5)
            .time_window(secs(10))
            .min_calls(2)
            .build()
            .unwrap();
        let (svc, _) = guarded(&breaker);
        all.push((breaker, svc));
        tokio::time::advance(ms(300)).await;
    }
    // At 1.8 s two successes in each (the second one finds its tick where the
    // thread keeps it), and at 11.5 s one more.
    for (_, svc) in &mut all {
        assert_eq!(calls(svc, 2, || Req::Ok).await, [Seen::Ok, Seen::Ok]);
    }
    tokio::time::advance(ms(9700)).await;
    for (_, svc) in &mut all {
        assert_eq!(call(svc, Req::Ok).await, Seen::Ok);
    }
    // At 12.5 s the first successes have left every window and the last ones have
    // not: a failure is 1 of 2 and trips. A success counted in the tick of the one
    // before it would have left too, leaving 1 call, below `min_calls`.
    tokio::time::advance(secs(1)).await;
    for (i, (breaker, svc)) in all.iter_mut().enumerate() {
        assert_eq!(call(svc, Req::Err).await, Seen::Failed);
        assert_eq!(breaker.state(), State::Open, "breaker {i}");
        assert_eq!(breaker.snapshot().failure_rate, Some(0.5), "breaker {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn slow_calls_slide_out_of_a_count_window() {
    // Fast successes into a full window without a slow call change nothing in it; once
    // one is in, they must take positions again and push it out.
    let breaker = builder()
        .slow_calls(ms(100), 0.5)
        .count_window(10)
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    calls(&mut svc, 1000, || Req::Ok).await;
    calls(&mut svc, 4, || Req::After(ms(101), true)).await;
    calls(&mut svc, 10, || Req::Ok).await;
    calls(&mut svc, 4, || Req::After(ms(101), true)).await;
    // 4 of the last 10 are slow, not 8.
    assert_eq!(breaker.state(), State::Closed);
    call(&mut svc, Req::After(ms(101), true)).await;
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.snapshot().slow, 9);
}

#[tokio::test(start_paused = true)]
async fn fast_calls_count_in_a_time_windows_slow_rate() {
    let breaker = builder()
        .slow_calls(ms(100), 0.5)
        .time_window(secs(10))
        .min_calls(4)
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    calls(&mut svc, 3, || Req::Ok).await;
    calls(&mut svc, 2, || Req::After(ms(101), true)).await;
    // 2 of 5 slow.
    assert_eq!(breaker.state(), State::Closed);
    call(&mut svc, Req::After(ms(101), true)).await;
    // 3 of 6.
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_rule_combines_with_failure_rate() {
    let breaker = builder()
        .failure_rate(0.75)
        .slow_calls(ms(50), 0.75)
        .time_window(secs(10))
        .min_calls(4)
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    // 2 failures + 1 slow success + 1 fast success: neither rate reaches 75%.
    call(&mut svc, Req::Err).await;
    call(&mut svc, Req::Err).await;
    call(&mut svc, Req::After(ms(60), true)).await;
    call(&mut svc, Req::Ok).await;
    assert_eq!(breaker.state(), State::Closed);
    // A slow failure: 3 of 5 failed, 2 of 5 slow.
    call(&mut svc, Req::After(ms(60), false)).await;
    assert_eq!(breaker.state(), State::Closed);
    // 3 more slow failures: failures 6 of 8 = 75%.
    calls(&mut svc, 2, || Req::After(ms(60), false)).await;
    assert_eq!(breaker.state(), State::Closed);
    call(&mut svc, Req::After(ms(60), false)).await;
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_are_not_counted() {
    let breaker = builder().consecutive_failures(2).build().unwrap();
    let (mut svc, _) = guarded(&breaker);
    call(&mut svc, Req::Err).await;
    // Ignored calls neither count as failures nor break the run of failures.
    calls(&mut svc, 10, || Req::Ignore).await;
    assert_eq!(breaker.state(), State::Closed);
    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.state(), State::Open);
    let snap = breaker.snapshot();
    assert_eq!(
        (snap.calls, snap.successes, snap.failures, snap.ignored),
        (12, 0, 2, 10)
    );

    let breaker = builder()
        .failure_rate(0.5)
        .count_window(4)
        .min_calls(4)
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    calls(&mut svc, 3, || Req::Err).await;
    calls(&mut svc, 50, || Req::Ignore).await;
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.snapshot().failure_rate, Some(1.0));
    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn any_rule_that_holds_opens() {
    // The rate rule trips while the consecutive rule is far from it.
    let breaker = builder()
        .consecutive_failures(10)
        .failure_rate(0.5)
        .count_window(4)
        .min_calls(4)
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    for req in [Req::Ok, Req::Err, Req::Ok] {
        call(&mut svc, req).await;
    }
    assert_eq!(breaker.state(), State::Closed);
    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn defaults_trip_when_nearly_every_call_of_2_5s_fails() {
    let breaker = Breaker::new("defaults");
    let (mut svc, _) = guarded(&breaker);
    // 20 calls are needed before the rate rule judges: 19 failures leave it closed,
    // and nothing is shed (the first 20 calls never are).
    assert!(calls(&mut svc, 19, || Req::Err)
        .await
        .iter()
        .all(|seen| *seen == Seen::Failed));
    assert_eq!(breaker.state(), State::Closed);
    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.state(), State::Open);
    // Default open delay: 5 s with equal jitter, so in [2.5 s, 5 s].
    let after = breaker.snapshot().retry_after.unwrap();
    assert!(after >= ms(2500) && after <= secs(5), "{after:?}");

    // 94% failures of the window is below the rule: 1 success, then 16 failures.
    breaker.reset();
    call(&mut svc, Req::Ok).await;
    calls(&mut svc, 18, || Req::Err).await;
    assert_eq!(breaker.state(), State::Closed, "18 of 19");
    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.state(), State::Open, "19 of 20 is 95%");

    // The window is the last 2.5 s: failures older than that are forgotten.
    breaker.reset();
    calls(&mut svc, 19, || Req::Err).await;
    tokio::time::advance(secs(4)).await;
    calls(&mut svc, 19, || Req::Err).await;
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn defaults_ride_out_a_30_percent_brownout_without_shedding() {
    // A brownout at a high call rate: 30% of calls fail, in runs of up to 6 in a row.
    // The defaults of 0.1 tripped on the first run of 5.
    let breaker = Breaker::new("defaults");
    let (mut svc, reached) = guarded(&breaker);
    for i in 0..4_000u32 {
        let fail = matches!(i % 20, 0..=5);
        let seen = call(&mut svc, if fail { Req::Err } else { Req::Ok }).await;
        assert!(!matches!(seen, Seen::Rejected(_)), "call {i} rejected");
        tokio::time::advance(ms(1)).await;
    }
    let snap = breaker.snapshot();
    assert_eq!((snap.state, snap.trips, snap.shed), (State::Closed, 0, 0));
    assert_eq!(reached.load(Ordering::SeqCst), 4_000);
}

#[tokio::test(start_paused = true)]
async fn defaults_shed_the_load_an_overloaded_downstream_cannot_take() {
    // The defaults, seeded: the same draws on every run.
    let breaker = Breaker::builder("defaults").seed(7).build().unwrap();
    let (mut svc, reached) = guarded(&breaker);
    // 1,000 calls a second to a downstream that can answer 250 of them (25 per 100 ms;
    // the rest fail): at 75% failures, below the 95% rule. The throttle lets through
    // about k = 2 times what succeeds, and sheds the rest.
    let (mut shed, mut in_bucket) = (0u32, 0u32);
    let mut sent_late = 0u32;
    for i in 0..12_000u32 {
        if i % 100 == 0 {
            in_bucket = 0;
        }
        let before = reached.load(Ordering::SeqCst);
        let req = if in_bucket < 25 { Req::Ok } else { Req::Err };
        match call(&mut svc, req).await {
            // A shed call's hint: a tenth of the 2.5 s window.
            Seen::Rejected(Some(hint)) if hint == ms(250) => shed += 1,
            Seen::Rejected(hint) => panic!("call {i}: open, hint {hint:?}"),
            _ => {}
        }
        if reached.load(Ordering::SeqCst) > before {
            in_bucket += 1;
            if i >= 8_000 {
                sent_late += 1;
            }
        }
        tokio::time::advance(ms(1)).await;
    }
    let snap = breaker.snapshot();
    assert_eq!((snap.state, snap.trips), (State::Closed, 0));
    assert_eq!(
        (snap.shed, snap.rejected),
        (u64::from(shed), u64::from(shed))
    );
    // In the last 4 s, after the ramp: about 2 x 250 calls a second
    // reach the downstream (plus the 20 never shed per window), not 1,000.
    let per_sec = f64::from(sent_late) / 4.0;
    assert!((450.0..=560.0).contains(&per_sec), "{per_sec} calls/s sent");

    // The downstream recovers: within a window nothing is shed any more.
    for _ in 0..4_000 {
        call(&mut svc, Req::Ok).await;
        tokio::time::advance(ms(1)).await;
    }
    let before = breaker.snapshot().shed;
    for _ in 0..1_000 {
        assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok);
        tokio::time::advance(ms(1)).await;
    }
    assert_eq!(breaker.snapshot().shed, before);
}

#[tokio::test(start_paused = true)]
async fn defaults_shed_to_a_trickle_when_most_calls_fail_whatever_the_load() {
    // The documented cost of throttling: failures that do not come from load (3 in 4
    // whatever is sent) look like an overload that never eases, and the throttle
    // shrinks the calls sent toward what `min_calls` and twice the successes allow.
    // The defaults, seeded: the same draws on every run.
    let breaker = Breaker::builder("defaults").seed(7).build().unwrap();
    let (mut svc, reached) = guarded(&breaker);
    let mut sent = [0u32; 6];
    for i in 0..30_000u32 {
        let before = reached.load(Ordering::SeqCst);
        call(&mut svc, if i % 4 == 0 { Req::Ok } else { Req::Err }).await;
        if reached.load(Ordering::SeqCst) > before {
            sent[(i / 5_000) as usize] += 1;
        }
        tokio::time::advance(ms(1)).await;
    }
    assert_eq!(breaker.state(), State::Closed);
    // Each 5 s sends fewer than the last, down to a trickle: in equilibrium S per 5 s
    // with S = 2 (S / 4) + 20, about 40, against 5,000 offered (measured: 907, 269, 82,
    // then 27 to 39).
    assert!(sent[0] > sent[1] && sent[1] > sent[2], "{sent:?}");
    assert!(sent[3..].iter().all(|s| *s <= 120), "{sent:?}");
}

#[tokio::test(start_paused = true)]
async fn a_shed_call_is_an_open_rejection_marked_shed() {
    use steadfast::breaker::error::Open;
    use tower::{Service, ServiceExt};
    let breaker = Breaker::builder("throttled")
        .consecutive_failures(1_000)
        .adaptive_throttling(1.0)
        .min_calls(1)
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    calls(&mut svc, 50, || Req::Err).await;
    // p = (50 - 0 - 1) / 51: nearly every call is shed now.
    let mut found = None;
    for _ in 0..50 {
        let result = svc.ready().await.unwrap().call(Req::Err).await;
        if let Err(e) = result {
            if let Some(open) = e.downcast_ref::<Open>() {
                found = Some(open.clone());
                break;
            }
        }
    }
    let open = found.expect("a call was shed");
    assert!(open.is_shed());
    assert_eq!(
        open.retry_after(),
        Some(ms(250)),
        "a tenth of the 2.5 s window"
    );
    assert_eq!(open.breaker(), "throttled");
    assert_eq!(
        open.to_string(),
        "circuit breaker `throttled` shed the call"
    );
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn one_request_with_default_retries_cannot_trip_the_default_breaker() {
    use steadfast::retry::{RetryLayer, RetryPolicy};
    use tower::{Layer, Service, ServiceExt};
    // Each attempt is a breaker call: 3 attempts are 3 failed calls, and the default
    // rule needs 20 calls in its window.
    let breaker = Breaker::new("defaults");
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reached.clone();
    let inner = tower::service_fn(move |_: u32| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>("refused") }
    });
    let mut svc = RetryLayer::new(RetryPolicy::new())
        .unwrap()
        .layer(breaker.layer().layer(inner));
    let result = svc.ready().await.unwrap().call(7).await;
    assert!(result.is_err());
    assert_eq!(
        reached.load(Ordering::SeqCst),
        3,
        "every attempt called through"
    );
    assert_eq!(breaker.snapshot().failures, 3);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_call_from_before_a_trip_does_not_count_after_it() {
    let breaker = builder()
        .consecutive_failures(2)
        .half_open_calls(1)
        .open_backoff(Backoff::constant(secs(1)))
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    let (mut late, _) = guarded(&breaker);
    // A slow call starts while closed and fails only at 5 s.
    let slow = tokio::spawn(async move { call(&mut late, Req::After(secs(5), false)).await });
    tokio::task::yield_now().await;
    calls(&mut svc, 2, || Req::Err).await;
    assert_eq!(breaker.state(), State::Open);
    tokio::time::advance(secs(1)).await;
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok); // the trial closes it
    assert_eq!(breaker.state(), State::Closed);
    call(&mut svc, Req::Err).await; // one failure of two in a row
    assert_eq!(slow.await.unwrap(), Seen::Failed);
    // Counting the old call would make two in a row and trip again.
    assert_eq!(breaker.state(), State::Closed);
    let snap = breaker.snapshot();
    assert_eq!((snap.trips, snap.failures), (1, 4));
}

#[tokio::test(start_paused = true)]
async fn a_shed_call_is_never_retried() {
    use steadfast::breaker::error::Open;
    use steadfast::retry::{RetryLayer, RetryPolicy};
    use tower::{Layer, Service, ServiceExt};
    let breaker = Breaker::builder("throttled")
        .consecutive_failures(1_000)
        .adaptive_throttling(1.0)
        .min_calls(1)
        .seed(3)
        .build()
        .unwrap();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reached.clone();
    let inner = tower::service_fn(move |_: u32| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>("overloaded") }
    });
    let mut svc = RetryLayer::new(
        RetryPolicy::new()
            .max_attempts(3)
            .backoff(Backoff::constant(ms(0))),
    )
    .unwrap()
    .layer(breaker.layer().layer(inner));
    // Every attempt fails: soon nearly every call is shed.
    let mut shed = 0;
    for i in 0..200 {
        let before = reached.load(Ordering::SeqCst);
        let err = svc.ready().await.unwrap().call(i).await.unwrap_err();
        if let Some(open) = err.downcast_ref::<Open>() {
            assert!(open.is_shed());
            shed += 1;
            // Shed on its first attempt: the retry layer did not try again. (A shed
            // on a later attempt ends the request too; then the earlier attempts
            // reached the downstream.)
            assert!(reached.load(Ordering::SeqCst) - before <= 2, "request {i}");
        } else {
            assert_eq!(reached.load(Ordering::SeqCst) - before, 3, "request {i}");
        }
    }
    assert!(shed > 100, "{shed} of 200 requests ended shed");
    assert_eq!(breaker.snapshot().shed, shed);
}
