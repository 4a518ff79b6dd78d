//! The incident: a scripted, capacity-limited downstream, open-loop load through a
//! client stack, and the figures computed from what happened.
//!
//! Nothing here knows whether time is real or paused, or whether calls cross a socket:
//! [`run_stack`] drives whatever transport it is given on the current tokio runtime.
//! On a paused clock (`start_paused(true)`) the run is deterministic for a seed.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadfast::breaker::error::Open;
use steadfast::breaker::State;
use steadfast::BoxError;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::ServiceExt;

use crate::stacks::{Stack, StackKind, Tuning};

/// A call to the downstream: a user's request, or a watchdog's probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Probe,
}

/// A way to call the downstream: in memory on simulated time, or HTTP on loopback.
pub type Transport = BoxCloneService<Kind, (), BoxError>;

/// The phases of the incident, in the order they are played.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Healthy,
    Outage,
    Brownout,
    Recovered,
    Flapping,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Healthy,
        Phase::Outage,
        Phase::Brownout,
        Phase::Recovered,
        Phase::Flapping,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Healthy => "healthy",
            Phase::Outage => "outage",
            Phase::Brownout => "brownout",
            Phase::Recovered => "recovered",
            Phase::Flapping => "flapping",
        }
    }
}

/// What the downstream does at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Answers within its normal service time (if it has a free worker).
    Up,
    /// Answers every call with an error at once (a crashed process, a refused port).
    Down,
    /// Answers slowly: many calls take longer than the client waits.
    Brown,
}

/// The incident's script: how long each phase lasts (a zero-length phase is skipped).
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub healthy: Duration,
    pub outage: Duration,
    pub brownout: Duration,
    pub recovered: Duration,
    pub flapping: Duration,
    /// In the flapping phase: down this long, then up `flap_up`, and again.
    pub flap_down: Duration,
    pub flap_up: Duration,
}

impl Script {
    pub fn length(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Healthy => self.healthy,
            Phase::Outage => self.outage,
            Phase::Brownout => self.brownout,
            Phase::Recovered => self.recovered,
            Phase::Flapping => self.flapping,
        }
    }

    /// When `phase` starts, from the start of the run.
    pub fn start_of(&self, phase: Phase) -> Duration {
        Phase::ALL
            .iter()
            .take_while(|p| **p != phase)
            .map(|p| self.length(*p))
            .sum()
    }

    pub fn end_of(&self, phase: Phase) -> Duration {
        self.start_of(phase) + self.length(phase)
    }

    pub fn total(&self) -> Duration {
        Phase::ALL.iter().map(|p| self.length(*p)).sum()
    }

    /// The phase at `t`; the last phase after the end.
    pub fn phase_at(&self, t: Duration) -> Phase {
        let mut end = Duration::ZERO;
        for phase in Phase::ALL {
            end += self.length(phase);
            if t < end {
                return phase;
            }
        }
        Phase::Flapping
    }

    pub fn condition_at(&self, t: Duration) -> Condition {
        match self.phase_at(t) {
            Phase::Healthy | Phase::Recovered => Condition::Up,
            Phase::Outage => Condition::Down,
            Phase::Brownout => Condition::Brown,
            Phase::Flapping => {
                let cycle = self.flap_down + self.flap_up;
                if cycle.is_zero() {
                    return Condition::Up;
                }
                let into = nanos(t - self.start_of(Phase::Flapping)) % nanos(cycle);
                if into < nanos(self.flap_down) {
                    Condition::Down
                } else {
                    Condition::Up
                }
            }
        }
    }
}

/// The downstream's capacity and speed.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Calls served at once; more wait in a FIFO queue (load above capacity is slower).
    pub workers: usize,
    /// Calls allowed to wait; past it a call is refused at once (load shedding).
    pub queue: usize,
    /// Service time while up: uniform in this range.
    pub service: (Duration, Duration),
    /// Service time in a brownout: uniform in this range.
    pub brown_service: (Duration, Duration),
    /// How long an error answer takes (refused or shed).
    pub error_latency: Duration,
}

impl Model {
    /// A downstream sized for `load` requests a second: `workers` cover one second of
    /// it (50x headroom when up, about 1.25x in a brownout, where service takes 0.3 to
    /// 1.3 s), and the queue holds half a second of brownout work.
    pub fn for_load(load: f64) -> Self {
        let workers = (load.ceil() as usize).max(4);
        Self {
            workers,
            queue: workers / 2,
            service: (Duration::from_millis(10), Duration::from_millis(30)),
            brown_service: (Duration::from_millis(300), Duration::from_millis(1300)),
            error_latency: Duration::from_millis(1),
        }
    }
}

/// Why the downstream refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownstreamError {
    /// It is down.
    Down,
    /// Its queue is full.
    Overloaded,
}

impl fmt::Display for DownstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownstreamError::Down => f.write_str("downstream is down"),
            DownstreamError::Overloaded => f.write_str("downstream is overloaded"),
        }
    }
}

impl std::error::Error for DownstreamError {}

/// One call that reached the downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRecord {
    pub at: Duration,
    pub kind: Kind,
}

/// The downstream: follows the script, serves with limited workers, logs every call.
#[derive(Debug)]
pub struct Downstream {
    script: Script,
    model: Model,
    start: Instant,
    workers: Semaphore,
    waiting: AtomicUsize,
    rng: Mutex<fastrand::Rng>,
    calls: Mutex<Vec<CallRecord>>,
}

impl Downstream {
    pub fn new(script: Script, model: Model, start: Instant, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            workers: Semaphore::new(model.workers),
            script,
            model,
            start,
            waiting: AtomicUsize::new(0),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            calls: Mutex::new(Vec::new()),
        })
    }

    /// Serves one call. The work runs in its own task, as on a server: a client that
    /// gives up (times out) does not stop it, and it keeps its worker until done.
    pub fn serve(
        self: &Arc<Self>,
        kind: Kind,
    ) -> impl std::future::Future<Output = Result<(), DownstreamError>> + Send + 'static {
        let work = tokio::spawn(self.clone().work(kind));
        async move { work.await.unwrap_or(Err(DownstreamError::Down)) }
    }

    async fn work(self: Arc<Self>, kind: Kind) -> Result<(), DownstreamError> {
        let at = self.start.elapsed();
        lock(&self.calls).push(CallRecord { at, kind });
        if self.script.condition_at(at) == Condition::Down {
            return self.refuse(DownstreamError::Down).await;
        }
        if self.waiting.load(Relaxed) >= self.model.queue && self.workers.available_permits() == 0 {
            return self.refuse(DownstreamError::Overloaded).await;
        }
        self.waiting.fetch_add(1, Relaxed);
        let permit = self.workers.acquire().await;
        self.waiting.fetch_sub(1, Relaxed);
        let _permit = permit.expect("the semaphore is never closed");
        let (lo, hi) = match self.script.condition_at(self.start.elapsed()) {
            Condition::Down => return self.refuse(DownstreamError::Down).await,
            Condition::Up => self.model.service,
            Condition::Brown => self.model.brown_service,
        };
        let took = lock(&self.rng).u64(nanos(lo)..=nanos(hi));
        tokio::time::sleep(Duration::from_nanos(took)).await;
        Ok(())
    }

    async fn refuse(&self, error: DownstreamError) -> Result<(), DownstreamError> {
        tokio::time::sleep(self.model.error_latency).await;
        Err(error)
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        lock(&self.calls).clone()
    }
}

/// The in-memory transport: a call is a task on the downstream.
pub fn in_memory(downstream: Arc<Downstream>) -> Transport {
    BoxCloneService::new(tower::service_fn(move |kind: Kind| {
        let call = downstream.serve(kind);
        async move { call.await.map_err(BoxError::from) }
    }))
}

/// The load: `clients` callers each sending `rate` requests a second, open loop (a
/// request is sent on schedule whether or not the last one has answered).
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub clients: u32,
    pub rate: f64,
}

impl Load {
    pub fn total_rate(&self) -> f64 {
        f64::from(self.clients) * self.rate
    }
}

/// What a client saw of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// The downstream's error (after any retries).
    Failed,
    /// The per-attempt timeout (after any retries).
    TimedOut,
    /// Rejected fast by the breaker.
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRecord {
    pub sent: Duration,
    pub latency: Duration,
    pub answer: Answer,
}

/// Everything that happened to one stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub kind: StackKind,
    pub requests: Vec<RequestRecord>,
    pub calls: Vec<CallRecord>,
    /// Breaker states as they changed (none without a breaker).
    pub transitions: Vec<(Duration, State)>,
}

/// Everything a run needs but the stack: settings, script, load and seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub tuning: Tuning,
    pub script: Script,
    pub load: Load,
    pub seed: u64,
}

/// Plays the script against one stack: builds it over `transport`, sends the load
/// until the end of the script, waits for the last answers, and returns the records.
/// `downstream` is the one `transport` reaches (for its call log).
pub async fn run_stack(
    kind: StackKind,
    plan: &Plan,
    start: Instant,
    downstream: &Downstream,
    transport: Transport,
) -> Result<Run, BoxError> {
    let Plan {
        tuning,
        script,
        load,
        seed,
    } = plan;
    let seed = *seed;
    let stack = Stack::new(kind, tuning, seed, transport.clone())?;
    let transitions = Arc::new(Mutex::new(Vec::new()));
    if let Some(breaker) = stack.breaker() {
        let mut states = breaker.subscribe();
        let transitions = transitions.clone();
        tokio::spawn(async move {
            while states.changed().await.is_ok() {
                let state = *states.borrow_and_update();
                lock(&transitions).push((start.elapsed(), state));
            }
        });
    }
    let requests = Arc::new(Mutex::new(Vec::new()));
    let end = start + script.total();
    let mut offsets = fastrand::Rng::with_seed(seed ^ 0x5eed_0ff5e7);
    let period = Duration::from_secs_f64(1.0 / load.rate);
    let mut clients = Vec::new();
    for id in 0..load.clients {
        let service = stack.client(id, transport.clone())?;
        let requests = requests.clone();
        // Clients start spread over one period, each then on its own fixed schedule.
        let first = start + Duration::from_nanos(offsets.u64(0..nanos(period).max(1)));
        clients.push(tokio::spawn(async move {
            let mut next = first;
            while next < end {
                tokio::time::sleep_until(next).await;
                let call = service.clone().oneshot(Kind::User);
                let requests = requests.clone();
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let answer = classify(&call.await);
                    lock(&requests).push(RequestRecord {
                        sent: sent - start,
                        latency: sent.elapsed(),
                        answer,
                    });
                });
                next += period;
            }
        }));
    }
    for client in clients {
        client.await?;
    }
    // Let the last requests finish: attempts are bounded by the timeout and retries.
    tokio::time::sleep(tuning.drain).await;
    stack.shutdown().await;
    let mut requests = std::mem::take(&mut *lock(&requests));
    requests.sort_by_key(|r| r.sent);
    let mut calls = downstream.calls();
    calls.sort_by_key(|c| c.at);
    let transitions = std::mem::take(&mut *lock(&transitions));
    Ok(Run {
        kind,
        requests,
        calls,
        transitions,
    })
}

fn classify(result: &Result<(), BoxError>) -> Answer {
    match result {
        Ok(()) => Answer::Ok,
        Err(e) if e.is::<Open>() => Answer::Rejected,
        Err(e) if e.is::<tower::timeout::error::Elapsed>() => Answer::TimedOut,
        Err(_) => Answer::Failed,
    }
}

/// Runs one stack on a fresh paused-clock runtime with its own simulated downstream.
/// Same inputs, same `Run`.
pub fn simulate(kind: StackKind, plan: &Plan) -> Result<Run, BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    runtime.block_on(async {
        let start = Instant::now();
        let model = Model::for_load(plan.load.total_rate());
        let downstream = Downstream::new(plan.script.clone(), model, start, plan.seed);
        let transport = in_memory(downstream.clone());
        run_stack(kind, plan, start, &downstream, transport).await
    })
}

// ---------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------

/// One stack in one phase.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseFigures {
    pub phase: Phase,
    /// Client requests sent in the phase.
    pub requests: usize,
    /// Share of them that succeeded.
    pub success: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// User calls that reached the downstream in the phase.
    pub user_calls: usize,
    /// Watchdog probes that reached it.
    pub probes: usize,
    /// `user_calls / requests`.
    pub amplification: f64,
}

/// One stack over the incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub kind: StackKind,
    pub phases: Vec<PhaseFigures>,
    /// Calls (user and probes) that reached the downstream while it was hard down.
    pub outage_calls: usize,
    /// From the start of the hard outage to the breaker opening.
    pub detect: Option<Duration>,
    /// User calls that reached the dead downstream after the breaker first opened.
    pub user_calls_after_detect: Option<usize>,
    /// The worst time, over the downstream's returns from hard down (each flap), to the
    /// first successful request.
    pub recover: Option<Duration>,
}

pub fn figures(run: &Run, script: &Script) -> Figures {
    let mut phases = Vec::new();
    for phase in Phase::ALL {
        if script.length(phase).is_zero() {
            continue;
        }
        let (from, to) = (script.start_of(phase), script.end_of(phase));
        let within = |t: Duration| t >= from && t < to;
        let requests: Vec<&RequestRecord> =
            run.requests.iter().filter(|r| within(r.sent)).collect();
        let ok = requests.iter().filter(|r| r.answer == Answer::Ok).count();
        let mut latencies: Vec<Duration> = requests.iter().map(|r| r.latency).collect();
        latencies.sort();
        let user_calls = run
            .calls
            .iter()
            .filter(|c| c.kind == Kind::User && within(c.at))
            .count();
        let probes = run
            .calls
            .iter()
            .filter(|c| c.kind == Kind::Probe && within(c.at))
            .count();
        phases.push(PhaseFigures {
            phase,
            requests: requests.len(),
            success: ratio(ok, requests.len()),
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            user_calls,
            probes,
            amplification: ratio(user_calls, requests.len()),
        });
    }
    let (down_from, down_to) = (script.start_of(Phase::Outage), script.end_of(Phase::Outage));
    let outage_calls = run
        .calls
        .iter()
        .filter(|c| c.at >= down_from && c.at < down_to)
        .count();
    let detect = run
        .transitions
        .iter()
        .find(|(t, s)| *t >= down_from && *t < down_to && *s != State::Closed)
        .map(|(t, _)| *t);
    let user_calls_after_detect = detect.map(|at| {
        run.calls
            .iter()
            .filter(|c| c.kind == Kind::User && c.at > at && c.at < down_to)
            .count()
    });
    Figures {
        kind: run.kind,
        phases,
        outage_calls,
        detect: detect.map(|at| at - down_from),
        user_calls_after_detect,
        recover: recovery(&run.requests, script),
    }
}

/// Every stretch in which the downstream answers again after being hard down (up, or
/// slow in a brownout): from its return to its next hard failure (or the end).
pub fn returns(script: &Script) -> Vec<(Duration, Duration)> {
    let step = Duration::from_millis(1);
    let mut out: Vec<(Duration, Duration)> = Vec::new();
    let mut open = None;
    let mut t = step;
    while t < script.total() {
        let (before, now) = (script.condition_at(t - step), script.condition_at(t));
        if before == Condition::Down && now != Condition::Down {
            open = Some(t);
        }
        if now == Condition::Down {
            if let Some(back) = open.take() {
                out.push((back, t));
            }
        }
        t += step;
    }
    out.extend(open.map(|back| (back, script.total())));
    out
}

/// The worst, over the downstream's returns, of the time from its return to the
/// first request sent after it that succeeded; `None` if in one return none did.
fn recovery(requests: &[RequestRecord], script: &Script) -> Option<Duration> {
    let mut worst = None;
    for (back, until) in returns(script) {
        let first = requests
            .iter()
            .find(|r| r.sent >= back && r.sent < until && r.answer == Answer::Ok)?;
        worst = worst.max(Some(first.sent - back));
    }
    worst
}

/// Per second of the run: client success rate (of requests sent that second) and
/// calls reaching the downstream (user and probes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Second {
    pub second: u64,
    pub requests: usize,
    pub success: f64,
    pub downstream_calls: usize,
}

pub fn timeline(run: &Run, script: &Script) -> Vec<Second> {
    let seconds = script.total().as_secs_f64().ceil() as usize;
    let mut requests = vec![(0usize, 0usize); seconds];
    let mut calls = vec![0usize; seconds];
    for r in &run.requests {
        if let Some(slot) = requests.get_mut(r.sent.as_secs() as usize) {
            slot.0 += 1;
            slot.1 += usize::from(r.answer == Answer::Ok);
        }
    }
    for c in &run.calls {
        if let Some(slot) = calls.get_mut(c.at.as_secs() as usize) {
            *slot += 1;
        }
    }
    (0..seconds)
        .map(|s| Second {
            second: s as u64,
            requests: requests[s].0,
            success: ratio(requests[s].1, requests[s].0),
            downstream_calls: calls[s],
        })
        .collect()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
