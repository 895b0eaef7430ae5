//! The `LimitsService` gRPC handlers: validate, resolve limits, ask the
//! store, and turn the engine's decision into a response with its headers.
//! A denial is an `OK` answer; only bad input and store failures are errors.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use limits_core::engine::CheckOutcome;
use limits_core::headers::{Headers, Name, budget_summary, header_values};
use limits_core::{
    Action, Dimension, EnforcementMode, LimitKind, LimitStatus, LimitTable, NanoUsd, Nanos,
    Subject, SubjectLimits, queue_wait,
};
use limits_store::{Op, Outcome, Secret, Store, StoreError};
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::identity;
use crate::metrics::{self as m, Labels};
use crate::pb;
use crate::queue::Queues;
use crate::validate;

/// The wall clock, read once per request at the boundary; the engine below
/// only ever sees this value.
pub fn now() -> Nanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(Nanos::from)
        .unwrap_or(Nanos::ZERO)
}

/// Maps store failures onto gRPC codes. What a client does with each:
/// - `NOT_FOUND`: the id is wrong (never issued here); fix the caller, do not
///   retry.
/// - `RESOURCE_EXHAUSTED`: the store is at `max_entries`; back off, and an
///   operator should raise the bound.
/// - `UNAVAILABLE`: the store could not decide or persist; retry with
///   backoff, or apply the gateway's failure policy. Never treated as allow.
/// - `INTERNAL`: the store answered something this build cannot read; an
///   operator must look. Never treated as allow, even with fail-open.
pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::UnknownReservation => {
            Status::not_found("reservation_id: unknown reservation (never issued by this service)")
        }
        StoreError::UnknownLease => {
            Status::not_found("lease_id: unknown lease (never issued by this service)")
        }
        StoreError::Full(_) | StoreError::CountersFull(_) => {
            Status::resource_exhausted(e.to_string())
        }
        StoreError::Unavailable(_) => Status::unavailable(e.to_string()),
        // Never UNAVAILABLE: fail-open applies to an outage, not to an
        // answer nobody understands.
        StoreError::Internal(_) => Status::internal(e.to_string()),
    }
}

/// Lets a log line through at most once a second, saying how many were
/// held back since: a store outage fails every call, and a line per call
/// would flood the logs (and cost the check path) exactly when they matter.
#[derive(Debug)]
pub struct Throttle {
    last: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            last: std::sync::atomic::AtomicU64::new(0),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(lines held back)` when a line may go out now.
    pub fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = now().0 / 1_000_000_000;
        let last = self.last.load(Relaxed);
        if now > last
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Relaxed));
        }
        self.held.fetch_add(1, Relaxed);
        None
    }
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::new()
    }
}

static STORE_FAILURES: Throttle = Throttle::new();
static FAILED_OPEN: Throttle = Throttle::new();

/// Counts and logs a store failure of `operation`, then maps it.
pub(crate) fn store_failed(operation: &'static str, e: StoreError) -> Status {
    match e {
        StoreError::Internal(_) => {
            metrics::counter!(m::STORE_ERRORS, "operation" => operation).increment(1);
            if let Some(held_back) = STORE_FAILURES.allow() {
                tracing::error!(operation, error = %e, held_back, "store answered what cannot be read");
            }
        }
        StoreError::Unavailable(_) | StoreError::Full(_) | StoreError::CountersFull(_) => {
            metrics::counter!(m::STORE_ERRORS, "operation" => operation).increment(1);
            if let Some(held_back) = STORE_FAILURES.allow() {
                tracing::warn!(operation, error = %e, held_back, "store operation failed");
            }
        }
        StoreError::UnknownReservation | StoreError::UnknownLease => {}
    }
    store_status(e)
}

/// Whether the config says to allow when the store cannot be reached.
fn fail_open(config: &Config) -> bool {
    matches!(&config.storage, crate::config::Storage::Redis(r) if r.fail_open)
}

/// Counts and logs a call allowed because the store was unavailable.
fn failed_open(operation: &'static str, status: &Status) {
    metrics::counter!(m::FAIL_OPEN, "operation" => operation).increment(1);
    if let Some(held_back) = FAILED_OPEN.allow() {
        tracing::warn!(
            operation,
            error = status.message(),
            held_back,
            "store unavailable: allowed (fail-open)"
        );
    }
}

/// The reason given with a fail-open answer.
pub const FAIL_OPEN_REASON: &str = "store unavailable: fail-open";

/// Everything the handlers share.
#[derive(Debug)]
pub struct Shared<S> {
    pub store: S,
    /// The running config; swapped whole on reload, so a request sees one
    /// consistent version.
    pub config: ArcSwap<Config>,
    pub queues: Queues,
    /// Bounded, secret-free metric labels.
    pub labels: Labels,
    /// Calls being handled now; shutdown waits for these, not for idle
    /// client connections (which a gateway may hold open indefinitely).
    pub in_flight: InFlight,
}

/// Counts calls in progress and wakes a waiter when none are left.
#[derive(Debug, Default)]
pub struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Held for the length of one call.
#[derive(Debug)]
pub struct CallGuard<'a>(&'a InFlight);

impl InFlight {
    pub fn enter(&self) -> CallGuard<'_> {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        CallGuard(self)
    }

    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once no call is in progress.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// The gRPC service.
#[derive(Debug)]
pub struct LimitsSvc<S> {
    shared: Arc<Shared<S>>,
}

impl<S> LimitsSvc<S> {
    pub fn new(shared: Arc<Shared<S>>) -> LimitsSvc<S> {
        LimitsSvc { shared }
    }
}

/// The limits of each subject, in request order.
fn resolve<'a>(table: &'a LimitTable, subjects: &[Subject]) -> Vec<&'a SubjectLimits> {
    subjects
        .iter()
        .map(|s| table.resolve(s.dimension, &s.id))
        .collect()
}

fn pb_dimension(d: Dimension) -> pb::Dimension {
    match d {
        Dimension::ApiKey => pb::Dimension::ApiKey,
        Dimension::User => pb::Dimension::User,
        Dimension::Team => pb::Dimension::Team,
    }
}

fn pb_subject(s: &Subject) -> pb::Subject {
    pb::Subject {
        dimension: pb_dimension(s.dimension) as i32,
        id: s.id.clone(),
    }
}

fn pb_kind(k: LimitKind) -> pb::LimitKind {
    match k {
        LimitKind::BudgetHourly => pb::LimitKind::BudgetHourly,
        LimitKind::BudgetDaily => pb::LimitKind::BudgetDaily,
        LimitKind::BudgetMonthly => pb::LimitKind::BudgetMonthly,
        LimitKind::RequestsPerSecond => pb::LimitKind::RequestsPerSecond,
        LimitKind::RequestsPerMinute => pb::LimitKind::RequestsPerMinute,
        LimitKind::RequestsPerHour => pb::LimitKind::RequestsPerHour,
        LimitKind::TokensPerMinute => pb::LimitKind::TokensPerMinute,
        LimitKind::TokensPerHour => pb::LimitKind::TokensPerHour,
        LimitKind::MaxConcurrent => pb::LimitKind::MaxConcurrent,
    }
}

fn pb_action(a: Action) -> pb::Action {
    match a {
        Action::Allow => pb::Action::Allow,
        Action::Block => pb::Action::Block,
        Action::Queue => pb::Action::Queue,
        Action::Downgrade => pb::Action::Downgrade,
        Action::Alert => pb::Action::Alert,
    }
}

fn pb_duration(n: Nanos) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (n.0 / 1_000_000_000) as i64,
        nanos: (n.0 % 1_000_000_000) as i32,
    }
}

fn pb_timestamp(n: Nanos) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (n.0 / 1_000_000_000) as i64,
        nanos: (n.0 % 1_000_000_000) as i32,
    }
}

/// A limit amount in its wire unit: USD for budgets, a count otherwise.
fn amount(kind: LimitKind, v: u64) -> f64 {
    if kind.is_budget() {
        NanoUsd(v).as_usd()
    } else {
        v as f64
    }
}

fn pb_status(s: &LimitStatus, subjects: &[Subject]) -> pb::LimitStatus {
    pb::LimitStatus {
        subject: Some(pb_subject(&subjects[s.subject])),
        kind: pb_kind(s.kind) as i32,
        window: s.kind.window().map(pb_duration),
        limit: amount(s.kind, s.limit),
        used: amount(s.kind, s.used),
        remaining: amount(s.kind, s.remaining()),
        reset_at: s.reset_at.map(pb_timestamp),
        exceeded: s.exceeded,
    }
}

fn pb_budget(statuses: &[LimitStatus], subjects: &[Subject]) -> Option<pb::BudgetSummary> {
    budget_summary(statuses).map(|b| pb::BudgetSummary {
        subject: Some(pb_subject(&subjects[b.subject])),
        kind: pb_kind(b.kind) as i32,
        limit_usd: NanoUsd(b.limit).as_usd(),
        used_usd: NanoUsd(b.used).as_usd(),
        remaining_usd: NanoUsd(b.remaining()).as_usd(),
        percentage: b.used as f64 / b.limit as f64,
        reset_at: b.reset_at.map(pb_timestamp),
    })
}

/// The metadata keys of the headers, by [`Name::index`], made once
/// (`MetadataKey::from_static` checks the name on every call; a clone of
/// a static key copies a pointer).
static METADATA_KEYS: LazyLock<[MetadataKey<Ascii>; Name::ALL.len()]> =
    LazyLock::new(|| Name::ALL.map(|name| MetadataKey::from_static(name.lowercase())));

/// Puts the headers both in the message and in the response metadata, so a
/// proxy can copy them without parsing the message. The metadata values
/// share one buffer (one allocation for all of them, not one each).
fn with_headers<T>(
    message: T,
    hdrs: &Headers,
    set: impl FnOnce(&mut T, std::collections::HashMap<String, String>),
) -> Response<T> {
    let mut metadata = MetadataMap::with_capacity(hdrs.len());
    let mut map = std::collections::HashMap::with_capacity(hdrs.len());
    let mut text =
        bytes::BytesMut::with_capacity(hdrs.iter().map(|(_, v)| v.as_bytes().len()).sum());
    for (_, value) in hdrs.iter() {
        text.extend_from_slice(value.as_bytes());
    }
    let text = text.freeze();
    let mut at = 0;
    for (name, value) in hdrs.iter() {
        let len = value.as_bytes().len();
        if let Ok(v) = MetadataValue::try_from(text.slice(at..at + len)) {
            metadata.insert(METADATA_KEYS[name.index()].clone(), v);
        }
        at += len;
        map.insert(name.as_str().to_owned(), value.as_str().to_owned());
    }
    let mut message = message;
    set(&mut message, map);
    let mut response = Response::new(message);
    *response.metadata_mut() = metadata;
    response
}

/// The caller's deadline, from the `grpc-timeout` header.
///
/// The value is the caller's: it is parsed strictly (at most 8 ASCII digits
/// and a unit, as the gRPC wire format allows) and every step saturates, so
/// no value can panic. A header that does not parse, or a deadline too far
/// away to be represented, is no deadline at all.
fn caller_deadline(metadata: &MetadataMap) -> Option<Instant> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(raw)?;
    // Answer a little before the deadline so the answer reaches the caller
    // in time.
    let margin = (timeout / 20).clamp(Duration::from_millis(5), Duration::from_millis(100));
    Instant::now().checked_add(timeout.saturating_sub(margin))
}

/// A `grpc-timeout` value: `TimeoutValue TimeoutUnit`, the value at most 8
/// digits.
fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    let (digits, unit) = raw.split_at_checked(raw.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How the queue ended for a check in queue mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    /// Not queued: allowed at once, or not in queue mode.
    No,
    /// Waited, then admitted.
    Admitted,
    /// Could never fit within the queue timeout: denied at once.
    WontFit,
    /// The subject's line already held `queue_depth` requests.
    Full(usize),
    /// The queue timeout or the caller's deadline came first.
    TimedOut,
    /// The service is shutting down.
    Closed,
}

impl<S: Store> Shared<S> {
    /// The server secret, as the store has settled it (at once for the
    /// embedded stores, on first contact for Redis, and again should Redis
    /// lose its data).
    pub async fn secret(&self) -> Result<Arc<Secret>, Status> {
        let secret = self
            .store
            .secret()
            .await
            .map_err(|e| store_failed("secret", e))?;
        self.labels.set_secret(&secret);
        Ok(secret)
    }

    async fn check_once(
        &self,
        subjects: &[Subject],
        limits: &[&SubjectLimits],
        op: Op<'_>,
    ) -> Result<CheckOutcome, Status> {
        match self.store.apply(subjects, limits, op, now()).await {
            Ok(Outcome::Check(c)) => Ok(c),
            Ok(other) => Err(Status::internal(format!(
                "unexpected store outcome {other:?}"
            ))),
            Err(e) => Err(store_failed("check", e)),
        }
    }

    /// A check, waiting in the subject's queue when denied in queue mode.
    async fn check(
        &self,
        subjects: &[Subject],
        limits: &[&SubjectLimits],
        op: Op<'_>,
        config: &Config,
        deadline: Option<Instant>,
    ) -> Result<(CheckOutcome, Queued), Status> {
        let first = self.check_once(subjects, limits, op).await?;
        if first.allowed || config.policy.mode != EnforcementMode::Queue {
            return Ok((first, Queued::No));
        }
        let start = Instant::now();
        let give_up = match deadline {
            Some(d) => d.min(start + config.queue_timeout),
            None => start + config.queue_timeout,
        };
        let left = |now: Instant| Nanos::from(give_up.saturating_duration_since(now));
        if queue_wait(first.retry_after, left(start)).is_none() {
            return Ok((first, Queued::WontFit));
        }
        if self.queues.is_closed() {
            return Ok((first, Queued::Closed));
        }
        let line = first.denial.map_or(0, |d| d.subject);
        let place = match self.queues.join(&subjects[line], config.queue_depth) {
            Ok(place) => place,
            Err(full) => return Ok((first, Queued::Full(full.depth))),
        };
        let mut last = first;
        loop {
            tokio::select! {
                () = self.queues.closed() => return Ok((last, Queued::Closed)),
                r = tokio::time::timeout_at(give_up, place.head()) => {
                    if r.is_err() {
                        return Ok((last, Queued::TimedOut));
                    }
                }
            }
            let out = self.check_once(subjects, limits, op).await?;
            if out.allowed {
                return Ok((out, Queued::Admitted));
            }
            let Some(wait) = queue_wait(out.retry_after, left(Instant::now())) else {
                return Ok((out, Queued::TimedOut));
            };
            tokio::select! {
                () = self.queues.closed() => return Ok((out, Queued::Closed)),
                r = tokio::time::timeout_at(give_up, place.changed_or(wait.as_duration())) => {
                    if r.is_err() {
                        return Ok((out, Queued::TimedOut));
                    }
                }
            }
            last = out;
        }
    }
}

/// How a subject is named in a reason: never a raw API key, and user or
/// team ids only where the config shows them.
fn shown(config: &Config, secret: &Secret, subject: &Subject, limits: &SubjectLimits) -> String {
    let hide = match subject.dimension {
        Dimension::ApiKey => false,
        Dimension::User => !config.metrics.show_user_ids,
        Dimension::Team => !config.metrics.show_team_ids,
    };
    identity::display(secret, subject, limits, hide)
}

/// The human-readable reason for a decision.
fn reason(
    outcome: &CheckOutcome,
    queued: Queued,
    who: impl Fn(usize) -> String,
    model: &str,
    downgrade_to: &str,
) -> String {
    let exceeded = outcome
        .denial
        .map(|d| format!("{} exceeded for {}", d.kind.describe(), who(d.subject)));
    let never = outcome.denial.is_some_and(|d| d.retry_after.is_none());
    match (outcome.allowed, queued) {
        (false, Queued::Full(depth)) => format!(
            "queue full: {depth} requests already waiting; {}",
            exceeded.unwrap_or_default()
        ),
        (false, Queued::Closed) => {
            format!(
                "queue closed: the service is shutting down; {}",
                exceeded.unwrap_or_default()
            )
        }
        (false, Queued::TimedOut) => {
            format!("queue timeout: {}", exceeded.unwrap_or_default())
        }
        (false, Queued::WontFit) => format!(
            "{}; the request cannot fit within the queue timeout",
            exceeded.unwrap_or_default()
        ),
        (false, _) => {
            let mut r = exceeded.unwrap_or_else(|| "denied".to_owned());
            if outcome.attempt > 0 {
                r.push_str("; no model in the downgrade chain fits");
            } else if never {
                r.push_str("; the request alone is larger than the limit");
            }
            r
        }
        (true, _) => match outcome.action {
            Action::Downgrade => format!(
                "downgraded from {model} to {downgrade_to}: {} for {model}",
                exceeded.unwrap_or_else(|| "a limit is exceeded".to_owned())
            ),
            Action::Alert if outcome.denial.is_some() => {
                format!("{} (alert only: allowed)", exceeded.unwrap_or_default())
            }
            _ if outcome.alert => {
                let b = budget_summary(&outcome.statuses);
                match b {
                    Some(b) => format!(
                        "{} of {} at {:.1}% (alert threshold reached)",
                        b.kind.describe(),
                        who(b.subject),
                        b.used as f64 * 100.0 / b.limit as f64
                    ),
                    None => "alert threshold reached".to_owned(),
                }
            }
            _ => String::new(),
        },
    }
}

#[tonic::async_trait]
impl<S: Store> pb::limits_service_server::LimitsService for LimitsSvc<S> {
    #[tracing::instrument(
        name = "CheckLimits",
        skip_all,
        fields(subjects, model, reserve, allowed, action, alert)
    )]
    async fn check_limits(
        &self,
        request: Request<pb::CheckLimitsRequest>,
    ) -> Result<Response<pb::CheckLimitsResponse>, Status> {
        let _call = self.shared.in_flight.enter();
        let started = std::time::Instant::now();
        let deadline = caller_deadline(request.metadata());
        let req = request.into_inner();
        let config = self.shared.config.load_full();
        let subjects = validate::subjects(req.subjects)?;
        validate::model("model", &req.model)?;
        let cost = req
            .estimated_cost_usd
            .map(|c| validate::usd("estimated_cost_usd", c))
            .transpose()?;
        let reserve_ttl = if req.reserve {
            Some(validate::ttl(
                "reservation_ttl",
                req.reservation_ttl,
                config.reservation_ttl,
            )?)
        } else {
            None
        };
        let limits = resolve(&config.table, &subjects);
        let span = tracing::Span::current();
        span.record("subjects", subjects.len());
        span.record("model", req.model.as_str());
        span.record("reserve", req.reserve);
        let attempts = config
            .policy
            .attempts(&req.model, req.estimated_tokens, cost);
        let secret = &*match self.shared.secret().await {
            Ok(s) => s,
            Err(status) if status.code() == tonic::Code::Unavailable && fail_open(&config) => {
                failed_open("check", &status);
                self.shared.labels.observe("check", started);
                return Ok(Response::new(pb::CheckLimitsResponse {
                    allowed: true,
                    action: pb::Action::Allow as i32,
                    reason: FAIL_OPEN_REASON.to_owned(),
                    estimated_cost_usd: attempts[0].cost.as_usd(),
                    ..Default::default()
                }));
            }
            Err(status) => return Err(status),
        };
        let bind = secret.subjects_tag(&subjects);
        let op = Op::Check {
            attempts: &attempts,
            reserve_ttl,
            tag: bind,
            policy: &config.policy,
        };
        let (outcome, queued) = match self
            .shared
            .check(&subjects, &limits, op, &config, deadline)
            .await
        {
            Ok(v) => v,
            // Only a store failure answers UNAVAILABLE here.
            Err(status) if status.code() == tonic::Code::Unavailable && fail_open(&config) => {
                failed_open("check", &status);
                span.record("allowed", true);
                span.record("action", Action::Allow.as_str());
                self.shared.labels.observe("check", started);
                return Ok(Response::new(pb::CheckLimitsResponse {
                    allowed: true,
                    action: pb::Action::Allow as i32,
                    reason: FAIL_OPEN_REASON.to_owned(),
                    estimated_cost_usd: attempts[0].cost.as_usd(),
                    ..Default::default()
                }));
            }
            Err(status) => return Err(status),
        };

        let attempt = &attempts[outcome.attempt];
        let downgrade_to = if outcome.allowed && outcome.attempt > 0 {
            attempt.model.as_str()
        } else {
            ""
        };
        let action = match queued {
            Queued::Admitted | Queued::Full(_) | Queued::TimedOut | Queued::Closed => Action::Queue,
            Queued::No | Queued::WontFit => outcome.action,
        };
        let who = |i: usize| shown(&config, secret, &subjects[i], limits[i]);
        let reason = reason(&outcome, queued, who, &req.model, downgrade_to);
        let hdrs = header_values(&outcome.statuses, outcome.retry_after, now());
        span.record("allowed", outcome.allowed);
        span.record("action", action.as_str());
        span.record("alert", outcome.alert);
        m::record_statuses(
            &self.shared.labels,
            &subjects,
            &limits,
            &outcome.statuses,
            true,
        );
        if action != Action::Allow {
            let who = outcome.denial.map_or(0, |d| d.subject);
            self.shared
                .labels
                .with(&subjects[who], limits[who], |m| m.action(action));
        }
        let message = pb::CheckLimitsResponse {
            allowed: outcome.allowed,
            action: pb_action(action) as i32,
            reason,
            downgrade_to: downgrade_to.to_owned(),
            retry_after: outcome.retry_after.map(pb_duration),
            reservation_id: outcome
                .reservation
                .map(|id| validate::reservation_id(secret, id, bind))
                .unwrap_or_default(),
            statuses: outcome
                .statuses
                .iter()
                .map(|s| pb_status(s, &subjects))
                .collect(),
            budget: pb_budget(&outcome.statuses, &subjects),
            headers: Default::default(),
            alert: outcome.alert,
            estimated_cost_usd: attempt.cost.as_usd(),
        };
        let response = with_headers(message, &hdrs, |m, h| m.headers = h);
        self.shared.labels.observe("check", started);
        Ok(response)
    }

    #[tracing::instrument(name = "RecordUsage", skip_all, fields(subjects, duplicate))]
    async fn record_usage(
        &self,
        request: Request<pb::RecordUsageRequest>,
    ) -> Result<Response<pb::RecordUsageResponse>, Status> {
        let _call = self.shared.in_flight.enter();
        let started = std::time::Instant::now();
        let req = request.into_inner();
        let config = self.shared.config.load_full();
        let subjects = validate::subjects(req.subjects)?;
        validate::model("model", &req.model)?;
        let secret = &*self.shared.secret().await?;
        let reservation = if req.reservation_id.is_empty() {
            None
        } else {
            Some(validate::parse_reservation_id(
                secret,
                &req.reservation_id,
                &subjects,
            )?)
        };
        let tokens =
            validate::total_tokens(req.request_tokens, req.response_tokens, req.total_tokens)?;
        let cost = match req.cost_usd {
            Some(c) => validate::usd("cost_usd", c)?,
            None => config
                .policy
                .pricing
                .cost(&req.model, req.request_tokens, req.response_tokens)
                .unwrap_or(NanoUsd::ZERO),
        };
        let limits = resolve(&config.table, &subjects);
        let op = Op::Record {
            reservation,
            cost,
            tokens,
            policy: &config.policy,
        };
        let outcome = match self.shared.store.apply(&subjects, &limits, op, now()).await {
            Ok(Outcome::Record(r)) => r,
            Ok(other) => {
                return Err(Status::internal(format!(
                    "unexpected store outcome {other:?}"
                )));
            }
            Err(e) => return Err(store_failed("record", e)),
        };
        // A settled reservation may have freed room for queued requests.
        self.shared.queues.wake(&subjects);
        let span = tracing::Span::current();
        span.record("subjects", subjects.len());
        span.record("duplicate", outcome.duplicate);
        m::record_statuses(
            &self.shared.labels,
            &subjects,
            &limits,
            &outcome.statuses,
            false,
        );
        self.shared.labels.observe("record", started);
        Ok(Response::new(pb::RecordUsageResponse {
            cost_usd: cost.as_usd(),
            total_tokens: tokens,
            statuses: outcome
                .statuses
                .iter()
                .map(|s| pb_status(s, &subjects))
                .collect(),
            budget: pb_budget(&outcome.statuses, &subjects),
            alert: outcome.alert,
            duplicate: outcome.duplicate,
        }))
    }

    #[tracing::instrument(name = "AcquireConcurrent", skip_all, fields(subjects, acquired))]
    async fn acquire_concurrent(
        &self,
        request: Request<pb::AcquireConcurrentRequest>,
    ) -> Result<Response<pb::AcquireConcurrentResponse>, Status> {
        let _call = self.shared.in_flight.enter();
        let started = std::time::Instant::now();
        let req = request.into_inner();
        let config = self.shared.config.load_full();
        let subjects = validate::subjects(req.subjects)?;
        let ttl = validate::ttl("ttl", req.ttl, config.lease_ttl)?;
        let limits = resolve(&config.table, &subjects);
        let secret = &*match self.shared.secret().await {
            Ok(s) => s,
            Err(status) if status.code() == tonic::Code::Unavailable && fail_open(&config) => {
                failed_open("acquire", &status);
                self.shared.labels.observe("acquire", started);
                return Ok(Response::new(pb::AcquireConcurrentResponse {
                    acquired: true,
                    reason: FAIL_OPEN_REASON.to_owned(),
                    ..Default::default()
                }));
            }
            Err(status) => return Err(status),
        };
        let (outcome, lease) = match self
            .shared
            .store
            .apply(&subjects, &limits, Op::Acquire { ttl }, now())
            .await
        {
            Ok(Outcome::Acquire(a, lease)) => (a, lease),
            Ok(other) => {
                return Err(Status::internal(format!(
                    "unexpected store outcome {other:?}"
                )));
            }
            Err(e @ StoreError::Unavailable(_)) if fail_open(&config) => {
                let status = store_failed("acquire", e);
                failed_open("acquire", &status);
                self.shared.labels.observe("acquire", started);
                // No lease is held, so there is nothing to release.
                return Ok(Response::new(pb::AcquireConcurrentResponse {
                    acquired: true,
                    reason: FAIL_OPEN_REASON.to_owned(),
                    ..Default::default()
                }));
            }
            Err(e) => return Err(store_failed("acquire", e)),
        };
        let reason = outcome
            .denial
            .map(|d| {
                let who = shown(&config, secret, &subjects[d.subject], limits[d.subject]);
                let max = limits[d.subject].get(LimitKind::MaxConcurrent).unwrap_or(0);
                format!("concurrency limit of {max} reached for {who}")
            })
            .unwrap_or_default();
        let span = tracing::Span::current();
        span.record("subjects", subjects.len());
        span.record("acquired", outcome.acquired);
        for s in &outcome.statuses {
            self.shared
                .labels
                .with(&subjects[s.subject], limits[s.subject], |m| {
                    m.concurrent(s.used as f64);
                    if s.exceeded {
                        m.hit(s.kind);
                    }
                });
        }
        self.shared.labels.observe("acquire", started);
        Ok(Response::new(pb::AcquireConcurrentResponse {
            acquired: outcome.acquired,
            lease_id: lease
                .map(|(id, _)| validate::lease_id(secret, id))
                .unwrap_or_default(),
            expires_at: lease.map(|(_, at)| pb_timestamp(at)),
            retry_after: outcome.denial.and_then(|d| d.retry_after).map(pb_duration),
            reason,
            statuses: outcome
                .statuses
                .iter()
                .map(|s| pb_status(s, &subjects))
                .collect(),
        }))
    }

    #[tracing::instrument(name = "ReleaseConcurrent", skip_all, fields(released))]
    async fn release_concurrent(
        &self,
        request: Request<pb::ReleaseConcurrentRequest>,
    ) -> Result<Response<pb::ReleaseConcurrentResponse>, Status> {
        let _call = self.shared.in_flight.enter();
        let started = std::time::Instant::now();
        let req = request.into_inner();
        if req.lease_id.is_empty() {
            return Err(validate::invalid("lease_id", "is required"));
        }
        let secret = &*self.shared.secret().await?;
        let id = validate::parse_lease_id(secret, &req.lease_id)?;
        let released = self
            .shared
            .store
            .release(id, now())
            .await
            .map_err(|e| store_failed("release", e))?;
        tracing::Span::current().record("released", released);
        self.shared.labels.observe("release", started);
        Ok(Response::new(pb::ReleaseConcurrentResponse { released }))
    }

    #[tracing::instrument(name = "GetUsage", skip_all)]
    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let _call = self.shared.in_flight.enter();
        let req = request.into_inner();
        let raw = req
            .subject
            .ok_or_else(|| validate::invalid("subject", "is required"))?;
        let subject = validate::subject("subject", raw)?;
        let config = self.shared.config.load_full();
        let limits = config.table.resolve(subject.dimension, &subject.id);
        let secret = &*self.shared.secret().await?;
        let view = self
            .shared
            .store
            .usage(&subject, limits, now())
            .await
            .map_err(|e| store_failed("usage", e))?;
        let subjects = std::slice::from_ref(&subject);
        Ok(Response::new(pb::GetUsageResponse {
            subject: Some(pb_subject(&subject)),
            statuses: view
                .statuses
                .iter()
                .map(|s| pb_status(s, subjects))
                .collect(),
            reservations: view
                .holds
                .iter()
                .map(|h| pb::Reservation {
                    reservation_id: validate::reservation_id(secret, h.id, h.tag),
                    held_cost_usd: NanoUsd(h.cost).as_usd(),
                    held_tokens: h.tokens,
                    expires_at: Some(pb_timestamp(h.expires_at)),
                })
                .collect(),
            leases: view
                .leases
                .iter()
                .map(|l| pb::Lease {
                    lease_id: validate::lease_id(secret, l.id),
                    expires_at: Some(pb_timestamp(l.expires_at)),
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", value.parse().unwrap());
        m
    }

    /// Regression: `grpc-timeout: 18446744073709551615S` overflowed the
    /// `Instant` addition and panicked the handler.
    #[test]
    fn a_huge_or_malformed_grpc_timeout_is_no_deadline_not_a_panic() {
        for raw in [
            "18446744073709551615S",
            "99999999H",
            "+5S",
            "-5S",
            "5",
            "S",
            "123456789m",
            "5x",
            "",
        ] {
            let d = caller_deadline(&with_timeout(raw));
            if raw == "99999999H" {
                // Eight digits is valid; eleven thousand years may or may not
                // fit an Instant, but it must not panic.
                continue;
            }
            assert!(d.is_none(), "{raw:?} gave a deadline");
        }
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_grpc_timeout("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        let d = caller_deadline(&with_timeout("2S")).expect("a deadline");
        assert!(d > Instant::now() + Duration::from_secs(1));
    }
}
