//! Prometheus metrics with the usage guide's names and labels, served on
//! their own HTTP listener.
//!
//! The `identifier` label is `dimension:alias` where the config names the
//! subject, else `api_key:<stable hash>` for keys (never the raw key) and
//! `user:<id>` / `team:<id>` (or their hashes, if configured). At most
//! `metrics.identifier_cap` distinct identifiers are labelled; the rest are
//! folded into `other`, so a flood of new keys cannot blow up cardinality.
//! The rate limit service's descriptor counters are labelled
//! `descriptor:<rule name>` or `descriptor:<hash>` (see [`identity`]).

use std::sync::Arc;
use std::time::Duration;

use std::sync::OnceLock;

use ahash::AHashMap;
use limits_core::{Action, Dimension, LimitKind, LimitStatus, Subject, SubjectLimits};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;
use tokio::net::TcpListener;

use crate::config::MetricsSettings;
use crate::identity;

pub const RATE_LIMIT_CHECKS: &str = "mercator_limits_rate_limit_checks_total";
pub const RATE_LIMIT_HITS: &str = "mercator_limits_rate_limit_hits_total";
pub const BUDGET_CHECKS: &str = "mercator_limits_budget_checks_total";
pub const BUDGET_HITS: &str = "mercator_limits_budget_hits_total";
pub const BUDGET_USAGE: &str = "mercator_limits_budget_usage_percentage";
pub const ENFORCEMENT_ACTIONS: &str = "mercator_limits_enforcement_actions_total";
pub const CHECK_DURATION: &str = "mercator_limits_check_duration_seconds";
pub const CONCURRENT_REQUESTS: &str = "mercator_limits_concurrent_requests";
pub const CONFIG_RELOADS: &str = "mercator_limits_config_reloads_total";
pub const QUEUE_DEPTH: &str = "mercator_limits_queue_depth";
pub const STORE_ERRORS: &str = "mercator_limits_store_errors_total";
pub const RESERVATIONS_OPEN: &str = "mercator_limits_reservations_open";
pub const SUBJECTS: &str = "mercator_limits_subjects";
pub const FAIL_OPEN: &str = "mercator_limits_fail_open_total";
/// The `operation` label of Envoy's `ShouldRateLimit`.
pub const RLS_OPERATION: &str = "should_rate_limit";

/// Calls refused before they reached a handler, by `reason`: `in_flight`,
/// `message_size`, `memory`.
pub const SHED: &str = "mercator_limits_shed_total";
/// 1 while the store takes writes, 0 while it refuses them (see
/// `STORE_WRITE_FAILURES` for why).
pub const STORE_WRITABLE: &str = "mercator_limits_store_writable";
/// Failed writes and flushes of the durable store, by `reason`.
pub const STORE_WRITE_FAILURES: &str = limits_store::sled::WRITE_FAILURES_METRIC;
/// Calls refused for their credential, by `code` (`unauthenticated`,
/// `permission_denied`, `unimplemented` while the admin API is off).
pub const AUTH_REFUSED: &str = "mercator_limits_auth_refused_total";
/// Recorded by the Redis store itself, per script round trip.
pub const REDIS_DURATION: &str = limits_store::redis::DURATION_METRIC;
/// Recorded by the Redis store: operations decided per commit.
pub const REDIS_BATCH: &str = limits_store::redis::BATCH_METRIC;
/// Recorded by the Redis store: how long an operation waited for its
/// commit to start.
pub const REDIS_WAIT: &str = limits_store::redis::WAIT_METRIC;

/// Buckets for the wait before a Redis commit: fine around the 200 µs it
/// is meant to stay under.
const WAIT_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_15, 0.000_2, 0.000_3, 0.000_5, 0.001,
    0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Buckets for the operations in one Redis commit.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Histogram buckets for check durations: fine below a millisecond, where
/// checks are expected to be.
const DURATION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The label value for identifiers past the cap.
pub const OTHER: &str = "other";

/// Installs the global Prometheus recorder. Call once per process.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(CHECK_DURATION.to_owned()), DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(REDIS_DURATION.to_owned()), DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(REDIS_WAIT.to_owned()), WAIT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(REDIS_BATCH.to_owned()), BATCH_BUCKETS)?
        .install_recorder()?;
    describe();
    // Error counters exist from the start at zero, so an alert on their
    // increase sees the very first error.
    for operation in [
        "check",
        "record",
        "acquire",
        "release",
        "usage",
        "sweep",
        RLS_OPERATION,
    ] {
        counter!(STORE_ERRORS, "operation" => operation).absolute(0);
    }
    for result in ["success", "failure"] {
        counter!(CONFIG_RELOADS, "result" => result).absolute(0);
    }
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        RATE_LIMIT_CHECKS,
        "Rate limit checks by identifier and result."
    );
    describe_counter!(
        RATE_LIMIT_HITS,
        "Rate limit violations by identifier and limit type."
    );
    describe_counter!(BUDGET_CHECKS, "Budget checks by identifier and result.");
    describe_counter!(
        BUDGET_HITS,
        "Budget limit violations by identifier and window."
    );
    describe_gauge!(
        BUDGET_USAGE,
        "Budget used, as a fraction of the budget (0-1)."
    );
    describe_counter!(
        ENFORCEMENT_ACTIONS,
        "Enforcement actions taken, by identifier and action."
    );
    describe_histogram!(
        CHECK_DURATION,
        metrics::Unit::Seconds,
        "Duration of limit operations."
    );
    describe_gauge!(
        CONCURRENT_REQUESTS,
        "Concurrency leases held, by identifier."
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Config reloads by result (success, failure)."
    );
    describe_gauge!(QUEUE_DEPTH, "Requests waiting in the enforcement queue.");
    describe_counter!(STORE_ERRORS, "Store operations that failed, by operation.");
    describe_gauge!(
        RESERVATIONS_OPEN,
        "Open reservations (as of the last sweep)."
    );
    describe_gauge!(SUBJECTS, "Subjects holding state (as of the last sweep).");
    describe_counter!(
        SHED,
        "Calls refused before reaching a handler, by reason (in_flight, message_size, memory)."
    );
    describe_gauge!(
        STORE_WRITABLE,
        "1 while the store takes writes, 0 while it refuses them until it recovers."
    );
    describe_counter!(
        STORE_WRITE_FAILURES,
        "Failed writes and flushes of the durable store, by reason (no_space, io)."
    );
    describe_counter!(
        FAIL_OPEN,
        "Calls allowed without a decision because the store was unavailable (storage.redis.fail_open)."
    );
    describe_counter!(
        AUTH_REFUSED,
        "Calls refused for their credential, by code (unauthenticated, permission_denied, unimplemented)."
    );
    describe_histogram!(
        REDIS_DURATION,
        "Redis round trips, by operation (commit, read, sweep, admin, ...), in seconds."
    );
    describe_histogram!(
        REDIS_BATCH,
        "Operations decided together and written in one Redis commit (per hash tag)."
    );
    describe_histogram!(
        REDIS_WAIT,
        "Time an operation waited for its Redis commit to start (the commit before it in flight), in seconds."
    );
}

/// The handles of one `identifier` label's series. Each is registered on
/// first use, so a series appears in `/metrics` only once it has been
/// recorded, as with the `counter!` macros; after that, recording is an
/// atomic operation on the kept handle instead of a registry lookup (a hash
/// and compare of the whole key) on every check.
pub struct IdMetrics {
    label: Arc<str>,
    /// Per limit kind: `budget_hits_total{window}` for budgets,
    /// `rate_limit_hits_total{limit_type}` for the others.
    hits: [OnceLock<Counter>; KINDS],
    /// Per budget kind: `budget_usage_percentage{window}`.
    usage: [OnceLock<Gauge>; KINDS],
    /// `rate_limit_checks_total{result}`: allowed, denied.
    rate_checks: [OnceLock<Counter>; 2],
    /// `budget_checks_total{result}`: allowed, denied.
    budget_checks: [OnceLock<Counter>; 2],
    /// `enforcement_actions_total{action}`, per action.
    actions: [OnceLock<Counter>; ACTIONS],
    concurrent: OnceLock<Gauge>,
}

/// The number of limit kinds.
const KINDS: usize = LimitKind::MaxConcurrent.index() + 1;
/// The number of enforcement actions.
const ACTIONS: usize = 5;

fn action_index(action: Action) -> usize {
    match action {
        Action::Allow => 0,
        Action::Block => 1,
        Action::Queue => 2,
        Action::Downgrade => 3,
        Action::Alert => 4,
    }
}

fn result(denied: bool) -> &'static str {
    if denied { "denied" } else { "allowed" }
}

impl std::fmt::Debug for IdMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdMetrics")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl IdMetrics {
    fn new(label: Arc<str>) -> IdMetrics {
        IdMetrics {
            label,
            hits: Default::default(),
            usage: Default::default(),
            rate_checks: Default::default(),
            budget_checks: Default::default(),
            actions: Default::default(),
            concurrent: OnceLock::new(),
        }
    }

    fn id(&self) -> Arc<str> {
        self.label.clone()
    }

    /// A limit of `kind` was exceeded.
    pub fn hit(&self, kind: LimitKind) {
        // A calendar budget counts as its budget's kind.
        let kind = kind.public();
        self.hits[kind.index()]
            .get_or_init(|| {
                if kind.is_budget() {
                    counter!(BUDGET_HITS, "identifier" => self.id(), "window" => window_label(kind))
                } else {
                    counter!(RATE_LIMIT_HITS, "identifier" => self.id(), "limit_type" => kind.name())
                }
            })
            .increment(1);
    }

    /// The fraction of a budget used.
    pub fn budget_usage(&self, kind: LimitKind, fraction: f64) {
        let kind = kind.public();
        self.usage[kind.index()]
            .get_or_init(
                || gauge!(BUDGET_USAGE, "identifier" => self.id(), "window" => window_label(kind)),
            )
            .set(fraction);
    }

    pub fn rate_check(&self, denied: bool) {
        self.rate_checks[usize::from(denied)]
            .get_or_init(|| {
                counter!(RATE_LIMIT_CHECKS, "identifier" => self.id(), "result" => result(denied))
            })
            .increment(1);
    }

    pub fn budget_check(&self, denied: bool) {
        self.budget_checks[usize::from(denied)]
            .get_or_init(
                || counter!(BUDGET_CHECKS, "identifier" => self.id(), "result" => result(denied)),
            )
            .increment(1);
    }

    pub fn action(&self, action: Action) {
        self.actions[action_index(action)]
            .get_or_init(|| {
                counter!(ENFORCEMENT_ACTIONS, "identifier" => self.id(), "action" => action.as_str())
            })
            .increment(1);
    }

    /// Concurrency leases held.
    pub fn concurrent(&self, held: f64) {
        self.concurrent
            .get_or_init(|| gauge!(CONCURRENT_REQUESTS, "identifier" => self.id()))
            .set(held);
    }
}

/// The subject cache's shards: each check locks (for reading) only the
/// shard of its subject, so checks of different subjects do not contend.
const SHARDS: usize = 16;

/// How many subjects the cache holds per label the cap allows (subjects
/// folded into `other` are cached too, and there may be many of them).
const SUBJECTS_PER_LABEL: usize = 16;

/// One shard of the subject cache: subjects by dimension, then id.
#[derive(Debug, Default)]
struct SubjectShard {
    by_dimension: [AHashMap<Box<str>, Cached>; limits_core::DIMENSIONS],
}

#[derive(Debug)]
struct Cached {
    /// The alias the label was made with: a reload may rename a subject.
    alias: Option<Box<str>>,
    metrics: Arc<IdMetrics>,
}

impl SubjectShard {
    fn len(&self) -> usize {
        self.by_dimension.iter().map(|m| m.len()).sum()
    }
}

/// Turns subjects into bounded, secret-free label values, and keeps the
/// metric handles of each label. Labels are shared `Arc<str>`s.
///
/// Recording a check's metrics looks its subject up in a sharded, bounded
/// cache (subject → handles) and then only touches atomics. On a miss the
/// label is made from the subject (formatting, hashing a key) and found or
/// registered under the cap; a full shard is emptied, so the cache follows
/// the current traffic however many subjects there are. The cache holds
/// subject ids (API keys among them) in memory only, as the store does;
/// they never reach a label.
#[derive(Debug)]
pub struct Labels {
    seen: RwLock<AHashMap<Arc<str>, Arc<IdMetrics>>>,
    other: Arc<IdMetrics>,
    subjects: [RwLock<SubjectShard>; SHARDS],
    shard_hasher: ahash::RandomState,
    shard_max: usize,
    durations: [OnceLock<Histogram>; OPERATIONS.len()],
    cap: usize,
    show_users: bool,
    show_teams: bool,
    /// The server secret, for the keyed hashes that name API keys; given by
    /// the handlers as the store settles it ([`Labels::set_secret`]).
    secret: arc_swap::ArcSwapOption<limits_store::Secret>,
}

/// The operations whose durations are recorded through [`Labels::observe`].
const OPERATIONS: [&str; 6] = [
    "check",
    "record",
    "acquire",
    "release",
    "usage",
    RLS_OPERATION,
];

impl Labels {
    pub fn new(settings: &MetricsSettings) -> Labels {
        let cached = settings
            .identifier_cap
            .saturating_mul(SUBJECTS_PER_LABEL)
            .max(1024);
        Labels {
            seen: RwLock::new(AHashMap::new()),
            other: Arc::new(IdMetrics::new(Arc::from(OTHER))),
            subjects: Default::default(),
            shard_hasher: ahash::RandomState::new(),
            shard_max: cached.div_ceil(SHARDS),
            durations: Default::default(),
            cap: settings.identifier_cap,
            show_users: settings.show_user_ids,
            show_teams: settings.show_team_ids,
            secret: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// Gives the labels the server secret (a new one replaces the old:
    /// labels already made keep theirs).
    pub fn set_secret(&self, secret: &Arc<limits_store::Secret>) {
        let current = self.secret.load();
        if current.as_ref().is_none_or(|c| !Arc::ptr_eq(c, secret)) {
            self.secret.store(Some(secret.clone()));
        }
    }

    /// The `identifier` label of a subject.
    pub fn identifier(&self, subject: &Subject, limits: &SubjectLimits) -> Arc<str> {
        self.with(subject, limits, |m| m.label.clone())
    }

    /// Runs `f` with the metric handles of a subject's label.
    pub fn with<R>(
        &self,
        subject: &Subject,
        limits: &SubjectLimits,
        f: impl FnOnce(&IdMetrics) -> R,
    ) -> R {
        let dim = subject.dimension.index();
        let id = subject.id.as_str();
        let shard =
            &self.subjects[(self.shard_hasher.hash_one((dim, id)) % SHARDS as u64) as usize];
        if let Some(c) = shard.read().by_dimension[dim].get(id)
            && c.alias.as_deref() == limits.alias()
        {
            return f(&c.metrics);
        }
        let metrics = self.by_label(subject, limits);
        let out = f(&metrics);
        let mut shard = shard.write();
        if shard.len() >= self.shard_max {
            *shard = SubjectShard::default();
        }
        shard.by_dimension[dim].insert(
            Box::from(id),
            Cached {
                alias: limits.alias().map(Box::from),
                metrics,
            },
        );
        out
    }

    /// The handles of a subject's label, made from the subject: registered
    /// if the cap allows, else `other`.
    fn by_label(&self, subject: &Subject, limits: &SubjectLimits) -> Arc<IdMetrics> {
        let hide = match subject.dimension {
            Dimension::ApiKey => true,
            Dimension::User => !self.show_users,
            Dimension::Team | Dimension::Org => !self.show_teams,
        };
        // Handlers settle the secret before any store call, so this is
        // there; without it no keyed name can be made, and the subject
        // counts under the overflow label.
        let secret = self.secret.load();
        let Some(secret) = secret.as_deref() else {
            return self.other.clone();
        };
        let label = identity::display(secret, subject, limits, hide);
        if let Some(known) = self.seen.read().get(label.as_str()) {
            return known.clone();
        }
        let mut seen = self.seen.write();
        if let Some(known) = seen.get(label.as_str()) {
            return known.clone();
        }
        if seen.len() >= self.cap {
            return self.other.clone();
        }
        let label: Arc<str> = Arc::from(label);
        let metrics = Arc::new(IdMetrics::new(label.clone()));
        seen.insert(label, metrics.clone());
        metrics
    }

    /// Records how long an operation took (`check_duration_seconds`).
    pub fn observe(&self, operation: &'static str, started: std::time::Instant) {
        let seconds = started.elapsed().as_secs_f64();
        match OPERATIONS.iter().position(|o| *o == operation) {
            Some(i) => self.durations[i]
                .get_or_init(|| histogram!(CHECK_DURATION, "operation" => OPERATIONS[i]))
                .record(seconds),
            None => histogram!(CHECK_DURATION, "operation" => operation).record(seconds),
        }
    }
}

/// Counts a call refused for its credential.
pub fn auth_refused(code: tonic::Code) {
    let code = match code {
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::Unimplemented => "unimplemented",
        _ => "other",
    };
    metrics::counter!(AUTH_REFUSED, "code" => code).increment(1);
}

/// Counts a call refused by the request guard.
pub fn shed(reason: &'static str) {
    metrics::counter!(SHED, "reason" => reason).increment(1);
}

fn window_label(kind: LimitKind) -> &'static str {
    kind.name()
}

/// Records the metrics of one decided check (or usage record): checks and
/// hits per family, and the budget usage gauges.
pub fn record_statuses<L: std::ops::Deref<Target = SubjectLimits>>(
    labels: &Labels,
    subjects: &[Subject],
    limits: &[L],
    statuses: &[LimitStatus],
    count_checks: bool,
) {
    for (i, (subject, lim)) in subjects.iter().zip(limits).enumerate() {
        if lim.is_unlimited() {
            continue;
        }
        labels.with(subject, lim, |m| {
            let mut rate_hit = false;
            let mut budget_hit = false;
            let mut has_rate = false;
            let mut has_budget = false;
            for s in statuses.iter().filter(|s| s.subject == i) {
                if s.kind.is_budget() {
                    has_budget = true;
                    m.budget_usage(s.kind, s.used as f64 / s.limit as f64);
                    if s.exceeded {
                        budget_hit = true;
                        m.hit(s.kind);
                    }
                } else {
                    has_rate = true;
                    if s.exceeded {
                        rate_hit = true;
                        m.hit(s.kind);
                    }
                }
            }
            if !count_checks {
                return;
            }
            if has_rate {
                m.rate_check(rate_hit);
            }
            if has_budget {
                m.budget_check(budget_hit);
            }
        });
    }
}

/// Scrapes served at once; more connections wait in the backlog.
const MAX_SCRAPERS: usize = 64;
/// How long a scraper may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open, idle or not.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves `/metrics` on `listener` until the task is dropped, with hyper:
/// at most [`MAX_SCRAPERS`] connections at once, each with a header
/// timeout and a lifetime, so that held-open connections cannot exhaust
/// file descriptors or spin the accept loop.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
    let mut backoff = Duration::from_millis(5);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let socket = match listener.accept().await {
            Ok((socket, _)) => {
                backoff = Duration::from_millis(5);
                socket
            }
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::debug!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handle = handle.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&req, &handle)) }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(permit);
        });
    }
}

fn respond<B>(
    req: &hyper::Request<B>,
    handle: &PrometheusHandle,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let text = |status: http::StatusCode, kind: &'static str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, kind)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .expect("a valid response")
    };
    match (req.method(), req.uri().path()) {
        (&http::Method::GET | &http::Method::HEAD, "/metrics") => text(
            http::StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        (_, "/metrics") => text(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".to_owned(),
        ),
        _ => text(
            http::StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(cap: usize) -> MetricsSettings {
        MetricsSettings {
            identifier_cap: cap,
            ..MetricsSettings::default()
        }
    }

    /// Labels with a secret, as the server gives them once it has one.
    fn labels(cap: usize) -> Labels {
        let labels = Labels::new(&settings(cap));
        labels.set_secret(&Arc::new(
            limits_store::Secret::new(b"a server secret of some length").unwrap(),
        ));
        labels
    }

    #[test]
    fn without_a_secret_an_api_key_counts_as_other() {
        let labels = Labels::new(&settings(10));
        let key = Subject::new(Dimension::ApiKey, "sk-secret");
        assert_eq!(&*labels.identifier(&key, &SubjectLimits::UNLIMITED), OTHER);
    }

    #[test]
    fn identifiers_past_the_cap_fold_into_other() {
        let labels = labels(2);
        let none = SubjectLimits::UNLIMITED;
        let a = labels.identifier(&Subject::new(Dimension::Team, "a"), &none);
        let b = labels.identifier(&Subject::new(Dimension::Team, "b"), &none);
        assert_eq!((&*a, &*b), ("team:a", "team:b"));
        let c = labels.identifier(&Subject::new(Dimension::Team, "c"), &none);
        assert_eq!(&*c, OTHER, "a third identifier is past the cap");
        // Known identifiers keep their label.
        let again = labels.identifier(&Subject::new(Dimension::Team, "a"), &none);
        assert_eq!(&*again, "team:a");
    }

    #[test]
    fn api_keys_are_labelled_by_alias_or_hash() {
        let labels = labels(10);
        let key = Subject::new(Dimension::ApiKey, "sk-secret");
        let shown = labels.identifier(&key, &SubjectLimits::UNLIMITED);
        assert!(!shown.contains("sk-secret"));
        let aliased = SubjectLimits::default().with_alias("prod");
        assert_eq!(&*labels.identifier(&key, &aliased), "api_key:prod");
    }

    #[test]
    fn a_cached_subject_follows_a_new_alias() {
        let labels = labels(10);
        let key = Subject::new(Dimension::ApiKey, "sk-secret");
        let old = SubjectLimits::default().with_alias("old");
        let new = SubjectLimits::default().with_alias("new");
        assert_eq!(&*labels.identifier(&key, &old), "api_key:old");
        assert_eq!(&*labels.identifier(&key, &old), "api_key:old");
        assert_eq!(&*labels.identifier(&key, &new), "api_key:new");
        assert_eq!(&*labels.identifier(&key, &new), "api_key:new");
    }

    #[test]
    fn the_subject_cache_is_bounded_and_keeps_answering() {
        let labels = labels(2);
        let none = SubjectLimits::UNLIMITED;
        for round in 0..2 {
            for i in 0..5_000 {
                let id = labels.identifier(&Subject::new(Dimension::Team, i.to_string()), &none);
                let want = match i {
                    0 => "team:0",
                    1 => "team:1",
                    _ => OTHER,
                };
                assert_eq!(&*id, want, "round {round}, subject {i}");
            }
        }
        for shard in &labels.subjects {
            assert!(shard.read().len() <= labels.shard_max);
        }
    }
}
