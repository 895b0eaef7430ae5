//! What only the durable backend promises: state survives a restart, windows
//! keep rolling across it, ids issued before it are still recognised, a
//! second process is locked out, unreadable data fails the open, and
//! concurrent writers share their flushes.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use limits_core::{Dimension, LimitKind, LimitTable, Nanos};
use limits_store::{OpenError, SledOptions, SledStore, Store, StoreError};

use common::{Req, T0, at, key, limits, open_sled, team, usd, used, user};

const ROOMY: usize = 1_000;

/// The store directory `open_sled` uses under a test's temporary directory.
fn store_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("store")
}

#[tokio::test]
async fn spend_reservations_and_leases_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let l = limits(&[
        (LimitKind::BudgetDaily, usd(10)),
        (LimitKind::TokensPerHour, 1_000),
        (LimitKind::MaxConcurrent, 1),
    ]);
    let (k, t) = (key("k"), team("t"));
    let r = Req::new(&[(k.clone(), &l), (t.clone(), &l)]);
    let daily = LimitKind::BudgetDaily;

    let (hold, settled, lease) = {
        let store = open_sled(dir.path(), ROOMY, T0);
        r.record(&store, None, usd(3), 100, T0).await.unwrap();
        let ttl = Some(Nanos::HOUR);
        let hold = r.check(&store, usd(2), 10, ttl, T0).await.unwrap();
        let settled = r.check(&store, usd(1), 0, ttl, T0).await.unwrap();
        let settled = settled.reservation().unwrap();
        r.record(&store, Some(settled), usd(1), 0, T0)
            .await
            .unwrap();
        let (_, lease) = r.acquire(&store, Nanos::HOUR, T0).await.unwrap();
        (hold.reservation().unwrap(), settled, lease.unwrap().0)
    };

    let store = open_sled(dir.path(), ROOMY, at(60));
    assert_eq!(store.len(), 2);
    let now = at(60);
    for s in [&k, &t] {
        assert_eq!(
            used(&store, s, &l, daily, now).await,
            usd(6),
            "spend 3 + 1 and 2 held"
        );
        assert_eq!(
            used(&store, s, &l, LimitKind::TokensPerHour, now).await,
            110
        );
        let view = store.usage(s, &l, now).await.unwrap();
        assert_eq!(view.holds.iter().map(|h| h.id).collect::<Vec<_>>(), [hold]);
        assert_eq!(
            view.leases.iter().map(|l| l.id).collect::<Vec<_>>(),
            [lease]
        );
    }
    // The lease still takes the only slot.
    assert!(
        !r.acquire(&store, Nanos::HOUR, now)
            .await
            .unwrap()
            .0
            .acquired()
    );
    // The settled reservation is remembered: a retried record charges once.
    let again = r
        .record(&store, Some(settled), usd(1), 0, now)
        .await
        .unwrap();
    assert!(again.duplicate);
    // The open one settles against its hold.
    let rec = r.record(&store, Some(hold), usd(1), 0, now).await.unwrap();
    assert!(!rec.duplicate);
    assert_eq!(used(&store, &k, &l, daily, now).await, usd(5));
    assert_eq!(store.release(lease, now).await, Ok(true));
    assert_eq!(store.release(lease, now).await, Ok(false));
    assert!(
        r.acquire(&store, Nanos::HOUR, now)
            .await
            .unwrap()
            .0
            .acquired()
    );
}

#[tokio::test]
async fn windows_keep_rolling_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let l = limits(&[
        (LimitKind::BudgetHourly, usd(10)),
        (LimitKind::BudgetDaily, usd(100)),
        (LimitKind::MaxConcurrent, 1),
    ]);
    let r = Req::new(&[(key("k"), &l)]);
    let (hold, lease) = {
        let store = open_sled(dir.path(), ROOMY, T0);
        r.record(&store, None, usd(10), 0, T0).await.unwrap();
        let ttl = Some(Nanos::from_secs(60));
        let hold = r.check(&store, 0, 0, ttl, T0).await.unwrap();
        assert!(!hold.allowed(), "the hourly budget is spent");
        let (_, lease) = r.acquire(&store, Nanos::from_secs(60), T0).await.unwrap();
        (hold.reservation(), lease.unwrap().0)
    };
    assert_eq!(hold, None);

    // Down for two hours: the hourly spend and the lease have expired, the
    // daily spend has not.
    let now = at(2 * 3_600);
    let store = open_sled(dir.path(), ROOMY, now);
    let k = key("k");
    assert_eq!(used(&store, &k, &l, LimitKind::BudgetHourly, now).await, 0);
    assert_eq!(
        used(&store, &k, &l, LimitKind::BudgetDaily, now).await,
        usd(10)
    );
    assert!(store.usage(&k, &l, now).await.unwrap().leases.is_empty());
    assert_eq!(store.release(lease, now).await, Ok(false));
    drop(store);

    // Past the day as well: nothing is left, not even the subject.
    let store = open_sled(dir.path(), ROOMY, at(2 * 86_400));
    assert!(store.is_empty());
}

#[tokio::test]
async fn ids_issued_before_a_restart_are_still_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let budget = limits(&[(LimitKind::BudgetDaily, usd(10))]);
    let concurrency = limits(&[(LimitKind::MaxConcurrent, 100)]);
    let r = Req::new(&[(key("k"), &budget)]);
    let lr = Req::new(&[(user("u"), &concurrency)]);
    let (first, last, released, expired) = {
        let store = open_sled(dir.path(), ROOMY, T0);
        let first = r
            .check(&store, usd(1), 0, Some(Nanos::MINUTE), T0)
            .await
            .unwrap()
            .reservation()
            .unwrap();
        // Denied reserved checks still consume ids: run through more than
        // one persisted block of them without waiting for any flush.
        for _ in 0..(limits_store::sled::ID_BLOCK + 500) {
            let c = r
                .check(&store, usd(20), 0, Some(Nanos::MINUTE), T0)
                .await
                .unwrap();
            assert!(!c.allowed());
        }
        let last = r
            .check(&store, usd(1), 0, Some(Nanos::MINUTE), T0)
            .await
            .unwrap()
            .reservation()
            .unwrap();
        let (_, released) = lr.acquire(&store, Nanos::MINUTE, T0).await.unwrap();
        let released = released.unwrap().0;
        assert_eq!(store.release(released, T0).await, Ok(true));
        let (_, expired) = lr.acquire(&store, Nanos::from_secs(1), T0).await.unwrap();
        (first, last, released, expired.unwrap().0)
    };

    let store = open_sled(dir.path(), ROOMY, at(3_600));
    for id in [first, last] {
        // Still recognised as issued; its hold expired while the store was
        // down, so it charges as usage.
        r.record(&store, Some(id), usd(1), 0, at(3_600))
            .await
            .unwrap();
    }
    assert_eq!(
        r.record(&store, Some(last + 1_000_000), usd(1), 0, at(3_600))
            .await,
        Err(StoreError::UnknownReservation),
        "far past anything issued"
    );
    assert_eq!(store.release(released, at(3_600)).await, Ok(false));
    assert_eq!(store.release(expired, at(3_600)).await, Ok(false));
    assert_eq!(
        store.release(0x77, at(3_600)).await,
        Err(StoreError::UnknownLease)
    );
    // New ids do not collide with the old ones.
    let (_, next) = lr.acquire(&store, Nanos::MINUTE, at(3_600)).await.unwrap();
    let next = next.unwrap().0;
    assert!(next != released && next != expired);
    assert_eq!(store.release(next, at(3_600)).await, Ok(true));
}

#[tokio::test]
async fn short_request_windows_restart_and_the_hourly_one_persists() {
    let dir = tempfile::tempdir().unwrap();
    let short = limits(&[
        (LimitKind::RequestsPerSecond, 1),
        (LimitKind::RequestsPerMinute, 1),
    ]);
    let hourly = limits(&[(LimitKind::RequestsPerHour, 1)]);
    let rs = Req::new(&[(key("short"), &short)]);
    let rh = Req::new(&[(key("hourly"), &hourly)]);
    {
        let store = open_sled(dir.path(), ROOMY, T0);
        let before = store.flushes();
        for r in [&rs, &rh] {
            assert!(r.check(&store, 0, 0, None, T0).await.unwrap().allowed());
            assert!(!r.check(&store, 0, 0, None, T0).await.unwrap().allowed());
        }
        // Unreserved checks never wait for a flush; at most the hourly
        // window's write is flushed in the background.
        assert!(store.flushes() <= before + 1);
    }
    let store = open_sled(dir.path(), ROOMY, at(1));
    assert!(
        rs.check(&store, 0, 0, None, at(1)).await.unwrap().allowed(),
        "per-second and per-minute counts are not kept"
    );
    assert!(
        !rh.check(&store, 0, 0, None, at(1)).await.unwrap().allowed(),
        "the hourly count is"
    );
}

#[tokio::test]
async fn unreserved_checks_of_short_windows_never_touch_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_sled(dir.path(), ROOMY, T0);
    let l = limits(&[(LimitKind::RequestsPerSecond, 1_000)]);
    let r = Req::new(&[(key("k"), &l), (user("u"), &l), (team("t"), &l)]);
    store.flush().await.unwrap();
    let before = store.flushes();
    for _ in 0..200 {
        assert!(r.check(&store, 0, 0, None, T0).await.unwrap().allowed());
    }
    // Give a (wrongly) woken flusher time to show up in the count.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.flushes(), before);
}

#[tokio::test]
async fn sweep_deletes_dropped_subjects_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let l = limits(&[(LimitKind::BudgetHourly, usd(10))]);
    let r = Req::new(&[(key("k"), &l)]);
    {
        let store = open_sled(dir.path(), ROOMY, T0);
        r.record(&store, None, usd(5), 0, T0).await.unwrap();
        let mut table = LimitTable::new();
        table.insert(Dimension::ApiKey, "k", l.clone());
        let swept = store.sweep(&table, at(2 * 3_600)).await.unwrap();
        assert_eq!(swept.dropped, 1);
    }
    // Reopened with an earlier clock, a key left behind would bring the
    // spend back.
    let store = open_sled(dir.path(), ROOMY, T0);
    assert!(store.is_empty());
    assert_eq!(
        used(&store, &key("k"), &l, LimitKind::BudgetHourly, T0).await,
        0
    );
}

#[tokio::test]
async fn a_second_open_of_the_same_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = open_sled(dir.path(), ROOMY, T0);
    let path = store_dir(dir.path());
    let err = SledStore::open(&path, SledOptions::default(), T0).unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("store at {} is locked by another process", path.display())
    );
    drop(first);
    SledStore::open(&path, SledOptions::default(), T0).expect("free once closed");
}

/// Opens a store's sled database directly, as a tampering tool would. A
/// dropped store's sled threads release the file lock a moment later: wait
/// for it, with a deadline.
fn open_raw(path: &std::path::Path) -> sled::Db {
    let started = std::time::Instant::now();
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(e) if started.elapsed() < std::time::Duration::from_secs(10) => {
                assert!(e.to_string().contains("could not acquire lock"), "{e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("the store stayed locked: {e}"),
        }
    }
}

/// Makes a store with one subject, then lets `tamper` edit its sled tree
/// directly, and returns what reopening says.
async fn reopen_after(tamper: impl FnOnce(&sled::Tree)) -> (std::path::PathBuf, OpenError) {
    let dir = tempfile::tempdir().unwrap();
    let path = store_dir(dir.path());
    {
        let store = open_sled(dir.path(), ROOMY, T0);
        let l = limits(&[(LimitKind::BudgetDaily, usd(10))]);
        Req::new(&[(key("k"), &l)])
            .record(&store, None, usd(1), 0, T0)
            .await
            .unwrap();
    }
    {
        let db = open_raw(&path);
        tamper(&db.open_tree("limits").unwrap());
        db.flush().unwrap();
    }
    let err = SledStore::open(&path, SledOptions::default(), T0).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "the error names the path: {err}"
    );
    // A failed open changes nothing: it fails the same way again.
    let again = SledStore::open(&path, SledOptions::default(), T0).unwrap_err();
    assert_eq!(again.to_string(), err.to_string());
    (path, err)
}

#[tokio::test]
async fn a_garbage_value_fails_the_open() {
    let (_, err) = reopen_after(|tree| {
        tree.insert(b"s1/\x00k", &[1, 0xff, 0xff][..]).unwrap();
    })
    .await;
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err:?}");
}

#[tokio::test]
async fn an_unknown_value_version_fails_the_open() {
    let (_, err) = reopen_after(|tree| {
        // The one API-key subject, stored under its keyed hash.
        let (k, v) = tree.scan_prefix(b"s1/\x00").next().unwrap().unwrap();
        let mut v = v.to_vec();
        v[0] = 99;
        tree.insert(k, v).unwrap();
    })
    .await;
    assert!(
        matches!(err, OpenError::UnsupportedVersion { found: 99, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unknown_store_format_fails_the_open() {
    let (_, err) = reopen_after(|tree| {
        tree.insert(b"format", &[3][..]).unwrap();
    })
    .await;
    assert!(
        matches!(err, OpenError::UnsupportedVersion { found: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("format version 3"));
}

#[tokio::test]
async fn an_unexpected_key_fails_the_open() {
    let (_, err) = reopen_after(|tree| {
        tree.insert(b"s9/whatever", &[1][..]).unwrap();
    })
    .await;
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err:?}");
}

#[tokio::test]
async fn damaged_sled_files_fail_the_open_instead_of_starting_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_dir(dir.path());
    drop(open_sled(dir.path(), ROOMY, T0));

    // Truncated to nothing, sled itself would start over empty.
    let db = std::fs::OpenOptions::new()
        .write(true)
        .open(path.join("db"))
        .unwrap();
    db.set_len(0).unwrap();
    drop(db);
    let err = SledStore::open(&path, SledOptions::default(), T0).unwrap_err();
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));

    std::fs::write(path.join("db"), vec![0xab; 100_000]).unwrap();
    let err = SledStore::open(&path, SledOptions::default(), T0).unwrap_err();
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[tokio::test]
async fn an_uncreatable_directory_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let path = file.join("store");
    let err = SledStore::open(&path, SledOptions::default(), T0).unwrap_err();
    assert!(matches!(err, OpenError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_share_flushes() {
    const TASKS: u64 = 32;
    const EACH: u64 = 25;
    let dir = tempfile::tempdir().unwrap();
    let path = store_dir(dir.path());
    let options = SledOptions {
        max_entries: ROOMY,
        snapshot_interval: Duration::from_millis(10),
        ..SledOptions::default()
    };
    let store = Arc::new(SledStore::open(&path, options.clone(), T0).unwrap());
    let l = Arc::new(limits(&[(LimitKind::BudgetMonthly, usd(1_000_000))]));
    let before = store.flushes();

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, l) = (Arc::clone(&store), Arc::clone(&l));
        tasks.push(tokio::spawn(async move {
            // Each task writes its own key and the shared team.
            let r = Req::new(&[(key(&format!("k{task}")), &*l), (team("shared"), &*l)]);
            for _ in 0..EACH {
                r.record(&*store, None, 1, 0, T0).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let writes = TASKS * EACH;
    let flushes = store.flushes() - before;
    eprintln!("{writes} acknowledged writes shared {flushes} flushes");
    assert!(
        flushes * 4 <= writes,
        "{flushes} flushes for {writes} acknowledged writes"
    );
    assert_eq!(store.write_errors(), 0);
    let monthly = LimitKind::BudgetMonthly;
    assert_eq!(
        used(&*store, &team("shared"), &l, monthly, T0).await,
        writes
    );

    // Every acknowledged write is on disk.
    drop(store);
    let store = SledStore::open(&path, options, T0).unwrap();
    assert_eq!(used(&store, &team("shared"), &l, monthly, T0).await, writes);
    assert_eq!(used(&store, &key("k7"), &l, monthly, T0).await, EACH);
}

#[tokio::test]
async fn api_keys_never_reach_debug_output_or_open_errors() {
    const SECRET: &str = "sk-live-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let path = store_dir(dir.path());
    let l = limits(&[
        (LimitKind::BudgetDaily, usd(10)),
        (LimitKind::MaxConcurrent, 2),
    ]);
    let r = Req::new(&[(key(SECRET), &l)]);
    let memory = limits_store::MemoryStore::new(ROOMY);
    r.record(&memory, None, usd(1), 0, T0).await.unwrap();
    r.acquire(&memory, Nanos::MINUTE, T0).await.unwrap();
    assert!(!format!("{memory:?}").contains(SECRET));
    {
        let store = open_sled(dir.path(), ROOMY, T0);
        r.record(&store, None, usd(1), 0, T0).await.unwrap();
        r.acquire(&store, Nanos::MINUTE, T0).await.unwrap();
        assert!(!format!("{store:?}").contains(SECRET));
    }
    {
        let db = open_raw(&path);
        let tree = db.open_tree("limits").unwrap();
        let mut k = b"s1/\x00".to_vec();
        k.extend_from_slice(SECRET.as_bytes());
        tree.insert(k, &[1, 0xff][..]).unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(&path, SledOptions::default(), T0).unwrap_err();
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err:?}");
    assert!(!err.to_string().contains(SECRET), "{err}");
    assert!(err.to_string().contains("api_key subject"), "{err}");
}

/// A write the disk refuses (here a flush failing as a full disk would)
/// reaches the caller as `Unavailable`, never as a silent success, is
/// counted, and leaves no trace in memory; the store refuses writes while
/// it cannot write and recovers by itself once the disk takes writes again.
/// (The real full disk is tested on a small filesystem by limitsd's
/// end-to-end tests.)
#[tokio::test]
async fn a_failed_flush_is_unavailable_not_a_silent_success() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_sled(dir.path(), ROOMY, T0);
    let l = limits(&[
        (LimitKind::BudgetDaily, usd(10)),
        (LimitKind::MaxConcurrent, 1),
    ]);
    let r = Req::new(&[(key("k"), &l), (team("t"), &l)]);
    r.record(&store, None, usd(1), 0, T0).await.unwrap();
    let held = r
        .check(&store, usd(2), 0, Some(Nanos::HOUR), T0)
        .await
        .unwrap();
    let hold = held.reservation().unwrap();
    let (_, lease) = r.acquire(&store, Nanos::HOUR, T0).await.unwrap();
    let lease = lease.unwrap().0;

    store.fail_flushes(true);
    let err = r
        .record(&store, Some(hold), usd(1), 0, T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(store.write_errors() >= 1);
    assert!(matches!(
        store.health(),
        limits_store::Health::Unwritable {
            reason: "no_space",
            ..
        }
    ));
    // Every retry is refused at once, and none is charged.
    for _ in 0..5 {
        assert!(r.record(&store, Some(hold), usd(1), 0, T0).await.is_err());
        assert!(r.record(&store, None, usd(1), 0, T0).await.is_err());
        assert!(store.release(lease, T0).await.is_err());
    }
    for s in [key("k"), team("t")] {
        assert_eq!(
            used(&store, &s, &l, LimitKind::BudgetDaily, T0).await,
            usd(3),
            "$1 spent and the $2 hold, nothing of the refused calls"
        );
        let view = store.usage(&s, &l, T0).await.unwrap();
        assert_eq!(view.holds.len(), 1, "the hold is still open");
        assert_eq!(view.leases.len(), 1, "the lease is still out");
    }

    store.fail_flushes(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.health() != limits_store::Health::Writable {
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not recover"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(store.recoveries() >= 1);
    // The retry now settles the reservation once, and the lease goes.
    let out = r.record(&store, Some(hold), usd(1), 0, T0).await.unwrap();
    assert!(!out.duplicate);
    assert!(store.release(lease, T0).await.unwrap());
    assert_eq!(
        used(&store, &key("k"), &l, LimitKind::BudgetDaily, T0).await,
        usd(2)
    );
    drop(store);
    // And that is what is on disk.
    let store = open_sled(dir.path(), ROOMY, T0);
    assert_eq!(
        used(&store, &key("k"), &l, LimitKind::BudgetDaily, T0).await,
        usd(2)
    );
    assert!(
        store
            .usage(&key("k"), &l, T0)
            .await
            .unwrap()
            .leases
            .is_empty()
    );
}

/// An API key that must never be found at rest.
const RAW_KEY: &str = "sk-live-raw-key-written-by-format-1-0815";

/// Panics if `needle` appears in any file under `dir`.
fn assert_not_on_disk(dir: &Path, needle: &str) {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{} holds the raw key",
                    p.display()
                );
            }
        }
    }
}

/// A store written by a version that kept API keys raw (format 1) still
/// loads, keyed by hash now, and no raw key is left in any file.
#[tokio::test]
async fn a_format_1_store_with_raw_keys_is_rewritten_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let l = limits(&[
        (LimitKind::BudgetDaily, usd(10)),
        (LimitKind::MaxConcurrent, 2),
    ]);
    // A state value as any version writes it: spend and a lease, made on a
    // team subject (stored as it is) of a scratch store.
    let (state, lease_id) = {
        let scratch = dir.path().join("scratch");
        let store = SledStore::open(&scratch, SledOptions::default(), T0).unwrap();
        let r = Req::new(&[(team("t"), &l)]);
        r.record(&store, None, usd(3), 0, T0).await.unwrap();
        let (_, lease) = r.acquire(&store, Nanos::HOUR, T0).await.unwrap();
        drop(store);
        let db = open_raw(&scratch);
        let tree = db.open_tree("limits").unwrap();
        let state = tree.get(b"s1/\x02t").unwrap().unwrap().to_vec();
        (state, lease.unwrap().0)
    };
    let path = dir.path().join("old");
    {
        let db = open_raw(&path);
        let tree = db.open_tree("limits").unwrap();
        tree.insert(b"format", &[1][..]).unwrap();
        let mut k = b"s1/\x00".to_vec();
        k.extend_from_slice(RAW_KEY.as_bytes());
        tree.insert(k, state).unwrap();
        // The lease index entry, in the version-1 encoding: expiry, then
        // the subjects.
        let mut v = vec![1];
        v.extend_from_slice(&at(3600).0.to_le_bytes());
        v.push(1);
        v.push(0);
        v.push(RAW_KEY.len() as u8);
        v.extend_from_slice(RAW_KEY.as_bytes());
        let mut lk = b"l1/".to_vec();
        lk.extend_from_slice(&lease_id.to_be_bytes());
        tree.insert(lk, v).unwrap();
        db.flush().unwrap();
    }

    let store = SledStore::open(&path, SledOptions::default(), at(1)).unwrap();
    let k = key(RAW_KEY);
    assert_eq!(
        used(&store, &k, &l, LimitKind::BudgetDaily, at(1)).await,
        usd(3)
    );
    let view = store.usage(&k, &l, at(1)).await.unwrap();
    assert_eq!(view.leases.len(), 1, "the lease came along");
    // The lease index names the hashed key: releasing frees the slot.
    assert!(store.release(lease_id, at(1)).await.unwrap());
    assert!(store.usage(&k, &l, at(1)).await.unwrap().leases.is_empty());
    drop(store);
    assert_not_on_disk(&path, RAW_KEY);
    assert!(!dir.path().join("old.raw-keys").exists());
    assert!(!dir.path().join("old.rewritten").exists());
    // And it opens as format 2 from now on.
    let store = SledStore::open(&path, SledOptions::default(), at(2)).unwrap();
    assert_eq!(
        used(&store, &k, &l, LimitKind::BudgetDaily, at(2)).await,
        usd(3)
    );
}

/// A store keeps the fingerprint of the secret its API keys are hashed
/// with: another secret, or none where one was configured, fails the open
/// instead of silently starting every API key afresh.
#[tokio::test]
async fn a_store_opens_only_with_the_secret_it_was_written_with() {
    let secret = |s: &str| Some(limits_store::Secret::new(s.as_bytes()).unwrap());
    let with = |s: Option<limits_store::Secret>| SledOptions {
        secret: s,
        ..SledOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let l = limits(&[(LimitKind::BudgetDaily, usd(10))]);
    let r = Req::new(&[(key("k"), &l)]);
    {
        let store = SledStore::open(&path, with(secret("first secret, long enough")), T0).unwrap();
        r.record(&store, None, usd(1), 0, T0).await.unwrap();
    }
    let err = SledStore::open(&path, with(secret("second secret, long enough")), T0).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::SecretMismatch {
                generated: false,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
    let err = SledStore::open(&path, with(None), T0).unwrap_err();
    assert!(matches!(err, OpenError::SecretMissing { .. }), "{err}");
    assert!(err.to_string().contains("security.secret"), "{err}");
    let store = SledStore::open(&path, with(secret("first secret, long enough")), T0).unwrap();
    assert_eq!(
        used(&store, &key("k"), &l, LimitKind::BudgetDaily, T0).await,
        usd(1)
    );
    drop(store);

    // A store that made its own secret keeps using it, and says so when
    // one is configured later.
    let own = dir.path().join("own");
    let made = {
        let store = SledStore::open(&own, with(None), T0).unwrap();
        r.record(&store, None, usd(2), 0, T0).await.unwrap();
        store.secret().await.unwrap()
    };
    let store = SledStore::open(&own, with(None), T0).unwrap();
    assert_eq!(store.secret().await.unwrap(), made);
    assert_eq!(
        used(&store, &key("k"), &l, LimitKind::BudgetDaily, T0).await,
        usd(2)
    );
    drop(store);
    let err = SledStore::open(&own, with(secret("configured later, long")), T0).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::SecretMismatch {
                generated: true,
                ..
            }
        ),
        "{err}"
    );
}

/// Regression: the rate limit service's counters (one per client address,
/// say) shared `max_entries` with gateway subjects, so a flood of them
/// locked every new API key out with RESOURCE_EXHAUSTED.
#[tokio::test]
async fn counters_and_subjects_have_their_own_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let bounds = limits_store::Bounds {
        subjects: 2,
        counters: 3,
    };
    let sled = SledStore::open(
        &dir.path().join("s"),
        SledOptions {
            max_entries: bounds.subjects,
            max_counters: bounds.counters,
            ..SledOptions::default()
        },
        T0,
    )
    .unwrap();
    let memory = limits_store::MemoryStore::with_options(bounds, None);
    let l = limits(&[(LimitKind::RequestsPerHour, 100)]);
    async fn run<S: Store>(store: &S, l: &limits_core::SubjectLimits) {
        let counter = |i: usize| {
            key(&format!(
                "{}rls\u{2}d\u{2}ip\u{3}10.0.0.{i}",
                limits_store::INTERNAL
            ))
        };
        for i in 0..3 {
            let r = Req::new(&[(counter(i), l)]);
            assert!(r.check(store, 0, 0, None, T0).await.unwrap().allowed());
        }
        let flood = Req::new(&[(counter(99), l)]);
        let err = flood.check(store, 0, 0, None, T0).await.unwrap_err();
        assert!(matches!(err, StoreError::CountersFull(3)), "{err:?}");
        // API keys still get in, up to their own bound.
        for k in ["a", "b"] {
            let r = Req::new(&[(key(k), l)]);
            assert!(r.check(store, 0, 0, None, T0).await.unwrap().allowed());
        }
        let err = Req::new(&[(key("c"), l)])
            .check(store, 0, 0, None, T0)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Full(2)), "{err:?}");
    }
    run(&memory, &l).await;
    run(&sled, &l).await;
}

#[tokio::test]
async fn admin_records_and_the_audit_trail_survive_a_restart_and_a_failed_flush() {
    use limits_core::Adjustment;
    use limits_store::{AdjustOp, RecordSwap, Swapped};

    let dir = tempfile::tempdir().unwrap();
    let l = limits(&[(LimitKind::BudgetDaily, usd(10))]);
    let store = open_sled(dir.path(), ROOMY, T0);
    let swap = |expect: Option<&'static [u8]>, new: Option<&'static [u8]>, audit: &'static [u8]| {
        RecordSwap {
            key: "team:t",
            expect,
            new,
            audit: Some(audit),
            audit_keep: 100,
        }
    };
    store
        .swap_record(swap(None, Some(b"v1"), b"created"))
        .await
        .unwrap();
    let stored = store.secret().await.unwrap().stored_subject(&key("k"));
    store
        .adjust(
            &stored,
            &l,
            AdjustOp {
                changes: &[(LimitKind::BudgetDaily, Adjustment::Debit(usd(2)))],
                audit: b"debited",
                audit_keep: 100,
            },
            T0,
        )
        .await
        .unwrap();

    // A change whose flush fails is refused and leaves nothing behind,
    // in memory or (after the store recovers by itself) on disk.
    store.fail_flushes(true);
    let err = store
        .swap_record(swap(Some(b"v1"), Some(b"v2"), b"refused"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = store
        .adjust(
            &stored,
            &l,
            AdjustOp {
                changes: &[(LimitKind::BudgetDaily, Adjustment::Debit(usd(5)))],
                audit: b"refused too",
                audit_keep: 100,
            },
            T0,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    store.fail_flushes(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.health() != limits_store::Health::Writable {
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not recover"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        store.records().await.unwrap().records,
        vec![("team:t".to_owned(), b"v1".to_vec())]
    );
    assert_eq!(
        used(&store, &key("k"), &l, LimitKind::BudgetDaily, T0).await,
        usd(2)
    );
    drop(store);

    let store = open_sled(dir.path(), ROOMY, T0);
    assert_eq!(
        store.records().await.unwrap().records,
        vec![("team:t".to_owned(), b"v1".to_vec())]
    );
    assert_eq!(
        used(&store, &key("k"), &l, LimitKind::BudgetDaily, T0).await,
        usd(2)
    );
    let events: Vec<Vec<u8>> = store
        .audit(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(events, vec![b"debited".to_vec(), b"created".to_vec()]);
    // Sequence numbers go on rising after the restart.
    assert!(matches!(
        store
            .swap_record(swap(Some(b"v1"), Some(b"v3"), b"after"))
            .await
            .unwrap(),
        Swapped::Done { .. }
    ));
    let audit = store.audit(None, 10).await.unwrap();
    assert!(audit[0].0 > audit[1].0);
    assert_eq!(audit[0].1, b"after".to_vec());
}
