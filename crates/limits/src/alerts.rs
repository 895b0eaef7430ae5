//! Alert events: a budget window crossing one of its alert thresholds
//! (`limits.budgets.alert_thresholds`), as the library reports it.
//!
//! The engine reports each crossing once, from the operation that made it
//! (see [`limits_core::alerts`]); the limiter turns it into an
//! [`AlertEvent`] that names the subject as it may be shown (never a raw
//! API key) and publishes it to every [`Limiter::alerts`] subscriber:
//! limitsd's `WatchAlerts` streams and its webhook delivery.
//!
//! [`Limiter::alerts`]: crate::Limiter::alerts

use std::sync::Arc;

use limits_core::{Crossing, Dimension, LimitKind, NanoUsd, Nanos, Subject, SubjectLimits};
use limits_store::Secret;

/// Events kept for a subscriber that has not read them yet; a slower one
/// misses the oldest (and is told how many).
pub const CHANNEL_CAPACITY: usize = 4096;

/// A budget window that crossed an alert threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEvent {
    /// Unique to the crossing, the same on every replica and every
    /// delivery attempt: a receiver drops an id it has seen.
    pub id: String,
    /// The subject's dimension.
    pub dimension: Dimension,
    /// The subject as it may be shown: its alias, an API key's keyed hash
    /// prefix, or a user's, team's or org's id (hashed when the config
    /// hides them).
    pub subject: String,
    /// The model scope whose budget crossed, if a scope's.
    pub scope: Option<Arc<str>>,
    /// The budget (`BudgetDaily`, …; a calendar budget's kind, not its slot).
    pub kind: LimitKind,
    /// Whether the budget follows a calendar.
    pub calendar: bool,
    /// The threshold crossed, as a fraction (0.8 = 80 %).
    pub threshold: f64,
    /// What the window held after the operation (spend and open holds).
    pub used: NanoUsd,
    /// The budget.
    pub limit: NanoUsd,
    /// When the crossing happened.
    pub at: Nanos,
}

impl AlertEvent {
    /// The event as the outbox keeps it (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::json!({
            "id": self.id,
            "dimension": self.dimension.as_str(),
            "subject": self.subject,
            "scope": self.scope.as_deref(),
            "kind": self.kind.name(),
            "calendar": self.calendar,
            "threshold": self.threshold,
            "used": self.used.0,
            "limit": self.limit.0,
            "at": self.at.0,
        })
        .to_string()
        .into_bytes()
    }

    /// An event the outbox kept; an error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<AlertEvent, String> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable alert event: {e}"))?;
        let text = |k: &str| {
            v[k].as_str()
                .ok_or_else(|| format!("alert event without {k}"))
        };
        let number = |k: &str| {
            v[k].as_u64()
                .ok_or_else(|| format!("alert event without {k}"))
        };
        let dimension = text("dimension")?;
        let kind = text("kind")?;
        Ok(AlertEvent {
            id: text("id")?.to_owned(),
            dimension: Dimension::ALL
                .into_iter()
                .find(|d| d.as_str() == dimension)
                .ok_or_else(|| format!("unknown dimension {dimension:?}"))?,
            subject: text("subject")?.to_owned(),
            scope: v["scope"].as_str().map(Arc::from),
            kind: LimitKind::LIMITS
                .into_iter()
                .find(|k| k.name() == kind && k.is_budget())
                .ok_or_else(|| format!("unknown budget {kind:?}"))?,
            calendar: v["calendar"].as_bool().unwrap_or(false),
            threshold: v["threshold"]
                .as_f64()
                .ok_or("alert event without threshold")?,
            used: NanoUsd(number("used")?),
            limit: NanoUsd(number("limit")?),
            at: Nanos(number("at")?),
        })
    }

    /// The event's key in the outbox of the webhook at `url`: the
    /// webhook's own prefix, then the time (so keys sort in order), then
    /// the id.
    pub fn outbox_key(&self, url: &str) -> String {
        format!("{}/{:020}/{}", webhook_prefix(url), self.at.0, self.id)
    }
}

/// The outbox prefix of a webhook's events: a digest of its URL.
pub fn webhook_prefix(url: &str) -> String {
    hex::encode(&blake3::hash(url.as_bytes()).as_bytes()[..8])
}

/// The events of an operation's crossings. `subject_of(i)` gives call
/// subject `i` as the request named it, its limits and its scope.
pub(crate) fn events<'a>(
    secret: &Secret,
    crossings: &[Crossing],
    subject_of: impl Fn(usize) -> (&'a Subject, &'a SubjectLimits, Option<Arc<str>>),
    hide: impl Fn(Dimension) -> bool,
    now: Nanos,
) -> Vec<AlertEvent> {
    crossings
        .iter()
        .map(|c| {
            let (subject, limits, scope) = subject_of(c.subject);
            let shown = crate::identity::display(secret, subject, limits, hide(subject.dimension));
            // The crossing's identity: the subject as stored, the window,
            // the threshold and, for a calendar budget, its period (a
            // rolling budget can cross again later: its time tells them
            // apart).
            let stored = secret.stored_subject(subject);
            let when = if c.period != 0 { c.period } else { now.0 };
            let key = format!(
                "alert\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{when}",
                subject.dimension.as_str(),
                stored.id,
                scope.as_deref().unwrap_or(""),
                c.kind.name(),
                c.threshold_ppm,
            );
            AlertEvent {
                id: secret.stored_key(&key),
                dimension: subject.dimension,
                subject: shown
                    .split_once(':')
                    .map_or(shown.clone(), |(_, name)| name.to_owned()),
                scope,
                kind: c.kind.public(),
                calendar: c.kind.period().is_some(),
                threshold: f64::from(c.threshold_ppm) / 1e6,
                used: NanoUsd(c.used),
                limit: NanoUsd(c.limit),
                at: now,
            }
        })
        .collect()
}
