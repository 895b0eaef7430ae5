//! Calendar budgets through limitsd, across a real local midnight: the
//! process runs under libfaketime (an `LD_PRELOAD` library that starts its
//! wall clock at a chosen instant, which then runs at the real rate), a
//! few seconds before midnight in New York on the night clocks spring
//! forward. scripts/test installs it (Debian's `faketime`).

mod common;

use std::path::Path;

use common::*;
use limits_server::pb;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// 2026-03-08T05:00:00Z: midnight in New York, starting the 23-hour day.
const MIDNIGHT: i64 = 1_772_946_000;
/// 2026-03-09T04:00:00Z: the next midnight there (EDT).
const NEXT_MIDNIGHT: i64 = 1_773_028_800;

const CONFIG: &str = r#"
limits:
  budgets:
    period: calendar
    timezone: America/New_York
    by_api_key:
      "cal-key": { daily: 10.00, weekly: 100.00, hourly: 1000.00 }
"#;

fn daily(statuses: &[pb::LimitStatus]) -> &pb::LimitStatus {
    statuses
        .iter()
        .find(|s| s.kind == pb::LimitKind::BudgetDaily as i32)
        .expect("a daily status")
}

#[tokio::test]
async fn a_daily_budget_resets_at_local_midnight() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install faketime (scripts/test does)"
    );
    // 23:59:45 on Saturday, March 7th, in New York.
    let d = Limitsd::start_with(
        CONFIG,
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME", "@2026-03-08 04:59:45"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ("TZ", "UTC"),
        ],
    );
    let mut c = d.client().await;
    c.record_usage(record(vec![key("cal-key")], 10.0))
        .await
        .unwrap();

    let denied = c
        .check_limits(check(vec![key("cal-key")], 1.0))
        .await
        .unwrap()
        .into_inner();
    assert!(!denied.allowed, "the day's $10 is spent: {denied:?}");
    let status = daily(&denied.statuses);
    assert_eq!(status.period, pb::BudgetPeriod::Calendar as i32);
    assert_eq!(status.reset_at.as_ref().map(|t| t.seconds), Some(MIDNIGHT));
    assert!(status.exceeded);
    let retry = denied
        .retry_after
        .expect("a calendar budget clears at midnight");
    assert!(
        retry.seconds <= 15,
        "retry at midnight, within 15 s: {retry:?}"
    );
    assert_eq!(
        denied.headers.get("X-Budget-Reset").map(String::as_str),
        Some(MIDNIGHT.to_string().as_str())
    );
    // The hourly budget rolls.
    let hourly = denied
        .statuses
        .iter()
        .find(|s| s.kind == pb::LimitKind::BudgetHourly as i32)
        .unwrap();
    assert_eq!(hourly.period, pb::BudgetPeriod::Rolling as i32);

    // Midnight passes: the new day's budget is whole, the week's still
    // holds the $10, and the day ends 23 hours later.
    let allowed = eventually("the budget to reset at midnight", || {
        let mut c = c.clone();
        async move {
            let r = c
                .check_limits(check(vec![key("cal-key")], 10.0))
                .await
                .unwrap()
                .into_inner();
            r.allowed.then_some(r)
        }
    })
    .await;
    let status = daily(&allowed.statuses);
    assert_eq!(status.used, 0.0);
    assert_eq!(
        status.reset_at.as_ref().map(|t| t.seconds),
        Some(NEXT_MIDNIGHT)
    );
    let weekly = allowed
        .statuses
        .iter()
        .find(|s| s.kind == pb::LimitKind::BudgetWeekly as i32)
        .expect("a weekly status");
    assert_eq!(weekly.used, 10.0, "the week began on Monday");
    assert_eq!(weekly.period, pb::BudgetPeriod::Calendar as i32);
}
