//! The outage harness: one scripted incident, replayed against several client stacks
//! side by side, to show what each does to a failing downstream.
//!
//! ```text
//! cargo run --release --example outage                # the incident, simulated
//! cargo run --release --example outage -- --help
//! cargo run --release --example outage -- contention  # the AWS jitter experiment
//! cargo run --release --example outage -- fleet       # many processes, many endpoints
//! cargo run --release --example outage -- --real      # the incident on loopback HTTP
//! ```
//!
//! The downstream follows a script: healthy, a hard outage (every call refused at
//! once), a brownout (answers take 0.3 to 1.3 s, so many pass the client's 1 s
//! timeout), recovered, then flapping (down 2 s, up 3 s). It has a fixed number of
//! workers and a bounded queue, so load above its capacity makes it slower and then
//! refused; work a client gave up on still occupies a worker. Clients send requests on
//! a fixed schedule (open loop) through each stack:
//!
//! - `bare`: a 1 s timeout per attempt, nothing else (every stack has it);
//! - `naive retry`: 3 attempts, 50 ms doubling backoff, no jitter, no budget;
//! - `steadfast retry`: 3 attempts, full jitter, a budget of 10% of requests + 5/s;
//! - `breaker`: a breaker only (5 failures in a row, or 50% of the last 100 calls),
//!   which recovers on its own timer through half-open trials of user requests;
//! - `retry + breaker`: steadfast retry outside that breaker;
//! - `retry + breaker + watchdog`: the same, with a watchdog owning recovery: it probes
//!   every 0.5 to 1 s (equal jitter) while the downstream fails, and closes the breaker
//!   on the first passing probe;
//! - `defaults`: `RetryPolicy::new()` outside `Breaker::new`, and a watchdog with only
//!   `interval(1 s)` set (seeded, so that a run repeats);
//! - `adaptive`: the defaults' rules written out (95% failures over 2.5 s, adaptive
//!   throttling with k = 2) with the tuned retry and a watchdog probing 1 to 2 s apart.
//!
//! The simulation runs on tokio's paused clock: the 3-minute incident takes seconds, and
//! the same seed prints the same tables. The tables are printed as Markdown; the CSV
//! files and the SVG chart go to `target/outage/` (`--out` to change it).

mod contention;
mod fleet;
mod real;
mod report;
mod sim;
mod stacks;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use steadfast::BoxError;

use crate::sim::{Load, Plan, Script};
use crate::stacks::{StackKind, Tuning};

#[derive(Debug, Parser)]
#[command(
    name = "outage",
    about = "Replays a scripted incident against client stacks (bare, retries, breaker, \
             watchdog) and reports what each did to the failing downstream"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Option<Scenario>,
    #[command(flatten)]
    incident: Incident,
    /// Seed of every random choice: the same seed gives the same figures (simulated).
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
    /// Where the CSV files and the SVG chart go.
    #[arg(long, global = true, value_name = "DIR", default_value = default_out())]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// The AWS "Exponential Backoff and Jitter" contention experiment: clients start
    /// together and compete for one write (optimistic concurrency); base 5 ms, cap 2 s.
    Contention(ContentionArgs),
    /// A fleet: client processes over endpoints behind p2c, with an orchestrator that
    /// follows each process's readiness; one fault at a time (simulated).
    Fleet(FleetArgs),
}

#[derive(Debug, Args)]
struct FleetArgs {
    /// Client processes.
    #[arg(long, default_value_t = 50)]
    processes: usize,
    /// Endpoints every process balances over.
    #[arg(long, default_value_t = 20)]
    endpoints: usize,
    /// Requests a second per process (the fleet's total goes to processes in rotation).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds of the fault (10 s healthy before, 20 s healed after).
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    fault: f64,
    /// Each process's ejection cap: the share of its endpoints that may be ejected.
    #[arg(long, default_value_t = 0.1)]
    max_ejected: f64,
}

#[derive(Debug, Args)]
struct ContentionArgs {
    /// Numbers of competing clients, one experiment each.
    #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
    clients: Vec<u32>,
    /// Seeds averaged per figure.
    #[arg(long, default_value_t = 20)]
    trials: u32,
    /// Time between a client's read and its write, in milliseconds: a write fails if
    /// another landed in between.
    #[arg(long, value_name = "MS", default_value_t = 1.0)]
    latency: f64,
}

#[derive(Debug, Args)]
struct Incident {
    /// Run over loopback HTTP (an axum downstream per stack, hyper clients) in real
    /// time, with short phases by default, instead of simulating.
    #[arg(long)]
    real: bool,
    /// Clients, each sending at `--rate` [default: 100, 10 with --real].
    #[arg(long)]
    clients: Option<u32>,
    /// Requests a second per client, sent on schedule (open loop) [default: 10].
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds healthy [default: 20, 2 with --real].
    #[arg(long, value_name = "SECS")]
    healthy: Option<f64>,
    /// Seconds of hard outage: every call refused [default: 60, 4 with --real].
    #[arg(long, value_name = "SECS")]
    outage: Option<f64>,
    /// Seconds of brownout: slow answers, timeouts [default: 30, 3 with --real].
    #[arg(long, value_name = "SECS")]
    brownout: Option<f64>,
    /// Seconds recovered [default: 30, 3 with --real].
    #[arg(long, value_name = "SECS")]
    recovered: Option<f64>,
    /// Seconds flapping: down `--flap-down`, up `--flap-up`, and again [default: 30, 5
    /// with --real].
    #[arg(long, value_name = "SECS")]
    flapping: Option<f64>,
    /// Seconds down in each flap.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    flap_down: f64,
    /// Seconds up in each flap.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    flap_up: f64,
    /// Stacks to run, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    stacks: Vec<StackKind>,
}

fn default_out() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/target/outage")
}

fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.out)?;
    match &cli.scenario {
        Some(Scenario::Contention(args)) => contention(args, &cli),
        Some(Scenario::Fleet(args)) => fleet(args, &cli),
        None => incident(&cli.incident, &cli),
    }
}

fn secs(
    value: Option<f64>,
    simulated: f64,
    real: f64,
    is_real: bool,
) -> Result<Duration, BoxError> {
    let s = value.unwrap_or(if is_real { real } else { simulated });
    Ok(Duration::try_from_secs_f64(s).map_err(|e| format!("{s} s: {e}"))?)
}

fn incident(args: &Incident, cli: &Cli) -> Result<(), BoxError> {
    let r = args.real;
    let script = Script {
        healthy: secs(args.healthy, 20.0, 2.0, r)?,
        outage: secs(args.outage, 60.0, 4.0, r)?,
        brownout: secs(args.brownout, 30.0, 3.0, r)?,
        recovered: secs(args.recovered, 30.0, 3.0, r)?,
        flapping: secs(args.flapping, 30.0, 5.0, r)?,
        flap_down: secs(Some(args.flap_down), 0.0, 0.0, r)?,
        flap_up: secs(Some(args.flap_up), 0.0, 0.0, r)?,
    };
    let load = Load {
        clients: args.clients.unwrap_or(if r { 10 } else { 100 }),
        rate: args.rate.unwrap_or(10.0),
    };
    if load.clients == 0 || !(load.rate > 0.0 && load.rate.is_finite()) || script.total().is_zero()
    {
        return Err("need at least one client, a positive rate and a phase longer than 0".into());
    }
    let kinds = if args.stacks.is_empty() {
        StackKind::ALL.to_vec()
    } else {
        args.stacks.clone()
    };
    let plan = Plan {
        tuning: Tuning::default(),
        script: script.clone(),
        load: load.clone(),
        seed: cli.seed,
    };
    let mode = if r {
        "loopback HTTP, real time"
    } else {
        "simulated, paused clock"
    };
    println!(
        "Incident ({mode}): healthy {:?}, hard outage {:?}, brownout {:?}, recovered {:?}, \
         flapping {:?} (down {:?} / up {:?}); {} clients x {} req/s; seed {}\n",
        script.healthy,
        script.outage,
        script.brownout,
        script.recovered,
        script.flapping,
        script.flap_down,
        script.flap_up,
        load.clients,
        load.rate,
        cli.seed
    );
    let runs = if r {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(real::run_all(&kinds, &plan))?
    } else {
        kinds
            .iter()
            .map(|&kind| sim::simulate(kind, &plan))
            .collect::<Result<Vec<_>, _>>()?
    };
    let figures: Vec<_> = runs.iter().map(|run| sim::figures(run, &script)).collect();
    let timelines: Vec<_> = runs
        .iter()
        .map(|run| (run.kind, sim::timeline(run, &script)))
        .collect();

    println!("Per phase (latency is what the client waited, retries included):\n");
    println!("{}", report::phase_table(&figures));
    println!(
        "The hard outage ({:?}), and the recovery: from each return of the downstream \
         after being hard down (the end of the outage, and every flap) to the first \
         request that succeeded, the worst:\n",
        script.outage
    );
    println!("{}", report::incident_table(&figures));

    let suffix = if r { "-real" } else { "" };
    let phases = cli.out.join(format!("phases{suffix}.csv"));
    let timeline = cli.out.join(format!("timeline{suffix}.csv"));
    let chart = cli.out.join(format!("outage{suffix}.svg"));
    std::fs::write(&phases, report::phases_csv(&figures))?;
    std::fs::write(&timeline, report::timeline_csv(&timelines))?;
    report::chart(&chart, &script, &runs).map_err(|e| e.to_string())?;
    println!("wrote {}", phases.display());
    println!("wrote {}", timeline.display());
    println!("wrote {}", chart.display());
    Ok(())
}

fn contention(args: &ContentionArgs, cli: &Cli) -> Result<(), BoxError> {
    let latency = Duration::try_from_secs_f64(args.latency / 1e3)?;
    println!(
        "Contention: clients start together, one write each (optimistic concurrency, \
         {latency:?} from read to write); backoff base {:?}, cap {:?}; mean of {} seeds \
         from {}\n",
        contention::BASE,
        contention::CAP,
        args.trials,
        cli.seed
    );
    let rows = contention::run(&args.clients, args.trials, cli.seed, latency);
    println!("{}", report::contention_table(&rows));
    println!("{}\n", contention::PUBLISHED);
    let path = cli.out.join("contention.csv");
    std::fs::write(&path, report::contention_csv(&rows))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn fleet(args: &FleetArgs, cli: &Cli) -> Result<(), BoxError> {
    let plan = fleet::FleetPlan {
        processes: args.processes,
        endpoints: args.endpoints,
        rate: args.rate,
        fault: Duration::try_from_secs_f64(args.fault)?,
        max_ejected: args.max_ejected,
        seed: cli.seed,
        ..fleet::FleetPlan::default()
    };
    println!(
        "Fleet (simulated, paused clock): {} processes x {} endpoints behind p2c, {} req/s \
         per process; {:?} healthy, {:?} of fault, {:?} healed; ejection cap {}; seed {}\n",
        plan.processes,
        plan.endpoints,
        plan.rate,
        plan.healthy,
        plan.fault,
        plan.healed,
        plan.max_ejected,
        plan.seed
    );
    let mut rows = Vec::new();
    for fault in fleet::Fault::ALL {
        rows.push(fleet::simulate(&plan, fault)?);
        if fault == fleet::Fault::HalfDead && plan.max_ejected < 0.5 {
            let wider = fleet::FleetPlan {
                max_ejected: 0.5,
                ..plan.clone()
            };
            rows.push(fleet::simulate(&wider, fault)?);
        }
    }
    println!("{}", report::fleet_table(&rows));
    let path = cli.out.join("fleet.csv");
    std::fs::write(&path, report::fleet_csv(&rows))?;
    println!("wrote {}", path.display());
    let chart = cli.out.join("fleet.svg");
    let fault = (
        plan.healthy.as_secs_f64(),
        (plan.healthy + plan.fault).as_secs_f64(),
    );
    report::fleet_chart(&chart, &rows, fault, plan.processes).map_err(|e| e.to_string())?;
    println!("wrote {}", chart.display());
    Ok(())
}
