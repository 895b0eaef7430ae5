//! How a subject is named outside the request: in reasons, logs, metrics
//! labels and traces. API keys are secrets, so a key is shown by its
//! configured alias or by a prefix of its keyed hash (the one it is stored
//! under), never raw.

use limits_core::{Dimension, Subject, SubjectLimits};
use limits_store::Secret;

/// Hex digits of a keyed hash shown: 48 bits, enough to tell keys apart on
/// a dashboard, and without the secret they reveal nothing about the key.
const SHOWN_DIGITS: usize = 12;

/// A short stable name for an id that must not be shown: a prefix of its
/// keyed hash, the same on every replica that shares the secret.
pub fn short_hash(secret: &Secret, id: &str) -> String {
    let stored = secret.stored_key(id);
    stored
        .trim_start_matches(limits_store::INTERNAL)
        .chars()
        .take(SHOWN_DIGITS)
        .collect()
}

/// `dimension:alias`, else `api_key:<hash>` for keys, else `dimension:id`
/// (user and team ids are not secrets, unless `hide_ids` says so). The rate
/// limit service's internal descriptor counters are `descriptor:<rule name>`
/// or `descriptor:<hash>`: their ids hold descriptor values, which may be
/// secrets, and are never shown.
pub fn display(
    secret: &Secret,
    subject: &Subject,
    limits: &SubjectLimits,
    hide_ids: bool,
) -> String {
    if crate::config::rls::is_internal(&subject.id) {
        return match limits.alias() {
            Some(name) => format!("descriptor:{name}"),
            None => format!("descriptor:{}", short_hash(secret, &subject.id)),
        };
    }
    let dim = subject.dimension.as_str();
    if let Some(alias) = limits.alias() {
        return format!("{dim}:{alias}");
    }
    if subject.dimension == Dimension::ApiKey || hide_ids {
        return format!("{dim}:{}", short_hash(secret, &subject.id));
    }
    format!("{dim}:{}", subject.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new(b"a server secret of some length").unwrap()
    }

    #[test]
    fn never_shows_a_raw_api_key() {
        let secret = secret();
        let key = Subject::new(Dimension::ApiKey, "sk-secret-123");
        let shown = display(&secret, &key, &SubjectLimits::UNLIMITED, false);
        assert!(!shown.contains("sk-secret-123"));
        assert_eq!(
            shown,
            format!("api_key:{}", short_hash(&secret, "sk-secret-123"))
        );
        let aliased = SubjectLimits::default().with_alias("prod");
        assert_eq!(display(&secret, &key, &aliased, false), "api_key:prod");
        let team = Subject::new(Dimension::Team, "eng");
        assert_eq!(
            display(&secret, &team, &SubjectLimits::UNLIMITED, false),
            "team:eng"
        );
    }

    #[test]
    fn descriptor_counters_are_never_shown_raw() {
        let secret = secret();
        let id = crate::config::rls::counter_id("d", [("api_key", "sk-secret-123")]);
        let counter = Subject::new(Dimension::ApiKey, id.as_str());
        let shown = display(&secret, &counter, &SubjectLimits::UNLIMITED, false);
        assert_eq!(shown, format!("descriptor:{}", short_hash(&secret, &id)));
        assert!(!shown.contains("sk-secret") && !shown.contains('\u{1}'));
        let named = SubjectLimits::default().with_alias("per-key");
        assert_eq!(
            display(&secret, &counter, &named, false),
            "descriptor:per-key"
        );
    }

    /// Regression: the unkeyed 48-bit FNV hash shown before gave keys that
    /// differ in one character identifiers that differ in one digit, and
    /// anyone could compute it from a guessed key.
    #[test]
    fn the_hash_is_keyed_stable_and_scatters_neighbours() {
        let secret = secret();
        let a = short_hash(&secret, "sk-secret-123");
        assert_eq!(a.len(), SHOWN_DIGITS);
        assert_eq!(a, short_hash(&secret, "sk-secret-123"));
        let other = Secret::new(b"another server secret, as long").unwrap();
        assert_ne!(a, short_hash(&other, "sk-secret-123"));
        let b = short_hash(&secret, "sk-secret-124");
        let same = a.chars().zip(b.chars()).filter(|(x, y)| x == y).count();
        assert!(same < 6, "{a} vs {b}");
    }
}
