//! Conversions at the boundary: protobuf requests become the library's
//! types here (or are rejected with `INVALID_ARGUMENT` naming the field),
//! the library's answers become protobuf messages, and its errors gRPC
//! statuses. Nothing past this module sees a prost type.

use std::sync::LazyLock;
use std::time::Duration;

use limits::Error;
use limits_core::headers::{Headers, Name, budget_summary};
use limits_core::{Action, Dimension, LimitKind, LimitStatus, NanoUsd, Nanos, Subject};
use limits_store::StoreError;
use tonic::metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue};
use tonic::{Code, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::pb;

/// `INVALID_ARGUMENT` naming `field` in the message and in a
/// `google.rpc.BadRequest` detail, so clients can point at the field.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    let description = reason.to_string();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
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

/// The library's error as a status (store errors through
/// [`store_status`]; the caller logs and counts those first).
pub fn status(e: Error) -> Status {
    match e {
        Error::InvalidArgument { field, reason } => invalid(&field, reason),
        Error::NotFound(message) => Status::not_found(message),
        Error::AlreadyExists(message) => Status::already_exists(message),
        Error::FailedPrecondition(message) => Status::failed_precondition(message),
        Error::Aborted(message) => Status::aborted(message),
        Error::Store(e) => store_status(e),
    }
}

/// A dimension as the API carries it, or why not (the caller names the
/// field).
pub fn dimension(raw: i32) -> Result<Dimension, String> {
    match pb::Dimension::try_from(raw) {
        Ok(pb::Dimension::ApiKey) => Ok(Dimension::ApiKey),
        Ok(pb::Dimension::User) => Ok(Dimension::User),
        Ok(pb::Dimension::Team) => Ok(Dimension::Team),
        Ok(pb::Dimension::Org) => Ok(Dimension::Org),
        Ok(pb::Dimension::Unspecified) => Err("dimension must be set".to_owned()),
        Err(_) => Err(format!("unknown dimension {raw}")),
    }
}

/// One subject, named `field` in errors.
pub fn subject(field: &str, s: pb::Subject) -> Result<Subject, Status> {
    let dimension =
        dimension(s.dimension).map_err(|r| invalid(&format!("{field}.dimension"), r))?;
    limits::validate::subject_id(field, &s.id).map_err(status)?;
    Ok(Subject {
        dimension,
        id: s.id,
    })
}

/// The 1–4 subjects of a request, at most one per dimension.
pub fn subjects(raw: Vec<pb::Subject>) -> Result<Vec<Subject>, Status> {
    let max = limits::validate::MAX_SUBJECTS;
    if raw.is_empty() {
        return Err(invalid("subjects", "at least one subject is required"));
    }
    if raw.len() > max {
        return Err(invalid(
            "subjects",
            format!(
                "at most {max} subjects (one per dimension), got {}",
                raw.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let dimension =
            dimension(s.dimension).map_err(|r| invalid(&format!("subjects[{i}].dimension"), r))?;
        out.push(Subject {
            dimension,
            id: s.id,
        });
    }
    limits::validate::subjects(&out).map_err(status)?;
    Ok(out)
}

/// A USD amount from the wire, as nano-dollars (rounded up).
pub fn usd(field: &str, value: f64) -> Result<NanoUsd, Status> {
    NanoUsd::try_from_usd(value).map_err(|e| invalid(field, e))
}

/// An optional TTL from the wire: negative parts are invalid here; zero and
/// too long are the library's to refuse.
pub fn ttl(field: &str, raw: Option<prost_types::Duration>) -> Result<Option<Duration>, Status> {
    let Some(d) = raw else {
        return Ok(None);
    };
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        return Err(invalid(field, "must be a positive duration"));
    }
    Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32)))
}

pub fn pb_dimension(d: Dimension) -> pb::Dimension {
    match d {
        Dimension::ApiKey => pb::Dimension::ApiKey,
        Dimension::User => pb::Dimension::User,
        Dimension::Team => pb::Dimension::Team,
        Dimension::Org => pb::Dimension::Org,
    }
}

pub fn pb_subject(s: &Subject) -> pb::Subject {
    pb::Subject {
        dimension: pb_dimension(s.dimension) as i32,
        id: s.id.clone(),
    }
}

/// The kind as the API names it: a calendar slot is its budget's kind (its
/// status says `BUDGET_PERIOD_CALENDAR`).
pub fn pb_kind(k: LimitKind) -> pb::LimitKind {
    match k.public() {
        LimitKind::BudgetHourly => pb::LimitKind::BudgetHourly,
        LimitKind::BudgetDaily | LimitKind::CalendarDaily => pb::LimitKind::BudgetDaily,
        LimitKind::BudgetWeekly | LimitKind::CalendarWeekly => pb::LimitKind::BudgetWeekly,
        LimitKind::BudgetMonthly | LimitKind::CalendarMonthly => pb::LimitKind::BudgetMonthly,
        LimitKind::RequestsPerSecond => pb::LimitKind::RequestsPerSecond,
        LimitKind::RequestsPerMinute => pb::LimitKind::RequestsPerMinute,
        LimitKind::RequestsPerHour => pb::LimitKind::RequestsPerHour,
        LimitKind::TokensPerMinute => pb::LimitKind::TokensPerMinute,
        LimitKind::TokensPerHour => pb::LimitKind::TokensPerHour,
        LimitKind::InputTokensPerMinute => pb::LimitKind::InputTokensPerMinute,
        LimitKind::InputTokensPerHour => pb::LimitKind::InputTokensPerHour,
        LimitKind::OutputTokensPerMinute => pb::LimitKind::OutputTokensPerMinute,
        LimitKind::OutputTokensPerHour => pb::LimitKind::OutputTokensPerHour,
        LimitKind::MaxConcurrent => pb::LimitKind::MaxConcurrent,
    }
}

pub fn pb_action(a: Action) -> pb::Action {
    match a {
        Action::Allow => pb::Action::Allow,
        Action::Block => pb::Action::Block,
        Action::Queue => pb::Action::Queue,
        Action::Downgrade => pb::Action::Downgrade,
        Action::Alert => pb::Action::Alert,
    }
}

pub fn pb_duration(n: Nanos) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (n.0 / 1_000_000_000) as i64,
        nanos: (n.0 % 1_000_000_000) as i32,
    }
}

pub fn pb_timestamp(n: Nanos) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (n.0 / 1_000_000_000) as i64,
        nanos: (n.0 % 1_000_000_000) as i32,
    }
}

/// A limit amount in its wire unit: USD for budgets, a count otherwise.
pub fn amount(kind: LimitKind, v: u64) -> f64 {
    if kind.is_budget() {
        NanoUsd(v).as_usd()
    } else {
        v as f64
    }
}

pub fn pb_status(s: &LimitStatus, subjects: &[Subject]) -> pb::LimitStatus {
    pb::LimitStatus {
        subject: Some(pb_subject(&subjects[s.subject])),
        kind: pb_kind(s.kind) as i32,
        window: s.kind.window().map(pb_duration),
        limit: amount(s.kind, s.limit),
        used: amount(s.kind, s.used),
        remaining: amount(s.kind, s.remaining()),
        reset_at: s.reset_at.map(pb_timestamp),
        exceeded: s.exceeded,
        period: pb_period(s.kind) as i32,
        model_scope: s.scope.as_deref().unwrap_or_default().to_owned(),
        ..Default::default()
    }
}

/// Whether a budget rolls or follows a calendar; unspecified for the other
/// kinds.
pub fn pb_period(k: LimitKind) -> pb::BudgetPeriod {
    match (k.is_budget(), k.period()) {
        (false, _) => pb::BudgetPeriod::Unspecified,
        (true, None) => pb::BudgetPeriod::Rolling,
        (true, Some(_)) => pb::BudgetPeriod::Calendar,
    }
}

/// Where a subject's limits come from, as the API says it.
pub fn pb_source(source: limits::Source) -> pb::LimitSource {
    match source {
        limits::Source::Unlimited => pb::LimitSource::Unspecified,
        limits::Source::Default => pb::LimitSource::Default,
        limits::Source::Config => pb::LimitSource::Config,
        limits::Source::Runtime => pb::LimitSource::Runtime,
    }
}

pub fn pb_budget(statuses: &[LimitStatus], subjects: &[Subject]) -> Option<pb::BudgetSummary> {
    budget_summary(statuses).map(|b| pb::BudgetSummary {
        subject: Some(pb_subject(&subjects[b.subject])),
        kind: pb_kind(b.kind) as i32,
        limit_usd: NanoUsd(b.limit).as_usd(),
        used_usd: NanoUsd(b.used).as_usd(),
        remaining_usd: NanoUsd(b.remaining()).as_usd(),
        percentage: b.used as f64 / b.limit as f64,
        reset_at: b.reset_at.map(pb_timestamp),
        period: pb_period(b.kind) as i32,
        model_scope: b.scope.as_deref().unwrap_or_default().to_owned(),
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
pub fn with_headers<T>(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s(d: pb::Dimension, id: &str) -> pb::Subject {
        pb::Subject {
            dimension: d as i32,
            id: id.into(),
        }
    }

    #[test]
    fn rejects_bad_subjects_naming_the_field() {
        let e = subjects(vec![]).unwrap_err();
        assert!(e.message().starts_with("subjects:"));
        let e = subjects(vec![s(pb::Dimension::ApiKey, "")]).unwrap_err();
        assert!(e.message().starts_with("subjects[0].id:"));
        let e = subjects(vec![s(pb::Dimension::Unspecified, "k")]).unwrap_err();
        assert!(e.message().starts_with("subjects[0].dimension:"));
        let e = subjects(vec![pb::Subject {
            dimension: 42,
            id: "k".into(),
        }])
        .unwrap_err();
        assert!(e.message().contains("unknown dimension 42"));
        let e = subjects(vec![
            s(pb::Dimension::User, "a"),
            s(pb::Dimension::User, "b"),
        ])
        .unwrap_err();
        assert!(e.message().starts_with("subjects[1]:"));
        assert_eq!(e.code(), Code::InvalidArgument);
        let details = e.get_details_bad_request().expect("BadRequest details");
        assert_eq!(details.field_violations[0].field, "subjects[1]");
        let e = subject("subject", s(pb::Dimension::Team, "a\u{1}b")).unwrap_err();
        assert!(e.message().starts_with("subject.id:"), "{}", e.message());
    }

    #[test]
    fn ttls_on_the_wire_must_not_be_negative() {
        let neg = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(
            ttl("ttl", Some(neg))
                .unwrap_err()
                .message()
                .starts_with("ttl:")
        );
        let bad_nanos = prost_types::Duration {
            seconds: 1,
            nanos: 1_000_000_000,
        };
        assert!(ttl("ttl", Some(bad_nanos)).is_err());
        assert_eq!(ttl("ttl", None).unwrap(), None);
    }
}
