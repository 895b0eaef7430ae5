//! `limits-bench`: the load generator for limitsd, the tonic baseline
//! server it is compared against, the scale run, and the comparison table.

#![forbid(unsafe_code)]

mod attack;
mod baseline;
mod cpu;
mod load;
mod population;
mod scale;
mod stats;
mod table;
mod workload;

/// The generated protobuf types and gRPC stubs (client and server): those
/// limitsd is built with (`limits_server::pb`), so the load generator, the
/// baseline and the server speak one compiled contract. Our own API,
/// `mercator.limits.v1`, is at the root (`pb::Subject`); the Envoy rate limit
/// service is `pb::rls`.
mod pb {
    pub use limits_server::pb::*;

    /// The names the load generator and the baseline use from the Envoy
    /// API, in one place.
    pub mod rls {
        pub use super::envoy::config::core::v3::HeaderValue;
        pub use super::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
        pub use super::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
        pub use super::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
        pub use super::envoy::service::ratelimit::v3::rate_limit_response::{
            Code, DescriptorStatus, RateLimit,
        };
        pub use super::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
        pub use super::envoy::service::ratelimit::v3::rate_limit_service_server::{
            RateLimitService, RateLimitServiceServer,
        };
        pub use super::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
    }
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::population::{Distribution, Population};
use crate::stats::{Report, RunInfo};
use crate::workload::Workload;

#[derive(Debug, Parser)]
#[command(
    name = "limits-bench",
    version,
    about = "Load generator and baseline server for limitsd."
)]
struct Cli {
    /// Client runtime worker threads (default: the CPUs this process may run on).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive load against a server and report throughput and latency.
    Run(RunArgs),
    /// Serve the limits proto and Envoy's RateLimitService with fixed answers
    /// and no work: tonic's ceiling.
    Baseline {
        /// Listen address; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
        /// Limit statuses per CheckLimits / RecordUsage answer; 6 matches
        /// limitsd with bench.yaml and one subject per call.
        #[arg(long, default_value_t = 6)]
        statuses: usize,
    },
    /// Grow the active subject population of a running limitsd and measure
    /// check latency and its resident memory at each size.
    Scale(ScaleArgs),
    /// Print the comparison table of saved `run --json` reports.
    Table {
        /// Show only the best of repeated runs of the same server, workload
        /// and mode (highest throughput; open loop: lowest p99).
        #[arg(long)]
        best: bool,
        /// JSON report files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The memory attack: keep many CheckLimits calls padded to a few MiB
    /// in flight and report the server's peak resident memory.
    Attack {
        /// The server, HOST:PORT.
        #[arg(long)]
        addr: String,
        /// The server's process id, whose memory is read.
        #[arg(long)]
        pid: u32,
        /// Bytes of padding per request.
        #[arg(long, default_value_t = 3_900_000)]
        bytes: usize,
        /// Calls kept in flight.
        #[arg(long, default_value_t = 128)]
        in_flight: usize,
        /// HTTP/2 connections to spread them over.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Print the table of a saved `scale --json` report.
    ScaleTable {
        /// The JSON report file.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// The server, HOST:PORT.
    #[arg(long)]
    addr: String,
    /// HTTP/2 connections to spread callers over.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Measured time, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time run before measuring, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// An operation taking longer than this fails as DeadlineExceeded.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the report as JSON on stdout (a one-line summary goes to stderr).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// What each operation sends.
    #[arg(long, value_enum, default_value = "check")]
    workload: Workload,
    /// Closed loop: callers sending as fast as answers come back.
    #[arg(long, default_value_t = 32, conflicts_with = "rate")]
    concurrency: usize,
    /// Open loop: operations per second at fixed intended send times.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: at most this many operations in flight; sends beyond it
    /// are dropped and counted as `Unsent` errors.
    #[arg(long, default_value_t = 4096)]
    max_outstanding: usize,
    /// Size of the id population.
    #[arg(long, default_value_t = 10_000)]
    subjects: u64,
    #[arg(long, value_enum, default_value = "zipf")]
    distribution: Distribution,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Subjects per call: 1 = API key, 2 = + user, 3 = + team (for `rls`,
    /// one descriptor each: `api_key`, `user`, `team`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    subjects_per_call: u8,
    /// The `ShouldRateLimit` domain of the `rls` workload.
    #[arg(long, default_value = workload::DEFAULT_RLS_DOMAIN)]
    rls_domain: String,
    /// The server's name in reports; `baseline` marks the reference.
    #[arg(long)]
    label: Option<String>,
    /// Random seed for subject draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The server's process id, to report its CPU time per operation.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Debug, Args)]
struct ScaleArgs {
    #[command(flatten)]
    common: Common,
    /// The limitsd process whose resident memory is read.
    #[arg(long)]
    pid: u32,
    /// Population sizes to grow through, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    sizes: Vec<u64>,
    /// Callers of the measured check runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Callers while populating.
    #[arg(long, default_value_t = 64)]
    populate_concurrency: usize,
    /// Total time populating may take; later sizes shrink to fit it.
    #[arg(long, default_value = "240s", value_parser = humantime::parse_duration)]
    populate_budget: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The table commands only read files: no runtime needed.
    let printed = match &cli.command {
        Command::Table { files, best } => {
            Some(table::load(files).map(|r| table::render(&r, *best)))
        }
        Command::ScaleTable { file } => Some(scale::load(file).map(|r| r.human())),
        _ => None,
    };
    if let Some(printed) = printed {
        return match printed {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("limits-bench: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("limits-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Attack {
                addr,
                pid,
                bytes,
                in_flight,
                connections,
                duration,
            } => {
                let channels = load::connect(&addr, connections).await?;
                let report = attack::run(channels, pid, bytes, in_flight, duration).await?;
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }
            Command::Baseline { addr, statuses } => baseline::serve(addr, statuses).await,
            Command::Scale(args) => run_scale(args).await,
            Command::Table { .. } | Command::ScaleTable { .. } => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("limits-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let per_call = usize::from(args.subjects_per_call);
    let population = Population::new(args.subjects, args.distribution, args.zipf_s, per_call)?;
    let channels = load::connect(&c.addr, c.connections).await?;
    let plan = load::Plan {
        workload: args.workload,
        population: Arc::new(population),
        warmup: c.warmup,
        duration: c.duration,
        timeout: c.timeout,
        seed: args.seed,
        domain: args.rls_domain.as_str().into(),
    };
    // CPU time is sampled at the edges of the measured window, off the
    // load's critical path.
    let cpu_window = {
        let (warmup, duration, server) = (c.warmup, c.duration, args.server_pid);
        tokio::spawn(async move {
            let sample = || cpu::Sample::take(server);
            tokio::time::sleep(warmup).await;
            let before = sample();
            tokio::time::sleep(duration).await;
            (before, sample())
        })
    };
    let rec = match args.rate {
        Some(rate) => {
            anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
            load::open(&plan, &channels, rate, args.max_outstanding).await
        }
        None => load::closed(&plan, &channels, args.concurrency).await,
    };
    let info = RunInfo {
        label: args.label.clone().unwrap_or_else(|| c.addr.clone()),
        addr: c.addr.clone(),
        workload: args.workload.name().to_owned(),
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .to_owned(),
        concurrency: if args.rate.is_some() {
            0
        } else {
            args.concurrency
        },
        rate: args.rate,
        connections: channels.len(),
        duration_s: c.duration.as_secs_f64(),
        warmup_s: c.warmup.as_secs_f64(),
        subjects: args.subjects,
        distribution: format!("{:?}", args.distribution).to_lowercase(),
        zipf_s: args.zipf_s,
        subjects_per_call: per_call,
    };
    let mut report = Report::new(info, &rec, args.workload.steps());
    if let Ok((before, after)) = cpu_window.await {
        let window = cpu::Window::between(&before, &after);
        let per_op = |d: Option<Duration>| {
            d.filter(|_| rec.ok > 0)
                .map(|d| d.as_secs_f64() * 1e6 / rec.ok as f64)
        };
        report.client_cpu_us_per_op = per_op(window.client);
        report.server_cpu_us_per_op = per_op(window.server);
        report.other_cores = window.other_cores(c.duration);
    }
    if c.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        eprintln!(
            "{} {} {}: {:.0} ops/s p50 {} µs p99 {} µs p99.9 {} µs errors {} server CPU {} µs/op",
            report.info.workload,
            report.info.label,
            report.info.mode,
            report.throughput,
            report.latency_us.p50,
            report.latency_us.p99,
            report.latency_us.p999,
            report.error_total,
            report
                .server_cpu_us_per_op
                .map(|c| format!("{c:.1}"))
                .unwrap_or_else(|| "?".into())
        );
        if let Some(w) = report.unmatched_warning() {
            eprintln!("warning: {w} (domain {:?})", args.rls_domain);
        }
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

async fn run_scale(args: ScaleArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let channels = load::connect(&c.addr, c.connections).await?;
    let plan = scale::ScalePlan {
        pid: args.pid,
        sizes: args.sizes.clone(),
        concurrency: args.concurrency,
        populate_concurrency: args.populate_concurrency,
        warmup: c.warmup,
        duration: c.duration,
        timeout: c.timeout,
        populate_budget: args.populate_budget,
    };
    let report = scale::run(&c.addr, &channels, &plan).await?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(())
}
