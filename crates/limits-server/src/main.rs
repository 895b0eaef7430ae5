//! The `limitsd` command line: run the service, or check a config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use limits_server::config::{self, Overrides};
use limits_server::server::{self, Source};

/// mimalloc instead of glibc's malloc: a check allocates some 70 times
/// (most of it in tonic, hyper and h2), and glibc's allocator took about a
/// fifth of limitsd's instructions per check (BENCHMARKS.md, "Server").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The limits decision service for LLM gateways.
#[derive(Debug, Parser)]
#[command(name = "limitsd", version, about)]
struct Args {
    /// The YAML config file. Environment variables (MERCATOR_LIMITS_...)
    /// override it, and the flags below override both. Reloaded when it
    /// changes and on SIGHUP.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate FILE (with the environment applied) and exit: 0 if valid.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// The gRPC listen address, e.g. 0.0.0.0:50051; port 0 picks a free port.
    #[arg(long, value_name = "HOST:PORT")]
    grpc_addr: Option<SocketAddr>,
    /// The Prometheus metrics listen address; port 0 picks a free port.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<SocketAddr>,
    /// An envoyproxy/ratelimit-format rule file for the Envoy rate limit
    /// service API, loaded after those in limits.rls.config_files.
    /// Repeatable.
    #[arg(long = "rls-config", value_name = "FILE")]
    rls_config: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let overrides = Overrides {
        grpc_addr: args.grpc_addr,
        metrics_addr: args.metrics_addr,
        rls_config: args.rls_config.clone(),
    };

    if let Some(path) = &args.check_config {
        return match config::load_from_env(Some(path), &overrides) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::from(2)
            }
        };
    }

    // Every bad value fails here, before any port is bound.
    let config = match config::load_from_env(args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("limitsd: invalid config: {e}");
            return ExitCode::from(2);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("limitsd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let source = Source {
        path: args.config,
        overrides,
        poll: config.server.reload_interval,
    };
    match runtime.block_on(run(config, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("limitsd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: config::Config, source: Source) -> anyhow::Result<()> {
    let telemetry = limits_server::ops::telemetry::init(&config.logging)?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let metrics = limits_server::ops::metrics::install()?;
    // Before anything is bound: a SIGTERM right after start-up still shuts
    // down gracefully.
    let stop = limits_server::ops::signal::shutdown();
    let bound = server::bind(config, source).await?;
    // Scripts and tests read the bound addresses from this line.
    match bound.admin_addr {
        Some(admin) => println!(
            "limitsd listening grpc={} metrics={} admin={admin}",
            bound.grpc_addr, bound.metrics_addr
        ),
        None => println!(
            "limitsd listening grpc={} metrics={}",
            bound.grpc_addr, bound.metrics_addr
        ),
    }
    tracing::info!(
        grpc_addr = %bound.grpc_addr,
        metrics_addr = %bound.metrics_addr,
        otlp = telemetry.exporting(),
        "limitsd listening"
    );
    let result = bound.serve(stop, Some(metrics)).await;
    telemetry.shutdown();
    result
}
