//! The Redis backend: several limitsd replicas sharing one exact set of
//! limits.
//!
//! # One engine
//!
//! Decisions are made here, by limits-core, exactly as on the embedded
//! stores; Redis keeps each subject's encoded state (the same format as
//! the sled store's, every window included) with a version, and checks
//! versions. Every operation that changes state goes through this
//! replica's commit task (`redis/commit.rs`): it decides a batch of operations
//! over its copies of their subjects' states, then one small script per
//! hash slot (`redis/state.lua`) checks that each state it read is still
//! at the version it read and writes the new ones, all or nothing. A state
//! that another replica changed in between fails the check; the script's
//! reply carries the current state, and the batch is decided again on it.
//! So two replicas can never both admit the last unit of a limit, and no
//! decision, allow or deny, rests on a state that has changed since it was
//! read. The scripts only compare and write: nothing of the window, hold
//! or lease logic exists twice.
//!
//! A reply that cannot be read (a script error, a wrong shape, a state in
//! a format this build does not know) is [`StoreError::Internal`], never
//! `Unavailable`: it is not an outage, and fail-open must never let
//! traffic through because of it.
//!
//! # Time
//!
//! Decisions use Redis's clock: each replica measures the offset of its
//! own clock from Redis's `TIME` when it first reaches Redis and on every
//! sweep, and decides at its own clock plus that offset, so replicas whose
//! clocks disagree by minutes still agree on every window (to within a
//! round trip, which limits-core's windows absorb conservatively). The one
//! exception is [`RedisStore::with_fake_clock`], which decides with the
//! `now` each call is given, so the behaviour suite can drive time by
//! hand; it is meant for tests.
//!
//! # Keys
//!
//! Subjects are spread over [`RedisOptions::shards`] hash tags,
//! `{prefix:N}` (one server: the single tag `{prefix}`), by a hash of the
//! subject, so that a Redis Cluster spreads them over its masters. In each
//! tag `T`:
//!
//! - `T:s2:<dimension>:<id>` — one subject's state: a hash of `v` (its
//!   version, unique within the tag) and `s` (the encoded state), with a
//!   `PEXPIRE` a little past the instant it becomes idle, so a dead
//!   replica's holds and leases free themselves;
//! - `T:i2` — sorted set of the tag's state keys by the instant each
//!   becomes idle: the sweep's work list, and the count the bound on
//!   subjects is checked against; `T:i2:c` — the members that are the rate
//!   limit service's counters (ids with the [`INTERNAL`](crate::INTERNAL)
//!   marker), which have their own bound (`max_counters`), so a flood of
//!   counters cannot lock out API keys;
//! - `T:v2` — the tag's version counter; `T:turn` — a replica's turn
//!   under contention; `T:secret-fp` — the secret's fingerprint.
//!
//! With several tags, each has `max_entries / shards` (rounded up) of the
//! bounds. Under the prefix's own tag `{prefix}`: `ids` (reservation and
//! lease ids, taken by each replica in blocks, so every replica recognises
//! every replica's ids), `l2:<id>` and `l2` (each lease's subjects, and the
//! leases by expiry, for release by id), `secret` / `secret-fp`, and the
//! admin records and audit trail (`redis/admin.lua`).
//!
//! # Redis Cluster
//!
//! A request whose subjects sit in one tag is one script call, as atomic
//! as on one server. One whose subjects sit in several is written to each
//! of them at once, each atomically; if any fails, its effect is taken
//! back where it was written and it is decided again (see `redis/commit.rs`): a
//! concurrent caller may see a brief false denial, never an admission past
//! a limit. What must follow an operation in the prefix's tag (a lease's
//! entry, an audit event) is written after its subjects committed.
//!
//! # Failures
//!
//! Any Redis error that a retry or a failover can cure — refused
//! connection, timeout, `LOADING`, a failover in progress — is
//! [`StoreError::Unavailable`]; nothing is guessed. The connection manager
//! reconnects in the background, so service resumes when Redis does,
//! without a restart. Redis's own persistence settings (AOF, replicas)
//! decide how durable an acknowledged `RecordUsage` is.

mod commit;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use limits_core::engine::RecordRequest;
use limits_core::hit::{Charge, HitOutcome};
use limits_core::{
    AcquireOutcome, CheckOutcome, Dimension, LimitTable, Nanos, Policy, RecordOutcome, Subject,
    SubjectLimits, SubjectState,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{IntoConnectionInfo, Script, ScriptInvocation, Value};
use tokio::sync::OnceCell;

use self::commit::{Committer, Done, Op, Work};
use crate::secret::Secret;
use crate::{
    AdjustOp, Adjusted, AuditEntry, Call, CheckOp, Health, RecordOp, RecordSwap, Records, Store,
    StoreError, Swapped, SweepStats, UsageView, codec,
};

/// The histogram of Redis round trips, by operation.
pub const DURATION_METRIC: &str = "mercator_limits_redis_duration_seconds";
/// The histogram of operations decided in one commit.
pub const BATCH_METRIC: &str = "mercator_limits_redis_batch_size";
/// The histogram of how long an operation waited for its commit to start.
pub const WAIT_METRIC: &str = "mercator_limits_redis_batch_wait_seconds";

/// Subjects or lease entries a sweep call handles at once, so that no
/// single script call blocks Redis for long.
const SWEEP_BATCH: usize = 500;

/// Above this many subjects the sweep does not count open reservations (a
/// gauge): counting reads every subject's state, and every replica sweeps.
pub const COUNT_LIMIT: usize = 100_000;

/// Ids a replica takes at once.
const ID_BLOCK: u64 = 64;

/// How long a state key outlives the instant it becomes idle, in ms (the
/// sweep usually drops it first).
const EXPIRE_SLACK_MS: u64 = 5_000;

/// A state's `PEXPIRE` under a fake clock, whose instants are not Redis's.
const FAKE_CLOCK_EXPIRE_MS: u64 = 24 * 3_600 * 1_000;

/// Hash tags subjects are spread over on a cluster when not configured.
pub const CLUSTER_SHARDS: u16 = 64;

/// How to reach Redis and how to use it.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS
    /// (rustls with the system's roots; `rediss://host:port/#insecure` skips
    /// certificate checks, for tests only). For a cluster, any node.
    pub url: String,
    /// Further cluster nodes to start from (with `cluster`).
    pub nodes: Vec<String>,
    /// Talk to a Redis Cluster rather than one server.
    pub cluster: bool,
    /// A password used when the URL gives none.
    pub password: Option<String>,
    /// The hash tag every key starts with; different prefixes are separate
    /// sets of counters.
    pub key_prefix: String,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long one call (a script round trip) may take.
    pub command_timeout: Duration,
    /// The most subjects kept (see [`StoreError::Full`]); the rate limit
    /// service's counters are not among them.
    pub max_entries: usize,
    /// The most rate limit service counters kept (see
    /// [`StoreError::CountersFull`]).
    pub max_counters: usize,
    /// How many hash tags subjects are spread over: 0 picks 1 on one
    /// server and [`CLUSTER_SHARDS`] on a cluster. Every replica of a key
    /// prefix needs the same number.
    pub shards: u16,
    /// The configured server secret, the same on every replica. Without
    /// one, the first replica to reach Redis makes one and keeps it there
    /// (under the key prefix), and every replica uses it.
    pub secret: Option<Secret>,
}

impl Default for RedisOptions {
    fn default() -> RedisOptions {
        RedisOptions {
            url: "redis://127.0.0.1:6379".to_owned(),
            nodes: Vec::new(),
            cluster: false,
            password: None,
            key_prefix: "limits".to_owned(),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(500),
            max_entries: 10_000_000,
            max_counters: 100_000,
            shards: 0,
            secret: None,
        }
    }
}

/// Why the store could not be set up (a bad URL or prefix; an unreachable
/// server is not an error here, see [`RedisStore::open`]).
#[derive(Debug, thiserror::Error)]
pub enum RedisOpenError {
    #[error("storage.redis.url: {0}")]
    /// The URL (or a cluster node's) cannot be used.
    Url(String),
    #[error("storage.redis.key_prefix: {0}")]
    /// The key prefix is empty or has braces (it is the hash tag).
    Prefix(&'static str),
}

/// One server or a cluster.
enum Conn {
    Single(ConnectionManager),
    /// Connected on first use, so start-up does not need the cluster up.
    Cluster(Box<Cluster>),
}

struct Cluster {
    client: redis::cluster::ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

/// The prefix's own keys (its tag `{prefix}`).
#[derive(Debug)]
struct MetaKeys {
    ids: String,
    leases: String,
    lease_prefix: String,
    secret: String,
    fingerprint: String,
    records: String,
    records_version: String,
    audit: String,
    audit_seq: String,
}

/// The keys of one tag's bookkeeping.
#[derive(Debug)]
struct SlotKeys {
    fingerprint: String,
    index: String,
    counter_index: String,
    turn: String,
    version: String,
    /// What its state keys start with.
    states: String,
}

/// Where every key lives.
#[derive(Debug)]
struct Layout {
    meta: MetaKeys,
    /// One per tag subjects are spread over; the last is the prefix's own
    /// tag (the same as the only one on one server).
    slots: Vec<SlotKeys>,
}

impl Layout {
    fn new(prefix: &str, shards: u16) -> Layout {
        let meta_tag = format!("{{{prefix}}}");
        let slot = |tag: &str, fingerprint: String| SlotKeys {
            fingerprint,
            index: format!("{tag}:i2"),
            counter_index: format!("{tag}:i2:c"),
            turn: format!("{tag}:turn"),
            version: format!("{tag}:v2"),
            states: format!("{tag}:s2:"),
        };
        let meta_fp = format!("{meta_tag}:secret-fp");
        let mut slots: Vec<SlotKeys> = if shards <= 1 {
            Vec::new()
        } else {
            (0..shards)
                .map(|g| {
                    let tag = format!("{{{prefix}:{g}}}");
                    slot(&tag, format!("{tag}:secret-fp"))
                })
                .collect()
        };
        slots.push(slot(&meta_tag, meta_fp.clone()));
        Layout {
            meta: MetaKeys {
                ids: format!("{meta_tag}:ids"),
                leases: format!("{meta_tag}:l2"),
                lease_prefix: format!("{meta_tag}:l2:"),
                secret: format!("{meta_tag}:secret"),
                fingerprint: meta_fp,
                records: format!("{meta_tag}:admin:records"),
                records_version: format!("{meta_tag}:admin:version"),
                audit: format!("{meta_tag}:admin:audit"),
                audit_seq: format!("{meta_tag}:admin:audit-seq"),
            },
            slots,
        }
    }

    /// How many tags subjects are spread over.
    fn groups(&self) -> usize {
        self.slots.len().saturating_sub(1).max(1)
    }

    /// The prefix's own tag.
    fn meta(&self) -> u32 {
        (self.slots.len() - 1) as u32
    }

    fn slot_keys(&self, slot: u32) -> &SlotKeys {
        &self.slots[slot as usize]
    }

    /// A stored subject's tag and state key.
    fn state_key(&self, s: &Subject) -> (u32, String) {
        let slot = if self.slots.len() == 1 {
            0
        } else {
            let mut h = blake3::Hasher::new();
            h.update(&[s.dimension.index() as u8]);
            h.update(s.id.as_bytes());
            let word =
                u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or_default());
            (word % self.groups() as u64) as u32
        };
        let keys = &self.slots[slot as usize];
        (
            slot,
            format!("{}{}:{}", keys.states, s.dimension.index(), s.id),
        )
    }

    fn lease_key(&self, id: u64) -> String {
        format!("{}{id}", self.meta.lease_prefix)
    }
}

/// The secret this replica settled with Redis, and its fingerprint as the
/// scripts compare it.
struct Settled {
    secret: Arc<Secret>,
    fingerprint: String,
}

/// What the store and its commit task share.
struct Inner {
    conn: Conn,
    state_script: Script,
    sweep_script: Script,
    /// Admin records and the audit trail (`redis/admin.lua`).
    admin_script: Script,
    layout: Layout,
    max_entries: usize,
    max_counters: usize,
    command_timeout: Duration,
    fake_clock: bool,
    /// This replica, for the turn under contention.
    replica: String,
    configured_secret: Option<Secret>,
    settled: ArcSwapOption<Settled>,
    /// Settles one at a time.
    settling: tokio::sync::Mutex<()>,
    /// Moves whenever the secret is settled again (Redis may have lost its
    /// data): the commit task's cache is dropped then.
    generation: AtomicU64,
    /// Redis's clock minus ours, in ns.
    clock_offset: AtomicI64,
    /// The ids this replica may hand out: next and end of its block.
    ids: parking_lot::Mutex<(u64, u64)>,
    /// Held while a new block is taken.
    refilling: tokio::sync::Mutex<()>,
    /// The highest id seen issued (by any replica).
    highest_id: AtomicU64,
}

/// The Redis store. Cheap to share: calls multiplex over one connection.
pub struct RedisStore {
    inner: Arc<Inner>,
    committer: Committer,
}

// By hand: the connection types are not Debug, and nothing here is secret
// except the URL's password, which is not kept.
impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisStore")
            .field("meta", &inner.layout.meta)
            .field("shards", &inner.layout.groups())
            .field("cluster", &matches!(inner.conn, Conn::Cluster(_)))
            .field("max_entries", &inner.max_entries)
            .field("max_counters", &inner.max_counters)
            .field("fake_clock", &inner.fake_clock)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// What a call answers when Redis keeps another secret's fingerprint than
/// the caller's, or none.
const STALE_SECRET: &str = "redis: the secret under this key prefix changed (settling again)";

fn is_stale(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(m) if m == STALE_SECRET)
}

/// A reply this build does not understand: never an outage, never a
/// reason to fail open.
fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("redis: {e}"))
}

/// Sorts a Redis error: what a retry or failover can cure (no connection,
/// a timeout, a server loading, failing over or out of memory) is
/// `Unavailable`; a reply that says the script or its call is wrong (a
/// script error, an unexpected type, keys in several slots) is `Internal`.
fn redis_error(e: redis::RedisError) -> StoreError {
    use redis::{ErrorKind, ServerErrorKind};
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return unavailable(e);
    }
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => internal(e),
        ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::CrossSlot) => {
            internal(e)
        }
        _ => unavailable(e),
    }
}

/// Whether a subject is one of the rate limit service's counters, which
/// have their own bound (as the embedded stores' `Class`).
fn is_counter(subject: &Subject) -> bool {
    subject.dimension == Dimension::ApiKey && subject.id.starts_with(crate::INTERNAL)
}

/// What a decision needs of a policy (its downgrade chains and prices were
/// used already, to make the attempts).
fn policy_for_decision(policy: &Policy) -> Policy {
    Policy {
        mode: policy.mode,
        alert_threshold_ppm: policy.alert_threshold_ppm,
        alert_thresholds: policy.alert_thresholds.clone(),
        ..Policy::default()
    }
}

fn wrong_answer() -> StoreError {
    internal("the commit task answered another operation")
}

impl RedisStore {
    /// Sets up the store. The connection is made lazily and re-made after
    /// failures, so limitsd starts (and answers `UNAVAILABLE`) while Redis
    /// is down and recovers by itself; call [`ping`](Self::ping) to find
    /// out at start-up whether Redis is there.
    pub fn open(options: &RedisOptions) -> Result<RedisStore, RedisOpenError> {
        if options.key_prefix.is_empty() {
            return Err(RedisOpenError::Prefix("must not be empty"));
        }
        if options.key_prefix.contains(['{', '}']) {
            return Err(RedisOpenError::Prefix(
                "must not contain braces (it is used as the hash tag)",
            ));
        }
        // rediss:// needs a process-wide rustls crypto provider; ring is the
        // one this crate builds with. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let info = |url: &str| -> Result<redis::ConnectionInfo, RedisOpenError> {
            let info = url
                .into_connection_info()
                .map_err(|e| RedisOpenError::Url(e.to_string()))?;
            Ok(match &options.password {
                Some(p) if info.redis_settings().password().is_none() => {
                    let settings = info.redis_settings().clone().set_password(p);
                    info.set_redis_settings(settings)
                }
                _ => info,
            })
        };
        let conn = if options.cluster {
            let mut nodes = vec![info(&options.url)?];
            for n in &options.nodes {
                nodes.push(info(n)?);
            }
            let client = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.command_timeout)
                .retries(2)
                .build()
                .map_err(|e| RedisOpenError::Url(e.to_string()))?;
            Conn::Cluster(Box::new(Cluster {
                client,
                conn: OnceCell::new(),
            }))
        } else {
            let client = redis::Client::open(info(&options.url)?)
                .map_err(|e| RedisOpenError::Url(e.to_string()))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(Some(options.command_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            let manager = ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| RedisOpenError::Url(e.to_string()))?;
            Conn::Single(manager)
        };
        let shards = match options.shards {
            0 if options.cluster => CLUSTER_SHARDS,
            0 => 1,
            n => n,
        };
        let replica: [u8; 8] = rand::random();
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                state_script: Script::new(include_str!("redis/state.lua")),
                sweep_script: Script::new(include_str!("redis/sweep.lua")),
                admin_script: Script::new(include_str!("redis/admin.lua")),
                layout: Layout::new(&options.key_prefix, shards),
                max_entries: options.max_entries,
                max_counters: options.max_counters,
                command_timeout: options.command_timeout,
                fake_clock: false,
                replica: hex::encode(replica),
                configured_secret: options.secret.clone(),
                settled: ArcSwapOption::empty(),
                settling: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                clock_offset: AtomicI64::new(0),
                ids: parking_lot::Mutex::new((0, 0)),
                refilling: tokio::sync::Mutex::new(()),
                highest_id: AtomicU64::new(0),
            }),
            committer: Committer::new(),
        })
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("configured before first use")
    }

    /// Runs `source` instead of the commit script: lets tests prove that a
    /// reply this build cannot read is an internal error, never an outage
    /// that fail-open would let through.
    #[doc(hidden)]
    pub fn with_script(mut self, source: &str) -> RedisStore {
        self.inner_mut().state_script = Script::new(source);
        self
    }

    /// Makes decisions use the `now` each call is given instead of Redis's
    /// clock. For tests, which move a fake clock by hand: two replicas with
    /// fake clocks do not share time.
    pub fn with_fake_clock(mut self) -> RedisStore {
        self.inner_mut().fake_clock = true;
        self
    }

    /// How many hash tags subjects are spread over.
    pub fn shards(&self) -> usize {
        self.inner.layout.groups()
    }

    /// Whether Redis answers now (and the scripts are loaded).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let started = Instant::now();
        let result = async {
            for script in [
                &inner.state_script,
                &inner.sweep_script,
                &inner.admin_script,
            ] {
                match &inner.conn {
                    Conn::Single(m) => script.load_async(&mut m.clone()).await,
                    Conn::Cluster(_) => {
                        let mut c = inner.cluster_conn().await?;
                        script.load_async(&mut c).await
                    }
                }
                .map_err(unavailable)?;
            }
            Ok(())
        };
        match tokio::time::timeout(inner.command_timeout, result).await {
            Ok(r) => r,
            Err(_) => Err(unavailable(format!(
                "no answer within {:?}",
                started.elapsed()
            ))),
        }
    }

    /// The subjects as stored, checking the request's shape.
    fn stored(
        &self,
        secret: &Secret,
        subjects: &[Subject],
        limits: &[&SubjectLimits],
    ) -> Vec<Subject> {
        assert!(
            (1..=crate::MAX_SUBJECTS).contains(&subjects.len()) && limits.len() == subjects.len(),
            "1 to {} subjects, each with its limits",
            crate::MAX_SUBJECTS
        );
        subjects.iter().map(|s| secret.stored_subject(s)).collect()
    }

    async fn submit<O>(&self, call: &Call<'_, O>, work: Work) -> Result<Done, StoreError> {
        let secret = self.inner.settled_secret().await?;
        let op = Op {
            subjects: self.stored(&secret, call.subjects, call.limits),
            limits: call.limits.iter().map(|l| (*l).clone()).collect(),
            now: call.now,
            work,
        };
        self.committer.run(&self.inner, op).await
    }

    async fn check_once(&self, call: Call<'_, CheckOp<'_>>) -> Result<CheckOutcome, StoreError> {
        let op = call.op;
        let reserve = match op.reserve_ttl {
            Some(ttl) => Some((self.inner.next_id().await?, ttl, op.tag)),
            None => None,
        };
        let work = Work::Check {
            attempts: op.attempts.to_vec(),
            reserve,
            policy: policy_for_decision(op.policy),
        };
        match self.submit(&call, work).await? {
            Done::Check(out) => Ok(out),
            _ => Err(wrong_answer()),
        }
    }

    async fn record_once(&self, call: Call<'_, RecordOp<'_>>) -> Result<RecordOutcome, StoreError> {
        let op = call.op;
        if let Some(id) = op.reservation
            && !self.inner.issued(id).await?
        {
            return Err(StoreError::UnknownReservation);
        }
        let work = Work::Record {
            req: RecordRequest {
                reservation: op.reservation,
                cost: op.cost,
                tokens: op.tokens,
                input: op.input,
                output: op.output,
                progress: op.progress,
                sequence: op.sequence,
            },
            policy: policy_for_decision(op.policy),
        };
        match self.submit(&call, work).await? {
            Done::Record(out) => Ok(out),
            _ => Err(wrong_answer()),
        }
    }

    async fn acquire_once(&self, call: Call<'_, Nanos>) -> Result<AcquireOutcome, StoreError> {
        let id = self.inner.next_id().await?;
        match self
            .submit(&call, Work::Acquire { id, ttl: call.op })
            .await?
        {
            Done::Acquire(out) => Ok(out),
            _ => Err(wrong_answer()),
        }
    }

    async fn hit_once(&self, call: Call<'_, &[Charge]>) -> Result<HitOutcome, StoreError> {
        assert_eq!(call.op.len(), call.subjects.len(), "one charge per subject");
        let work = Work::Hit {
            charges: call.op.to_vec(),
        };
        match self.submit(&call, work).await? {
            Done::Hit(out) => Ok(out),
            _ => Err(wrong_answer()),
        }
    }

    async fn release_once(&self, lease_id: u64, now: Nanos) -> Result<bool, StoreError> {
        let inner = &self.inner;
        inner.settled_secret().await?;
        let record: Option<Vec<u8>> = inner
            .command(
                "lease",
                redis::cmd("GET").arg(inner.layout.lease_key(lease_id)),
            )
            .await?;
        let Some(record) = record else {
            return if inner.issued(lease_id).await? {
                Ok(false)
            } else {
                Err(StoreError::UnknownLease)
            };
        };
        let (subjects, expires_at) = codec::decode_lease(&record)
            .map_err(|e| internal(format!("a lease entry this build cannot read: {e}")))?;
        let op = Op {
            limits: vec![SubjectLimits::UNLIMITED; subjects.len()],
            subjects: subjects.into_vec(),
            now,
            work: Work::Release {
                id: lease_id,
                expires_at,
            },
        };
        match self.committer.run(inner, op).await? {
            Done::Release(released) => Ok(released),
            _ => Err(wrong_answer()),
        }
    }

    async fn usage_stored_once(
        &self,
        stored: &Subject,
        limits: &SubjectLimits,
        now: Nanos,
    ) -> Result<UsageView, StoreError> {
        let inner = &self.inner;
        inner.settled_secret().await?;
        let (_, key) = inner.layout.state_key(stored);
        let bytes: Option<Vec<u8>> = inner
            .command("read", redis::cmd("HGET").arg(&key).arg("s"))
            .await?;
        let mut state = match bytes {
            Some(b) => codec::decode_state(&b)
                .map_err(|e| internal(format!("a stored state this build cannot read: {e}")))?,
            None => SubjectState::new(),
        };
        let now = if inner.fake_clock { now } else { inner.clock() };
        state.expire(limits, now);
        Ok(crate::embedded::view(&state, limits, now))
    }

    async fn adjust_once(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        op: AdjustOp<'_>,
        now: Nanos,
    ) -> Result<Adjusted, StoreError> {
        self.inner.settled_secret().await?;
        let op = Op {
            subjects: vec![subject.clone()],
            limits: vec![limits.clone()],
            now,
            work: Work::Adjust {
                changes: op.changes.to_vec(),
                audit: op.audit.to_vec(),
                keep: op.audit_keep,
            },
        };
        match self.committer.run(&self.inner, op).await? {
            Done::Adjust(out) => Ok(out),
            _ => Err(wrong_answer()),
        }
    }

    async fn sweep_once(&self, now: Nanos) -> Result<SweepStats, StoreError> {
        let inner = &self.inner;
        inner.settled_secret().await?;
        inner.sync_clock().await?;
        let now = if inner.fake_clock { now } else { inner.clock() };
        let cutoff = now.0 / 1_000_000;
        let mut stats = SweepStats::default();
        let meta = inner.layout.meta();
        for slot in 0..inner.layout.slots.len() as u32 {
            let keys = inner.layout.slot_keys(slot);
            // Only the prefix's own tag keeps leases.
            let leases = if slot == meta {
                &inner.layout.meta.leases
            } else {
                &keys.index
            };
            loop {
                let mut inv = inner.sweep_script.prepare_invoke();
                inv.key(&keys.index)
                    .key(&keys.counter_index)
                    .key(leases)
                    .arg(cutoff)
                    .arg(SWEEP_BATCH);
                let reply = inner.call("sweep", &inv).await?;
                let n = ints(reply, 5)?;
                stats.dropped += n[0] as usize;
                if n[0] < SWEEP_BATCH as u64 {
                    stats.subjects += n[1] as usize;
                    if slot == meta {
                        stats.live_leases = n[4] as usize;
                    }
                    break;
                }
            }
        }
        if stats.subjects <= COUNT_LIMIT {
            stats.open_reservations = self.count_open(now).await?;
        }
        Ok(stats)
    }

    /// Open reservations, for the gauge: read a batch of states at a time,
    /// so the count is approximate while other calls run.
    async fn count_open(&self, now: Nanos) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let mut open = 0;
        for slot in 0..inner.layout.slots.len() as u32 {
            let index = &inner.layout.slot_keys(slot).index;
            let mut from = 0;
            loop {
                let keys: Vec<Vec<u8>> = inner
                    .command(
                        "sweep",
                        redis::cmd("ZRANGE")
                            .arg(index)
                            .arg(from)
                            .arg(from + SWEEP_BATCH - 1),
                    )
                    .await?;
                let reads = keys.iter().map(|k| async move {
                    let mut cmd = redis::cmd("HGET");
                    cmd.arg(k).arg("s");
                    inner.command::<Option<Vec<u8>>>("sweep", &mut cmd).await
                });
                for state in futures_util::future::join_all(reads).await {
                    let Some(bytes) = state? else { continue };
                    let state = codec::decode_state(&bytes).map_err(|e| {
                        internal(format!("a stored state this build cannot read: {e}"))
                    })?;
                    open += state.holds().iter().filter(|h| h.is_open(now)).count();
                }
                if keys.len() < SWEEP_BATCH {
                    break;
                }
                from += SWEEP_BATCH;
            }
        }
        Ok(open)
    }

    fn admin_invocation(&self, op: &str, settled: &Settled) -> ScriptInvocation<'_> {
        let meta = &self.inner.layout.meta;
        let mut inv = self.inner.admin_script.prepare_invoke();
        inv.key(&meta.records)
            .key(&meta.records_version)
            .key(&meta.audit)
            .key(&meta.audit_seq)
            .key(&meta.fingerprint);
        inv.arg(op).arg(&settled.fingerprint);
        inv
    }

    async fn admin_call(&self, inv: &ScriptInvocation<'_>) -> Result<Vec<Value>, StoreError> {
        let reply = self.inner.call("admin", inv).await?;
        let Value::Array(items) = reply else {
            return Err(internal(format!("unexpected admin reply {reply:?}")));
        };
        match items.first() {
            Some(Value::Int(0)) => Ok(items.into_iter().skip(1).collect()),
            Some(Value::Int(5 | 6)) => Err(StoreError::Unavailable(STALE_SECRET.to_owned())),
            other => Err(internal(format!("admin script status {other:?}"))),
        }
    }

    async fn swap_once(&self, swap: RecordSwap<'_>) -> Result<Swapped, StoreError> {
        self.inner.settled_secret().await?;
        let settled = self.inner.settled.load_full().ok_or_else(stale)?;
        let mut inv = self.admin_invocation("swap", &settled);
        inv.arg(swap.key)
            .arg(u8::from(swap.expect.is_some()))
            .arg(swap.expect.unwrap_or_default())
            .arg(u8::from(swap.new.is_some()))
            .arg(swap.new.unwrap_or_default())
            .arg(u8::from(swap.audit.is_some()))
            .arg(swap.audit.unwrap_or_default())
            .arg(swap.audit_keep.max(1));
        let reply = self.inner.call("admin", &inv).await?;
        let Value::Array(items) = reply else {
            return Err(internal(format!("unexpected admin reply {reply:?}")));
        };
        let mut it = items.into_iter();
        match it.next() {
            Some(Value::Int(0)) => Ok(Swapped::Done {
                audit_seq: uint(it.next())?,
                version: uint(it.next())?,
            }),
            Some(Value::Int(1)) => match it.next() {
                Some(Value::Int(0)) => Ok(Swapped::Conflict(None)),
                Some(Value::Int(_)) => Ok(Swapped::Conflict(Some(bytes(it.next())?))),
                other => Err(internal(format!("unexpected admin reply item {other:?}"))),
            },
            Some(Value::Int(5 | 6)) => Err(StoreError::Unavailable(STALE_SECRET.to_owned())),
            other => Err(internal(format!("admin script status {other:?}"))),
        }
    }
}

fn stale() -> StoreError {
    StoreError::Unavailable(STALE_SECRET.to_owned())
}

fn uint(v: Option<Value>) -> Result<u64, StoreError> {
    match v {
        Some(Value::Int(n)) => u64::try_from(n).map_err(internal),
        other => Err(internal(format!("unexpected reply item {other:?}"))),
    }
}

fn bytes(v: Option<Value>) -> Result<Vec<u8>, StoreError> {
    match v {
        Some(Value::BulkString(b)) => Ok(b),
        Some(Value::SimpleString(s)) => Ok(s.into_bytes()),
        other => Err(internal(format!("unexpected reply item {other:?}"))),
    }
}

fn string(v: Option<Value>) -> Result<String, StoreError> {
    String::from_utf8(bytes(v)?).map_err(internal)
}

/// A reply of exactly `n` non-negative integers.
fn ints(v: Value, n: usize) -> Result<Vec<u64>, StoreError> {
    let Value::Array(items) = v else {
        return Err(internal(format!("unexpected script reply {v:?}")));
    };
    if items.len() != n {
        return Err(internal("a script reply of the wrong length"));
    }
    items.into_iter().map(|i| uint(Some(i))).collect()
}

fn audit_item(item: Vec<u8>) -> Result<AuditEntry, StoreError> {
    let colon = item
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| internal("an audit event without its sequence"))?;
    let seq = std::str::from_utf8(&item[..colon])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| internal("an audit event with an unreadable sequence"))?;
    Ok((seq, item[colon + 1..].to_vec()))
}

impl Inner {
    /// The secret in use, settled with Redis on first contact (see
    /// [`settle_secret`](Self::settle_secret)).
    async fn settled_secret(&self) -> Result<Arc<Secret>, StoreError> {
        if let Some(s) = self.settled.load_full() {
            return Ok(s.secret.clone());
        }
        self.settle_secret().await
    }

    /// The fingerprint the scripts compare, once settled.
    fn current_fingerprint(&self) -> Option<String> {
        self.settled.load().as_ref().map(|s| s.fingerprint.clone())
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Agrees with Redis on the secret that keys API keys: the configured
    /// one, or, without one, the one the first replica to reach Redis made
    /// and kept there (under the key prefix). Its fingerprint is kept in
    /// every tag, and every script call checks the caller's against it, so
    /// that replicas with different secrets (or a replica that settled
    /// before Redis lost its data) can never split a key's state: a call
    /// that finds another fingerprint, or none, settles again and retries.
    async fn settle_secret(&self) -> Result<Arc<Secret>, StoreError> {
        let _one_at_a_time = self.settling.lock().await;
        let meta = &self.layout.meta;
        let secret = match &self.configured_secret {
            Some(s) => s.clone(),
            None => {
                // Ours if Redis has none (first replica, or data lost).
                let ours = self
                    .settled
                    .load_full()
                    .map_or_else(Secret::generate, |s| (*s.secret).clone());
                let _: Value = self
                    .command(
                        "settle",
                        redis::cmd("SET")
                            .arg(&meta.secret)
                            .arg(ours.root().as_slice())
                            .arg("NX"),
                    )
                    .await?;
                let stored: Vec<u8> = self
                    .command("settle", redis::cmd("GET").arg(&meta.secret))
                    .await?;
                let root: [u8; 32] = stored
                    .try_into()
                    .map_err(|_| internal("the stored secret has the wrong length"))?;
                Secret::from_root(root)
            }
        };
        let fp = hex::encode(secret.fingerprint());
        for keys in &self.layout.slots {
            let _: Value = self
                .command(
                    "settle",
                    redis::cmd("SET").arg(&keys.fingerprint).arg(&fp).arg("NX"),
                )
                .await?;
            let stored: Option<String> = self
                .command("settle", redis::cmd("GET").arg(&keys.fingerprint))
                .await?;
            if stored.as_deref() != Some(fp.as_str()) {
                return Err(internal(format!(
                    "the data under this key prefix is keyed with another secret (fingerprint \
                     {}, not {fp}): every replica needs the same security.secret",
                    stored.unwrap_or_default()
                )));
            }
        }
        self.sync_clock().await?;
        let secret = Arc::new(secret);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.settled.store(Some(Arc::new(Settled {
            secret: secret.clone(),
            fingerprint: fp,
        })));
        Ok(secret)
    }

    /// Measures Redis's clock against ours.
    async fn sync_clock(&self) -> Result<(), StoreError> {
        let before = wall_clock();
        let (secs, micros): (i64, i64) = self.command("time", &mut redis::cmd("TIME")).await?;
        let after = wall_clock();
        let redis = i128::from(secs) * 1_000_000_000 + i128::from(micros) * 1_000;
        let ours = (i128::from(before.0) + i128::from(after.0)) / 2;
        let offset = i64::try_from(redis - ours).unwrap_or(0);
        self.clock_offset.store(offset, Ordering::Relaxed);
        Ok(())
    }

    /// Now, on Redis's clock.
    fn clock(&self) -> Nanos {
        let ours = i128::from(wall_clock().0);
        let offset = i128::from(self.clock_offset.load(Ordering::Relaxed));
        Nanos(u64::try_from((ours + offset).max(0)).unwrap_or(u64::MAX))
    }

    /// A state's `PEXPIRE`, in ms, given when it becomes idle.
    fn pexpire_ms(&self, idle_at: Nanos, now: Nanos) -> u64 {
        if self.fake_clock {
            return FAKE_CLOCK_EXPIRE_MS;
        }
        idle_at
            .0
            .saturating_sub(now.0)
            .div_ceil(1_000_000)
            .saturating_add(EXPIRE_SLACK_MS)
    }

    /// The bounds of one tag: all of them on one server, a share on
    /// several.
    fn slot_bounds(&self) -> (usize, usize) {
        let n = self.layout.groups();
        (self.max_entries.div_ceil(n), self.max_counters.div_ceil(n))
    }

    /// A fresh reservation or lease id, from this replica's block; one
    /// caller at a time takes a new block when it runs out.
    async fn next_id(&self) -> Result<u64, StoreError> {
        if let Some(id) = self.take_id() {
            return Ok(id);
        }
        let _one_at_a_time = self.refilling.lock().await;
        if let Some(id) = self.take_id() {
            return Ok(id);
        }
        let end: u64 = self
            .command(
                "ids",
                redis::cmd("INCRBY")
                    .arg(&self.layout.meta.ids)
                    .arg(ID_BLOCK),
            )
            .await?;
        self.highest_id.fetch_max(end, Ordering::Relaxed);
        let mut ids = self.ids.lock();
        *ids = (end + 2 - ID_BLOCK, end + 1);
        Ok(end + 1 - ID_BLOCK)
    }

    fn take_id(&self) -> Option<u64> {
        let mut ids = self.ids.lock();
        (ids.0 < ids.1).then(|| {
            ids.0 += 1;
            ids.0 - 1
        })
    }

    /// Whether some replica was handed this id.
    async fn issued(&self, id: u64) -> Result<bool, StoreError> {
        if id == 0 {
            return Ok(false);
        }
        if id <= self.highest_id.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let highest: Option<u64> = self
            .command("ids", redis::cmd("GET").arg(&self.layout.meta.ids))
            .await?;
        let highest = highest.unwrap_or(0);
        self.highest_id.fetch_max(highest, Ordering::Relaxed);
        Ok(id <= highest)
    }

    async fn cluster_conn(&self) -> Result<ClusterConnection, StoreError> {
        match &self.conn {
            Conn::Cluster(c) => c
                .conn
                .get_or_try_init(|| c.client.get_async_connection())
                .await
                .cloned()
                .map_err(unavailable),
            Conn::Single(_) => unreachable!("a single-server store"),
        }
    }

    /// One plain command, bounded by the command timeout.
    async fn command<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        cmd: &mut redis::Cmd,
    ) -> Result<T, StoreError> {
        self.timed(operation, async {
            match &self.conn {
                Conn::Single(m) => cmd.query_async::<T>(&mut m.clone()).await,
                Conn::Cluster(_) => {
                    let mut c = self.cluster_conn().await?;
                    cmd.query_async::<T>(&mut c).await
                }
            }
            .map_err(redis_error)
        })
        .await
    }

    /// One script call, bounded by the command timeout.
    async fn call(
        &self,
        operation: &'static str,
        inv: &ScriptInvocation<'_>,
    ) -> Result<Value, StoreError> {
        self.timed(operation, async {
            match &self.conn {
                Conn::Single(m) => inv.invoke_async::<Value>(&mut m.clone()).await,
                Conn::Cluster(_) => {
                    let mut c = self.cluster_conn().await?;
                    inv.invoke_async::<Value>(&mut c).await
                }
            }
            .map_err(redis_error)
        })
        .await
    }

    /// Runs one round trip within the command timeout, recording how long
    /// it took under `operation`.
    async fn timed<T>(
        &self,
        operation: &'static str,
        run: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.command_timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(unavailable(format!(
                "no answer within {:?}",
                self.command_timeout
            ))),
        };
        metrics::histogram!(DURATION_METRIC, "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        result
    }
}

/// The wall clock, in ns since the Unix epoch.
fn wall_clock() -> Nanos {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Nanos::from(since)
}

macro_rules! with_secret {
    ($store:expr, $call:expr) => {{
        match $call.await {
            Err(e) if is_stale(&e) => {
                $store.inner.settle_secret().await?;
                $call.await
            }
            other => other,
        }
    }};
}

impl Store for RedisStore {
    async fn check(&self, call: Call<'_, CheckOp<'_>>) -> Result<CheckOutcome, StoreError> {
        with_secret!(self, self.check_once(call))
    }

    async fn record(&self, call: Call<'_, RecordOp<'_>>) -> Result<RecordOutcome, StoreError> {
        with_secret!(self, self.record_once(call))
    }

    async fn acquire(&self, call: Call<'_, Nanos>) -> Result<AcquireOutcome, StoreError> {
        with_secret!(self, self.acquire_once(call))
    }

    async fn hit(&self, call: Call<'_, &[Charge]>) -> Result<HitOutcome, StoreError> {
        with_secret!(self, self.hit_once(call))
    }

    async fn release(&self, lease_id: u64, now: Nanos) -> Result<bool, StoreError> {
        with_secret!(self, self.release_once(lease_id, now))
    }

    async fn usage(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        now: Nanos,
    ) -> Result<UsageView, StoreError> {
        let secret = self.inner.settled_secret().await?;
        let stored = secret.stored_subject(subject);
        self.usage_stored_once(&stored, limits, now).await
    }

    async fn usage_stored(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        now: Nanos,
    ) -> Result<UsageView, StoreError> {
        self.usage_stored_once(subject, limits, now).await
    }

    async fn sweep(&self, _table: &LimitTable, now: Nanos) -> Result<SweepStats, StoreError> {
        with_secret!(self, self.sweep_once(now))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every call was acknowledged by Redis already; how durable that is
        // is Redis's persistence configuration.
        Ok(())
    }

    async fn secret(&self) -> Result<Arc<Secret>, StoreError> {
        self.inner.settled_secret().await
    }

    async fn adjust(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        op: AdjustOp<'_>,
        now: Nanos,
    ) -> Result<Adjusted, StoreError> {
        with_secret!(self, self.adjust_once(subject, limits, op, now))
    }

    async fn records(&self) -> Result<Records, StoreError> {
        self.inner.settled_secret().await?;
        let settled = self.inner.settled.load_full().ok_or_else(stale)?;
        let inv = self.admin_invocation("read", &settled);
        let mut items = self.admin_call(&inv).await?.into_iter();
        let version = uint(items.next())?;
        let mut records = Vec::new();
        while let Some(key) = items.next() {
            let key = string(Some(key))?;
            records.push((key, bytes(items.next())?));
        }
        records.sort();
        Ok(Records { version, records })
    }

    async fn records_version(&self) -> Result<u64, StoreError> {
        self.inner.settled_secret().await?;
        let settled = self.inner.settled.load_full().ok_or_else(stale)?;
        let inv = self.admin_invocation("version", &settled);
        uint(self.admin_call(&inv).await?.into_iter().next())
    }

    async fn swap_record(&self, swap: RecordSwap<'_>) -> Result<Swapped, StoreError> {
        with_secret!(self, self.swap_once(swap))
    }

    async fn audit(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.settled_secret().await?;
        let settled = self.inner.settled.load_full().ok_or_else(stale)?;
        let mut inv = self.admin_invocation("audit", &settled);
        inv.arg(before.unwrap_or(0)).arg(limit);
        self.admin_call(&inv)
            .await?
            .into_iter()
            .map(|item| audit_item(bytes(Some(item))?))
            .collect()
    }

    /// Redis keeps no outbox: the replica whose decision made an event
    /// delivers it from its memory.
    async fn outbox(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(Vec::new())
    }

    async fn outbox_write(&self, _entries: &[(String, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        Ok(())
    }

    fn health(&self) -> Health {
        // Whether Redis answers is seen call by call (UNAVAILABLE), and the
        // connection is re-made by itself: nothing to report here.
        Health::Writable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_spread_over_every_tag_and_stay_put() {
        let layout = Layout::new("p", 8);
        let mut seen = [0usize; 8];
        for i in 0..800 {
            let s = Subject::new(Dimension::User, format!("u{i}"));
            let (slot, key) = layout.state_key(&s);
            assert_eq!(layout.state_key(&s), (slot, key.clone()));
            assert!(key.starts_with(&format!("{{p:{slot}}}:s2:")), "{key}");
            seen[slot as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(layout.meta(), 8);
        let one = Layout::new("p", 1);
        assert_eq!(one.groups(), 1);
        assert_eq!(one.meta(), 0);
        let (slot, key) = one.state_key(&Subject::new(Dimension::Team, "t"));
        assert_eq!((slot, key.as_str()), (0, "{p}:s2:2:t"));
    }
}
