//! Defects an adversarial user found, each reproduced against the real
//! binary: a full disk, forged and mismatched ids, a huge `grpc-timeout`,
//! and what must not be at rest.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use limits_server::pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// A small real filesystem (tmpfs) mounted for one test, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {size} tmpfs failed: this test needs root (CI runs as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with `name` until a write fails.
    fn fill(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let path = self.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).and_then(|_| f.sync_all()).is_ok() {}
        // And the last few bytes, one at a time.
        while f.write_all(&[0]).and_then(|_| f.sync_all()).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn sled_config(workdir: &Path, store: &Path) -> PathBuf {
    let config = workdir.join("limits.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
limits:
  budgets:
    by_api_key:
      default: {{ monthly: 1000000.00 }}
    by_user:
      default: {{ monthly: 1000000.00 }}
  storage:
    backend: sled
    sled:
      path: {}
"#,
            store.display()
        ),
    )
    .unwrap();
    config
}

async fn monthly(d: &Limitsd, id: &str) -> f64 {
    let mut c = d.client().await;
    let u = c.get_usage(usage_req(key(id))).await.unwrap().into_inner();
    used(&u, pb::LimitKind::BudgetMonthly)
}

async fn health(d: &Limitsd) -> i32 {
    let mut h = tonic_health::pb::health_client::HealthClient::new(d.channel().await);
    h.check(tonic_health::pb::HealthCheckRequest {
        service: "mercator.limits.v1.LimitsService".into(),
    })
    .await
    .unwrap()
    .into_inner()
    .status
}

fn metric(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Regression (full disk on sled): every refused RecordUsage used to be
/// added in memory ($296 shown after $1 acknowledged), writes stayed
/// UNAVAILABLE until a restart, health stayed SERVING and SIGTERM exited 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_charges_nothing_refused_reports_itself_and_recovers() {
    let disk = SmallDisk::mount("12m");
    let work = tempfile::tempdir().unwrap();
    let store = disk.path().join("store");
    let config = sled_config(work.path(), &store);
    let mut d = Limitsd::start_in(work.path(), &config);
    let mut c = d.client().await;

    // One key that is charged throughout, and fresh keys to grow the log.
    c.record_usage(record(vec![key("payer")], 1.0))
        .await
        .unwrap();
    let filler = disk.fill("filler");
    let mut acked = 1.0;
    let mut refused = None;
    for i in 0..20_000 {
        // Bounded: the disk has a few hundred KiB left at most.
        match c
            .record_usage(record(vec![key("payer"), user(&format!("grow-{i}"))], 1.0))
            .await
        {
            Ok(_) => acked += 1.0,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the disk filled up");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    // Retrying, as a gateway does on UNAVAILABLE, charges nothing.
    for _ in 0..25 {
        let e = c
            .record_usage(record(vec![key("payer")], 1.0))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
    }
    assert_eq!(monthly(&d, "payer").await, acked, "only acknowledged usage");
    // Health says so, and a metric says why.
    eventually("NOT_SERVING while the disk is full", || async {
        (health(&d).await == ServingStatus::NotServing as i32).then_some(())
    })
    .await;
    let scrape = d.scrape();
    assert_eq!(metric(&scrape, "mercator_limits_store_writable"), Some(0.0));
    assert!(
        scrape
            .lines()
            .any(|l| l
                .starts_with("mercator_limits_store_write_failures_total{reason=\"no_space\"}")),
        "{scrape}"
    );

    // Space comes back: the store recovers by itself.
    std::fs::remove_file(filler).unwrap();
    eventually("SERVING once there is space", || async {
        (health(&d).await == ServingStatus::Serving as i32).then_some(())
    })
    .await;
    let channel = d.channel().await;
    eventually("writes taken again", || {
        let mut c = pb::limits_service_client::LimitsServiceClient::new(channel.clone());
        async move { c.record_usage(record(vec![key("payer")], 1.0)).await.ok() }
    })
    .await;
    acked += 1.0;
    assert_eq!(monthly(&d, "payer").await, acked);
    assert_eq!(
        metric(&d.scrape(), "mercator_limits_store_writable"),
        Some(1.0)
    );

    // A clean shutdown after the episode exits 0, and what was acknowledged
    // is what is on disk.
    d.signal("TERM");
    assert!(d.wait_exit().success(), "SIGTERM after recovery exits 0");
    let d = Limitsd::start_in(work.path(), &config);
    assert_eq!(monthly(&d, "payer").await, acked);
}

/// A shutdown while the disk is still full says so and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_cannot_flush_exits_non_zero() {
    let disk = SmallDisk::mount("12m");
    let work = tempfile::tempdir().unwrap();
    let config = sled_config(work.path(), &disk.path().join("store"));
    let mut d = Limitsd::start_in(work.path(), &config);
    let mut c = d.client().await;
    c.record_usage(record(vec![key("payer")], 1.0))
        .await
        .unwrap();
    disk.fill("filler");
    for i in 0..20_000 {
        if c.record_usage(record(vec![user(&format!("grow-{i}"))], 1.0))
            .await
            .is_err()
        {
            break;
        }
    }
    d.signal("TERM");
    assert!(!d.wait_exit().success());
}

/// Regression: lease ids were sequential, so releasing id - 1 freed another
/// caller's lease, and `rsv_+...` parsed as an id.
#[tokio::test]
async fn neighbouring_and_forged_ids_are_refused() {
    let d = Limitsd::start(
        r#"
limits:
  rate_limits:
    by_api_key:
      a: { max_concurrent: 1 }
      b: { max_concurrent: 1 }
  budgets:
    by_api_key:
      a: { daily: 10 }
"#,
    );
    let mut c = d.client().await;
    let acquire = |k: &'static str| pb::AcquireConcurrentRequest {
        subjects: vec![key(k)],
        ttl: None,
    };
    let la = c
        .acquire_concurrent(acquire("a"))
        .await
        .unwrap()
        .into_inner();
    let lb = c
        .acquire_concurrent(acquire("b"))
        .await
        .unwrap()
        .into_inner();
    assert!(la.acquired && lb.acquired);
    // Every id that differs from b's in one digit is refused, and a's
    // lease stays out.
    let id = lb.lease_id.clone();
    for pos in "lease_".len()..id.len() {
        let mut forged = id.clone().into_bytes();
        forged[pos] = if forged[pos] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).unwrap();
        let e = c
            .release_concurrent(pb::ReleaseConcurrentRequest { lease_id: forged })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "digit {pos}");
    }
    assert!(
        !c.acquire_concurrent(acquire("a"))
            .await
            .unwrap()
            .into_inner()
            .acquired
    );
    assert!(
        c.release_concurrent(pb::ReleaseConcurrentRequest {
            lease_id: lb.lease_id
        })
        .await
        .unwrap()
        .into_inner()
        .released
    );

    let mut r = check(vec![key("a")], 1.0);
    r.reserve = true;
    let rsv = c.check_limits(r).await.unwrap().into_inner().reservation_id;
    let mut rec = record(vec![key("a")], 1.0);
    rec.reservation_id = format!("rsv_+{}", &rsv["rsv_".len() + 1..]);
    let e = c.record_usage(rec).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("reservation_id:"),
        "{}",
        e.message()
    );
}

/// Regression: settling a reservation with other subjects charged twice
/// and left the original hold for its whole TTL.
#[tokio::test]
async fn a_reservation_is_settled_with_its_own_subjects_only() {
    let d = Limitsd::start(
        r#"
limits:
  budgets:
    by_api_key:
      k: { daily: 100 }
    by_team:
      t: { daily: 100 }
"#,
    );
    let mut c = d.client().await;
    let mut r = check(vec![key("k"), team("t")], 5.0);
    r.reserve = true;
    let rsv = c.check_limits(r).await.unwrap().into_inner().reservation_id;
    for other in [
        vec![key("k")],
        vec![team("t")],
        vec![key("k"), team("other")],
        vec![key("k"), team("t"), user("u")],
    ] {
        let mut rec = record(other, 1.0);
        rec.reservation_id = rsv.clone();
        let e = c.record_usage(rec).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("subjects:"), "{}", e.message());
    }
    // Nothing moved: the $5 is still held on both, nothing charged.
    for s in [key("k"), team("t")] {
        let u = c.get_usage(usage_req(s)).await.unwrap().into_inner();
        assert_eq!(used(&u, pb::LimitKind::BudgetDaily), 5.0);
        assert_eq!(u.reservations.len(), 1);
        assert_eq!(u.reservations[0].reservation_id, rsv);
    }
    // The same subjects, in another order, settle it once.
    let mut rec = record(vec![team("t"), key("k")], 1.0);
    rec.reservation_id = rsv.clone();
    let out = c.record_usage(rec).await.unwrap().into_inner();
    assert!(!out.duplicate);
    for s in [key("k"), team("t")] {
        let u = c.get_usage(usage_req(s)).await.unwrap().into_inner();
        assert_eq!(used(&u, pb::LimitKind::BudgetDaily), 1.0);
        assert!(u.reservations.is_empty());
    }
}

/// Regression: `grpc-timeout: 18446744073709551615S` panicked the handler
/// (an `Instant` overflow) and the stream was reset instead of answered.
#[tokio::test]
async fn a_huge_grpc_timeout_is_answered() {
    let d = Limitsd::start(
        r#"
limits:
  enforcement:
    action: queue
  budgets:
    by_api_key:
      k: { daily: 1 }
"#,
    );
    let mut c = d.client().await;
    for timeout in ["18446744073709551615S", "99999999H", "+1S", "1x"] {
        let mut req = tonic::Request::new(check(vec![key("k")], 0.5));
        req.metadata_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
        let out = c.check_limits(req).await.expect(timeout).into_inner();
        assert!(out.allowed, "{timeout}");
    }
    // The process is still there and answering.
    assert!(d_alive(&d).await);
}

async fn d_alive(d: &Limitsd) -> bool {
    let mut c = d.client().await;
    c.get_usage(usage_req(key("k"))).await.is_ok()
}

/// No raw API key is written to the sled database, not even in sled's log;
/// and a store an earlier version wrote with raw keys is rewritten on open,
/// keeping its state.
#[tokio::test]
async fn no_raw_api_key_is_at_rest() {
    const KEY: &str = "sk-live-a-key-that-must-not-be-on-disk-4711";
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("limits.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
limits:
  budgets:
    by_api_key:
      "{KEY}": {{ daily: 100 }}
  rate_limits:
    by_api_key:
      "{KEY}": {{ max_concurrent: 2 }}
  storage:
    backend: sled
    sled:
      path: ./store
"#
        ),
    )
    .unwrap();
    {
        let mut d = Limitsd::start_in(work.path(), &config);
        let mut c = d.client().await;
        c.record_usage(record(vec![key(KEY)], 2.0)).await.unwrap();
        let mut r = check(vec![key(KEY)], 1.0);
        r.reserve = true;
        c.check_limits(r).await.unwrap();
        c.acquire_concurrent(pb::AcquireConcurrentRequest {
            subjects: vec![key(KEY)],
            ttl: None,
        })
        .await
        .unwrap();
        d.signal("TERM");
        assert!(d.wait_exit().success());
    }
    assert_not_on_disk(&work.path().join("store"), KEY);
    let d = Limitsd::start_in(work.path(), &config);
    assert_eq!(
        d.client()
            .await
            .get_usage(usage_req(key(KEY)))
            .await
            .unwrap()
            .into_inner()
            .statuses
            .iter()
            .find(|s| s.kind == pb::LimitKind::BudgetDaily as i32)
            .unwrap()
            .used,
        3.0
    );
}

/// Panics if `needle` appears in any file under `dir`.
pub fn assert_not_on_disk(dir: &Path, needle: &str) {
    let mut stack = vec![dir.to_owned()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files += 1;
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{} holds the raw key",
                    p.display()
                );
            }
        }
    }
    assert!(files > 0, "nothing under {}", dir.display());
}

/// What a raw HTTP/2 call got back: the HTTP status, and `grpc-status` and
/// `grpc-message` (from the headers or the trailers).
#[derive(Debug)]
struct Raw {
    http: u16,
    code: Option<i32>,
    message: String,
}

/// One HTTP/2 request with any content type and body, for what a
/// well-behaved client cannot send.
async fn raw_call(
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Raw {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(req, false).unwrap();
    // Send in pieces, as flow control allows; a refusal may come first.
    let mut rest = bytes::Bytes::from(body);
    while !rest.is_empty() {
        send.reserve_capacity(rest.len().min(16 * 1024));
        let cap = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) if n > 0 => n,
            _ => break,
        };
        let chunk = rest.split_to(cap.min(rest.len()));
        if send.send_data(chunk, false).is_err() {
            break;
        }
    }
    let _ = send.send_data(bytes::Bytes::new(), true);
    let response = response.await.unwrap();
    let http = response.status().as_u16();
    let header = |h: &http::HeaderMap, name: &str| {
        h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    };
    let mut code = header(response.headers(), "grpc-status").and_then(|c| c.parse().ok());
    let mut message = header(response.headers(), "grpc-message").unwrap_or_default();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        if chunk.is_err() {
            break;
        }
    }
    if code.is_none()
        && let Ok(Some(trailers)) = body.trailers().await
    {
        code = header(&trailers, "grpc-status").and_then(|c| c.parse().ok());
        message = header(&trailers, "grpc-message").unwrap_or_default();
    }
    Raw {
        http,
        code,
        message,
    }
}

/// A gRPC frame around a message.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&(message.len() as u32).to_be_bytes());
    v.extend_from_slice(message);
    v
}

fn check_bytes(id: &[u8], padding: usize) -> Vec<u8> {
    // CheckLimitsRequest { subjects: [Subject { dimension: API_KEY, id }],
    // field 99 (unknown): padding }.
    let mut subject = vec![0x08, 0x01, 0x12];
    subject.push(id.len() as u8);
    subject.extend_from_slice(id);
    let mut m = vec![0x0a, subject.len() as u8];
    m.extend_from_slice(&subject);
    if padding > 0 {
        m.extend_from_slice(&[0x9a, 0x06]); // field 99, length-delimited
        let mut n = padding;
        while n >= 0x80 {
            m.push((n as u8) | 0x80);
            n >>= 7;
        }
        m.push(n as u8);
        m.extend(std::iter::repeat_n(b'x', padding));
    }
    m
}

const CHECK: &str = "/mercator.limits.v1.LimitsService/CheckLimits";

/// Regressions: a 3.9 MiB request (under tonic's 4 MiB default) was read
/// whole, so a few hundred of them took the pod past its memory limit; an
/// oversize one answered OUT_OF_RANGE; a JSON content type and a unary
/// call carrying two messages were accepted; an id that is not UTF-8
/// answered INTERNAL.
#[tokio::test]
async fn requests_of_the_wrong_size_or_shape_are_refused_clearly() {
    let d = Limitsd::start("limits:\n  server:\n    max_request_bytes: 4KiB\n");
    let ok = raw_call(
        d.addr,
        CHECK,
        "application/grpc",
        framed(&check_bytes(b"k", 10)),
    )
    .await;
    assert_eq!((ok.http, ok.code), (200, Some(0)), "{ok:?}");

    let big = raw_call(
        d.addr,
        CHECK,
        "application/grpc",
        framed(&check_bytes(b"k", 5000)),
    )
    .await;
    assert_eq!(big.code, Some(Code::ResourceExhausted as i32), "{big:?}");
    assert!(big.message.contains("max_request_bytes"), "{big:?}");
    // The 3.9 MiB of the attack, with the default limit of 64 KiB.
    let d2 = Limitsd::start("limits: {}\n");
    let huge = raw_call(
        d2.addr,
        CHECK,
        "application/grpc",
        framed(&check_bytes(b"k", 3_900_000)),
    )
    .await;
    assert_eq!(huge.code, Some(Code::ResourceExhausted as i32), "{huge:?}");

    let json = raw_call(d.addr, CHECK, "application/json", b"{}".to_vec()).await;
    assert_eq!(json.http, 415, "{json:?}");

    let two = [framed(&check_bytes(b"k", 0)), framed(&check_bytes(b"k", 0))].concat();
    let two = raw_call(d.addr, CHECK, "application/grpc", two).await;
    assert_eq!(two.code, Some(Code::InvalidArgument as i32), "{two:?}");

    let utf8 = raw_call(
        d.addr,
        CHECK,
        "application/grpc",
        framed(&check_bytes(b"\xff\xfe", 0)),
    )
    .await;
    assert_eq!(utf8.code, Some(Code::InvalidArgument as i32), "{utf8:?}");
    assert!(utf8.message.starts_with("subjects.id"), "{utf8:?}");

    // The server is still there, and the refusals are counted.
    let again = raw_call(
        d.addr,
        CHECK,
        "application/grpc",
        framed(&check_bytes(b"k", 10)),
    )
    .await;
    assert_eq!(again.code, Some(0));
    let scrape = d.scrape();
    assert!(
        scrape.contains("mercator_limits_shed_total{reason=\"message_size\"}"),
        "{scrape}"
    );
}

/// Past `max_in_flight` calls in progress, one more is shed at once with
/// UNAVAILABLE (here the calls in progress wait in the enforcement queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_max_in_flight_are_shed_at_once() {
    let d = Limitsd::start(
        r#"
limits:
  server:
    max_in_flight: 2
  enforcement:
    action: queue
    queue_timeout: 2m
  rate_limits:
    by_api_key:
      k: { requests_per_minute: 1 }
"#,
    );
    let mut c = d.client().await;
    assert!(
        c.check_limits(check(vec![key("k")], 0.0))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    // Two calls wait in the queue for the minute to pass: both slots taken.
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { c.check_limits(check(vec![key("k")], 0.0)).await })
        })
        .collect();
    // Both waiting (a probe sent earlier could take a slot and shed one
    // of them instead).
    eventually("two calls in the queue", || async {
        d.scrape()
            .lines()
            .any(|l| l == "mercator_limits_queue_depth 2")
            .then_some(())
    })
    .await;
    let code = eventually("a call past the limit to be shed", || {
        let mut c = c.clone();
        async move {
            match c.get_usage(usage_req(key("k"))).await {
                Err(e) if e.code() == Code::Unavailable => Some(e),
                _ => None,
            }
        }
    })
    .await;
    assert!(code.message().contains("max_in_flight"), "{code:?}");
    for w in waiting {
        w.abort();
    }
}

/// Regression: connections held open on /metrics made its accept loop spin
/// at about half a core. Now they wait, and scrapes are still answered.
#[tokio::test]
async fn held_metrics_connections_neither_spin_nor_block_scrapes() {
    let d = Limitsd::start("limits: {}\n");
    let held: Vec<_> = (0..32)
        .map(|_| std::net::TcpStream::connect(d.metrics_addr).unwrap())
        .collect();
    let cpu = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    };
    let before = cpu(d.child.id());
    let started = std::time::Instant::now();
    // A measurement window, not a synchronisation: what the process burns
    // while 32 connections sit idle.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let used = cpu(d.child.id()) - before;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        used < 0.25 * elapsed,
        "{used:.2}s of CPU in {elapsed:.1}s while idle"
    );
    assert!(d.scrape().contains("mercator_limits"));
    drop(held);
}
