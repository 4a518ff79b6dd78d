//! The contention experiment of the AWS article "Exponential Backoff and Jitter": many
//! clients start at once and each must make one write to a shared resource guarded by
//! optimistic concurrency. A write succeeds only if nobody else wrote since the client
//! read; a client that loses backs off (base 5 ms, cap 2 s, with each jitter of
//! [`steadfast::backoff`]) and tries again. Work is the total calls made; time is
//! when the last client succeeds.
//!
//! A plain discrete-event simulation: no runtime, no sleeping, the same seed the same
//! figures.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use steadfast::backoff::{Backoff, Jitter};

pub const BASE: Duration = Duration::from_millis(5);
pub const CAP: Duration = Duration::from_secs(2);

pub const JITTERS: [(Jitter, &str); 4] = [
    (Jitter::None, "none"),
    (Jitter::Full, "full"),
    (Jitter::Equal, "equal"),
    (Jitter::Decorrelated, "decorrelated"),
];

/// What the article found (its wording paraphrased), to print next to ours.
pub const PUBLISHED: &str = "published: no jitter does by far the most work; full jitter \
the least (under half of no jitter at 100 clients), equal jitter slightly more work than \
full and much more time, decorrelated slightly more work than full and slightly less time";

/// One jitter at one client count, averaged over the trials.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub clients: u32,
    pub jitter: &'static str,
    /// Mean total calls (attempts) until every client has written.
    pub calls: f64,
    /// Mean time until the last client has written.
    pub completion: Duration,
}

/// Runs every jitter at every client count, `trials` seeds each.
pub fn run(clients: &[u32], trials: u32, seed: u64, latency: Duration) -> Vec<Row> {
    let mut rows = Vec::new();
    for &n in clients {
        for (jitter, name) in JITTERS {
            let (mut calls, mut time) = (0u64, Duration::ZERO);
            for trial in 0..trials {
                let (c, t) = one(n, jitter, seed.wrapping_add(u64::from(trial)), latency);
                calls += c;
                time += t;
            }
            let trials = trials.max(1);
            rows.push(Row {
                clients: n,
                jitter: name,
                calls: calls as f64 / f64::from(trials),
                completion: time / trials,
            });
        }
    }
    rows
}

/// One trial: `clients` writers from t = 0; a call reads, and writes `latency` later.
/// Returns the calls made and when the last write landed.
pub fn one(clients: u32, jitter: Jitter, seed: u64, latency: Duration) -> (u64, Duration) {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Event {
        /// A client reads the version: the start of a call.
        Read { client: u32 },
        /// It writes, if the version is still the one it read.
        Write { client: u32, read: u64 },
    }
    let latency = nanos(latency);
    let mut delays: Vec<_> = (0..clients)
        .map(|c| {
            Backoff::exponential(BASE, CAP)
                .jitter(jitter)
                .seed(seed.wrapping_mul(1_000_003).wrapping_add(u64::from(c)))
                .iter()
        })
        .collect();
    // Ordered by time, then by the order events were made (ties: first come first).
    let mut queue = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BinaryHeap<_>, at: u64, event: Event| {
        seq += 1;
        queue.push(Reverse((at, seq, event)));
    };
    for client in 0..clients {
        push(&mut queue, 0, Event::Read { client });
    }
    let (mut version, mut calls, mut last) = (0u64, 0u64, 0u64);
    while let Some(Reverse((at, _, event))) = queue.pop() {
        match event {
            Event::Read { client } => {
                calls += 1;
                push(
                    &mut queue,
                    at + latency,
                    Event::Write {
                        client,
                        read: version,
                    },
                );
            }
            Event::Write { read, .. } if read == version => {
                version += 1;
                last = at;
            }
            Event::Write { client, .. } => {
                let delay = delays[client as usize].next().unwrap_or(CAP);
                push(&mut queue, at + nanos(delay), Event::Read { client });
            }
        }
    }
    (calls, Duration::from_nanos(last))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
