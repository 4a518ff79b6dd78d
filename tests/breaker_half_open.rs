//! Open -> half-open -> closed: delays that grow and reset, exact trial counts, and
//! trials that are dropped or hang.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use steadfast::backoff::Backoff;
use steadfast::breaker::{Breaker, State};
use tokio::sync::oneshot;
use tokio::time::advance;
use tower::{Service, ServiceExt};

fn builder() -> steadfast::breaker::BreakerBuilder {
    Breaker::builder("half-open")
        .consecutive_failures(1)
        .open_backoff(Backoff::exponential(secs(1), secs(8)))
}

#[tokio::test(start_paused = true)]
async fn full_cycle_with_growing_then_reset_delays() {
    let breaker = builder().half_open_calls(1).build().unwrap();
    let (mut svc, reached) = guarded(&breaker);
    let mut states = breaker.subscribe();

    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(Some(secs(1))));
    advance(ms(999)).await;
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(Some(ms(1))));
    assert_eq!(breaker.state(), State::Open);

    // Each failed trial opens for the next, longer delay: 2 s, 4 s, 8 s, 8 s.
    advance(ms(1)).await;
    for delay in [2, 4, 8, 8] {
        assert_eq!(call(&mut svc, Req::Err).await, Seen::Failed);
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.snapshot().retry_after, Some(secs(delay)));
        advance(secs(delay) - ms(1)).await;
        assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(Some(ms(1))));
        advance(ms(1)).await;
    }
    // The trial succeeds: closed, and the next trip starts over at 1 s.
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok);
    assert_eq!(breaker.state(), State::Closed);
    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.snapshot().retry_after, Some(secs(1)));

    let snap = breaker.snapshot();
    assert_eq!(snap.trips, 6);
    assert_eq!(snap.rejected, 6);
    assert_eq!(reached.load(Ordering::SeqCst), 7);
    assert_eq!(snap.calls, 7);
    // The watch saw the latest state.
    assert!(states.has_changed().unwrap());
    assert_eq!(*states.borrow_and_update(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn jittered_open_delays_follow_the_seeded_backoff() {
    let backoff = Backoff::exponential(secs(1), secs(30))
        .jitter(steadfast::backoff::Jitter::Full)
        .seed(42);
    let expected: Vec<_> = backoff.iter().take(4).collect();
    let breaker = builder()
        .open_backoff(backoff)
        .half_open_calls(1)
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    call(&mut svc, Req::Err).await;
    for delay in &expected {
        assert_eq!(breaker.snapshot().retry_after, Some(*delay));
        advance(*delay).await;
        call(&mut svc, Req::Err).await; // the trial fails
    }
}

/// Starts a call on its own service clone; the call waits on a gate.
async fn gated_call(svc: &Svc) -> (tokio::task::JoinHandle<Seen>, oneshot::Sender<bool>) {
    let (tx, rx) = oneshot::channel();
    let mut svc = svc.clone();
    let handle = tokio::spawn(async move { call(&mut svc, Req::Gate(rx)).await });
    tokio::task::yield_now().await;
    (handle, tx)
}

#[tokio::test(start_paused = true)]
async fn exactly_n_concurrent_trials_then_closed() {
    let breaker = builder().half_open_calls(3).build().unwrap();
    let (mut svc, reached) = guarded(&breaker);
    call(&mut svc, Req::Err).await;
    advance(secs(1)).await;

    let mut trials = Vec::new();
    for _ in 0..3 {
        trials.push(gated_call(&svc).await);
    }
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(reached.load(Ordering::SeqCst), 4);
    // Every permit is out: the rest are rejected fast without reaching the downstream.
    for _ in 0..5 {
        assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(None));
    }
    assert_eq!(reached.load(Ordering::SeqCst), 4);

    // Two succeed: still half-open. The third closes it.
    for (i, (handle, gate)) in trials.into_iter().enumerate() {
        gate.send(true).unwrap();
        assert_eq!(handle.await.unwrap(), Seen::Ok);
        let expected = if i < 2 {
            State::HalfOpen
        } else {
            State::Closed
        };
        assert_eq!(breaker.state(), expected);
    }
    assert_eq!(breaker.snapshot().rejected, 5);
}

#[tokio::test(start_paused = true)]
async fn one_failed_trial_reopens_for_longer() {
    let breaker = builder().half_open_calls(3).build().unwrap();
    let (mut svc, _) = guarded(&breaker);
    call(&mut svc, Req::Err).await;
    advance(secs(1)).await;
    let (a, gate_a) = gated_call(&svc).await;
    let (b, gate_b) = gated_call(&svc).await;
    let (c, gate_c) = gated_call(&svc).await;
    gate_a.send(true).unwrap();
    assert_eq!(a.await.unwrap(), Seen::Ok);
    gate_b.send(false).unwrap();
    assert_eq!(b.await.unwrap(), Seen::Failed);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.snapshot().retry_after, Some(secs(2)));
    // The last trial's success comes too late to count.
    gate_c.send(true).unwrap();
    assert_eq!(c.await.unwrap(), Seen::Ok);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.snapshot().trips, 2);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_trial_gives_its_permit_back() {
    let breaker = builder().half_open_calls(1).build().unwrap();
    let (mut svc, _) = guarded(&breaker);
    call(&mut svc, Req::Err).await;
    advance(secs(1)).await;

    let (trial, _gate) = gated_call(&svc).await;
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(None));
    trial.abort(); // the caller gave up: the future is dropped
    assert!(trial.await.unwrap_err().is_cancelled());
    let before = breaker.snapshot();

    // The permit is free again: the next call is the trial, and it closes the breaker.
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok);
    assert_eq!(breaker.state(), State::Closed);
    let after = breaker.snapshot();
    // The dropped call counted as nothing.
    assert_eq!((before.calls, before.failures, before.trips), (1, 1, 1));
    assert_eq!((after.calls, after.successes), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_permit_taken_by_poll_ready_comes_back_when_the_service_is_dropped() {
    let breaker = builder().half_open_calls(1).build().unwrap();
    let (mut svc, _) = guarded(&breaker);
    call(&mut svc, Req::Err).await;
    advance(secs(1)).await;
    let mut holder = svc.clone();
    holder.ready().await.unwrap(); // takes the only trial permit
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(None));
    drop(holder);
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_hung_trial_times_out_and_the_breaker_recovers() {
    let breaker = builder()
        .half_open_calls(1)
        .half_open_timeout(secs(5))
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    call(&mut svc, Req::Err).await;
    advance(secs(1)).await;

    let mut hung_svc = svc.clone();
    let hung = tokio::spawn(async move { call(&mut hung_svc, Req::Hang).await });
    tokio::task::yield_now().await;
    assert_eq!(breaker.state(), State::HalfOpen);
    advance(ms(4999)).await;
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(None));
    assert_eq!(breaker.state(), State::HalfOpen);

    // At the timeout the hung trial counts as failed: open again, for the next delay.
    advance(ms(1)).await;
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(Some(secs(2))));
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.snapshot().trips, 2);

    advance(secs(2)).await;
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok);
    assert_eq!(breaker.state(), State::Closed);
    assert!(!hung.is_finished());
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn an_ignored_trial_frees_its_permit() {
    let breaker = builder().half_open_calls(1).build().unwrap();
    let (mut svc, _) = guarded(&breaker);
    call(&mut svc, Req::Err).await;
    advance(secs(1)).await;
    assert_eq!(call(&mut svc, Req::Ignore).await, Seen::Failed);
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok);
    assert_eq!(breaker.state(), State::Closed);
}

/// A breaker with a slow-call rule and one trial, opened by two slow calls.
async fn tripped_by_slow_calls() -> (Breaker, Svc) {
    let breaker = Breaker::builder("slow")
        .slow_calls(ms(100), 0.5)
        .count_window(2)
        .min_calls(2)
        .half_open_calls(1)
        .open_backoff(Backoff::constant(secs(1)))
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    calls(&mut svc, 2, || Req::After(ms(200), true)).await;
    assert_eq!(breaker.state(), State::Open);
    (breaker, svc)
}

#[tokio::test(start_paused = true)]
async fn a_slow_trial_is_a_failed_trial() {
    let (breaker, mut svc) = tripped_by_slow_calls().await;
    advance(secs(1)).await;
    assert_eq!(call(&mut svc, Req::After(ms(200), true)).await, Seen::Ok);
    assert_eq!(breaker.state(), State::Open);
    advance(secs(1)).await;
    assert_eq!(call(&mut svc, Req::After(ms(50), true)).await, Seen::Ok);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_trial_is_timed_from_its_call_not_from_poll_ready() {
    // The permit is taken by `poll_ready`; a call made long after it is timed from
    // when it was made, so a fast trial is not slow for the wait before it.
    let (breaker, mut svc) = tripped_by_slow_calls().await;
    advance(secs(1)).await;
    svc.ready().await.expect("ready");
    assert_eq!(breaker.state(), State::HalfOpen);
    advance(ms(500)).await;
    let trial = svc.call(Req::After(ms(50), true));
    assert_eq!(seen(trial.await), Seen::Ok);
    assert_eq!(breaker.state(), State::Closed);
}

/// The same in real time: 120 ms of work between the permit and the call do not make
/// a fast trial slow against a 100 ms threshold. (Work, not a sleep: nothing waits.)
#[tokio::test(start_paused = true)]
async fn a_trial_is_timed_from_its_call_in_real_time_too() {
    let (breaker, mut svc) = tripped_by_slow_calls().await;
    advance(secs(1)).await;
    svc.ready().await.expect("ready");
    assert_eq!(breaker.state(), State::HalfOpen);
    let begun = std::time::Instant::now();
    while begun.elapsed() < ms(120) {
        std::hint::spin_loop();
    }
    assert_eq!(seen(svc.call(Req::Ok).await), Seen::Ok);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn forced_states_hold_until_reset() {
    let breaker = builder().build().unwrap();
    let (mut svc, reached) = guarded(&breaker);

    breaker.force_open();
    assert_eq!(breaker.state(), State::ForcedOpen);
    advance(secs(3600)).await;
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(None));
    assert_eq!(reached.load(Ordering::SeqCst), 0);

    breaker.force_closed();
    assert_eq!(calls(&mut svc, 20, || Req::Err).await.len(), 20);
    assert_eq!(breaker.state(), State::ForcedClosed);
    assert_eq!(reached.load(Ordering::SeqCst), 20);

    breaker.reset();
    assert_eq!(breaker.state(), State::Closed);
    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.state(), State::Open);
    // Forcing is not a trip; only the last failure was.
    assert_eq!(breaker.snapshot().trips, 1);

    // Reset from open closes at once, with the open backoff started over.
    advance(secs(1)).await;
    call(&mut svc, Req::Err).await; // failed trial: open for 2 s
    assert_eq!(breaker.snapshot().retry_after, Some(secs(2)));
    breaker.reset();
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok);
    call(&mut svc, Req::Err).await;
    assert_eq!(breaker.snapshot().retry_after, Some(secs(1)));
}

#[tokio::test(start_paused = true)]
async fn start_open_boots_rejecting_then_recovers() {
    let breaker = builder().half_open_calls(1).start_open().build().unwrap();
    let (mut svc, reached) = guarded(&breaker);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(Some(secs(1))));
    assert_eq!(reached.load(Ordering::SeqCst), 0);
    advance(secs(1)).await;
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok);
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.snapshot().trips, 0);
}

#[tokio::test(start_paused = true)]
async fn subscribers_see_every_transition() {
    let breaker = builder().half_open_calls(1).build().unwrap();
    let (mut svc, _) = guarded(&breaker);
    let mut rx = breaker.subscribe();
    let seen = tokio::spawn(async move {
        let mut states = Vec::new();
        while rx.changed().await.is_ok() {
            states.push(*rx.borrow_and_update());
            if states.len() == 4 {
                break;
            }
        }
        states
    });
    call(&mut svc, Req::Err).await;
    tokio::task::yield_now().await;
    advance(secs(1)).await;
    let mut trial = svc.clone();
    trial.ready().await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(trial.call(Req::Ok).await.ok(), Some(()));
    tokio::task::yield_now().await;
    breaker.force_open();
    assert_eq!(
        seen.await.unwrap(),
        [
            State::Open,
            State::HalfOpen,
            State::Closed,
            State::ForcedOpen
        ]
    );
}

/// Regression (found by tests/model.rs): the timeout used to be checked against the
/// *youngest* trial's deadline, so a hung trial was noticed only once every later trial
/// was overdue too.
#[tokio::test(start_paused = true)]
async fn a_hung_trial_counts_as_failed_at_its_own_timeout() {
    let breaker = builder()
        .half_open_calls(2)
        .half_open_timeout(secs(5))
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    call(&mut svc, Req::Err).await;
    advance(secs(1)).await;
    let (hung, _gate) = gated_call(&svc).await;
    advance(ms(4500)).await;
    // The second trial succeeds; the first still holds its permit.
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok);
    assert_eq!(breaker.state(), State::HalfOpen);
    advance(ms(499)).await;
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(None));
    // 5 s after the first trial started, it has failed: open again for the next delay.
    advance(ms(1)).await;
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(Some(secs(2))));
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.snapshot().trips, 2);
    hung.abort();
}

/// Regression (found by tests/model.rs): while other trials kept freeing their permits
/// (ignored or dropped), a hung trial was never timed out and held the breaker in
/// half-open for good.
#[tokio::test(start_paused = true)]
async fn a_hung_trial_times_out_while_other_trials_free_their_permits() {
    let breaker = builder()
        .half_open_calls(2)
        .half_open_timeout(secs(5))
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    call(&mut svc, Req::Err).await;
    advance(secs(1)).await;
    let (hung, _gate) = gated_call(&svc).await;
    for _ in 0..4 {
        advance(secs(1)).await;
        // Admitted as the other trial, ignored: its permit is free again.
        assert_eq!(call(&mut svc, Req::Ignore).await, Seen::Failed);
        assert_eq!(breaker.state(), State::HalfOpen);
    }
    advance(secs(1)).await;
    assert_eq!(
        call(&mut svc, Req::Ignore).await,
        Seen::Rejected(Some(secs(2)))
    );
    assert_eq!(breaker.state(), State::Open);
    hung.abort();
}

/// A trial that succeeded is done: its timeout no longer applies, only those of the
/// trials still running.
#[tokio::test(start_paused = true)]
async fn a_trial_that_succeeded_never_times_out() {
    let breaker = builder()
        .half_open_calls(2)
        .half_open_timeout(secs(5))
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    call(&mut svc, Req::Err).await;
    advance(secs(1)).await;
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok);
    advance(secs(3)).await;
    let (running, gate) = gated_call(&svc).await;
    // Past the first trial's timeout, within the running one's: still half-open.
    advance(secs(4)).await;
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(None));
    assert_eq!(breaker.state(), State::HalfOpen);
    gate.send(true).unwrap();
    assert_eq!(running.await.unwrap(), Seen::Ok);
    assert_eq!(breaker.state(), State::Closed);
}

/// Trips a `builder()` breaker, starts a trial that hangs past the 5 s timeout, and
/// brings the breaker to its next half-open: returns the stale trial's task and gate.
async fn next_half_open_with_a_stale_trial(
    svc: &mut Svc,
    breaker: &Breaker,
) -> (tokio::task::JoinHandle<Seen>, oneshot::Sender<bool>) {
    call(svc, Req::Err).await;
    advance(secs(1)).await;
    let stale = gated_call(svc).await;
    advance(secs(5)).await;
    assert_eq!(call(svc, Req::Ok).await, Seen::Rejected(Some(secs(2))));
    advance(secs(2)).await;
    assert_eq!(breaker.state(), State::Open);
    stale
}

/// A trial of an earlier half-open that ends (dropped) during a later one gives that
/// one no permit back: the trial limit holds.
#[tokio::test(start_paused = true)]
async fn a_stale_trial_dropped_frees_no_permit_of_the_next_half_open() {
    let breaker = builder()
        .half_open_calls(1)
        .half_open_timeout(secs(5))
        .build()
        .unwrap();
    let (mut svc, reached) = guarded(&breaker);
    let (stale, _stale_gate) = next_half_open_with_a_stale_trial(&mut svc, &breaker).await;
    let (trial, gate) = gated_call(&svc).await;
    assert_eq!(breaker.state(), State::HalfOpen);
    stale.abort();
    assert!(stale.await.unwrap_err().is_cancelled());
    // The only permit is still the running trial's.
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(None));
    assert_eq!(reached.load(Ordering::SeqCst), 3);
    gate.send(true).unwrap();
    assert_eq!(trial.await.unwrap(), Seen::Ok);
    assert_eq!(breaker.state(), State::Closed);
}

/// A trial of an earlier half-open that succeeds late does not count toward closing a
/// later one: every one of its own trials must succeed.
#[tokio::test(start_paused = true)]
async fn a_stale_trial_succeeding_late_counts_for_nothing() {
    let breaker = builder()
        .half_open_calls(3)
        .half_open_timeout(secs(5))
        .build()
        .unwrap();
    let (mut svc, _) = guarded(&breaker);
    // Fill the first half-open's other permits so the stale trial's timeout is seen.
    call(&mut svc, Req::Err).await;
    advance(secs(1)).await;
    let (stale, stale_gate) = gated_call(&svc).await;
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok);
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok);
    advance(secs(5)).await;
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Rejected(Some(secs(2))));
    advance(secs(2)).await;

    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok); // trial 1 of 3
    stale_gate.send(true).unwrap();
    assert_eq!(stale.await.unwrap(), Seen::Ok); // late, from the first half-open
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok); // trial 2 of 3
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(call(&mut svc, Req::Ok).await, Seen::Ok); // trial 3 of 3
    assert_eq!(breaker.state(), State::Closed);
}
