//! CI smoke test of the benchmark tooling: starts the baseline server and a
//! real limitsd on 127.0.0.1:0, runs every workload (the four LimitsService
//! ones and `rls`, Envoy's ShouldRateLimit) for about two seconds at a low
//! open-loop rate (100/s, low enough for an unoptimised build on a busy
//! machine), and a tiny scale run. It checks that the tooling works end to
//! end (no errors, operations counted, limitsd's answers decided by its
//! configured limits), never how fast anything is: CI machines are too
//! noisy for timing assertions.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest any one child command may take.
const DEADLINE: Duration = Duration::from_secs(30);

fn bench() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_limits-bench"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// limitsd from the same target directory and profile as this test's
/// limits-bench binary, built first if it is not there (e.g. when only this
/// crate's tests are run on a fresh checkout).
fn limitsd() -> PathBuf {
    let profile_dir = bench()
        .parent()
        .expect("binary has a directory")
        .to_path_buf();
    let path = profile_dir.join("limitsd");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args([
            "build",
            "-p",
            "limits-server",
            "--bin",
            "limitsd",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        // The target directory the test binary lives in, whatever it is
        // called, so the build lands where it is looked for.
        if let Some(target) = profile_dir.parent() {
            cmd.arg("--target-dir").arg(target);
        }
        let status = cmd.status().expect("run cargo build for limitsd");
        assert!(status.success(), "building limitsd failed: {status}");
    }
    assert!(path.exists(), "no limitsd at {}", path.display());
    path
}

/// A server child process, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Spawns `cmd` and waits for its `<what> listening grpc=HOST:PORT` line.
    fn start(mut cmd: Command, what: &str) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let prefix = format!("{what} listening ");
        let start = Instant::now();
        let addr = loop {
            let left = DEADLINE.checked_sub(start.elapsed()).unwrap_or_default();
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(&prefix) {
                        // Only the grpc= token: more tokens may follow it.
                        let addr = rest
                            .split_whitespace()
                            .find_map(|t| t.strip_prefix("grpc="))
                            .expect("a grpc= token");
                        break addr.to_owned();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("{what} did not print its address in time");
                }
            }
        };
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs limits-bench with `args`, killing it if it overstays [`DEADLINE`],
/// and returns its stdout; fails on a non-zero exit.
fn bench_output(args: &[&str]) -> String {
    let mut child = Command::new(bench())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn limits-bench");
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for limits-bench") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("limits-bench {args:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().expect("reader thread");
    assert!(
        status.success(),
        "limits-bench {args:?} failed: {status}\n{stdout}"
    );
    stdout
}

const WORKLOADS: [&str; 5] = [
    "check",
    "check-record",
    "check-reserve",
    "acquire-release",
    "rls",
];

#[test]
fn every_workload_runs_cleanly_against_baseline_and_limitsd() {
    let started = Instant::now();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench.yaml");
    let mut baseline_cmd = Command::new(bench());
    baseline_cmd.args(["baseline", "--addr", "127.0.0.1:0"]);
    let baseline = Server::start(baseline_cmd, "baseline");
    let mut limitsd_cmd = Command::new(limitsd());
    limitsd_cmd.arg("--config").arg(&config).args([
        "--grpc-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let limitsd = Server::start(limitsd_cmd, "limitsd");

    let dir = std::env::temp_dir().join(format!("limits-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (label, server) in [("baseline", &baseline), ("limitsd", &limitsd)] {
        for w in WORKLOADS {
            let out = bench_output(&[
                "--threads",
                "1",
                "run",
                "--addr",
                &server.addr,
                "--label",
                label,
                "--workload",
                w,
                "--rate",
                "100",
                "--duration",
                "2s",
                "--warmup",
                "200ms",
                "--timeout",
                "10s",
                "--subjects",
                "1000",
                "--subjects-per-call",
                "3",
                "--connections",
                "1",
                "--json",
            ]);
            let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
            assert_eq!(r["error_total"], 0, "{label} {w}: {out}");
            assert!(r["ok"].as_u64().unwrap() > 0, "{label} {w}: {out}");
            assert!(r["allowed"].as_u64().unwrap() > 0, "{label} {w}: {out}");
            assert_eq!(r["workload"], w);
            // Every ShouldRateLimit answer named a limit for each of its
            // descriptors: limitsd's bench config maps the domain and keys
            // the load generator sends, so what ran was a decision, not the
            // unmatched-descriptor shortcut.
            assert_eq!(r["unmatched"], 0, "{label} {w}: {out}");
            if label == "limitsd" && w == "rls" {
                // bench.yaml's limits are far above 100/s: every answer is
                // an OK decision.
                assert_eq!(r["denied"], 0, "{label} {w}: {out}");
                assert_eq!(r["allowed"], r["ok"], "{label} {w}: {out}");
            }
            let file = dir.join(format!("{label}-{w}.json"));
            std::fs::write(&file, &out).unwrap();
            files.push(file);
        }
    }

    // The comparison table reads the saved reports back.
    let mut args = vec!["table".to_owned()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let table = bench_output(&args);
    for w in WORKLOADS {
        assert!(table.contains(&format!("| {w} | limitsd |")), "{table}");
    }

    // A tiny scale run: populates two small sizes and reads limitsd's RSS.
    let pid = limitsd.child.id().to_string();
    let out = bench_output(&[
        "--threads",
        "1",
        "scale",
        "--addr",
        &limitsd.addr,
        "--pid",
        &pid,
        "--sizes",
        "100,300",
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--concurrency",
        "2",
        "--connections",
        "1",
        "--json",
    ]);
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{out}");
    assert_eq!(steps[1]["subjects"], 300, "{out}");
    for s in steps {
        assert_eq!(s["populate_errors"], 0, "{out}");
        assert_eq!(s["check_errors"], 0, "{out}");
        assert!(s["rss_bytes"].as_u64().unwrap() > 0, "{out}");
    }

    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the smoke test must stay under a minute"
    );
}
