//! The on-disk encoding of the durable backend: keys and versioned binary
//! values, hand-rolled (LEB128 varints and fixed little-endian words) so the
//! format is small, explicit and owned by this crate rather than by a
//! serialisation library's defaults.
//!
//! Keys carry their own format version in a prefix:
//!
//! | key                              | value                                  |
//! |----------------------------------|----------------------------------------|
//! | `format`                         | `[FORMAT]`: the whole store's version  |
//! | `s1/<dimension byte><id bytes>`  | a subject's durable state              |
//! | `l1/<lease id, u64 big-endian>`  | a lease index entry (no longer written: the index is rebuilt from the subjects' leases on open, which drops these) |
//! | `m1/ids/r`, `m1/ids/l`           | an id generator's prefix and high-water |
//! | `m1/secret`                      | the store's own secret (32 bytes), if it made one |
//! | `m1/secret-fp`                   | the fingerprint of the secret the data was written with |
//! | `r1/<record key bytes>`          | an admin record (runtime limits, budget increases) |
//! | `a1/<sequence, u64 big-endian>`  | an audit event                          |
//!
//! Admin records and audit events are the admin API's own bytes, kept as
//! they are after the version byte: the store neither reads nor changes
//! them.
//!
//! Every value starts with its format version byte; a reader rejects a
//! version it does not know instead of guessing. Subject states are at
//! [`STATE_VERSION`] (versions 1 and 2 lacked the holds' tags and their
//! input and output tokens, versions 1 to 3 the fired alert thresholds, and
//! versions 1 to 4 a streamed request's progress, and versions 1 to 5
//! kept settled reservations as settled holds; all are still read);
//! everything else is at [`VERSION`].
//!
//! Format 1 stored API-key subjects under their raw ids; format 2 stores
//! them (and the rate limit service's internal counters) under their keyed
//! hash ([`crate::Secret::stored_subject`]). Opening a format-1 store
//! rewrites it as format 2.
//!
//! A subject's value, after the version byte:
//! windows (`varint count`, then per window `kind byte` (`LimitKind::index`
//! of a windowed kind, 0 to 12; 64 to 66 the calendar slots of a day, a
//! week and a month, whose bucket index is the last nanosecond of their
//! period), `varint buckets`,
//! the first bucket's `varint index` and `varint amount`, then each later
//! bucket as `varint index delta (>= 1)` and `varint amount`), holds (`varint
//! count`, then per hold `u64 id`, `varint cost`, `varint tokens`, `u64
//! expires_at`, `settled byte` (from version 5 a flags byte: 1 settled, 2
//! stopped, 4 progress follows), from version 2 `u32 tag`, from version 3
//! `varint input` and `varint output` tokens, and from version 5, when the
//! progress flag is set (a reservation some record charged or numbered),
//! what its records charged as `varint cost`, `varint tokens`, `varint
//! input`, `varint output`, then `u32` the last record's number) and leases (`varint count`, then per lease
//! `u64 id`, `u64 expires_at`), and from version 4 the fired alert
//! thresholds (`varint count`, then per budget window its `kind byte`, a
//! `bits byte` and `u64 period`), and from version 6 the settled
//! reservations (`varint count`, then, in order of expiry, each one's id as
//! a zigzag `varint` difference from the one before (from 0) and its expiry
//! as a `varint` difference from the one before (from 0)): a busy subject
//! keeps thousands, a few bytes each. Ids and instants are fixed-width because they
//! are large; counts and amounts are varints because they are mostly small.

// The Redis store uses the state and lease encodings only.
#![cfg_attr(not(feature = "sled"), allow(dead_code))]

use limits_core::SubjectState;
use limits_core::{Dimension, Hold, LeaseSlot, LimitKind, Nanos, RollingWindow, Subject};

/// The version of the store as a whole, kept under [`FORMAT_KEY`].
pub(crate) const FORMAT: u8 = 2;
/// The format that stored API keys raw, which opening migrates.
pub(crate) const FORMAT_RAW_KEYS: u8 = 1;
/// The version byte of every value but subject states.
pub(crate) const VERSION: u8 = 1;
/// The version byte of a subject state.
pub(crate) const STATE_VERSION: u8 = 6;

pub(crate) const FORMAT_KEY: &[u8] = b"format";
pub(crate) const SUBJECT_PREFIX: &[u8] = b"s1/";
pub(crate) const LEASE_PREFIX: &[u8] = b"l1/";
pub(crate) const RESERVATION_IDS_KEY: &[u8] = b"m1/ids/r";
pub(crate) const LEASE_IDS_KEY: &[u8] = b"m1/ids/l";
pub(crate) const SECRET_KEY: &[u8] = b"m1/secret";
pub(crate) const SECRET_FINGERPRINT_KEY: &[u8] = b"m1/secret-fp";
pub(crate) const RECORD_PREFIX: &[u8] = b"r1/";
pub(crate) const AUDIT_PREFIX: &[u8] = b"a1/";
/// Alert events waiting for delivery, by their key.
pub(crate) const OUTBOX_PREFIX: &[u8] = b"o1/";

/// Why a key or value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("format version {0} is not one this build reads")]
    UnknownVersion(u8),
    #[error("value ends early")]
    Truncated,
    #[error("{0}")]
    Invalid(&'static str),
}

/// Whether a window is kept on disk. Request counts over a second or a minute
/// are not: after a restart they start again from zero, which can admit at
/// most one extra window's worth of requests — and rewriting them on every
/// check would put a disk write on the hot path. The hourly request count is
/// kept, like budgets and token windows.
pub(crate) fn is_durable(kind: LimitKind) -> bool {
    !matches!(
        kind,
        LimitKind::RequestsPerSecond | LimitKind::RequestsPerMinute
    )
}

pub(crate) fn subject_key(dimension: Dimension, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(SUBJECT_PREFIX.len() + 1 + id.len());
    key.extend_from_slice(SUBJECT_PREFIX);
    key.push(dimension as u8);
    key.extend_from_slice(id.as_bytes());
    key
}

/// The subject named by a key that starts with [`SUBJECT_PREFIX`].
pub(crate) fn decode_subject_key(key: &[u8]) -> Result<Subject, DecodeError> {
    let rest = key
        .strip_prefix(SUBJECT_PREFIX)
        .ok_or(DecodeError::Invalid("not a subject key"))?;
    let (&d, id) = rest.split_first().ok_or(DecodeError::Truncated)?;
    let id =
        std::str::from_utf8(id).map_err(|_| DecodeError::Invalid("subject id is not UTF-8"))?;
    Ok(Subject::new(dimension(d)?, id))
}

pub(crate) fn decode_lease_key(key: &[u8]) -> Result<u64, DecodeError> {
    let rest = key
        .strip_prefix(LEASE_PREFIX)
        .ok_or(DecodeError::Invalid("not a lease key"))?;
    let bytes: [u8; 8] = rest
        .try_into()
        .map_err(|_| DecodeError::Invalid("lease key has the wrong length"))?;
    Ok(u64::from_be_bytes(bytes))
}

fn dimension(b: u8) -> Result<Dimension, DecodeError> {
    Dimension::ALL
        .get(usize::from(b))
        .copied()
        .ok_or(DecodeError::Invalid("unknown dimension"))
}

/// A window's kind byte: a windowed kind's index (new kinds take the next
/// index, so these never change), or [`CALENDAR_CODE`] plus the period for
/// a calendar slot.
fn window_code(kind: LimitKind) -> u8 {
    match kind.period() {
        Some(p) => CALENDAR_CODE + p as u8,
        None => kind.index() as u8,
    }
}

/// The first kind byte of the calendar slots.
const CALENDAR_CODE: u8 = 64;

/// The kind of a window's byte.
fn window_kind(b: u8) -> Result<LimitKind, DecodeError> {
    LimitKind::SLOTS
        .into_iter()
        .find(|&k| window_code(k) == b)
        .ok_or(DecodeError::Invalid("unknown window kind"))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Maps a signed difference to an unsigned one, small either way.
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Encodes the durable part of a subject's state into `out` (cleared first).
/// Returns false when nothing in it is durable, i.e. when the subject's key
/// should be deleted rather than written.
#[cfg(feature = "sled")]
pub(crate) fn encode_state(state: &SubjectState, out: &mut Vec<u8>) -> bool {
    encode_state_with(state, out, is_durable)
}

/// Encodes all of a subject's state, every window included (the shared
/// store's format, where nothing restarts from zero). Returns false when
/// the state is empty.
#[cfg(feature = "redis")]
pub(crate) fn encode_full_state(state: &SubjectState, out: &mut Vec<u8>) -> bool {
    encode_state_with(state, out, |_| true)
}

fn encode_state_with(state: &SubjectState, out: &mut Vec<u8>, keep: fn(LimitKind) -> bool) -> bool {
    out.clear();
    out.push(STATE_VERSION);
    let windows = || state.windows().filter(|(k, w)| keep(*k) && !w.is_empty());
    let count = windows().count();
    if count == 0
        && state.holds().is_empty()
        && state.settled().len() == 0
        && state.leases().is_empty()
        && state.fired().is_empty()
    {
        return false;
    }
    put_varint(out, count as u64);
    for (kind, w) in windows() {
        out.push(window_code(kind));
        let buckets = w.buckets();
        put_varint(out, buckets.len() as u64);
        let mut prev = None;
        for &(index, amount) in buckets {
            put_varint(out, prev.map_or(index, |p| index - p));
            put_varint(out, amount);
            prev = Some(index);
        }
    }
    put_varint(out, state.holds().len() as u64);
    for h in state.holds() {
        put_u64(out, h.id);
        put_varint(out, h.cost);
        put_varint(out, h.tokens);
        put_u64(out, h.expires_at.0);
        // Most holds never see a progress record: theirs is one bit.
        let progress = !h.charged.is_zero() || h.seq != 0;
        out.push(u8::from(h.settled) | u8::from(h.stopped) << 1 | u8::from(progress) << 2);
        put_u32(out, h.tag);
        put_varint(out, h.input);
        put_varint(out, h.output);
        if progress {
            put_varint(out, h.charged.cost);
            put_varint(out, h.charged.tokens);
            put_varint(out, h.charged.input);
            put_varint(out, h.charged.output);
            put_u32(out, h.seq);
        }
    }
    put_varint(out, state.leases().len() as u64);
    for l in state.leases() {
        put_u64(out, l.id);
        put_u64(out, l.expires_at.0);
    }
    put_varint(out, state.fired().len() as u64);
    for f in state.fired() {
        out.push(window_code(f.slot));
        out.push(f.bits);
        put_u64(out, f.period);
    }
    put_varint(out, state.settled().len() as u64);
    let (mut id, mut at) = (0u64, 0u64);
    for s in state.settled() {
        put_varint(out, zigzag(s.id.wrapping_sub(id) as i64));
        let later = s.expires_at.0.checked_sub(at);
        put_varint(out, later.expect("settled reservations in order of expiry"));
        (id, at) = (s.id, s.expires_at.0);
    }
    true
}

pub(crate) fn decode_state(bytes: &[u8]) -> Result<SubjectState, DecodeError> {
    let mut r = Reader { bytes };
    let version = r.byte()?;
    if !(1..=STATE_VERSION).contains(&version) {
        return Err(DecodeError::UnknownVersion(version));
    }
    let count = r.len()?;
    let mut windows = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = window_kind(r.byte()?)?;
        let n = r.len()?;
        let mut buckets = Vec::with_capacity(n);
        let mut prev: Option<u64> = None;
        for _ in 0..n {
            let raw = r.varint()?;
            let index = match prev {
                None => raw,
                Some(_) if raw == 0 => return Err(DecodeError::Invalid("buckets out of order")),
                Some(p) => p
                    .checked_add(raw)
                    .ok_or(DecodeError::Invalid("bucket index overflows"))?,
            };
            let amount = r.varint()?;
            if amount == 0 {
                return Err(DecodeError::Invalid("empty bucket"));
            }
            buckets.push((index, amount));
            prev = Some(index);
        }
        windows.push((kind, RollingWindow::from_buckets(buckets)));
    }
    let count = r.len()?;
    let mut holds = Vec::with_capacity(count);
    for _ in 0..count {
        let (id, cost, tokens) = (r.u64()?, r.varint()?, r.varint()?);
        let expires_at = Nanos(r.u64()?);
        let (settled, stopped, progress) = if version >= 5 {
            match r.byte()? {
                flags @ 0..=7 => (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0),
                _ => return Err(DecodeError::Invalid("unknown hold flags")),
            }
        } else {
            (r.flag()?, false, false)
        };
        let tag = if version >= 2 { r.u32()? } else { 0 };
        // Before version 3 a hold had no split: its tokens could be either.
        let (input, output) = if version >= 3 {
            (r.varint()?, r.varint()?)
        } else {
            (tokens, tokens)
        };
        let (charged, seq) = if progress {
            let charged = limits_core::Held {
                cost: r.varint()?,
                tokens: r.varint()?,
                input: r.varint()?,
                output: r.varint()?,
            };
            (charged, r.u32()?)
        } else {
            (limits_core::Held::default(), 0)
        };
        holds.push(Hold {
            id,
            cost,
            tokens,
            input,
            output,
            expires_at,
            settled,
            tag,
            charged,
            seq,
            stopped,
        });
    }
    let count = r.len()?;
    let mut leases = Vec::with_capacity(count);
    for _ in 0..count {
        leases.push(LeaseSlot {
            id: r.u64()?,
            expires_at: Nanos(r.u64()?),
        });
    }
    let mut fired = Vec::new();
    if version >= 4 {
        let count = r.len()?;
        for _ in 0..count {
            let slot = window_kind(r.byte()?)?;
            if !slot.is_budget() {
                return Err(DecodeError::Invalid(
                    "alert thresholds of a window that is not a budget",
                ));
            }
            fired.push(limits_core::Fired {
                slot,
                bits: r.byte()?,
                period: r.u64()?,
            });
        }
    }
    let mut settled = Vec::new();
    if version >= 6 {
        let count = r.len()?;
        settled.reserve(count);
        let (mut id, mut at) = (0u64, 0u64);
        for _ in 0..count {
            id = id.wrapping_add(unzigzag(r.varint()?) as u64);
            at = at
                .checked_add(r.varint()?)
                .ok_or(DecodeError::Invalid("settled reservation expiry overflows"))?;
            settled.push(limits_core::Settled {
                id,
                expires_at: Nanos(at),
            });
        }
    }
    r.finish()?;
    Ok(SubjectState::from_parts(windows, holds, leases)
        .with_fired(fired)
        .with_settled(settled))
}

/// A lease index entry: its expiry, then its subjects (`varint count`, then
/// per subject `dimension byte`, `varint length`, id bytes).
pub(crate) fn encode_lease(subjects: &[Subject], expires_at: Nanos) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + subjects.iter().map(|s| s.id.len() + 2).sum::<usize>());
    out.push(VERSION);
    put_u64(&mut out, expires_at.0);
    put_varint(&mut out, subjects.len() as u64);
    for s in subjects {
        out.push(s.dimension as u8);
        put_varint(&mut out, s.id.len() as u64);
        out.extend_from_slice(s.id.as_bytes());
    }
    out
}

pub(crate) fn decode_lease(bytes: &[u8]) -> Result<(Box<[Subject]>, Nanos), DecodeError> {
    let mut r = Reader::versioned(bytes)?;
    let expires_at = Nanos(r.u64()?);
    let count = r.len()?;
    if !(1..=limits_core::DIMENSIONS).contains(&count) {
        return Err(DecodeError::Invalid("a lease names 1 to 4 subjects"));
    }
    let mut subjects = Vec::with_capacity(count);
    for _ in 0..count {
        let d = dimension(r.byte()?)?;
        let len = r.len()?;
        let id = std::str::from_utf8(r.take(len)?)
            .map_err(|_| DecodeError::Invalid("subject id is not UTF-8"))?;
        subjects.push(Subject::new(d, id));
    }
    r.finish()?;
    Ok((subjects.into(), expires_at))
}

/// An alert outbox entry's key: the prefix, then the entry's own key.
pub(crate) fn outbox_key(key: &str) -> Vec<u8> {
    named_key(OUTBOX_PREFIX, key)
}

pub(crate) fn decode_outbox_key(key: &[u8]) -> Result<String, DecodeError> {
    decode_named_key(
        OUTBOX_PREFIX,
        key,
        "not an outbox key",
        "an outbox key is not UTF-8",
    )
}

/// An admin record's key: the prefix, then the record's own key.
pub(crate) fn record_key(key: &str) -> Vec<u8> {
    named_key(RECORD_PREFIX, key)
}

pub(crate) fn decode_record_key(key: &[u8]) -> Result<String, DecodeError> {
    decode_named_key(
        RECORD_PREFIX,
        key,
        "not a record key",
        "record key is not UTF-8",
    )
}

fn named_key(prefix: &[u8], key: &str) -> Vec<u8> {
    [prefix, key.as_bytes()].concat()
}

fn decode_named_key(
    prefix: &[u8],
    key: &[u8],
    not_ours: &'static str,
    not_utf8: &'static str,
) -> Result<String, DecodeError> {
    let name = key
        .strip_prefix(prefix)
        .ok_or(DecodeError::Invalid(not_ours))?;
    String::from_utf8(name.to_vec()).map_err(|_| DecodeError::Invalid(not_utf8))
}

pub(crate) fn audit_key(seq: u64) -> [u8; 11] {
    let mut key = [0u8; 11];
    key[..3].copy_from_slice(AUDIT_PREFIX);
    key[3..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn decode_audit_key(key: &[u8]) -> Result<u64, DecodeError> {
    let rest = key
        .strip_prefix(AUDIT_PREFIX)
        .ok_or(DecodeError::Invalid("not an audit key"))?;
    let bytes: [u8; 8] = rest
        .try_into()
        .map_err(|_| DecodeError::Invalid("audit key has the wrong length"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// An admin record's or audit event's bytes, behind the version byte.
pub(crate) fn encode_blob(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + bytes.len());
    out.push(VERSION);
    out.extend_from_slice(bytes);
    out
}

pub(crate) fn decode_blob(bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => Ok(rest.to_vec()),
        Some((&v, _)) => Err(DecodeError::UnknownVersion(v)),
        None => Err(DecodeError::Truncated),
    }
}

/// An id generator's persisted state: its prefix and a sequence number that
/// no id handed out so far has reached.
pub(crate) fn encode_ids(prefix: u64, high_water: u64) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = VERSION;
    out[1..9].copy_from_slice(&prefix.to_le_bytes());
    out[9..].copy_from_slice(&high_water.to_le_bytes());
    out
}

pub(crate) fn decode_ids(bytes: &[u8]) -> Result<(u64, u64), DecodeError> {
    let mut r = Reader::versioned(bytes)?;
    let ids = (r.u64()?, r.u64()?);
    r.finish()?;
    Ok(ids)
}

/// A cursor over a value.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the version byte and positions after it.
    fn versioned(bytes: &'a [u8]) -> Result<Reader<'a>, DecodeError> {
        let mut r = Reader { bytes };
        match r.byte()? {
            VERSION => Ok(r),
            v => Err(DecodeError::UnknownVersion(v)),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("flag is neither 0 nor 1")),
        }
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let bytes: [u8; 4] = self.take(4)?.try_into().expect("four bytes");
        Ok(u32::from_le_bytes(bytes))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let bytes: [u8; 8] = self.take(8)?.try_into().expect("eight bytes");
        Ok(u64::from_le_bytes(bytes))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(DecodeError::Invalid("varint overflows"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Invalid("varint too long"))
    }

    /// A count of things that follow; bounded by the bytes left, so a corrupt
    /// count cannot make a reader allocate without limit.
    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > self.bytes.len() as u64 {
            return Err(DecodeError::Truncated);
        }
        Ok(n as usize)
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Invalid("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SubjectState {
        SubjectState::from_parts(
            vec![
                (
                    LimitKind::BudgetDaily,
                    RollingWindow::from_buckets(vec![(10, 5), (12, 300), (1 << 40, u64::MAX)]),
                ),
                (
                    LimitKind::TokensPerMinute,
                    RollingWindow::from_buckets(vec![(7, 1)]),
                ),
                (
                    LimitKind::BudgetWeekly,
                    RollingWindow::from_buckets(vec![(3, 4)]),
                ),
                (
                    LimitKind::CalendarMonthly,
                    RollingWindow::from_buckets(vec![(1_790_000_000_000_000_000, 9)]),
                ),
            ],
            vec![
                Hold {
                    id: 7 << 32 | 3,
                    cost: 1_000_000,
                    tokens: 10,
                    input: 7,
                    output: 4,
                    expires_at: Nanos(1 << 60),
                    settled: false,
                    tag: 0xdead_beef,
                    charged: limits_core::Held {
                        cost: 300,
                        tokens: 2,
                        input: 0,
                        output: 1 << 40,
                    },
                    seq: 17,
                    stopped: true,
                },
                Hold {
                    id: 5,
                    expires_at: Nanos(77),
                    settled: true,
                    ..Hold::default()
                },
            ],
            vec![LeaseSlot {
                id: 9 << 32 | 1,
                expires_at: Nanos(42),
            }],
        )
    }

    #[test]
    fn state_round_trips() {
        let mut buf = Vec::new();
        assert!(encode_state(&sample(), &mut buf));
        assert_eq!(decode_state(&buf).unwrap(), sample());
        // A settled hold is remembered as a settled reservation.
        let settled: Vec<_> = sample().settled().copied().collect();
        assert_eq!(
            settled
                .iter()
                .map(|s| (s.id, s.expires_at))
                .collect::<Vec<_>>(),
            [(5, Nanos(77))]
        );
        assert_eq!(sample().holds().len(), 1);
        let kinds: Vec<_> = sample().windows().map(|(k, _)| k).collect();
        assert!(kinds.contains(&LimitKind::CalendarMonthly), "{kinds:?}");
    }

    #[test]
    fn fired_alert_thresholds_round_trip_and_must_be_budgets() {
        let fired = vec![
            limits_core::Fired {
                slot: LimitKind::BudgetDaily,
                bits: 0b101,
                period: 0,
            },
            limits_core::Fired {
                slot: LimitKind::CalendarMonthly,
                bits: 1,
                period: 1_790_000_000_000_000_000,
            },
        ];
        let state = sample().with_fired(fired.clone());
        let mut buf = Vec::new();
        assert!(encode_state(&state, &mut buf));
        let back = decode_state(&buf).unwrap();
        assert_eq!(back.fired(), &fired[..]);
        assert_eq!(back, state);
        // Only fired thresholds: still a state worth keeping.
        let alone = SubjectState::new().with_fired(fired[..1].to_vec());
        assert!(encode_state(&alone, &mut buf));
        // The fired entry's kind byte, turned into a request window's.
        // (after it: the empty list of settled reservations)
        let at = buf.len() - 11;
        assert_eq!(buf[at], window_code(LimitKind::BudgetDaily));
        buf[at] = window_code(LimitKind::RequestsPerMinute);
        assert!(decode_state(&buf).is_err());
    }

    #[test]
    fn a_window_kind_byte_is_never_the_concurrency_limit_s() {
        assert!(window_kind(LimitKind::MaxConcurrent.index() as u8).is_err());
        for k in LimitKind::SLOTS {
            assert_eq!(window_kind(window_code(k)), Ok(k));
        }
        assert!(window_kind(13).is_err());
        assert_eq!(window_kind(64), Ok(LimitKind::CalendarDaily));
        assert_eq!(window_kind(8), Ok(LimitKind::BudgetWeekly));
    }

    #[test]
    fn settled_reservations_take_a_few_bytes_each() {
        // A busy subject: a reservation settled every 10 ms for ten
        // minutes, ids in blocks as replicas take them.
        let settled: Vec<_> = (0..60_000u64)
            .map(|i| limits_core::Settled {
                id: (i / 64 % 3) << 40 | i,
                expires_at: Nanos(1 << 60).saturating_add(Nanos::from_millis(10 * i)),
            })
            .collect();
        let state = SubjectState::new().with_settled(settled.clone());
        let mut buf = Vec::new();
        assert!(encode_state(&state, &mut buf));
        assert!(buf.len() < 60_000 * 6, "{} bytes", buf.len());
        let back = decode_state(&buf).unwrap();
        assert_eq!(back.settled().copied().collect::<Vec<_>>(), settled);
        assert_eq!(back, state);
    }

    #[test]
    fn version_4_holds_load_with_nothing_charged_yet() {
        // Version 4: no windows, one hold (id, cost 5, tokens 6, expiry,
        // not settled, tag 9, input 2, output 3), no leases, nothing fired.
        let mut v4 = vec![4, 0, 1];
        v4.extend_from_slice(&11u64.to_le_bytes());
        v4.extend_from_slice(&[5, 6]);
        v4.extend_from_slice(&(1u64 << 60).to_le_bytes());
        v4.push(0);
        v4.extend_from_slice(&9u32.to_le_bytes());
        v4.extend_from_slice(&[2, 3, 0, 0]);
        let state = decode_state(&v4).unwrap();
        let h = &state.holds()[0];
        assert_eq!(
            (h.id, h.cost, h.tokens, h.input, h.output),
            (11, 5, 6, 2, 3)
        );
        assert!(!h.settled && !h.stopped);
        assert_eq!((h.charged, h.seq), (limits_core::Held::default(), 0));
        // A hold no record has charged is written as version 4 wrote it,
        // followed by an empty list of settled reservations.
        let mut buf = Vec::new();
        assert!(encode_state(&state, &mut buf));
        assert_eq!(buf[1..buf.len() - 1], v4[1..]);
        assert_eq!(buf.last(), Some(&0));
        // With the progress flag, the charged amounts must follow.
        let flags_at = 1 + 1 + 1 + 8 + 2 + 8;
        assert_eq!(buf[flags_at], 0);
        buf[flags_at] = 4;
        assert!(decode_state(&buf).is_err());
        // Flags this build does not know are refused, not guessed at.
        buf[flags_at] = 8;
        assert!(decode_state(&buf).is_err());
    }

    #[test]
    fn version_1_states_still_load_with_untagged_holds() {
        // A version-1 value: no windows, one hold, no leases.
        let mut v1 = vec![1, 0, 1];
        v1.extend_from_slice(&(7u64 << 32 | 3).to_le_bytes());
        v1.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x10]);
        v1.push(10);
        v1.extend_from_slice(&(1u64 << 60).to_le_bytes());
        v1.push(0);
        v1.push(0);
        let state = decode_state(&v1).unwrap();
        assert_eq!(state.holds().len(), 1);
        assert_eq!(state.holds()[0].tag, 0);
        assert_eq!(state.holds()[0].cost, 1 << 32);
        // Without a split, the hold's tokens could be input or output.
        assert_eq!((state.holds()[0].input, state.holds()[0].output), (10, 10));
    }

    #[test]
    fn short_request_windows_are_not_kept() {
        let state = SubjectState::from_parts(
            vec![(
                LimitKind::RequestsPerSecond,
                RollingWindow::from_buckets(vec![(1, 1)]),
            )],
            vec![],
            vec![],
        );
        let mut buf = Vec::new();
        assert!(!encode_state(&state, &mut buf), "nothing durable to write");
    }

    #[test]
    fn every_truncation_and_unknown_version_is_rejected() {
        let mut buf = Vec::new();
        encode_state(&sample(), &mut buf);
        for n in 0..buf.len() {
            assert!(decode_state(&buf[..n]).is_err(), "prefix of {n} bytes");
        }
        buf[0] = 9;
        assert_eq!(decode_state(&buf), Err(DecodeError::UnknownVersion(9)));
        buf[0] = 0;
        assert_eq!(decode_state(&buf), Err(DecodeError::UnknownVersion(0)));
    }

    #[test]
    fn leases_ids_and_keys_round_trip() {
        let subjects = [
            Subject::new(Dimension::Team, "t"),
            Subject::new(Dimension::User, "ü"),
        ];
        let v = encode_lease(&subjects, Nanos(5));
        assert_eq!(
            decode_lease(&v).unwrap(),
            (subjects.to_vec().into(), Nanos(5))
        );
        assert_eq!(decode_ids(&encode_ids(3, 2048)).unwrap(), (3, 2048));
        // Lease index keys of stores that kept them (read on open, to drop).
        let mut old = LEASE_PREFIX.to_vec();
        old.extend_from_slice(&(u64::MAX - 1).to_be_bytes());
        assert_eq!(decode_lease_key(&old).unwrap(), u64::MAX - 1);
        let key = subject_key(Dimension::ApiKey, "k-1");
        assert_eq!(
            decode_subject_key(&key).unwrap(),
            Subject::new(Dimension::ApiKey, "k-1")
        );
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader { bytes: &out };
            assert_eq!(r.varint().unwrap(), v);
            r.finish().unwrap();
        }
    }
}
