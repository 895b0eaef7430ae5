//! The Redis backend: several limitsd replicas sharing one exact set of
//! counters. Every operation (a [`Call`]) over the subjects of a request is one call of one
//! Lua script (`redis/limits.lua`, sent as EVALSHA and loaded again on
//! NOSCRIPT), which Redis runs atomically: the whole decision — expiry,
//! every window of every subject, all-or-nothing commit — happens inside
//! it, so two replicas can never both admit the last unit of a limit.
//!
//! # What runs where
//!
//! The script is a port of limits-core's window, state, engine and hit
//! logic: the sparse 60-bucket windows with conservative expiry,
//! `retry_after`, reservation holds with settled tombstones, leases. It
//! returns compact integer arrays; this module turns them back into the
//! core's outcome types, and does the parts of a decision that only read
//! the result (picking the worst denial, the alert flag, the action) with
//! the same rules as the engine, so the server cannot tell the backends
//! apart.
//!
//! # Time
//!
//! Decisions use Redis's clock (`TIME` inside the script), not the `now`
//! the caller passes: replicas whose own clocks disagree by minutes still
//! agree on every window, because there is only one clock. The one
//! exception is [`RedisStore::with_fake_clock`], which makes the script use
//! the caller's `now` instead, so the behaviour suite can drive time by
//! hand; it is meant for tests.
//!
//! # Exactness
//!
//! Lua numbers are doubles. Amounts travel and are stored as two integer
//! limbs (`hi * 1e9 + lo`), so a budget of $1e9 (1e18 nano-dollars) and any
//! sum of small costs stay exact; instants are (seconds, nanoseconds)
//! pairs, and the script never forms an absolute nanosecond count (see the
//! script's header). Durations handed to the script (TTLs) are capped at
//! 2^52 ns, about 52 days.
//!
//! # Keys
//!
//! Every key starts with the configured prefix as a hash tag,
//! `{prefix}:...`:
//!
//! - `{p}:s:<dimension>:<id>` — one subject's state (msgpack), with a
//!   `PEXPIRE` a little past its last content, so a dead replica's holds
//!   and leases free themselves;
//! - `{p}:idx` — sorted set of every state key by the instant it becomes
//!   idle: the sweep's work list;
//! - `{p}:idx:counters` — the members of `{p}:idx` that are the rate limit
//!   service's counters (ids with the [`INTERNAL`](crate::INTERNAL)
//!   marker), with the same instants: counted against `max_counters`,
//!   while the rest of `{p}:idx` is counted against `max_entries`, so a
//!   flood of counters (one per client address) cannot lock out API keys;
//! - `{p}:ids` — the id counter (`INCR`): reservation and lease ids are
//!   its values, so every replica recognises every replica's ids;
//! - `{p}:leases` / `{p}:lease` — lease expiries (sorted set) and lease id
//!   -> subjects (hash), for `release` by id.
//!
//! The counter index is a subset of `{p}:idx` rather than a split of it, so
//! that `{p}:idx` means what it meant to earlier versions, which counted
//! counters as subjects and knew no counter index. Their data is read as it
//! is: a counter they wrote keeps its state and counts as a subject until
//! it is next written (then it joins the counter index, even past
//! `max_counters`: what is kept is never dropped for a bound) or is swept; a
//! counter one of them deletes during a rolling upgrade leaves a counter
//! index entry that the next sweep removes.
//!
//! # Redis Cluster
//!
//! Because every key carries the same hash tag, all of limitsd's keys live
//! in one slot, so on Redis Cluster every operation is exactly as atomic as
//! on a single node: all-or-nothing across the request's subjects, with no
//! compensation step that a crash could interrupt. The price is that one
//! shard (a primary and its replicas) holds all of one prefix's state; the
//! cluster gives failover, not write scaling. Deployments that need more
//! can run several limitsd fleets with different prefixes (different
//! slots), each of which is exact within itself.
//!
//! # Failures
//!
//! Any Redis error — refused connection, timeout, `LOADING`, a failover in
//! progress — is [`StoreError::Unavailable`]; nothing is guessed. The
//! connection manager reconnects in the background, so service resumes
//! when Redis does, without a restart. Redis's own persistence settings
//! (AOF, replicas) decide how durable an acknowledged `RecordUsage` is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use limits_core::engine::{
    AcquireOutcome, Admission, CheckOutcome, Denial, RecordOutcome, Verdict, worse,
};
use limits_core::hit::{Charge, HitOutcome};
use limits_core::{
    Action, BUCKETS, Dimension, EnforcementMode, Hold, LeaseSlot, LimitKind, LimitStatus,
    LimitTable, Nanos, Policy, Resource, Subject, SubjectLimits,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{IntoConnectionInfo, Script, ScriptInvocation, Value};
use tokio::sync::OnceCell;

use crate::secret::Secret;
use crate::{
    AdjustOp, Adjusted, AuditEntry, Call, CheckOp, Health, RecordOp, RecordSwap, Records, Store,
    StoreError, Swapped, SweepStats, UsageView,
};
use limits_core::Adjustment;

/// The histogram of script round trips, by operation.
pub const DURATION_METRIC: &str = "mercator_limits_redis_duration_seconds";

/// The longest TTL handed to the script, so that `now + ttl` stays exact
/// in a double (about 52 days).
const MAX_TTL: u64 = 1 << 52;

/// Subjects or lease entries a sweep call handles at once, so that no
/// single script call blocks Redis for long.
const SWEEP_BATCH: usize = 500;

/// Above this many subjects the sweep does not count open reservations (a
/// gauge): counting reads every subject's state, and every replica sweeps.
pub const COUNT_LIMIT: usize = 100_000;

const NANOS: u64 = 1_000_000_000;

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

/// The key names of one prefix.
#[derive(Debug)]
struct Keys {
    index: String,
    counter_index: String,
    ids: String,
    lease_expiries: String,
    lease_index: String,
    subject_prefix: String,
    /// The store's own secret, when none is configured.
    secret: String,
    /// The fingerprint of the secret the data is keyed with.
    fingerprint: String,
    /// Admin records (hash), their version, the audit list and its
    /// sequence.
    records: String,
    records_version: String,
    audit: String,
    audit_seq: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            index: format!("{{{prefix}}}:idx"),
            counter_index: format!("{{{prefix}}}:idx:counters"),
            ids: format!("{{{prefix}}}:ids"),
            lease_expiries: format!("{{{prefix}}}:leases"),
            lease_index: format!("{{{prefix}}}:lease"),
            subject_prefix: format!("{{{prefix}}}:s:"),
            secret: format!("{{{prefix}}}:secret"),
            fingerprint: format!("{{{prefix}}}:secret-fp"),
            records: format!("{{{prefix}}}:admin:records"),
            records_version: format!("{{{prefix}}}:admin:version"),
            audit: format!("{{{prefix}}}:admin:audit"),
            audit_seq: format!("{{{prefix}}}:admin:audit-seq"),
        }
    }

    fn subject(&self, s: &Subject) -> String {
        format!("{}{}:{}", self.subject_prefix, s.dimension.index(), s.id)
    }
}

/// The Redis store. Cheap to share: calls multiplex over one connection.
pub struct RedisStore {
    conn: Conn,
    script: Script,
    /// Admin records and the audit trail (`redis/admin.lua`).
    admin_script: Script,
    keys: Keys,
    max_entries: usize,
    max_counters: usize,
    command_timeout: Duration,
    fake_clock: bool,
    /// The highest id this instance has seen issued, for the advisory
    /// [`Store::reservation_issued`]; the script's own check is
    /// authoritative.
    highest_id: AtomicU64,
    configured_secret: Option<Secret>,
    /// The secret in use, once settled with Redis.
    secret: ArcSwapOption<Secret>,
    /// Settles one at a time.
    settling: tokio::sync::Mutex<()>,
}

// By hand: the connection types are not Debug, and nothing here is secret
// except the URL's password, which is not kept.
impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.keys)
            .field("cluster", &matches!(self.conn, Conn::Cluster(_)))
            .field("max_entries", &self.max_entries)
            .field("max_counters", &self.max_counters)
            .field("fake_clock", &self.fake_clock)
            .finish_non_exhaustive()
    }
}

/// The script, with the window constants of limits-core prepended so that
/// the two can never disagree about bucket widths.
fn script_source() -> String {
    let mut s = String::from("local K = {\n");
    for (i, kind) in LimitKind::WINDOWED.iter().enumerate() {
        assert_eq!(kind.index(), i, "windowed kinds are 0..8 in order");
        let length = kind.window().expect("a windowed kind").0;
        let width = (length / BUCKETS).max(1);
        assert!(length < 1 << 53 && width < 1 << 53);
        if width.is_multiple_of(NANOS) {
            s.push_str(&format!(
                "  {{ L = {length}, w = {width}, k = {} }},\n",
                width / NANOS
            ));
        } else {
            // The bucket of now = S * 1e9 + N is found as a * S + the
            // bucket of b * S + N, which must stay below 2^53 for any S
            // below 2^34 (the year 2514).
            assert!(width < NANOS);
            let (a, b) = (NANOS / width, NANOS % width);
            assert!(b < 1 << 19, "a bucket width the script cannot use exactly");
            s.push_str(&format!(
                "  {{ L = {length}, w = {width}, a = {a}, b = {b} }},\n"
            ));
        }
    }
    s.push_str("}\n");
    s.push_str(include_str!("redis/limits.lua"));
    s
}

/// When the amounts of bucket `index` leave a window of `kind`, as
/// `RollingWindow` computes it.
fn bucket_expiry(kind: LimitKind, index: u64) -> Nanos {
    let length = kind.window().expect("a windowed kind").0;
    let width = (length / BUCKETS).max(1);
    Nanos(
        index
            .saturating_add(1)
            .saturating_mul(width)
            .saturating_add(length),
    )
}

fn hi(v: u64) -> u64 {
    v / NANOS
}

fn lo(v: u64) -> u64 {
    v % NANOS
}

fn join(hi: i64, lo: i64) -> u64 {
    let v = u128::from(hi.max(0) as u64) * u128::from(NANOS) + u128::from(lo.max(0) as u64);
    u64::try_from(v).unwrap_or(u64::MAX)
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

/// Reads a script reply item by item.
struct Reply {
    items: std::vec::IntoIter<Value>,
}

impl Reply {
    fn new(v: Value) -> Result<Reply, StoreError> {
        match v {
            Value::Array(items) => Ok(Reply {
                items: items.into_iter(),
            }),
            other => Err(internal(format!("unexpected script reply {other:?}"))),
        }
    }

    fn int(&mut self) -> Result<i64, StoreError> {
        match self.items.next() {
            Some(Value::Int(n)) => Ok(n),
            other => Err(internal(format!("unexpected script reply item {other:?}"))),
        }
    }

    fn uint(&mut self) -> Result<u64, StoreError> {
        Ok(self.int()?.max(0) as u64)
    }

    fn amount(&mut self) -> Result<u64, StoreError> {
        let h = self.int()?;
        let l = self.int()?;
        Ok(join(h, l))
    }

    fn instant(&mut self) -> Result<Nanos, StoreError> {
        let s = self.uint()?;
        let n = self.uint()?;
        Ok(Nanos(s.saturating_mul(NANOS).saturating_add(n)))
    }

    /// A retry in ns, or `None` for never (-1).
    fn retry(&mut self) -> Result<Option<Nanos>, StoreError> {
        let r = self.int()?;
        Ok((r >= 0).then_some(Nanos(r as u64)))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, StoreError> {
        match self.items.next() {
            Some(Value::BulkString(b)) => Ok(b),
            Some(Value::SimpleString(s)) => Ok(s.into_bytes()),
            other => Err(internal(format!("unexpected script reply item {other:?}"))),
        }
    }

    fn is_empty(&self) -> bool {
        self.items.len() == 0
    }

    fn string(&mut self) -> Result<String, StoreError> {
        match self.items.next() {
            Some(Value::BulkString(b)) => String::from_utf8(b).map_err(internal),
            Some(Value::SimpleString(s)) => Ok(s),
            other => Err(internal(format!("unexpected script reply item {other:?}"))),
        }
    }

    /// The status of every limit of every subject, in the order the limits
    /// were sent.
    fn statuses(
        &mut self,
        limits: &[&SubjectLimits],
        exceeded: &[(usize, LimitKind)],
    ) -> Result<Vec<LimitStatus>, StoreError> {
        let mut out = Vec::with_capacity(limits.iter().map(|l| l.all().count()).sum());
        for (i, lim) in limits.iter().enumerate() {
            for (kind, limit) in lim.all() {
                let used = self.amount()?;
                let r1 = self.int()?;
                let r2 = self.int()?;
                let reset_at = if r1 < 0 {
                    None
                } else if kind == LimitKind::MaxConcurrent {
                    Some(Nanos(
                        (r1 as u64)
                            .saturating_mul(NANOS)
                            .saturating_add(r2.max(0) as u64),
                    ))
                } else {
                    Some(bucket_expiry(kind, r1 as u64))
                };
                out.push(LimitStatus {
                    subject: i,
                    kind,
                    limit,
                    used,
                    reset_at,
                    exceeded: exceeded.contains(&(i, kind)),
                });
            }
        }
        Ok(out)
    }
}

/// Whether a subject is one of the rate limit service's counters, which
/// have their own bound (as the embedded stores' `Class`).
fn is_counter(subject: &Subject) -> bool {
    subject.dimension == Dimension::ApiKey && subject.id.starts_with(crate::INTERNAL)
}

/// engine's `alert_flag`.
fn alert_flag(policy: &Policy, statuses: &[LimitStatus], pending_cost: u64) -> bool {
    statuses
        .iter()
        .filter(|s| s.kind.is_budget())
        .any(|s| policy.crosses_alert(s.used.saturating_add(pending_cost), s.limit))
}

fn status_code(reply: &mut Reply) -> Result<i64, StoreError> {
    reply.int()
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
        Ok(RedisStore {
            conn,
            script: Script::new(&script_source()),
            admin_script: Script::new(include_str!("redis/admin.lua")),
            keys: Keys::new(&options.key_prefix),
            max_entries: options.max_entries,
            max_counters: options.max_counters,
            command_timeout: options.command_timeout,
            fake_clock: false,
            highest_id: AtomicU64::new(0),
            configured_secret: options.secret.clone(),
            secret: ArcSwapOption::empty(),
            settling: tokio::sync::Mutex::new(()),
        })
    }

    /// The secret in use, settled with Redis on first contact (see
    /// [`settle_secret`](Self::settle_secret)).
    async fn settled_secret(&self) -> Result<Arc<Secret>, StoreError> {
        if let Some(s) = self.secret.load_full() {
            return Ok(s);
        }
        self.settle_secret().await
    }

    /// Agrees with Redis on the secret that keys API keys: the configured
    /// one, or, without one, the one the first replica to reach Redis made
    /// and kept there (under the key prefix). Its fingerprint is kept beside
    /// it, and every script call checks the caller's against it, so that
    /// replicas with different secrets (or a replica that settled before
    /// Redis lost its data) can never split a key's state: a call that finds
    /// another fingerprint, or none, settles again and retries.
    async fn settle_secret(&self) -> Result<Arc<Secret>, StoreError> {
        let _one_at_a_time = self.settling.lock().await;
        let secret = match &self.configured_secret {
            Some(s) => s.clone(),
            None => {
                // Ours if Redis has none (first replica, or data lost).
                let ours = self
                    .secret
                    .load_full()
                    .map_or_else(Secret::generate, |s| (*s).clone());
                let _: Value = self
                    .command(
                        redis::cmd("SET")
                            .arg(&self.keys.secret)
                            .arg(ours.root().as_slice())
                            .arg("NX"),
                    )
                    .await?;
                let stored: Vec<u8> = self
                    .command(redis::cmd("GET").arg(&self.keys.secret))
                    .await?;
                let root: [u8; 32] = stored
                    .try_into()
                    .map_err(|_| internal("the stored secret has the wrong length"))?;
                Secret::from_root(root)
            }
        };
        let fp = hex::encode(secret.fingerprint());
        let _: Value = self
            .command(
                redis::cmd("SET")
                    .arg(&self.keys.fingerprint)
                    .arg(&fp)
                    .arg("NX"),
            )
            .await?;
        let stored: Option<String> = self
            .command(redis::cmd("GET").arg(&self.keys.fingerprint))
            .await?;
        if stored.as_deref() != Some(fp.as_str()) {
            return Err(internal(format!(
                "the data under this key prefix is keyed with another secret (fingerprint \
                 {}, not {fp}): every replica needs the same security.secret",
                stored.unwrap_or_default()
            )));
        }
        let secret = Arc::new(secret);
        self.secret.store(Some(secret.clone()));
        Ok(secret)
    }

    /// One plain command, bounded by the command timeout.
    async fn command<T: redis::FromRedisValue>(
        &self,
        cmd: &mut redis::Cmd,
    ) -> Result<T, StoreError> {
        let run = async {
            match &self.conn {
                Conn::Single(m) => cmd.query_async::<T>(&mut m.clone()).await,
                Conn::Cluster(_) => {
                    let mut c = self.cluster_conn().await?;
                    cmd.query_async::<T>(&mut c).await
                }
            }
            .map_err(redis_error)
        };
        match tokio::time::timeout(self.command_timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(unavailable(format!(
                "no answer within {:?}",
                self.command_timeout
            ))),
        }
    }

    /// The subjects' state keys (API keys by their keyed hash), checking
    /// the request's shape.
    fn keys_of(
        &self,
        secret: &Secret,
        subjects: &[Subject],
        limits: &[&SubjectLimits],
    ) -> Vec<String> {
        assert!(
            (1..=crate::MAX_SUBJECTS).contains(&subjects.len()) && limits.len() == subjects.len(),
            "1 to {} subjects, each with its limits",
            crate::MAX_SUBJECTS
        );
        self.stored_keys(secret, subjects)
    }

    /// The subjects' state keys, API keys by their keyed hash.
    fn stored_keys(&self, secret: &Secret, subjects: &[Subject]) -> Vec<String> {
        subjects
            .iter()
            .map(|s| self.keys.subject(&secret.stored_subject(s)))
            .collect()
    }

    /// Runs `source` instead of the decision script: lets tests prove that a
    /// reply this build cannot read is an internal error, never an outage
    /// that fail-open would let through.
    #[doc(hidden)]
    pub fn with_script(mut self, source: &str) -> RedisStore {
        self.script = Script::new(source);
        self
    }

    /// Makes the script decide with the `now` each call is given instead of
    /// Redis's clock. For tests, which move a fake clock by hand: two
    /// replicas with fake clocks do not share time.
    pub fn with_fake_clock(mut self) -> RedisStore {
        self.fake_clock = true;
        self
    }

    /// Whether Redis answers now (and the script is loaded).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = async {
            match &self.conn {
                Conn::Single(m) => self.script.load_async(&mut m.clone()).await,
                Conn::Cluster(_) => {
                    let mut c = self.cluster_conn().await?;
                    self.script.load_async(&mut c).await
                }
            }
            .map_err(unavailable)
        };
        match tokio::time::timeout(self.command_timeout, result).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(unavailable(format!(
                "no answer within {:?}",
                started.elapsed()
            ))),
        }
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

    /// Runs the script, timing it and bounding it by the command timeout.
    async fn call(
        &self,
        operation: &'static str,
        inv: &ScriptInvocation<'_>,
    ) -> Result<Reply, StoreError> {
        let started = Instant::now();
        let run = async {
            match &self.conn {
                Conn::Single(m) => inv.invoke_async::<Value>(&mut m.clone()).await,
                Conn::Cluster(_) => {
                    let mut c = self.cluster_conn().await?;
                    inv.invoke_async::<Value>(&mut c).await
                }
            }
            .map_err(redis_error)
        };
        let result = match tokio::time::timeout(self.command_timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(unavailable(format!(
                "no answer within {:?}",
                self.command_timeout
            ))),
        };
        metrics::histogram!(DURATION_METRIC, "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        let value = result?;
        if let Value::Array(items) = &value
            && matches!(items.first(), Some(Value::Int(5 | 6)))
        {
            return Err(StoreError::Unavailable(STALE_SECRET.to_owned()));
        }
        Reply::new(value)
    }

    /// A script invocation with the common keys and the clock arguments.
    fn invocation(
        &self,
        op: &str,
        subjects: &[String],
        now: Nanos,
        secret: &Secret,
    ) -> ScriptInvocation<'_> {
        let mut inv = self.script.prepare_invoke();
        inv.key(&self.keys.index)
            .key(&self.keys.ids)
            .key(&self.keys.lease_expiries)
            .key(&self.keys.lease_index)
            .key(&self.keys.fingerprint)
            .key(&self.keys.counter_index);
        for k in subjects {
            inv.key(k);
        }
        inv.arg(op);
        if self.fake_clock {
            inv.arg(now.0 / NANOS).arg(now.0 % NANOS);
        } else {
            inv.arg("").arg("");
        }
        inv.arg(hex::encode(secret.fingerprint()));
        inv
    }

    /// The invocation every subject operation's script starts with: the
    /// store's and the subjects' keys, the clock and the secret's
    /// fingerprint, the bounds of subjects and of counters, and each
    /// subject's class and limits.
    fn subject_invocation<O>(
        &self,
        script: &'static str,
        secret: &Secret,
        call: &Call<'_, O>,
    ) -> ScriptInvocation<'_> {
        let keys = self.keys_of(secret, call.subjects, call.limits);
        let mut inv = self.invocation(script, &keys, call.now, secret);
        inv.arg(self.max_entries).arg(self.max_counters);
        Self::push_subjects(&mut inv, call.subjects, call.limits);
        inv
    }

    /// Runs a subject operation's script and reads its status: 0 goes on
    /// to the answer, 1 is the subject bound and 7 the counter bound, 2 is
    /// `unknown` (an id never issued) for the operations that name one;
    /// anything else is a reply this build cannot read.
    async fn run(
        &self,
        script: &'static str,
        inv: &ScriptInvocation<'_>,
        unknown: Option<StoreError>,
    ) -> Result<Reply, StoreError> {
        let mut reply = self.call(script, inv).await?;
        match (status_code(&mut reply)?, unknown) {
            (0, _) => Ok(reply),
            (1, _) => Err(StoreError::Full(self.max_entries)),
            (7, _) => Err(StoreError::CountersFull(self.max_counters)),
            (2, Some(unknown)) => Err(unknown),
            (c, _) => Err(internal(format!("script status {c}"))),
        }
    }

    /// Each subject's class (1 for a rate limit service counter, which the
    /// script counts against its own bound) and limits. The class is read
    /// from the raw id, as the embedded stores read it; the stored id keeps
    /// the marker too, but the script is not asked to parse key names.
    fn push_subjects(
        inv: &mut ScriptInvocation<'_>,
        subjects: &[Subject],
        limits: &[&SubjectLimits],
    ) {
        for (subject, lim) in subjects.iter().zip(limits) {
            inv.arg(u8::from(is_counter(subject)));
            inv.arg(lim.all().count());
            for (kind, limit) in lim.all() {
                inv.arg(kind.index()).arg(hi(limit)).arg(lo(limit));
            }
        }
    }

    fn saw_id(&self, id: u64) {
        self.highest_id.fetch_max(id, Ordering::Relaxed);
    }

    fn check_reply(
        &self,
        mut reply: Reply,
        limits: &[&SubjectLimits],
        attempts: &[limits_core::Attempt],
        policy: &Policy,
    ) -> Result<CheckOutcome, StoreError> {
        let allowed = reply.int()? == 1;
        let attempt = reply.uint()? as usize;
        let reservation = reply.uint()?;
        let evals = reply.uint()?;
        // As engine::check: the worst denial of each attempt, the soonest
        // any attempt could fit, and the last attempt's denials.
        let mut soonest: Option<Option<Nanos>> = None;
        let mut last: (Option<Denial>, Vec<(usize, LimitKind)>) = (None, Vec::new());
        let mut admitted = None;
        for idx in 0..evals as usize {
            let count = reply.uint()?;
            let mut worst = None;
            let mut exceeded = Vec::new();
            for _ in 0..count {
                let subject = reply.uint()? as usize;
                let kind = LimitKind::WINDOWED[reply.uint()? as usize];
                let retry_after = reply.retry()?;
                worst = Some(worse(
                    worst,
                    Denial {
                        subject,
                        kind,
                        retry_after,
                    },
                ));
                exceeded.push((subject, kind));
            }
            match worst {
                None => admitted = Some(idx),
                Some(d) => {
                    soonest = Some(match soonest {
                        None => d.retry_after,
                        Some(prev) => match (prev, d.retry_after) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        },
                    });
                    last = (Some(d), exceeded);
                }
            }
        }
        let (denial, exceeded, action) = match admitted {
            Some(idx) if idx > 0 => (None, Vec::new(), Action::Downgrade),
            Some(_) => (None, Vec::new(), Action::Allow),
            // Alert mode lets an over-limit request through, flagged.
            None if allowed => (last.0, last.1, Action::Alert),
            None => (last.0, last.1, Action::Block),
        };
        let reservation = (reservation > 0).then_some(reservation);
        let statuses = reply.statuses(limits, &exceeded)?;
        let pending = if reservation.is_some() {
            0
        } else {
            attempts[attempt].cost.0
        };
        let alert = alert_flag(policy, &statuses, pending);
        let action = if allowed && alert && action == Action::Allow {
            Action::Alert
        } else {
            action
        };
        let verdict = match (allowed, denial) {
            (true, over) => Verdict::Allowed { reservation, over },
            (false, Some(denial)) => Verdict::Denied {
                denial,
                retry_after: soonest.flatten(),
            },
            (false, None) => return Err(internal("a denial that names no limit")),
        };
        Ok(CheckOutcome {
            verdict,
            action,
            attempt,
            statuses,
            alert,
        })
    }
}

fn mode_code(mode: EnforcementMode) -> u8 {
    match mode {
        EnforcementMode::Block | EnforcementMode::Queue => 0,
        EnforcementMode::Downgrade => 1,
        EnforcementMode::Alert => 2,
    }
}

fn ttl_arg(ttl: Nanos) -> u64 {
    ttl.0.min(MAX_TTL)
}

impl RedisStore {
    async fn check_once(
        &self,
        secret: &Secret,
        call: Call<'_, CheckOp<'_>>,
    ) -> Result<CheckOutcome, StoreError> {
        let (limits, op) = (call.limits, call.op);
        let CheckOp {
            attempts,
            reserve_ttl,
            tag,
            policy,
        } = op;
        let mut inv = self.subject_invocation("check", secret, &call);
        inv.arg(mode_code(policy.mode));
        match reserve_ttl {
            Some(ttl) => inv.arg(ttl_arg(ttl)),
            None => inv.arg(-1),
        };
        inv.arg(tag);
        inv.arg(attempts.len());
        for a in attempts {
            inv.arg(hi(a.cost.0))
                .arg(lo(a.cost.0))
                .arg(hi(a.tokens))
                .arg(lo(a.tokens));
        }
        let reply = self.run("check", &inv, None).await?;
        let out = self.check_reply(reply, limits, attempts, policy)?;
        if let Some(id) = out.reservation() {
            self.saw_id(id);
        }
        Ok(out)
    }

    async fn record_once(
        &self,
        secret: &Secret,
        call: Call<'_, RecordOp<'_>>,
    ) -> Result<RecordOutcome, StoreError> {
        let (limits, op) = (call.limits, call.op);
        let RecordOp {
            reservation,
            cost,
            tokens,
            policy,
        } = op;
        let mut inv = self.subject_invocation("record", secret, &call);
        inv.arg(reservation.unwrap_or(0))
            .arg(hi(cost.0))
            .arg(lo(cost.0))
            .arg(hi(tokens))
            .arg(lo(tokens));
        let mut reply = self
            .run("record", &inv, Some(StoreError::UnknownReservation))
            .await?;
        let duplicate = reply.int()? == 1;
        let held = [reply.int()?, reply.int()?, reply.int()?, reply.int()?];
        let settled = (held[0] >= 0).then(|| (join(held[0], held[1]), join(held[2], held[3])));
        let statuses = reply.statuses(limits, &[])?;
        let alert = alert_flag(policy, &statuses, 0);
        Ok(RecordOutcome {
            duplicate,
            settled,
            statuses,
            alert,
        })
    }

    async fn acquire_once(
        &self,
        secret: &Secret,
        call: Call<'_, Nanos>,
    ) -> Result<AcquireOutcome, StoreError> {
        let (limits, ttl) = (call.limits, call.op);
        let mut inv = self.subject_invocation("acquire", secret, &call);
        inv.arg(ttl_arg(ttl));
        let mut reply = self.run("acquire", &inv, None).await?;
        let acquired = reply.int()? == 1;
        let id = reply.uint()?;
        let expires_at = reply.instant()?;
        let count = reply.uint()?;
        let mut worst = None;
        let mut exceeded = Vec::new();
        for _ in 0..count {
            let subject = reply.uint()? as usize;
            let retry_after = reply.retry()?;
            let kind = LimitKind::MaxConcurrent;
            worst = Some(worse(
                worst,
                Denial {
                    subject,
                    kind,
                    retry_after,
                },
            ));
            exceeded.push((subject, kind));
        }
        let statuses = reply
            .statuses(limits, &exceeded)?
            .into_iter()
            .filter(|s| s.kind == LimitKind::MaxConcurrent)
            .collect();
        let admission = match (acquired, worst) {
            (true, _) => {
                self.saw_id(id);
                Admission::Acquired(LeaseSlot { id, expires_at })
            }
            (false, Some(denial)) => Admission::Full(denial),
            (false, None) => return Err(internal("a full subject that names no limit")),
        };
        Ok(AcquireOutcome {
            admission,
            statuses,
        })
    }

    async fn hit_once(
        &self,
        secret: &Secret,
        call: Call<'_, &[Charge]>,
    ) -> Result<HitOutcome, StoreError> {
        let (limits, charges) = (call.limits, call.op);
        assert_eq!(charges.len(), call.subjects.len(), "one charge per subject");
        let mut inv = self.subject_invocation("hit", secret, &call);
        for c in charges {
            inv.arg(hi(c.requests))
                .arg(lo(c.requests))
                .arg(hi(c.tokens))
                .arg(lo(c.tokens));
        }
        let mut reply = self.run("hit", &inv, None).await?;
        let allowed = reply.int()? == 1;
        let count = reply.uint()?;
        // As hit::hit picks its denial.
        let mut worst: Option<Denial> = None;
        let mut exceeded = Vec::new();
        for _ in 0..count {
            let subject = reply.uint()? as usize;
            let kind = LimitKind::WINDOWED[reply.uint()? as usize];
            let retry_after = reply.retry()?;
            let d = Denial {
                subject,
                kind,
                retry_after,
            };
            worst = Some(match worst {
                Some(w) if w.retry_after.is_none() => w,
                Some(w) if d.retry_after.is_some() && w.retry_after >= d.retry_after => w,
                _ => d,
            });
            exceeded.push((subject, kind));
        }
        let statuses = reply
            .statuses(limits, &exceeded)?
            .into_iter()
            .filter(|s| matches!(s.kind.resource(), Resource::Requests | Resource::Tokens))
            .collect();
        if allowed != worst.is_none() {
            return Err(internal("a hit's answer and its denials disagree"));
        }
        Ok(HitOutcome {
            denial: worst,
            statuses,
        })
    }

    async fn release_once(
        &self,
        secret: &Secret,
        lease_id: u64,
        now: Nanos,
    ) -> Result<bool, StoreError> {
        // The first call names no subjects; if the lease is still indexed
        // the script answers with its subjects' keys and the second call
        // declares them (scripts must name the keys they write).
        let mut keys: Vec<String> = Vec::new();
        for _ in 0..2 {
            let mut inv = self.invocation("release", &keys, now, secret);
            inv.arg(lease_id);
            let mut reply = self.call("release", &inv).await?;
            match status_code(&mut reply)? {
                0 => return Ok(reply.int()? == 1),
                3 => return Err(StoreError::UnknownLease),
                4 => {
                    keys.clear();
                    while let Ok(k) = reply.string() {
                        keys.push(k);
                    }
                }
                c => return Err(internal(format!("script status {c}"))),
            }
        }
        Err(unavailable("the lease's subjects changed during release"))
    }

    async fn usage_once(
        &self,
        secret: &Secret,
        subject: &Subject,
        limits: &SubjectLimits,
        now: Nanos,
    ) -> Result<UsageView, StoreError> {
        let stored = secret.stored_subject(subject);
        self.usage_stored_once(secret, &stored, limits, now).await
    }

    async fn usage_stored_once(
        &self,
        secret: &Secret,
        stored: &Subject,
        limits: &SubjectLimits,
        now: Nanos,
    ) -> Result<UsageView, StoreError> {
        let keys = [self.keys.subject(stored)];
        let subject = stored;
        let mut inv = self.invocation("usage", &keys, now, secret);
        Self::push_subjects(&mut inv, std::slice::from_ref(subject), &[limits]);
        let mut reply = self.call("usage", &inv).await?;
        match status_code(&mut reply)? {
            0 => {}
            c => return Err(internal(format!("script status {c}"))),
        }
        read_usage(&mut reply, limits)
    }

    async fn adjust_once(
        &self,
        secret: &Secret,
        subject: &Subject,
        limits: &SubjectLimits,
        op: AdjustOp<'_>,
        now: Nanos,
    ) -> Result<Adjusted, StoreError> {
        // The subject is in its stored form already.
        let key = self.keys.subject(subject);
        let mut inv = self.invocation("adjust", &[key], now, secret);
        inv.key(&self.keys.audit).key(&self.keys.audit_seq);
        inv.arg(self.max_entries).arg(self.max_counters);
        Self::push_subjects(&mut inv, std::slice::from_ref(subject), &[limits]);
        inv.arg(op.audit_keep.max(1))
            .arg(op.audit)
            .arg(op.changes.len());
        for &(kind, change) in op.changes {
            let (code, amount) = match change {
                Adjustment::Debit(a) => (0, a),
                Adjustment::Credit(a) => (1, a),
                Adjustment::Reset => (2, 0),
            };
            inv.arg(kind.index())
                .arg(code)
                .arg(hi(amount))
                .arg(lo(amount));
        }
        let mut reply = self.run("adjust", &inv, None).await?;
        let audit_seq = reply.uint()?;
        let applied = op
            .changes
            .iter()
            .map(|_| reply.amount())
            .collect::<Result<Vec<_>, _>>()?;
        let usage = read_usage(&mut reply, limits)?;
        Ok(Adjusted {
            applied,
            usage,
            audit_seq,
        })
    }

    /// An admin script invocation: its keys, the operation and the
    /// caller's fingerprint.
    fn admin_invocation(&self, op: &str, secret: &Secret) -> ScriptInvocation<'_> {
        let mut inv = self.admin_script.prepare_invoke();
        inv.key(&self.keys.records)
            .key(&self.keys.records_version)
            .key(&self.keys.audit)
            .key(&self.keys.audit_seq)
            .key(&self.keys.fingerprint);
        inv.arg(op).arg(hex::encode(secret.fingerprint()));
        inv
    }

    /// Runs a read of the admin script and checks its status (0).
    async fn admin_call(&self, inv: &ScriptInvocation<'_>) -> Result<Reply, StoreError> {
        let mut reply = self.call("admin", inv).await?;
        match reply.int()? {
            0 => Ok(reply),
            c => Err(internal(format!("admin script status {c}"))),
        }
    }

    async fn swap_once(
        &self,
        secret: &Secret,
        swap: RecordSwap<'_>,
    ) -> Result<Swapped, StoreError> {
        let mut inv = self.admin_invocation("swap", secret);
        inv.arg(swap.key)
            .arg(u8::from(swap.expect.is_some()))
            .arg(swap.expect.unwrap_or_default())
            .arg(u8::from(swap.new.is_some()))
            .arg(swap.new.unwrap_or_default())
            .arg(u8::from(swap.audit.is_some()))
            .arg(swap.audit.unwrap_or_default())
            .arg(swap.audit_keep.max(1));
        let mut reply = self.call("admin", &inv).await?;
        match reply.int()? {
            0 => Ok(Swapped::Done {
                audit_seq: reply.uint()?,
                version: reply.uint()?,
            }),
            1 => match reply.int()? {
                0 => Ok(Swapped::Conflict(None)),
                _ => Ok(Swapped::Conflict(Some(reply.bytes()?))),
            },
            c => Err(internal(format!("admin script status {c}"))),
        }
    }
}

/// The rest of a `usage` reply (after its status): statuses, holds and
/// leases.
fn read_usage(reply: &mut Reply, limits: &SubjectLimits) -> Result<UsageView, StoreError> {
    let statuses = reply.statuses(&[limits], &[])?;
    let holds_count = reply.uint()?;
    let mut holds = Vec::with_capacity(holds_count as usize);
    for _ in 0..holds_count {
        let id = reply.uint()?;
        let cost = reply.amount()?;
        let tokens = reply.amount()?;
        let expires_at = reply.instant()?;
        let tag = u32::try_from(reply.uint()?).map_err(internal)?;
        holds.push(Hold {
            id,
            cost,
            tokens,
            expires_at,
            settled: false,
            tag,
        });
    }
    let leases_count = reply.uint()?;
    let mut leases = Vec::with_capacity(leases_count as usize);
    for _ in 0..leases_count {
        let id = reply.uint()?;
        let expires_at = reply.instant()?;
        leases.push(LeaseSlot { id, expires_at });
    }
    Ok(UsageView {
        statuses,
        holds,
        leases,
    })
}

/// An audit list item, "sequence:event".
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

impl RedisStore {
    async fn sweep_once(&self, secret: &Secret, now: Nanos) -> Result<SweepStats, StoreError> {
        // Idle subjects and expired lease entries, a batch at a time; the
        // limits are not needed: a subject's idle instant is in the index.
        let mut stats = SweepStats::default();
        loop {
            let mut inv = self.invocation("sweep", &[], now, secret);
            inv.arg(SWEEP_BATCH);
            let mut reply = self.call("sweep", &inv).await?;
            status_code(&mut reply)?;
            let idle = reply.uint()? as usize;
            let leases = reply.uint()? as usize;
            stats.dropped += idle;
            stats.subjects = reply.uint()? as usize;
            stats.live_leases = reply.uint()? as usize;
            let late_counters = reply.uint()? as usize;
            if idle < SWEEP_BATCH && leases < SWEEP_BATCH && late_counters < SWEEP_BATCH {
                break;
            }
        }
        // Open reservations, for the gauge: a batch of subjects at a time,
        // so the count is approximate while other calls run; skipped (0)
        // past COUNT_LIMIT subjects.
        let mut from = 0;
        while stats.subjects <= COUNT_LIMIT {
            let mut inv = self.invocation("count", &[], now, secret);
            inv.arg(from).arg(SWEEP_BATCH);
            let mut reply = self.call("sweep", &inv).await?;
            status_code(&mut reply)?;
            let seen = reply.uint()? as usize;
            stats.open_reservations += reply.uint()? as usize;
            from += seen;
            if seen < SWEEP_BATCH {
                break;
            }
        }
        Ok(stats)
    }
}

/// Runs `$call` with the settled secret; when the script finds that Redis
/// keeps another secret's fingerprint (or none, after losing its data),
/// settles again and runs it once more.
macro_rules! with_secret {
    ($store:expr, |$secret:ident| $call:expr) => {{
        let $secret = $store.settled_secret().await?;
        match $call.await {
            Err(e) if is_stale(&e) => {
                let $secret = $store.settle_secret().await?;
                $call.await
            }
            other => other,
        }
    }};
}

impl Store for RedisStore {
    async fn check(&self, call: Call<'_, CheckOp<'_>>) -> Result<CheckOutcome, StoreError> {
        with_secret!(self, |secret| self.check_once(&secret, call))
    }

    async fn record(&self, call: Call<'_, RecordOp<'_>>) -> Result<RecordOutcome, StoreError> {
        with_secret!(self, |secret| self.record_once(&secret, call))
    }

    async fn acquire(&self, call: Call<'_, Nanos>) -> Result<AcquireOutcome, StoreError> {
        with_secret!(self, |secret| self.acquire_once(&secret, call))
    }

    async fn hit(&self, call: Call<'_, &[Charge]>) -> Result<HitOutcome, StoreError> {
        with_secret!(self, |secret| self.hit_once(&secret, call))
    }

    async fn release(&self, lease_id: u64, now: Nanos) -> Result<bool, StoreError> {
        with_secret!(self, |secret| self.release_once(&secret, lease_id, now))
    }

    async fn usage(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        now: Nanos,
    ) -> Result<UsageView, StoreError> {
        with_secret!(self, |secret| self
            .usage_once(&secret, subject, limits, now))
    }

    async fn usage_stored(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        now: Nanos,
    ) -> Result<UsageView, StoreError> {
        with_secret!(self, |secret| self
            .usage_stored_once(&secret, subject, limits, now))
    }

    async fn sweep(&self, _table: &LimitTable, now: Nanos) -> Result<SweepStats, StoreError> {
        with_secret!(self, |secret| self.sweep_once(&secret, now))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every call was acknowledged by Redis already; how durable that is
        // is Redis's persistence configuration.
        Ok(())
    }

    async fn secret(&self) -> Result<Arc<Secret>, StoreError> {
        self.settled_secret().await
    }

    async fn adjust(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        op: AdjustOp<'_>,
        now: Nanos,
    ) -> Result<Adjusted, StoreError> {
        with_secret!(self, |secret| self
            .adjust_once(&secret, subject, limits, op, now))
    }

    async fn records(&self) -> Result<Records, StoreError> {
        let secret = self.settled_secret().await?;
        let inv = self.admin_invocation("read", &secret);
        let mut reply = self.admin_call(&inv).await?;
        let version = reply.uint()?;
        let mut records = Vec::new();
        while !reply.is_empty() {
            let key = reply.string()?;
            records.push((key, reply.bytes()?));
        }
        records.sort();
        Ok(Records { version, records })
    }

    async fn records_version(&self) -> Result<u64, StoreError> {
        let secret = self.settled_secret().await?;
        let inv = self.admin_invocation("version", &secret);
        self.admin_call(&inv).await?.uint()
    }

    async fn swap_record(&self, swap: RecordSwap<'_>) -> Result<Swapped, StoreError> {
        with_secret!(self, |secret| self.swap_once(&secret, swap))
    }

    async fn audit(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let secret = self.settled_secret().await?;
        let mut inv = self.admin_invocation("audit", &secret);
        inv.arg(before.unwrap_or(0)).arg(limit);
        let mut reply = self.admin_call(&inv).await?;
        let mut out = Vec::new();
        while !reply.is_empty() {
            out.push(audit_item(reply.bytes()?)?);
        }
        Ok(out)
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
    fn the_script_gets_core_window_constants() {
        let s = script_source();
        assert!(s.contains("{ L = 1000000000, w = 16666666, a = 60, b = 40 }"));
        assert!(s.contains("{ L = 2592000000000000, w = 43200000000000, k = 43200 }"));
    }

    #[test]
    fn limbs_round_trip_and_saturate() {
        for v in [0, 1, NANOS - 1, NANOS, 1_000_000_000_000_000_000, u64::MAX] {
            assert_eq!(join(hi(v) as i64, lo(v) as i64), v);
        }
        assert_eq!(join(i64::MAX, 0), u64::MAX);
    }

    #[test]
    fn bucket_expiry_matches_the_rolling_window() {
        let kind = LimitKind::RequestsPerSecond;
        let length = kind.window().unwrap();
        let mut w = limits_core::RollingWindow::new();
        let t = Nanos(1_700_000_000_123_456_789);
        w.add(length, t, 1);
        let index = w.buckets()[0].0;
        assert_eq!(w.reset_at(length), Some(bucket_expiry(kind, index)));
    }
}
