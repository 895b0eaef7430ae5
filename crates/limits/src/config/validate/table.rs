//! The per-id limits: the budget and rate-limit families and the combined
//! entries, merged per id into the [`LimitTable`].

use std::collections::BTreeMap;
use std::sync::Arc;

use limits_core::{Calendar, Dimension, LimitKind, LimitTable, SubjectLimits};

use crate::config::error::{ConfigError, Result};
use crate::config::keys::{BudgetKeys, BudgetPeriod, BudgetSettings, RateKeys, RawLimits};

/// An id's budgets, with the calendar they reset on (`None`: they roll).
#[derive(Debug)]
struct Budget {
    keys: BudgetKeys,
    calendar: Option<Arc<Calendar>>,
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
    fn budget(&mut self, key: &str, keys: BudgetKeys) -> Result<Budget> {
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
        })
    }
}

/// What the config says about one id of one dimension. `None` in a family
/// means "not listed there", so the family's default applies.
#[derive(Debug, Default)]
struct Entry {
    budget: Option<Budget>,
    rate: Option<RateKeys>,
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
            let budget = calendars.budget(&key, b.check_at(&key)?)?;
            let entry = entries.entry(id).or_default();
            entry.set_alias(budget.keys.alias.as_deref(), format!("{key}.alias"))?;
            entry.budget = Some(budget);
        }
        for (id, r) in rates {
            let key = format!("limits.rate_limits.{map}.{id}");
            let rate = r.check_at(&key)?;
            let entry = entries.entry(id).or_default();
            entry.set_alias(rate.alias.as_deref(), format!("{key}.alias"))?;
            entry.rate = Some(rate);
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
            let budget = calendars.budget(&key, budget.check_at(&key)?)?;
            let rate = rate.check_at(&key)?;
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
                )),
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
                subject_limits(budget, rate, entry.alias.as_ref()),
            );
        }
    }
    Ok(table)
}

fn subject_limits(
    budget: Option<&Budget>,
    rate: Option<&RateKeys>,
    alias: Option<&(Arc<str>, String)>,
) -> SubjectLimits {
    let mut limits = SubjectLimits::default();
    if let Some(b) = budget {
        limits.set(LimitKind::BudgetHourly, b.keys.hourly);
        limits.set(LimitKind::BudgetDaily, b.keys.daily);
        limits.set(LimitKind::BudgetWeekly, b.keys.weekly);
        limits.set(LimitKind::BudgetMonthly, b.keys.monthly);
        limits.set_calendar(b.calendar.clone());
    }
    if let Some(r) = rate {
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
    limits
}
