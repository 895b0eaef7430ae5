//! The admin API (`mercator.limits.admin.v1.LimitsAdminService`): converts
//! its messages to the library's admin calls ([`limits::admin`]) and back.
//! Credentials are checked before a call gets here (`api::auth`), which
//! leaves the caller's name as an [`Actor`] for the audit trail.

use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;

use limits::admin::{
    Adjust, AuditEvent, Change, EntryField, EntrySpec, EntryView, SubjectRef, Update, page_size,
};
use limits::runtime::Increase;
use limits_core::calendar;
use limits_core::{
    Calendar, Dimension, LimitKind, LimitStatus, ModelScopes, NanoUsd, Nanos, Resource, Subject,
    SubjectLimits,
};
use limits_store::Store;
use tonic::{Request, Response, Status};

use crate::api::Shared;
use crate::api::auth::Actor;
use crate::api::convert::{self, invalid, pb_kind, pb_status, pb_timestamp};
use crate::pb;
use crate::pb::admin as apb;

/// The LimitsAdminService.
pub struct AdminSvc<S> {
    shared: Arc<Shared<S>>,
}

impl<S> AdminSvc<S> {
    pub fn new(shared: Arc<Shared<S>>) -> AdminSvc<S> {
        AdminSvc { shared }
    }
}

impl<S> std::fmt::Debug for AdminSvc<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminSvc")
    }
}

/// The actor the auth layer found (every admin call has one).
fn actor<T>(req: &Request<T>) -> Result<String, Status> {
    req.extensions()
        .get::<Actor>()
        .map(|a| a.0.clone())
        .ok_or_else(|| Status::unauthenticated("a credential is required"))
}

fn failed(e: limits::Error) -> Status {
    if let limits::Error::Store(s) = &e {
        tracing::warn!(error = %s, "admin call failed in the store");
    }
    convert::status(e)
}

fn dimension(field: &str, raw: i32) -> Result<Dimension, Status> {
    convert::dimension(raw).map_err(|r| invalid(field, r))
}

/// A subject named by a request: `subject` (dimension and id) or, for API
/// keys, the dimension and `key_hash`.
fn subject_ref(field: &str, raw: Option<apb::SubjectRef>) -> Result<SubjectRef, Status> {
    let raw = raw.ok_or_else(|| invalid(field, "is required"))?;
    let s = raw
        .subject
        .ok_or_else(|| invalid(&format!("{field}.subject"), "is required"))?;
    Ok(SubjectRef {
        dimension: dimension(&format!("{field}.subject.dimension"), s.dimension)?,
        id: s.id,
        key_hash: raw.key_hash,
    })
}

/// The subject of an entry being created (its own `subject` and
/// `key_hash`).
fn entry_ref(raw: &apb::SubjectLimits) -> Result<SubjectRef, Status> {
    let s = raw
        .subject
        .as_ref()
        .ok_or_else(|| invalid("subject_limits.subject", "is required"))?;
    Ok(SubjectRef {
        dimension: dimension("subject_limits.subject.dimension", s.dimension)?,
        id: s.id.clone(),
        key_hash: raw.key_hash.clone(),
    })
}

fn kind(field: &str, raw: i32) -> Result<LimitKind, Status> {
    use pb::LimitKind as K;
    Ok(match K::try_from(raw) {
        Ok(K::BudgetHourly) => LimitKind::BudgetHourly,
        Ok(K::BudgetDaily) => LimitKind::BudgetDaily,
        Ok(K::BudgetWeekly) => LimitKind::BudgetWeekly,
        Ok(K::BudgetMonthly) => LimitKind::BudgetMonthly,
        Ok(K::RequestsPerSecond) => LimitKind::RequestsPerSecond,
        Ok(K::RequestsPerMinute) => LimitKind::RequestsPerMinute,
        Ok(K::RequestsPerHour) => LimitKind::RequestsPerHour,
        Ok(K::TokensPerMinute) => LimitKind::TokensPerMinute,
        Ok(K::TokensPerHour) => LimitKind::TokensPerHour,
        Ok(K::InputTokensPerMinute) => LimitKind::InputTokensPerMinute,
        Ok(K::InputTokensPerHour) => LimitKind::InputTokensPerHour,
        Ok(K::OutputTokensPerMinute) => LimitKind::OutputTokensPerMinute,
        Ok(K::OutputTokensPerHour) => LimitKind::OutputTokensPerHour,
        Ok(K::MaxConcurrent) => LimitKind::MaxConcurrent,
        Ok(K::Unspecified) => return Err(invalid(field, "must be set")),
        Err(_) => return Err(invalid(field, format!("unknown limit kind {raw}"))),
    })
}

fn instant(field: &str, t: &prost_types::Timestamp) -> Result<Nanos, Status> {
    if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(field, "must be a valid instant after 1970"));
    }
    let secs = u64::try_from(t.seconds).map_err(|_| invalid(field, "is out of range"))?;
    if secs > 1 << 33 {
        return Err(invalid(field, "is too far in the future"));
    }
    Ok(Nanos(secs * 1_000_000_000 + t.nanos as u64))
}

/// The field names of SubjectLimits an update mask may name, with the
/// entry field each sets.
const MASK_FIELDS: [(&str, EntryField); 19] = [
    ("hourly_usd", EntryField::Limit(LimitKind::BudgetHourly)),
    ("daily_usd", EntryField::Limit(LimitKind::BudgetDaily)),
    ("weekly_usd", EntryField::Limit(LimitKind::BudgetWeekly)),
    ("monthly_usd", EntryField::Limit(LimitKind::BudgetMonthly)),
    (
        "requests_per_second",
        EntryField::Limit(LimitKind::RequestsPerSecond),
    ),
    (
        "requests_per_minute",
        EntryField::Limit(LimitKind::RequestsPerMinute),
    ),
    (
        "requests_per_hour",
        EntryField::Limit(LimitKind::RequestsPerHour),
    ),
    (
        "tokens_per_minute",
        EntryField::Limit(LimitKind::TokensPerMinute),
    ),
    (
        "tokens_per_hour",
        EntryField::Limit(LimitKind::TokensPerHour),
    ),
    (
        "input_tokens_per_minute",
        EntryField::Limit(LimitKind::InputTokensPerMinute),
    ),
    (
        "input_tokens_per_hour",
        EntryField::Limit(LimitKind::InputTokensPerHour),
    ),
    (
        "output_tokens_per_minute",
        EntryField::Limit(LimitKind::OutputTokensPerMinute),
    ),
    (
        "output_tokens_per_hour",
        EntryField::Limit(LimitKind::OutputTokensPerHour),
    ),
    (
        "max_concurrent",
        EntryField::Limit(LimitKind::MaxConcurrent),
    ),
    ("alias", EntryField::Alias),
    ("expire_time", EntryField::ExpireTime),
    ("calendar", EntryField::Calendar),
    ("model_scopes", EntryField::ModelScopes),
    ("alert_thresholds", EntryField::AlertThresholds),
];

fn mask(raw: Option<prost_types::FieldMask>) -> Result<Vec<EntryField>, Status> {
    let paths = raw.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(invalid(
            "update_mask",
            "is required and must name at least one field",
        ));
    }
    let mut out = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        if p == "*" {
            return Ok(EntryField::all());
        }
        let name = p.strip_prefix("subject_limits.").unwrap_or(p);
        let field = MASK_FIELDS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, f)| f)
            .ok_or_else(|| {
                invalid(
                    &format!("update_mask.paths[{i}]"),
                    format!(
                        "{p:?} is not a field an update can change (one of: {}, or *)",
                        MASK_FIELDS.map(|(n, _)| n).join(", ")
                    ),
                )
            })?;
        if !out.contains(&field) {
            out.push(field);
        }
    }
    Ok(out)
}

/// An entry's values from a request's SubjectLimits, each checked and
/// named `subject_limits.<field>` when wrong.
fn spec(raw: &apb::SubjectLimits) -> Result<EntrySpec, Status> {
    let mut spec = EntrySpec::default();
    let f = |name: &str| format!("subject_limits.{name}");
    let budgets = [
        ("hourly_usd", raw.hourly_usd, LimitKind::BudgetHourly),
        ("daily_usd", raw.daily_usd, LimitKind::BudgetDaily),
        ("weekly_usd", raw.weekly_usd, LimitKind::BudgetWeekly),
        ("monthly_usd", raw.monthly_usd, LimitKind::BudgetMonthly),
    ];
    for (name, value, kind) in budgets {
        if let Some(usd) = value {
            let nanos = convert::usd(&f(name), usd)?;
            let n = NonZeroU64::new(nanos.0)
                .ok_or_else(|| invalid(&f(name), "must be greater than 0"))?;
            spec.limits.set(kind, Some(n));
        }
    }
    let counts = [
        (
            "requests_per_second",
            raw.requests_per_second,
            LimitKind::RequestsPerSecond,
        ),
        (
            "requests_per_minute",
            raw.requests_per_minute,
            LimitKind::RequestsPerMinute,
        ),
        (
            "requests_per_hour",
            raw.requests_per_hour,
            LimitKind::RequestsPerHour,
        ),
        (
            "tokens_per_minute",
            raw.tokens_per_minute,
            LimitKind::TokensPerMinute,
        ),
        (
            "tokens_per_hour",
            raw.tokens_per_hour,
            LimitKind::TokensPerHour,
        ),
        (
            "input_tokens_per_minute",
            raw.input_tokens_per_minute,
            LimitKind::InputTokensPerMinute,
        ),
        (
            "input_tokens_per_hour",
            raw.input_tokens_per_hour,
            LimitKind::InputTokensPerHour,
        ),
        (
            "output_tokens_per_minute",
            raw.output_tokens_per_minute,
            LimitKind::OutputTokensPerMinute,
        ),
        (
            "output_tokens_per_hour",
            raw.output_tokens_per_hour,
            LimitKind::OutputTokensPerHour,
        ),
    ];
    for (name, value, kind) in counts {
        if let Some(n) = value {
            let n =
                NonZeroU64::new(n).ok_or_else(|| invalid(&f(name), "must be greater than 0"))?;
            spec.limits.set(kind, Some(n));
        }
    }
    if let Some(n) = raw.max_concurrent {
        let n = NonZeroU32::new(n)
            .ok_or_else(|| invalid(&f("max_concurrent"), "must be greater than 0"))?;
        spec.limits.set_max_concurrent(Some(n));
    }
    if !raw.alias.is_empty() {
        spec.limits.set_alias(Some(Arc::from(raw.alias.as_str())));
    }
    if let Some(t) = &raw.expire_time {
        spec.expire_time = Some(instant(&f("expire_time"), t)?);
    }
    if let Some(c) = &raw.calendar {
        spec.limits
            .set_calendar(Some(Arc::new(calendar(&f("calendar"), c)?)));
    }
    if !raw.alert_thresholds.is_empty() {
        let mut ppm = Vec::with_capacity(raw.alert_thresholds.len());
        for (i, &t) in raw.alert_thresholds.iter().enumerate() {
            if !t.is_finite() || t <= 0.0 || t > 1.0 {
                return Err(invalid(
                    &f(&format!("alert_thresholds[{i}]")),
                    "must be a fraction greater than 0 and at most 1 (0.8 = 80 %)",
                ));
            }
            ppm.push(((t * 1e6).round() as u32).max(1));
        }
        let t = limits_core::Thresholds::new(ppm).ok_or_else(|| {
            invalid(
                &f("alert_thresholds"),
                format!("at most {} thresholds", limits_core::alerts::MAX_THRESHOLDS),
            )
        })?;
        spec.limits.set_alert_thresholds(Some(t));
    }
    if !raw.model_scopes.is_empty() {
        let mut scopes = Vec::with_capacity(raw.model_scopes.len());
        for (i, scope) in raw.model_scopes.iter().enumerate() {
            let at = f(&format!("model_scopes[{i}]"));
            scopes.push((scope.model.clone(), scope_limits(&at, scope)?));
        }
        let scopes = ModelScopes::new(scopes).map_err(|(pattern, e)| {
            let i = raw
                .model_scopes
                .iter()
                .position(|s| s.model == pattern)
                .unwrap_or(0);
            invalid(&f(&format!("model_scopes[{i}].model")), e)
        })?;
        spec.limits.set_scopes(Some(Arc::new(scopes)));
    }
    Ok(spec)
}

/// One model scope's limits: the budget and rate fields of its
/// SubjectLimits, nothing that belongs to an entry.
fn scope_limits(at: &str, raw: &apb::ModelScope) -> Result<SubjectLimits, Status> {
    let Some(limits) = &raw.limits else {
        return Err(invalid(&format!("{at}.limits"), "is required"));
    };
    let entry_only = [
        ("subject", limits.subject.is_some()),
        ("alias", !limits.alias.is_empty()),
        ("max_concurrent", limits.max_concurrent.is_some()),
        ("calendar", limits.calendar.is_some()),
        ("expire_time", limits.expire_time.is_some()),
        ("model_scopes", !limits.model_scopes.is_empty()),
        ("alert_thresholds", !limits.alert_thresholds.is_empty()),
    ];
    if let Some((name, _)) = entry_only.iter().find(|(_, set)| *set) {
        return Err(invalid(
            &format!("{at}.limits.{name}"),
            "cannot be set in a model scope (it belongs to the entry)",
        ));
    }
    let spec = spec(limits).map_err(|s| {
        // Name the field under the scope, not under the entry.
        Status::invalid_argument(s.message().replacen(
            "subject_limits.",
            &format!("{at}.limits."),
            1,
        ))
    })?;
    Ok(spec.limits)
}

/// A calendar from its message; empty fields take their defaults (UTC,
/// Monday, the 1st).
fn calendar(field: &str, raw: &apb::BudgetCalendar) -> Result<Calendar, Status> {
    let zone = if raw.time_zone.is_empty() {
        "UTC"
    } else {
        raw.time_zone.as_str()
    };
    let week_start = match raw.week_start.as_str() {
        "" => 0,
        day => calendar::weekday(day).ok_or_else(|| {
            invalid(
                &format!("{field}.week_start"),
                format!("{day:?} is not a weekday (monday to sunday)"),
            )
        })?,
    };
    let anchor = match raw.month_anchor_day {
        0 => 1,
        n @ 1..=31 => n as u8,
        n => {
            return Err(invalid(
                &format!("{field}.month_anchor_day"),
                format!("must be 1 to 31, got {n}"),
            ));
        }
    };
    Calendar::new(zone, week_start, anchor)
        .map_err(|e| invalid(&format!("{field}.time_zone"), e.to_string()))
}

fn pb_calendar(c: &Calendar) -> apb::BudgetCalendar {
    apb::BudgetCalendar {
        time_zone: c.zone().to_owned(),
        week_start: c.week_start_name().to_owned(),
        month_anchor_day: u32::from(c.anchor_day()),
    }
}

fn pb_increase(i: &Increase) -> apb::BudgetIncrease {
    apb::BudgetIncrease {
        kind: pb_kind(i.kind) as i32,
        amount: convert::amount(i.kind, i.amount),
        expire_time: Some(pb_timestamp(i.expire_time)),
        reason: i.reason.clone(),
    }
}

fn pb_entry(v: &EntryView) -> apb::SubjectLimits {
    let l = &v.entry.limits;
    apb::SubjectLimits {
        subject: Some(pb::Subject {
            dimension: convert::pb_dimension(v.dimension) as i32,
            id: v.id.clone(),
        }),
        key_hash: v.key_hash.clone(),
        alias: l.alias().unwrap_or_default().to_owned(),
        expire_time: v.entry.expire_time.map(pb_timestamp),
        etag: v.etag.clone(),
        create_time: Some(pb_timestamp(v.entry.create_time)),
        update_time: Some(pb_timestamp(v.entry.update_time)),
        increases: v.increases.iter().map(pb_increase).collect(),
        calendar: l.calendar().map(|c| pb_calendar(c)),
        alert_thresholds: l
            .alert_thresholds()
            .map(|t| t.as_slice().iter().map(|&p| f64::from(p) / 1e6).collect())
            .unwrap_or_default(),
        model_scopes: l
            .scopes()
            .into_iter()
            .flat_map(|s| s.iter())
            .map(|s| apb::ModelScope {
                model: s.pattern().to_owned(),
                limits: Some(pb_limits(s.limits())),
            })
            .collect(),
        ..pb_limits(l)
    }
}

/// The limit fields of a SubjectLimits message.
fn pb_limits(l: &SubjectLimits) -> apb::SubjectLimits {
    let usd = |k| l.get(k).map(|n| NanoUsd(n).as_usd());
    apb::SubjectLimits {
        hourly_usd: usd(LimitKind::BudgetHourly),
        daily_usd: usd(LimitKind::BudgetDaily),
        weekly_usd: usd(LimitKind::BudgetWeekly),
        monthly_usd: usd(LimitKind::BudgetMonthly),
        requests_per_second: l.get(LimitKind::RequestsPerSecond),
        requests_per_minute: l.get(LimitKind::RequestsPerMinute),
        requests_per_hour: l.get(LimitKind::RequestsPerHour),
        tokens_per_minute: l.get(LimitKind::TokensPerMinute),
        tokens_per_hour: l.get(LimitKind::TokensPerHour),
        input_tokens_per_minute: l.get(LimitKind::InputTokensPerMinute),
        input_tokens_per_hour: l.get(LimitKind::InputTokensPerHour),
        output_tokens_per_minute: l.get(LimitKind::OutputTokensPerMinute),
        output_tokens_per_hour: l.get(LimitKind::OutputTokensPerHour),
        max_concurrent: l.get(LimitKind::MaxConcurrent).map(|n| n as u32),
        ..Default::default()
    }
}

/// Statuses of one subject for an admin answer: an API key named by its
/// keyed hash (never the key), users and teams by id.
fn pb_statuses(
    r: &SubjectRef,
    hash: impl FnOnce() -> String,
    statuses: &[LimitStatus],
) -> Vec<pb::LimitStatus> {
    let id = match r.dimension {
        Dimension::ApiKey => hash(),
        _ => r.id.clone(),
    };
    let subjects = [Subject::new(r.dimension, id)];
    statuses.iter().map(|s| pb_status(s, &subjects)).collect()
}

fn pb_event(e: &AuditEvent) -> apb::AuditEvent {
    apb::AuditEvent {
        time: Some(pb_timestamp(e.time)),
        actor: e.actor.clone(),
        method: e.method.clone(),
        subject: e.subject.clone(),
        before: e.before.clone(),
        after: e.after.clone(),
        reason: e.reason.clone(),
    }
}

/// An amount of an adjustment: USD in nano-USD (rounded up), or a whole
/// count; non-zero, at most 1e9 in size.
fn signed_amount(resource: Resource, amount: f64) -> Result<i128, Status> {
    if !amount.is_finite() {
        return Err(invalid("amount", "must be a finite number"));
    }
    if amount == 0.0 {
        return Err(invalid("amount", "must not be zero"));
    }
    if amount.abs() > 1e9 {
        return Err(invalid("amount", "must be at most 1e9 in size"));
    }
    let magnitude = match resource {
        Resource::Cost => i128::from(convert::usd("amount", amount.abs())?.0),
        _ => {
            if amount.fract() != 0.0 {
                return Err(invalid(
                    "amount",
                    "must be a whole number of requests or tokens",
                ));
            }
            amount.abs() as i128
        }
    };
    Ok(if amount < 0.0 { -magnitude } else { magnitude })
}

fn resource(raw: i32) -> Result<Resource, Status> {
    match apb::Resource::try_from(raw) {
        Ok(apb::Resource::Usd) => Ok(Resource::Cost),
        Ok(apb::Resource::Requests) => Ok(Resource::Requests),
        Ok(apb::Resource::Tokens) => Ok(Resource::Tokens),
        Ok(apb::Resource::Unspecified) => Err(invalid("resource", "must be set")),
        Err(_) => Err(invalid("resource", format!("unknown resource {raw}"))),
    }
}

impl<S: Store> AdminSvc<S> {
    /// An API key's keyed hash, for answers that name it.
    async fn hash_of(&self, r: &SubjectRef) -> Result<String, Status> {
        if !r.key_hash.is_empty() {
            let h = r.key_hash.strip_prefix("api_key:").unwrap_or(&r.key_hash);
            return Ok(h.to_ascii_lowercase());
        }
        let secret = self.shared.secret().await?;
        Ok(secret.stored_key(&r.id))
    }
}

#[tonic::async_trait]
impl<S: Store> apb::limits_admin_service_server::LimitsAdminService for AdminSvc<S> {
    async fn get_subject_limits(
        &self,
        request: Request<apb::GetSubjectLimitsRequest>,
    ) -> Result<Response<apb::GetSubjectLimitsResponse>, Status> {
        let req = request.into_inner();
        let r = subject_ref("subject", req.subject)?;
        let view = self.shared.limiter.get_entry(&r).await.map_err(failed)?;
        Ok(Response::new(apb::GetSubjectLimitsResponse {
            subject_limits: Some(pb_entry(&view)),
        }))
    }

    async fn list_subject_limits(
        &self,
        request: Request<apb::ListSubjectLimitsRequest>,
    ) -> Result<Response<apb::ListSubjectLimitsResponse>, Status> {
        let req = request.into_inner();
        let dimension = match pb::Dimension::try_from(req.dimension) {
            Ok(pb::Dimension::Unspecified) => None,
            _ => Some(dimension("dimension", req.dimension)?),
        };
        let size = page_size("page_size", i64::from(req.page_size)).map_err(convert::status)?;
        let (views, next) = self
            .shared
            .limiter
            .list_entries(dimension, size, &req.page_token)
            .await
            .map_err(failed)?;
        Ok(Response::new(apb::ListSubjectLimitsResponse {
            subject_limits: views.iter().map(pb_entry).collect(),
            next_page_token: next,
        }))
    }

    async fn create_subject_limits(
        &self,
        request: Request<apb::CreateSubjectLimitsRequest>,
    ) -> Result<Response<apb::CreateSubjectLimitsResponse>, Status> {
        let actor = actor(&request)?;
        let req = request.into_inner();
        let raw = req
            .subject_limits
            .ok_or_else(|| invalid("subject_limits", "is required"))?;
        let r = entry_ref(&raw)?;
        let spec = spec(&raw)?;
        let view = self
            .shared
            .limiter
            .create_entry(
                Change {
                    actor: &actor,
                    reason: &req.reason,
                },
                &r,
                &spec,
            )
            .await
            .map_err(failed)?;
        Ok(Response::new(apb::CreateSubjectLimitsResponse {
            subject_limits: Some(pb_entry(&view)),
        }))
    }

    async fn update_subject_limits(
        &self,
        request: Request<apb::UpdateSubjectLimitsRequest>,
    ) -> Result<Response<apb::UpdateSubjectLimitsResponse>, Status> {
        let actor = actor(&request)?;
        let req = request.into_inner();
        let r = subject_ref("subject", req.subject)?;
        let mask = mask(req.update_mask)?;
        let spec = match &req.subject_limits {
            Some(raw) => spec(raw)?,
            None => EntrySpec::default(),
        };
        let etag = (!req.etag.is_empty()).then_some(req.etag.as_str());
        let view = self
            .shared
            .limiter
            .update_entry(
                Change {
                    actor: &actor,
                    reason: &req.reason,
                },
                &r,
                Update {
                    spec: &spec,
                    mask: &mask,
                    etag,
                    allow_missing: req.allow_missing,
                },
            )
            .await
            .map_err(failed)?;
        Ok(Response::new(apb::UpdateSubjectLimitsResponse {
            subject_limits: Some(pb_entry(&view)),
        }))
    }

    async fn delete_subject_limits(
        &self,
        request: Request<apb::DeleteSubjectLimitsRequest>,
    ) -> Result<Response<apb::DeleteSubjectLimitsResponse>, Status> {
        let actor = actor(&request)?;
        let req = request.into_inner();
        let r = subject_ref("subject", req.subject)?;
        let etag = (!req.etag.is_empty()).then_some(req.etag.as_str());
        self.shared
            .limiter
            .delete_entry(
                Change {
                    actor: &actor,
                    reason: &req.reason,
                },
                &r,
                etag,
            )
            .await
            .map_err(failed)?;
        Ok(Response::new(apb::DeleteSubjectLimitsResponse {}))
    }

    async fn adjust_usage(
        &self,
        request: Request<apb::AdjustUsageRequest>,
    ) -> Result<Response<apb::AdjustUsageResponse>, Status> {
        let actor = actor(&request)?;
        let req = request.into_inner();
        let r = subject_ref("subject", req.subject)?;
        let resource = resource(req.resource)?;
        let amount = signed_amount(resource, req.amount)?;
        let kind = match pb::LimitKind::try_from(req.kind) {
            Ok(pb::LimitKind::Unspecified) => None,
            _ => Some(kind("kind", req.kind)?),
        };
        let statuses = self
            .shared
            .limiter
            .adjust_usage(
                Change {
                    actor: &actor,
                    reason: &req.reason,
                },
                &r,
                Adjust {
                    resource,
                    amount,
                    kind,
                },
            )
            .await
            .map_err(failed)?;
        let hash = self.hash_of(&r).await?;
        Ok(Response::new(apb::AdjustUsageResponse {
            statuses: pb_statuses(&r, || hash, &statuses),
        }))
    }

    async fn reset_usage(
        &self,
        request: Request<apb::ResetUsageRequest>,
    ) -> Result<Response<apb::ResetUsageResponse>, Status> {
        let actor = actor(&request)?;
        let req = request.into_inner();
        let r = subject_ref("subject", req.subject)?;
        let kinds = req
            .kinds
            .iter()
            .enumerate()
            .map(|(i, &k)| kind(&format!("kinds[{i}]"), k))
            .collect::<Result<Vec<_>, _>>()?;
        let statuses = self
            .shared
            .limiter
            .reset_usage(
                Change {
                    actor: &actor,
                    reason: &req.reason,
                },
                &r,
                &kinds,
            )
            .await
            .map_err(failed)?;
        let hash = self.hash_of(&r).await?;
        Ok(Response::new(apb::ResetUsageResponse {
            statuses: pb_statuses(&r, || hash, &statuses),
        }))
    }

    async fn raise_budget(
        &self,
        request: Request<apb::RaiseBudgetRequest>,
    ) -> Result<Response<apb::RaiseBudgetResponse>, Status> {
        let actor = actor(&request)?;
        let req = request.into_inner();
        let r = subject_ref("subject", req.subject)?;
        let kind = kind("kind", req.kind)?;
        let amount = match kind.resource() {
            // Not finite, negative or past 1e9: refused here; zero by the
            // library.
            Resource::Cost => convert::usd("amount", req.amount)?.0,
            _ => {
                if !(1.0..=1e9).contains(&req.amount) || req.amount.fract() != 0.0 {
                    return Err(invalid("amount", "must be a whole number from 1 to 1e9"));
                }
                req.amount as u64
            }
        };
        let expire_time = instant(
            "expire_time",
            req.expire_time
                .as_ref()
                .ok_or_else(|| invalid("expire_time", "is required"))?,
        )?;
        let increases = self
            .shared
            .limiter
            .raise_limit(
                Change {
                    actor: &actor,
                    reason: &req.reason,
                },
                &r,
                kind,
                amount,
                expire_time,
            )
            .await
            .map_err(failed)?;
        Ok(Response::new(apb::RaiseBudgetResponse {
            increases: increases.iter().map(pb_increase).collect(),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<apb::ListAuditEventsRequest>,
    ) -> Result<Response<apb::ListAuditEventsResponse>, Status> {
        let req = request.into_inner();
        let size = page_size("page_size", i64::from(req.page_size)).map_err(convert::status)?;
        let (events, next) = self
            .shared
            .limiter
            .audit_events(size, &req.page_token)
            .await
            .map_err(failed)?;
        Ok(Response::new(apb::ListAuditEventsResponse {
            events: events.iter().map(pb_event).collect(),
            next_page_token: next,
        }))
    }
}
