//! Calendar budgets: spend resets exactly at the period's boundary in the
//! configured time zone, across daylight-saving changes and month ends, and
//! no period ever admits more than its budget.

mod common;

use std::sync::Arc;

use common::{Group, limits, usd};
use limits_core::{Calendar, LimitKind, Nanos, Period, SubjectLimits, undo};
use proptest::prelude::*;

fn at(s: &str) -> Nanos {
    let ts: jiff::Timestamp = s.parse().expect("an RFC 3339 instant");
    Nanos(u64::try_from(ts.as_nanosecond()).expect("after 1970"))
}

fn calendar(zone: &str, week_start: u8, anchor: u8) -> Arc<Calendar> {
    Arc::new(Calendar::new(zone, week_start, anchor).expect("a valid calendar"))
}

fn on(cal: &Arc<Calendar>, pairs: &[(LimitKind, u64)]) -> SubjectLimits {
    limits(pairs).with_calendar(cal.clone())
}

#[test]
fn a_daily_budget_resets_at_local_midnight_and_not_a_nanosecond_before() {
    let cal = calendar("America/New_York", 0, 1);
    let mut g = Group::one(on(&cal, &[(LimitKind::BudgetDaily, usd(10.0).0)]));
    // 23:00 local on 2026-03-07 (EST, UTC-5).
    let spend = at("2026-03-08T04:00:00Z");
    g.record(usd(10.0).0, 0, spend);
    let midnight = at("2026-03-08T05:00:00Z");
    let before = Nanos(midnight.0 - 1);
    let out = g.check(usd(0.01).0, 0, before);
    assert!(!out.allowed());
    let denial = out.denial().expect("denied");
    assert_eq!(denial.kind, LimitKind::CalendarDaily);
    assert_eq!(denial.kind.public(), LimitKind::BudgetDaily);
    // Retry exactly at the boundary.
    assert_eq!(out.retry_after(), Some(Nanos(1)));
    assert_eq!(out.statuses[0].reset_at, Some(midnight));
    // At midnight the day is new and the budget is whole again.
    let out = g.check(usd(10.0).0, 0, midnight);
    assert!(out.allowed(), "{out:?}");
    assert_eq!(out.statuses[0].used, 0);
    // The next reset is the following midnight: a 23-hour day (spring forward).
    assert_eq!(out.statuses[0].reset_at, Some(at("2026-03-09T04:00:00Z")));
}

#[test]
fn an_empty_calendar_budget_still_reports_the_next_boundary() {
    let cal = calendar("Europe/Paris", 0, 1);
    let mut g = Group::one(on(&cal, &[(LimitKind::BudgetMonthly, usd(100.0).0)]));
    let out = g.check(0, 0, at("2026-10-15T12:00:00Z"));
    assert_eq!(out.statuses[0].kind, LimitKind::CalendarMonthly);
    // November 1st, 00:00 CET (UTC+1 after October's change).
    assert_eq!(out.statuses[0].reset_at, Some(at("2026-10-31T23:00:00Z")));
}

#[test]
fn weekly_and_monthly_budgets_keep_their_own_periods() {
    // Weeks from Sunday, months from the 31st (clamped to short months).
    let cal = calendar("UTC", 6, 31);
    let mut g = Group::one(on(
        &cal,
        &[
            (LimitKind::BudgetWeekly, usd(6.0).0),
            (LimitKind::BudgetMonthly, usd(8.0).0),
            (LimitKind::BudgetHourly, usd(100.0).0),
        ],
    ));
    // Saturday 2027-02-27: the week began Sunday the 21st; the month on
    // January 31st and ends on February 28th.
    g.record(usd(5.0).0, 0, at("2027-02-27T10:00:00Z"));
    let out = g.check(usd(1.5).0, 0, at("2027-02-27T23:00:00Z"));
    assert_eq!(
        out.denial().map(|d| d.kind),
        Some(LimitKind::CalendarWeekly)
    );
    // Sunday: a new week, the same month.
    let sunday = at("2027-02-28T00:00:00Z");
    assert_eq!(
        cal.period(Period::Week, sunday),
        (sunday, at("2027-03-07T00:00:00Z"))
    );
    let out = g.check(usd(3.0).0, 0, at("2027-02-28T00:00:00Z"));
    // The month changed too: February's period starts on the 28th.
    assert!(out.allowed(), "{out:?}");
    g.record(usd(3.0).0, 0, at("2027-02-28T01:00:00Z"));
    let out = g.check(usd(5.5).0, 0, at("2027-03-01T00:00:00Z"));
    assert_eq!(
        out.denial().map(|d| d.kind),
        Some(LimitKind::CalendarMonthly),
        "both deny; the month, from Feb 28, frees last"
    );
    // The hourly budget stays rolling.
    let hourly = out
        .statuses
        .iter()
        .find(|s| s.kind.public() == LimitKind::BudgetHourly)
        .expect("an hourly status");
    assert_eq!(hourly.kind, LimitKind::BudgetHourly);
}

#[test]
fn a_rolling_budget_turned_calendar_starts_its_count_afresh() {
    let rolling = limits(&[(LimitKind::BudgetDaily, usd(10.0).0)]);
    let mut g = Group::one(rolling.clone());
    let t = at("2026-06-10T12:00:00Z");
    g.record(usd(6.0).0, 0, t);
    g.limits[0] = rolling.with_calendar(calendar("UTC", 0, 1));
    let out = g.check(usd(10.0).0, 0, t);
    assert!(out.allowed(), "the calendar window starts empty: {out:?}");
    g.record(usd(2.0).0, 0, t);
    // And back: the rolling window still holds its $6 until it ages out,
    // and has counted the $2 too; the calendar's window counts nothing
    // new while the budgets roll.
    g.limits[0] = limits(&[(LimitKind::BudgetDaily, usd(10.0).0)]);
    assert_eq!(g.used(0, LimitKind::BudgetDaily, t), usd(8.0).0);
    let later = t.saturating_add(Nanos::from_secs(60));
    g.record(usd(1.0).0, 0, later);
    let calendar_window = g.states[0]
        .windows()
        .find(|(k, _)| *k == LimitKind::CalendarDaily)
        .map(|(_, w)| w.total());
    assert_eq!(calendar_window, Some(usd(2.0).0));
}

#[test]
fn undoing_a_record_takes_back_exactly_its_period_s_amount() {
    let cal = calendar("Asia/Kolkata", 0, 1);
    let lim = on(&cal, &[(LimitKind::BudgetDaily, usd(10.0).0)]);
    let mut g = Group::one(lim.clone());
    let t = at("2026-06-10T12:00:00Z");
    g.record(usd(2.0).0, 0, t);
    let before = g.states[0].clone();
    let req = limits_core::RecordRequest {
        reservation: None,
        cost: usd(3.0),
        tokens: 0,
        ..Default::default()
    };
    let out = g.record(req.cost.0, 0, t);
    undo::undo_record(
        &mut [&mut g.states[0]],
        &[&lim],
        &req,
        &out,
        t,
        Nanos(t.0 + 1_000),
    );
    assert_eq!(g.states[0], before);
    // Once the period is over, an undo leaves the next period alone.
    let out = g.record(req.cost.0, 0, t);
    let next_day = at("2026-06-11T12:00:00Z");
    g.record(usd(1.0).0, 0, next_day);
    undo::undo_record(&mut [&mut g.states[0]], &[&lim], &req, &out, t, next_day);
    assert_eq!(g.used(0, LimitKind::CalendarDaily, next_day), usd(1.0).0);
}

const ZONES: [&str; 4] = [
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the spend and its timing, across daylight-saving changes
    /// and month ends: no calendar period admits more than its budget, and
    /// what a period counts is exactly what was charged within it.
    #[test]
    fn no_calendar_period_admits_more_than_its_budget(
        zone in 0usize..ZONES.len(),
        kind in prop_oneof![
            Just(LimitKind::BudgetDaily),
            Just(LimitKind::BudgetWeekly),
            Just(LimitKind::BudgetMonthly),
        ],
        week_start in 0u8..7,
        anchor in 1u8..=31,
        steps in proptest::collection::vec((0u64..40 * 3_600, 1u64..400), 1..120),
    ) {
        let cal = calendar(ZONES[zone], week_start, anchor);
        let limit = 1_000u64;
        let mut g = Group::one(on(&cal, &[(kind, limit)]));
        let slot = kind.calendar().expect("a calendar kind");
        let period = slot.period().expect("a calendar slot");
        // Around 2026's autumn changes in both hemispheres.
        let mut now = at("2026-09-25T00:00:00Z");
        let mut admitted: std::collections::BTreeMap<u64, u64> = Default::default();
        for (gap_secs, cost) in steps {
            now = now.saturating_add(Nanos::from_secs(gap_secs * 3));
            let (start, end) = cal.period(period, now);
            prop_assert!(start <= now && now < end);
            let out = g.check(cost, 0, now);
            let spent = admitted.get(&end.0).copied().unwrap_or(0);
            prop_assert_eq!(out.allowed(), spent + cost <= limit, "at {:?}", now);
            prop_assert_eq!(out.statuses[0].reset_at, Some(end));
            if out.allowed() {
                g.record(cost, 0, now);
                *admitted.entry(end.0).or_default() += cost;
            }
            // Just before the boundary the period holds all of its spend;
            // at the boundary, none of it.
            let held = admitted.get(&end.0).copied().unwrap_or(0);
            let mut probe = g.clone();
            prop_assert_eq!(probe.used(0, slot, Nanos(end.0 - 1)), held);
            prop_assert_eq!(probe.used(0, slot, end), 0);
        }
        prop_assert!(admitted.values().all(|&v| v <= limit));
    }
}
