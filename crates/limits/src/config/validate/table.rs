//! The per-id limits: the budget and rate-limit families and the combined
//! entries, merged per id into the [`LimitTable`].

use std::collections::BTreeMap;
use std::sync::Arc;

use limits_core::{Dimension, LimitKind, LimitTable, SubjectLimits};

use crate::config::error::{ConfigError, Result};
use crate::config::keys::{BudgetKeys, RateKeys, RawLimits};

/// What the config says about one id of one dimension. `None` in a family
/// means "not listed there", so the family's default applies.
#[derive(Debug, Default)]
struct Entry {
    budget: Option<BudgetKeys>,
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
    budgets_enabled: bool,
    rates_enabled: bool,
) -> Result<LimitTable> {
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
            let budget = b.check_at(&key)?;
            let entry = entries.entry(id).or_default();
            entry.set_alias(budget.alias.as_deref(), format!("{key}.alias"))?;
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
            let budget = budget.check_at(&key)?;
            let rate = rate.check_at(&key)?;
            entry.set_alias(budget.alias.as_deref(), format!("{key}.alias"))?;
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
    budget: Option<&BudgetKeys>,
    rate: Option<&RateKeys>,
    alias: Option<&(Arc<str>, String)>,
) -> SubjectLimits {
    let mut limits = SubjectLimits::default();
    if let Some(b) = budget {
        limits.set(LimitKind::BudgetHourly, b.hourly);
        limits.set(LimitKind::BudgetDaily, b.daily);
        limits.set(LimitKind::BudgetMonthly, b.monthly);
    }
    if let Some(r) = rate {
        limits.set(LimitKind::RequestsPerSecond, r.requests_per_second);
        limits.set(LimitKind::RequestsPerMinute, r.requests_per_minute);
        limits.set(LimitKind::RequestsPerHour, r.requests_per_hour);
        limits.set(LimitKind::TokensPerMinute, r.tokens_per_minute);
        limits.set(LimitKind::TokensPerHour, r.tokens_per_hour);
        limits.set_max_concurrent(r.max_concurrent);
    }
    limits.set_alias(alias.map(|(a, _)| Arc::clone(a)));
    limits
}
