//! The breaker's state word: the state kind (and the shedding bit), the half-open
//! permits taken and trials succeeded, and the epoch, packed in one `u64` so that a
//! closed call is admitted by one load and every transition is one compare-exchange.

use super::State;

pub(super) const KIND_BITS: u32 = 4;
pub(super) const PERMIT_BITS: u32 = 14;
pub(super) const PERMIT_MASK: u64 = (1 << PERMIT_BITS) - 1;
pub(super) const ADMITTED_SHIFT: u32 = KIND_BITS;
pub(super) const SUCCEEDED_SHIFT: u32 = KIND_BITS + PERMIT_BITS;
pub(super) const EPOCH_SHIFT: u32 = 32;

/// The kind bits proper; the fourth is [`SHEDDING`].
pub(super) const KIND_MASK: u64 = 0b0111;
/// Set in a closed word while adaptive throttling sheds calls: the closed path's check
/// of the low bits then fails, and admission goes the slow way, where the draw is.
pub(super) const SHEDDING: u64 = 0b1000;

pub(super) const CLOSED: u64 = 0;
pub(super) const OPEN: u64 = 1;
pub(super) const HALF_OPEN: u64 = 2;
pub(super) const FORCED_OPEN: u64 = 3;
pub(super) const FORCED_CLOSED: u64 = 4;

/// A decoded copy of the state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Word(pub(super) u64);

impl Word {
    #[inline(always)]
    pub(super) fn new(kind: u64, epoch: u32) -> Self {
        Word(kind | u64::from(epoch) << EPOCH_SHIFT)
    }
    #[inline(always)]
    pub(super) fn kind(self) -> u64 {
        self.0 & KIND_MASK
    }
    #[inline(always)]
    pub(super) fn shedding(self) -> bool {
        self.0 & SHEDDING != 0
    }
    /// The word as admission's fast path sees it: the kind with the shedding bit.
    #[inline(always)]
    pub(super) fn low(self) -> u64 {
        self.0 & ((1 << KIND_BITS) - 1)
    }
    #[inline(always)]
    pub(super) fn epoch(self) -> u32 {
        (self.0 >> EPOCH_SHIFT) as u32
    }
    #[inline(always)]
    pub(super) fn admitted(self) -> u32 {
        ((self.0 >> ADMITTED_SHIFT) & PERMIT_MASK) as u32
    }
    #[inline(always)]
    pub(super) fn succeeded(self) -> u32 {
        ((self.0 >> SUCCEEDED_SHIFT) & PERMIT_MASK) as u32
    }
    #[inline(always)]
    pub(super) fn with_admitted(self, n: u32) -> Self {
        Word(self.0 & !(PERMIT_MASK << ADMITTED_SHIFT) | u64::from(n) << ADMITTED_SHIFT)
    }
    #[inline(always)]
    pub(super) fn with_succeeded(self, n: u32) -> Self {
        Word(self.0 & !(PERMIT_MASK << SUCCEEDED_SHIFT) | u64::from(n) << SUCCEEDED_SHIFT)
    }
    #[inline(always)]
    pub(super) fn state(self) -> State {
        match self.kind() {
            CLOSED => State::Closed,
            OPEN => State::Open,
            HALF_OPEN => State::HalfOpen,
            FORCED_OPEN => State::ForcedOpen,
            _ => State::ForcedClosed,
        }
    }
}

/// The consecutive-failure word: the epoch of the closed state the failures were
/// counted in (high half) and their number (low half).
#[inline(always)]
pub(super) fn streak(epoch: u32, count: u32) -> u64 {
    u64::from(epoch) << 32 | u64::from(count)
}

#[inline(always)]
pub(super) fn kind_of(state: State) -> u64 {
    match state {
        State::Closed => CLOSED,
        State::Open => OPEN,
        State::HalfOpen => HALF_OPEN,
        State::ForcedOpen => FORCED_OPEN,
        State::ForcedClosed => FORCED_CLOSED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_stay_apart() {
        let w = Word::new(HALF_OPEN, u32::MAX)
            .with_admitted(PERMIT_MASK as u32)
            .with_succeeded(3);
        assert_eq!(w.kind(), HALF_OPEN);
        assert_eq!(w.epoch(), u32::MAX);
        assert_eq!(w.admitted(), PERMIT_MASK as u32);
        assert_eq!(w.succeeded(), 3);
        assert!(!w.shedding());
        // Changing one field leaves the others.
        let w2 = w.with_admitted(1);
        assert_eq!(
            (w2.kind(), w2.epoch(), w2.succeeded()),
            (HALF_OPEN, u32::MAX, 3)
        );
        assert_eq!(w2.admitted(), 1);
        let w3 = w.with_succeeded(0);
        assert_eq!((w3.admitted(), w3.succeeded()), (PERMIT_MASK as u32, 0));
    }

    #[test]
    fn the_shedding_bit_is_not_a_kind_but_fails_the_closed_check() {
        let closed = Word::new(CLOSED, 7);
        let shedding = Word(closed.0 | SHEDDING);
        assert_eq!(shedding.kind(), CLOSED);
        assert_eq!(shedding.state(), State::Closed);
        assert_eq!(shedding.epoch(), 7);
        assert!(shedding.shedding());
        // Admission's fast path compares the low bits: a shedding word is not closed.
        assert_eq!(closed.low(), CLOSED);
        assert_ne!(shedding.low(), CLOSED);
        assert_ne!(shedding.low(), FORCED_CLOSED);
    }

    #[test]
    fn every_state_has_its_kind() {
        for state in [
            State::Closed,
            State::Open,
            State::HalfOpen,
            State::ForcedOpen,
            State::ForcedClosed,
        ] {
            assert_eq!(Word::new(kind_of(state), 1).state(), state);
        }
    }

    #[test]
    fn a_streak_keeps_its_epoch_and_count() {
        let s = streak(9, 4);
        assert_eq!(((s >> 32) as u32, s as u32), (9, 4));
    }
}
