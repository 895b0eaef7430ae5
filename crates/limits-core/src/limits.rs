//! Subjects, the kinds of limit, and the table that resolves a subject's
//! limits from explicit entries or a per-dimension default.

use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;

use ahash::AHashMap;

use crate::alerts::Thresholds;
use crate::calendar::{Calendar, Period};
use crate::scope::ModelScopes;
use crate::time::Nanos;

/// What kind of identity a subject is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dimension {
    /// An API key (a secret: shown by alias or keyed hash).
    ApiKey = 0,
    /// A user.
    User = 1,
    /// A team.
    Team = 2,
    /// An organisation: above teams (every request of its teams, users and
    /// keys that names it).
    Org = 3,
}

/// How many dimensions there are.
pub const DIMENSIONS: usize = Dimension::ALL.len();

impl Dimension {
    /// Every dimension, in index order.
    pub const ALL: [Dimension; 4] = [
        Dimension::ApiKey,
        Dimension::User,
        Dimension::Team,
        Dimension::Org,
    ];

    /// The name used in config, the API and metrics (`api_key`, `user`,
    /// `team`, `org`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Dimension::ApiKey => "api_key",
            Dimension::User => "user",
            Dimension::Team => "team",
            Dimension::Org => "org",
        }
    }

    /// A dense index (0 to 3) for per-dimension arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// One identity whose limits apply to a request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subject {
    /// What kind of identity it is.
    pub dimension: Dimension,
    /// The identity (for API keys, the key or its keyed hash).
    pub id: String,
}

impl Subject {
    /// A subject of a dimension.
    pub fn new(dimension: Dimension, id: impl Into<String>) -> Subject {
        Subject {
            dimension,
            id: id.into(),
        }
    }
}

/// What a windowed limit counts.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Nano-dollars of spend.
    Cost,
    /// Requests admitted.
    Requests,
    /// Tokens consumed.
    Tokens,
    /// Prompt (input) tokens consumed.
    InputTokens,
    /// Completion (output) tokens consumed.
    OutputTokens,
    /// Leases held (concurrency).
    Leases,
}

/// Every limit a subject can have: the windowed kinds (rolling windows),
/// then the concurrency limit; then the calendar slots, which are not
/// limits of their own but where a calendar budget is counted (see
/// [`calendar`](Self::calendar)).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LimitKind {
    /// USD spent over the last hour.
    BudgetHourly = 0,
    /// USD spent over the last 24 hours (or, on a calendar, today).
    BudgetDaily = 1,
    /// USD spent over the last 30 days (or, on a calendar, this month).
    BudgetMonthly = 2,
    /// Requests over the last second.
    RequestsPerSecond = 3,
    /// Requests over the last minute.
    RequestsPerMinute = 4,
    /// Requests over the last hour.
    RequestsPerHour = 5,
    /// Tokens over the last minute.
    TokensPerMinute = 6,
    /// Tokens over the last hour.
    TokensPerHour = 7,
    /// USD spent over the last 7 days (or, on a calendar, this week).
    BudgetWeekly = 8,
    /// Input (prompt) tokens over the last minute.
    InputTokensPerMinute = 9,
    /// Input (prompt) tokens over the last hour.
    InputTokensPerHour = 10,
    /// Output (completion) tokens over the last minute.
    OutputTokensPerMinute = 11,
    /// Output (completion) tokens over the last hour.
    OutputTokensPerHour = 12,
    /// Leases held at once.
    MaxConcurrent = 13,
    /// Where a daily budget on a calendar is counted: one bucket per day.
    CalendarDaily = 14,
    /// Where a weekly budget on a calendar is counted.
    CalendarWeekly = 15,
    /// Where a monthly budget on a calendar is counted.
    CalendarMonthly = 16,
}

/// The number of windowed limit kinds (the calendar slots are not limits).
pub const WINDOW_KINDS: usize = 13;

/// The number of windows a subject can have: one per windowed kind and one
/// per calendar slot.
pub const SLOTS: usize = WINDOW_KINDS + 3;

impl LimitKind {
    /// The windowed kinds, in index order.
    pub const WINDOWED: [LimitKind; WINDOW_KINDS] = [
        LimitKind::BudgetHourly,
        LimitKind::BudgetDaily,
        LimitKind::BudgetMonthly,
        LimitKind::RequestsPerSecond,
        LimitKind::RequestsPerMinute,
        LimitKind::RequestsPerHour,
        LimitKind::TokensPerMinute,
        LimitKind::TokensPerHour,
        LimitKind::BudgetWeekly,
        LimitKind::InputTokensPerMinute,
        LimitKind::InputTokensPerHour,
        LimitKind::OutputTokensPerMinute,
        LimitKind::OutputTokensPerHour,
    ];

    /// Every limit kind, concurrency included, in index order.
    pub const LIMITS: [LimitKind; WINDOW_KINDS + 1] = [
        LimitKind::BudgetHourly,
        LimitKind::BudgetDaily,
        LimitKind::BudgetMonthly,
        LimitKind::RequestsPerSecond,
        LimitKind::RequestsPerMinute,
        LimitKind::RequestsPerHour,
        LimitKind::TokensPerMinute,
        LimitKind::TokensPerHour,
        LimitKind::BudgetWeekly,
        LimitKind::InputTokensPerMinute,
        LimitKind::InputTokensPerHour,
        LimitKind::OutputTokensPerMinute,
        LimitKind::OutputTokensPerHour,
        LimitKind::MaxConcurrent,
    ];

    /// Every window a subject can have: the windowed kinds, then the
    /// calendar slots.
    pub const SLOTS: [LimitKind; SLOTS] = [
        LimitKind::BudgetHourly,
        LimitKind::BudgetDaily,
        LimitKind::BudgetMonthly,
        LimitKind::RequestsPerSecond,
        LimitKind::RequestsPerMinute,
        LimitKind::RequestsPerHour,
        LimitKind::TokensPerMinute,
        LimitKind::TokensPerHour,
        LimitKind::BudgetWeekly,
        LimitKind::InputTokensPerMinute,
        LimitKind::InputTokensPerHour,
        LimitKind::OutputTokensPerMinute,
        LimitKind::OutputTokensPerHour,
        LimitKind::CalendarDaily,
        LimitKind::CalendarWeekly,
        LimitKind::CalendarMonthly,
    ];

    /// What this limit counts.
    pub const fn resource(self) -> Resource {
        match self {
            LimitKind::BudgetHourly
            | LimitKind::BudgetDaily
            | LimitKind::BudgetWeekly
            | LimitKind::BudgetMonthly
            | LimitKind::CalendarDaily
            | LimitKind::CalendarWeekly
            | LimitKind::CalendarMonthly => Resource::Cost,
            LimitKind::RequestsPerSecond
            | LimitKind::RequestsPerMinute
            | LimitKind::RequestsPerHour => Resource::Requests,
            LimitKind::TokensPerMinute | LimitKind::TokensPerHour => Resource::Tokens,
            LimitKind::InputTokensPerMinute | LimitKind::InputTokensPerHour => {
                Resource::InputTokens
            }
            LimitKind::OutputTokensPerMinute | LimitKind::OutputTokensPerHour => {
                Resource::OutputTokens
            }
            LimitKind::MaxConcurrent => Resource::Leases,
        }
    }

    /// The rolling window's length (a calendar slot's: its period's usual
    /// length); `None` for the concurrency limit.
    pub const fn window(self) -> Option<Nanos> {
        Some(match self {
            LimitKind::RequestsPerSecond => Nanos::SECOND,
            LimitKind::RequestsPerMinute
            | LimitKind::TokensPerMinute
            | LimitKind::InputTokensPerMinute
            | LimitKind::OutputTokensPerMinute => Nanos::MINUTE,
            LimitKind::BudgetHourly
            | LimitKind::RequestsPerHour
            | LimitKind::TokensPerHour
            | LimitKind::InputTokensPerHour
            | LimitKind::OutputTokensPerHour => Nanos::HOUR,
            LimitKind::BudgetDaily | LimitKind::CalendarDaily => Nanos::DAY,
            LimitKind::BudgetWeekly | LimitKind::CalendarWeekly => Nanos(7 * Nanos::DAY.0),
            LimitKind::BudgetMonthly | LimitKind::CalendarMonthly => Nanos(30 * Nanos::DAY.0),
            LimitKind::MaxConcurrent => return None,
        })
    }

    /// How long an amount is counted after its bucket ends: the window's
    /// length, or zero for a calendar slot, whose buckets are whole periods
    /// (see [`crate::calendar`]). `None` for the concurrency limit.
    pub const fn lifetime(self) -> Option<Nanos> {
        match self.period() {
            Some(_) => Some(Nanos::ZERO),
            None => self.window(),
        }
    }

    /// The calendar slot a budget of this kind is counted in when its
    /// subject's budgets follow a calendar; `None` for kinds with no
    /// calendar period (the hourly budget stays rolling).
    pub const fn calendar(self) -> Option<LimitKind> {
        match self {
            LimitKind::BudgetDaily => Some(LimitKind::CalendarDaily),
            LimitKind::BudgetWeekly => Some(LimitKind::CalendarWeekly),
            LimitKind::BudgetMonthly => Some(LimitKind::CalendarMonthly),
            _ => None,
        }
    }

    /// A calendar slot's period; `None` for every other kind.
    pub const fn period(self) -> Option<Period> {
        match self {
            LimitKind::CalendarDaily => Some(Period::Day),
            LimitKind::CalendarWeekly => Some(Period::Week),
            LimitKind::CalendarMonthly => Some(Period::Month),
            _ => None,
        }
    }

    /// The limit a calendar slot counts for (the budget kind); every other
    /// kind is its own.
    pub const fn public(self) -> LimitKind {
        match self {
            LimitKind::CalendarDaily => LimitKind::BudgetDaily,
            LimitKind::CalendarWeekly => LimitKind::BudgetWeekly,
            LimitKind::CalendarMonthly => LimitKind::BudgetMonthly,
            k => k,
        }
    }

    /// The config key that sets this limit, also used in reasons and labels
    /// (a calendar slot has its budget's).
    pub const fn name(self) -> &'static str {
        match self {
            LimitKind::BudgetHourly => "hourly",
            LimitKind::BudgetDaily | LimitKind::CalendarDaily => "daily",
            LimitKind::BudgetWeekly | LimitKind::CalendarWeekly => "weekly",
            LimitKind::BudgetMonthly | LimitKind::CalendarMonthly => "monthly",
            LimitKind::RequestsPerSecond => "requests_per_second",
            LimitKind::RequestsPerMinute => "requests_per_minute",
            LimitKind::RequestsPerHour => "requests_per_hour",
            LimitKind::TokensPerMinute => "tokens_per_minute",
            LimitKind::TokensPerHour => "tokens_per_hour",
            LimitKind::InputTokensPerMinute => "input_tokens_per_minute",
            LimitKind::InputTokensPerHour => "input_tokens_per_hour",
            LimitKind::OutputTokensPerMinute => "output_tokens_per_minute",
            LimitKind::OutputTokensPerHour => "output_tokens_per_hour",
            LimitKind::MaxConcurrent => "max_concurrent",
        }
    }

    /// A phrase for human-readable reasons, e.g. "daily budget".
    pub const fn describe(self) -> &'static str {
        match self {
            LimitKind::BudgetHourly => "hourly budget",
            LimitKind::BudgetDaily | LimitKind::CalendarDaily => "daily budget",
            LimitKind::BudgetWeekly | LimitKind::CalendarWeekly => "weekly budget",
            LimitKind::BudgetMonthly | LimitKind::CalendarMonthly => "monthly budget",
            LimitKind::RequestsPerSecond => "requests per second limit",
            LimitKind::RequestsPerMinute => "requests per minute limit",
            LimitKind::RequestsPerHour => "requests per hour limit",
            LimitKind::TokensPerMinute => "tokens per minute limit",
            LimitKind::TokensPerHour => "tokens per hour limit",
            LimitKind::InputTokensPerMinute => "input tokens per minute limit",
            LimitKind::InputTokensPerHour => "input tokens per hour limit",
            LimitKind::OutputTokensPerMinute => "output tokens per minute limit",
            LimitKind::OutputTokensPerHour => "output tokens per hour limit",
            LimitKind::MaxConcurrent => "concurrency limit",
        }
    }

    /// Whether this is a USD budget.
    pub const fn is_budget(self) -> bool {
        matches!(self.resource(), Resource::Cost)
    }

    /// A dense index for per-kind arrays (windowed kinds first, then the
    /// concurrency limit, then the calendar slots).
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The limits of one subject. Budgets are in nano-dollars; the rest are
/// counts. A `None` is no limit of that kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectLimits {
    windows: [Option<NonZeroU64>; WINDOW_KINDS],
    max_concurrent: Option<NonZeroU32>,
    /// How many of the above are set, kept in step by every setter: every
    /// check sizes its statuses by it.
    count: u8,
    /// A name to show for the subject in reasons and metrics instead of its id
    /// (API keys are secrets).
    alias: Option<Arc<str>>,
    /// When set, the daily, weekly and monthly budgets reset on this
    /// calendar's boundaries instead of rolling.
    calendar: Option<Arc<Calendar>>,
    /// Limits for the requests of some models only, beside these.
    scopes: Option<Arc<ModelScopes>>,
    /// The subject's own alert thresholds, in place of the policy's.
    alert_thresholds: Option<Thresholds>,
}

impl SubjectLimits {
    /// No limits at all.
    pub const UNLIMITED: SubjectLimits = SubjectLimits {
        windows: [None; WINDOW_KINDS],
        max_concurrent: None,
        count: 0,
        alias: None,
        calendar: None,
        scopes: None,
        alert_thresholds: None,
    };

    /// Sets a windowed limit. Panics if `kind` is the concurrency limit; use
    /// [`with_max_concurrent`](Self::with_max_concurrent) for that.
    pub fn with(mut self, kind: LimitKind, limit: NonZeroU64) -> SubjectLimits {
        assert!(kind != LimitKind::MaxConcurrent, "use with_max_concurrent");
        self.windows[kind.public().index()] = Some(limit);
        self.recount();
        self
    }

    /// Sets or clears a windowed limit. Panics if `kind` is the concurrency
    /// limit; use [`set_max_concurrent`](Self::set_max_concurrent) for that.
    pub fn set(&mut self, kind: LimitKind, limit: Option<NonZeroU64>) {
        assert!(kind != LimitKind::MaxConcurrent, "use with_max_concurrent");
        self.windows[kind.public().index()] = limit;
        self.recount();
    }

    /// Sets the concurrency limit.
    pub fn with_max_concurrent(mut self, limit: NonZeroU32) -> SubjectLimits {
        self.max_concurrent = Some(limit);
        self.recount();
        self
    }

    /// Sets or clears the concurrency limit.
    pub fn set_max_concurrent(&mut self, limit: Option<NonZeroU32>) {
        self.max_concurrent = limit;
        self.recount();
    }

    fn recount(&mut self) {
        let windows = self.windows.iter().filter(|l| l.is_some()).count();
        // At most WINDOW_KINDS + 1.
        self.count = (windows + usize::from(self.max_concurrent.is_some())) as u8;
    }

    /// Sets the name shown for the subject instead of its id.
    pub fn with_alias(mut self, alias: impl Into<Arc<str>>) -> SubjectLimits {
        self.alias = Some(alias.into());
        self
    }

    /// Sets or clears the name shown for the subject instead of its id.
    pub fn set_alias(&mut self, alias: Option<Arc<str>>) {
        self.alias = alias;
    }

    /// The name shown for the subject instead of its id, if any.
    pub fn alias(&self) -> Option<&str> {
        self.alias.as_deref()
    }

    /// Makes the daily, weekly and monthly budgets reset on a calendar.
    pub fn with_calendar(mut self, calendar: Arc<Calendar>) -> SubjectLimits {
        self.set_calendar(Some(calendar));
        self
    }

    /// Sets or clears the calendar the budgets reset on (the model scopes'
    /// budgets too: they follow their subject's calendar).
    pub fn set_calendar(&mut self, calendar: Option<Arc<Calendar>>) {
        self.calendar = calendar;
        self.inherit();
    }

    /// Puts the model scopes on this subject's calendar and alert
    /// thresholds.
    fn inherit(&mut self) {
        if let Some(scopes) = &mut self.scopes {
            Arc::make_mut(scopes).inherit(self.calendar.as_ref(), self.alert_thresholds.as_ref());
        }
    }

    /// The calendar the budgets reset on; `None` when they roll.
    pub fn calendar(&self) -> Option<&Arc<Calendar>> {
        self.calendar.as_ref()
    }

    /// Sets or clears the subject's own alert thresholds (`None`: the
    /// policy's apply).
    pub fn set_alert_thresholds(&mut self, thresholds: Option<Thresholds>) {
        self.alert_thresholds = thresholds;
        self.inherit();
    }

    /// The subject's own alert thresholds, if it has any.
    pub fn alert_thresholds(&self) -> Option<&Thresholds> {
        self.alert_thresholds.as_ref()
    }

    /// Sets or clears the subject's model scopes (empty clears them); their
    /// budgets follow this subject's calendar and alert thresholds.
    pub fn set_scopes(&mut self, scopes: Option<Arc<ModelScopes>>) {
        self.scopes = scopes.filter(|s| !s.is_empty());
        self.inherit();
    }

    /// Adds model scopes.
    pub fn with_scopes(mut self, scopes: ModelScopes) -> SubjectLimits {
        self.set_scopes(Some(Arc::new(scopes)));
        self
    }

    /// The subject's model scopes, if it has any.
    #[inline]
    pub fn scopes(&self) -> Option<&Arc<ModelScopes>> {
        self.scopes.as_ref()
    }

    /// The window a limit of `kind` is counted in: its calendar slot when
    /// the budgets follow a calendar and the kind has one, else its own.
    #[inline(always)]
    pub fn slot(&self, kind: LimitKind) -> LimitKind {
        match (kind.calendar(), &self.calendar) {
            (Some(slot), Some(_)) => slot,
            _ => kind,
        }
    }

    /// The limit counted in window `slot`, if any: a calendar slot counts
    /// its budget only while the budgets follow a calendar, and a budget's
    /// own window only while they roll.
    #[inline(always)]
    pub fn limit_in(&self, slot: LimitKind) -> Option<u64> {
        match slot {
            LimitKind::MaxConcurrent => None,
            LimitKind::CalendarDaily | LimitKind::CalendarWeekly | LimitKind::CalendarMonthly => {
                self.calendar.as_ref()?;
                self.windows[slot.public().index()].map(NonZeroU64::get)
            }
            k => {
                if k.calendar().is_some() && self.calendar.is_some() {
                    return None;
                }
                self.windows[k.index()].map(NonZeroU64::get)
            }
        }
    }

    /// Where the bucket of window `slot` that counts an amount charged at
    /// `now` is: for a calendar slot, the last nanosecond of the period
    /// containing `now`.
    #[inline(never)]
    pub(crate) fn calendar_bucket(&self, slot: LimitKind, now: Nanos) -> Option<u64> {
        let period = slot.period()?;
        let end = self.calendar.as_ref()?.end(period, now);
        Some(end.0.saturating_sub(1))
    }

    /// The limit of a kind, as a plain number (0 is never returned); a
    /// calendar slot has its budget's.
    pub fn get(&self, kind: LimitKind) -> Option<u64> {
        match kind {
            LimitKind::MaxConcurrent => self.max_concurrent.map(|n| u64::from(n.get())),
            k => self.windows[k.public().index()].map(NonZeroU64::get),
        }
    }

    /// The windowed limits this subject has, in kind order.
    pub fn windowed(&self) -> impl Iterator<Item = (LimitKind, u64)> + '_ {
        LimitKind::WINDOWED
            .iter()
            .filter_map(|&k| self.windows[k.index()].map(|l| (k, l.get())))
    }

    /// The windowed limits by kind index (`LimitKind::WINDOWED` order), for
    /// the engine's hot loops.
    pub(crate) fn windowed_limits(&self) -> &[Option<NonZeroU64>; WINDOW_KINDS] {
        &self.windows
    }

    /// Every limit this subject has, in kind order.
    pub fn all(&self) -> impl Iterator<Item = (LimitKind, u64)> + '_ {
        self.windowed().chain(
            self.max_concurrent
                .map(|n| (LimitKind::MaxConcurrent, u64::from(n.get()))),
        )
    }

    /// How many limits this subject has: the length of [`all`](Self::all).
    #[inline]
    pub fn count(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether any USD budget is set.
    pub fn has_budget(&self) -> bool {
        self.windowed().any(|(k, _)| k.is_budget())
    }

    /// Whether no limit of any kind is set, in any model scope either.
    pub fn is_unlimited(&self) -> bool {
        self.windows.iter().all(Option::is_none)
            && self.max_concurrent.is_none()
            && self.scopes.is_none()
    }
}

/// The limits of every subject: explicit entries per dimension, and an
/// optional default per dimension for ids that are not listed. An id with no
/// entry and no default is unlimited.
#[derive(Clone, Debug, Default)]
pub struct LimitTable {
    explicit: [AHashMap<Box<str>, SubjectLimits>; DIMENSIONS],
    defaults: [Option<SubjectLimits>; DIMENSIONS],
}

impl LimitTable {
    /// An empty table: every subject is unlimited.
    pub fn new() -> LimitTable {
        LimitTable::default()
    }

    /// Sets the limits of one id, replacing any earlier entry.
    pub fn insert(&mut self, dimension: Dimension, id: impl Into<Box<str>>, limits: SubjectLimits) {
        self.explicit[dimension.index()].insert(id.into(), limits);
    }

    /// Sets or clears the limits of ids of a dimension that have no entry.
    pub fn set_default(&mut self, dimension: Dimension, limits: Option<SubjectLimits>) {
        self.defaults[dimension.index()] = limits;
    }

    /// The limits that apply to a subject.
    pub fn resolve(&self, dimension: Dimension, id: &str) -> &SubjectLimits {
        let d = dimension.index();
        self.explicit[d]
            .get(id)
            .or(self.defaults[d].as_ref())
            .unwrap_or(&SubjectLimits::UNLIMITED)
    }

    /// The id's own entry, if it has one (not the default).
    pub fn entry(&self, dimension: Dimension, id: &str) -> Option<&SubjectLimits> {
        self.explicit[dimension.index()].get(id)
    }

    /// Whether the id has an entry of its own (not the default).
    pub fn is_listed(&self, dimension: Dimension, id: &str) -> bool {
        self.explicit[dimension.index()].contains_key(id)
    }

    /// The explicit entries of a dimension.
    pub fn entries(&self, dimension: Dimension) -> impl Iterator<Item = (&str, &SubjectLimits)> {
        self.explicit[dimension.index()]
            .iter()
            .map(|(k, v)| (&**k, v))
    }

    /// The limits of ids of a dimension that have no entry, if set.
    pub fn default_for(&self, dimension: Dimension) -> Option<&SubjectLimits> {
        self.defaults[dimension.index()].as_ref()
    }
}

/// The state of one limit of one subject, after a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitStatus {
    /// Index of the subject in the request.
    pub subject: usize,
    /// Which limit; for a budget on a calendar, its calendar slot
    /// ([`LimitKind::public`] gives the budget's kind).
    pub kind: LimitKind,
    /// The limit, in nano-dollars for budgets, otherwise a count.
    pub limit: u64,
    /// What the window holds now, including held reservations.
    pub used: u64,
    /// When the oldest amount (or lease) expires; `None` when empty. For a
    /// budget on a calendar, when its period ends, even when empty.
    pub reset_at: Option<Nanos>,
    /// Whether this limit stopped the request.
    pub exceeded: bool,
    /// The model scope the limit belongs to (its pattern); `None` for the
    /// subject's own limits. The engine leaves it unset (a scope is a
    /// subject to it); the library names the scopes of its answers.
    pub scope: Option<Arc<str>>,
}

impl LimitStatus {
    /// How much is left before the limit (0 when at or over it).
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    #[test]
    fn resolves_explicit_then_default_then_unlimited() {
        let mut t = LimitTable::new();
        t.insert(
            Dimension::ApiKey,
            "k1",
            SubjectLimits::default().with(LimitKind::RequestsPerSecond, nz(10)),
        );
        t.set_default(
            Dimension::ApiKey,
            Some(SubjectLimits::default().with(LimitKind::RequestsPerSecond, nz(1))),
        );
        assert_eq!(
            t.resolve(Dimension::ApiKey, "k1")
                .get(LimitKind::RequestsPerSecond),
            Some(10)
        );
        assert_eq!(
            t.resolve(Dimension::ApiKey, "k2")
                .get(LimitKind::RequestsPerSecond),
            Some(1)
        );
        assert!(t.resolve(Dimension::User, "alice").is_unlimited());
        assert!(t.is_listed(Dimension::ApiKey, "k1"));
        assert!(!t.is_listed(Dimension::ApiKey, "k2"));
    }

    #[test]
    fn count_follows_every_setter() {
        let mut l = SubjectLimits::default();
        assert_eq!(l.count(), 0);
        l = l.with(LimitKind::BudgetDaily, nz(5));
        l = l.with(LimitKind::BudgetDaily, nz(6));
        assert_eq!(l.count(), 1);
        l.set(LimitKind::TokensPerHour, Some(nz(7)));
        l = l.with_max_concurrent(NonZeroU32::new(2).unwrap());
        assert_eq!(l.count(), 3);
        assert_eq!(l.count(), l.all().count());
        l.set(LimitKind::BudgetDaily, None);
        l.set_max_concurrent(None);
        assert_eq!(l.count(), 1);
        assert_eq!(l.count(), l.all().count());
        // Equal limits compare equal however they were built.
        let direct = SubjectLimits::default().with(LimitKind::TokensPerHour, nz(7));
        assert_eq!(l, direct);
    }
}
