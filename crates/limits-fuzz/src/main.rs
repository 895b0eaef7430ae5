//! The fuzz driver: runs each target for a while on its seed corpus,
//! mutations of it and generated inputs, and stops at the first panic or
//! broken property, saving the input that caused it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use limits_fuzz::{Harness, Target, generate, input_name, mutate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Fuzzes limitsd's request handling, config loading and rule files.
///
/// Examples:
///   limits-fuzz --seconds 20                 # every target, 20 s each
///   limits-fuzz requests --seconds 600       # one target, longer
///   limits-fuzz --replay crash-file requests # run one saved input again
#[derive(Debug, Parser)]
#[command(name = "limits-fuzz", verbatim_doc_comment)]
struct Args {
    /// Targets to run (requests, config, rules); all of them by default.
    targets: Vec<String>,
    /// How long to run each target.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// The random seed (a run is repeatable with the same seed, inputs and
    /// build).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the seed corpus is (one folder per target).
    #[arg(long, default_value_os_t = default_corpus())]
    corpus: PathBuf,
    /// Where inputs that fail are saved.
    #[arg(long, default_value = "target/fuzz-failures")]
    failures: PathBuf,
    /// Runs one saved input on the targets given, and exits.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// Writes the request seeds (ordinary calls to every RPC) into the
    /// corpus, and exits.
    #[arg(long, hide = true)]
    write_request_seeds: bool,
}

fn default_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn corpus(dir: &Path, target: Target) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir.join(target.name())) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// Runs one input, turning a panic into an error.
fn run_one(harness: &mut Harness, target: Target, input: &[u8]) -> Result<(), String> {
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| harness.run(target, input)));
    match result {
        Ok(r) => r,
        Err(panic) => Err(format!(
            "panic: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let targets: Vec<Target> = if args.targets.is_empty() {
        Target::ALL.to_vec()
    } else {
        args.targets
            .iter()
            .map(|n| {
                Target::from_name(n).ok_or_else(|| {
                    anyhow::anyhow!("unknown target {n:?}: try requests, config or rules")
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    // Panics are caught and reported with their input; the default hook's
    // backtraces would only bury the report.
    std::panic::set_hook(Box::new(|_| {}));

    if args.write_request_seeds {
        let dir = args.corpus.join("requests");
        std::fs::create_dir_all(&dir)?;
        for (name, input) in limits_fuzz::request_seeds() {
            std::fs::write(dir.join(format!("{name}.bin")), input)?;
        }
        return Ok(());
    }
    if let Some(file) = &args.replay {
        let input = std::fs::read(file)?;
        for target in targets {
            let mut harness = Harness::new();
            match run_one(&mut harness, target, &input) {
                Ok(()) => println!("{}: ok", target.name()),
                Err(e) => anyhow::bail!("{}: {e}", target.name()),
            }
        }
        return Ok(());
    }

    let seed = args.seed.unwrap_or_else(rand::random);
    println!("limits-fuzz: seed {seed}, {} s per target", args.seconds);
    let mut failed = false;
    for target in targets {
        let mut rng = StdRng::seed_from_u64(seed ^ target as u64);
        let mut harness = Harness::new();
        let seeds = corpus(&args.corpus, target);
        let mut pool = seeds.clone();
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let mut runs: u64 = 0;
        let mut failure = None;
        // The seeds first, as they are.
        for input in &seeds {
            runs += 1;
            if let Err(e) = run_one(&mut harness, target, input) {
                failure = Some((input.clone(), e));
                break;
            }
        }
        while failure.is_none() && Instant::now() < deadline {
            let input = if pool.is_empty() || rng.random_bool(0.5) {
                generate(target, &mut rng, &harness.issued)
            } else {
                let a = &pool[rng.random_range(0..pool.len())];
                let b = &pool[rng.random_range(0..pool.len())];
                mutate(&mut rng, a, b)
            };
            runs += 1;
            if let Err(e) = run_one(&mut harness, target, &input) {
                failure = Some((input, e));
                break;
            }
            // Keep some generated inputs to mutate later.
            if pool.len() < 512 && rng.random_bool(0.01) {
                pool.push(input);
            }
        }
        match failure {
            None => {
                let outcomes: Vec<String> = harness
                    .outcomes
                    .iter()
                    .map(|(code, n)| format!("{code} {n}"))
                    .collect();
                println!(
                    "{}: {runs} inputs, 0 failures{}",
                    target.name(),
                    if outcomes.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", outcomes.join(", "))
                    }
                );
            }
            Some((input, e)) => {
                failed = true;
                std::fs::create_dir_all(&args.failures)?;
                let path = args
                    .failures
                    .join(format!("{}-{}", target.name(), input_name(&input)));
                std::fs::write(&path, &input)?;
                println!(
                    "{}: FAILED after {runs} inputs: {e}\n  input saved to {} (replay with --replay {} {})",
                    target.name(),
                    path.display(),
                    path.display(),
                    target.name()
                );
            }
        }
    }
    if failed {
        anyhow::bail!("a target failed");
    }
    Ok(())
}
