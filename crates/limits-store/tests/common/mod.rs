//! Shared fixtures for the store tests: limits, subjects, a fixed start
//! instant and thin wrappers over the `Store` trait's calls.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::num::{NonZeroU32, NonZeroU64};
use std::path::Path;
use std::time::Duration;

use limits_core::{
    AcquireOutcome, Attempt, CheckOutcome, Dimension, LimitKind, LimitStatus, NanoUsd, Nanos,
    Policy, RecordOutcome, Subject, SubjectLimits,
};
use limits_store::{Call, CheckOp, RecordOp, SledOptions, SledStore, Store, StoreError};

/// A start instant that is a whole number of 30-day windows since the epoch,
/// so every window's buckets start exactly here.
pub const T0: Nanos = Nanos(656 * 30 * 86_400 * 1_000_000_000);

pub fn at(secs: u64) -> Nanos {
    T0.saturating_add(Nanos::from_secs(secs))
}

/// Whole dollars in nano-dollars.
pub fn usd(dollars: u64) -> u64 {
    dollars * 1_000_000_000
}

/// Limits from `(kind, limit)` pairs; budgets are in nano-dollars.
pub fn limits(pairs: &[(LimitKind, u64)]) -> SubjectLimits {
    let mut l = SubjectLimits::default();
    for &(kind, limit) in pairs {
        if kind == LimitKind::MaxConcurrent {
            let n = u32::try_from(limit).expect("a small concurrency limit");
            l.set_max_concurrent(Some(NonZeroU32::new(n).expect("non-zero")));
        } else {
            l.set(kind, Some(NonZeroU64::new(limit).expect("non-zero")));
        }
    }
    l
}

pub fn key(id: &str) -> Subject {
    Subject::new(Dimension::ApiKey, id)
}

pub fn user(id: &str) -> Subject {
    Subject::new(Dimension::User, id)
}

pub fn team(id: &str) -> Subject {
    Subject::new(Dimension::Team, id)
}

pub fn org(id: &str) -> Subject {
    Subject::new(Dimension::Org, id)
}

pub fn policy() -> Policy {
    Policy::default()
}

/// A sled store in `dir` with a short group interval, so suites run fast.
pub fn open_sled(dir: &Path, max_entries: usize, now: Nanos) -> SledStore {
    let options = SledOptions {
        max_entries,
        snapshot_interval: Duration::from_millis(1),
        ..SledOptions::default()
    };
    SledStore::open(&dir.join("store"), options, now).expect("the store opens")
}

/// One request's subjects and their limits, with the trait's calls wrapped.
pub struct Req<'a> {
    pub subjects: Vec<Subject>,
    pub limits: Vec<&'a SubjectLimits>,
}

impl<'a> Req<'a> {
    pub fn new(pairs: &[(Subject, &'a SubjectLimits)]) -> Req<'a> {
        Req {
            subjects: pairs.iter().map(|(s, _)| s.clone()).collect(),
            limits: pairs.iter().map(|(_, l)| *l).collect(),
        }
    }

    pub async fn check<S: Store>(
        &self,
        store: &S,
        cost: u64,
        tokens: u64,
        reserve_ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<CheckOutcome, StoreError> {
        self.check_split(store, cost, (tokens, tokens, tokens), reserve_ttl, now)
            .await
    }

    /// A check with its token estimate as `(total, input, output)`.
    pub async fn check_split<S: Store>(
        &self,
        store: &S,
        cost: u64,
        (tokens, input, output): (u64, u64, u64),
        reserve_ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<CheckOutcome, StoreError> {
        let attempts = [Attempt {
            model: "gpt-4".into(),
            cost: NanoUsd(cost),
            tokens,
            input,
            output,
            skip: 0,
        }];
        let policy = policy();
        let op = CheckOp {
            attempts: &attempts,
            reserve_ttl,
            tag: 0,
            policy: &policy,
        };
        store
            .check(Call {
                subjects: &self.subjects,
                limits: &self.limits,
                op,
                now,
            })
            .await
    }

    pub async fn record<S: Store>(
        &self,
        store: &S,
        reservation: Option<u64>,
        cost: u64,
        tokens: u64,
        now: Nanos,
    ) -> Result<RecordOutcome, StoreError> {
        self.record_split(store, reservation, cost, (tokens, 0, 0), now)
            .await
    }

    /// A record with its tokens as `(total, input, output)`.
    pub async fn record_split<S: Store>(
        &self,
        store: &S,
        reservation: Option<u64>,
        cost: u64,
        (tokens, input, output): (u64, u64, u64),
        now: Nanos,
    ) -> Result<RecordOutcome, StoreError> {
        let policy = policy();
        self.send_record(
            store,
            RecordOp {
                reservation,
                cost: NanoUsd(cost),
                tokens,
                input,
                output,
                progress: None,
                sequence: 0,
                policy: &policy,
            },
            now,
        )
        .await
    }

    /// A record of a streamed request: with `hold_until`, a progress
    /// record of the usage so far; without, the final one.
    pub async fn record_stream<S: Store>(
        &self,
        store: &S,
        reservation: u64,
        (cost, tokens): (u64, u64),
        hold_until: Option<Nanos>,
        sequence: u32,
        now: Nanos,
    ) -> Result<RecordOutcome, StoreError> {
        let policy = policy();
        let progress = hold_until.map(|hold_until| limits_core::Progress { hold_until, tag: 0 });
        self.send_record(
            store,
            RecordOp {
                reservation: Some(reservation),
                cost: NanoUsd(cost),
                tokens,
                input: 0,
                output: tokens,
                progress,
                sequence,
                policy: &policy,
            },
            now,
        )
        .await
    }

    async fn send_record<S: Store>(
        &self,
        store: &S,
        op: RecordOp<'_>,
        now: Nanos,
    ) -> Result<RecordOutcome, StoreError> {
        store
            .record(Call {
                subjects: &self.subjects,
                limits: &self.limits,
                op,
                now,
            })
            .await
    }

    pub async fn hit<S: Store>(
        &self,
        store: &S,
        charges: &[limits_core::hit::Charge],
        now: Nanos,
    ) -> Result<limits_core::hit::HitOutcome, StoreError> {
        store
            .hit(Call {
                subjects: &self.subjects,
                limits: &self.limits,
                op: charges,
                now,
            })
            .await
    }

    pub async fn acquire<S: Store>(
        &self,
        store: &S,
        ttl: Nanos,
        now: Nanos,
    ) -> Result<(AcquireOutcome, Option<(u64, Nanos)>), StoreError> {
        let out = store
            .acquire(Call {
                subjects: &self.subjects,
                limits: &self.limits,
                op: ttl,
                now,
            })
            .await?;
        let lease = out.lease().map(|l| (l.id, l.expires_at));
        Ok((out, lease))
    }
}

/// What one subject's window holds now, via the usage view.
pub async fn used<S: Store>(
    store: &S,
    subject: &Subject,
    limits: &SubjectLimits,
    kind: LimitKind,
    now: Nanos,
) -> u64 {
    let view = store.usage(subject, limits, now).await.expect("usage");
    status(&view.statuses, kind).used
}

pub fn status(statuses: &[LimitStatus], kind: LimitKind) -> &LimitStatus {
    statuses
        .iter()
        .find(|s| s.kind == kind)
        .unwrap_or_else(|| panic!("no status for {kind:?} in {statuses:?}"))
}

/// A `redis-server` of the test's own on a free loopback port, killed on
/// drop. A missing `redis-server` fails the test: the Redis backend is
/// never silently left untested.
pub struct RedisServer {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = free_port();
        RedisServer::start_on(port)
    }

    /// Starts a server on `port` (a restart after [`stop`](Self::stop)).
    pub fn start_on(port: u16) -> RedisServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", dir.path().to_str().expect("a UTF-8 path")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect(
                "redis-server must be installed for the Redis tests \
                 (apt-get install redis-server; .ci/run does this)",
            );
        let mut server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        server.wait_ready();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Drops every key, as a Redis that lost its data.
    pub fn flush_all(&self) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.write_all(b"FLUSHALL\r\n").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"+OK\r\n");
    }

    /// Polls PING until the server answers, or fails after a deadline.
    fn wait_ready(&mut self) {
        use std::io::{Read, Write};
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("redis-server exited at start-up: {status}");
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
            if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not answer PING in time"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A plain connection, for tests that look at (or rewrite) the keys a
    /// store keeps, as another version of limitsd would.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("a valid URL")
            .get_multiplexed_async_connection()
            .await
            .expect("a connection to the test's redis-server")
    }

    /// Kills the server and waits for it to be gone.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A fresh store on this server with its own key prefix, deciding by
    /// the caller's `now` (the suite's fake clock).
    pub fn store(&self, max_entries: usize) -> limits_store::RedisStore {
        self.store_with_clock(max_entries, true)
    }

    pub fn store_with_clock(&self, max_entries: usize, fake: bool) -> limits_store::RedisStore {
        self.store_on_prefix(&unique_prefix(), max_entries, fake)
    }

    /// A store on `prefix` with room for `max_entries` subjects and as
    /// many rate limit service counters, as `MemoryStore::new` has.
    pub fn store_on_prefix(
        &self,
        prefix: &str,
        max_entries: usize,
        fake: bool,
    ) -> limits_store::RedisStore {
        self.store_with_bounds(prefix, max_entries, max_entries, fake)
    }

    /// A fresh store whose subjects are spread over `shards` hash tags,
    /// each with `max_entries` subjects and counters (fake clock).
    pub fn spread_store(&self, max_entries: usize, shards: u16) -> limits_store::RedisStore {
        let options = limits_store::RedisOptions {
            url: self.url(),
            key_prefix: unique_prefix(),
            max_entries: max_entries * usize::from(shards),
            max_counters: max_entries * usize::from(shards),
            shards,
            command_timeout: Duration::from_secs(5),
            ..limits_store::RedisOptions::default()
        };
        limits_store::RedisStore::open(&options)
            .expect("a valid Redis config")
            .with_fake_clock()
    }

    /// A store on `prefix` with its own bounds for subjects and counters.
    pub fn store_with_bounds(
        &self,
        prefix: &str,
        max_entries: usize,
        max_counters: usize,
        fake: bool,
    ) -> limits_store::RedisStore {
        let options = limits_store::RedisOptions {
            url: self.url(),
            key_prefix: prefix.to_owned(),
            max_entries,
            max_counters,
            command_timeout: Duration::from_secs(5),
            ..limits_store::RedisOptions::default()
        };
        let store = limits_store::RedisStore::open(&options).expect("a valid Redis config");
        if fake { store.with_fake_clock() } else { store }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago: bind 127.0.0.1:0 and let it go.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A key prefix no other store of this process uses.
pub fn unique_prefix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
