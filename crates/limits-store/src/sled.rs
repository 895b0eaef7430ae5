//! The durable backend: state hot in memory, every acknowledged change in a
//! sled log on disk before the caller hears of it.
//!
//! # Shape
//!
//! Decisions run exactly as in the memory backend — the same `Shards`
//! table and lease index (the shared `Embedded` body) — and sled is the
//! durable log beside it. Whenever an operation changes a subject, its
//! durable state is encoded (the private `codec` module documents keys and
//! values) and written to the sled tree *while the subject's shard lock is
//! still held*, so the writes of one subject reach the log in the order the
//! operations were applied. The writes of one operation go in one sled batch
//! (its several subjects), which sled recovers all or nothing; an acquire's
//! or a release's are plain inserts (see below). Reads never touch sled.
//!
//! # What is durable
//!
//! - Budget windows, token windows and the hourly request window; open and
//!   settled reservations (holds); concurrency leases, in their subjects'
//!   states. The lease index (lease id → subjects, expiry) is not written:
//!   start-up rebuilds it from the subjects' leases, so the two can never
//!   disagree (stores that kept it on disk lose those keys on open).
//! - Each id generator's prefix and a high-water mark of its sequence,
//!   reserved [`ID_BLOCK`] ids at a time, so that ids issued before a restart
//!   are still recognised as issued (a retried RecordUsage or
//!   ReleaseConcurrent gets "already settled" / `Ok(false)`, never
//!   "unknown").
//! - Not the per-second and per-minute request windows: after a restart they
//!   begin again at zero, which can let through at most one extra short
//!   window's worth of requests, and keeping them would put a disk write on
//!   every check.
//!
//! # Durability contract and group commit
//!
//! RecordUsage and a reserved check that was allowed return only after a
//! flush (`fsync`) that began after their write. An acquire and a release
//! are written without a batch and answered at once, flushed with the next
//! group (a crash loses at most the leases taken since the last flush, and
//! brings back the ones released since until their TTL); an acquire waits
//! only when its id starts a new block, so no id is handed out twice. An
//! unreserved check is never made to wait: if it moved the hourly
//! request window it writes the subject without waiting, and that write goes
//! to disk with the next flush. Denials write nothing (expiry is re-applied
//! at load anyway).
//!
//! One background thread does every flush, so concurrent writers share one.
//! A writer enqueues a completion channel (after its write) and the flusher
//! takes the whole queue as one group, flushes, and completes the group. A
//! group closes and its flush starts as soon as one of these holds:
//!
//! - the store has not flushed within the last `snapshot_interval`, so an
//!   idle store adds no delay;
//! - as many writers wait as joined the previous group: the concurrent
//!   writers have all come, and lingering would only add latency (a lone
//!   serial writer is never held back);
//! - `snapshot_interval` has passed since the previous flush began.
//!
//! `snapshot_interval` is thus the longest a write waits for its group to
//! close, and under load the groups grow to the number of concurrent
//! writers. Writes that nobody waits for (the hourly request window, sweep
//! deletes) are flushed at most once per interval. `db.flush()` blocks, so
//! it runs on that dedicated thread, never on an async worker and never
//! under a lock; the waiters only await a `tokio::sync::oneshot`.
//!
//! # When the disk refuses a write
//!
//! A write that is not acknowledged changes nothing. When a write or a flush
//! fails (a full disk, an I/O error), every operation waiting on it is
//! answered [`StoreError::Unavailable`] and undone in memory
//! (`limits_core::undo`), so a gateway that retries is charged once; from
//! then on the store refuses every operation at once, changing nothing, and
//! [`Store::health`](crate::Store::health) says why, until it has recovered by itself. The flusher
//! retries, backing off from 250 ms to 5 s: it reopens the database (sled
//! keeps an I/O error once it has seen one), writes memory out where the
//! disk differs from it, drops what memory no longer holds, flushes, and
//! takes writes again. [`Store::flush`](crate::Store::flush) (shutdown) tries to recover at once
//! and fails only if it cannot.
//!
//! # Start-up
//!
//! [`SledStore::open`] creates the directory if needed, takes sled's
//! exclusive file lock (a second process gets [`OpenError::Locked`]), checks
//! the store's format version and loads every subject and lease into memory,
//! dropping what has expired by the `now` it is given: windows keep rolling
//! across a restart, so spend that aged out while the service was down is
//! gone. A value it cannot read fails the open, naming the path — it never
//! starts empty over data it does not understand. Subjects are loaded even
//! beyond `max_entries` (forgetting spend would be worse); new subjects are
//! then refused until a sweep makes room.
//!
//! API-key subjects are stored under their keyed hash (see
//! [`Secret`]); a store written by an earlier version with
//! raw keys (format 1) is rewritten on open into a fresh database beside it,
//! which then replaces it, so that no raw key is left in sled's log. The
//! secret's fingerprint is kept with the data, and opening with another
//! secret fails rather than silently orphaning every API key's state.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::sled::{Batch, Db, Tree};
use limits_core::{Dimension, LimitKind, Nanos, Subject, SubjectLimits};
use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::oneshot;

use crate::codec::{self, DecodeError};
use crate::embedded::{AdminWrite, Bounds, Change, ChangeKind, Embedded, IdKind, Journal, State};
use crate::ids::IdGen;
use crate::secret::Secret;
use crate::{Health, StoreError};

/// Ids reserved per write of an id generator's high-water mark.
pub const ID_BLOCK: u64 = 1024;

/// The counter of failed writes and flushes, by `reason` (`no_space`, `io`).
pub const WRITE_FAILURES_METRIC: &str = "mercator_limits_store_write_failures_total";

/// The sled tree the state lives in; a later format can use another tree.
const TREE: &str = "limits";

/// sled's page cache. State is read from disk only at start-up (it is kept
/// in the shards), so the cache need not hold the working set.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How long the flusher waits before its first attempt to recover from a
/// failed write, and at most between two attempts.
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// How the durable store is run.
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// The most subjects kept (see [`StoreError::Full`]).
    pub max_entries: usize,
    /// The most rate limit service counters kept (see
    /// [`StoreError::CountersFull`]).
    pub max_counters: usize,
    /// The longest a durable write waits for its group to close before the
    /// flush starts, and the shortest time between two flushes.
    pub snapshot_interval: Duration,
    /// The configured server secret; without one the store makes and keeps
    /// its own.
    pub secret: Option<Secret>,
}

impl Default for SledOptions {
    fn default() -> SledOptions {
        SledOptions {
            max_entries: 1_000_000,
            max_counters: 1_000_000,
            snapshot_interval: Duration::from_millis(10),
            secret: None,
        }
    }
}

/// Why the durable store could not be opened. Each names the path.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("store at {} is locked by another process", path.display())]
    /// Another process has the database open.
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    #[error("cannot create the store directory {}: {source}", path.display())]
    /// The directory is missing and cannot be made.
    CreateDir {
        /// The store directory.
        path: PathBuf,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    #[error("store at {} is corrupt or unreadable: {reason}", path.display())]
    /// A record cannot be decoded.
    Corrupt {
        /// The store directory.
        path: PathBuf,
        /// What could not be read.
        reason: String,
    },
    #[error(
        "store at {} has format version {found}, this build reads version {supported}",
        path.display()
    )]
    /// The store was written by a newer build.
    UnsupportedVersion {
        /// The store directory.
        path: PathBuf,
        /// The version on disk.
        found: u8,
        /// The newest version this build reads.
        supported: u8,
    },
    #[error("cannot open the store at {}: {source}", path.display())]
    /// sled itself failed to open the database.
    Sled {
        /// The store directory.
        path: PathBuf,
        /// sled's error.
        #[source]
        source: ::sled::Error,
    },
    #[error(
        "store at {} was written with another secret (fingerprint {stored}, not {configured}): \
         its API-key state is keyed with that one. Configure the secret it was written with{}",
        path.display(),
        if *generated {
            " (the store made its own because none was configured: remove security.secret \
             to keep using it, or start the store afresh)"
        } else {
            ""
        }
    )]
    /// The store's keyed hashes were made with another secret.
    SecretMismatch {
        /// The store directory.
        path: PathBuf,
        /// The fingerprint of the secret the store was written with.
        stored: String,
        /// The fingerprint of the secret configured now.
        configured: String,
        /// Whether the store had made its own secret (none was configured).
        generated: bool,
    },
    #[error(
        "store at {} was written with a configured secret (fingerprint {stored}) and none is \
         configured now: set security.secret (or security.secret_file) to it",
        path.display()
    )]
    /// The store was written with a configured secret and none is now.
    SecretMissing {
        /// The store directory.
        path: PathBuf,
        /// The fingerprint of the secret the store was written with.
        stored: String,
    },
    #[error("cannot rewrite the store at {} without raw API keys: {reason}", path.display())]
    /// A store of an older format could not be rewritten.
    Migrate {
        /// The store directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// How long opening waits for a file lock that is being released.
const LOCK_WAIT: Duration = Duration::from_secs(2);

impl OpenError {
    fn from_sled(path: &Path, e: ::sled::Error) -> OpenError {
        let path = path.to_owned();
        match e {
            // sled reports a held lock only as an `Other` I/O error with
            // this text (its fs2 `try_lock_exclusive` failed).
            ::sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
                OpenError::Locked { path }
            }
            ::sled::Error::Corruption { at, .. } => OpenError::Corrupt {
                path,
                reason: format!("sled found corrupt data in its log at {at:?}"),
            },
            ::sled::Error::ReportableBug(reason) => OpenError::Corrupt { path, reason },
            source => OpenError::Sled { path, source },
        }
    }

    fn decode(path: &Path, key: &[u8], e: DecodeError) -> OpenError {
        match e {
            DecodeError::UnknownVersion(found) => OpenError::UnsupportedVersion {
                path: path.to_owned(),
                found,
                supported: codec::STATE_VERSION,
            },
            e => OpenError::Corrupt {
                path: path.to_owned(),
                reason: format!("{}: {e}", describe_key(key)),
            },
        }
    }

    fn migrate(path: &Path, reason: impl std::fmt::Display) -> OpenError {
        OpenError::Migrate {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Names a key for an error message without its subject id: ids include API
/// keys, and an open error ends up in a log line.
/// Writes one key, or removes it.
fn put_one(tree: &Tree, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<(), ::sled::Error> {
    match value {
        Some(v) => tree.insert(key, v).map(drop),
        None => tree.remove(key).map(drop),
    }
}

/// The lease index as the subjects' states hold it: every live lease id
/// with the subjects that hold a slot for it.
fn rebuild_lease_index(inner: &State, now: Nanos) {
    let mut leases: std::collections::HashMap<u64, (Vec<Subject>, Nanos)> =
        std::collections::HashMap::new();
    inner.shards().for_each(|d, id, state| {
        for slot in state.leases().iter().filter(|l| l.expires_at > now) {
            let entry = leases
                .entry(slot.id)
                .or_insert_with(|| (Vec::new(), slot.expires_at));
            entry.0.push(Subject::new(d, id));
        }
    });
    for (id, (subjects, expires_at)) in leases {
        inner.restore_lease(id, subjects.into_boxed_slice(), expires_at);
    }
}

fn describe_key(key: &[u8]) -> String {
    if let Some(rest) = key.strip_prefix(codec::SUBJECT_PREFIX) {
        let dimension = rest
            .first()
            .and_then(|&d| Dimension::ALL.get(usize::from(d)));
        match dimension {
            Some(d) => format!("the state of a {} subject", d.as_str()),
            None => "a subject key".into(),
        }
    } else if let Ok(id) = codec::decode_lease_key(key) {
        format!("lease {id:#x}")
    } else if key.len() <= 16 {
        format!("key {:?}", String::from_utf8_lossy(key))
    } else {
        let head = String::from_utf8_lossy(&key[..3]);
        format!("key {head:?}… ({} bytes)", key.len())
    }
}

/// Opens sled at `path`, waiting briefly for a lock being let go.
fn open_db(path: &Path) -> Result<Db, OpenError> {
    let config = ::sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_BYTES)
        // Flushes are ours (group commit); sled's own timer would only
        // add fsyncs.
        .flush_every_ms(None);
    // sled's background threads let go of the file lock a moment after
    // a store of this process is dropped, so a reopen in the same
    // process (a restart in place, a recovery, a test) may find it briefly
    // held. Another process holding it is refused after the same short wait.
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open().map_err(|e| OpenError::from_sled(path, e)) {
            Err(OpenError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// `path` with `suffix` appended to its last component.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The durable store: the embedded store with sled's journal.
pub type SledStore = Embedded<SledJournal>;

impl Embedded<SledJournal> {
    /// Opens (or creates) the store at `path` and loads its state, expiring
    /// what has expired by `now`.
    pub fn open(path: &Path, options: SledOptions, now: Nanos) -> Result<SledStore, OpenError> {
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).map_err(|source| {
            OpenError::CreateDir {
                path: path.to_owned(),
                source,
            }
        })?;
        finish_interrupted_migration(path)?;
        std::fs::create_dir_all(path).map_err(|source| OpenError::CreateDir {
            path: path.to_owned(),
            source,
        })?;
        // sled silently starts empty over a log it finds truncated to
        // nothing; a store that was there before must still have its format
        // marker afterwards.
        let existed = path.join("db").exists();
        let sled_err = |e| OpenError::from_sled(path, e);
        let mut db = open_db(path)?;
        let mut tree = db.open_tree(TREE).map_err(sled_err)?;

        let format = match tree.get(codec::FORMAT_KEY).map_err(sled_err)? {
            Some(v)
                if v.len() == 1 && (v[0] == codec::FORMAT || v[0] == codec::FORMAT_RAW_KEYS) =>
            {
                Some(v[0])
            }
            Some(v) if v.len() == 1 => {
                return Err(OpenError::UnsupportedVersion {
                    path: path.to_owned(),
                    found: v[0],
                    supported: codec::FORMAT,
                });
            }
            Some(_) => {
                return Err(OpenError::Corrupt {
                    path: path.to_owned(),
                    reason: "the format marker is not one byte".into(),
                });
            }
            None if existed || !tree.is_empty() => {
                return Err(OpenError::Corrupt {
                    path: path.to_owned(),
                    reason: "it has no limitsd format marker (lost or truncated data, or not \
                             a limitsd store; if the very first start was interrupted, remove \
                             the directory)"
                        .into(),
                });
            }
            None => None,
        };

        let secret = store_secret(path, &tree, options.secret.as_ref())?;
        match format {
            Some(codec::FORMAT) => {}
            Some(_) => {
                drop(tree);
                drop(db);
                migrate_raw_keys(path, &secret)?;
                db = open_db(path)?;
                tree = db.open_tree(TREE).map_err(sled_err)?;
            }
            None => {
                tree.insert(codec::FORMAT_KEY, &[codec::FORMAT])
                    .map_err(sled_err)?;
            }
        }

        let ids = |key: &[u8]| -> Result<IdGen, OpenError> {
            match tree.get(key).map_err(sled_err)? {
                Some(v) => {
                    let (prefix, high_water) =
                        codec::decode_ids(&v).map_err(|e| OpenError::decode(path, key, e))?;
                    Ok(IdGen::with_prefix(prefix, high_water))
                }
                None => Ok(IdGen::new()),
            }
        };
        let reservations = ids(codec::RESERVATION_IDS_KEY)?;
        let lease_ids = ids(codec::LEASE_IDS_KEY)?;
        // Persist where each generator starts (below, once everything has
        // loaded), so that a fresh store keeps its random prefixes from the
        // first id on.
        let starts = [
            (
                codec::RESERVATION_IDS_KEY,
                reservations.prefix(),
                reservations.next_sequence(),
            ),
            (
                codec::LEASE_IDS_KEY,
                lease_ids.prefix(),
                lease_ids.next_sequence(),
            ),
        ];

        let shared = Arc::new(Shared {
            path: path.to_owned(),
            high_water: [
                AtomicU64::new(reservations.next_sequence()),
                AtomicU64::new(lease_ids.next_sequence()),
            ],
            bump: Mutex::new(()),
            tree: RwLock::new(Some(tree.clone())),
            group: Group::new(options.snapshot_interval),
        });
        let bounds = Bounds {
            subjects: options.max_entries,
            counters: options.max_counters,
        };
        let mut store =
            Embedded::with_journal(bounds, secret, reservations, lease_ids, |_| SledJournal {
                shared: shared.clone(),
                flusher: None,
            });
        let inner = store.state();

        let mut stale = Vec::new();
        for item in tree.iter() {
            let (key, value) = item.map_err(sled_err)?;
            let decode_err = |e| OpenError::decode(path, &key, e);
            if key.starts_with(codec::SUBJECT_PREFIX) {
                let subject = codec::decode_subject_key(&key).map_err(decode_err)?;
                let mut state = codec::decode_state(&value).map_err(decode_err)?;
                // The limits are not known here; with none, expiry keeps
                // every window that still holds something.
                state.expire(&SubjectLimits::UNLIMITED, now);
                if state.is_idle() {
                    stale.push(key);
                } else {
                    inner.restore_subject(&subject, state);
                }
            } else if key.starts_with(codec::LEASE_PREFIX) {
                // Lease index entries of a store that kept them: the index
                // is rebuilt from the subjects' leases below.
                codec::decode_lease_key(&key).map_err(decode_err)?;
                stale.push(key);
            } else if key.starts_with(codec::RECORD_PREFIX) {
                let name = codec::decode_record_key(&key).map_err(decode_err)?;
                let value = codec::decode_blob(&value).map_err(decode_err)?;
                inner.admin().records.insert(name, value);
            } else if key.starts_with(codec::OUTBOX_PREFIX) {
                let name = codec::decode_outbox_key(&key).map_err(decode_err)?;
                let value = codec::decode_blob(&value).map_err(decode_err)?;
                inner.admin().outbox.insert(name, value);
            } else if key.starts_with(codec::AUDIT_PREFIX) {
                let seq = codec::decode_audit_key(&key).map_err(decode_err)?;
                let value = codec::decode_blob(&value).map_err(decode_err)?;
                // Keys sort by sequence: the trail loads oldest first.
                let mut admin = inner.admin();
                admin.next_audit = admin.next_audit.max(seq + 1);
                admin.audit.push_back((seq, value));
            } else if ![
                codec::FORMAT_KEY,
                codec::RESERVATION_IDS_KEY,
                codec::LEASE_IDS_KEY,
                codec::SECRET_KEY,
                codec::SECRET_FINGERPRINT_KEY,
            ]
            .contains(&key.as_ref())
            {
                return Err(OpenError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("unexpected {}", describe_key(&key)),
                });
            }
        }
        for key in stale {
            tree.remove(key).map_err(sled_err)?;
        }
        rebuild_lease_index(inner, now);
        for (key, prefix, next) in starts {
            tree.insert(key, &codec::encode_ids(prefix, next))
                .map_err(sled_err)?;
        }
        db.flush().map_err(sled_err)?;

        let flusher = std::thread::Builder::new()
            .name("limits-store-flush".into())
            .spawn({
                let state = Arc::downgrade(store.state_arc());
                move || shared.group.run(db, &shared, &state)
            })
            .map_err(|e| OpenError::Sled {
                path: path.to_owned(),
                source: e.into(),
            })?;
        store.journal_mut().flusher = Some(flusher);
        Ok(store)
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.journal().shared.path
    }

    /// Flushes done (or attempted) since open.
    pub fn flushes(&self) -> u64 {
        self.journal().shared.group.flushes.load(Ordering::Relaxed)
    }

    /// Makes every flush (and every attempt to recover) fail as a full disk
    /// would, until turned off: lets tests prove that a write error reaches
    /// the caller as [`StoreError::Unavailable`] rather than as a silent
    /// success. The real thing is tested on a small filesystem.
    #[doc(hidden)]
    pub fn fail_flushes(&self, on: bool) {
        let group = &self.journal().shared.group;
        group.fail_flushes.store(on, Ordering::Relaxed);
        if !on {
            // Retry now rather than at the next backoff step.
            group.wake.notify_one();
        }
    }

    /// Writes and flushes that failed since open; each failed a call with
    /// [`StoreError::Unavailable`].
    pub fn write_errors(&self) -> u64 {
        self.journal()
            .shared
            .group
            .write_errors
            .load(Ordering::Relaxed)
    }

    /// Times the store recovered from a failed write by itself.
    pub fn recoveries(&self) -> u64 {
        self.journal()
            .shared
            .group
            .recoveries
            .load(Ordering::Relaxed)
    }
}

/// The secret the store's data is keyed with: the configured one, which must
/// match the fingerprint kept with the data, or the store's own.
fn store_secret(
    path: &Path,
    tree: &Tree,
    configured: Option<&Secret>,
) -> Result<Secret, OpenError> {
    let sled_err = |e| OpenError::from_sled(path, e);
    let root = tree.get(codec::SECRET_KEY).map_err(sled_err)?;
    let fingerprint = tree.get(codec::SECRET_FINGERPRINT_KEY).map_err(sled_err)?;
    let corrupt = |what: &str| OpenError::Corrupt {
        path: path.to_owned(),
        reason: format!("the stored {what} has the wrong length"),
    };
    let root: Option<[u8; 32]> = root
        .map(|v| v.as_ref().try_into().map_err(|_| corrupt("secret")))
        .transpose()?;
    let fingerprint: Option<[u8; 8]> = fingerprint
        .map(|v| {
            v.as_ref()
                .try_into()
                .map_err(|_| corrupt("secret fingerprint"))
        })
        .transpose()?;
    let secret = match (configured, root, fingerprint) {
        (Some(c), _, Some(fp)) if fp == c.fingerprint() => return Ok(c.clone()),
        (Some(c), root, Some(fp)) => {
            return Err(OpenError::SecretMismatch {
                path: path.to_owned(),
                stored: hex::encode(fp),
                configured: hex::encode(c.fingerprint()),
                generated: root.is_some(),
            });
        }
        (Some(c), _, None) => c.clone(),
        (None, Some(root), _) => return Ok(Secret::from_root(root)),
        (None, None, Some(fp)) => {
            return Err(OpenError::SecretMissing {
                path: path.to_owned(),
                stored: hex::encode(fp),
            });
        }
        (None, None, None) => {
            let own = Secret::generate();
            tree.insert(codec::SECRET_KEY, own.root())
                .map_err(sled_err)?;
            own
        }
    };
    tree.insert(codec::SECRET_FINGERPRINT_KEY, &secret.fingerprint())
        .map_err(sled_err)?;
    Ok(secret)
}

/// Completes a rewrite of a format-1 store that a crash interrupted after
/// the new database was complete (see [`migrate_raw_keys`]).
fn finish_interrupted_migration(path: &Path) -> Result<(), OpenError> {
    let fresh = sibling(path, ".rewritten");
    let old = sibling(path, ".raw-keys");
    let io = |e: std::io::Error| OpenError::migrate(path, e);
    if old.exists() {
        if !path.exists() {
            // Stopped between the two renames: the new database is complete.
            std::fs::rename(&fresh, path).map_err(io)?;
        }
        std::fs::remove_dir_all(&old).map_err(io)?;
    } else if fresh.exists() {
        // Stopped while writing the new database: start it again.
        std::fs::remove_dir_all(&fresh).map_err(io)?;
    }
    Ok(())
}

/// Rewrites a format-1 store, which kept API keys raw, as format 2: every
/// API-key subject (and internal counter) under its keyed hash, lease index
/// entries naming them so. The result is written to a fresh database beside
/// the store and then takes its place, because sled keeps overwritten values
/// in its log until it reclaims the space: rewriting in place would leave
/// raw keys on disk.
fn migrate_raw_keys(path: &Path, secret: &Secret) -> Result<(), OpenError> {
    let fresh = sibling(path, ".rewritten");
    let old = sibling(path, ".raw-keys");
    {
        let db = open_db(path)?;
        let tree = db
            .open_tree(TREE)
            .map_err(|e| OpenError::from_sled(path, e))?;
        let new_db = open_db(&fresh)?;
        let new_tree = new_db
            .open_tree(TREE)
            .map_err(|e| OpenError::from_sled(&fresh, e))?;
        let mut count = 0usize;
        for item in tree.iter() {
            let (key, value) = item.map_err(|e| OpenError::from_sled(path, e))?;
            let decode_err = |e| OpenError::decode(path, &key, e);
            let (key, value): (Vec<u8>, Vec<u8>) = if key.starts_with(codec::SUBJECT_PREFIX) {
                let s = codec::decode_subject_key(&key).map_err(decode_err)?;
                let s = secret.stored_subject(&s);
                // Re-encode at the current version while at it.
                let state = codec::decode_state(&value).map_err(decode_err)?;
                let mut buf = Vec::new();
                if !codec::encode_state(&state, &mut buf) {
                    continue;
                }
                (codec::subject_key(s.dimension, &s.id), buf)
            } else if key.starts_with(codec::LEASE_PREFIX) {
                let (subjects, expires_at) = codec::decode_lease(&value).map_err(decode_err)?;
                let subjects: Vec<Subject> =
                    subjects.iter().map(|s| secret.stored_subject(s)).collect();
                (key.to_vec(), codec::encode_lease(&subjects, expires_at))
            } else if key.as_ref() == codec::FORMAT_KEY {
                continue;
            } else {
                (key.to_vec(), value.to_vec())
            };
            new_tree
                .insert(key, value)
                .map_err(|e| OpenError::from_sled(&fresh, e))?;
            count += 1;
        }
        // The marker last: a database without it is an unfinished rewrite.
        new_tree
            .insert(codec::FORMAT_KEY, &[codec::FORMAT])
            .map_err(|e| OpenError::from_sled(&fresh, e))?;
        new_db
            .flush()
            .map_err(|e| OpenError::from_sled(&fresh, e))?;
        tracing_note(path, count);
    }
    let io = |e: std::io::Error| OpenError::migrate(path, e);
    // Both databases are closed; swap them. A crash in between is finished
    // by `finish_interrupted_migration` on the next open.
    wait_unlocked(path)?;
    wait_unlocked(&fresh)?;
    std::fs::rename(path, &old).map_err(io)?;
    std::fs::rename(&fresh, path).map_err(io)?;
    std::fs::remove_dir_all(&old).map_err(io)?;
    Ok(())
}

/// sled lets go of a database's lock a moment after it is dropped; wait for
/// that before moving its directory.
fn wait_unlocked(path: &Path) -> Result<(), OpenError> {
    drop(open_db(path)?);
    Ok(())
}

/// The store crate logs nothing itself; a migration is rare enough to say
/// so on stderr, where start-up errors go too.
fn tracing_note(path: &Path, entries: usize) {
    eprintln!(
        "limits-store: rewrote the store at {} with API keys stored by keyed hash ({entries} entries)",
        path.display()
    );
}

/// The durable store's journal: writes to the sled tree and hands
/// durability to the flusher thread, which it stops (after a last flush)
/// when dropped.
pub struct SledJournal {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

/// What the journal shares with its flusher thread.
struct Shared {
    path: PathBuf,
    /// The tree, or `None` while the flusher reopens the database after a
    /// failed write.
    tree: RwLock<Option<Tree>>,
    group: Group,
    /// Per [`IdKind`]: a sequence number no issued id has reached, as
    /// persisted.
    high_water: [AtomicU64; 2],
    /// Serialises high-water writes so they reach the log in rising order.
    bump: Mutex<()>,
}

impl Drop for SledJournal {
    /// Flushes what is still pending and stops the flusher, so that a store
    /// reopened in the same process finds everything and sled's lock free.
    fn drop(&mut self) {
        self.shared.group.close();
        if let Some(flusher) = self.flusher.take() {
            // A panicked flusher has nothing left to hand back.
            let _ = flusher.join();
        }
    }
}

// By hand: sled's `Debug` for a tree walks and prints all of it, keys (API
// keys among them) included.
impl std::fmt::Debug for SledJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledJournal")
            .field("path", &self.shared.path)
            .field("high_water", &self.shared.high_water)
            .field("group", &self.shared.group)
            .finish_non_exhaustive()
    }
}

/// A short label for a failed write, for the metric and the health reason.
fn reason_of(e: &::sled::Error) -> &'static str {
    match e {
        ::sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28) =>
        {
            "no_space"
        }
        ::sled::Error::Io(io) if io.to_string().contains("No space left") => "no_space",
        _ => "io",
    }
}

impl Shared {
    fn failed(&self, e: ::sled::Error) -> StoreError {
        let detail = format!("writing to the store at {}: {e}", self.path.display());
        self.group.fail(reason_of(&e), detail.clone());
        StoreError::Unavailable(detail)
    }

    /// Runs `f` on the tree; a sled error marks the store unwritable.
    fn with_tree<R>(
        &self,
        f: impl FnOnce(&Tree) -> Result<R, ::sled::Error>,
    ) -> Result<R, StoreError> {
        let tree = self.tree.read();
        let Some(tree) = tree.as_ref() else {
            // Written while the database is being reopened: memory is ahead
            // of disk until the flusher writes it out again.
            self.group.catch_up.store(true, Ordering::Release);
            return Err(StoreError::Unavailable(format!(
                "the store at {} is recovering from a failed write",
                self.path.display()
            )));
        };
        f(tree).map_err(|e| self.failed(e))
    }

    /// Writes one operation's keys one by one (leases: see
    /// `ChangeKind::Lease`), with no batch's cost.
    fn put_each(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        for (key, value) in writes {
            self.with_tree(|tree| put_one(tree, key, value))?;
        }
        Ok(())
    }

    /// Writes one operation's keys, in one atomic batch if there are several.
    fn put(&self, mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.with_tree(|tree| match writes.len() {
            1 => {
                let (key, value) = writes.pop().expect("one write");
                put_one(tree, key, value)
            }
            _ => {
                let mut batch = Batch::default();
                for (key, value) in writes {
                    match value {
                        Some(v) => batch.insert(key, v),
                        None => batch.remove(key),
                    }
                }
                tree.apply_batch(batch)
            }
        })
    }

    /// Makes the tree hold exactly what memory holds: every subject and
    /// lease written where the disk differs, what memory no longer holds
    /// removed, the id high-water marks rewritten. Each subject is compared
    /// and written with its shard locked, so no operation's write can be
    /// overtaken.
    fn catch_up(&self, inner: &State, tree: &Tree) -> Result<(), ::sled::Error> {
        let mut first_error = None;
        let mut buf = Vec::new();
        inner.shards().for_each(|d, id, state| {
            if first_error.is_some() {
                return;
            }
            let key = codec::subject_key(d, id);
            let result = if codec::encode_state(state, &mut buf) {
                match tree.get(&key) {
                    Ok(Some(v)) if v.as_ref() == buf.as_slice() => Ok(()),
                    Ok(_) => tree.insert(key, buf.as_slice()).map(drop),
                    Err(e) => Err(e),
                }
            } else {
                tree.remove(key).map(drop)
            };
            if let Err(e) = result {
                first_error = Some(e);
            }
        });
        if let Some(e) = first_error {
            return Err(e);
        }
        for item in tree.scan_prefix(codec::SUBJECT_PREFIX) {
            let (key, _) = item?;
            let Ok(subject) = codec::decode_subject_key(&key) else {
                continue;
            };
            inner.shards().with_present(&subject, |present| {
                if present.is_none() {
                    tree.remove(&key).map(drop)
                } else {
                    Ok(())
                }
            })?;
        }
        // The lease index is not kept on disk (rebuilt on open): drop any
        // entry an earlier version left.
        for item in tree.scan_prefix(codec::LEASE_PREFIX) {
            let (key, _) = item?;
            tree.remove(&key)?;
        }
        // Admin data, with the admin lock held, as every admin write.
        {
            let admin = inner.admin();
            write_out(
                tree,
                &admin.records,
                codec::RECORD_PREFIX,
                codec::record_key,
                codec::decode_record_key,
            )?;
            write_out(
                tree,
                &admin.outbox,
                codec::OUTBOX_PREFIX,
                codec::outbox_key,
                codec::decode_outbox_key,
            )?;
            let kept: std::collections::HashSet<u64> =
                admin.audit.iter().map(|(seq, _)| *seq).collect();
            for (seq, value) in &admin.audit {
                let key = codec::audit_key(*seq);
                if tree.get(key)?.is_none() {
                    tree.insert(key, codec::encode_blob(value))?;
                }
            }
            for item in tree.scan_prefix(codec::AUDIT_PREFIX) {
                let (key, _) = item?;
                match codec::decode_audit_key(&key) {
                    Ok(seq) if kept.contains(&seq) => {}
                    _ => {
                        tree.remove(&key)?;
                    }
                }
            }
        }
        let [reservations, leases] = inner.id_generators();
        for (kind, ids, key) in [
            (
                IdKind::Reservation,
                reservations,
                codec::RESERVATION_IDS_KEY,
            ),
            (IdKind::Lease, leases, codec::LEASE_IDS_KEY),
        ] {
            let high_water = self.high_water[kind as usize].load(Ordering::Acquire);
            tree.insert(key, &codec::encode_ids(ids.prefix(), high_water))?;
        }
        Ok(())
    }
}

impl Journal for SledJournal {
    fn writable(&self) -> Result<(), StoreError> {
        match self.shared.group.health() {
            Health::Writable => Ok(()),
            Health::Unwritable { detail, .. } => Err(StoreError::Unavailable(format!(
                "{detail}; writes are refused until the store recovers, which it retries by itself"
            ))),
        }
    }

    fn needs_catch_up(&self) {
        self.shared.group.catch_up.store(true, Ordering::Release);
        self.shared.group.wake.notify_one();
    }

    fn issued(&self, kind: IdKind, ids: &IdGen) -> Result<bool, StoreError> {
        let next = ids.next_sequence();
        let high_water = &self.shared.high_water[kind as usize];
        if next <= high_water.load(Ordering::Acquire) {
            return Ok(false);
        }
        let _bump = self.shared.bump.lock();
        if next <= high_water.load(Ordering::Acquire) {
            return Ok(false);
        }
        let new = next.saturating_add(ID_BLOCK);
        let key = match kind {
            IdKind::Reservation => codec::RESERVATION_IDS_KEY,
            IdKind::Lease => codec::LEASE_IDS_KEY,
        };
        // This write precedes the operation's own in the log, so the flush
        // that acknowledges the operation covers it too.
        self.shared
            .with_tree(|tree| tree.insert(key, &codec::encode_ids(ids.prefix(), new)))?;
        high_water.store(new, Ordering::Release);
        // Usually the operation's own write follows and is waited for; a
        // denied reserved check writes nothing else, so make sure this goes
        // to disk all the same. A lease, whose own write is not waited for,
        // waits for this one.
        self.shared.group.mark_dirty();
        Ok(true)
    }

    fn write(&self, change: &Change<'_>) -> Result<bool, StoreError> {
        let mut buf = Vec::new();
        match change.kind {
            ChangeKind::Counters => {
                // Only request counters moved, and only the hourly one is
                // kept: write those subjects, and let the next flush take
                // them to disk without making this check wait.
                let mut wrote = false;
                for a in change.subjects {
                    if a.state.window(LimitKind::RequestsPerHour).is_none() {
                        continue;
                    }
                    if codec::encode_state(a.state, &mut buf) {
                        let key = codec::subject_key(a.subject.dimension, &a.subject.id);
                        self.shared
                            .with_tree(|tree| tree.insert(key, buf.as_slice()))?;
                        wrote = true;
                    }
                }
                if wrote {
                    self.shared.group.mark_dirty();
                }
                Ok(false)
            }
            ChangeKind::Durable | ChangeKind::Lease => {
                let mut writes = Vec::with_capacity(change.subjects.len() + 1);
                for a in change.subjects {
                    if !a.was_stored && a.state.is_idle() {
                        // Never held, still nothing to hold: nothing on disk.
                        continue;
                    }
                    let key = codec::subject_key(a.subject.dimension, &a.subject.id);
                    let value = codec::encode_state(a.state, &mut buf).then(|| buf.clone());
                    writes.push((key, value));
                }
                // The lease index is not written: it is rebuilt from the
                // subjects' leases on open (`change.lease` needs nothing).
                // Nothing written means no subject was held or is now: the
                // outcome depended on no state, so there is nothing to wait
                // for.
                let wait = !writes.is_empty();
                if matches!(change.kind, ChangeKind::Lease) {
                    self.shared.put_each(writes)?;
                    // Flushed with the next group, unwaited (see
                    // `ChangeKind::Lease`).
                    if wait {
                        self.shared.group.mark_dirty();
                    }
                    return Ok(false);
                }
                self.shared.put(writes)?;
                Ok(wait)
            }
        }
    }

    fn durable(
        &self,
        urgent: bool,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        // Enqueue now, not when first polled: the write this waits for has
        // already happened, and the sooner the flusher knows the better.
        let rx = self.shared.group.enqueue(urgent);
        async move {
            match rx {
                Ok(rx) => rx.await.unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(
                        "the store's flusher has stopped".into(),
                    ))
                }),
                Err(e) => Err(e),
            }
        }
    }

    fn dropped(&self, dimension: Dimension, id: &str) -> Result<(), StoreError> {
        self.shared
            .with_tree(|tree| tree.remove(codec::subject_key(dimension, id)))?;
        // A lost delete is harmless (the load drops idle state), so it waits
        // for the next flush rather than forcing one.
        self.shared.group.mark_dirty();
        Ok(())
    }

    fn lease_expired(&self, _id: u64) -> Result<(), StoreError> {
        // Nothing on disk: the index is rebuilt from the subjects' leases,
        // whose expired slots the load drops.
        Ok(())
    }

    fn admin_write(&self, writes: &[AdminWrite<'_>]) -> Result<bool, StoreError> {
        let writes = writes
            .iter()
            .map(|w| match *w {
                AdminWrite::Record(key, value) => {
                    (codec::record_key(key), value.map(codec::encode_blob))
                }
                AdminWrite::Audit(seq, value) => (
                    codec::audit_key(seq).to_vec(),
                    value.map(codec::encode_blob),
                ),
                AdminWrite::Outbox(key, value) => {
                    (codec::outbox_key(key), value.map(codec::encode_blob))
                }
            })
            .collect::<Vec<_>>();
        let wait = !writes.is_empty();
        self.shared.put(writes)?;
        Ok(wait)
    }

    fn health(&self) -> Health {
        self.shared.group.health()
    }
}

/// Makes the keys of `prefix` on disk hold exactly `map` (records, the
/// outbox): what differs is written, what memory no longer has removed.
fn write_out(
    tree: &::sled::Tree,
    map: &std::collections::BTreeMap<String, Vec<u8>>,
    prefix: &[u8],
    key_of: fn(&str) -> Vec<u8>,
    name_of: fn(&[u8]) -> Result<String, codec::DecodeError>,
) -> Result<(), ::sled::Error> {
    for (name, value) in map {
        let key = key_of(name);
        let blob = codec::encode_blob(value);
        if tree.get(&key)?.as_deref() != Some(blob.as_slice()) {
            tree.insert(key, blob)?;
        }
    }
    for item in tree.scan_prefix(prefix) {
        let (key, _) = item?;
        match name_of(&key) {
            Ok(name) if map.contains_key(&name) => {}
            _ => {
                tree.remove(&key)?;
            }
        }
    }
    Ok(())
}

/// A writer waiting for the flush that covers its write; `urgent` ones
/// ([`Store::flush`]) also wait out a recovery.
type Waiter = (oneshot::Sender<Result<(), StoreError>>, bool);

/// Group commit: writers wait here for the flush that covers their write.
#[derive(Debug)]
struct Group {
    state: Mutex<GroupState>,
    wake: Condvar,
    /// Written without anyone waiting (see [`ChangeKind::Counters`]); outside
    /// the mutex so a check only takes the lock the first time.
    dirty: AtomicBool,
    interval: Duration,
    flushes: AtomicU64,
    write_errors: AtomicU64,
    recoveries: AtomicU64,
    /// Whether writes are taken; read by every operation first.
    writable: AtomicBool,
    /// Why not, while not.
    failure: Mutex<Option<(&'static str, String)>>,
    /// A write failed where memory had already changed: the flusher must
    /// write memory out before the store is writable again.
    catch_up: AtomicBool,
    /// Test hook: make every flush fail as a full disk would.
    fail_flushes: AtomicBool,
}

#[derive(Debug)]
struct GroupState {
    waiters: Vec<Waiter>,
    /// How many writers joined the last group: a group that has as many
    /// closes at once instead of lingering.
    expected: usize,
    /// Someone asked to flush now ([`Store::flush`]).
    urgent: bool,
    closed: bool,
}

impl Group {
    fn new(interval: Duration) -> Group {
        Group {
            state: Mutex::new(GroupState {
                waiters: Vec::new(),
                expected: 1,
                urgent: false,
                closed: false,
            }),
            wake: Condvar::new(),
            dirty: AtomicBool::new(false),
            interval,
            flushes: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            writable: AtomicBool::new(true),
            failure: Mutex::new(None),
            catch_up: AtomicBool::new(false),
            fail_flushes: AtomicBool::new(false),
        }
    }

    fn health(&self) -> Health {
        if self.writable.load(Ordering::Acquire) {
            return Health::Writable;
        }
        match &*self.failure.lock() {
            Some((reason, detail)) => Health::Unwritable {
                reason,
                detail: detail.clone(),
            },
            // Between the flag and the reason being set.
            None => Health::Unwritable {
                reason: "io",
                detail: "the store cannot write".into(),
            },
        }
    }

    /// A write or flush failed: refuse writes until the flusher recovers.
    fn fail(&self, reason: &'static str, detail: String) {
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(WRITE_FAILURES_METRIC, "reason" => reason).increment(1);
        *self.failure.lock() = Some((reason, detail));
        self.catch_up.store(true, Ordering::Release);
        self.writable.store(false, Ordering::Release);
        self.wake.notify_one();
    }

    fn enqueue(
        &self,
        urgent: bool,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.state.lock();
        if state.closed {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        state.waiters.push((tx, urgent));
        state.urgent |= urgent;
        // Wake the flusher when a group opens, when it reaches the expected
        // size, or when asked to hurry; otherwise it is lingering and wakes
        // by itself at its deadline.
        let waiting = state.waiters.len();
        if waiting == 1 || waiting == state.expected || urgent {
            self.wake.notify_one();
        }
        Ok(rx)
    }

    fn mark_dirty(&self) {
        if !self.dirty.swap(true, Ordering::AcqRel) {
            // Take the lock so the wake-up cannot fall between the flusher's
            // check and its wait.
            let _state = self.state.lock();
            self.wake.notify_one();
        }
    }

    fn close(&self) {
        self.state.lock().closed = true;
        self.wake.notify_one();
    }

    /// The flusher thread's loop; returns after a last flush once closed.
    fn run(&self, db: Db, shared: &Shared, inner: &Weak<State>) {
        let path = shared.path.as_path();
        // However this thread ends, even by a panic in sled, nobody may be
        // left waiting for it: close the group and drop every waiter.
        struct Stopped<'a>(&'a Group);
        impl Drop for Stopped<'_> {
            fn drop(&mut self) {
                let mut state = self.0.state.lock();
                state.closed = true;
                state.waiters.clear();
            }
        }
        let _stopped = Stopped(self);

        let mut db = Some(db);
        let mut last_start: Option<Instant> = None;
        let mut retry = FIRST_RETRY;
        let mut next_attempt = Instant::now();
        let mut state = self.state.lock();
        loop {
            if !self.writable.load(Ordering::Acquire) || self.catch_up.load(Ordering::Acquire) {
                // Nothing can be made durable: every writer waiting now has
                // failed, and is undone by its caller. Urgent ones (a final
                // flush) wait for a recovery attempt.
                let waiters = std::mem::take(&mut state.waiters);
                let mut urgent = Vec::new();
                let failed = self.unavailable();
                for (tx, is_urgent) in waiters {
                    if is_urgent {
                        urgent.push(tx);
                    } else {
                        let _ = tx.send(Err(failed.clone()));
                    }
                }
                let now = Instant::now();
                if urgent.is_empty() && !state.closed && now < next_attempt {
                    self.wake.wait_until(&mut state, next_attempt);
                    continue;
                }
                state.urgent = false;
                let closed = state.closed;
                let result = parking_lot::MutexGuard::unlocked(&mut state, || {
                    self.recover(&mut db, shared, inner)
                });
                match &result {
                    Ok(()) => retry = FIRST_RETRY,
                    Err(_) => {
                        next_attempt = Instant::now() + retry;
                        retry = (retry * 2).min(LAST_RETRY);
                    }
                }
                for tx in urgent {
                    let _ = tx.send(result.clone());
                }
                if closed {
                    break;
                }
                continue;
            }
            let waiting = state.waiters.len();
            if waiting == 0 && !self.dirty.load(Ordering::Acquire) {
                if state.closed {
                    // Everything written has been flushed: each write either
                    // had a waiter or marked the store dirty.
                    break;
                }
                self.wake.wait(&mut state);
                continue;
            }
            let gap_over = last_start.map(|t| t + self.interval);
            let ready = state.urgent
                || state.closed
                || gap_over.is_none_or(|t| Instant::now() >= t)
                // The writers that are coming have come; waiting longer
                // would only add latency.
                || (waiting > 0 && waiting >= state.expected);
            if !ready {
                if let Some(deadline) = gap_over {
                    self.wake.wait_until(&mut state, deadline);
                }
                continue;
            }
            let group = std::mem::take(&mut state.waiters);
            if !group.is_empty() {
                state.expected = group.len();
            }
            state.urgent = false;
            self.dirty.store(false, Ordering::Release);
            last_start = Some(Instant::now());
            let result = parking_lot::MutexGuard::unlocked(&mut state, || match &db {
                Some(db) => self.flush(db, path),
                None => Err(self.unavailable()),
            });
            for (waiter, _) in group {
                // A waiter that went away (its call was cancelled) needs no
                // answer.
                let _ = waiter.send(result.clone());
            }
        }
        if !self.writable.load(Ordering::Acquire) {
            // The last attempt failed: what memory held past the last good
            // flush is lost with the process. Say so where start-up errors go.
            eprintln!(
                "limits-store: the store at {} could not be written at shutdown: {}",
                path.display(),
                self.unavailable()
            );
        }
    }

    fn unavailable(&self) -> StoreError {
        match self.health() {
            Health::Writable => StoreError::Unavailable("the store cannot write".into()),
            Health::Unwritable { detail, .. } => StoreError::Unavailable(detail),
        }
    }

    fn flush(&self, db: &Db, path: &Path) -> Result<(), StoreError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        let result = if self.fail_flushes.load(Ordering::Relaxed) {
            Err(injected_full_disk())
        } else {
            db.flush().map(drop)
        };
        result.map_err(|e| {
            let detail = format!("flushing the store at {}: {e}", path.display());
            self.fail(reason_of(&e), detail.clone());
            StoreError::Unavailable(detail)
        })
    }

    /// Reopens the database, writes memory out where the disk differs,
    /// flushes, and takes writes again; on failure the store stays
    /// unwritable and the flusher tries again later.
    fn recover(
        &self,
        db: &mut Option<Db>,
        journal: &Shared,
        inner: &Weak<State>,
    ) -> Result<(), StoreError> {
        let path = journal.path.as_path();
        let fail = |e: ::sled::Error| {
            let detail = format!("recovering the store at {}: {e}", path.display());
            self.fail(reason_of(&e), detail.clone());
            StoreError::Unavailable(detail)
        };
        if self.fail_flushes.load(Ordering::Relaxed) {
            return Err(fail(injected_full_disk()));
        }
        let Some(inner) = inner.upgrade() else {
            return Err(StoreError::Unavailable("the store is closed".into()));
        };
        // sled keeps an I/O error once it has seen one: start from a fresh
        // handle. Writers find no tree meanwhile, fail, and ask for another
        // catch-up.
        *journal.tree.write() = None;
        drop(db.take());
        let reopened = match open_db(path) {
            Ok(d) => d,
            Err(OpenError::Sled { source, .. }) => return Err(fail(source)),
            Err(e) => {
                let detail = format!("recovering the store: {e}");
                self.fail("io", detail.clone());
                return Err(StoreError::Unavailable(detail));
            }
        };
        let tree = reopened.open_tree(TREE).map_err(fail)?;
        *db = Some(reopened);
        *journal.tree.write() = Some(tree.clone());
        self.catch_up.store(false, Ordering::Release);
        journal.catch_up(&inner, &tree).map_err(fail)?;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        db.as_ref().expect("just opened").flush().map_err(fail)?;
        if self.catch_up.load(Ordering::Acquire) {
            // A write failed meanwhile; try again soon.
            return Err(self.unavailable());
        }
        *self.failure.lock() = None;
        self.writable.store(true, Ordering::Release);
        self.recoveries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn injected_full_disk() -> ::sled::Error {
    ::sled::Error::Io(std::io::Error::new(
        std::io::ErrorKind::StorageFull,
        "no space left on device (injected)",
    ))
}
