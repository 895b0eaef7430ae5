//! Validation at the boundary: protobuf requests become core types here, or
//! are rejected with `INVALID_ARGUMENT` naming the offending field. Nothing
//! past this module sees a prost type or an unchecked value.

use std::time::Duration;

use limits_core::{Dimension, NanoUsd, Nanos, Subject};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::pb;

/// The longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// The longest model name accepted, in bytes.
pub const MAX_MODEL_BYTES: usize = 256;
/// The most subjects one request may name (one per dimension).
pub const MAX_SUBJECTS: usize = 3;
/// The longest TTL a caller may ask for a reservation or a lease.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

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

fn dimension(raw: i32) -> Result<Dimension, String> {
    match pb::Dimension::try_from(raw) {
        Ok(pb::Dimension::ApiKey) => Ok(Dimension::ApiKey),
        Ok(pb::Dimension::User) => Ok(Dimension::User),
        Ok(pb::Dimension::Team) => Ok(Dimension::Team),
        Ok(pb::Dimension::Unspecified) => Err("dimension must be set".to_owned()),
        Err(_) => Err(format!("unknown dimension {raw}")),
    }
}

/// One subject, named `field` in errors. The field name is only formatted
/// when there is an error to report: this runs on every request.
pub fn subject(field: impl std::fmt::Display, s: pb::Subject) -> Result<Subject, Status> {
    let dimension =
        dimension(s.dimension).map_err(|reason| invalid(&format!("{field}.dimension"), reason))?;
    let bad_id = |reason: String| invalid(&format!("{field}.id"), reason);
    if s.id.is_empty() {
        return Err(bad_id("must not be empty".to_owned()));
    }
    if s.id.len() > MAX_ID_BYTES {
        return Err(bad_id(format!(
            "must be at most {MAX_ID_BYTES} bytes, got {}",
            s.id.len()
        )));
    }
    // Control characters have no place in an id, and keeping them out
    // leaves the service a namespace of its own for internal counters (rate
    // limit service descriptors).
    if s.id.chars().any(char::is_control) {
        return Err(bad_id("must not contain control characters".to_owned()));
    }
    Ok(Subject {
        dimension,
        id: s.id,
    })
}

/// The 1–3 subjects of a request, at most one per dimension.
pub fn subjects(raw: Vec<pb::Subject>) -> Result<Vec<Subject>, Status> {
    if raw.is_empty() {
        return Err(invalid("subjects", "at least one subject is required"));
    }
    if raw.len() > MAX_SUBJECTS {
        return Err(invalid(
            "subjects",
            format!(
                "at most {MAX_SUBJECTS} subjects (one per dimension), got {}",
                raw.len()
            ),
        ));
    }
    let mut out: Vec<Subject> = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let s = subject(format_args!("subjects[{i}]"), s)?;
        if out.iter().any(|o| o.dimension == s.dimension) {
            return Err(invalid(
                &format!("subjects[{i}]"),
                format!(
                    "duplicate {} subject: at most one per dimension",
                    s.dimension.as_str()
                ),
            ));
        }
        out.push(s);
    }
    Ok(out)
}

/// A USD amount from the wire.
pub fn usd(field: &str, value: f64) -> Result<NanoUsd, Status> {
    NanoUsd::try_from_usd(value).map_err(|e| invalid(field, e))
}

pub fn model(field: &str, model: &str) -> Result<(), Status> {
    if model.len() > MAX_MODEL_BYTES {
        return Err(invalid(
            field,
            format!("must be at most {MAX_MODEL_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// An optional TTL: unset takes `default`; zero, negative or over
/// [`MAX_TTL`] is invalid.
pub fn ttl(
    field: &str,
    raw: Option<prost_types::Duration>,
    default: Duration,
) -> Result<Nanos, Status> {
    let Some(d) = raw else {
        return Ok(Nanos::from(default));
    };
    if d.seconds < 0 || d.nanos < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        return Err(invalid(field, "must be a positive duration"));
    }
    let d = Duration::new(d.seconds as u64, d.nanos as u32);
    if d.is_zero() {
        return Err(invalid(field, "must be greater than zero"));
    }
    if d > MAX_TTL {
        return Err(invalid(
            field,
            format!("must be at most {}", humantime::format_duration(MAX_TTL)),
        ));
    }
    Ok(Nanos::from(d))
}

/// Total tokens of a usage record: 0 means the sum of the parts, otherwise
/// it must be at least their sum.
pub fn total_tokens(request: u64, response: u64, total: u64) -> Result<u64, Status> {
    let sum = request.checked_add(response).ok_or_else(|| {
        invalid(
            "response_tokens",
            "request_tokens + response_tokens overflows",
        )
    })?;
    if total == 0 {
        return Ok(sum);
    }
    if total < sum {
        return Err(invalid(
            "total_tokens",
            format!("{total} is less than request_tokens + response_tokens ({sum})"),
        ));
    }
    Ok(total)
}

const RESERVATION_PREFIX: &str = "rsv_";
const LEASE_PREFIX: &str = "lease_";

fn format_id(prefix: &str, id: u64) -> String {
    format!("{prefix}{id:016x}")
}

fn parse_id(field: &str, prefix: &str, raw: &str) -> Result<u64, Status> {
    raw.strip_prefix(prefix)
        .filter(|hex| hex.len() == 16)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| {
            invalid(
                field,
                format!("not a valid id: expected {prefix} followed by 16 hex digits"),
            )
        })
}

pub fn reservation_id(id: u64) -> String {
    format_id(RESERVATION_PREFIX, id)
}

pub fn lease_id(id: u64) -> String {
    format_id(LEASE_PREFIX, id)
}

pub fn parse_reservation_id(raw: &str) -> Result<u64, Status> {
    parse_id("reservation_id", RESERVATION_PREFIX, raw)
}

pub fn parse_lease_id(raw: &str) -> Result<u64, Status> {
    parse_id("lease_id", LEASE_PREFIX, raw)
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
        let e = subjects(vec![s(pb::Dimension::ApiKey, &"x".repeat(257))]).unwrap_err();
        assert!(e.message().starts_with("subjects[0].id:"));
        let e = subjects(vec![s(pb::Dimension::Unspecified, "k")]).unwrap_err();
        assert!(e.message().starts_with("subjects[0].dimension:"));
        let e = subjects(vec![s(pb::Dimension::Team, "a\u{1}b")]).unwrap_err();
        assert!(e.message().contains("control characters"));
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
    }

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = 0xdead_beef_0000_0001;
        assert_eq!(parse_reservation_id(&reservation_id(id)).unwrap(), id);
        assert_eq!(parse_lease_id(&lease_id(id)).unwrap(), id);
        assert!(parse_lease_id(&reservation_id(id)).is_err());
        assert!(parse_reservation_id("rsv_xyz").is_err());
        assert!(parse_reservation_id("").is_err());
    }

    #[test]
    fn tokens_must_add_up() {
        assert_eq!(total_tokens(10, 5, 0).unwrap(), 15);
        assert_eq!(total_tokens(10, 5, 20).unwrap(), 20);
        assert!(
            total_tokens(10, 5, 14)
                .unwrap_err()
                .message()
                .starts_with("total_tokens:")
        );
        assert!(total_tokens(u64::MAX, 1, 0).is_err());
    }

    #[test]
    fn ttl_must_be_positive() {
        let d = Duration::from_secs(60);
        assert_eq!(ttl("ttl", None, d).unwrap(), Nanos::from_secs(60));
        let zero = prost_types::Duration {
            seconds: 0,
            nanos: 0,
        };
        assert!(
            ttl("ttl", Some(zero), d)
                .unwrap_err()
                .message()
                .starts_with("ttl:")
        );
        let neg = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(ttl("ttl", Some(neg), d).is_err());
    }
}
