//! Shared helpers for the end-to-end tests: start the real `limitsd` binary
//! on 127.0.0.1:0 with a config written to a temp dir, and talk gRPC to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use limits_server::pb;
use limits_server::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use limits_server::pb::limits_service_client::LimitsServiceClient;
use tonic::transport::Channel;

/// How long a test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running `limitsd` child process, killed on drop.
pub struct Limitsd {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The admin API's own listener, when `server.admin_addr` is set.
    pub admin_addr: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    /// Lines the process printed on stdout after the listening line.
    pub stdout: mpsc::Receiver<String>,
}

impl Limitsd {
    /// Starts limitsd with `yaml` as its config file.
    pub fn start(yaml: &str) -> Limitsd {
        Limitsd::start_with(yaml, &[])
    }

    /// Starts limitsd with extra environment variables.
    pub fn start_with(yaml: &str, env: &[(&str, &str)]) -> Limitsd {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("limits.yaml");
        std::fs::write(&config, yaml).expect("write config");
        Limitsd::spawn(dir, &config, env)
    }

    pub fn spawn(
        dir: tempfile::TempDir,
        config: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Limitsd {
        let workdir = dir.path().to_owned();
        Limitsd::spawn_at(dir, &workdir, config, env)
    }

    /// Starts limitsd in `workdir`, which outlives it (restart tests).
    pub fn start_in(workdir: &std::path::Path, config: &std::path::Path) -> Limitsd {
        let dir = tempfile::tempdir().expect("temp dir");
        Limitsd::spawn_at(dir, workdir, config, &[])
    }

    fn spawn_at(
        dir: tempfile::TempDir,
        workdir: &std::path::Path,
        config: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Limitsd {
        Limitsd::spawn_with_args(dir, workdir, config, env, &[])
    }

    /// Starts limitsd with `yaml` as its config file and extra command-line
    /// arguments, in a temp dir that is also its working directory (so
    /// relative paths in `args` and `yaml` resolve there). `files` are
    /// written to that directory first.
    pub fn start_args(yaml: &str, files: &[(&str, &str)], args: &[&str]) -> Limitsd {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write file");
        }
        let config = dir.path().join("limits.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let workdir = dir.path().to_owned();
        Limitsd::spawn_with_args(dir, &workdir, &config, &[], args)
    }

    fn spawn_with_args(
        dir: tempfile::TempDir,
        workdir: &std::path::Path,
        config: &std::path::Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Limitsd {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_limitsd"));
        cmd.args(args);
        cmd.arg("--config")
            .arg(config)
            .arg("--grpc-addr")
            .arg("127.0.0.1:0")
            .arg("--metrics-addr")
            .arg("127.0.0.1:0")
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn limitsd");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        let (addr, metrics_addr, admin_addr) = loop {
            let left = DEADLINE
                .checked_sub(start.elapsed())
                .expect("limitsd did not start in time");
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if line.starts_with("limitsd listening ") {
                        let token = |name: &str| -> SocketAddr {
                            line.split_whitespace()
                                .find_map(|t| t.strip_prefix(name))
                                .and_then(|a| a.parse().ok())
                                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                        };
                        let admin = line
                            .split_whitespace()
                            .find_map(|t| t.strip_prefix("admin="))
                            .and_then(|a| a.parse().ok());
                        break (token("grpc="), token("metrics="), admin);
                    }
                }
                Err(_) => {
                    let status = child.try_wait().ok().flatten();
                    panic!("limitsd did not print its address (exit status {status:?})");
                }
            }
        };
        Limitsd {
            child,
            addr,
            metrics_addr,
            admin_addr,
            dir,
            stdout: rx,
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    /// Sends a signal to the process (`TERM`, `HUP`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, returning its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "limitsd did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The text of `GET /metrics`.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics_addr).expect("connect to metrics");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read metrics");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    }

    /// A client of Envoy's rate limit service API, generated from the
    /// vendored protos.
    pub async fn rls_client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::new(self.channel().await)
    }

    pub async fn client(&self) -> LimitsServiceClient<Channel> {
        let endpoint = format!("http://{}", self.addr);
        LimitsServiceClient::connect(endpoint)
            .await
            .expect("connect to limitsd")
    }
}

impl Drop for Limitsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn key(id: &str) -> pb::Subject {
    pb::Subject {
        dimension: pb::Dimension::ApiKey as i32,
        id: id.into(),
    }
}

pub fn user(id: &str) -> pb::Subject {
    pb::Subject {
        dimension: pb::Dimension::User as i32,
        id: id.into(),
    }
}

pub fn team(id: &str) -> pb::Subject {
    pb::Subject {
        dimension: pb::Dimension::Team as i32,
        id: id.into(),
    }
}

pub fn org(id: &str) -> pb::Subject {
    pb::Subject {
        dimension: pb::Dimension::Org as i32,
        id: id.into(),
    }
}

pub fn check(subjects: Vec<pb::Subject>, cost: f64) -> pb::CheckLimitsRequest {
    pb::CheckLimitsRequest {
        subjects,
        model: "gpt-4".into(),
        estimated_tokens: 0,
        estimated_input_tokens: None,
        estimated_output_tokens: None,
        estimated_cost_usd: Some(cost),
        reserve: false,
        reservation_ttl: None,
    }
}

pub fn record(subjects: Vec<pb::Subject>, cost: f64) -> pb::RecordUsageRequest {
    pb::RecordUsageRequest {
        subjects,
        reservation_id: String::new(),
        request_tokens: 10,
        response_tokens: 5,
        total_tokens: 0,
        cost_usd: Some(cost),
        provider: "openai".into(),
        model: "gpt-4".into(),
        progress: false,
        sequence: 0,
    }
}

pub fn usage_req(s: pb::Subject) -> pb::GetUsageRequest {
    pb::GetUsageRequest { subject: Some(s) }
}

/// The used amount of one limit kind in a GetUsage answer.
pub fn used(resp: &pb::GetUsageResponse, kind: pb::LimitKind) -> f64 {
    resp.statuses
        .iter()
        .find(|s| s.kind == kind as i32)
        .map(|s| s.used)
        .unwrap_or_else(|| panic!("no {kind:?} status in {resp:?}"))
}

/// Runs limitsd to completion (it is expected to fail at start-up) and
/// returns its exit status and stderr.
pub fn run_to_exit(
    workdir: &std::path::Path,
    config: &std::path::Path,
) -> (std::process::ExitStatus, String) {
    run_to_exit_with_args(workdir, config, &[])
}

/// [`run_to_exit`] with extra command-line arguments.
pub fn run_to_exit_with_args(
    workdir: &std::path::Path,
    config: &std::path::Path,
    args: &[&str],
) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_limitsd"))
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--grpc-addr")
        .arg("127.0.0.1:0")
        .arg("--metrics-addr")
        .arg("127.0.0.1:0")
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn limitsd");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status, err);
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("limitsd kept running; it was expected to fail at start-up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it returns `Some`, or panics after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// A webhook receiver, for alert delivery.
// ---------------------------------------------------------------------------

/// What a local webhook receiver got: each request's headers and body.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: http::HeaderMap,
    pub body: String,
}

/// A real HTTP receiver on 127.0.0.1: answers each POST with the next
/// status of `answers` (then 200) and keeps what it got.
pub async fn receiver(
    answers: Vec<u16>,
) -> (String, std::sync::Arc<parking_lot::Mutex<Vec<Received>>>) {
    let answers = parking_lot::Mutex::new(answers.into_iter());
    receiver_answering(move || answers.lock().next().unwrap_or(200)).await
}

/// A receiver whose answers the test switches: each POST is answered with
/// the status `status` holds then.
pub async fn switchable_receiver(
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
) -> (String, std::sync::Arc<parking_lot::Mutex<Vec<Received>>>) {
    receiver_answering(move || status.load(std::sync::atomic::Ordering::SeqCst)).await
}

async fn receiver_answering(
    next: impl Fn() -> u16 + Send + Sync + 'static,
) -> (String, std::sync::Arc<parking_lot::Mutex<Vec<Received>>>) {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<Received>::new()));
    let answers = std::sync::Arc::new(next);
    let kept = got.clone();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let (got, answers) = (kept.clone(), answers.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (got, answers) = (got.clone(), answers.clone());
                        async move {
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            got.lock().push(Received {
                                headers,
                                body: String::from_utf8(body.to_vec()).unwrap(),
                            });
                            let status = answers();
                            let mut answer = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"ok"),
                            ));
                            *answer.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(answer)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    (url, got)
}

/// Waits until `got` holds `n` requests, with a deadline.
pub async fn wait_for(got: &parking_lot::Mutex<Vec<Received>>, n: usize) -> Vec<Received> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let now = got.lock().clone();
        if now.len() >= n {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} webhook requests within 15 s",
            now.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub const SECRET: &str = "whsec-3c9f1e7a5b2d4c6e8a0b";

/// Recomputes a request's signature with the secret, as a receiver does.
pub fn verify(r: &Received) {
    use hmac::Mac as _;
    let header = r.headers["x-limits-signature"].to_str().unwrap();
    let (t, v1) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .expect("t=...,v1=...");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", r.body).as_bytes());
    mac.verify_slice(&hex::decode(v1).unwrap())
        .expect("the signature verifies with the secret");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(t.parse::<u64>().unwrap()) < 60,
        "a fresh timestamp"
    );
}
