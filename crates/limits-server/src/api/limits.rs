//! The `LimitsService` gRPC handlers: validate and convert the request,
//! call the [`Limiter`], convert its answer (with its headers) and record
//! metrics. A denial is an `OK` answer; only bad input and store failures
//! are errors. Queue mode waits here, around the library's decisions.

use std::sync::Arc;

use limits::config::Config;
use limits::{Check, CheckRequest, Error, Limiter, Queued, RecordRequest, now};
use limits_core::{Action, EnforcementMode, NanoUsd, Nanos, queue_wait};
use limits_store::{Secret, Store, StoreError};
use std::time::Duration;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::api::convert::{
    self, pb_action, pb_budget, pb_duration, pb_status, pb_subject, pb_timestamp, store_status,
    with_headers,
};
use crate::api::queue::Queues;
use crate::ops::metrics::{self as m, Labels};
use crate::pb;

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
pub fn store_failed(operation: &'static str, e: StoreError) -> Status {
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

/// The library's error of `operation` as a status, store failures counted
/// and logged.
pub fn failed(operation: &'static str, e: Error) -> Status {
    match e {
        Error::Store(e) => store_failed(operation, e),
        e => convert::status(e),
    }
}

/// Whether the config says to allow when the store cannot be reached.
fn fail_open(config: &Config) -> bool {
    matches!(&config.storage, limits::config::Storage::Redis(r) if r.fail_open)
}

/// Whether an error is the outage fail-open answers with an allow.
fn is_outage(e: &Error) -> bool {
    matches!(e, Error::Store(StoreError::Unavailable(_)))
}

/// Counts and logs a call allowed because the store was unavailable.
fn failed_open(operation: &'static str, e: &Error) {
    metrics::counter!(m::FAIL_OPEN, "operation" => operation).increment(1);
    if let Some(held_back) = FAILED_OPEN.allow() {
        tracing::warn!(
            operation,
            error = %e,
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
    /// The library: the store, and the running config (swapped whole on
    /// reload, so a request sees one consistent version).
    pub limiter: Limiter<S>,
    pub queues: Queues,
    /// Bounded, secret-free metric labels.
    pub labels: Labels,
    /// Calls being handled now; shutdown waits for these, not for idle
    /// client connections (which a gateway may hold open indefinitely).
    pub in_flight: InFlight,
}

impl<S: Store> Shared<S> {
    /// The server secret, as the store has settled it, given to the metric
    /// labels too (it may change: a Redis store settles again after Redis
    /// lost its data).
    pub async fn secret(&self) -> Result<Arc<Secret>, Status> {
        let secret = self
            .limiter
            .secret()
            .await
            .map_err(|e| failed("secret", e))?;
        self.labels.set_secret(&secret);
        Ok(secret)
    }
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

impl<S: Store> Shared<S> {
    /// A check, waiting in the subject's queue when denied in queue mode.
    async fn check<'a>(
        &self,
        config: &'a Config,
        req: CheckRequest<'a>,
        deadline: Option<Instant>,
    ) -> Result<(Check<'a>, Queued), Error> {
        let first = self.limiter.check(config, req).await?;
        if first.allowed() || config.policy.mode != EnforcementMode::Queue {
            return Ok((first, Queued::No));
        }
        let start = Instant::now();
        let give_up = match deadline {
            Some(d) => d.min(start + config.queue_timeout),
            None => start + config.queue_timeout,
        };
        let left = |now: Instant| Nanos::from(give_up.saturating_duration_since(now));
        if queue_wait(first.outcome.retry_after(), left(start)).is_none() {
            return Ok((first, Queued::WontFit));
        }
        if self.queues.is_closed() {
            return Ok((first, Queued::Closed));
        }
        let line = first.outcome.denial().map_or(0, |d| d.subject);
        let place = match self.queues.join(&req.subjects[line], config.queue_depth) {
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
            let out = self.limiter.check(config, req).await?;
            if out.allowed() {
                return Ok((out, Queued::Admitted));
            }
            let Some(wait) = queue_wait(out.outcome.retry_after(), left(Instant::now())) else {
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
        let config = self.shared.limiter.config();
        let subjects = convert::subjects(req.subjects)?;
        let estimated_cost = req
            .estimated_cost_usd
            .map(|c| convert::usd("estimated_cost_usd", c))
            .transpose()?;
        let reservation_ttl = convert::ttl("reservation_ttl", req.reservation_ttl)?;
        let span = tracing::Span::current();
        span.record("subjects", subjects.len());
        span.record("model", req.model.as_str());
        span.record("reserve", req.reserve);
        // The labels name API keys by the secret's keyed hash.
        let secret = self.shared.secret().await;
        let check = CheckRequest {
            subjects: &subjects,
            model: &req.model,
            estimated_tokens: req.estimated_tokens,
            estimated_input_tokens: req.estimated_input_tokens,
            estimated_output_tokens: req.estimated_output_tokens,
            estimated_cost,
            reserve: req.reserve,
            reservation_ttl,
        };
        let result = match secret {
            Ok(_) => self.shared.check(&config, check, deadline).await,
            Err(_) => Err(Error::Store(StoreError::Unavailable(
                "the server secret is not settled yet".into(),
            ))),
        };
        let (check, queued) = match result {
            Ok(v) => v,
            // Only a store outage answers UNAVAILABLE here.
            Err(e) if is_outage(&e) && fail_open(&config) => {
                failed_open("check", &e);
                span.record("allowed", true);
                span.record("action", Action::Allow.as_str());
                self.shared.labels.observe("check", started);
                let attempts =
                    config
                        .policy
                        .attempts(&req.model, req.estimated_tokens, estimated_cost);
                return Ok(Response::new(pb::CheckLimitsResponse {
                    allowed: true,
                    action: pb::Action::Allow as i32,
                    reason: FAIL_OPEN_REASON.to_owned(),
                    estimated_cost_usd: attempts[0].cost.as_usd(),
                    ..Default::default()
                }));
            }
            Err(e) => return Err(failed("check", e)),
        };
        let outcome = &check.outcome;
        let action = match queued {
            Queued::Admitted | Queued::Full(_) | Queued::TimedOut | Queued::Closed => Action::Queue,
            Queued::No | Queued::WontFit => outcome.action,
        };
        let reason = check.reason(queued);
        span.record("allowed", check.allowed());
        span.record("action", action.as_str());
        span.record("alert", outcome.alert);
        m::record_statuses(
            &self.shared.labels,
            &subjects,
            &check.limits,
            &outcome.statuses,
            true,
        );
        if action != Action::Allow {
            let who = outcome.denial().map_or(0, |d| d.subject);
            self.shared
                .labels
                .with(&subjects[who], &check.limits[who], |m| m.action(action));
        }
        let reservation_id = match &check.decision {
            limits::Decision::Allow { reservation_id, .. } => reservation_id.clone(),
            limits::Decision::Deny { .. } => None,
        };
        let message = pb::CheckLimitsResponse {
            allowed: check.allowed(),
            action: pb_action(action) as i32,
            reason,
            downgrade_to: check.downgrade_to().unwrap_or("").to_owned(),
            retry_after: outcome.retry_after().map(pb_duration),
            reservation_id: reservation_id.unwrap_or_default(),
            statuses: outcome
                .statuses
                .iter()
                .map(|s| pb_status(s, &subjects))
                .collect(),
            budget: pb_budget(&outcome.statuses, &subjects),
            headers: Default::default(),
            alert: outcome.alert,
            estimated_cost_usd: check.estimated_cost.as_usd(),
        };
        let response = with_headers(message, &check.headers, |m, h| m.headers = h);
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
        let config = self.shared.limiter.config();
        let subjects = convert::subjects(req.subjects)?;
        let cost = req
            .cost_usd
            .map(|c| convert::usd("cost_usd", c))
            .transpose()?;
        self.shared.secret().await?;
        let recorded = self
            .shared
            .limiter
            .record(
                &config,
                RecordRequest {
                    subjects: &subjects,
                    reservation_id: Some(req.reservation_id.as_str()),
                    request_tokens: req.request_tokens,
                    response_tokens: req.response_tokens,
                    total_tokens: req.total_tokens,
                    cost,
                    model: &req.model,
                    progress: req.progress,
                    sequence: req.sequence,
                },
            )
            .await
            .map_err(|e| failed("record", e))?;
        // A settled reservation may have freed room for queued requests.
        self.shared.queues.wake(&subjects);
        let outcome = &recorded.outcome;
        let span = tracing::Span::current();
        span.record("subjects", subjects.len());
        span.record("duplicate", outcome.duplicate);
        m::record_statuses(
            &self.shared.labels,
            &subjects,
            &recorded.limits,
            &outcome.statuses,
            false,
        );
        self.shared.labels.observe("record", started);
        Ok(Response::new(pb::RecordUsageResponse {
            cost_usd: recorded.cost.as_usd(),
            total_tokens: recorded.tokens,
            statuses: outcome
                .statuses
                .iter()
                .map(|s| pb_status(s, &subjects))
                .collect(),
            budget: pb_budget(&outcome.statuses, &subjects),
            alert: outcome.alert,
            duplicate: outcome.duplicate,
            may_continue: !recorded.stop(),
            reason: recorded.reason.clone(),
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
        let config = self.shared.limiter.config();
        let subjects = convert::subjects(req.subjects)?;
        let ttl = convert::ttl("ttl", req.ttl)?;
        let result = match self.shared.secret().await {
            Ok(_) => self.shared.limiter.acquire(&config, &subjects, ttl).await,
            Err(_) => Err(Error::Store(StoreError::Unavailable(
                "the server secret is not settled yet".into(),
            ))),
        };
        let acquired = match result {
            Ok(a) => a,
            Err(e) if is_outage(&e) && fail_open(&config) => {
                failed_open("acquire", &e);
                self.shared.labels.observe("acquire", started);
                // No lease is held, so there is nothing to release.
                return Ok(Response::new(pb::AcquireConcurrentResponse {
                    acquired: true,
                    reason: FAIL_OPEN_REASON.to_owned(),
                    ..Default::default()
                }));
            }
            Err(e) => return Err(failed("acquire", e)),
        };
        let outcome = &acquired.outcome;
        let span = tracing::Span::current();
        span.record("subjects", subjects.len());
        span.record("acquired", outcome.acquired());
        for s in &outcome.statuses {
            self.shared
                .labels
                .with(&subjects[s.subject], &acquired.limits[s.subject], |m| {
                    m.concurrent(s.used as f64);
                    if s.exceeded {
                        m.hit(s.kind);
                    }
                });
        }
        self.shared.labels.observe("acquire", started);
        let lease = outcome.lease();
        Ok(Response::new(pb::AcquireConcurrentResponse {
            acquired: outcome.acquired(),
            lease_id: acquired.lease_id.clone().unwrap_or_default(),
            expires_at: lease.map(|l| pb_timestamp(l.expires_at)),
            retry_after: outcome
                .denial()
                .and_then(|d| d.retry_after)
                .map(pb_duration),
            reason: acquired.reason.clone(),
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
        let released = self
            .shared
            .limiter
            .release(&req.lease_id)
            .await
            .map_err(|e| failed("release", e))?;
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
            .ok_or_else(|| convert::invalid("subject", "is required"))?;
        let subject = convert::subject("subject", raw)?;
        let config = self.shared.limiter.config();
        let usage = self
            .shared
            .limiter
            .usage(&config, &subject)
            .await
            .map_err(|e| failed("usage", e))?;
        let subjects = std::slice::from_ref(&subject);
        Ok(Response::new(pb::GetUsageResponse {
            subject: Some(pb_subject(&subject)),
            statuses: usage
                .statuses
                .iter()
                .map(|s| {
                    // Increases raise the subject's own limits, not a scope's.
                    let raised = usage
                        .raised
                        .iter()
                        .find(|(k, _)| *k == s.kind.public() && s.scope.is_none())
                        .map_or(0, |(_, n)| *n);
                    pb::LimitStatus {
                        source: convert::pb_source(usage.source) as i32,
                        raised: convert::amount(s.kind, raised),
                        ..pb_status(s, subjects)
                    }
                })
                .collect(),
            reservations: usage
                .reservations
                .iter()
                .map(|(id, h)| pb::Reservation {
                    reservation_id: id.clone(),
                    held_cost_usd: NanoUsd(h.cost).as_usd(),
                    held_tokens: h.tokens,
                    expires_at: Some(pb_timestamp(h.expires_at)),
                })
                .collect(),
            leases: usage
                .leases
                .iter()
                .map(|(id, l)| pb::Lease {
                    lease_id: id.clone(),
                    expires_at: Some(pb_timestamp(l.expires_at)),
                })
                .collect(),
        }))
    }

    type WatchAlertsStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<pb::WatchAlertsResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    #[tracing::instrument(name = "WatchAlerts", skip_all)]
    async fn watch_alerts(
        &self,
        _request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        use tokio_stream::StreamExt as _;
        use tokio_stream::wrappers::BroadcastStream;
        use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
        let events = BroadcastStream::new(self.shared.limiter.alerts()).filter_map(|e| match e {
            Ok(event) => Some(Ok(pb::WatchAlertsResponse {
                event: Some(pb_alert(&event)),
            })),
            // A stream that fell behind misses the oldest events; it goes on
            // with the next.
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                tracing::warn!(missed, "an alert stream fell behind and missed events");
                None
            }
        });
        let mut response = Response::new(Box::pin(events) as Self::WatchAlertsStream);
        // Tells a client the stream is open: a refusal has no headers of
        // its own (its status comes alone), so a client cannot mistake one
        // for the other.
        response.metadata_mut().insert(
            ALERT_STREAM_OPEN,
            tonic::metadata::MetadataValue::from_static("open"),
        );
        Ok(response)
    }
}

/// The header of an alert stream that limitsd has opened.
const ALERT_STREAM_OPEN: &str = "limits-alert-stream";

impl<S: Store> crate::ops::webhooks::Source for Shared<S> {
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<limits::alerts::AlertEvent>> {
        self.limiter.alerts()
    }

    async fn pending(&self, url: &str) -> Vec<(String, limits::alerts::AlertEvent)> {
        match self.limiter.outbox_pending(url).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "the alert outbox could not be read");
                Vec::new()
            }
        }
    }

    async fn done(&self, key: String) {
        if let Err(e) = self.limiter.outbox_done(&key).await {
            tracing::warn!(error = %e, "an alert could not be taken out of the outbox");
        }
    }
}

/// An alert event as the API gives it.
pub fn pb_alert(e: &limits::alerts::AlertEvent) -> pb::AlertEvent {
    pb::AlertEvent {
        id: e.id.clone(),
        dimension: convert::pb_dimension(e.dimension) as i32,
        subject: e.subject.clone(),
        model_scope: e.scope.as_deref().unwrap_or_default().to_owned(),
        kind: convert::pb_kind(e.kind) as i32,
        period: if e.calendar {
            pb::BudgetPeriod::Calendar
        } else {
            pb::BudgetPeriod::Rolling
        } as i32,
        threshold: e.threshold,
        used_usd: e.used.as_usd(),
        limit_usd: e.limit.as_usd(),
        time: Some(pb_timestamp(e.at)),
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
