//! Envoy's rate limit service API,
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, served on
//! the gRPC port next to `LimitsService`, over the same store and limits.
//! Envoy, Istio, Envoy Gateway and Envoy AI Gateway call it from the
//! `envoy.filters.http.ratelimit` filter.
//!
//! A request names a domain and descriptors (lists of key/value entries).
//! [`limits::rls`] says what they mean: entries that carry an API key,
//! user or team id (limits from the ordinary limit table), and rules from
//! envoyproxy/ratelimit-format files (one counter per matched descriptor).
//! Every counter the request's descriptors name is charged in **one**
//! atomic store operation (a hit, [`limits::Limiter::hit`]):
//!
//! - a request descriptor charges its hits as requests, all or nothing
//!   across every counter: if any descriptor is over its limit, no request
//!   counter moves;
//! - a token descriptor (one with a configured token key, or a rule below
//!   one) charges its hits as tokens, which are always charged (they report
//!   usage that already happened);
//! - hits are the descriptor's `hits_addend` when set, else the request's
//!   `hits_addend`, else 1. A descriptor's `hits_addend` of 0 only asks: it
//!   is over the limit only when the limit is already full. (The
//!   request-level field cannot say 0: proto3 cannot tell it from unset.)
//!
//! Shadow-mode counters (a mapped domain's or a rule's `shadow_mode`) are
//! charged in a second operation of their own, so they can never stop an
//! enforced counter; they are counted and reported, and their descriptors
//! answer `OK`. The global `dry_run` runs everything as usual but answers
//! `OK` overall (descriptor statuses still say which were over).
//!
//! Descriptors that match nothing configured answer `OK`, unlimited, with
//! no `current_limit`, as Envoy expects. A store that cannot decide is
//! `UNAVAILABLE` (Envoy's `failure_mode_deny` then decides), never an `OK`.

use std::borrow::Cow;
use std::num::NonZeroU64;
use std::sync::Arc;

use limits::rls::{self as rls_config, Unit};
use limits::validate::MAX_ID_BYTES;
use limits_core::headers::{header_values, most_restrictive};
use limits_core::hit::{Charge, HitOutcome};
use limits_core::{Dimension, LimitKind, LimitStatus, Nanos, Resource, Subject, SubjectLimits};
use limits_store::{MAX_SUBJECTS, Store};
use tonic::{Request, Response, Status};

use crate::api::convert::invalid;
use crate::api::limits::{Shared, failed};
use crate::ops::metrics as m;
use crate::pb::envoy::config::core::v3::HeaderValue;
use crate::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as PbUnit;
use crate::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use crate::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use crate::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use crate::pb::envoy::r#type::v3::RateLimitUnit;
use limits::config::Config;

/// The most descriptors one request may carry.
pub const MAX_DESCRIPTORS: usize = 64;
/// The most entries one descriptor may carry.
pub const MAX_ENTRIES: usize = 16;
/// The longest domain or entry key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// The longest entry value accepted, in bytes (a header value, typically).
pub const MAX_VALUE_BYTES: usize = 4096;

/// The `operation` label of this API's duration histogram and store errors.
pub const OPERATION: &str = m::RLS_OPERATION;

/// The gRPC service.
#[derive(Debug)]
pub struct RlsSvc<S> {
    shared: Arc<Shared<S>>,
}

impl<S> RlsSvc<S> {
    pub fn new(shared: Arc<Shared<S>>) -> RlsSvc<S> {
        RlsSvc { shared }
    }
}

/// What a descriptor's hits count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counts {
    Requests,
    Tokens,
}

/// One counter a request charges.
#[derive(Debug)]
struct Target<'c> {
    subject: Subject,
    limits: Cow<'c, SubjectLimits>,
    charge: Charge,
    shadow: bool,
    /// A rule's `name`, reported as the limit's name.
    name: Option<Arc<str>>,
}

impl<'c> Target<'c> {
    fn new(
        subject: Subject,
        limits: Cow<'c, SubjectLimits>,
        shadow: bool,
        name: Option<Arc<str>>,
    ) -> Target<'c> {
        Target {
            subject,
            limits,
            charge: Charge::default(),
            shadow,
            name,
        }
    }
}

/// The counters a request charges, and which of them each descriptor names.
#[derive(Debug, Default)]
struct Plan<'c> {
    targets: Vec<Target<'c>>,
    /// Per request descriptor, in order: indexes into `targets`.
    descriptors: Vec<Vec<usize>>,
}

impl<'c> Plan<'c> {
    /// Adds `hits` to the counter `target` names (a counter named twice is
    /// charged the sum), on behalf of request descriptor `descriptor`.
    fn add(&mut self, descriptor: usize, target: Target<'c>, counts: Counts, hits: u64) {
        let i = match self
            .targets
            .iter()
            .position(|t| t.subject == target.subject)
        {
            Some(i) => {
                // A counter both enforced and shadowed is enforced.
                self.targets[i].shadow &= target.shadow;
                i
            }
            None => {
                self.targets.push(target);
                self.targets.len() - 1
            }
        };
        let charge = &mut self.targets[i].charge;
        match counts {
            Counts::Requests => charge.requests = charge.requests.saturating_add(hits),
            Counts::Tokens => charge.tokens = charge.tokens.saturating_add(hits),
        }
        if !self.descriptors[descriptor].contains(&i) {
            self.descriptors[descriptor].push(i);
        }
    }

    /// Puts the enforced targets first and the shadowed ones after,
    /// renumbering the descriptors' references; returns how many are
    /// enforced.
    fn partition(&mut self) -> usize {
        let enforced = self.targets.iter().filter(|t| !t.shadow).count();
        if self.targets[..enforced].iter().all(|t| !t.shadow) {
            return enforced;
        }
        let mut order: Vec<usize> = (0..self.targets.len()).collect();
        order.sort_by_key(|&i| self.targets[i].shadow);
        let mut position = vec![0; order.len()];
        for (new, &old) in order.iter().enumerate() {
            position[old] = new;
        }
        let mut slots: Vec<Option<Target<'c>>> = self.targets.drain(..).map(Some).collect();
        self.targets = order.iter().filter_map(|&i| slots[i].take()).collect();
        for d in &mut self.descriptors {
            for i in d.iter_mut() {
                *i = position[*i];
            }
        }
        enforced
    }
}

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// Rejects a malformed request, naming the field. Tabs are allowed in
/// values (HTTP header values may hold them); no other control character
/// is, which keeps internal counter ids unambiguous.
fn check_request(req: &RateLimitRequest) -> Result<(), Status> {
    if req.domain.is_empty() {
        return Err(invalid("domain", "must not be empty"));
    }
    if req.domain.len() > MAX_KEY_BYTES {
        return Err(invalid(
            "domain",
            format!("must be at most {MAX_KEY_BYTES} bytes"),
        ));
    }
    if has_control(&req.domain) {
        return Err(invalid("domain", "must not contain control characters"));
    }
    if req.descriptors.is_empty() {
        return Err(invalid(
            "descriptors",
            "at least one descriptor is required",
        ));
    }
    if req.descriptors.len() > MAX_DESCRIPTORS {
        return Err(invalid(
            "descriptors",
            format!(
                "at most {MAX_DESCRIPTORS} descriptors, got {}",
                req.descriptors.len()
            ),
        ));
    }
    for (i, d) in req.descriptors.iter().enumerate() {
        if d.entries.is_empty() {
            return Err(invalid(
                &format!("descriptors[{i}].entries"),
                "at least one entry is required",
            ));
        }
        if d.entries.len() > MAX_ENTRIES {
            return Err(invalid(
                &format!("descriptors[{i}].entries"),
                format!("at most {MAX_ENTRIES} entries, got {}", d.entries.len()),
            ));
        }
        for (j, e) in d.entries.iter().enumerate() {
            let field = |f: &str| format!("descriptors[{i}].entries[{j}].{f}");
            if e.key.is_empty() {
                return Err(invalid(&field("key"), "must not be empty"));
            }
            if e.key.len() > MAX_KEY_BYTES {
                return Err(invalid(
                    &field("key"),
                    format!("must be at most {MAX_KEY_BYTES} bytes"),
                ));
            }
            if has_control(&e.key) {
                return Err(invalid(
                    &field("key"),
                    "must not contain control characters",
                ));
            }
            if e.value.len() > MAX_VALUE_BYTES {
                return Err(invalid(
                    &field("value"),
                    format!("must be at most {MAX_VALUE_BYTES} bytes"),
                ));
            }
            if e.value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(invalid(
                    &field("value"),
                    "must not contain control characters",
                ));
            }
        }
    }
    Ok(())
}

/// A mapped entry's value as a subject id, with the LimitsService rules.
fn subject_id(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty: it names a subject"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(invalid(
            field,
            format!("must be at most {MAX_ID_BYTES} bytes: it names a subject"),
        ));
    }
    if has_control(value) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Whether charging a subject can matter: it has a request or token limit.
fn has_rate(limits: &SubjectLimits) -> bool {
    limits
        .windowed()
        .any(|(k, _)| matches!(k.resource(), Resource::Requests | Resource::Tokens))
}

/// The limits of the scope of `model` under a subject's `limits`, as long
/// as they live.
fn scope_limits<'c>(
    limits: &Cow<'c, SubjectLimits>,
    model: &str,
) -> Option<(Arc<str>, Cow<'c, SubjectLimits>)> {
    match limits {
        Cow::Borrowed(l) => {
            let scope = l.scopes()?.find(model)?;
            Some((Arc::clone(scope.name()), Cow::Borrowed(scope.limits())))
        }
        Cow::Owned(l) => {
            let scope = l.scopes()?.find(model)?;
            Some((Arc::clone(scope.name()), Cow::Owned(scope.limits().clone())))
        }
    }
}

/// Resolves a (checked) request's descriptors to the counters they charge.
/// `subject_limits` gives a subject's limits (runtime entries included).
fn plan<'c>(
    config: &'c Config,
    subject_limits: &dyn Fn(Dimension, &str) -> Cow<'c, SubjectLimits>,
    req: &RateLimitRequest,
) -> Result<Plan<'c>, Status> {
    let mut plan = Plan {
        targets: Vec::new(),
        descriptors: vec![Vec::new(); req.descriptors.len()],
    };
    let Some(domain) = config.rls.domains.get(&req.domain) else {
        return Ok(plan);
    };
    // A descriptor's own counter lives under an internal id no
    // LimitsService caller can name.
    let counter = |entries| {
        Subject::new(
            Dimension::ApiKey,
            rls_config::counter_id(&req.domain, entries),
        )
    };
    let default_hits = if req.hits_addend == 0 {
        1
    } else {
        u64::from(req.hits_addend)
    };
    for (i, d) in req.descriptors.iter().enumerate() {
        // Refunds are not supported (a rolling window never gives back):
        // a negative hit only asks.
        let hits = if d.is_negative_hits {
            0
        } else {
            d.hits_addend.unwrap_or(default_hits)
        };
        let entries = || d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()));
        let token = domain
            .mapping
            .as_ref()
            .is_some_and(|m| d.entries.iter().any(|e| m.is_token_key(&e.key)));
        let counts = if token {
            Counts::Tokens
        } else {
            Counts::Requests
        };

        if let Some(mapping) = &domain.mapping {
            let model = mapping
                .model_key()
                .and_then(|k| d.entries.iter().find(|e| e.key == k))
                .map(|e| e.value.as_str());
            let mut seen = [false; Dimension::ALL.len()];
            for (j, e) in d.entries.iter().enumerate() {
                let Some(dimension) = mapping.subject_key(&e.key) else {
                    continue;
                };
                if std::mem::replace(&mut seen[dimension.index()], true) {
                    return Err(invalid(
                        &format!("descriptors[{i}].entries[{j}].key"),
                        format!("subject key {:?} appears twice in the descriptor", e.key),
                    ));
                }
                subject_id(&format!("descriptors[{i}].entries[{j}].value"), &e.value)?;
                let limits = subject_limits(dimension, &e.value);
                let subject = Subject::new(dimension, e.value.as_str());
                // The model's scope under the subject, named as its limit.
                if let Some((name, scoped)) = model.and_then(|m| scope_limits(&limits, m))
                    && has_rate(&scoped)
                {
                    let scope = limits
                        .scopes()
                        .and_then(|s| s.get(&name))
                        .map(|s| s.subject(&subject));
                    if let Some(scope) = scope {
                        let target = Target::new(scope, scoped, mapping.shadow_mode, Some(name));
                        plan.add(i, target, counts, hits);
                    }
                }
                if !has_rate(&limits) {
                    continue;
                }
                let target = Target::new(subject, limits, mapping.shadow_mode, None);
                plan.add(i, target, counts, hits);
            }
        }

        // The descriptor's own counter: the request's limit override, as
        // envoyproxy/ratelimit does (never in shadow mode), else the rule
        // the entries match.
        if let Some(o) = &d.limit {
            let field = |f: &str| format!("descriptors[{i}].limit.{f}");
            let unit = match RateLimitUnit::try_from(o.unit) {
                Ok(RateLimitUnit::Second) => Unit::Second,
                Ok(RateLimitUnit::Minute) => Unit::Minute,
                Ok(RateLimitUnit::Hour) => Unit::Hour,
                Ok(RateLimitUnit::Day) => Unit::Day,
                Ok(RateLimitUnit::Month) => Unit::Month,
                Ok(RateLimitUnit::Year) => Unit::Year,
                Ok(RateLimitUnit::Unknown) | Err(_) => {
                    return Err(invalid(&field("unit"), "must be SECOND, MINUTE or HOUR"));
                }
            };
            let kind = unit.kind(token).map_err(|r| invalid(&field("unit"), r))?;
            let n = NonZeroU64::new(u64::from(o.requests_per_unit))
                .ok_or_else(|| invalid(&field("requests_per_unit"), "must be greater than 0"))?;
            let target = Target::new(
                counter(entries()),
                Cow::Owned(SubjectLimits::default().with(kind, n)),
                false,
                None,
            );
            plan.add(i, target, counts, hits);
        } else if let Some(rule) = domain.rules.as_ref().and_then(|r| r.lookup(entries()))
            && let Some(limits) = &rule.limits
        {
            let counts = if rule.tokens {
                Counts::Tokens
            } else {
                Counts::Requests
            };
            let target = Target::new(
                counter(entries()),
                Cow::Borrowed(limits),
                rule.shadow_mode,
                rule.name.clone(),
            );
            plan.add(i, target, counts, hits);
        }
    }
    if plan.targets.len() > MAX_SUBJECTS {
        return Err(invalid(
            "descriptors",
            format!(
                "the descriptors name {} distinct limited counters; at most {MAX_SUBJECTS} per call",
                plan.targets.len()
            ),
        ));
    }
    Ok(plan)
}

/// Charges one group of targets (all enforced, or all shadowed) in one
/// atomic store operation, recording its metrics.
async fn hit_group<S: Store>(
    shared: &Shared<S>,
    targets: &[Target<'_>],
) -> Result<HitOutcome, Status> {
    let subjects: Vec<Subject> = targets.iter().map(|t| t.subject.clone()).collect();
    let limits: Vec<&SubjectLimits> = targets.iter().map(|t| t.limits.as_ref()).collect();
    let charges: Vec<Charge> = targets.iter().map(|t| t.charge).collect();
    let outcome = shared
        .limiter
        .hit(&subjects, &limits, &charges)
        .await
        .map_err(|e| failed(OPERATION, e))?;
    m::record_statuses(&shared.labels, &subjects, &limits, &outcome.statuses, true);
    Ok(outcome)
}

/// The nearest unit of a limit's window: each request and token window is
/// exactly one second, minute or hour long.
fn pb_unit(kind: LimitKind) -> PbUnit {
    match kind {
        LimitKind::RequestsPerSecond => PbUnit::Second,
        LimitKind::RequestsPerMinute
        | LimitKind::TokensPerMinute
        | LimitKind::InputTokensPerMinute
        | LimitKind::OutputTokensPerMinute => PbUnit::Minute,
        LimitKind::RequestsPerHour
        | LimitKind::TokensPerHour
        | LimitKind::InputTokensPerHour
        | LimitKind::OutputTokensPerHour => PbUnit::Hour,
        // Budgets and concurrency never reach here (hits report request and
        // token windows only); the nearest honest answer for a longer
        // window is a day.
        LimitKind::BudgetHourly => PbUnit::Hour,
        LimitKind::BudgetDaily
        | LimitKind::BudgetWeekly
        | LimitKind::BudgetMonthly
        | LimitKind::CalendarDaily
        | LimitKind::CalendarWeekly
        | LimitKind::CalendarMonthly
        | LimitKind::MaxConcurrent => PbUnit::Day,
    }
}

fn saturating_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn pb_duration(n: Nanos) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (n.0 / 1_000_000_000) as i64,
        nanos: (n.0 % 1_000_000_000) as i32,
    }
}

/// The IETF draft fields, as draft-ietf-httpapi-ratelimit-headers-07
/// defines them: `RateLimit: limit=L, remaining=R, reset=S` for the same
/// (most restrictive) limit as `X-RateLimit-*`, with `reset` equal to
/// `Retry-After` when there is one; and `RateLimit-Policy: L;w=W, ...`
/// listing that limit first, then the other limits counting the same unit
/// (requests or tokens), at most one policy per quota value as the draft
/// requires.
fn ietf_headers(
    statuses: &[LimitStatus],
    retry_after: Option<Nanos>,
    now: Nanos,
) -> Vec<(&'static str, String)> {
    let Some(top) = most_restrictive(statuses, |_| true) else {
        return Vec::new();
    };
    let reset = match retry_after {
        Some(r) => r.as_secs_ceil().max(1),
        None => top
            .reset_at
            .map_or(0, |at| at.saturating_sub(now).as_secs_ceil()),
    };
    let mut policies: Vec<(u64, u64)> = Vec::new();
    for s in std::iter::once(top).chain(statuses.iter()) {
        if s.kind.resource() != top.kind.resource() || policies.iter().any(|&(l, _)| l == s.limit) {
            continue;
        }
        let window = s.kind.window().map_or(0, |w| w.as_secs_ceil());
        policies.push((s.limit, window));
    }
    let policy = policies
        .iter()
        .map(|(l, w)| format!("{l};w={w}"))
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        (
            "RateLimit",
            format!(
                "limit={}, remaining={}, reset={reset}",
                top.limit,
                top.remaining()
            ),
        ),
        ("RateLimit-Policy", policy),
    ]
}

/// Decides a request: plan, charge, answer.
async fn should_rate_limit<S: Store>(
    shared: &Shared<S>,
    config: &Config,
    req: &RateLimitRequest,
) -> Result<RateLimitResponse, Status> {
    check_request(req)?;
    // Runtime entries can only be read from a store that answers; a call
    // that charges nothing needs neither (and is answered OK even then).
    let ready = shared.limiter.ready().await;
    // Also sets the secret the metric labels name counters by.
    let secret = match ready {
        Ok(()) => Some(shared.secret().await?),
        Err(_) => None,
    };
    let now = limits::now();
    let subject_limits = |d: Dimension, id: &str| match &secret {
        Some(secret) => shared
            .limiter
            .limits_for(config, secret, &Subject::new(d, id), now),
        None => Cow::Borrowed(config.table.resolve(d, id)),
    };
    let mut plan = plan(config, &subject_limits, req)?;
    if let Err(e) = ready
        && !plan.targets.is_empty()
    {
        return Err(failed(OPERATION, e));
    }
    let enforced = plan.partition();
    let (enforced_targets, shadow_targets) = plan.targets.split_at(enforced);

    // The enforced counters, then the shadowed ones in an operation of
    // their own (so that a shadow limit cannot stop an enforced counter).
    // Each outcome's subject indexes are made plan-wide.
    let mut over = false;
    let mut retry_after = None;
    let mut statuses: Vec<LimitStatus> = Vec::new();
    if !enforced_targets.is_empty() {
        let out = hit_group(shared, enforced_targets).await?;
        over = !out.allowed();
        retry_after = out.denial.and_then(|d| d.retry_after);
        statuses.extend(out.statuses);
    }
    let enforced_statuses = statuses.len();
    if !shadow_targets.is_empty() {
        let out = hit_group(shared, shadow_targets).await?;
        statuses.extend(out.statuses.into_iter().map(|mut s| {
            s.subject += enforced;
            s
        }));
    }
    let shadow = |s: &LimitStatus| s.subject >= enforced;

    let rls = &config.rls;
    let overall = if over && !rls.dry_run {
        Code::OverLimit
    } else {
        Code::Ok
    };
    let descriptor_statuses = plan
        .descriptors
        .iter()
        .map(|targets| {
            let mine = |s: &LimitStatus| targets.contains(&s.subject);
            let over = statuses.iter().any(|s| mine(s) && s.exceeded && !shadow(s));
            // Report the enforced limit that is closest to stopping the
            // descriptor, or its shadow limit when it has only that.
            let top = most_restrictive(&statuses, |s| mine(s) && !shadow(s))
                .or_else(|| most_restrictive(&statuses, mine));
            DescriptorStatus {
                code: if over { Code::OverLimit } else { Code::Ok } as i32,
                current_limit: top.map(|s| RateLimit {
                    name: plan.targets[s.subject]
                        .name
                        .as_deref()
                        .unwrap_or(s.kind.name())
                        .to_owned(),
                    requests_per_unit: saturating_u32(s.limit),
                    unit: pb_unit(s.kind) as i32,
                }),
                limit_remaining: top.map_or(0, |s| saturating_u32(s.remaining())),
                duration_until_reset: top
                    .and_then(|s| s.reset_at)
                    .map(|at| pb_duration(at.saturating_sub(now))),
                quota: None,
            }
        })
        .collect();

    // Headers describe what the client is held to: the enforced limits.
    // `Retry-After` only accompanies an over-limit answer.
    let answer_retry = if overall == Code::OverLimit {
        retry_after
    } else {
        None
    };
    let enforced_statuses = &statuses[..enforced_statuses];
    let mut hdrs: Vec<HeaderValue> = header_values(enforced_statuses, answer_retry, now)
        .iter()
        .map(|(name, value)| HeaderValue {
            key: name.as_str().to_owned(),
            value: value.as_str().to_owned(),
            raw_value: Vec::new(),
        })
        .collect();
    if rls.ietf_headers {
        hdrs.extend(
            ietf_headers(enforced_statuses, answer_retry, now)
                .into_iter()
                .map(|(key, value)| HeaderValue {
                    key: key.to_owned(),
                    value,
                    raw_value: Vec::new(),
                }),
        );
    }
    let span = tracing::Span::current();
    span.record("counters", plan.targets.len());
    span.record("overall", overall.as_str_name());
    Ok(RateLimitResponse {
        overall_code: overall as i32,
        statuses: descriptor_statuses,
        response_headers_to_add: hdrs,
        ..Default::default()
    })
}

#[tonic::async_trait]
impl<S: Store> RateLimitService for RlsSvc<S> {
    #[tracing::instrument(
        name = "ShouldRateLimit",
        skip_all,
        fields(domain, descriptors, counters, overall)
    )]
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let _call = self.shared.in_flight.enter();
        let started = std::time::Instant::now();
        let req = request.into_inner();
        let config = self.shared.limiter.config();
        if !config.rls.enabled {
            return Err(Status::unimplemented(
                "the rate limit service is switched off (limits.rls.enabled: false)",
            ));
        }
        let span = tracing::Span::current();
        span.record("domain", req.domain.as_str());
        span.record("descriptors", req.descriptors.len());
        let response = should_rate_limit(&self.shared, &config, &req).await?;
        metrics::histogram!(m::CHECK_DURATION, "operation" => OPERATION)
            .record(started.elapsed().as_secs_f64());
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use limits_core::{AcquireOutcome, CheckOutcome, LimitTable, RecordOutcome};
    use limits_store::{
        AdjustOp, Adjusted, AuditEntry, Call, CheckOp, RecordOp, RecordSwap, Records, StoreError,
        Swapped, SweepStats, UsageView,
    };

    use super::*;
    use crate::api::queue::Queues;
    use crate::ops::metrics::Labels;
    use crate::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use crate::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;

    /// A store whose every operation fails as an unreachable backend would.
    struct Down;

    fn down() -> StoreError {
        StoreError::Unavailable("disk on fire".into())
    }

    impl Store for Down {
        async fn check(&self, _: Call<'_, CheckOp<'_>>) -> Result<CheckOutcome, StoreError> {
            Err(down())
        }
        async fn record(&self, _: Call<'_, RecordOp<'_>>) -> Result<RecordOutcome, StoreError> {
            Err(down())
        }
        async fn acquire(&self, _: Call<'_, Nanos>) -> Result<AcquireOutcome, StoreError> {
            Err(down())
        }
        async fn hit(&self, _: Call<'_, &[Charge]>) -> Result<HitOutcome, StoreError> {
            Err(down())
        }
        async fn release(&self, _: u64, _: Nanos) -> Result<bool, StoreError> {
            Err(down())
        }
        async fn usage(
            &self,
            _: &Subject,
            _: &SubjectLimits,
            _: Nanos,
        ) -> Result<UsageView, StoreError> {
            Err(down())
        }
        async fn usage_stored(
            &self,
            _: &Subject,
            _: &SubjectLimits,
            _: Nanos,
        ) -> Result<UsageView, StoreError> {
            Err(down())
        }
        async fn sweep(&self, _: &LimitTable, _: Nanos) -> Result<SweepStats, StoreError> {
            Err(down())
        }
        async fn flush(&self) -> Result<(), StoreError> {
            Err(down())
        }
        async fn adjust(
            &self,
            _: &Subject,
            _: &SubjectLimits,
            _: AdjustOp<'_>,
            _: Nanos,
        ) -> Result<Adjusted, StoreError> {
            Err(down())
        }
        async fn records(&self) -> Result<Records, StoreError> {
            Err(down())
        }
        async fn records_version(&self) -> Result<u64, StoreError> {
            Err(down())
        }
        async fn swap_record(&self, _: RecordSwap<'_>) -> Result<Swapped, StoreError> {
            Err(down())
        }
        async fn audit(&self, _: Option<u64>, _: usize) -> Result<Vec<AuditEntry>, StoreError> {
            Err(down())
        }
        async fn outbox(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
            Err(down())
        }
        async fn outbox_write(&self, _: &[(String, Option<Vec<u8>>)]) -> Result<(), StoreError> {
            Err(down())
        }
        async fn secret(&self) -> Result<Arc<limits_store::Secret>, StoreError> {
            Err(down())
        }
        fn health(&self) -> limits_store::Health {
            limits_store::Health::Writable
        }
    }

    fn config() -> Config {
        limits::config::parse_str(
            r#"
limits:
  rate_limits:
    by_api_key:
      k1: { requests_per_second: 1 }
      k2: { requests_per_second: 5, tokens_per_minute: 100 }
  rls:
    domains:
      - domain: d
        subjects: { api_key: key }
        tokens: [tok]
      - domain: s
        shadow_mode: true
        subjects: { api_key: key }
"#,
        )
        .expect("config loads")
    }

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: domain.into(),
            descriptors,
            hits_addend: 0,
        }
    }

    #[tokio::test]
    async fn an_unavailable_store_is_unavailable_never_ok() {
        let config = config();
        let shared = Shared {
            limiter: limits::Limiter::with_store(Down, config.clone()),
            queues: Queues::new(),
            labels: Labels::new(&config.metrics),
            in_flight: Default::default(),
        };
        let req = request("d", vec![descriptor(&[("key", "k1")])]);
        let e = should_rate_limit(&shared, &config, &req)
            .await
            .expect_err("the store is down");
        assert_eq!(e.code(), tonic::Code::Unavailable);
        // Nothing configured matches: no store call, so OK even now.
        let req = request("d", vec![descriptor(&[("other", "x")])]);
        let ok = should_rate_limit(&shared, &config, &req).await.unwrap();
        assert_eq!(ok.overall_code, Code::Ok as i32);
    }

    #[test]
    fn descriptors_sum_their_hits_per_counter() {
        let config = config();
        let mut token = descriptor(&[("key", "k2"), ("tok", "total")]);
        token.hits_addend = Some(40);
        let req = RateLimitRequest {
            hits_addend: 3,
            ..request(
                "d",
                vec![
                    descriptor(&[("key", "k2")]),
                    token,
                    descriptor(&[("key", "k2")]),
                ],
            )
        };
        let p = plan(
            &config,
            &|d, id| Cow::Borrowed(config.table.resolve(d, id)),
            &req,
        )
        .unwrap();
        assert_eq!(p.targets.len(), 1);
        assert_eq!(
            p.targets[0].charge,
            Charge {
                requests: 6,
                tokens: 40
            }
        );
        assert_eq!(p.descriptors, vec![vec![0], vec![0], vec![0]]);
        // Unlimited subjects are not charged at all.
        let req = request("d", vec![descriptor(&[("key", "no-limits")])]);
        assert!(
            plan(
                &config,
                &|d, id| Cow::Borrowed(config.table.resolve(d, id)),
                &req
            )
            .unwrap()
            .targets
            .is_empty()
        );
    }

    #[test]
    fn shadowed_counters_go_last() {
        let limits = SubjectLimits::default()
            .with(LimitKind::RequestsPerSecond, NonZeroU64::new(1).unwrap());
        let mut plan = Plan {
            targets: Vec::new(),
            descriptors: vec![Vec::new(); 3],
        };
        let mut add = |d, id: &str, shadow| {
            let target = Target::new(
                Subject::new(Dimension::User, id),
                Cow::Owned(limits.clone()),
                shadow,
                None,
            );
            plan.add(d, target, Counts::Requests, 1)
        };
        add(0, "a", true);
        add(1, "b", false);
        add(2, "a", true);
        add(2, "b", false);
        assert_eq!(plan.partition(), 1);
        let ids: Vec<&str> = plan.targets.iter().map(|t| t.subject.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(plan.descriptors, vec![vec![1], vec![0], vec![1, 0]]);
        assert_eq!(plan.targets[1].charge.requests, 2);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let field = |req: &RateLimitRequest| {
            check_request(req)
                .unwrap_err()
                .message()
                .split(':')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            field(&request("", vec![descriptor(&[("k", "v")])])),
            "domain"
        );
        assert_eq!(field(&request("d", vec![])), "descriptors");
        assert_eq!(
            field(&request("d", vec![descriptor(&[])])),
            "descriptors[0].entries"
        );
        assert_eq!(
            field(&request(
                "d",
                vec![descriptor(&[("k", "v")]), descriptor(&[("", "v")])]
            )),
            "descriptors[1].entries[0].key"
        );
        assert_eq!(
            field(&request("d", vec![descriptor(&[("k", "a\u{1}b")])])),
            "descriptors[0].entries[0].value"
        );
        assert!(check_request(&request("d", vec![descriptor(&[("k", "a\tb")])])).is_ok());
    }

    #[test]
    fn ietf_fields_follow_draft_07() {
        let st = |kind, limit, used| LimitStatus {
            subject: 0,
            kind,
            limit,
            used,
            reset_at: Some(Nanos::from_secs(105)),
            exceeded: false,
            scope: None,
        };
        let statuses = [
            st(LimitKind::RequestsPerSecond, 10, 7),
            st(LimitKind::RequestsPerMinute, 100, 10),
            st(LimitKind::RequestsPerHour, 10, 0),
            st(LimitKind::TokensPerMinute, 1000, 0),
        ];
        let h = ietf_headers(&statuses, None, Nanos::from_secs(100));
        assert_eq!(
            h,
            vec![
                ("RateLimit", "limit=10, remaining=3, reset=5".to_owned()),
                // The second 10 is dropped: one policy per quota value.
                ("RateLimit-Policy", "10;w=1, 100;w=60".to_owned()),
            ]
        );
        let h = ietf_headers(
            &statuses,
            Some(Nanos::from_millis(1_500)),
            Nanos::from_secs(100),
        );
        assert_eq!(h[0].1, "limit=10, remaining=3, reset=2");
    }
}
