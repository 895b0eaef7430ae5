//! Validation at the boundary: protobuf requests become core types here, or
//! are rejected with `INVALID_ARGUMENT` naming the offending field. Nothing
//! past this module sees a prost type or an unchecked value.

use std::time::Duration;

use limits_core::{Dimension, NanoUsd, Nanos, Subject};
use limits_store::Secret;
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
pub const MAX_TTL: Duration = limits::MAX_TTL;

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
/// Which kind of id an authentication tag is for.
const RESERVATION_KIND: u8 = 0;
const LEASE_KIND: u8 = 1;

/// Hex digits of an id's parts: the store's id, the subjects tag, the
/// authentication tag.
const ID_DIGITS: usize = 16;
const BIND_DIGITS: usize = 8;
const TAG_DIGITS: usize = 24;

/// A reservation id as handed out: `rsv_`, the store's id, a digest of the
/// subjects it was made for, and a tag that authenticates both with the
/// server secret, so that ids cannot be guessed or forged, and a settlement
/// names the same subjects.
pub fn reservation_id(secret: &Secret, id: u64, bind: u32) -> String {
    let tag = secret.id_tag(RESERVATION_KIND, id, bind);
    format!(
        "{RESERVATION_PREFIX}{id:016x}{bind:08x}{}",
        hex::encode(tag)
    )
}

/// A lease id as handed out: `lease_`, the store's id and its tag.
pub fn lease_id(secret: &Secret, id: u64) -> String {
    let tag = secret.id_tag(LEASE_KIND, id, 0);
    format!("{LEASE_PREFIX}{id:016x}{}", hex::encode(tag))
}

/// Lower-case hex digits only: `u64::from_str_radix` also takes a sign and
/// upper case, so two spellings would name one id.
fn strict_hex(digits: &str) -> Option<Vec<u8>> {
    if !digits
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    hex::decode(digits).ok()
}

fn malformed(field: &str, prefix: &str, digits: usize) -> Status {
    invalid(
        field,
        format!("not a valid id: expected {prefix} followed by {digits} lower-case hex digits"),
    )
}

/// A reservation id, checked: well-formed (else `INVALID_ARGUMENT`),
/// issued by a service with this secret (else `NOT_FOUND`, as for any id
/// never issued), and made for `subjects` (else `INVALID_ARGUMENT` naming
/// `subjects`: a reservation is settled against the subjects its check
/// named, never others).
pub fn parse_reservation_id(
    secret: &Secret,
    raw: &str,
    subjects: &[Subject],
) -> Result<u64, Status> {
    let field = "reservation_id";
    let digits = ID_DIGITS + BIND_DIGITS + TAG_DIGITS;
    let bytes = raw
        .strip_prefix(RESERVATION_PREFIX)
        .filter(|d| d.len() == digits)
        .and_then(strict_hex)
        .ok_or_else(|| malformed(field, RESERVATION_PREFIX, digits))?;
    let id = u64::from_be_bytes(bytes[..8].try_into().expect("eight bytes"));
    let bind = u32::from_be_bytes(bytes[8..12].try_into().expect("four bytes"));
    if !secret.verify_id_tag(RESERVATION_KIND, id, bind, &bytes[12..]) {
        return Err(Status::not_found(
            "reservation_id: unknown reservation (never issued by this service)",
        ));
    }
    if secret.subjects_tag(subjects) != bind {
        return Err(invalid(
            "subjects",
            "do not match the subjects the reservation was made for: settle a \
             reservation with the same subjects as its CheckLimits",
        ));
    }
    Ok(id)
}

/// A lease id, checked like a reservation id (without subjects).
pub fn parse_lease_id(secret: &Secret, raw: &str) -> Result<u64, Status> {
    let field = "lease_id";
    let digits = ID_DIGITS + TAG_DIGITS;
    let bytes = raw
        .strip_prefix(LEASE_PREFIX)
        .filter(|d| d.len() == digits)
        .and_then(strict_hex)
        .ok_or_else(|| malformed(field, LEASE_PREFIX, digits))?;
    let id = u64::from_be_bytes(bytes[..8].try_into().expect("eight bytes"));
    if !secret.verify_id_tag(LEASE_KIND, id, 0, &bytes[8..]) {
        return Err(Status::not_found(
            "lease_id: unknown lease (never issued by this service)",
        ));
    }
    Ok(id)
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
    fn ids_round_trip_and_reject_garbage_and_forgeries() {
        let secret = Secret::new(b"a server secret of some length").unwrap();
        let other = Secret::new(b"another server secret, as long").unwrap();
        let subjects = [
            Subject::new(Dimension::ApiKey, "k"),
            Subject::new(Dimension::Team, "t"),
        ];
        let bind = secret.subjects_tag(&subjects);
        let id = 0xdead_beef_0000_0001;
        let rsv = reservation_id(&secret, id, bind);
        assert_eq!(rsv.len(), 4 + 48);
        assert_eq!(parse_reservation_id(&secret, &rsv, &subjects).unwrap(), id);
        let reversed = [subjects[1].clone(), subjects[0].clone()];
        assert_eq!(parse_reservation_id(&secret, &rsv, &reversed).unwrap(), id);
        let lease = lease_id(&secret, id);
        assert_eq!(parse_lease_id(&secret, &lease).unwrap(), id);

        // Settling with other subjects names `subjects`.
        let e = parse_reservation_id(&secret, &rsv, &subjects[..1]).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("subjects:"), "{}", e.message());
        // The neighbour of an issued id, another service's id, or one with
        // a changed subjects digest is not found.
        for forged in [
            format!("rsv_{:016x}{}", id + 1, &rsv[4 + 16..]),
            reservation_id(&other, id, bind),
            format!("rsv_{id:016x}{:08x}{}", bind ^ 1, &rsv[4 + 24..]),
            format!("rsv_{:016x}{}", id - 1, &rsv[4 + 16..]),
        ] {
            let e = parse_reservation_id(&secret, &forged, &subjects).unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{forged}");
        }
        let e = parse_lease_id(&secret, &lease_id(&other, id)).unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        // Malformed: wrong kind, a sign, upper case, short, empty.
        for bad in [
            lease.clone(),
            format!("rsv_+{}", &rsv[5..]),
            rsv.to_uppercase().replace("RSV_", "rsv_"),
            rsv[..rsv.len() - 1].to_owned(),
            "rsv_xyz".to_owned(),
            String::new(),
        ] {
            let e = parse_reservation_id(&secret, &bad, &subjects).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
            assert!(e.message().starts_with("reservation_id:"));
        }
        assert_eq!(
            parse_lease_id(&secret, &rsv).unwrap_err().code(),
            Code::InvalidArgument
        );
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
