//! [`Recorder`]: what a call carries from its admission to its outcome, and the
//! closed call's finish, inline.

use std::mem::ManuallyDrop;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};

use tokio::time::Instant;

use super::local::{with_local, Local};
use super::machine::{Admission, Reason, Shared};
use super::shard::{Shard, NO_OWNER};
use super::word::HALF_OPEN;
use crate::nanos::nanos;
use crate::stripe::bump;
use crate::Outcome;

/// Carried by a response future from admission to outcome. Dropping a trial's
/// recorder before [`Recorder::finish`] gives its permit back and counts nothing.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// `None` once finished or given back. Never dropped in place: the recorder's drop
    /// hands it to [`abandon`](Self::abandon), out of line, so that dropping a finished
    /// call's future is one check (the drop glue of an `Arc` is not small enough for it
    /// to be inlined into the caller's loop).
    shard: ManuallyDrop<Option<Arc<Shard>>>,
    /// The epoch the call was admitted in (low 32 bits), the id of a half-open trial
    /// whose permit is still held (the next 31, zero for none), and [`TIMED`]: one
    /// word, so that finishing a plain closed-state call checks one value.
    tag: u64,
    /// When the call started; only with a slow-call rule. Until the call first waits,
    /// a reading of [`counter`] with [`RAW`] set; from then on, nanoseconds since the
    /// breaker's start on tokio's clock, with [`RAW`] clear.
    start: u64,
}

/// In [`Recorder::start`]: the start is a reading of [`counter`]. Neither a reading
/// (a tick count since boot) nor nanoseconds since a breaker's start reach it in
/// less than 97 years.
const RAW: u64 = 1 << 63;

/// The clock a slow-call rule times a call by until the call first waits: the CPU's
/// time-stamp counter where it is steady, scaled to nanoseconds (`quanta`; ~10 ns a
/// read here against ~24 ns for `Instant::now()`), else the OS's monotonic clock.
///
/// A call that never waits (its inner future ready on its first poll) cannot see
/// tokio's clock move, paused or not, except by time that really passes, which this
/// clock measures. A call that waits may see a paused clock jump, so at its first wait
/// its start moves to tokio's clock (see [`Recorder::waited`]). Built, and calibrated
/// once per process (up to 200 ms), with the first breaker that has a slow-call rule.
pub(super) fn counter() -> &'static quanta::Clock {
    static COUNTER: OnceLock<quanta::Clock> = OnceLock::new();
    COUNTER.get_or_init(quanta::Clock::new)
}

/// Trial ids fit in this mask (31 bits).
pub(super) const TRIAL_MASK: u32 = (1 << 31) - 1;
/// In [`Recorder::tag`]: a rule needs the call's time.
pub(super) const TIMED: u64 = 1 << 63;

impl Recorder {
    /// A call admitted in the closed state of `epoch`.
    #[inline(always)]
    pub(crate) fn pass(shard: Arc<Shard>, epoch: u32) -> Self {
        let start = if shard.time_start {
            counter().raw() | RAW
        } else {
            0
        };
        Self {
            tag: u64::from(epoch) | shard.timed,
            shard: ManuallyDrop::new(Some(shard)),
            start,
        }
    }

    fn epoch(&self) -> u32 {
        self.tag as u32
    }

    /// The trial whose permit this recorder holds.
    fn trial(&self) -> Option<NonZeroU32> {
        NonZeroU32::new((self.tag >> 32) as u32 & TRIAL_MASK)
    }

    /// The recorder of a rejected call: counts nothing, and holds the shard only to
    /// name the breaker (see [`reject`](Self::reject)).
    #[inline]
    pub(crate) fn rejected(shard: Arc<Shard>) -> Self {
        Self {
            shard: ManuallyDrop::new(Some(shard)),
            tag: 0,
            start: 0,
        }
    }

    /// The name of a rejected call's breaker, once; the shard is kept for the
    /// thread's next call.
    pub(crate) fn reject(&mut self) -> Option<Arc<str>> {
        let shard = self.shard.as_ref()?;
        let name = shard.shared.name.clone();
        self.abandon();
        Some(name)
    }

    /// A recorder that counts nothing.
    pub(crate) fn idle() -> Self {
        Self {
            shard: ManuallyDrop::new(None),
            tag: 0,
            start: 0,
        }
    }

    /// A recorder for `admission`; `None` for a rejection.
    pub(crate) fn new(shard: Arc<Shard>, admission: Admission) -> Option<Self> {
        match admission {
            Admission::Pass { epoch } => Some(Self::pass(shard, epoch)),
            Admission::Trial { epoch, id } => {
                let mut recorder = Self::pass(shard, epoch);
                recorder.tag |= u64::from(id.get() & TRIAL_MASK) << 32;
                Some(recorder)
            }
            Admission::Reject { .. } | Admission::Shed { .. } => None,
        }
    }

    /// Restarts the call's clock (a trial permit is taken before its call starts).
    #[inline]
    pub(crate) fn restart(&mut self) {
        if self.shard.as_deref().is_some_and(|shard| shard.time_start) {
            self.start = counter().raw() | RAW;
        }
    }

    /// Tells the recorder that its call is waiting (its future returned `Pending`).
    /// With a slow-call rule, the call's start moves to tokio's clock the first time:
    /// from here on the call may see a paused clock jump.
    #[inline(always)]
    pub(crate) fn waited(&mut self) {
        if self.start & RAW != 0 {
            self.start_on_tokio_clock();
        }
    }

    #[cold]
    #[inline(never)]
    fn start_on_tokio_clock(&mut self) {
        let Some(shard) = self.shard.as_deref() else {
            return;
        };
        let counter = counter();
        let ran = counter.delta_as_nanos(self.start & !RAW, counter.raw());
        let now = Instant::now();
        // Two reads in a row that agree: tokio's clock is paused, and did not move
        // while the call ran (it moves only while its runtime waits).
        let ran = if Instant::now() == now { 0 } else { ran };
        self.start = shard.shared.since_start(now).saturating_sub(ran);
    }

    /// Counts the call's outcome, once. Done in place: moving the recorder out of the
    /// future first costs more than the rest of the work.
    #[inline(always)]
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        let Some(shard) = self.shard.take() else {
            return;
        };
        if self.tag >> 32 != 0 {
            // A trial, or a rule that needs the call's time.
            self.finish_timed_or_trial(shard, outcome);
        } else {
            finish_here::<false>(shard, self.epoch(), outcome, None);
        }
    }

    /// [`finish`](Self::finish) for a half-open trial, or with a rule that needs the
    /// call's end time.
    #[inline(never)]
    fn finish_timed_or_trial(&mut self, shard: Arc<Shard>, outcome: Outcome) {
        // The shard is taken, so the recorder's drop will not touch the trial again.
        let trial = self.trial();
        let shared = &shard.shared;
        // How long the call took, and when it ended on tokio's clock if it was read.
        let (ran, end) = if self.start & RAW != 0 {
            let counter = counter();
            (
                counter.delta_as_nanos(self.start & !RAW, counter.raw()),
                None,
            )
        } else if shard.timed != 0 {
            let end = Instant::now();
            (
                shared.since_start(end).saturating_sub(self.start),
                Some(end),
            )
        } else {
            (0, None)
        };
        let slow = shard.time_start
            && outcome != Outcome::Ignored
            && shared.slow_threshold.is_some_and(|t| ran > nanos(t));
        let epoch = self.epoch();
        if trial.is_none() && !slow {
            // Neither a trial nor slow: the closed path, with the call's end.
            return finish_here::<true>(shard, epoch, outcome, end);
        }
        let record = |shared: &Shared, slot| match trial {
            Some(id) => match outcome {
                Outcome::Success if !slow => shared.trial_succeeded(epoch, id),
                Outcome::Ignored => shared.release_trial(epoch, id),
                _ => shared.reopen(epoch, HALF_OPEN, Reason::TrialFailed),
            },
            None => shared.record_timed(epoch, outcome, slow, end, slot),
        };
        settle(shard, outcome, slow, record);
    }
}

/// [`Recorder::finish`] for a closed-state call, not slow, that ended at `end`;
/// `TIMED`: with a time window or a slow-call rule (else `end` is `None`).
///
/// The common case, on the thread that owns the shard: read the thread's slot, count
/// with a plain store, record in the rules (a success without a window only reads the
/// failure streak), and leave the shard for the thread's next call. Two thread-local
/// accesses, no read-modify-write.
#[inline(always)]
fn finish_here<const TIMED: bool>(
    shard: Arc<Shard>,
    epoch: u32,
    outcome: Outcome,
    end: Option<Instant>,
) {
    match with_local(Local::slot) {
        Some(slot) if shard.owner == slot => {
            bump(shard.counters.of(outcome), true);
            shard.shared.record::<TIMED>(epoch, outcome, end, slot);
            // Dropped instead if the thread-locals went meanwhile.
            with_local(move |local| drop(local.lease.replace(Some(shard))));
        }
        _ => finish_elsewhere(shard, epoch, outcome, end),
    }
}

/// [`finish_here`] for a call finished on a thread that does not own its shard, or
/// whose thread-locals are gone.
#[cold]
#[inline(never)]
fn finish_elsewhere(shard: Arc<Shard>, epoch: u32, outcome: Outcome, end: Option<Instant>) {
    settle(shard, outcome, false, |shared, slot| {
        shared.record_timed(epoch, outcome, false, end, slot);
    });
}

/// Counts `outcome` with `shard` for the calling thread, runs `record` on the shared
/// state with the thread's slot, and keeps the shard for the thread's next call if it
/// may. Once the thread's locals are gone it counts in the overflow stripe and drops
/// the shard.
#[inline(never)]
fn settle(shard: Arc<Shard>, outcome: Outcome, slow: bool, record: impl FnOnce(&Shared, usize)) {
    let mut held = Some((shard, record));
    with_local(|local| {
        if let Some((shard, record)) = held.take() {
            let slot = local.slot();
            shard.count(slot, outcome, slow);
            record(&shard.shared, slot);
            keep(local, shard);
        }
    });
    if let Some((shard, record)) = held {
        shard.count(usize::MAX, outcome, slow);
        record(&shard.shared, usize::MAX);
    }
}

/// Keeps `shard` as this thread's lease if its counters are the thread's (or it is
/// the overflow shard, which the thread would get again); else drops it.
#[inline]
fn keep(local: &Local, shard: Arc<Shard>) {
    if shard.owner == local.slot() || shard.owner == NO_OWNER {
        // The lease it replaces, if any, is dropped here.
        drop(local.lease.replace(Some(shard)));
    }
}

impl Drop for Recorder {
    #[inline]
    fn drop(&mut self) {
        if self.shard.is_some() {
            self.abandon();
        }
    }
}

impl Recorder {
    /// The call was dropped before its outcome: a trial gives its permit back; the
    /// shard is kept for the thread's next call.
    #[cold]
    #[inline(never)]
    fn abandon(&mut self) {
        let Some(shard) = self.shard.take() else {
            return;
        };
        if let Some(id) = self.trial() {
            shard.shared.release_trial(self.epoch(), id);
        }
        let mut shard = Some(shard);
        with_local(|local| {
            if let Some(shard) = shard.take() {
                keep(local, shard);
            }
        });
    }
}
