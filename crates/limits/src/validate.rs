//! The rules every request meets before it reaches the store, with errors
//! that name the field. The gRPC server converts its messages to these
//! types and applies the same rules, so the two cannot disagree.

use std::time::Duration;

use limits_core::{Dimension, Nanos, Subject};

use crate::Error;

/// The longest subject id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// The longest model name accepted, in bytes.
pub const MAX_MODEL_BYTES: usize = 256;
/// The most subjects one request may name (one per dimension).
pub const MAX_SUBJECTS: usize = 4;

/// One subject's id, named `field` in errors (the field name is only
/// formatted when there is an error: this runs on every request).
pub fn subject_id(field: impl std::fmt::Display, id: &str) -> Result<(), Error> {
    let bad = |reason: String| Error::invalid(format!("{field}.id"), reason);
    if id.is_empty() {
        return Err(bad("must not be empty".to_owned()));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(bad(format!(
            "must be at most {MAX_ID_BYTES} bytes, got {}",
            id.len()
        )));
    }
    // Control characters have no place in an id, and keeping them out
    // leaves the service a namespace of its own for internal counters (rate
    // limit service descriptors).
    if id.chars().any(char::is_control) {
        return Err(bad("must not contain control characters".to_owned()));
    }
    Ok(())
}

/// The 1–4 subjects of a request, at most one per dimension.
pub fn subjects(subjects: &[Subject]) -> Result<(), Error> {
    if subjects.is_empty() {
        return Err(Error::invalid(
            "subjects",
            "at least one subject is required",
        ));
    }
    if subjects.len() > MAX_SUBJECTS {
        return Err(Error::invalid(
            "subjects",
            format!(
                "at most {MAX_SUBJECTS} subjects (one per dimension), got {}",
                subjects.len()
            ),
        ));
    }
    let mut seen = [false; Dimension::ALL.len()];
    for (i, s) in subjects.iter().enumerate() {
        subject_id(format_args!("subjects[{i}]"), &s.id)?;
        if std::mem::replace(&mut seen[s.dimension.index()], true) {
            return Err(Error::invalid(
                format!("subjects[{i}]"),
                format!(
                    "duplicate {} subject: at most one per dimension",
                    s.dimension.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// A model name: at most [`MAX_MODEL_BYTES`] bytes.
pub fn model(field: &str, model: &str) -> Result<(), Error> {
    if model.len() > MAX_MODEL_BYTES {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_MODEL_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// An optional TTL: unset takes `default`; zero or over [`crate::MAX_TTL`]
/// is invalid.
pub fn ttl(field: &str, ttl: Option<Duration>, default: Duration) -> Result<Nanos, Error> {
    let Some(d) = ttl else {
        return Ok(Nanos::from(default));
    };
    if d.is_zero() {
        return Err(Error::invalid(field, "must be greater than zero"));
    }
    if d > crate::MAX_TTL {
        return Err(Error::invalid(
            field,
            format!(
                "must be at most {}",
                humantime::format_duration(crate::MAX_TTL)
            ),
        ));
    }
    Ok(Nanos::from(d))
}

/// Total tokens of a usage record: 0 means the sum of the parts, otherwise
/// it must be at least their sum.
pub fn total_tokens(request: u64, response: u64, total: u64) -> Result<u64, Error> {
    let sum = request.checked_add(response).ok_or_else(|| {
        Error::invalid(
            "response_tokens",
            "request_tokens + response_tokens overflows",
        )
    })?;
    if total == 0 {
        return Ok(sum);
    }
    if total < sum {
        return Err(Error::invalid(
            "total_tokens",
            format!("{total} is less than request_tokens + response_tokens ({sum})"),
        ));
    }
    Ok(total)
}

/// A check's token estimate: the total and its input and output parts.
/// A part not given is what the other leaves of the total, or all of it
/// when neither is given (it could all be input, or all output); with no
/// total (0), the parts given make it. Parts larger than the total are
/// refused.
pub fn token_estimate(
    total: u64,
    input: Option<u64>,
    output: Option<u64>,
) -> Result<(u64, u64, u64), Error> {
    let parts = input
        .unwrap_or(0)
        .checked_add(output.unwrap_or(0))
        .ok_or_else(|| {
            Error::invalid(
                "estimated_output_tokens",
                "estimated_input_tokens + estimated_output_tokens overflows",
            )
        })?;
    let total = match total {
        0 => parts,
        t if t < parts => {
            return Err(Error::invalid(
                "estimated_tokens",
                format!("{t} is less than its input and output parts ({parts})"),
            ));
        }
        t => t,
    };
    let (input, output) = match (input, output) {
        (Some(i), Some(o)) => (i, o),
        (Some(i), None) => (i, total - i),
        (None, Some(o)) => (total - o, o),
        (None, None) => (total, total),
    };
    Ok((total, input, output))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(d: Dimension, id: &str) -> Subject {
        Subject::new(d, id)
    }

    #[test]
    fn a_token_estimate_s_parts_default_to_what_the_total_leaves() {
        assert_eq!(
            token_estimate(1000, None, None).unwrap(),
            (1000, 1000, 1000)
        );
        assert_eq!(
            token_estimate(1000, Some(800), None).unwrap(),
            (1000, 800, 200)
        );
        assert_eq!(
            token_estimate(1000, None, Some(300)).unwrap(),
            (1000, 700, 300)
        );
        assert_eq!(
            token_estimate(1000, Some(600), Some(300)).unwrap(),
            (1000, 600, 300)
        );
        assert_eq!(
            token_estimate(0, Some(600), Some(300)).unwrap(),
            (900, 600, 300)
        );
        assert_eq!(token_estimate(0, None, None).unwrap(), (0, 0, 0));
        assert_eq!(token_estimate(0, Some(500), None).unwrap(), (500, 500, 0));
        let e = token_estimate(100, Some(600), None).unwrap_err();
        assert!(
            e.to_string().starts_with("estimated_tokens: 100 is less"),
            "{e}"
        );
        assert!(token_estimate(0, Some(u64::MAX), Some(1)).is_err());
    }

    fn field(e: Error) -> String {
        match e {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_bad_subjects_naming_the_field() {
        assert_eq!(field(subjects(&[]).unwrap_err()), "subjects");
        assert_eq!(
            field(subjects(&[s(Dimension::ApiKey, "")]).unwrap_err()),
            "subjects[0].id"
        );
        assert_eq!(
            field(subjects(&[s(Dimension::ApiKey, &"x".repeat(257))]).unwrap_err()),
            "subjects[0].id"
        );
        let e = subjects(&[s(Dimension::Team, "a\u{1}b")]).unwrap_err();
        assert!(e.to_string().contains("control characters"));
        let two = [s(Dimension::User, "a"), s(Dimension::User, "b")];
        assert_eq!(field(subjects(&two).unwrap_err()), "subjects[1]");
    }

    #[test]
    fn tokens_must_add_up_and_ttls_be_positive() {
        assert_eq!(total_tokens(10, 5, 0).unwrap(), 15);
        assert_eq!(total_tokens(10, 5, 20).unwrap(), 20);
        assert_eq!(field(total_tokens(10, 5, 14).unwrap_err()), "total_tokens");
        assert!(total_tokens(u64::MAX, 1, 0).is_err());
        let d = Duration::from_secs(60);
        assert_eq!(ttl("ttl", None, d).unwrap(), Nanos::from_secs(60));
        assert_eq!(
            field(ttl("ttl", Some(Duration::ZERO), d).unwrap_err()),
            "ttl"
        );
        assert!(ttl("ttl", Some(Duration::from_secs(8 * 86_400)), d).is_err());
    }
}
