//! How a subject is named outside the request: in reasons, logs, metrics
//! labels and traces. API keys are secrets, so a key is shown by its
//! configured alias or by a short stable hash, never raw.

use limits_core::{Dimension, Subject, SubjectLimits};

/// FNV-1a, 64 bits: stable across processes and versions (unlike the std
/// hasher), so the same key hashes the same on every replica and restart.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A short stable hash of an id: 12 hex digits.
pub fn short_hash(id: &str) -> String {
    format!("{:012x}", fnv1a(id.as_bytes()) >> 16)
}

/// `dimension:alias`, else `api_key:<hash>` for keys, else `dimension:id`
/// (user and team ids are not secrets, unless `hide_ids` says so). The rate
/// limit service's internal descriptor counters are `descriptor:<rule name>`
/// or `descriptor:<hash>`: their ids hold descriptor values, which may be
/// secrets, and are never shown.
pub fn display(subject: &Subject, limits: &SubjectLimits, hide_ids: bool) -> String {
    if crate::rls_config::is_internal(&subject.id) {
        return match limits.alias() {
            Some(name) => format!("descriptor:{name}"),
            None => format!("descriptor:{}", short_hash(&subject.id)),
        };
    }
    let dim = subject.dimension.as_str();
    if let Some(alias) = limits.alias() {
        return format!("{dim}:{alias}");
    }
    if subject.dimension == Dimension::ApiKey || hide_ids {
        return format!("{dim}:{}", short_hash(&subject.id));
    }
    format!("{dim}:{}", subject.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_a_raw_api_key() {
        let key = Subject::new(Dimension::ApiKey, "sk-secret-123");
        let shown = display(&key, &SubjectLimits::UNLIMITED, false);
        assert!(!shown.contains("sk-secret-123"));
        assert_eq!(shown, format!("api_key:{}", short_hash("sk-secret-123")));
        let aliased = SubjectLimits::default().with_alias("prod");
        assert_eq!(display(&key, &aliased, false), "api_key:prod");
        let team = Subject::new(Dimension::Team, "eng");
        assert_eq!(display(&team, &SubjectLimits::UNLIMITED, false), "team:eng");
    }

    #[test]
    fn descriptor_counters_are_never_shown_raw() {
        let id = crate::rls_config::counter_id("d", [("api_key", "sk-secret-123")]);
        let counter = Subject::new(Dimension::ApiKey, id.as_str());
        let shown = display(&counter, &SubjectLimits::UNLIMITED, false);
        assert_eq!(shown, format!("descriptor:{}", short_hash(&id)));
        assert!(!shown.contains("sk-secret"));
        let named = SubjectLimits::default().with_alias("per-key");
        assert_eq!(display(&counter, &named, false), "descriptor:per-key");
    }

    #[test]
    fn the_hash_is_stable() {
        // Fixed value: the hash must not change between releases, or every
        // dashboard keyed on it breaks.
        assert_eq!(short_hash("sk-secret-123"), short_hash("sk-secret-123"));
        assert_eq!(
            short_hash(""),
            format!("{:012x}", 0xcbf2_9ce4_8422_2325u64 >> 16)
        );
    }
}
