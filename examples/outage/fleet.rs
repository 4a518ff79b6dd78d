//! The fleet: many client processes, each with its own stack over the same endpoints
//! behind p2c, and an orchestrator that keeps a process in its load balancer only
//! while the process's `/ready` says so. One fault at a time, on tokio's paused clock.
//!
//! Each process's stack, per endpoint: a breaker (5 failures in a row, `Readiness::Wait`,
//! in the process's [`EjectionCap`]) over a 1 s timeout, with a watchdog probing the
//! endpoint (defaults but a 1 s probe timeout) that owns recovery; p2c over the
//! endpoints, behind a buffer. The process's [`Health`] has the set registered with
//! [`Health::register_endpoints`]: not ready while every endpoint's breaker is open.
//! The orchestrator reads every process's readiness once a second and sends the
//! fleet's requests (an open-loop schedule) to a random process in rotation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadfast::backoff::Backoff;
use steadfast::breaker::{Breaker, EjectionCap, Readiness, State};
use steadfast::health::Health;
use steadfast::watchdog::{Watchdog, WatchdogHandle};
use steadfast::BoxError;
use tokio::time::{sleep, sleep_until, Instant};
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::ServiceList;
use tower::load::Constant;
use tower::timeout::Timeout;
use tower::util::{BoxCloneService, BoxService};
use tower::{service_fn, Layer, ServiceExt};

/// What goes wrong during the fault phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Endpoint 0 refuses every call.
    OneDead,
    /// Endpoint 0 answers in 1.5 s, past every client's 1 s timeout.
    OneSlow,
    /// The first half of the endpoints refuse every call.
    HalfDead,
    /// Every endpoint refuses every call.
    AllDead,
    /// Process 0 cannot reach any endpoint (its own network); the others can.
    ClientNetwork,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::OneDead,
        Fault::OneSlow,
        Fault::HalfDead,
        Fault::AllDead,
        Fault::ClientNetwork,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::OneDead => "one endpoint dead",
            Fault::OneSlow => "one endpoint slow",
            Fault::HalfDead => "half the endpoints dead",
            Fault::AllDead => "every endpoint dead",
            Fault::ClientNetwork => "one process's network down",
        }
    }
}

/// How the downstream answers one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Up,
    Refused,
    Slow,
}

/// The fleet and the fault's timing.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    pub processes: usize,
    pub endpoints: usize,
    /// User requests a second, per process (the fleet's total is spread over the
    /// processes in rotation).
    pub rate: f64,
    pub healthy: Duration,
    pub fault: Duration,
    pub healed: Duration,
    /// Each process's ejection cap.
    pub max_ejected: f64,
    pub seed: u64,
}

impl Default for FleetPlan {
    fn default() -> Self {
        Self {
            processes: 50,
            endpoints: 20,
            rate: 50.0,
            healthy: Duration::from_secs(10),
            fault: Duration::from_secs(60),
            healed: Duration::from_secs(20),
            max_ejected: 0.1,
            seed: 1,
        }
    }
}

/// What one fault did to the fleet. Times are from the fault's start (`detected`,
/// `faulty_out`) or from its end (`rejoined`).
#[derive(Debug, Clone)]
pub struct FleetFigures {
    pub fault: Fault,
    pub max_ejected: f64,
    /// Requests sent to the fleet during the fault, and how many succeeded.
    pub requests: u64,
    pub succeeded: u64,
    /// Requests that found no process in rotation.
    pub no_process: u64,
    /// User calls that reached a bad endpoint during the fault (from the faulty
    /// process, for a network fault), and those after `detected`.
    pub to_bad: u64,
    pub to_bad_after_detection: u64,
    /// Requests sent after `detected`, until the fault's end.
    pub requests_after_detection: u64,
    /// User calls that reached a bad endpoint in the fault's second half.
    pub to_bad_late: u64,
    /// Probes reaching bad endpoints, a second, fleet-wide, over the fault's second
    /// half; and per process that probes any.
    pub probes_to_bad: f64,
    pub probes_per_process: f64,
    /// When every process had every bad endpoint's breaker open.
    pub detected: Option<Duration>,
    /// From the fault's end, when every breaker was closed and every process in
    /// rotation again.
    pub rejoined: Option<Duration>,
    /// The most processes out of rotation at once during the fault.
    pub out_of_rotation: usize,
    /// A network fault: when the orchestrator took the faulty process out.
    pub faulty_out: Option<Duration>,
    /// Breakers opened during the fault in processes that could reach every endpoint
    /// (a network fault).
    pub healthy_trips: u64,
    /// Per second of the run: requests sent, those that succeeded, and the processes
    /// in rotation at the second's end.
    pub timeline: Vec<(u64, u64, usize)>,
}

impl FleetFigures {
    pub fn success_rate(&self) -> f64 {
        ratio(self.succeeded, self.requests)
    }

    pub fn bad_share_after_detection(&self) -> f64 {
        ratio(self.to_bad_after_detection, self.requests_after_detection)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// The fleet's clock and counters, shared by every task.
struct World {
    plan: FleetPlan,
    fault: Fault,
    start: Instant,
    /// Set by the monitor once every bad endpoint is open in every process.
    detected: AtomicBool,
    to_bad: AtomicU64,
    to_bad_after: AtomicU64,
    to_bad_late: AtomicU64,
    probes_to_bad_late: AtomicU64,
    /// Processes that sent a probe to a bad endpoint in the fault's second half.
    probing: Mutex<Vec<bool>>,
}

impl World {
    fn fault_start(&self) -> Instant {
        self.start + self.plan.healthy
    }

    fn fault_end(&self) -> Instant {
        self.fault_start() + self.plan.fault
    }

    fn in_fault(&self, at: Instant) -> bool {
        at >= self.fault_start() && at < self.fault_end()
    }

    /// Whether the fault touches calls from `process` to `endpoint`.
    fn bad(&self, process: usize, endpoint: usize) -> bool {
        match self.fault {
            Fault::OneDead | Fault::OneSlow => endpoint == 0,
            Fault::HalfDead => endpoint < self.plan.endpoints / 2,
            Fault::AllDead => true,
            Fault::ClientNetwork => process == 0,
        }
    }

    fn answer(&self, process: usize, endpoint: usize, at: Instant) -> Answer {
        if !self.in_fault(at) || !self.bad(process, endpoint) {
            Answer::Up
        } else if self.fault == Fault::OneSlow {
            Answer::Slow
        } else {
            Answer::Refused
        }
    }

    /// One call from `process` to `endpoint`: a user request or a probe.
    async fn call(
        self: Arc<Self>,
        process: usize,
        endpoint: usize,
        probe: bool,
    ) -> Result<(), BoxError> {
        let now = Instant::now();
        let answer = self.answer(process, endpoint, now);
        if answer != Answer::Up {
            let late = now >= self.fault_start() + self.plan.fault / 2;
            if probe {
                if late {
                    self.probes_to_bad_late.fetch_add(1, Relaxed);
                    self.probing.lock().unwrap()[process] = true;
                }
            } else {
                self.to_bad.fetch_add(1, Relaxed);
                if self.detected.load(Relaxed) {
                    self.to_bad_after.fetch_add(1, Relaxed);
                }
                if late {
                    self.to_bad_late.fetch_add(1, Relaxed);
                }
            }
        }
        match answer {
            Answer::Up => {
                sleep(Duration::from_millis(5)).await;
                Ok(())
            }
            Answer::Refused => {
                sleep(Duration::from_millis(1)).await;
                Err("connection refused".into())
            }
            Answer::Slow => {
                sleep(Duration::from_millis(1_500)).await;
                Ok(())
            }
        }
    }
}

/// One client process: its stack, its breakers, its readiness.
struct Process {
    svc: BoxCloneService<(), (), BoxError>,
    breakers: Vec<Breaker>,
    health: Health,
    _watchdogs: Vec<WatchdogHandle>,
}

/// p2c's random choices from a seed.
struct Seeded(fastrand::Rng);

impl tower::util::rng::Rng for Seeded {
    fn next_u64(&mut self) -> u64 {
        self.0.u64(..)
    }
}

fn process(world: &Arc<World>, index: usize) -> Result<Process, BoxError> {
    let plan = &world.plan;
    let cap = EjectionCap::new(plan.max_ejected)?;
    let health = Health::new();
    health.register_endpoints(&cap);
    let mut breakers = Vec::new();
    let mut watchdogs = Vec::new();
    let mut endpoints = Vec::new();
    for endpoint in 0..plan.endpoints {
        let seed = plan.seed ^ (index as u64) << 32 ^ endpoint as u64;
        let breaker = Breaker::builder(format!("p{index}-e{endpoint}"))
            .consecutive_failures(5)
            .readiness(Readiness::Wait)
            .ejection_cap(&cap)
            .seed(seed)
            .build()?;
        let w = world.clone();
        let probe = move || {
            let w = w.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(1), w.call(index, endpoint, true))
                    .await
                    .map_err(BoxError::from)?
            }
        };
        watchdogs.push(
            Watchdog::builder(&breaker, probe)
                .timeout(Duration::from_secs(1))
                .backoff(
                    Backoff::exponential(Duration::from_secs(1), Duration::from_secs(2))
                        .jitter(steadfast::backoff::Jitter::Equal)
                        .seed(seed),
                )
                .spawn()?,
        );
        let w = world.clone();
        let transport = service_fn(move |()| w.clone().call(index, endpoint, false));
        let guarded = breaker
            .layer()
            .layer(Timeout::new(transport, Duration::from_secs(1)));
        endpoints.push(Constant::new(BoxCloneService::new(guarded), 0));
        breakers.push(breaker);
    }
    let rng = Seeded(fastrand::Rng::with_seed(
        plan.seed.wrapping_add(index as u64),
    ));
    let balance = Balance::from_rng(ServiceList::new(endpoints), rng);
    Ok(Process {
        svc: BoxCloneService::new(Buffer::new(BoxService::new(balance), 1_024)),
        breakers,
        health,
        _watchdogs: watchdogs,
    })
}

/// Runs one fault over the fleet on a paused clock.
pub fn simulate(plan: &FleetPlan, fault: Fault) -> Result<FleetFigures, BoxError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?
        .block_on(run(plan, fault))
}

/// Runs one fault over the fleet on the current runtime (paused, for figures that a
/// seed repeats).
pub async fn run(plan: &FleetPlan, fault: Fault) -> Result<FleetFigures, BoxError> {
    if plan.processes == 0 || plan.endpoints == 0 || !(plan.rate > 0.0 && plan.rate.is_finite()) {
        return Err("need at least one process and one endpoint, and a positive rate".into());
    }
    let world = Arc::new(World {
        plan: plan.clone(),
        fault,
        start: Instant::now(),
        detected: AtomicBool::new(false),
        to_bad: AtomicU64::new(0),
        to_bad_after: AtomicU64::new(0),
        to_bad_late: AtomicU64::new(0),
        probes_to_bad_late: AtomicU64::new(0),
        probing: Mutex::new(vec![false; plan.processes]),
    });
    let processes: Vec<Process> = (0..plan.processes)
        .map(|i| process(&world, i))
        .collect::<Result<_, _>>()?;
    let in_rotation = Arc::new(Mutex::new(vec![true; plan.processes]));

    // The orchestrator: reads each process's readiness once a second.
    let orchestrator = {
        let healths: Vec<Health> = processes.iter().map(|p| p.health.clone()).collect();
        let in_rotation = in_rotation.clone();
        tokio::spawn(async move {
            loop {
                sleep(Duration::from_secs(1)).await;
                let ready: Vec<bool> = healths.iter().map(Health::is_ready).collect();
                *in_rotation.lock().unwrap() = ready;
            }
        })
    };

    // The load: the fleet's requests on a fixed schedule, each to a random process in
    // rotation; counted by when they were sent.
    let counts = Arc::new(Mutex::new(Counts::default()));
    let end = world.fault_end() + plan.healed;
    let gap = Duration::from_secs_f64(1.0 / (plan.rate * plan.processes as f64));
    let load = {
        let (world, in_rotation, counts) = (world.clone(), in_rotation.clone(), counts.clone());
        let services: Vec<_> = processes.iter().map(|p| p.svc.clone()).collect();
        let mut rng = fastrand::Rng::with_seed(plan.seed);
        tokio::spawn(async move {
            let mut next = world.start;
            while next < end {
                sleep_until(next).await;
                next += gap;
                let at = Instant::now();
                let phase = Phase::of(&world, at);
                let second = (at - world.start).as_secs() as usize;
                let chosen = {
                    let rotation = in_rotation.lock().unwrap();
                    let ready: Vec<usize> = (0..rotation.len()).filter(|&i| rotation[i]).collect();
                    (!ready.is_empty()).then(|| ready[rng.usize(..ready.len())])
                };
                let after_detection = world.detected.load(Relaxed);
                let Some(p) = chosen else {
                    counts
                        .lock()
                        .unwrap()
                        .add(second, phase, after_detection, None);
                    continue;
                };
                let svc = services[p].clone();
                let counts = counts.clone();
                tokio::spawn(async move {
                    let ok = match svc.oneshot(()).await {
                        Ok(()) => true,
                        Err(_) => false,
                    };
                    counts
                        .lock()
                        .unwrap()
                        .add(second, phase, after_detection, Some(ok));
                });
            }
        })
    };

    // The monitor: detection, rotation and rejoining, every 100 ms.
    let mut detected = None;
    let mut rejoined = None;
    let mut out_of_rotation = 0;
    let mut faulty_out = None;
    let mut healthy_trips_at_start = None;
    let mut healthy_trips = 0;
    let step = Duration::from_millis(100);
    let mut at = world.start;
    let mut rotation = Vec::new();
    while at < end {
        at += step;
        sleep_until(at).await;
        let now = Instant::now();
        let out = in_rotation.lock().unwrap().iter().filter(|r| !**r).count();
        if (now - world.start).as_millis() % 1_000 == 0 {
            rotation.push(plan.processes - out);
        }
        if world.in_fault(now) {
            let others = &processes[1..];
            let at_start = *healthy_trips_at_start.get_or_insert_with(|| trips(others));
            out_of_rotation = out_of_rotation.max(out);
            if detected.is_none() && all_bad_open(&world, &processes) {
                detected = Some(now - world.fault_start());
                world.detected.store(true, Relaxed);
            }
            if fault == Fault::ClientNetwork
                && faulty_out.is_none()
                && !in_rotation.lock().unwrap()[0]
            {
                faulty_out = Some(now - world.fault_start());
            }
            if fault == Fault::ClientNetwork {
                healthy_trips = trips(others) - at_start;
            }
        } else if now >= world.fault_end() && rejoined.is_none() {
            let closed = processes
                .iter()
                .all(|p| p.breakers.iter().all(|b| b.state() == State::Closed));
            if closed && out == 0 {
                rejoined = Some(now - world.fault_end());
            }
        }
    }
    load.await?;
    // Let the last requests finish.
    sleep(Duration::from_secs(2)).await;
    orchestrator.abort();

    let counts = counts.lock().unwrap().clone();
    let late = plan.fault.as_secs_f64() / 2.0;
    let probes_late = world.probes_to_bad_late.load(Relaxed) as f64;
    let probing = world.probing.lock().unwrap().iter().filter(|p| **p).count();
    Ok(FleetFigures {
        fault,
        max_ejected: plan.max_ejected,
        requests: counts.fault.sent,
        succeeded: counts.fault.succeeded,
        no_process: counts.fault.no_process,
        to_bad: world.to_bad.load(Relaxed),
        to_bad_after_detection: world.to_bad_after.load(Relaxed),
        requests_after_detection: counts.after_detection,
        to_bad_late: world.to_bad_late.load(Relaxed),
        probes_to_bad: probes_late / late,
        probes_per_process: if probing == 0 {
            0.0
        } else {
            probes_late / late / probing as f64
        },
        detected,
        rejoined,
        out_of_rotation,
        faulty_out,
        healthy_trips,
        timeline: counts
            .seconds
            .iter()
            .zip(&rotation)
            .map(|(&(sent, ok), &r)| (sent, ok, r))
            .collect(),
    })
}

/// Trips so far over every breaker of `processes`.
fn trips(processes: &[Process]) -> u64 {
    processes
        .iter()
        .flat_map(|p| &p.breakers)
        .map(|b| b.snapshot().trips)
        .sum()
}

/// Whether every process has every endpoint the fault touches open (or half-open).
fn all_bad_open(world: &World, processes: &[Process]) -> bool {
    processes.iter().enumerate().all(|(p, process)| {
        process
            .breakers
            .iter()
            .enumerate()
            .filter(|(e, _)| world.bad(p, *e))
            .all(|(_, b)| b.state() != State::Closed)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Before,
    Fault,
    After,
}

impl Phase {
    fn of(world: &World, at: Instant) -> Self {
        if at < world.fault_start() {
            Phase::Before
        } else if world.in_fault(at) {
            Phase::Fault
        } else {
            Phase::After
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct PhaseCounts {
    sent: u64,
    succeeded: u64,
    no_process: u64,
}

#[derive(Debug, Clone, Default)]
struct Counts {
    before: PhaseCounts,
    fault: PhaseCounts,
    after: PhaseCounts,
    /// Requests sent during the fault after detection.
    after_detection: u64,
    /// Per second since the start: sent, succeeded.
    seconds: Vec<(u64, u64)>,
}

impl Counts {
    /// A request sent in `phase`: `None` when no process was in rotation, else whether
    /// it succeeded.
    fn add(&mut self, second: usize, phase: Phase, after_detection: bool, ok: Option<bool>) {
        if self.seconds.len() <= second {
            self.seconds.resize(second + 1, (0, 0));
        }
        self.seconds[second].0 += 1;
        if ok == Some(true) {
            self.seconds[second].1 += 1;
        }
        let c = match phase {
            Phase::Before => &mut self.before,
            Phase::Fault => &mut self.fault,
            Phase::After => &mut self.after,
        };
        c.sent += 1;
        match ok {
            None => c.no_process += 1,
            Some(true) => c.succeeded += 1,
            Some(false) => {}
        }
        if phase == Phase::Fault && after_detection {
            self.after_detection += 1;
        }
    }
}
