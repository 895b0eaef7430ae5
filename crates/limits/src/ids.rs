//! Reservation and lease ids as callers see them: the store's id with a
//! tag that authenticates it with the server secret, so that ids cannot be
//! guessed or forged, and (for a reservation) a digest of the subjects it
//! was made for. Parsing is strict: one spelling per id.

use limits_core::Subject;
use limits_store::Secret;

use crate::Error;

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

fn malformed(field: &str, prefix: &str, digits: usize) -> Error {
    Error::invalid(
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
) -> Result<u64, Error> {
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
        return Err(Error::NotFound(
            "reservation_id: unknown reservation (never issued by this service)".into(),
        ));
    }
    if secret.subjects_tag(subjects) != bind {
        return Err(Error::invalid(
            "subjects",
            "do not match the subjects the reservation was made for: settle a \
             reservation with the same subjects as its CheckLimits",
        ));
    }
    Ok(id)
}

/// A lease id, checked like a reservation id (without subjects).
pub fn parse_lease_id(secret: &Secret, raw: &str) -> Result<u64, Error> {
    let field = "lease_id";
    let digits = ID_DIGITS + TAG_DIGITS;
    let bytes = raw
        .strip_prefix(LEASE_PREFIX)
        .filter(|d| d.len() == digits)
        .and_then(strict_hex)
        .ok_or_else(|| malformed(field, LEASE_PREFIX, digits))?;
    let id = u64::from_be_bytes(bytes[..8].try_into().expect("eight bytes"));
    if !secret.verify_id_tag(LEASE_KIND, id, 0, &bytes[8..]) {
        return Err(Error::NotFound(
            "lease_id: unknown lease (never issued by this service)".into(),
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use limits_core::Dimension;

    fn code(e: &Error) -> &'static str {
        match e {
            Error::InvalidArgument { .. } => "invalid",
            Error::NotFound(_) => "not found",
            _ => "other",
        }
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
        assert_eq!(code(&e), "invalid");
        assert!(e.to_string().starts_with("subjects:"), "{e}");
        // The neighbour of an issued id, another service's id, or one with
        // a changed subjects digest is not found.
        for forged in [
            format!("rsv_{:016x}{}", id + 1, &rsv[4 + 16..]),
            reservation_id(&other, id, bind),
            format!("rsv_{id:016x}{:08x}{}", bind ^ 1, &rsv[4 + 24..]),
            format!("rsv_{:016x}{}", id - 1, &rsv[4 + 16..]),
        ] {
            let e = parse_reservation_id(&secret, &forged, &subjects).unwrap_err();
            assert_eq!(code(&e), "not found", "{forged}");
        }
        let e = parse_lease_id(&secret, &lease_id(&other, id)).unwrap_err();
        assert_eq!(code(&e), "not found");
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
            assert_eq!(code(&e), "invalid", "{bad}");
            assert!(e.to_string().starts_with("reservation_id:"));
        }
        assert_eq!(code(&parse_lease_id(&secret, &rsv).unwrap_err()), "invalid");
    }
}
