//! Sums of many small costs are exact: micro-dollar amounts added through the
//! real window code, and recorded through the engine, add up to the cent.

mod common;

use common::{Group, T0, limits, usd};
use limits_core::{LimitKind, NanoUsd, Nanos, RollingWindow};

const MONTHLY: LimitKind = LimitKind::BudgetMonthly;

#[test]
fn ten_million_micro_dollars_in_a_monthly_window_sum_to_exactly_ten_dollars() {
    let one = NanoUsd::try_from_usd(0.000001).expect("valid");
    assert_eq!(one, NanoUsd(1_000));
    let length = MONTHLY.window().expect("windowed");
    // Ten million additions spread over 29 days, so they land in many
    // buckets and none has expired when the total is read.
    let n = 10_000_000u64;
    let step = Nanos(29 * Nanos::DAY.0 / n);
    let mut w = RollingWindow::new();
    let mut now = T0;
    for _ in 0..n {
        w.add(length, now, one.0);
        now = now.saturating_add(step);
    }
    w.expire(length, now);
    assert_eq!(w.total(), 10_000_000_000);
    assert_eq!(NanoUsd(w.total()), usd(10.0));
    assert_eq!(NanoUsd(w.total()).to_string(), "10.00");
    // The running total agrees with the buckets it summarises.
    let buckets: u64 = w.buckets().iter().map(|&(_, a)| a).sum();
    assert_eq!(buckets, w.total());
    assert!(w.buckets().len() as u64 <= limits_core::BUCKETS);
}

#[test]
fn a_million_micro_dollar_records_through_the_engine_are_exact() {
    let mut g = Group::one(limits(&[
        (LimitKind::BudgetDaily, usd(1_000.0).0),
        (MONTHLY, usd(10_000.0).0),
    ]));
    let one = NanoUsd::try_from_usd(0.000001).expect("valid");
    // One record every 50 ms: a million of them span under 14 hours, inside
    // both windows. (Ten million would take over 30 s in a debug build; the
    // test above runs that many additions through the window itself.)
    let mut now = T0;
    for _ in 0..1_000_000 {
        g.record(one.0, 0, now);
        now = now.saturating_add(Nanos::from_millis(50));
    }
    let expected = usd(1.0);
    assert_eq!(expected, NanoUsd(1_000_000_000));
    for kind in [LimitKind::BudgetDaily, MONTHLY] {
        assert_eq!(NanoUsd(g.used(0, kind, now)), expected, "{kind:?}");
    }
    assert_eq!(
        NanoUsd(g.used(0, MONTHLY, now)).to_string(),
        "1.00",
        "the budget headers show whole cents"
    );
}
