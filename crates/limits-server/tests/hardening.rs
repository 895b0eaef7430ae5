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
