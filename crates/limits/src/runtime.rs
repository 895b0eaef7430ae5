//! Limits set at runtime (the admin API): a subject's runtime entry, which
//! takes the place of its config entry, and temporary increases of its
//! limits. Both live in the store as one record per subject, so that they
//! survive restarts (sled) and every replica enforces them (Redis); the
//! `Runtime` table is this process's copy, which the check path reads.
//!
//! Precedence: a live runtime entry replaces the subject's config entry
//! (an unset limit in it is no limit, the config entry's limits do not
//! show through), which replaces the dimension's `default`. Live increases
//! then add to the limits of the kinds the subject has. An entry or an
//! increase past its `expire_time` is ignored at once and dropped from the
//! store by the next cleanup.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ahash::AHashMap;
use limits_core::calendar;
use limits_core::{Calendar, DIMENSIONS, Dimension, LimitKind, ModelScopes, Nanos, SubjectLimits};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Where a subject's limits come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// No limits apply: no entry anywhere and no default.
    Unlimited,
    /// The dimension's `default` entry of the config.
    Default,
    /// The subject's own entry in the config.
    Config,
    /// The subject's runtime entry (the admin API).
    Runtime,
}

impl Source {
    /// The name used in the API and the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Unlimited => "none",
            Source::Default => "default",
            Source::Config => "config",
            Source::Runtime => "runtime",
        }
    }
}

/// A subject's runtime entry: its limits in place of the config's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The limits (and alias). An unset kind is no limit of that kind.
    pub limits: SubjectLimits,
    /// When the entry falls away by itself; `None`: never.
    pub expire_time: Option<Nanos>,
    /// When it was created.
    pub create_time: Nanos,
    /// When it was last changed.
    pub update_time: Nanos,
}

impl Entry {
    /// Whether the entry applies at `now`.
    pub fn is_live(&self, now: Nanos) -> bool {
        self.expire_time.is_none_or(|t| t > now)
    }

    /// A tag that changes whenever the entry does (16 hex digits).
    pub fn etag(&self) -> String {
        let bytes = serde_json::to_vec(&StoredEntry::from(self)).unwrap_or_default();
        hex::encode(&blake3::hash(&bytes).as_bytes()[..8])
    }
}

/// An amount added to one limit of a subject until an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Increase {
    /// The limit raised (a windowed kind).
    pub kind: LimitKind,
    /// How much is added, in the limit's unit (nano-USD for budgets).
    pub amount: u64,
    /// When the increase falls away.
    pub expire_time: Nanos,
    /// Why, as given.
    pub reason: String,
}

/// Everything the admin API keeps about one subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The runtime entry, if any.
    pub entry: Option<Entry>,
    /// Temporary increases (expired ones are dropped by the cleanup).
    pub increases: Vec<Increase>,
}

impl Record {
    /// The entry, if it applies at `now`.
    pub fn live_entry(&self, now: Nanos) -> Option<&Entry> {
        self.entry.as_ref().filter(|e| e.is_live(now))
    }

    /// The increases that apply at `now`.
    pub fn live_increases(&self, now: Nanos) -> impl Iterator<Item = &Increase> {
        self.increases.iter().filter(move |i| i.expire_time > now)
    }

    /// The record without what has expired by `now`; `None` when nothing
    /// is left.
    pub fn pruned(&self, now: Nanos) -> Option<Record> {
        let pruned = Record {
            entry: self.live_entry(now).cloned(),
            increases: self.live_increases(now).cloned().collect(),
        };
        (pruned.entry.is_some() || !pruned.increases.is_empty()).then_some(pruned)
    }

    /// Whether anything in the record has expired by `now`.
    pub fn has_expired(&self, now: Nanos) -> bool {
        self.entry.as_ref().is_some_and(|e| !e.is_live(now))
            || self.increases.iter().any(|i| i.expire_time <= now)
    }

    /// The bytes kept in the store.
    pub fn encode(&self) -> Vec<u8> {
        let stored = StoredRecord {
            v: 1,
            entry: self.entry.as_ref().map(StoredEntry::from),
            increases: self
                .increases
                .iter()
                .map(|i| StoredIncrease {
                    kind: i.kind.name().to_owned(),
                    amount: i.amount,
                    expire_time: i.expire_time.0,
                    reason: i.reason.clone(),
                })
                .collect(),
        };
        serde_json::to_vec(&stored).expect("a record always serialises")
    }

    /// Reads a record the store kept; an error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        let stored: StoredRecord =
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable record: {e}"))?;
        if stored.v != 1 {
            return Err(format!(
                "record version {} is not one this build reads",
                stored.v
            ));
        }
        let entry = stored.entry.map(Entry::try_from).transpose()?;
        let increases = stored
            .increases
            .into_iter()
            .map(|i| {
                Ok(Increase {
                    kind: kind_named(&i.kind)?,
                    amount: i.amount,
                    expire_time: Nanos(i.expire_time),
                    reason: i.reason,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Record { entry, increases })
    }
}

/// A record as the store keeps it (JSON, versioned).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord {
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entry: Option<StoredEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    increases: Vec<StoredIncrease>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredEntry {
    /// Limit name (the config key) → limit, in nano-USD for budgets.
    limits: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expire_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    calendar: Option<StoredCalendar>,
    /// Model scopes: pattern → limit name → limit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    models: BTreeMap<String, BTreeMap<String, u64>>,
    /// The entry's own alert thresholds, parts per million.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    alert_thresholds: Vec<u32>,
    create_time: u64,
    update_time: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredIncrease {
    kind: String,
    amount: u64,
    expire_time: u64,
    #[serde(default)]
    reason: String,
}

impl From<&Entry> for StoredEntry {
    fn from(e: &Entry) -> StoredEntry {
        StoredEntry {
            limits: e
                .limits
                .all()
                .map(|(k, v)| (k.name().to_owned(), v))
                .collect(),
            alias: e.limits.alias().map(str::to_owned),
            expire_time: e.expire_time.map(|t| t.0),
            calendar: e.limits.calendar().map(|c| StoredCalendar::from(&**c)),
            models: e
                .limits
                .scopes()
                .into_iter()
                .flat_map(|s| s.iter())
                .map(|s| {
                    let limits = s
                        .limits()
                        .all()
                        .map(|(k, v)| (k.name().to_owned(), v))
                        .collect();
                    (s.pattern().to_owned(), limits)
                })
                .collect(),
            alert_thresholds: e
                .limits
                .alert_thresholds()
                .map(|t| t.as_slice().to_vec())
                .unwrap_or_default(),
            create_time: e.create_time.0,
            update_time: e.update_time.0,
        }
    }
}

impl TryFrom<StoredEntry> for Entry {
    type Error = String;

    fn try_from(e: StoredEntry) -> Result<Entry, String> {
        let mut limits = stored_limits(e.limits)?;
        if !e.models.is_empty() {
            let scopes = e
                .models
                .into_iter()
                .map(|(pattern, l)| Ok((pattern, stored_limits(l)?)))
                .collect::<Result<Vec<_>, String>>()?;
            let scopes = ModelScopes::new(scopes)
                .map_err(|(pattern, e)| format!("model scope {pattern:?}: {e}"))?;
            limits.set_scopes(Some(Arc::new(scopes)));
        }
        limits.set_alias(e.alias.map(Arc::from));
        if !e.alert_thresholds.is_empty() {
            let t = limits_core::Thresholds::new(e.alert_thresholds)
                .ok_or("alert thresholds out of range")?;
            limits.set_alert_thresholds(Some(t));
        }
        if let Some(c) = e.calendar {
            limits.set_calendar(Some(Arc::new(Calendar::try_from(c)?)));
        }
        Ok(Entry {
            limits,
            expire_time: e.expire_time.map(Nanos),
            create_time: Nanos(e.create_time),
            update_time: Nanos(e.update_time),
        })
    }
}

/// Limits from their names, as a record keeps them.
fn stored_limits(named: BTreeMap<String, u64>) -> Result<SubjectLimits, String> {
    let mut limits = SubjectLimits::default();
    for (name, value) in named {
        let kind = kind_named(&name)?;
        if kind == LimitKind::MaxConcurrent {
            let n = u32::try_from(value)
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(|| format!("max_concurrent {value} is out of range"))?;
            limits.set_max_concurrent(Some(n));
        } else {
            let n = NonZeroU64::new(value).ok_or_else(|| format!("{name} is zero"))?;
            limits.set(kind, Some(n));
        }
    }
    Ok(limits)
}

/// Every limit kind, concurrency included, in kind order.
pub const ALL_KINDS: [LimitKind; LimitKind::LIMITS.len()] = LimitKind::LIMITS;

/// Where a calendar's periods begin, as kept in a record and shown in the
/// audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredCalendar {
    zone: String,
    week_start: String,
    anchor_day: u8,
}

impl From<&Calendar> for StoredCalendar {
    fn from(c: &Calendar) -> StoredCalendar {
        StoredCalendar {
            zone: c.zone().to_owned(),
            week_start: c.week_start_name().to_owned(),
            anchor_day: c.anchor_day(),
        }
    }
}

impl TryFrom<StoredCalendar> for Calendar {
    type Error = String;

    fn try_from(c: StoredCalendar) -> Result<Calendar, String> {
        let week_start = calendar::weekday(&c.week_start)
            .ok_or_else(|| format!("unknown weekday {:?}", c.week_start))?;
        Calendar::new(&c.zone, week_start, c.anchor_day).map_err(|e| e.to_string())
    }
}

/// A calendar as JSON, for the audit trail.
pub(crate) fn calendar_json(c: &Calendar) -> serde_json::Value {
    serde_json::to_value(StoredCalendar::from(c)).unwrap_or_default()
}

fn kind_named(name: &str) -> Result<LimitKind, String> {
    ALL_KINDS
        .iter()
        .copied()
        .find(|k| k.name() == name)
        .ok_or_else(|| format!("unknown limit {name:?}"))
}

/// The store's key of a subject's record: `dimension:id`, with the id in
/// its stored form (an API key's keyed hash).
pub fn record_key(dimension: Dimension, stored_id: &str) -> String {
    format!("{}:{stored_id}", dimension.as_str())
}

/// The subject a record key names.
pub fn parse_record_key(key: &str) -> Option<(Dimension, &str)> {
    let (d, id) = key.split_once(':')?;
    let d = Dimension::ALL.into_iter().find(|x| x.as_str() == d)?;
    Some((d, id))
}

/// A record as this process holds it: decoded, with the exact bytes the
/// store holds (what a compare-and-swap expects).
#[derive(Debug)]
pub(crate) struct Held {
    pub record: Record,
    pub bytes: Vec<u8>,
}

/// Shards of the runtime table; more than cores, so readers rarely share a
/// lock's cache line with a writer.
const SHARDS: usize = 64;

type Shard = [AHashMap<Box<str>, Arc<Held>>; DIMENSIONS];

/// This process's copy of the admin records, by dimension and stored id.
/// Reads take one shard's read lock; the check path skips the table
/// entirely while a dimension has no record.
pub(crate) struct Runtime {
    shards: Box<[RwLock<Shard>]>,
    hasher: ahash::RandomState,
    /// Records per dimension.
    len: [AtomicUsize; DIMENSIONS],
    /// The store's version of the records this copy reflects.
    version: parking_lot::Mutex<Option<u64>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    pub fn new() -> Runtime {
        Runtime {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(Default::default()))
                .collect(),
            hasher: ahash::RandomState::new(),
            len: Default::default(),
            version: parking_lot::Mutex::new(None),
        }
    }

    fn shard(&self, id: &str) -> &RwLock<Shard> {
        &self.shards[(self.hasher.hash_one(id) % SHARDS as u64) as usize]
    }

    /// Whether any record of `dimension` is held.
    pub fn has(&self, dimension: Dimension) -> bool {
        self.len[dimension.index()].load(Ordering::Acquire) > 0
    }

    /// Whether no record at all is held.
    pub fn is_empty(&self) -> bool {
        Dimension::ALL.iter().all(|&d| !self.has(d))
    }

    pub fn get(&self, dimension: Dimension, stored_id: &str) -> Option<Arc<Held>> {
        self.shard(stored_id).read()[dimension.index()]
            .get(stored_id)
            .cloned()
    }

    /// Puts (or with `None` removes) one record.
    fn set(&self, dimension: Dimension, stored_id: &str, held: Option<Held>) {
        let mut shard = self.shard(stored_id).write();
        let map = &mut shard[dimension.index()];
        let len = &self.len[dimension.index()];
        match held {
            Some(h) => {
                if map.insert(stored_id.into(), Arc::new(h)).is_none() {
                    len.fetch_add(1, Ordering::AcqRel);
                }
            }
            None => {
                if map.remove(stored_id).is_some() {
                    len.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// Replaces every record with the store's; a record that cannot be read
    /// is an error (and nothing changes), never a record ignored.
    pub fn replace_all(&self, records: limits_store::Records) -> Result<(), String> {
        let mut fresh: Vec<(Dimension, String, Held)> = Vec::with_capacity(records.records.len());
        for (key, bytes) in records.records {
            let (d, id) = parse_record_key(&key)
                .ok_or_else(|| format!("record key {key:?} is unreadable"))?;
            let record = Record::decode(&bytes).map_err(|e| format!("record {key:?}: {e}"))?;
            fresh.push((d, id.to_owned(), Held { record, bytes }));
        }
        let mut version = self.version.lock();
        let mut by_shard: Vec<Shard> = (0..SHARDS).map(|_| Default::default()).collect();
        let mut counts = [0usize; DIMENSIONS];
        for (d, id, held) in fresh {
            let i = (self.hasher.hash_one(id.as_str()) % SHARDS as u64) as usize;
            by_shard[i][d.index()].insert(id.into(), Arc::new(held));
            counts[d.index()] += 1;
        }
        for (shard, maps) in self.shards.iter().zip(by_shard) {
            *shard.write() = maps;
        }
        for (len, n) in self.len.iter().zip(counts) {
            len.store(n, Ordering::Release);
        }
        *version = Some(records.version);
        Ok(())
    }

    /// The store version this copy reflects, if loaded.
    pub fn version(&self) -> Option<u64> {
        *self.version.lock()
    }

    /// Puts (or removes) one record that this process has just changed in
    /// the store, which took the store's records to `version`: if this copy
    /// was at the version before, it is current again (no reload needed);
    /// otherwise another replica changed something too, and the next sync
    /// reloads.
    pub fn set_changed(
        &self,
        dimension: Dimension,
        stored_id: &str,
        held: Option<Held>,
        version: u64,
    ) {
        let mut current = self.version.lock();
        self.set(dimension, stored_id, held);
        if *current == Some(version.wrapping_sub(1)) {
            *current = Some(version);
        }
    }

    /// Every record of `dimension` (or of all), ordered by dimension, then id.
    pub fn all(&self, dimension: Option<Dimension>) -> Vec<(Dimension, Box<str>, Arc<Held>)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read();
            for d in Dimension::ALL {
                if dimension.is_some_and(|want| want != d) {
                    continue;
                }
                out.extend(
                    shard[d.index()]
                        .iter()
                        .map(|(id, h)| (d, id.clone(), h.clone())),
                );
            }
        }
        out.sort_by(|a, b| (a.0.index(), &a.1).cmp(&(b.0.index(), &b.1)));
        out
    }
}

/// The limits that apply to a subject at `now`, and where they come from:
/// its live runtime entry, else its config entry, else the dimension's
/// default; live increases added. `stored_id` gives the subject's id in
/// its stored form, asked for only when its dimension has runtime records
/// (an API key's keyed hash costs a hash).
pub(crate) fn effective<'c, 's>(
    config: &'c Config,
    runtime: &Runtime,
    dimension: Dimension,
    config_id: Option<&str>,
    stored_id: impl FnOnce() -> Cow<'s, str>,
    now: Nanos,
) -> (Cow<'c, SubjectLimits>, Source) {
    let from_config = || -> (Cow<'c, SubjectLimits>, Source) {
        let table = &config.table;
        match config_id.and_then(|id| table.entry(dimension, id)) {
            Some(l) => (Cow::Borrowed(l), Source::Config),
            None => match table.default_for(dimension) {
                Some(d) => (Cow::Borrowed(d), Source::Default),
                None => (Cow::Borrowed(&SubjectLimits::UNLIMITED), Source::Unlimited),
            },
        }
    };
    if !runtime.has(dimension) {
        return from_config();
    }
    let Some(held) = runtime.get(dimension, &stored_id()) else {
        return from_config();
    };
    let record = &held.record;
    let (base, source) = match record.live_entry(now) {
        Some(e) => (Cow::Owned(e.limits.clone()), Source::Runtime),
        None => from_config(),
    };
    let mut raised = base;
    for inc in record.live_increases(now) {
        let Some(limit) = raised.get(inc.kind) else {
            continue;
        };
        let new = limit.saturating_add(inc.amount);
        let limits = raised.to_mut();
        if inc.kind == LimitKind::MaxConcurrent {
            let n = u32::try_from(new).unwrap_or(u32::MAX);
            limits.set_max_concurrent(NonZeroU32::new(n));
        } else {
            limits.set(inc.kind, NonZeroU64::new(new));
        }
    }
    (raised, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    fn entry(daily: u64) -> Entry {
        Entry {
            limits: SubjectLimits::default()
                .with(LimitKind::BudgetDaily, nz(daily))
                .with_max_concurrent(NonZeroU32::new(3).unwrap())
                .with_alias("acme"),
            expire_time: Some(Nanos::from_secs(2_000)),
            create_time: Nanos::from_secs(1_000),
            update_time: Nanos::from_secs(1_500),
        }
    }

    #[test]
    fn records_round_trip_through_their_bytes() {
        let record = Record {
            entry: Some(entry(5_000_000_000)),
            increases: vec![Increase {
                kind: LimitKind::BudgetDaily,
                amount: 7,
                expire_time: Nanos::from_secs(3_000),
                reason: "month end".into(),
            }],
        };
        assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        assert_eq!(
            Record::decode(&Record::default().encode()).unwrap(),
            Record::default()
        );
    }

    #[test]
    fn model_scopes_round_trip_on_their_subject_s_calendar() {
        let mut e = entry(5_000_000_000);
        let scoped = SubjectLimits::default()
            .with(LimitKind::BudgetDaily, nz(1_000))
            .with(LimitKind::RequestsPerMinute, nz(3));
        e.limits.set_scopes(Some(Arc::new(
            ModelScopes::new([("gpt-4*".to_owned(), scoped)]).unwrap(),
        )));
        let calendar = Arc::new(Calendar::new("Europe/Paris", 0, 1).unwrap());
        e.limits.set_calendar(Some(Arc::clone(&calendar)));
        let record = Record {
            entry: Some(e),
            increases: Vec::new(),
        };
        let back = Record::decode(&record.encode()).unwrap();
        assert_eq!(back, record);
        let limits = &back.entry.unwrap().limits;
        let scope = limits.scopes().unwrap().find("gpt-4o").unwrap();
        assert_eq!(scope.limits().get(LimitKind::RequestsPerMinute), Some(3));
        assert_eq!(
            scope.limits().calendar().map(|c| c.zone()),
            Some("Europe/Paris")
        );
        let bad = br#"{"v":1,"entry":{"limits":{},"models":{"m":{"max_concurrent":2}},"create_time":0,"update_time":0}}"#;
        assert!(Record::decode(bad).is_err());
    }

    #[test]
    fn unreadable_records_are_errors_not_empty_records() {
        for bad in [
            &b"not json"[..],
            br#"{"v":2}"#,
            br#"{"v":1,"surprise":true}"#,
            br#"{"v":1,"entry":{"limits":{"yearly":5},"create_time":0,"update_time":0}}"#,
            br#"{"v":1,"entry":{"limits":{"daily":0},"create_time":0,"update_time":0}}"#,
        ] {
            assert!(
                Record::decode(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_etag_follows_the_entry() {
        let a = entry(5);
        let mut b = a.clone();
        assert_eq!(a.etag(), b.etag());
        b.update_time = Nanos::from_secs(1_501);
        assert_ne!(a.etag(), b.etag());
        assert_eq!(a.etag().len(), 16);
    }

    #[test]
    fn record_keys_name_their_subject() {
        let key = record_key(Dimension::Team, "research:west");
        assert_eq!(key, "team:research:west");
        assert_eq!(
            parse_record_key(&key),
            Some((Dimension::Team, "research:west"))
        );
        assert_eq!(parse_record_key("org:x"), Some((Dimension::Org, "x")));
        assert_eq!(parse_record_key("region:x"), None);
    }

    #[test]
    fn a_change_made_here_keeps_the_copy_current_only_if_nothing_else_moved() {
        let rt = Runtime::new();
        let held = || Held {
            record: Record::default(),
            bytes: Vec::new(),
        };
        rt.replace_all(limits_store::Records {
            version: 7,
            records: Vec::new(),
        })
        .unwrap();
        rt.set_changed(Dimension::Team, "t", Some(held()), 8);
        assert_eq!(rt.version(), Some(8), "7 -> 8: nothing else moved");
        assert!(rt.get(Dimension::Team, "t").is_some());
        // Another change happened in between (9): the copy stays behind, so
        // the next sync reloads.
        rt.set_changed(Dimension::User, "u", Some(held()), 10);
        assert_eq!(rt.version(), Some(8));
        rt.set_changed(Dimension::Team, "t", None, 11);
        assert!(rt.get(Dimension::Team, "t").is_none());
        assert!(!rt.has(Dimension::Team));
    }

    #[test]
    fn pruning_drops_what_expired() {
        let record = Record {
            entry: Some(entry(5)),
            increases: vec![Increase {
                kind: LimitKind::BudgetDaily,
                amount: 7,
                expire_time: Nanos::from_secs(3_000),
                reason: String::new(),
            }],
        };
        assert_eq!(
            record.pruned(Nanos::from_secs(1_999)).as_ref(),
            Some(&record)
        );
        assert!(!record.has_expired(Nanos::from_secs(1_999)));
        let later = record.pruned(Nanos::from_secs(2_000)).unwrap();
        assert!(later.entry.is_none());
        assert_eq!(later.increases.len(), 1);
        assert!(record.has_expired(Nanos::from_secs(2_000)));
        assert_eq!(record.pruned(Nanos::from_secs(3_000)), None);
    }
}
