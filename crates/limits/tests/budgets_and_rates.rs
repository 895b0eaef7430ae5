//! Per-id budgets and rate limits: `default` entries, the merge of the two
//! families, the `enabled` switches, combined entries, and every bad value
//! named by its key.

mod common;

use common::*;
use limits::config::parse_str;
use limits_core::{Dimension, LimitKind};

#[test]
fn default_entry_applies_to_unlisted_ids_only() {
    let cfg = parse(FAMILIES);
    let unlisted = cfg.table.resolve(Dimension::ApiKey, "someone-else");
    assert_eq!(unlisted.get(LimitKind::BudgetDaily), Some(usd(10.0)));
    assert_eq!(unlisted.get(LimitKind::RequestsPerSecond), Some(5));
    assert_eq!(unlisted.get(LimitKind::MaxConcurrent), Some(2));
    assert!(!cfg.table.is_listed(Dimension::ApiKey, "someone-else"));
    // The id "default" is the default, not a listed id.
    assert!(!cfg.table.is_listed(Dimension::ApiKey, "default"));
    // A user default does not leak into teams.
    assert_eq!(
        get(&cfg, Dimension::User, "carol", LimitKind::RequestsPerMinute),
        Some(60)
    );
    assert!(cfg.table.resolve(Dimension::Team, "t").is_unlimited());
}

#[test]
fn an_id_listed_in_one_family_takes_the_other_familys_default() {
    let cfg = parse(FAMILIES);
    let budget_only = cfg.table.resolve(Dimension::ApiKey, "budget-only");
    assert_eq!(budget_only.get(LimitKind::BudgetDaily), Some(usd(50.0)));
    assert_eq!(budget_only.get(LimitKind::RequestsPerSecond), Some(5));
    assert_eq!(budget_only.alias(), Some("spender"));

    let rate_only = cfg.table.resolve(Dimension::ApiKey, "rate-only");
    assert_eq!(rate_only.get(LimitKind::BudgetDaily), Some(usd(10.0)));
    assert_eq!(rate_only.get(LimitKind::RequestsPerSecond), Some(20));
    // max_concurrent is not in rate-only's own entry, and the entry replaces
    // the rate default as a whole.
    assert_eq!(rate_only.get(LimitKind::MaxConcurrent), None);
    assert_eq!(rate_only.alias(), Some("fast"));

    let both = cfg.table.resolve(Dimension::ApiKey, "both");
    assert_eq!(both.get(LimitKind::BudgetDaily), Some(usd(70.0)));
    assert_eq!(both.get(LimitKind::RequestsPerSecond), Some(30));
    assert_eq!(both.alias(), Some("twice"));
}

#[test]
fn an_empty_entry_exempts_an_id_from_its_familys_default() {
    let cfg = parse(FAMILIES);
    let exempt = cfg.table.resolve(Dimension::ApiKey, "exempt");
    assert_eq!(exempt.get(LimitKind::BudgetDaily), None);
    assert_eq!(exempt.get(LimitKind::RequestsPerSecond), Some(5));
}

#[test]
fn conflicting_aliases_are_rejected() {
    assert_rejects(
        "budgets:\n  by_user:\n    u: { daily: 1, alias: a }\nrate_limits:\n  by_user:\n    u: { requests_per_second: 1, alias: b }\n",
        "limits.rate_limits.by_user.u.alias",
        "conflicts with alias \"a\" set by limits.budgets.by_user.u.alias",
    );
}

#[test]
fn budgets_disabled_removes_every_budget_limit() {
    let yaml = FAMILIES.replace("  budgets:\n", "  budgets:\n    enabled: false\n");
    let cfg = parse(&yaml);
    for id in ["someone-else", "budget-only", "rate-only", "both"] {
        let limits = cfg.table.resolve(Dimension::ApiKey, id);
        assert!(!limits.has_budget(), "{id} has no budget");
    }
    assert_eq!(
        get(
            &cfg,
            Dimension::ApiKey,
            "both",
            LimitKind::RequestsPerSecond
        ),
        Some(30)
    );
    // Listed only under the disabled family: falls to the rate default.
    assert!(!cfg.table.is_listed(Dimension::ApiKey, "budget-only"));
    assert_eq!(
        get(
            &cfg,
            Dimension::ApiKey,
            "budget-only",
            LimitKind::RequestsPerSecond
        ),
        Some(5)
    );
}

#[test]
fn rate_limits_disabled_removes_every_rate_and_concurrency_limit() {
    let yaml = FAMILIES.replace("  rate_limits:\n", "  rate_limits:\n    enabled: false\n");
    let cfg = parse(&yaml);
    for id in ["someone-else", "budget-only", "rate-only", "both"] {
        let limits = cfg.table.resolve(Dimension::ApiKey, id);
        assert!(
            limits.all().all(|(kind, _)| kind.is_budget()),
            "{id} has budget limits only"
        );
    }
    assert!(cfg.table.resolve(Dimension::User, "carol").is_unlimited());
    assert_eq!(
        get(&cfg, Dimension::ApiKey, "rate-only", LimitKind::BudgetDaily),
        Some(usd(10.0))
    );
}

#[test]
fn combined_entries_set_both_families() {
    let cfg = parse(
        "by_user:\n  default: { daily: 1, requests_per_minute: 10 }\n  alice: { requests_per_minute: 100, alias: al }\n",
    );
    let alice = cfg.table.resolve(Dimension::User, "alice");
    assert_eq!(alice.get(LimitKind::RequestsPerMinute), Some(100));
    // A combined entry sets all of the id's limits: no budget default.
    assert_eq!(alice.get(LimitKind::BudgetDaily), None);
    assert_eq!(alice.alias(), Some("al"));
    let bob = cfg.table.resolve(Dimension::User, "bob");
    assert_eq!(bob.get(LimitKind::BudgetDaily), Some(usd(1.0)));
    assert_eq!(bob.get(LimitKind::RequestsPerMinute), Some(10));

    assert_rejects(
        "by_user:\n  alice: { daily: 1 }\nbudgets:\n  by_user:\n    alice: { daily: 2 }\n",
        "limits.by_user.alice",
        "also listed under limits.budgets.by_user",
    );
}

#[test]
fn bad_budgets_are_rejected() {
    let budget = |v: &str| {
        format!("limits:\n  budgets:\n    by_api_key:\n      prod:\n        daily: {v}\n")
    };
    let key = "limits.budgets.by_api_key.prod.daily";
    assert_rejects(&budget("-5"), key, "must not be negative");
    assert_rejects(&budget("0"), key, "must be greater than 0");
    assert_rejects(&budget("0.0"), key, "must be greater than 0");
    assert_rejects(&budget(".nan"), key, "must be a finite number");
    assert_rejects(&budget(".inf"), key, "must be a finite number");
    assert_rejects(&budget("1e10"), key, "must be at most");
    assert_rejects(&budget("lots"), key, "expected a number");
    assert_eq!(
        parse_str(&budget("0")).unwrap_err().to_string(),
        "limits.budgets.by_api_key.prod.daily: must be greater than 0"
    );
    assert_rejects(
        "by_team:\n  eng:\n    monthly: -1\n",
        "limits.by_team.eng.monthly",
        "must not be negative",
    );
    assert_rejects(
        "budgets:\n  by_user:\n    u:\n      alias: \"\"\n",
        "limits.budgets.by_user.u.alias",
        "must not be empty",
    );
}

#[test]
fn bad_alert_thresholds_are_rejected() {
    let key = "limits.budgets.alert_threshold";
    for bad in ["1.5", "0", "-0.1", ".nan"] {
        assert_rejects(
            &format!("budgets:\n  alert_threshold: {bad}\n"),
            key,
            "greater than 0 and at most 1",
        );
    }
    assert_rejects(
        "budgets:\n  alert_threshold: high\n",
        key,
        "expected a number",
    );
    assert_eq!(
        parse("budgets:\n  alert_threshold: 1\n")
            .policy
            .alert_threshold_ppm,
        Some(1_000_000)
    );
}

#[test]
fn bad_rate_limits_are_rejected() {
    let rate =
        |field: &str, v: &str| format!("rate_limits:\n  by_user:\n    bob:\n      {field}: {v}\n");
    for field in [
        "requests_per_second",
        "requests_per_minute",
        "requests_per_hour",
        "tokens_per_minute",
        "tokens_per_hour",
        "max_concurrent",
    ] {
        let key = format!("limits.rate_limits.by_user.bob.{field}");
        assert_rejects(&rate(field, "0"), &key, "must be greater than 0");
        assert_rejects(&rate(field, "-1"), &key, "expected a whole number");
        assert_rejects(&rate(field, "1.5"), &key, "expected a whole number");
    }
    assert_rejects(
        &rate("max_concurrent", "5000000000"),
        "limits.rate_limits.by_user.bob.max_concurrent",
        "from 0 to 4294967295",
    );
    assert_rejects(
        "rate_limits:\n  lease_ttl: 0s\n",
        "limits.rate_limits.lease_ttl",
        "must be greater than 0",
    );
}

/// `period: calendar` in the section applies to every entry that does not
/// say otherwise; an entry may choose its own period, zone, week start and
/// anchor day; entries with the same calendar share one.
#[test]
fn calendar_periods_come_from_the_section_or_the_entry() {
    let cfg = parse(
        r#"
limits:
  budgets:
    period: calendar
    timezone: America/New_York
    week_start: sunday
    by_team:
      eng: { daily: 100, weekly: 500 }
      ops: { monthly: 1000, timezone: Asia/Tokyo, month_anchor_day: 15 }
      research: { daily: 50, period: rolling }
      default: { monthly: 10 }
  by_org:
    acme: { monthly: 30000, period: calendar, timezone: UTC }
"#,
    );
    let eng = cfg.table.resolve(Dimension::Team, "eng");
    let cal = eng.calendar().expect("eng follows the section's calendar");
    assert_eq!(
        (cal.zone(), cal.week_start(), cal.anchor_day()),
        ("America/New_York", 6, 1)
    );
    assert_eq!(eng.get(LimitKind::BudgetWeekly), Some(usd(500.0)));
    assert_eq!(eng.slot(LimitKind::BudgetDaily), LimitKind::CalendarDaily);
    let ops = cfg.table.resolve(Dimension::Team, "ops");
    let ops_cal = ops.calendar().expect("a calendar");
    assert_eq!(
        (ops_cal.zone(), ops_cal.week_start(), ops_cal.anchor_day()),
        ("Asia/Tokyo", 6, 15)
    );
    let research = cfg.table.resolve(Dimension::Team, "research");
    assert!(research.calendar().is_none(), "its own period wins");
    assert_eq!(
        research.slot(LimitKind::BudgetDaily),
        LimitKind::BudgetDaily
    );
    let unlisted = cfg.table.resolve(Dimension::Team, "someone");
    assert!(
        std::sync::Arc::ptr_eq(unlisted.calendar().unwrap(), cal),
        "one calendar per distinct setting"
    );
    let acme = cfg.table.resolve(Dimension::Org, "acme");
    assert_eq!(acme.calendar().unwrap().zone(), "UTC");
    // Rolling stays the default.
    let plain = parse("limits:\n  budgets:\n    by_user:\n      u: { daily: 1 }\n");
    assert!(
        plain
            .table
            .resolve(Dimension::User, "u")
            .calendar()
            .is_none()
    );
}

#[test]
fn bad_calendar_settings_are_rejected_naming_the_key() {
    assert_rejects(
        "budgets:\n  period: monthly\n",
        "limits.budgets.period",
        "expected one of: rolling, calendar",
    );
    assert_rejects(
        "budgets:\n  timezone: Mars/Olympus\n",
        "limits.budgets.timezone",
        "unknown time zone",
    );
    assert_rejects(
        "budgets:\n  week_start: someday\n",
        "limits.budgets.week_start",
        "expected one of: monday",
    );
    assert_rejects(
        "budgets:\n  month_anchor_day: 32\n",
        "limits.budgets.month_anchor_day",
        "must be 1 to 31",
    );
    assert_rejects(
        "budgets:\n  by_user:\n    u: { daily: 1, timezone: Europe/Paris }\n",
        "limits.budgets.by_user.u.timezone",
        "applies only to calendar budgets",
    );
    assert_rejects(
        "by_team:\n  t: { daily: 1, period: calendar, timezone: Nowhere/Town }\n",
        "limits.by_team.t.timezone",
        "unknown time zone",
    );
    assert_rejects(
        "budgets:\n  period: calendar\n  by_user:\n    u: { daily: 1, month_anchor_day: 0 }\n",
        "limits.budgets.by_user.u.month_anchor_day",
        "must be 1 to 31",
    );
}
