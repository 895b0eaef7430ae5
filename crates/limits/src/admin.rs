//! The admin API's operations: runtime entries (create, get, list, update,
//! delete), budget operations (adjust, reset, a temporary increase) and
//! the audit trail. Every change is written to the store together with its
//! audit event, acknowledged only once durable, and made with a compare
//! and swap, so that two replicas (or two operators) cannot overwrite each
//! other unseen. A call answered with an error changed nothing.
//!
//! API keys are named by the key itself or by the keyed hash they are
//! stored under (what answers show); they appear in answers and audit
//! events only by alias or hash.

use std::borrow::Cow;

use limits_core::{Adjustment, Dimension, LimitKind, LimitStatus, Nanos, Resource, SubjectLimits};
use limits_store::{AdjustOp, RecordSwap, Secret, Store, Swapped};
use serde_json::{Value, json};

use crate::config::Config;
use crate::limiter::{Limiter, now, stored_id};
use crate::runtime::{self, Entry, Held, Increase, Record};
use crate::{Error, Subject, validate};

/// The longest reason kept, in characters.
pub const MAX_REASON_CHARS: usize = 256;
/// The longest alias, in characters.
pub const MAX_ALIAS_CHARS: usize = 64;
/// The most entries or events one page holds.
pub const MAX_PAGE_SIZE: usize = 1000;
/// A page's size when none is asked for.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The most temporary increases one subject may hold at once.
pub const MAX_INCREASES: usize = 32;
/// How many times a change is tried again when another replica changed the
/// same record in between.
const SWAP_ATTEMPTS: usize = 4;

/// A subject named by an admin call: by its id, or (API keys) by the keyed
/// hash answers show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectRef {
    /// The subject's dimension.
    pub dimension: Dimension,
    /// The id (for an API key, the key itself); empty when `key_hash` is
    /// given.
    pub id: String,
    /// For API keys instead of `id`: the keyed hash (32 hex digits,
    /// optionally after `api_key:`).
    pub key_hash: String,
}

impl SubjectRef {
    /// A subject named by its id.
    pub fn id(dimension: Dimension, id: impl Into<String>) -> SubjectRef {
        SubjectRef {
            dimension,
            id: id.into(),
            key_hash: String::new(),
        }
    }

    /// An API key named by its keyed hash.
    pub fn key_hash(hash: impl Into<String>) -> SubjectRef {
        SubjectRef {
            dimension: Dimension::ApiKey,
            id: String::new(),
            key_hash: hash.into(),
        }
    }
}

/// A subject an admin call resolved: how it is stored and shown, and its
/// config id when known (an API key named by its hash is found in the
/// config by hashing the config's keys).
#[derive(Debug, Clone)]
struct Named {
    dimension: Dimension,
    stored: String,
    config_id: Option<String>,
}

impl Named {
    fn key(&self) -> String {
        runtime::record_key(self.dimension, &self.stored)
    }

    fn stored_subject(&self) -> Subject {
        Subject::new(self.dimension, self.stored.clone())
    }

    /// How the subject is shown: `dimension:alias`, an API key by a prefix
    /// of its hash, users and teams by id.
    fn shown(&self, limits: &SubjectLimits) -> String {
        let dim = self.dimension.as_str();
        match (limits.alias(), self.dimension) {
            (Some(alias), _) => format!("{dim}:{alias}"),
            (None, Dimension::ApiKey) => {
                format!("{dim}:{}", &self.stored[..self.stored.len().min(12)])
            }
            (None, _) => format!("{dim}:{}", self.stored),
        }
    }
}

/// A runtime entry as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView {
    /// The subject's dimension.
    pub dimension: Dimension,
    /// Users and teams: the id. API keys: empty (never shown).
    pub id: String,
    /// API keys: the keyed hash the entry is stored under. Else empty.
    pub key_hash: String,
    /// The entry.
    pub entry: Entry,
    /// Changes whenever the entry does.
    pub etag: String,
    /// The subject's live temporary increases.
    pub increases: Vec<Increase>,
}

/// What an entry is set to: its limits (and alias) and when it falls away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntrySpec {
    /// The limits and alias; an unset kind is no limit of that kind.
    pub limits: SubjectLimits,
    /// When the entry falls away by itself; `None`: never.
    pub expire_time: Option<Nanos>,
}

/// A field of an entry an update may change (its field mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryField {
    /// One limit.
    Limit(LimitKind),
    /// The alias.
    Alias,
    /// When the entry falls away.
    ExpireTime,
    /// The calendar the budgets reset on.
    Calendar,
    /// The model scopes (all of them: an update replaces the list).
    ModelScopes,
    /// The entry's own alert thresholds.
    AlertThresholds,
}

impl EntryField {
    /// Every field (the mask `*`).
    pub fn all() -> Vec<EntryField> {
        runtime::ALL_KINDS
            .iter()
            .map(|&k| EntryField::Limit(k))
            .chain([
                EntryField::Alias,
                EntryField::ExpireTime,
                EntryField::Calendar,
                EntryField::ModelScopes,
                EntryField::AlertThresholds,
            ])
            .collect()
    }
}

/// What an update changes.
#[derive(Debug, Clone)]
pub struct Update<'a> {
    /// The new values of the fields in `mask`.
    pub spec: &'a EntrySpec,
    /// The fields to change; a field in it that `spec` leaves unset is
    /// cleared. Not empty.
    pub mask: &'a [EntryField],
    /// Change only if the entry's etag is still this.
    pub etag: Option<&'a str>,
    /// Create the entry if there is none (then `etag` must be unset).
    pub allow_missing: bool,
}

/// A credit or a debit of a subject's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adjust {
    /// What the amount counts: USD (in nano-USD), requests or tokens.
    pub resource: Resource,
    /// Positive adds usage (a debit), negative takes it away (a credit).
    pub amount: i128,
    /// Only this window; `None`: every window of the resource.
    pub kind: Option<LimitKind>,
}

/// An entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Its place in the trail (rising).
    pub seq: u64,
    /// When the change was made.
    pub time: Nanos,
    /// Who made it: a token's name or a client certificate's subject.
    pub actor: String,
    /// The call, e.g. `UpdateSubjectLimits`.
    pub method: String,
    /// The subject, as shown everywhere (alias, an API key's hash prefix,
    /// a user or team id).
    pub subject: String,
    /// The state before, as JSON; empty when there was none.
    pub before: String,
    /// The state after, as JSON; empty when there is none.
    pub after: String,
    /// The reason given.
    pub reason: String,
}

impl AuditEvent {
    fn encode(&self) -> Vec<u8> {
        let parse = |s: &str| -> Value {
            if s.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(s).unwrap_or(Value::String(s.to_owned()))
            }
        };
        serde_json::to_vec(&json!({
            "time": self.time.0,
            "actor": self.actor,
            "method": self.method,
            "subject": self.subject,
            "before": parse(&self.before),
            "after": parse(&self.after),
            "reason": self.reason,
        }))
        .expect("an event always serialises")
    }

    fn decode(seq: u64, bytes: &[u8]) -> Result<AuditEvent, Error> {
        let bad = || internal(format!("audit event {seq} is unreadable"));
        let v: Value = serde_json::from_slice(bytes).map_err(|_| bad())?;
        let text = |k: &str| -> Result<String, Error> {
            Ok(v.get(k).and_then(Value::as_str).ok_or_else(bad)?.to_owned())
        };
        let state = |k: &str| match v.get(k) {
            None | Some(Value::Null) => String::new(),
            Some(x) => x.to_string(),
        };
        Ok(AuditEvent {
            seq,
            time: Nanos(v.get("time").and_then(Value::as_u64).ok_or_else(bad)?),
            actor: text("actor")?,
            method: text("method")?,
            subject: text("subject")?,
            before: state("before"),
            after: state("after"),
            reason: text("reason")?,
        })
    }
}

/// Who makes a change, and why.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// A token's name or a client certificate's subject.
    pub actor: &'a str,
    /// Why, for the audit trail.
    pub reason: &'a str,
}

impl Change<'_> {
    /// The audit event of this change: `method` on `subject`, from `before`
    /// to `after` (JSON, empty for none), at `now`.
    fn event(
        &self,
        method: &str,
        subject: String,
        before: String,
        after: String,
        now: Nanos,
    ) -> AuditEvent {
        AuditEvent {
            seq: 0,
            time: now,
            actor: self.actor.to_owned(),
            method: method.to_owned(),
            subject,
            before,
            after,
            reason: self.reason.to_owned(),
        }
    }
}

fn internal(e: impl Into<String>) -> Error {
    Error::Store(limits_store::StoreError::Internal(e.into()))
}

fn reason(field: &str, reason: &str, required: bool) -> Result<(), Error> {
    if required && reason.trim().is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    let n = reason.chars().count();
    if n > MAX_REASON_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_REASON_CHARS} characters, got {n}"),
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Checks an entry's values: alias length, an expiry in the future.
fn check_spec(field: &str, spec: &EntrySpec, now: Nanos) -> Result<(), Error> {
    if let Some(alias) = spec.limits.alias() {
        let n = alias.chars().count();
        if alias.trim().is_empty() {
            return Err(Error::invalid(
                format!("{field}.alias"),
                "must not be blank",
            ));
        }
        if n > MAX_ALIAS_CHARS || alias.chars().any(char::is_control) {
            return Err(Error::invalid(
                format!("{field}.alias"),
                format!("must be at most {MAX_ALIAS_CHARS} characters, without control characters"),
            ));
        }
    }
    if let Some(t) = spec.expire_time
        && t <= now
    {
        return Err(Error::invalid(
            format!("{field}.expire_time"),
            "must be in the future",
        ));
    }
    Ok(())
}

/// The entry as JSON for the audit trail: limits in their units (USD for
/// budgets), alias, expiry.
fn entry_json(entry: &Entry) -> String {
    let mut out = json!({ "limits": limits_json(&entry.limits) });
    if let Some(a) = entry.limits.alias() {
        out["alias"] = json!(a);
    }
    if let Some(t) = entry.expire_time {
        out["expire_time"] = json!(rfc3339(t));
    }
    if let Some(c) = entry.limits.calendar() {
        out["calendar"] = crate::runtime::calendar_json(c);
    }
    if let Some(t) = entry.limits.alert_thresholds() {
        let fractions: Vec<f64> = t.as_slice().iter().map(|&p| f64::from(p) / 1e6).collect();
        out["alert_thresholds"] = json!(fractions);
    }
    if let Some(scopes) = entry.limits.scopes() {
        let models: serde_json::Map<String, serde_json::Value> = scopes
            .iter()
            .map(|s| (s.pattern().to_owned(), limits_json(s.limits())))
            .collect();
        out["models"] = serde_json::Value::Object(models);
    }
    out.to_string()
}

/// Limits as JSON, in their units (USD for budgets).
fn limits_json(l: &SubjectLimits) -> serde_json::Value {
    let mut limits = serde_json::Map::new();
    for (kind, value) in l.all() {
        let v = if kind.is_budget() {
            json!(limits_core::NanoUsd(value).as_usd())
        } else {
            json!(value)
        };
        limits.insert(kind.name().to_owned(), v);
    }
    serde_json::Value::Object(limits)
}

/// Whether a window of `kind` counts `resource`: tokens are the total
/// token windows' and, named by kind, the input and output token windows'.
fn counts(kind: LimitKind, resource: limits_core::Resource) -> bool {
    use limits_core::Resource::{InputTokens, OutputTokens, Tokens};
    kind.resource() == resource
        || (resource == Tokens && matches!(kind.resource(), InputTokens | OutputTokens))
}

/// An instant as RFC 3339 text (UTC).
pub fn rfc3339(t: Nanos) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + t.as_duration()).to_string()
}

/// Amounts of the windows of a subject, as JSON: budgets in USD.
fn used_json(statuses: &[LimitStatus], kinds: &[LimitKind], delta: &[(LimitKind, i128)]) -> String {
    let mut out = serde_json::Map::new();
    for s in statuses.iter().filter(|s| kinds.contains(&s.kind.public())) {
        let d = delta
            .iter()
            .filter(|(k, _)| *k == s.kind.public())
            .map(|(_, d)| *d)
            .sum::<i128>();
        let used = (i128::from(s.used) + d).max(0) as u64;
        let v = if s.kind.is_budget() {
            json!(limits_core::NanoUsd(used).as_usd())
        } else {
            json!(used)
        };
        out.insert(s.kind.name().to_owned(), v);
    }
    json!({ "used": out }).to_string()
}

fn increases_json(increases: &[Increase]) -> String {
    let list: Vec<Value> = increases
        .iter()
        .map(|i| {
            let amount = if i.kind.is_budget() {
                json!(limits_core::NanoUsd(i.amount).as_usd())
            } else {
                json!(i.amount)
            };
            json!({
                "kind": i.kind.name(),
                "amount": amount,
                "expire_time": rfc3339(i.expire_time),
            })
        })
        .collect();
    json!({ "increases": list }).to_string()
}

/// An opaque page token: the hex of what the next page starts after.
fn make_page_token(after: &str) -> String {
    hex::encode(after)
}

fn read_page_token(token: &str) -> Result<String, Error> {
    hex::decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| Error::invalid("page_token", "is not a token this service gave"))
}

/// A page size as asked (0: the default), checked.
pub fn page_size(field: &str, asked: i64) -> Result<usize, Error> {
    match asked {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 || n as u64 > MAX_PAGE_SIZE as u64 => Err(Error::invalid(
            field,
            format!("must be between 0 and {MAX_PAGE_SIZE}"),
        )),
        n => Ok(n as usize),
    }
}

impl<S: Store> Limiter<S> {
    /// Resolves a subject an admin call names.
    fn named(&self, config: &Config, secret: &Secret, r: &SubjectRef) -> Result<Named, Error> {
        self.named_at("subject", config, secret, r)
    }

    /// [`named`](Self::named), with errors naming fields under `at` (the
    /// request's subject reference, or the entry being created).
    fn named_at(
        &self,
        at: &str,
        config: &Config,
        secret: &Secret,
        r: &SubjectRef,
    ) -> Result<Named, Error> {
        match (r.id.is_empty(), r.key_hash.is_empty()) {
            (false, false) => {
                return Err(Error::invalid(
                    format!("{at}.key_hash"),
                    format!("give either {at}.subject.id or key_hash, not both"),
                ));
            }
            (true, true) => {
                return Err(Error::invalid(format!("{at}.subject.id"), "is required"));
            }
            _ => {}
        }
        if !r.id.is_empty() {
            validate::subject_id(format_args!("{at}.subject"), &r.id)?;
            let subject = Subject::new(r.dimension, r.id.clone());
            return Ok(Named {
                dimension: r.dimension,
                stored: stored_id(secret, &subject).into_owned(),
                config_id: Some(r.id.clone()),
            });
        }
        if r.dimension != Dimension::ApiKey {
            return Err(Error::invalid(
                format!("{at}.key_hash"),
                "names API keys only; give subject.id for users and teams",
            ));
        }
        let hash = r.key_hash.strip_prefix("api_key:").unwrap_or(&r.key_hash);
        if hash.len() != 32 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                format!("{at}.key_hash"),
                "must be the 32 hex digits of the key's hash (as answers show it)",
            ));
        }
        let hash = hash.to_ascii_lowercase();
        // The config's entry of this key, if it has one: found by hashing
        // the config's keys (admin calls only).
        let config_id = config
            .table
            .entries(Dimension::ApiKey)
            .map(|(k, _)| k)
            .find(|k| secret.stored_key(k) == hash)
            .map(str::to_owned);
        Ok(Named {
            dimension: Dimension::ApiKey,
            stored: hash,
            config_id,
        })
    }

    /// The limits that apply to a named subject now.
    fn effective_of<'c>(
        &self,
        config: &'c Config,
        named: &Named,
        now: Nanos,
    ) -> Cow<'c, SubjectLimits> {
        runtime::effective(
            config,
            &self.runtime,
            named.dimension,
            named.config_id.as_deref(),
            || Cow::Borrowed(named.stored.as_str()),
            now,
        )
        .0
    }

    fn view(named: &Named, held: &Record, entry: &Entry, now: Nanos) -> EntryView {
        let (id, key_hash) = match named.dimension {
            Dimension::ApiKey => (String::new(), named.stored.clone()),
            _ => (named.stored.clone(), String::new()),
        };
        EntryView {
            dimension: named.dimension,
            id,
            key_hash,
            etag: entry.etag(),
            entry: entry.clone(),
            increases: held.live_increases(now).cloned().collect(),
        }
    }

    /// Runs one admin change: reads the subject's record, lets `make`
    /// decide the new record and its audit event (or refuse), and swaps it
    /// in the store; when another replica changed the record in between,
    /// reloads and decides again.
    async fn change<T>(
        &self,
        named: &Named,
        mut make: impl FnMut(&Record, Nanos) -> Result<(Option<Record>, AuditEvent, T), Error>,
    ) -> Result<T, Error> {
        let keep = self.config().admin.audit_max_events;
        let _one = self.admin.lock().await;
        self.sync_locked().await?;
        let key = named.key();
        for _ in 0..SWAP_ATTEMPTS {
            let now = now();
            let held = self.runtime.get(named.dimension, &named.stored);
            let current = held.as_ref().map(|h| h.record.clone()).unwrap_or_default();
            let (new, event, out) = make(&current, now)?;
            let new_bytes = new.as_ref().map(Record::encode);
            let audit = event.encode();
            let swapped = self
                .store
                .swap_record(RecordSwap {
                    key: &key,
                    expect: held.as_ref().map(|h| h.bytes.as_slice()),
                    new: new_bytes.as_deref(),
                    audit: Some(&audit),
                    audit_keep: keep,
                })
                .await?;
            match swapped {
                Swapped::Done { version, .. } => {
                    tracing_audit(&event);
                    let held = new
                        .zip(new_bytes)
                        .map(|(record, bytes)| Held { record, bytes });
                    self.runtime
                        .set_changed(named.dimension, &named.stored, held, version);
                    return Ok(out);
                }
                Swapped::Conflict(_) => {
                    // Another replica changed it: take the store's copy.
                    let records = self.store.records().await?;
                    self.runtime.replace_all(records).map_err(internal)?;
                }
            }
        }
        Err(Error::Aborted(
            "the entry kept changing under concurrent updates; try again".into(),
        ))
    }

    /// The runtime entry of a subject.
    pub async fn get_entry(&self, r: &SubjectRef) -> Result<EntryView, Error> {
        self.sync().await?;
        let config = self.config();
        let secret = self.store.secret().await?;
        let named = self.named(&config, &secret, r)?;
        let now = now();
        let held = self.runtime.get(named.dimension, &named.stored);
        let record = held.as_ref().map(|h| &h.record);
        match record.and_then(|r| r.live_entry(now).map(|e| (r, e))) {
            Some((record, entry)) => Ok(Self::view(&named, record, entry, now)),
            None => Err(Error::NotFound(
                "subject: has no runtime entry (its limits come from the config)".into(),
            )),
        }
    }

    /// One page of runtime entries (of one dimension, or all), ordered by
    /// dimension, then id; and the token of the next page (empty on the
    /// last).
    pub async fn list_entries(
        &self,
        dimension: Option<Dimension>,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<EntryView>, String), Error> {
        self.sync().await?;
        let after = if page_token.is_empty() {
            None
        } else {
            Some(read_page_token(page_token)?)
        };
        let now = now();
        let mut live = self
            .runtime
            .all(dimension)
            .into_iter()
            .filter(|(d, id, _)| {
                let key = runtime::record_key(*d, id);
                after
                    .as_ref()
                    .is_none_or(|a| order_key(&key) > order_key(a))
            })
            .filter_map(|(d, id, held)| {
                let entry = held.record.live_entry(now)?;
                let named = Named {
                    dimension: d,
                    stored: id.to_string(),
                    config_id: None,
                };
                Some((named.key(), Self::view(&named, &held.record, entry, now)))
            });
        let out: Vec<(String, EntryView)> = live.by_ref().take(page_size).collect();
        let next = match (live.next(), out.last()) {
            (Some(_), Some((key, _))) => make_page_token(key),
            _ => String::new(),
        };
        let out = out.into_iter().map(|(_, v)| v).collect();
        Ok((out, next))
    }

    /// Creates a subject's runtime entry; `AlreadyExists` if it has one.
    pub async fn create_entry(
        &self,
        change: Change<'_>,
        r: &SubjectRef,
        spec: &EntrySpec,
    ) -> Result<EntryView, Error> {
        reason("reason", change.reason, false)?;
        let config = self.config();
        let secret = self.store.secret().await?;
        let named = self.named_at("subject_limits", &config, &secret, r)?;
        check_spec("subject_limits", spec, now())?;
        self.change(&named, |current, now| {
            if current.live_entry(now).is_some() {
                return Err(Error::AlreadyExists(
                    "subject: already has a runtime entry (update it instead)".into(),
                ));
            }
            let entry = Entry {
                limits: spec.limits.clone(),
                expire_time: spec.expire_time,
                create_time: now,
                update_time: now,
            };
            let mut record = current.pruned(now).unwrap_or_default();
            record.entry = Some(entry.clone());
            let event = change.event(
                "CreateSubjectLimits",
                named.shown(&entry.limits),
                String::new(),
                entry_json(&entry),
                now,
            );
            let view = Self::view(&named, &record, &entry, now);
            Ok((Some(record), event, view))
        })
        .await
    }

    /// Changes the fields of a runtime entry that `update.mask` names.
    pub async fn update_entry(
        &self,
        change: Change<'_>,
        r: &SubjectRef,
        update: Update<'_>,
    ) -> Result<EntryView, Error> {
        reason("reason", change.reason, false)?;
        if update.mask.is_empty() {
            return Err(Error::invalid(
                "update_mask",
                "is required and must not be empty",
            ));
        }
        let config = self.config();
        let secret = self.store.secret().await?;
        let named = self.named(&config, &secret, r)?;
        check_spec("subject_limits", update.spec, now())?;
        self.change(&named, |current, now| {
            let before = current.live_entry(now);
            let mut entry = match (before, update.allow_missing) {
                (Some(e), _) => {
                    if let Some(tag) = update.etag
                        && tag != e.etag()
                    {
                        return Err(Error::Aborted(
                            "etag: the entry changed since it was read (read it again)".into(),
                        ));
                    }
                    e.clone()
                }
                (None, true) => {
                    if update.etag.is_some() {
                        return Err(Error::FailedPrecondition(
                            "etag: the subject has no runtime entry to match".into(),
                        ));
                    }
                    Entry {
                        limits: SubjectLimits::default(),
                        expire_time: None,
                        create_time: now,
                        update_time: now,
                    }
                }
                (None, false) => {
                    return Err(Error::NotFound(
                        "subject: has no runtime entry (create it, or set allow_missing)".into(),
                    ));
                }
            };
            for field in update.mask {
                match *field {
                    EntryField::Limit(LimitKind::MaxConcurrent) => entry.limits.set_max_concurrent(
                        update.spec.limits.get(LimitKind::MaxConcurrent).map(|n| {
                            std::num::NonZeroU32::new(n as u32).expect("a set limit is not zero")
                        }),
                    ),
                    EntryField::Limit(kind) => entry.limits.set(
                        kind,
                        update
                            .spec
                            .limits
                            .get(kind)
                            .and_then(std::num::NonZeroU64::new),
                    ),
                    EntryField::Alias => entry
                        .limits
                        .set_alias(update.spec.limits.alias().map(std::sync::Arc::from)),
                    EntryField::ExpireTime => entry.expire_time = update.spec.expire_time,
                    EntryField::Calendar => entry
                        .limits
                        .set_calendar(update.spec.limits.calendar().cloned()),
                    EntryField::ModelScopes => entry
                        .limits
                        .set_scopes(update.spec.limits.scopes().cloned()),
                    EntryField::AlertThresholds => entry
                        .limits
                        .set_alert_thresholds(update.spec.limits.alert_thresholds().cloned()),
                }
            }
            entry.update_time = now;
            let mut record = current.pruned(now).unwrap_or_default();
            record.entry = Some(entry.clone());
            let event = change.event(
                "UpdateSubjectLimits",
                named.shown(&entry.limits),
                before.map(entry_json).unwrap_or_default(),
                entry_json(&entry),
                now,
            );
            let view = Self::view(&named, &record, &entry, now);
            Ok((Some(record), event, view))
        })
        .await
    }

    /// Removes a runtime entry: the config's limits apply again.
    pub async fn delete_entry(
        &self,
        change: Change<'_>,
        r: &SubjectRef,
        etag: Option<&str>,
    ) -> Result<(), Error> {
        reason("reason", change.reason, false)?;
        let config = self.config();
        let secret = self.store.secret().await?;
        let named = self.named(&config, &secret, r)?;
        self.change(&named, |current, now| {
            let Some(before) = current.live_entry(now) else {
                return Err(Error::NotFound("subject: has no runtime entry".into()));
            };
            if let Some(tag) = etag
                && tag != before.etag()
            {
                return Err(Error::Aborted(
                    "etag: the entry changed since it was read (read it again)".into(),
                ));
            }
            let mut record = current.pruned(now).unwrap_or_default();
            record.entry = None;
            let record = (!record.increases.is_empty()).then_some(record);
            let event = change.event(
                "DeleteSubjectLimits",
                named.shown(&before.limits),
                entry_json(before),
                String::new(),
                now,
            );
            Ok((record, event, ()))
        })
        .await
    }

    /// Adds a temporary increase to one limit of a subject (which must have
    /// that limit, from any source); returns the subject's live increases.
    pub async fn raise_limit(
        &self,
        change: Change<'_>,
        r: &SubjectRef,
        kind: LimitKind,
        amount: u64,
        expire_time: Nanos,
    ) -> Result<Vec<Increase>, Error> {
        reason("reason", change.reason, true)?;
        if kind.window().is_none() {
            return Err(Error::invalid(
                "kind",
                "must be a windowed limit (a budget, request or token rate)",
            ));
        }
        if amount == 0 {
            return Err(Error::invalid("amount", "must be greater than 0"));
        }
        if expire_time <= now() {
            return Err(Error::invalid("expire_time", "must be in the future"));
        }
        let config = self.config();
        let secret = self.store.secret().await?;
        let named = self.named(&config, &secret, r)?;
        self.change(&named, |current, now| {
            let limits = self.effective_of(&config, &named, now);
            if limits.get(kind).is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "kind: the subject has no {} to raise",
                    kind.describe()
                )));
            }
            let mut record = current.pruned(now).unwrap_or_default();
            if record.increases.len() >= MAX_INCREASES {
                return Err(Error::FailedPrecondition(format!(
                    "subject: already has {MAX_INCREASES} active increases"
                )));
            }
            let before = increases_json(&record.increases);
            record.increases.push(Increase {
                kind,
                amount,
                expire_time,
                reason: change.reason.to_owned(),
            });
            let after = increases_json(&record.increases);
            let event = change.event("RaiseBudget", named.shown(&limits), before, after, now);
            let live = record.increases.clone();
            Ok((Some(record), event, live))
        })
        .await
    }

    /// Credits or debits a subject's usage; returns every limit's status
    /// after the change.
    pub async fn adjust_usage(
        &self,
        change: Change<'_>,
        r: &SubjectRef,
        adjust: Adjust,
    ) -> Result<Vec<LimitStatus>, Error> {
        reason("reason", change.reason, true)?;
        if adjust.amount == 0 {
            return Err(Error::invalid("amount", "must not be zero"));
        }
        let magnitude = u64::try_from(adjust.amount.unsigned_abs())
            .map_err(|_| Error::invalid("amount", "is too large"))?;
        let kinds: Vec<LimitKind> = match adjust.kind {
            Some(k) if !counts(k, adjust.resource) || k.window().is_none() => {
                return Err(Error::invalid(
                    "kind",
                    format!("{} does not count the resource given", k.describe()),
                ));
            }
            Some(k) => vec![k],
            None => limits_core::LimitKind::WINDOWED
                .into_iter()
                .filter(|k| k.resource() == adjust.resource)
                .collect(),
        };
        let change_of = if adjust.amount > 0 {
            Adjustment::Debit(magnitude)
        } else {
            Adjustment::Credit(magnitude)
        };
        let method = "AdjustUsage";
        self.adjust_windows(change, r, &kinds, change_of, method, adjust.amount > 0)
            .await
    }

    /// Empties chosen windows of a subject (every window when `kinds` is
    /// empty); returns every limit's status after the reset.
    pub async fn reset_usage(
        &self,
        change: Change<'_>,
        r: &SubjectRef,
        kinds: &[LimitKind],
    ) -> Result<Vec<LimitStatus>, Error> {
        reason("reason", change.reason, true)?;
        if let Some(i) = kinds.iter().position(|k| k.window().is_none()) {
            return Err(Error::invalid(
                format!("kinds[{i}]"),
                "must be a windowed limit (a budget, request or token rate)",
            ));
        }
        let kinds: Vec<LimitKind> = if kinds.is_empty() {
            limits_core::LimitKind::WINDOWED.to_vec()
        } else {
            let mut k = kinds.to_vec();
            k.sort();
            k.dedup();
            k
        };
        self.adjust_windows(change, r, &kinds, Adjustment::Reset, "ResetUsage", false)
            .await
    }

    async fn adjust_windows(
        &self,
        change: Change<'_>,
        r: &SubjectRef,
        kinds: &[LimitKind],
        adjustment: Adjustment,
        method: &str,
        needs_limit: bool,
    ) -> Result<Vec<LimitStatus>, Error> {
        self.sync().await?;
        let config = self.config();
        let secret = self.store.secret().await?;
        let named = self.named(&config, &secret, r)?;
        let now = now();
        let limits = self.effective_of(&config, &named, now);
        if needs_limit && !kinds.iter().any(|&k| limits.get(k).is_some()) {
            return Err(Error::FailedPrecondition(
                "kind: the subject has no limit that counts this (a debit needs one)".into(),
            ));
        }
        let changes: Vec<(LimitKind, Adjustment)> =
            kinds.iter().map(|&k| (k, adjustment)).collect();
        // The event names what moved; it is kept with the change, so it is
        // made first and describes the change asked for.
        let delta: Vec<(LimitKind, i128)> = match adjustment {
            Adjustment::Debit(a) => kinds.iter().map(|&k| (k, i128::from(a))).collect(),
            Adjustment::Credit(a) => kinds.iter().map(|&k| (k, -i128::from(a))).collect(),
            Adjustment::Reset => Vec::new(),
        };
        let before = self
            .store
            .usage_stored(&named.stored_subject(), &limits, now)
            .await?;
        let after_json = match adjustment {
            Adjustment::Reset => {
                let zero: serde_json::Map<_, _> = kinds
                    .iter()
                    .map(|k| (k.name().to_owned(), json!(0)))
                    .collect();
                json!({ "used": zero }).to_string()
            }
            _ => used_json(&before.statuses, kinds, &delta),
        };
        let before_json = used_json(&before.statuses, kinds, &[]);
        let event = change.event(method, named.shown(&limits), before_json, after_json, now);
        let audit = event.encode();
        let adjusted = self
            .store
            .adjust(
                &named.stored_subject(),
                &limits,
                AdjustOp {
                    changes: &changes,
                    audit: &audit,
                    audit_keep: config.admin.audit_max_events,
                },
                now,
            )
            .await?;
        tracing_audit(&event);
        Ok(adjusted.usage.statuses)
    }

    /// One page of the audit trail, newest first, and the token of the next
    /// (older) page: empty when there is none.
    pub async fn audit_events(
        &self,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<AuditEvent>, String), Error> {
        let before =
            if page_token.is_empty() {
                None
            } else {
                Some(read_page_token(page_token)?.parse::<u64>().map_err(|_| {
                    Error::invalid("page_token", "is not a token this service gave")
                })?)
            };
        let entries = self.store.audit(before, page_size + 1).await?;
        let mut events = entries
            .iter()
            .take(page_size)
            .map(|(seq, bytes)| AuditEvent::decode(*seq, bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if entries.len() > page_size {
            events
                .last()
                .map(|e| make_page_token(&e.seq.to_string()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        events.truncate(page_size);
        Ok((events, next))
    }

    /// Drops what has expired from the records kept in the store (entries
    /// and increases past their `expire_time`). Resolution already ignores
    /// them; this reclaims them. Returns how many records changed.
    pub async fn prune_records(&self) -> Result<usize, Error> {
        let now = now();
        let expired: Vec<_> = self
            .runtime
            .all(None)
            .into_iter()
            .filter(|(_, _, h)| h.record.has_expired(now))
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        let keep = self.config().admin.audit_max_events;
        let _one = self.admin.lock().await;
        let mut changed = 0;
        for (d, id, held) in expired {
            let pruned = held.record.pruned(now);
            let bytes = pruned.as_ref().map(Record::encode);
            let swapped = self
                .store
                .swap_record(RecordSwap {
                    key: &runtime::record_key(d, &id),
                    expect: Some(&held.bytes),
                    new: bytes.as_deref(),
                    audit: None,
                    audit_keep: keep,
                })
                .await?;
            if let Swapped::Done { version, .. } = swapped {
                let held = pruned
                    .zip(bytes)
                    .map(|(record, bytes)| Held { record, bytes });
                self.runtime.set_changed(d, &id, held, version);
                changed += 1;
            }
        }
        Ok(changed)
    }
}

/// Entries sort by dimension index, then id (the order of list pages).
fn order_key(record_key: &str) -> (usize, &str) {
    match runtime::parse_record_key(record_key) {
        Some((d, id)) => (d.index(), id),
        None => (usize::MAX, record_key),
    }
}

/// Every admin change is logged at info, as the audit trail keeps it (API
/// keys only by alias or hash; tokens never).
fn tracing_audit(event: &AuditEvent) {
    tracing::info!(
        target: "limits::audit",
        actor = %event.actor,
        method = %event.method,
        subject = %event.subject,
        before = %event.before,
        after = %event.after,
        reason = %event.reason,
        "admin change"
    );
}
