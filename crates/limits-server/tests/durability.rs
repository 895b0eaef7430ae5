//! Durability of the sled store through the real binary: what was
//! acknowledged survives a clean restart and a SIGKILL, and a locked or
//! damaged store stops start-up with a clear error.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use limits_server::pb;

fn sled_config(dir: &std::path::Path) -> std::path::PathBuf {
    sled_config_for(dir, "crash-key", "1000000.00", 5)
}

/// A sled store in `dir/store` and one API key with a monthly budget and a
/// concurrency limit; returns the config file's path.
fn sled_config_for(
    dir: &std::path::Path,
    key: &str,
    monthly: &str,
    max_concurrent: u32,
) -> std::path::PathBuf {
    let config = dir.join("limits.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
limits:
  budgets:
    by_api_key:
      "{key}":
        monthly: {monthly}
  rate_limits:
    by_api_key:
      "{key}":
        max_concurrent: {max_concurrent}
  storage:
    backend: sled
    sled:
      path: ./store
"#
        ),
    )
    .unwrap();
    config
}

async fn monthly_used(d: &Limitsd) -> f64 {
    let mut c = d.client().await;
    let u = c
        .get_usage(usage_req(key("crash-key")))
        .await
        .unwrap()
        .into_inner();
    used(&u, pb::LimitKind::BudgetMonthly)
}

/// Cents as an exact count: every record below is one cent.
fn cents(usd: f64) -> u64 {
    (usd * 100.0).round() as u64
}

#[tokio::test]
async fn spend_reservations_and_leases_survive_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = sled_config(dir.path());
    let (reservation, lease) = {
        let mut d = Limitsd::start_in(dir.path(), &config);
        let mut c = d.client().await;
        c.record_usage(record(vec![key("crash-key")], 12.5))
            .await
            .unwrap();
        let mut req = check(vec![key("crash-key")], 3.0);
        req.reserve = true;
        let r = c.check_limits(req).await.unwrap().into_inner();
        assert!(r.allowed);
        let lease = c
            .acquire_concurrent(pb::AcquireConcurrentRequest {
                subjects: vec![key("crash-key")],
                ttl: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(lease.acquired);
        d.signal("TERM");
        assert!(d.wait_exit().success());
        (r.reservation_id, lease.lease_id)
    };

    let d = Limitsd::start_in(dir.path(), &config);
    let mut c = d.client().await;
    let u = c
        .get_usage(usage_req(key("crash-key")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        used(&u, pb::LimitKind::BudgetMonthly),
        15.5,
        "12.50 spent + 3.00 held"
    );
    assert_eq!(u.reservations.len(), 1);
    assert_eq!(u.reservations[0].reservation_id, reservation);
    assert_eq!(u.leases.len(), 1);
    assert_eq!(u.leases[0].lease_id, lease);
    // The reservation settles and the lease releases after the restart.
    let mut rec = record(vec![key("crash-key")], 2.0);
    rec.reservation_id = reservation;
    assert!(!c.record_usage(rec).await.unwrap().into_inner().duplicate);
    let released = c
        .release_concurrent(pb::ReleaseConcurrentRequest { lease_id: lease })
        .await
        .unwrap()
        .into_inner();
    assert!(released.released);
    assert_eq!(monthly_used(&d).await, 14.5);
}

/// Many concurrent RecordUsage calls, SIGKILL mid-stream, restart: the spend
/// is at least every acknowledged call, and at most those plus the calls in
/// flight at the kill (which may or may not have reached the disk).
#[tokio::test]
async fn acknowledged_usage_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = sled_config(dir.path());
    let mut d = Limitsd::start_in(dir.path(), &config);
    let channel = d.channel().await;

    const WRITERS: u64 = 8;
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let mut c = pb::limits_service_client::LimitsServiceClient::new(channel.clone());
        let (acked, failed, stop) = (acked.clone(), failed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            // Bounded: each writer sends at most 2000 calls.
            for _ in 0..2000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match c.record_usage(record(vec![key("crash-key")], 0.01)).await {
                    Ok(_) => acked.fetch_add(1, Ordering::SeqCst),
                    Err(_) => {
                        // The process is gone: this call was in flight.
                        failed.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                };
            }
        }));
    }
    eventually("some usage to be acknowledged", || async {
        (acked.load(Ordering::SeqCst) >= 300).then_some(())
    })
    .await;
    d.signal("KILL");
    let _ = d.wait_exit();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.load(Ordering::SeqCst);
    let in_flight = failed.load(Ordering::SeqCst);
    assert!(in_flight <= WRITERS);

    let d = Limitsd::start_in(dir.path(), &config);
    let recorded = cents(monthly_used(&d).await);
    assert!(
        recorded >= acked && recorded <= acked + in_flight,
        "after the kill: {recorded} cents on disk, {acked} acknowledged, {in_flight} in flight"
    );
}

#[tokio::test]
async fn a_second_limitsd_on_the_same_store_fails_saying_it_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let config = sled_config(dir.path());
    let _first = Limitsd::start_in(dir.path(), &config);
    let (status, stderr) = run_to_exit(dir.path(), &config);
    assert!(!status.success());
    assert!(stderr.contains("locked by another process"), "{stderr}");
}

#[tokio::test]
async fn a_damaged_store_fails_start_up_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = sled_config(dir.path());
    {
        let mut d = Limitsd::start_in(dir.path(), &config);
        let mut c = d.client().await;
        c.record_usage(record(vec![key("crash-key")], 1.0))
            .await
            .unwrap();
        d.signal("TERM");
        assert!(d.wait_exit().success());
    }
    // Overwrite sled's data file with garbage of the same size.
    let db = dir.path().join("store").join("db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    std::fs::write(&db, vec![0xA5u8; len.max(4096)]).unwrap();
    let (status, stderr) = run_to_exit(dir.path(), &config);
    assert!(!status.success(), "a damaged store must not start empty");
    assert!(stderr.contains("store"), "{stderr}");
}

/// Leases are answered before their flush, so a SIGKILL can lose the ones
/// taken since the last flush (their slots come back early) and bring back
/// the ones released since (held until their TTL), and no more: leases
/// taken before a flush survive, and no lease id is handed out twice. A
/// RecordUsage is answered once on disk, and everything written before it
/// is flushed with it, so it marks "the last flush" here.
#[tokio::test]
async fn a_sigkill_loses_at_most_the_leases_since_the_last_flush() {
    let dir = tempfile::tempdir().unwrap();
    let config = sled_config_for(dir.path(), "lease-key", "1000.00", 100);
    let acquire = |c: &mut pb::limits_service_client::LimitsServiceClient<_>| {
        let mut c = c.clone();
        async move {
            let r = c
                .acquire_concurrent(pb::AcquireConcurrentRequest {
                    subjects: vec![key("lease-key")],
                    ttl: Some(prost_types::Duration {
                        seconds: 600,
                        nanos: 0,
                    }),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(r.acquired);
            r.lease_id
        }
    };
    let mut d = Limitsd::start_in(dir.path(), &config);
    let mut c = d.client().await;
    let mut before = Vec::new();
    for _ in 0..20 {
        before.push(acquire(&mut c).await);
    }
    // Released before the flush: gone for good.
    for id in before.drain(..5) {
        let r = c
            .release_concurrent(pb::ReleaseConcurrentRequest { lease_id: id })
            .await
            .unwrap()
            .into_inner();
        assert!(r.released);
    }
    c.record_usage(record(vec![key("lease-key")], 0.01))
        .await
        .unwrap();
    // After the flush: 10 more taken, 5 of the first ones released.
    let mut after = Vec::new();
    for _ in 0..10 {
        after.push(acquire(&mut c).await);
    }
    let released_after: Vec<String> = before.drain(..5).collect();
    for id in &released_after {
        let r = c
            .release_concurrent(pb::ReleaseConcurrentRequest {
                lease_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.released);
    }
    d.signal("KILL");
    let _ = d.wait_exit();

    let d = Limitsd::start_in(dir.path(), &config);
    let mut c = d.client().await;
    let u = c
        .get_usage(usage_req(key("lease-key")))
        .await
        .unwrap()
        .into_inner();
    let live: std::collections::HashSet<String> =
        u.leases.iter().map(|l| l.lease_id.clone()).collect();
    for id in &before {
        assert!(live.contains(id), "a lease taken before the flush survives");
    }
    for id in &live {
        assert!(
            before.contains(id) || after.contains(id) || released_after.contains(id),
            "nothing but leases taken or released since the flush comes or goes"
        );
    }
    // 10 kept for sure; up to 10 taken and 5 released since may or may not
    // have reached the disk.
    assert!((10..=25).contains(&live.len()), "{} live", live.len());
    // A new lease never reuses an id handed out before the kill.
    for _ in 0..20 {
        let id = acquire(&mut c).await;
        assert!(
            !before.contains(&id) && !after.contains(&id) && !released_after.contains(&id),
            "lease id {id} handed out twice"
        );
    }
}
