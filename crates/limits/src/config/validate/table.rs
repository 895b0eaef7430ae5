//! The per-id limits: the budget and rate-limit families and the combined
//! entries, merged per id into the [`LimitTable`].

use std::collections::BTreeMap;
use std::sync::Arc;

use limits_core::{Calendar, Dimension, LimitKind, LimitTable, ModelScopes, SubjectLimits};

use crate::config::error::{ConfigError, Result};
use crate::config::keys::{
    BudgetKeys, BudgetPeriod, BudgetSettings, IdMap, RateKeys, RawLimits, RawScope, ScopeKeys,
};

/// An id's budgets, with the calendar they reset on (`None`: they roll),
/// and its model scopes' budgets.
#[derive(Debug)]
struct Budget {
    keys: BudgetKeys,
    calendar: Option<Arc<Calendar>>,
    scopes: Vec<(String, ScopeKeys)>,
}

/// An id's rate limits, and its model scopes' rate limits.
#[derive(Debug)]
struct Rate {
    keys: RateKeys,
    scopes: Vec<(String, ScopeKeys)>,
}

/// Which keys a model scope of an entry may hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Budgets,
    Rates,
    Both,
}

/// The model scopes under `key` (an entry's path), checked: a valid
/// pattern each, and only its family's keys.
fn scopes(key: &str, models: &IdMap<RawScope>, family: Family) -> Result<Vec<(String, ScopeKeys)>> {
    let mut out = Vec::with_capacity(models.len());
    for (pattern, raw) in models {
        let at = format!("{key}.models.{pattern}");
        if let Err((_, e)) = ModelScopes::new([(pattern.clone(), SubjectLimits::default())]) {
            return Err(ConfigError::new(at, e.to_string()));
        }
        let keys = raw.check_at(&at)?;
        let budget = [
            ("hourly", keys.hourly.is_some()),
            ("daily", keys.daily.is_some()),
            ("weekly", keys.weekly.is_some()),
            ("monthly", keys.monthly.is_some()),
        ];
        let rate = [
            ("requests_per_second", keys.requests_per_second.is_some()),
            ("requests_per_minute", keys.requests_per_minute.is_some()),
            ("requests_per_hour", keys.requests_per_hour.is_some()),
            ("tokens_per_minute", keys.tokens_per_minute.is_some()),
            ("tokens_per_hour", keys.tokens_per_hour.is_some()),
            (
                "input_tokens_per_minute",
                keys.input_tokens_per_minute.is_some(),
            ),
            (
                "input_tokens_per_hour",
                keys.input_tokens_per_hour.is_some(),
            ),
            (
                "output_tokens_per_minute",
                keys.output_tokens_per_minute.is_some(),
            ),
            (
                "output_tokens_per_hour",
                keys.output_tokens_per_hour.is_some(),
            ),
        ];
        let stray = match family {
            Family::Budgets => rate.iter().find(|(_, set)| *set).map(|(n, _)| (n, "rate")),
            Family::Rates => budget
                .iter()
                .find(|(_, set)| *set)
                .map(|(n, _)| (n, "budget")),
            Family::Both => None,
        };
        if let Some((name, what)) = stray {
            return Err(ConfigError::new(
                format!("{at}.{name}"),
                format!(
                    "a {what} limit in this family's model scope: list it under the \
                     {what}s' entry or the combined limits.by_*.<id> entry"
                ),
            ));
        }
        out.push((pattern.clone(), keys));
    }
    Ok(out)
}

/// The calendars of the budget entries: each entry's `period`,
/// `timezone`, `week_start` and `month_anchor_day`, or the section's. One
/// calendar per distinct setting, shared by its entries, so that each
/// remembers its current periods for all of them.
struct Calendars<'a> {
    section: &'a BudgetSettings,
    made: BTreeMap<(String, u8, u8), Arc<Calendar>>,
}

impl Calendars<'_> {
    fn budget(
        &mut self,
        key: &str,
        keys: BudgetKeys,
        scopes: Vec<(String, ScopeKeys)>,
    ) -> Result<Budget> {
        let period = keys.period.unwrap_or(self.section.period);
        if period == BudgetPeriod::Rolling {
            let set = [
                ("timezone", keys.timezone.is_some()),
                ("week_start", keys.week_start.is_some()),
                ("month_anchor_day", keys.month_anchor_day.is_some()),
            ];
            if let Some((name, _)) = set.iter().find(|(_, set)| *set) {
                return Err(ConfigError::new(
                    format!("{key}.{name}"),
                    "applies only to calendar budgets: set `period: calendar` here or in \
                     limits.budgets",
                ));
            }
            return Ok(Budget {
                keys,
                calendar: None,
                scopes,
            });
        }
        let zone = keys
            .timezone
            .clone()
            .unwrap_or_else(|| self.section.timezone.clone());
        let week_start = keys.week_start.unwrap_or(self.section.week_start);
        let anchor = keys
            .month_anchor_day
            .unwrap_or(self.section.month_anchor_day);
        let calendar = match self.made.entry((zone, week_start, anchor)) {
            std::collections::btree_map::Entry::Occupied(c) => Arc::clone(c.get()),
            std::collections::btree_map::Entry::Vacant(v) => {
                let (zone, week_start, anchor) = v.key();
                let c = Calendar::new(zone, *week_start, *anchor)
                    .map_err(|e| ConfigError::new(format!("{key}.timezone"), e.to_string()))?;
                Arc::clone(v.insert(Arc::new(c)))
            }
        };
        Ok(Budget {
            keys,
            calendar: Some(calendar),
            scopes,
        })
    }
}

/// What the config says about one id of one dimension. `None` in a family
/// means "not listed there", so the family's default applies.
#[derive(Debug, Default)]
struct Entry {
    budget: Option<Budget>,
    rate: Option<Rate>,
    /// The alias and the key that set it, to name both sides of a conflict.
    alias: Option<(Arc<str>, String)>,
}

impl Entry {
    fn set_alias(&mut self, alias: Option<&str>, key: String) -> Result<()> {
        let Some(alias) = alias else {
            return Ok(());
        };
        match &self.alias {
            Some((existing, _)) if **existing == *alias => Ok(()),
            Some((existing, other)) => Err(ConfigError::new(
                key,
                format!("alias {alias:?} conflicts with alias {existing:?} set by {other}"),
            )),
            None => {
                self.alias = Some((Arc::from(alias), key));
                Ok(())
            }
        }
    }
}

const DIMENSIONS: [(Dimension, &str); 4] = [
    (Dimension::ApiKey, "by_api_key"),
    (Dimension::User, "by_user"),
    (Dimension::Team, "by_team"),
    (Dimension::Org, "by_org"),
];

pub(super) fn build(
    raw: &RawLimits,
    budgets: &BudgetSettings,
    rates_enabled: bool,
) -> Result<LimitTable> {
    let budgets_enabled = budgets.enabled;
    let mut calendars = Calendars {
        section: budgets,
        made: BTreeMap::new(),
    };
    let mut table = LimitTable::new();
    for (dimension, map) in DIMENSIONS {
        let (budgets, rates, combined) = match dimension {
            Dimension::ApiKey => (
                &raw.budgets.by_api_key,
                &raw.rate_limits.by_api_key,
                &raw.by_api_key,
            ),
            Dimension::User => (&raw.budgets.by_user, &raw.rate_limits.by_user, &raw.by_user),
            Dimension::Team => (&raw.budgets.by_team, &raw.rate_limits.by_team, &raw.by_team),
            Dimension::Org => (&raw.budgets.by_org, &raw.rate_limits.by_org, &raw.by_org),
        };
        let mut entries: BTreeMap<&str, Entry> = BTreeMap::new();

        // Every entry is validated, even in a disabled family: a bad value is
        // an error whether or not it is in force today.
        for (id, b) in budgets {
            let key = format!("limits.budgets.{map}.{id}");
            let models = scopes(&key, &b.models, Family::Budgets)?;
            let budget = calendars.budget(&key, b.check_at(&key)?, models)?;
            let entry = entries.entry(id).or_default();
            entry.set_alias(budget.keys.alias.as_deref(), format!("{key}.alias"))?;
            entry.budget = Some(budget);
        }
        for (id, r) in rates {
            let key = format!("limits.rate_limits.{map}.{id}");
            let rate = r.check_at(&key)?;
            let models = scopes(&key, &r.models, Family::Rates)?;
            let entry = entries.entry(id).or_default();
            entry.set_alias(rate.alias.as_deref(), format!("{key}.alias"))?;
            entry.rate = Some(Rate {
                keys: rate,
                scopes: models,
            });
        }
        for (id, c) in combined {
            let key = format!("limits.{map}.{id}");
            let entry = entries.entry(id).or_default();
            let elsewhere = match (&entry.budget, &entry.rate) {
                (Some(_), _) => Some("budgets"),
                (None, Some(_)) => Some("rate_limits"),
                (None, None) => None,
            };
            if let Some(family) = elsewhere {
                return Err(ConfigError::new(
                    key,
                    format!("id is also listed under limits.{family}.{map}; list it in one place"),
                ));
            }
            let (budget, rate) = c.split();
            let models = scopes(&key, &c.models, Family::Both)?;
            let budget = calendars.budget(&key, budget.check_at(&key)?, models)?;
            let rate = Rate {
                keys: rate.check_at(&key)?,
                scopes: scopes(&key, &c.models, Family::Both)?,
            };
            entry.set_alias(budget.keys.alias.as_deref(), format!("{key}.alias"))?;
            entry.budget = Some(budget);
            entry.rate = Some(rate);
        }

        if !budgets_enabled {
            entries.values_mut().for_each(|e| e.budget = None);
        }
        if !rates_enabled {
            entries.values_mut().for_each(|e| e.rate = None);
        }

        let default = entries.remove("default").unwrap_or_default();
        if default.budget.is_some() || default.rate.is_some() {
            table.set_default(
                dimension,
                Some(subject_limits(
                    default.budget.as_ref(),
                    default.rate.as_ref(),
                    default.alias.as_ref(),
                )?),
            );
        }
        for (id, entry) in &entries {
            // Listed only in a disabled family: the id is not listed at all.
            if entry.budget.is_none() && entry.rate.is_none() {
                continue;
            }
            let budget = entry.budget.as_ref().or(default.budget.as_ref());
            let rate = entry.rate.as_ref().or(default.rate.as_ref());
            table.insert(
                dimension,
                *id,
                subject_limits(budget, rate, entry.alias.as_ref())?,
            );
        }
    }
    Ok(table)
}

fn subject_limits(
    budget: Option<&Budget>,
    rate: Option<&Rate>,
    alias: Option<&(Arc<str>, String)>,
) -> Result<SubjectLimits> {
    let mut limits = SubjectLimits::default();
    // Each pattern's limits: the budgets' scope and the rates' scope of the
    // same pattern make one scope.
    let mut scoped: BTreeMap<&str, SubjectLimits> = BTreeMap::new();
    if let Some(b) = budget {
        limits.set(LimitKind::BudgetHourly, b.keys.hourly);
        limits.set(LimitKind::BudgetDaily, b.keys.daily);
        limits.set(LimitKind::BudgetWeekly, b.keys.weekly);
        limits.set(LimitKind::BudgetMonthly, b.keys.monthly);
        limits.set_calendar(b.calendar.clone());
        limits.set_alert_thresholds(b.keys.alert_thresholds.clone().flatten());
        for (pattern, keys) in &b.scopes {
            let l = scoped.entry(pattern).or_default();
            l.set(LimitKind::BudgetHourly, keys.hourly);
            l.set(LimitKind::BudgetDaily, keys.daily);
            l.set(LimitKind::BudgetWeekly, keys.weekly);
            l.set(LimitKind::BudgetMonthly, keys.monthly);
            l.set_calendar(b.calendar.clone());
        }
    }
    if let Some(Rate { keys: r, scopes }) = rate {
        for (pattern, keys) in scopes {
            let l = scoped.entry(pattern).or_default();
            set_rates(l, keys);
        }
        limits.set(LimitKind::RequestsPerSecond, r.requests_per_second);
        limits.set(LimitKind::RequestsPerMinute, r.requests_per_minute);
        limits.set(LimitKind::RequestsPerHour, r.requests_per_hour);
        limits.set(LimitKind::TokensPerMinute, r.tokens_per_minute);
        limits.set(LimitKind::TokensPerHour, r.tokens_per_hour);
        limits.set(LimitKind::InputTokensPerMinute, r.input_tokens_per_minute);
        limits.set(LimitKind::InputTokensPerHour, r.input_tokens_per_hour);
        limits.set(LimitKind::OutputTokensPerMinute, r.output_tokens_per_minute);
        limits.set(LimitKind::OutputTokensPerHour, r.output_tokens_per_hour);
        limits.set_max_concurrent(r.max_concurrent);
    }
    limits.set_alias(alias.map(|(a, _)| Arc::clone(a)));
    if !scoped.is_empty() {
        // A scope without limits would only cost its requests a lookup.
        let limited = scoped.into_iter().filter(|(_, l)| !l.is_unlimited());
        let scopes = ModelScopes::new(limited.map(|(p, l)| (p.to_owned(), l)))
            .map_err(|(pattern, e)| ConfigError::new(format!("models.{pattern}"), e.to_string()))?;
        limits.set_scopes(Some(Arc::new(scopes)));
    }
    Ok(limits)
}

/// A model scope's rate limits.
fn set_rates(limits: &mut SubjectLimits, keys: &ScopeKeys) {
    limits.set(LimitKind::RequestsPerSecond, keys.requests_per_second);
    limits.set(LimitKind::RequestsPerMinute, keys.requests_per_minute);
    limits.set(LimitKind::RequestsPerHour, keys.requests_per_hour);
    limits.set(LimitKind::TokensPerMinute, keys.tokens_per_minute);
    limits.set(LimitKind::TokensPerHour, keys.tokens_per_hour);
    limits.set(
        LimitKind::InputTokensPerMinute,
        keys.input_tokens_per_minute,
    );
    limits.set(LimitKind::InputTokensPerHour, keys.input_tokens_per_hour);
    limits.set(
        LimitKind::OutputTokensPerMinute,
        keys.output_tokens_per_minute,
    );
    limits.set(LimitKind::OutputTokensPerHour, keys.output_tokens_per_hour);
}
