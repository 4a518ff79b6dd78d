//! The synchronization primitives of the breaker, the stripes and the retry budget, so
//! a model checker can stand in for them.
//!
//! A normal build re-exports `std`'s: the same types as before, so this costs nothing.
//! Built with `RUSTFLAGS="--cfg steadfast_loom"`, the same names are [loom]'s, whose
//! atomics, mutex and thread-locals let `tests/loom.rs` run the state machine under
//! every interleaving of a few threads (see README, "How it is tested").
//!
//! The cfg is the crate's own: `--cfg loom` would also switch on tokio's loom paths,
//! which do not build that way. What stays `std` under loom, on purpose:
//!
//! - `Arc`: reference counts are not part of the state machine, and `Breaker` hands out
//!   `Weak`s, which loom's `Arc` lacks;
//! - `tokio::sync::watch` (the state channel): loom cannot see inside tokio; its calls
//!   run whole between two loom steps, so a model sees them as atomic;
//! - the clock (`tokio::time::Instant`): the models keep it out of every decision.
//!
//! [loom]: https://docs.rs/loom

#[cfg(steadfast_loom)]
pub(crate) use loom::{
    sync::{atomic, Mutex, MutexGuard},
    thread_local,
};
#[cfg(not(steadfast_loom))]
pub(crate) use std::{
    sync::{atomic, Mutex, MutexGuard},
    thread_local,
};
