//! The server secret, and what is derived from it: the keyed hash under
//! which API-key subjects are stored, and the keys that authenticate
//! reservation and lease ids.
//!
//! API keys are secrets. A store never writes one raw: before an API-key
//! subject (or one of the rate limit service's internal counters, whose ids
//! hold descriptor values) reaches the state table, sled or Redis, its id is
//! replaced by a keyed BLAKE3 hash of it ([`Secret::stored_subject`]). The
//! key is derived from the server secret, so the same key hashes the same on
//! every replica and across restarts, and someone who reads the store
//! without the secret cannot test guesses against it.
//!
//! The secret comes from the config (`security.secret`, the same on every
//! replica). Without one, a store makes its own once and keeps it beside its
//! data (sled: in the database; Redis: under the key prefix; memory: for the
//! life of the process), so that ids and hashes stay stable; the store
//! records a fingerprint of the secret its data was written with, so that a
//! different secret is a clear error instead of silently orphaned state.

use std::fmt;

use limits_core::{Dimension, Subject};

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// What marks the id of one of the rate limit service's internal counters
/// (a control character, which no caller-supplied id may contain). Hashed
/// counter ids keep it, so stores can tell counters from subjects.
pub const INTERNAL: char = '\u{1}';

/// Derivation contexts: one key per purpose, never reused across purposes.
const SUBJECT_CONTEXT: &str = "limitsd 2026-12 stored subject id";
const ID_CONTEXT: &str = "limitsd 2026-12 reservation and lease id tag";
const BIND_CONTEXT: &str = "limitsd 2026-12 reservation subjects tag";
const FINGERPRINT_CONTEXT: &str = "limitsd 2026-12 secret fingerprint";
const ROOT_CONTEXT: &str = "limitsd 2026-12 server secret";

/// The server secret. Its `Debug` shows only its fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    root: [u8; 32],
    subject: [u8; 32],
    ids: [u8; 32],
    bind: [u8; 32],
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", hex::encode(self.fingerprint()))
    }
}

/// A secret shorter than [`MIN_SECRET_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "must be at least {MIN_SECRET_BYTES} bytes (32 random bytes recommended, e.g. `openssl rand -hex 32`), got {0}"
)]
pub struct SecretTooShort(pub usize);

impl Secret {
    /// The secret from its configured text or bytes.
    pub fn new(material: &[u8]) -> Result<Secret, SecretTooShort> {
        if material.len() < MIN_SECRET_BYTES {
            return Err(SecretTooShort(material.len()));
        }
        Ok(Secret::from_root(blake3::derive_key(
            ROOT_CONTEXT,
            material,
        )))
    }

    /// A fresh random secret (a store's own, when none is configured).
    pub fn generate() -> Secret {
        Secret::from_root(rand::random())
    }

    /// The secret from the 32 bytes [`root`](Self::root) returned.
    pub fn from_root(root: [u8; 32]) -> Secret {
        Secret {
            root,
            subject: blake3::derive_key(SUBJECT_CONTEXT, &root),
            ids: blake3::derive_key(ID_CONTEXT, &root),
            bind: blake3::derive_key(BIND_CONTEXT, &root),
        }
    }

    /// The derived root key, which is what a store keeps when it made the
    /// secret itself.
    pub fn root(&self) -> &[u8; 32] {
        &self.root
    }

    /// Eight bytes that tell secrets apart without revealing them.
    pub fn fingerprint(&self) -> [u8; 8] {
        let h = blake3::derive_key(FINGERPRINT_CONTEXT, &self.root);
        h[..8].try_into().expect("eight bytes")
    }

    /// The id a subject is stored under. API keys, and the internal counters
    /// (whose ids may hold secrets), become a keyed hash: 32 hex digits,
    /// after the internal marker for a counter. User, team and org ids are not
    /// secrets and are stored as they are.
    pub fn stored_subject(&self, subject: &Subject) -> Subject {
        match subject.dimension {
            Dimension::ApiKey => Subject {
                dimension: Dimension::ApiKey,
                id: self.stored_key(&subject.id),
            },
            Dimension::User | Dimension::Team | Dimension::Org => subject.clone(),
        }
    }

    /// [`stored_subject`](Self::stored_subject)'s id for an API key.
    pub fn stored_key(&self, id: &str) -> String {
        let hash = blake3::keyed_hash(&self.subject, id.as_bytes());
        let digits = hex::encode(&hash.as_bytes()[..16]);
        if id.starts_with(INTERNAL) {
            let mut out = String::with_capacity(1 + digits.len());
            out.push(INTERNAL);
            out.push_str(&digits);
            out
        } else {
            digits
        }
    }

    /// The authentication tag of an id of `kind` (0: reservation, 1: lease)
    /// carrying `bind`: twelve bytes.
    pub fn id_tag(&self, kind: u8, id: u64, bind: u32) -> [u8; 12] {
        let mut input = [0u8; 13];
        input[0] = kind;
        input[1..9].copy_from_slice(&id.to_be_bytes());
        input[9..13].copy_from_slice(&bind.to_be_bytes());
        let h = blake3::keyed_hash(&self.ids, &input);
        h.as_bytes()[..12].try_into().expect("twelve bytes")
    }

    /// Whether `tag` is [`id_tag`](Self::id_tag)'s, in constant time.
    pub fn verify_id_tag(&self, kind: u8, id: u64, bind: u32, tag: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        tag.len() == 12 && bool::from(self.id_tag(kind, id, bind).ct_eq(tag))
    }

    /// A four-byte digest of a request's subjects (as named, in any order),
    /// which a reservation id carries so that it is settled against the same
    /// subjects.
    pub fn subjects_tag(&self, subjects: &[Subject]) -> u32 {
        let mut sorted: Vec<&Subject> = subjects.iter().collect();
        sorted.sort_by_key(|s| (s.dimension.index(), s.id.as_str()));
        let mut h = blake3::Hasher::new_keyed(&self.bind);
        for s in sorted {
            h.update(&[s.dimension.index() as u8]);
            h.update(&(s.id.len() as u64).to_be_bytes());
            h.update(s.id.as_bytes());
        }
        let out = h.finalize();
        u32::from_be_bytes(out.as_bytes()[..4].try_into().expect("four bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(Secret::new(b"short").unwrap_err(), SecretTooShort(5));
        assert!(Secret::new(&[7; MIN_SECRET_BYTES]).is_ok());
    }

    #[test]
    fn api_keys_are_stored_by_a_keyed_hash() {
        let a = secret("0123456789abcdef0123");
        let b = secret("0123456789abcdef0124");
        let key = Subject::new(Dimension::ApiKey, "sk-live-123");
        let stored = a.stored_subject(&key);
        assert_eq!(stored.dimension, Dimension::ApiKey);
        assert!(!stored.id.contains("sk-live"));
        assert_eq!(stored.id.len(), 32);
        assert_eq!(stored, a.stored_subject(&key), "stable");
        assert_ne!(stored, b.stored_subject(&key), "keyed");
        // Keys that differ in one character share nothing visible.
        let near = a.stored_subject(&Subject::new(Dimension::ApiKey, "sk-live-124"));
        let same = stored
            .id
            .bytes()
            .zip(near.id.bytes())
            .take_while(|(x, y)| x == y)
            .count();
        assert!(same < 8, "{} vs {}", stored.id, near.id);
        let team = Subject::new(Dimension::Team, "eng");
        assert_eq!(a.stored_subject(&team), team);
        let counter = Subject::new(Dimension::ApiKey, "\u{1}rls\u{2}d\u{3}k\u{4}sk-1");
        let stored = a.stored_subject(&counter);
        assert!(stored.id.starts_with(INTERNAL) && !stored.id.contains("sk-1"));
    }

    #[test]
    fn id_tags_authenticate_the_id_and_its_subjects_tag() {
        let a = secret("0123456789abcdef0123");
        let b = secret("another secret of enough length");
        let tag = a.id_tag(0, 42, 7);
        assert!(a.verify_id_tag(0, 42, 7, &tag));
        assert!(!a.verify_id_tag(0, 43, 7, &tag));
        assert!(!a.verify_id_tag(0, 42, 8, &tag));
        assert!(!a.verify_id_tag(1, 42, 7, &tag), "kinds do not mix");
        assert!(!b.verify_id_tag(0, 42, 7, &tag));
        assert!(!a.verify_id_tag(0, 42, 7, &tag[..11]));
    }

    #[test]
    fn the_subjects_tag_ignores_order_and_tells_sets_apart() {
        let a = secret("0123456789abcdef0123");
        let k = Subject::new(Dimension::ApiKey, "k");
        let t = Subject::new(Dimension::Team, "t");
        let u = Subject::new(Dimension::User, "t");
        assert_eq!(
            a.subjects_tag(&[k.clone(), t.clone()]),
            a.subjects_tag(&[t.clone(), k.clone()])
        );
        assert_ne!(
            a.subjects_tag(&[k.clone(), t.clone()]),
            a.subjects_tag(std::slice::from_ref(&k))
        );
        assert_ne!(a.subjects_tag(&[t]), a.subjects_tag(&[u]));
    }

    #[test]
    fn debug_shows_only_the_fingerprint() {
        let a = secret("0123456789abcdef0123");
        let shown = format!("{a:?}");
        assert_eq!(shown, format!("Secret({})", hex::encode(a.fingerprint())));
        assert_eq!(Secret::from_root(*a.root()), a);
    }
}
