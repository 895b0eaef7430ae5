//! Subjects on the command line: `api_key=sk-...`, `user=alice`,
//! `team=engineering`, and for admin commands `api_key_hash=<32 hex>`, an
//! API key known only by the keyed hash answers show.
//!
//! API keys are secrets: nothing here prints one. An answer's API key is
//! shown as `api_key_hash=<hash>`, which an operator can paste back into
//! any admin command.

use std::fmt;
use std::str::FromStr;

use limits_server::pb;
use limits_server::pb::admin as apb;

/// What a subject argument should look like, for error messages.
const FORMS: &str = "expected DIMENSION=ID: api_key=sk-..., user=alice, team=engineering, org=acme or api_key_hash=<32 hex digits>";

/// A subject named by its id, as the data plane takes it.
#[derive(Clone, PartialEq, Eq)]
pub struct Subject {
    pub dimension: pb::Dimension,
    pub id: String,
}

/// A subject an admin command names: by its id, or an API key by its
/// keyed hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectRef {
    Id(Subject),
    KeyHash(String),
}

impl FromStr for SubjectRef {
    type Err = String;

    fn from_str(s: &str) -> Result<SubjectRef, String> {
        let (dimension, id) = s.split_once('=').ok_or_else(|| FORMS.to_owned())?;
        let dimension = match dimension {
            "api_key_hash" => {
                let hash = id.strip_prefix("api_key:").unwrap_or(id);
                if hash.len() != 32 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("api_key_hash must be 32 hex digits, not {id:?}"));
                }
                return Ok(SubjectRef::KeyHash(hash.to_ascii_lowercase()));
            }
            "api_key" => pb::Dimension::ApiKey,
            "user" => pb::Dimension::User,
            "team" => pb::Dimension::Team,
            "org" => pb::Dimension::Org,
            other => return Err(format!("unknown dimension {other:?}: {FORMS}")),
        };
        if id.is_empty() {
            return Err(format!(
                "the id after {dimension_name}= is empty",
                dimension_name = dimension_name(dimension)
            ));
        }
        Ok(SubjectRef::Id(Subject {
            dimension,
            id: id.to_owned(),
        }))
    }
}

impl FromStr for Subject {
    type Err = String;

    fn from_str(s: &str) -> Result<Subject, String> {
        match s.parse()? {
            SubjectRef::Id(subject) => Ok(subject),
            SubjectRef::KeyHash(_) => Err(
                "usage needs the API key itself (api_key=...): limitsd shows usage only to \
                 whoever holds the key; api_key_hash names a key in admin commands"
                    .to_owned(),
            ),
        }
    }
}

impl Subject {
    /// The subject on the wire.
    pub fn pb(&self) -> pb::Subject {
        pb::Subject {
            dimension: self.dimension as i32,
            id: self.id.clone(),
        }
    }
}

impl SubjectRef {
    /// The subject as the admin API takes it.
    pub fn pb(&self) -> apb::SubjectRef {
        match self {
            SubjectRef::Id(s) => apb::SubjectRef {
                subject: Some(s.pb()),
                key_hash: String::new(),
            },
            SubjectRef::KeyHash(hash) => apb::SubjectRef {
                subject: Some(pb::Subject {
                    dimension: pb::Dimension::ApiKey as i32,
                    id: String::new(),
                }),
                key_hash: hash.clone(),
            },
        }
    }
}

/// The dimension as the command line spells it.
pub fn dimension_name(d: pb::Dimension) -> &'static str {
    match d {
        pb::Dimension::ApiKey => "api_key",
        pb::Dimension::User => "user",
        pb::Dimension::Team => "team",
        pb::Dimension::Org => "org",
        pb::Dimension::Unspecified => "unspecified",
    }
}

/// Shows a subject the way it is typed, except an API key, which shows as
/// `api_key=…`: the key is a secret even in a terminal's scrollback.
impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dimension {
            pb::Dimension::ApiKey => f.write_str("api_key=…"),
            d => write!(f, "{}={}", dimension_name(d), self.id),
        }
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SubjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectRef::Id(s) => s.fmt(f),
            SubjectRef::KeyHash(hash) => write!(f, "api_key_hash={hash}"),
        }
    }
}

/// How an admin answer's subject is shown: `api_key_hash=<hash>` for an
/// API key (answers never carry the key), `user=alice` otherwise.
pub fn shown(subject: Option<&pb::Subject>, key_hash: &str) -> String {
    let Some(s) = subject else {
        return "-".to_owned();
    };
    match pb::Dimension::try_from(s.dimension) {
        Ok(pb::Dimension::ApiKey) => format!("api_key_hash={key_hash}"),
        Ok(d) => format!("{}={}", dimension_name(d), s.id),
        Err(_) => format!("dimension {}={}", s.dimension, s.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let r: SubjectRef = "team=research".parse().unwrap();
        assert_eq!(r.to_string(), "team=research");
        let r: SubjectRef = "api_key=sk-live-123".parse().unwrap();
        assert_eq!(r.pb().subject.unwrap().id, "sk-live-123");
        assert_eq!(r.to_string(), "api_key=…", "a key is never shown");
        let r: SubjectRef = "api_key_hash=0123456789ABCDEF0123456789abcdef"
            .parse()
            .unwrap();
        assert_eq!(r.pb().key_hash, "0123456789abcdef0123456789abcdef");
        assert!("api_key_hash=0123".parse::<SubjectRef>().is_err());
        assert!("alice".parse::<SubjectRef>().is_err());
        assert!("group=x".parse::<SubjectRef>().is_err());
        assert!("user=".parse::<SubjectRef>().is_err());
        // An id may itself contain `=`.
        let s: Subject = "user=a=b".parse().unwrap();
        assert_eq!(s.id, "a=b");
        assert!(
            "api_key_hash=0123456789abcdef0123456789abcdef"
                .parse::<Subject>()
                .is_err()
        );
    }
}
