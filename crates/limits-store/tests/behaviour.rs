//! One behaviour suite for every store backend: each test is a generic async
//! function over `Store`, instantiated once per backend by
//! `for_every_backend!`, so a backend proves itself by passing all of them.
//! Time is a fake `now` moved forward by hand; nothing sleeps.

mod common;

use limits_core::{
    Action, Adjustment, Attempt, Dimension, EnforcementMode, Hold, LeaseSlot, LimitKind,
    LimitTable, ModelScopes, NanoUsd, Nanos, Policy, SubjectLimits, Thresholds,
};
use limits_store::{
    AdjustOp, Call, CheckOp, RecordOp, RecordSwap, Store, StoreError, Swapped, SweepStats,
};

use common::{Req, T0, at, key, limits, org, team, usd, used, user};

/// Room for every subject a test makes, unless it tests the bound.
const ROOMY: usize = 1_000;

/// One `#[tokio::test]` per backend per behaviour. Each behaviour takes a
/// constructor of a fresh, empty store with the given `max_entries`.
macro_rules! for_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(limits_store::MemoryStore::new).await;
                }
            )*
        }
        mod sled {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("a temporary directory");
                    super::$name(|max| super::common::open_sled(dir.path(), max, super::T0)).await;
                }
            )*
        }
        // Redis decides with its own clock; these stores use the suite's
        // fake `now` instead (`with_fake_clock`), each on a fresh key prefix
        // of a server of the test's own.
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    let server = super::common::RedisServer::start();
                    super::$name(|max| server.store(max)).await;
                }
            )*
        }
    };
}

/// The same on Redis with subjects spread over eight hash tags (as on a
/// cluster), so that an operation over several subjects commits in several
/// slots. Bounds are per tag there (`max_entries / shards`), so the bound's
/// own test is in `redis_store.rs`.
macro_rules! on_spread_redis {
    ($($name:ident),* $(,)?) => {
        mod redis_spread {
            $(
                #[tokio::test]
                async fn $name() {
                    let server = super::common::RedisServer::start();
                    super::$name(|max| server.spread_store(max, 8)).await;
                }
            )*
        }
    };
}

on_spread_redis!(
    request_rate_limits_allow_then_deny,
    streamed_records_charge_progress_extend_and_stop,
    budgets_allow_then_deny,
    calendar_budgets_reset_at_the_boundary,
    input_and_output_tokens_are_held_and_charged_apart,
    model_scopes_decide_with_their_subject_and_downgrade_by_scope,
    alert_thresholds_fire_once_per_crossing,
    token_limits_allow_then_deny,
    several_subjects_move_all_or_nothing,
    four_subjects_deny_on_the_org_and_move_nothing_else,
    reservations_hold_settle_and_expire,
    leases_acquire_release_and_expire,
    usage_shows_windows_holds_and_leases,
    sweep_drops_idle_subjects_and_keeps_live_ones,
    hits_charge_many_subjects_all_or_nothing,
    adjustments_credit_debit_and_reset_exactly,
    records_change_only_as_expected_and_keep_their_audit,
    the_audit_trail_keeps_the_newest,
);

for_every_backend!(
    request_rate_limits_allow_then_deny,
    streamed_records_charge_progress_extend_and_stop,
    budgets_allow_then_deny,
    calendar_budgets_reset_at_the_boundary,
    input_and_output_tokens_are_held_and_charged_apart,
    model_scopes_decide_with_their_subject_and_downgrade_by_scope,
    alert_thresholds_fire_once_per_crossing,
    token_limits_allow_then_deny,
    several_subjects_move_all_or_nothing,
    four_subjects_deny_on_the_org_and_move_nothing_else,
    reservations_hold_settle_and_expire,
    leases_acquire_release_and_expire,
    usage_shows_windows_holds_and_leases,
    sweep_drops_idle_subjects_and_keeps_live_ones,
    max_entries_refuses_new_subjects_and_changes_nothing,
    hits_charge_many_subjects_all_or_nothing,
    adjustments_credit_debit_and_reset_exactly,
    records_change_only_as_expected_and_keep_their_audit,
    the_audit_trail_keeps_the_newest,
);

/// When an amount added at `start` leaves a window of `kind`: the end of its
/// bucket plus the window's length.
fn rolled(kind: LimitKind, start: Nanos) -> Nanos {
    let length = kind.window().expect("a windowed kind");
    let width = length.0 / limits_core::BUCKETS;
    Nanos((start.0 / width + 1) * width + length.0)
}

async fn request_rate_limits_allow_then_deny<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    for kind in [
        LimitKind::RequestsPerSecond,
        LimitKind::RequestsPerMinute,
        LimitKind::RequestsPerHour,
    ] {
        let l = limits(&[(kind, 2)]);
        let r = Req::new(&[(key(kind.name()), &l)]);
        for _ in 0..2 {
            assert!(r.check(&store, 0, 0, None, T0).await.unwrap().allowed());
        }
        let denied = r.check(&store, 0, 0, None, T0).await.unwrap();
        assert!(
            !denied.allowed(),
            "{kind:?}: the third request is over the limit"
        );
        assert_eq!(denied.denial().unwrap().kind, kind);
        assert_eq!(denied.reservation(), None);
        let retry = denied.retry_after().expect("a rate limit clears with time");
        assert_eq!(T0.saturating_add(retry), rolled(kind, T0));
        let later = r.check(&store, 0, 0, None, rolled(kind, T0)).await.unwrap();
        assert!(
            later.allowed(),
            "{kind:?}: allowed again once the window rolled"
        );
    }
}

async fn budgets_allow_then_deny<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    for kind in [
        LimitKind::BudgetHourly,
        LimitKind::BudgetDaily,
        LimitKind::BudgetWeekly,
        LimitKind::BudgetMonthly,
    ] {
        let l = limits(&[(kind, usd(10))]);
        let s = key(kind.name());
        let r = Req::new(&[(s.clone(), &l)]);
        // An unreserved check holds nothing.
        assert!(
            r.check(&store, usd(4), 0, None, T0)
                .await
                .unwrap()
                .allowed()
        );
        assert_eq!(used(&store, &s, &l, kind, T0).await, 0);
        r.record(&store, None, usd(8), 0, T0).await.unwrap();
        assert_eq!(used(&store, &s, &l, kind, T0).await, usd(8));

        let denied = r.check(&store, usd(3), 0, None, T0).await.unwrap();
        assert!(!denied.allowed(), "{kind:?}: 8 + 3 > 10");
        assert_eq!(denied.denial().unwrap().kind, kind);
        assert_eq!(
            T0.saturating_add(denied.retry_after().unwrap()),
            rolled(kind, T0)
        );
        assert!(
            r.check(&store, usd(2), 0, None, T0)
                .await
                .unwrap()
                .allowed()
        );
        let never = r.check(&store, usd(11), 0, None, T0).await.unwrap();
        assert!(!never.allowed());
        assert_eq!(never.retry_after(), None, "more than the limit never fits");

        let later = rolled(kind, T0);
        assert!(
            r.check(&store, usd(3), 0, None, later)
                .await
                .unwrap()
                .allowed()
        );
        assert_eq!(used(&store, &s, &l, kind, later).await, 0);
    }
}

/// Calendar budgets: spend counts until the period's end in its time zone,
/// a denial retries exactly then, and at the boundary the budget is whole.
async fn calendar_budgets_reset_at_the_boundary<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    // Weeks from Sunday, months from the 15th, in New York.
    let calendar = std::sync::Arc::new(
        limits_core::Calendar::new("America/New_York", 6, 15).expect("a calendar"),
    );
    for kind in [
        LimitKind::BudgetDaily,
        LimitKind::BudgetWeekly,
        LimitKind::BudgetMonthly,
    ] {
        let slot = kind.calendar().expect("a calendar kind");
        let l = limits(&[(kind, usd(10)), (LimitKind::BudgetHourly, usd(100))])
            .with_calendar(calendar.clone());
        let s = team(kind.name());
        let r = Req::new(&[(s.clone(), &l)]);
        let (_, end) = calendar.period(slot.period().expect("a period"), T0);
        r.record(&store, None, usd(8), 0, T0).await.unwrap();
        assert_eq!(used(&store, &s, &l, slot, T0).await, usd(8));
        let denied = r.check(&store, usd(3), 0, None, T0).await.unwrap();
        assert_eq!(denied.denial().map(|d| d.kind), Some(slot), "{kind:?}");
        assert_eq!(T0.saturating_add(denied.retry_after().unwrap()), end);
        let status = denied.statuses.iter().find(|st| st.kind == slot).unwrap();
        assert_eq!(status.reset_at, Some(end));
        // The hourly budget keeps rolling beside it.
        let hourly = denied
            .statuses
            .iter()
            .find(|st| st.kind == LimitKind::BudgetHourly)
            .unwrap();
        assert_eq!(hourly.used, usd(8));
        let just_before = Nanos(end.0 - 1);
        assert!(
            !r.check(&store, usd(3), 0, None, just_before)
                .await
                .unwrap()
                .allowed()
        );
        let fresh = r.check(&store, usd(10), 0, None, end).await.unwrap();
        assert!(fresh.allowed(), "{kind:?}: a new period is whole");
        assert_eq!(used(&store, &s, &l, slot, end).await, 0);
    }
}

/// Input and output token limits: a reserved check holds each part of its
/// estimate against its own limits, the record charges what each part was
/// (here more output than estimated), and the hold goes.
async fn input_and_output_tokens_are_held_and_charged_apart<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    let l = limits(&[
        (LimitKind::InputTokensPerMinute, 1_000),
        (LimitKind::OutputTokensPerHour, 500),
        (LimitKind::TokensPerMinute, 10_000),
    ]);
    let s = key("split");
    let r = Req::new(&[(s.clone(), &l)]);
    let held = r
        .check_split(&store, 0, (1_200, 800, 400), Some(at(60)), T0)
        .await
        .unwrap();
    assert!(held.allowed());
    assert_eq!(
        used(&store, &s, &l, LimitKind::InputTokensPerMinute, T0).await,
        800
    );
    assert_eq!(
        used(&store, &s, &l, LimitKind::OutputTokensPerHour, T0).await,
        400
    );
    let denied = r
        .check_split(&store, 0, (350, 300, 50), None, T0)
        .await
        .unwrap();
    assert_eq!(
        denied.denial().map(|d| d.kind),
        Some(LimitKind::InputTokensPerMinute)
    );
    let settled = r
        .record_split(&store, held.reservation(), 0, (1_300, 700, 600), at(1))
        .await
        .unwrap();
    assert!(!settled.duplicate);
    assert_eq!(
        used(&store, &s, &l, LimitKind::InputTokensPerMinute, at(1)).await,
        700
    );
    assert_eq!(
        used(&store, &s, &l, LimitKind::OutputTokensPerHour, at(1)).await,
        600
    );
    assert_eq!(
        used(&store, &s, &l, LimitKind::TokensPerMinute, at(1)).await,
        1_300
    );
    let over = r
        .check_split(&store, 0, (1, 0, 1), None, at(1))
        .await
        .unwrap();
    assert_eq!(
        over.denial().map(|d| d.kind),
        Some(LimitKind::OutputTokensPerHour),
        "the output limit is over: usage is never refused"
    );
    // A minute later the input window is empty; the hour's output is not.
    let later = at(2 + 61);
    assert_eq!(
        used(&store, &s, &l, LimitKind::InputTokensPerMinute, later).await,
        0
    );
    assert_eq!(
        used(&store, &s, &l, LimitKind::OutputTokensPerHour, later).await,
        600
    );
}

/// A model scope is a subject of its own beside its parent: each attempt
/// of a downgrade walk meets the parent and its own model's scope only
/// (the others are in its `skip` mask), all or nothing.
async fn model_scopes_decide_with_their_subject_and_downgrade_by_scope<S: Store>(
    make: impl Fn(usize) -> S,
) {
    let store = make(ROOMY);
    let scope = |daily: u64| limits(&[(LimitKind::BudgetDaily, usd(daily))]);
    let parent = limits(&[(LimitKind::BudgetDaily, usd(10))]).with_scopes(
        ModelScopes::new([
            ("gpt-4*".to_owned(), scope(5)),
            ("gpt-3.5*".to_owned(), scope(8)),
        ])
        .unwrap(),
    );
    let scopes = parent.scopes().unwrap();
    let (big, small) = (
        scopes.get("gpt-4*").unwrap(),
        scopes.get("gpt-3.5*").unwrap(),
    );
    let k = key("scoped");
    let subjects = vec![k.clone(), big.subject(&k), small.subject(&k)];
    let limits_of = [&parent, big.limits(), small.limits()];
    let mut policy = common::policy();
    policy.mode = EnforcementMode::Downgrade;
    let check = |cost: u64, now: Nanos| {
        let attempts = [
            Attempt {
                model: "gpt-4".into(),
                cost: NanoUsd(usd(cost)),
                skip: 0b100,
                ..Attempt::default()
            },
            Attempt {
                model: "gpt-3.5-turbo".into(),
                cost: NanoUsd(usd(cost)),
                skip: 0b010,
                ..Attempt::default()
            },
        ];
        let store = &store;
        let subjects = &subjects;
        let policy = &policy;
        async move {
            store
                .check(Call {
                    subjects,
                    limits: &limits_of,
                    op: CheckOp {
                        attempts: &attempts,
                        reserve_ttl: Some(at(3_600)),
                        tag: 0,
                        policy,
                    },
                    now,
                })
                .await
                .unwrap()
        }
    };
    let spent = |i: usize, now: Nanos| {
        let (subject, lim) = (subjects[i].clone(), limits_of[i]);
        let store = &store;
        async move { used(store, &subject, lim, LimitKind::BudgetDaily, now).await }
    };

    let first = check(4, T0).await;
    assert_eq!((first.attempt, first.action), (0, Action::Allow));
    assert!(first.statuses.iter().all(|s| s.subject != 2));
    assert_eq!(first.statuses.iter().filter(|s| s.subject == 1).count(), 1);
    assert_eq!(
        (spent(0, T0).await, spent(1, T0).await, spent(2, T0).await),
        (usd(4), usd(4), 0)
    );

    // gpt-4* has $1 left: the next $4 runs on gpt-3.5, held there and on
    // the parent, not on gpt-4*.
    let second = check(4, at(1)).await;
    assert_eq!((second.attempt, second.action), (1, Action::Downgrade));
    assert!(second.statuses.iter().all(|s| s.subject != 1));
    assert_eq!(
        (
            spent(0, at(1)).await,
            spent(1, at(1)).await,
            spent(2, at(1)).await
        ),
        (usd(8), usd(4), usd(4))
    );

    // Neither fits now (gpt-4* has $1 left, the parent $2, though
    // gpt-3.5* has $4): denied on the parent, nothing moves.
    let third = check(3, at(2)).await;
    assert!(!third.allowed());
    assert_eq!(third.denial().map(|d| d.subject), Some(0));
    assert_eq!(
        (
            spent(0, at(2)).await,
            spent(1, at(2)).await,
            spent(2, at(2)).await
        ),
        (usd(8), usd(4), usd(4))
    );
}

/// Each alert threshold of a budget window fires once, from the operation
/// that crossed it, whether a hold or a record took it there; the state
/// that remembers it is the store's, so the next operations (on any
/// replica of a shared store) do not fire it again.
async fn alert_thresholds_fire_once_per_crossing<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    let l = limits(&[(LimitKind::BudgetHourly, usd(100))]);
    let k = key("alerted");
    let subjects = [k.clone()];
    let policy = Policy {
        alert_thresholds: Thresholds::new([500_000, 800_000]).unwrap(),
        ..common::policy()
    };
    let check = |cost: u64, reserve: bool, now: Nanos| {
        let (store, subjects, policy, l) = (&store, &subjects, &policy, &l);
        async move {
            let attempts = [Attempt {
                model: "m".into(),
                cost: NanoUsd(usd(cost)),
                ..Attempt::default()
            }];
            store
                .check(Call {
                    subjects,
                    limits: &[l],
                    op: CheckOp {
                        attempts: &attempts,
                        reserve_ttl: reserve.then(|| at(3_600)),
                        tag: 0,
                        policy,
                    },
                    now,
                })
                .await
                .unwrap()
        }
    };
    let record = |reservation: Option<u64>, cost: u64, now: Nanos| {
        let (store, subjects, policy, l) = (&store, &subjects, &policy, &l);
        async move {
            store
                .record(Call {
                    subjects,
                    limits: &[l],
                    op: RecordOp {
                        reservation,
                        cost: NanoUsd(usd(cost)),
                        tokens: 0,
                        input: 0,
                        output: 0,
                        progress: None,
                        sequence: 0,
                        policy,
                    },
                    now,
                })
                .await
                .unwrap()
        }
    };
    let fired = |c: &[limits_core::Crossing]| c.iter().map(|c| c.threshold_ppm).collect::<Vec<_>>();

    // A $55 hold crosses 50 %: reported by that check, once.
    let held = check(55, true, T0).await;
    assert_eq!(fired(&held.crossings), [500_000]);
    assert_eq!(held.crossings[0].used, usd(55));
    assert!(check(0, false, at(1)).await.crossings.is_empty());
    // Settled at $60, then $25 more recorded: 85 % crosses 80 % once.
    let settled = record(held.reservation(), 60, at(2)).await;
    assert!(settled.crossings.is_empty(), "50 % fired already");
    let more = record(None, 25, at(3)).await;
    assert_eq!(fired(&more.crossings), [800_000]);
    assert!(record(None, 1, at(4)).await.crossings.is_empty());
    assert!(check(0, false, at(5)).await.crossings.is_empty());
    // The state says so: both bits, for the hourly window.
    let view = store.usage(&k, &l, at(5)).await.unwrap();
    assert_eq!(view.statuses[0].used, usd(86));
}

async fn token_limits_allow_then_deny<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    for kind in [LimitKind::TokensPerMinute, LimitKind::TokensPerHour] {
        let l = limits(&[(kind, 100)]);
        let s = user(kind.name());
        let r = Req::new(&[(s.clone(), &l)]);
        r.record(&store, None, 0, 90, T0).await.unwrap();
        assert_eq!(used(&store, &s, &l, kind, T0).await, 90);
        let denied = r.check(&store, 0, 20, None, T0).await.unwrap();
        assert!(!denied.allowed());
        assert_eq!(denied.denial().unwrap().kind, kind);
        assert!(r.check(&store, 0, 10, None, T0).await.unwrap().allowed());
        assert!(
            r.check(&store, 0, 20, None, rolled(kind, T0))
                .await
                .unwrap()
                .allowed()
        );
    }
}

/// A request may name one subject of each of the four dimensions. An
/// organisation whose budget is spent denies a request of any of its keys,
/// users and teams, and the three others do not move; its spend is the sum
/// of its teams'.
async fn four_subjects_deny_on_the_org_and_move_nothing_else<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    let open = limits(&[(LimitKind::RequestsPerMinute, 100)]);
    let ol = limits(&[(LimitKind::BudgetDaily, usd(10))]);
    let rpm = LimitKind::RequestsPerMinute;
    let daily = LimitKind::BudgetDaily;
    let request = |team_id: &str| {
        Req::new(&[
            (key(&format!("k-{team_id}")), &open),
            (user(&format!("u-{team_id}")), &open),
            (team(team_id), &open),
            (org("acme"), &ol),
        ])
    };
    let (a, b) = (request("a"), request("b"));
    a.record(&store, None, usd(6), 0, T0).await.unwrap();
    b.record(&store, None, usd(4), 0, T0).await.unwrap();
    assert_eq!(used(&store, &org("acme"), &ol, daily, T0).await, usd(10));
    for (r, t) in [(&a, "a"), (&b, "b")] {
        let denied = r.check(&store, usd(1), 0, None, T0).await.unwrap();
        assert!(!denied.allowed(), "team {t}");
        let d = denied.denial().unwrap();
        assert_eq!((d.subject, d.kind), (3, daily), "the org denies");
        assert_eq!(
            used(&store, &key(&format!("k-{t}")), &open, rpm, T0).await,
            0
        );
        assert_eq!(
            used(&store, &user(&format!("u-{t}")), &open, rpm, T0).await,
            0
        );
        assert_eq!(used(&store, &team(t), &open, rpm, T0).await, 0);
    }
    // Another organisation's request with the same key, user and team ids
    // is not held back.
    let other = limits(&[(LimitKind::BudgetDaily, usd(10))]);
    let r = Req::new(&[
        (key("k-a"), &open),
        (user("u-a"), &open),
        (team("a"), &open),
        (org("globex"), &other),
    ]);
    assert!(
        r.check(&store, usd(1), 0, None, T0)
            .await
            .unwrap()
            .allowed()
    );
    assert_eq!(used(&store, &team("a"), &open, rpm, T0).await, 1);
}

async fn several_subjects_move_all_or_nothing<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    let kl = limits(&[(LimitKind::RequestsPerMinute, 10)]);
    let ul = limits(&[(LimitKind::RequestsPerMinute, 1)]);
    let tl = limits(&[(LimitKind::BudgetDaily, usd(5))]);
    let (k, u, t) = (key("k"), user("u"), team("t"));
    let r = Req::new(&[(k.clone(), &kl), (u.clone(), &ul), (t.clone(), &tl)]);

    assert!(r.check(&store, 0, 0, None, T0).await.unwrap().allowed());
    let denied = r.check(&store, 0, 0, None, T0).await.unwrap();
    assert!(!denied.allowed());
    let d = denied.denial().unwrap();
    assert_eq!((d.subject, d.kind), (1, LimitKind::RequestsPerMinute));
    let rpm = LimitKind::RequestsPerMinute;
    assert_eq!(
        used(&store, &k, &kl, rpm, T0).await,
        1,
        "the key moved once"
    );

    // Spend lands on every subject of the record.
    r.record(&store, None, usd(5), 0, T0).await.unwrap();
    assert_eq!(
        used(&store, &t, &tl, LimitKind::BudgetDaily, T0).await,
        usd(5)
    );
    // The team's spent budget stops a request of another key with the team.
    let k2l = limits(&[(LimitKind::RequestsPerMinute, 10)]);
    let r2 = Req::new(&[(key("k2"), &k2l), (t.clone(), &tl)]);
    let denied = r2.check(&store, usd(1), 0, None, T0).await.unwrap();
    assert_eq!(denied.denial().unwrap().subject, 1);
    assert_eq!(used(&store, &key("k2"), &k2l, rpm, T0).await, 0);

    // Concurrency too: a full user blocks the key's slot.
    let kc = limits(&[(LimitKind::MaxConcurrent, 2)]);
    let uc = limits(&[(LimitKind::MaxConcurrent, 1)]);
    let rc = Req::new(&[(key("kc"), &kc), (user("uc"), &uc)]);
    assert!(
        rc.acquire(&store, Nanos::MINUTE, T0)
            .await
            .unwrap()
            .0
            .acquired()
    );
    let (out, lease) = rc.acquire(&store, Nanos::MINUTE, T0).await.unwrap();
    assert!(!out.acquired() && lease.is_none());
    assert_eq!(out.denial().unwrap().subject, 1);
    let mc = LimitKind::MaxConcurrent;
    assert_eq!(used(&store, &key("kc"), &kc, mc, T0).await, 1);
}

async fn reservations_hold_settle_and_expire<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    let l = limits(&[
        (LimitKind::BudgetDaily, usd(10)),
        (LimitKind::TokensPerMinute, 1_000),
    ]);
    let s = key("r");
    let r = Req::new(&[(s.clone(), &l)]);
    let daily = LimitKind::BudgetDaily;
    let ttl = Some(Nanos::MINUTE);

    let c1 = r.check(&store, usd(6), 100, ttl, T0).await.unwrap();
    assert!(c1.allowed());
    let id1 = c1.reservation().expect("a reservation id");
    assert_eq!(used(&store, &s, &l, daily, T0).await, usd(6), "held");
    assert_eq!(
        used(&store, &s, &l, LimitKind::TokensPerMinute, T0).await,
        100
    );
    // Held estimates count against concurrent requests.
    let c2 = r.check(&store, usd(6), 0, ttl, T0).await.unwrap();
    assert!(!c2.allowed());
    assert_eq!(c2.reservation(), None);

    // Settling smaller: the actual replaces the estimate.
    let rec = r.record(&store, Some(id1), usd(2), 50, T0).await.unwrap();
    assert!(!rec.duplicate);
    assert_eq!(used(&store, &s, &l, daily, T0).await, usd(2));
    assert_eq!(
        used(&store, &s, &l, LimitKind::TokensPerMinute, T0).await,
        50
    );
    // Settling again charges nothing.
    let again = r.record(&store, Some(id1), usd(2), 50, T0).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(used(&store, &s, &l, daily, T0).await, usd(2));

    // Settling larger.
    let id3 = r
        .check(&store, usd(1), 0, ttl, T0)
        .await
        .unwrap()
        .reservation()
        .unwrap();
    r.record(&store, Some(id3), usd(5), 0, T0).await.unwrap();
    assert_eq!(used(&store, &s, &l, daily, T0).await, usd(7));

    // An id this store never issued.
    let bogus = 0xdead_beef;
    assert_eq!(
        r.record(&store, Some(bogus), usd(1), 0, T0).await,
        Err(StoreError::UnknownReservation)
    );
    assert_eq!(used(&store, &s, &l, daily, T0).await, usd(7));

    // An unsettled hold is released after its TTL.
    let c4 = r
        .check(&store, usd(3), 0, Some(Nanos::from_secs(10)), at(1))
        .await
        .unwrap();
    assert!(c4.allowed(), "7 + 3 fits in 10");
    let id4 = c4.reservation().unwrap();
    let view = store.usage(&s, &l, at(2)).await.unwrap();
    assert_eq!(view.holds.iter().map(|h| h.id).collect::<Vec<_>>(), [id4]);
    assert_eq!(used(&store, &s, &l, daily, at(2)).await, usd(10));
    assert_eq!(used(&store, &s, &l, daily, at(12)).await, usd(7));
    assert!(store.usage(&s, &l, at(12)).await.unwrap().holds.is_empty());
    // Settling a hold that expired still charges, once.
    let late = r
        .record(&store, Some(id4), usd(1), 0, at(13))
        .await
        .unwrap();
    assert!(!late.duplicate);
    assert_eq!(used(&store, &s, &l, daily, at(13)).await, usd(8));
}

/// A streamed response: progress records charge the usage so far against
/// the reservation on every subject, a duplicate charges nothing, usage past
/// the hold is charged while the budget has room and told to stop when it
/// has not, and the final record settles. A cancelled stream frees its hold.
async fn streamed_records_charge_progress_extend_and_stop<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    let daily = LimitKind::BudgetDaily;
    let tpm = LimitKind::TokensPerMinute;
    let kl = limits(&[(daily, usd(10))]);
    let tl = limits(&[(tpm, 100_000)]);
    let (k, t) = (key("stream"), team("stream"));
    let r = Req::new(&[(k.clone(), &kl), (t.clone(), &tl)]);
    let ttl = Some(Nanos::MINUTE);
    let renew = Some(T0.saturating_add(Nanos::MINUTE));
    // Another request has spent $7 of the $10.
    r.record(&store, None, usd(7), 0, T0).await.unwrap();
    let id = r
        .check(&store, usd(2), 1_000, ttl, T0)
        .await
        .unwrap()
        .reservation()
        .expect("a reservation");
    let held = |view: &limits_store::UsageView| view.holds.iter().map(|h| h.cost).sum::<u64>();

    // Within the hold: usage moves from held to charged.
    let p1 = r
        .record_stream(&store, id, (usd(1), 400), renew, 1, T0)
        .await
        .unwrap();
    assert!(!p1.duplicate && !p1.stop);
    assert_eq!(used(&store, &k, &kl, daily, T0).await, usd(9));
    assert_eq!(held(&store.usage(&k, &kl, T0).await.unwrap()), usd(1));
    assert_eq!(
        used(&store, &t, &tl, tpm, T0).await,
        1_000,
        "400 charged, 600 held"
    );
    // The same record again charges nothing.
    let dup = r
        .record_stream(&store, id, (usd(1), 400), renew, 1, T0)
        .await
        .unwrap();
    assert!(dup.duplicate && !dup.stop);
    assert_eq!(used(&store, &k, &kl, daily, T0).await, usd(9));

    // Past the $2 estimate, with room: the hold is extended.
    let p2 = r
        .record_stream(&store, id, (2_500_000_000, 900), renew, 2, T0)
        .await
        .unwrap();
    assert!(!p2.stop);
    assert_eq!(used(&store, &k, &kl, daily, T0).await, 9_500_000_000);
    assert_eq!(held(&store.usage(&k, &kl, T0).await.unwrap()), 0);

    // Past the budget: charged (it happened) and told to stop, over by no
    // more than the step.
    let p3 = r
        .record_stream(&store, id, (3_500_000_000, 1_400), renew, 3, T0)
        .await
        .unwrap();
    assert!(p3.stop);
    let exceeded: Vec<_> = p3
        .statuses
        .iter()
        .filter(|s| s.exceeded)
        .map(|s| (s.subject, s.kind))
        .collect();
    assert_eq!(exceeded, vec![(0, daily)]);
    assert_eq!(used(&store, &k, &kl, daily, T0).await, 10_500_000_000);
    // Told once, told every time after.
    let p4 = r
        .record_stream(&store, id, (3_600_000_000, 1_450), renew, 4, T0)
        .await
        .unwrap();
    assert!(p4.stop && !p4.duplicate);

    // The final record settles: nothing held, what was used charged once.
    let fin = r
        .record_stream(&store, id, (3_600_000_000, 1_500), None, 5, at(1))
        .await
        .unwrap();
    assert!(!fin.duplicate && !fin.stop);
    assert_eq!(used(&store, &k, &kl, daily, at(1)).await, 10_600_000_000);
    assert_eq!(used(&store, &t, &tl, tpm, at(1)).await, 1_500);
    let again = r
        .record_stream(&store, id, (3_600_000_000, 1_500), None, 6, at(1))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(used(&store, &k, &kl, daily, at(1)).await, 10_600_000_000);

    // A cancelled stream: a final record of nothing frees the hold at once.
    let c = key("cancel");
    let cr = Req::new(&[(c.clone(), &kl)]);
    let id = cr
        .check(&store, usd(8), 0, ttl, T0)
        .await
        .unwrap()
        .reservation()
        .unwrap();
    assert!(
        !cr.check(&store, usd(5), 0, None, T0)
            .await
            .unwrap()
            .allowed()
    );
    let out = cr
        .record_stream(&store, id, (0, 0), None, 0, T0)
        .await
        .unwrap();
    assert!(!out.duplicate);
    assert_eq!(used(&store, &c, &kl, daily, T0).await, 0);
    assert!(
        cr.check(&store, usd(5), 0, None, T0)
            .await
            .unwrap()
            .allowed()
    );
}

async fn leases_acquire_release_and_expire<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    let l = limits(&[(LimitKind::MaxConcurrent, 2)]);
    let s = key("c");
    let r = Req::new(&[(s.clone(), &l)]);
    let ttl = Nanos::from_secs(30);

    let (a1, lease1) = r.acquire(&store, ttl, T0).await.unwrap();
    assert!(a1.acquired());
    let (id1, expires1) = lease1.unwrap();
    assert_eq!(expires1, at(30));
    let (_, lease2) = r.acquire(&store, ttl, T0).await.unwrap();
    let (id2, _) = lease2.unwrap();
    let (full, none) = r.acquire(&store, ttl, T0).await.unwrap();
    assert!(!full.acquired() && none.is_none(), "max + 1 is denied");
    let d = full.denial().unwrap();
    assert_eq!(d.kind, LimitKind::MaxConcurrent);
    assert_eq!(d.retry_after, Some(ttl), "the oldest lease's expiry");

    assert_eq!(store.release(id1, at(1)).await, Ok(true));
    let (a3, lease3) = r.acquire(&store, ttl, at(1)).await.unwrap();
    assert!(a3.acquired(), "a release frees its slot");
    assert_eq!(
        store.release(id1, at(1)).await,
        Ok(false),
        "twice is harmless"
    );
    assert_eq!(
        store.release(0x1234, at(1)).await,
        Err(StoreError::UnknownLease)
    );
    let leases = store.usage(&s, &l, at(2)).await.unwrap().leases;
    let mut ids: Vec<_> = leases.iter().map(|l| l.id).collect();
    ids.sort_unstable();
    let mut want = vec![id2, lease3.unwrap().0];
    want.sort_unstable();
    assert_eq!(ids, want);

    // Leases expire: a caller that died holding a slot leaks it only until
    // its TTL.
    let after = at(31);
    assert!(r.acquire(&store, ttl, after).await.unwrap().0.acquired());
    assert!(r.acquire(&store, ttl, after).await.unwrap().0.acquired());
    assert!(!r.acquire(&store, ttl, after).await.unwrap().0.acquired());
    assert_eq!(
        store.release(id2, after).await,
        Ok(false),
        "an expired lease"
    );
}

async fn usage_shows_windows_holds_and_leases<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    let l = limits(&[
        (LimitKind::BudgetDaily, usd(10)),
        (LimitKind::RequestsPerMinute, 5),
        (LimitKind::MaxConcurrent, 3),
    ]);
    let s = team("v");
    let r = Req::new(&[(s.clone(), &l)]);
    assert!(r.check(&store, 0, 0, None, T0).await.unwrap().allowed());
    r.record(&store, None, usd(2), 0, T0).await.unwrap();
    let hold = r
        .check(&store, usd(1), 0, Some(Nanos::MINUTE), T0)
        .await
        .unwrap()
        .reservation()
        .unwrap();
    let (lease, _) = r
        .acquire(&store, Nanos::MINUTE, T0)
        .await
        .unwrap()
        .1
        .unwrap();

    let view = store.usage(&s, &l, at(1)).await.unwrap();
    let daily = common::status(&view.statuses, LimitKind::BudgetDaily);
    assert_eq!((daily.limit, daily.used), (usd(10), usd(3)));
    assert_eq!(daily.remaining(), usd(7));
    assert_eq!(daily.reset_at, Some(rolled(LimitKind::BudgetDaily, T0)));
    let rpm = common::status(&view.statuses, LimitKind::RequestsPerMinute);
    assert_eq!(rpm.used, 2, "two allowed checks");
    let mc = common::status(&view.statuses, LimitKind::MaxConcurrent);
    assert_eq!((mc.used, mc.reset_at), (1, Some(at(60))));
    assert_eq!(
        view.holds,
        [Hold {
            id: hold,
            cost: usd(1),
            tokens: 0,
            expires_at: at(60),
            settled: false,
            tag: 0,
            ..Default::default()
        }]
    );
    assert_eq!(
        view.leases,
        [LeaseSlot {
            id: lease,
            expires_at: at(60),
        }]
    );

    let unknown = store.usage(&team("nobody"), &l, at(1)).await.unwrap();
    assert!(unknown.statuses.iter().all(|s| s.used == 0));
    assert!(unknown.holds.is_empty() && unknown.leases.is_empty());
}

async fn sweep_drops_idle_subjects_and_keeps_live_ones<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    let spend = limits(&[(LimitKind::BudgetDaily, usd(10))]);
    let short = limits(&[(LimitKind::RequestsPerSecond, 5)]);
    let conc = limits(&[(LimitKind::MaxConcurrent, 1)]);
    let held = limits(&[(LimitKind::BudgetHourly, usd(10))]);
    let mut table = LimitTable::new();
    table.insert(Dimension::ApiKey, "spend", spend.clone());
    table.insert(Dimension::ApiKey, "short", short.clone());
    table.insert(Dimension::User, "leased", conc.clone());
    table.insert(Dimension::Team, "held", held.clone());

    Req::new(&[(key("spend"), &spend)])
        .record(&store, None, usd(1), 0, T0)
        .await
        .unwrap();
    assert!(
        Req::new(&[(key("short"), &short)])
            .check(&store, 0, 0, None, T0)
            .await
            .unwrap()
            .allowed()
    );
    Req::new(&[(user("leased"), &conc)])
        .acquire(&store, Nanos::from_secs(10), T0)
        .await
        .unwrap();
    Req::new(&[(team("held"), &held)])
        .check(&store, usd(1), 0, Some(Nanos::from_secs(20)), T0)
        .await
        .unwrap();

    let sweep = store.sweep(&table, at(5)).await.unwrap();
    assert_eq!(
        sweep,
        SweepStats {
            subjects: 3,
            dropped: 1,
            open_reservations: 1,
            live_leases: 1,
        },
        "only the request window has emptied"
    );
    let sweep = store.sweep(&table, at(25)).await.unwrap();
    assert_eq!(
        (sweep.subjects, sweep.dropped, sweep.live_leases),
        (1, 2, 0)
    );
    let sweep = store
        .sweep(&table, rolled(LimitKind::BudgetDaily, T0))
        .await
        .unwrap();
    assert_eq!((sweep.subjects, sweep.dropped), (0, 1));

    // A dropped subject starts afresh.
    let now = rolled(LimitKind::BudgetDaily, T0);
    let daily = LimitKind::BudgetDaily;
    assert_eq!(used(&store, &key("spend"), &spend, daily, now).await, 0);
    Req::new(&[(key("spend"), &spend)])
        .record(&store, None, usd(2), 0, now)
        .await
        .unwrap();
    assert_eq!(
        used(&store, &key("spend"), &spend, daily, now).await,
        usd(2)
    );
}

async fn max_entries_refuses_new_subjects_and_changes_nothing<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(2);
    let l = limits(&[
        (LimitKind::BudgetDaily, usd(10)),
        (LimitKind::MaxConcurrent, 5),
    ]);
    let daily = LimitKind::BudgetDaily;
    for id in ["a", "b"] {
        Req::new(&[(key(id), &l)])
            .record(&store, None, usd(1), 0, T0)
            .await
            .unwrap();
    }
    let c = Req::new(&[(key("c"), &l)]);
    assert_eq!(
        c.record(&store, None, usd(1), 0, T0).await,
        Err(StoreError::Full(2))
    );
    assert_eq!(
        c.check(&store, usd(1), 0, None, T0).await,
        Err(StoreError::Full(2))
    );
    assert_eq!(
        c.acquire(&store, Nanos::MINUTE, T0).await,
        Err(StoreError::Full(2))
    );
    // With one known subject and one new one, the known one does not move.
    let both = Req::new(&[(key("a"), &l), (user("new"), &l)]);
    assert_eq!(
        both.record(&store, None, usd(1), 0, T0).await,
        Err(StoreError::Full(2))
    );
    assert_eq!(used(&store, &key("a"), &l, daily, T0).await, usd(1));
    assert!(StoreError::Full(2).is_transient());

    // An unlimited subject is never kept, so it takes no room.
    let free = Req::new(&[(key("a"), &l), (user("free"), &SubjectLimits::UNLIMITED)]);
    free.record(&store, None, usd(1), 0, T0).await.unwrap();
    assert_eq!(used(&store, &key("a"), &l, daily, T0).await, usd(2));

    // Once the sweep has dropped idle subjects there is room again.
    let mut table = LimitTable::new();
    table.set_default(Dimension::ApiKey, Some(l.clone()));
    let later = rolled(daily, T0);
    assert_eq!(store.sweep(&table, later).await.unwrap().dropped, 2);
    c.record(&store, None, usd(1), 0, later).await.unwrap();
}

/// The rate limit service path: several subjects, some of one dimension,
/// charged requests all or nothing and tokens always.
async fn hits_charge_many_subjects_all_or_nothing<S: Store>(make: impl Fn(usize) -> S) {
    use limits_core::hit::Charge;
    let store = make(ROOMY);
    let roomy = limits(&[(LimitKind::RequestsPerMinute, 100)]);
    let tight = limits(&[(LimitKind::RequestsPerMinute, 2)]);
    let tokens = limits(&[(LimitKind::TokensPerMinute, 1_000)]);
    let names = ["d1", "d2", "d3", "d4", "d5"];
    let mut pairs: Vec<_> = names[..4].iter().map(|n| (key(n), &roomy)).collect();
    pairs.push((key(names[4]), &tight));
    let req = Req::new(&pairs);
    let one = [Charge {
        requests: 1,
        tokens: 0,
    }; 5];
    for _ in 0..2 {
        assert!(req.hit(&store, &one, T0).await.unwrap().allowed());
    }
    let denied = req.hit(&store, &one, T0).await.unwrap();
    assert!(!denied.allowed());
    assert_eq!(denied.denial.unwrap().subject, 4);
    for n in &names[..4] {
        let u = used(&store, &key(n), &roomy, LimitKind::RequestsPerMinute, T0).await;
        assert_eq!(u, 2, "a denied hit charged {n}");
    }

    let t = Req::new(&[(user("u"), &tokens)]);
    let usage = [Charge {
        requests: 0,
        tokens: 1_500,
    }];
    let over = t.hit(&store, &usage, T0).await.unwrap();
    assert!(!over.allowed());
    assert_eq!(
        used(&store, &user("u"), &tokens, LimitKind::TokensPerMinute, T0).await,
        1_500,
        "token usage is recorded even past the limit"
    );
}

async fn adjustments_credit_debit_and_reset_exactly<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    let l = limits(&[
        (LimitKind::BudgetDaily, usd(10)),
        (LimitKind::BudgetHourly, usd(5)),
        (LimitKind::TokensPerHour, 1_000),
    ]);
    let s = key("adjusted");
    // Adjustments name subjects in their stored form.
    let stored = store.secret().await.unwrap().stored_subject(&s);
    let r = Req::new(&[(s.clone(), &l)]);
    r.record(&store, None, usd(4), 300, T0).await.unwrap();
    let op = |changes: &'static [(LimitKind, Adjustment)]| AdjustOp {
        changes,
        audit: b"{}",
        audit_keep: 100,
    };

    // A credit of 3 from the daily window only, newest first.
    let out = store
        .adjust(
            &stored,
            &l,
            op(&[(LimitKind::BudgetDaily, Adjustment::Credit(3_000_000_000))]),
            T0,
        )
        .await
        .unwrap();
    assert_eq!(out.applied, vec![usd(3)]);
    assert!(out.audit_seq > 0);
    assert_eq!(
        used(&store, &s, &l, LimitKind::BudgetDaily, T0).await,
        usd(1)
    );
    assert_eq!(
        used(&store, &s, &l, LimitKind::BudgetHourly, T0).await,
        usd(4)
    );
    let daily = out
        .usage
        .statuses
        .iter()
        .find(|x| x.kind == LimitKind::BudgetDaily)
        .unwrap();
    assert_eq!(daily.used, usd(1), "the answer shows the state after");

    // A credit larger than the window takes it to zero, never below.
    let out = store
        .adjust(
            &stored,
            &l,
            op(&[(LimitKind::BudgetHourly, Adjustment::Credit(100_000_000_000))]),
            T0,
        )
        .await
        .unwrap();
    assert_eq!(out.applied, vec![usd(4)]);
    assert_eq!(used(&store, &s, &l, LimitKind::BudgetHourly, T0).await, 0);

    // Debits of several windows at once, counted from now: they leave the
    // hourly window after an hour, the daily one after a day.
    let later = at(60);
    let out = store
        .adjust(
            &stored,
            &l,
            op(&[
                (LimitKind::BudgetDaily, Adjustment::Debit(2_000_000_000)),
                (LimitKind::BudgetHourly, Adjustment::Debit(2_000_000_000)),
                (LimitKind::TokensPerHour, Adjustment::Debit(50)),
            ]),
            later,
        )
        .await
        .unwrap();
    assert_eq!(out.applied, vec![usd(2), usd(2), 50]);
    assert_eq!(
        used(&store, &s, &l, LimitKind::BudgetDaily, later).await,
        usd(3)
    );
    assert_eq!(
        used(&store, &s, &l, LimitKind::TokensPerHour, later).await,
        350
    );

    // A reset empties the window named and no other.
    let out = store
        .adjust(
            &stored,
            &l,
            op(&[(LimitKind::TokensPerHour, Adjustment::Reset)]),
            later,
        )
        .await
        .unwrap();
    assert_eq!(out.applied, vec![350]);
    assert_eq!(
        used(&store, &s, &l, LimitKind::TokensPerHour, later).await,
        0
    );
    assert_eq!(
        used(&store, &s, &l, LimitKind::BudgetDaily, later).await,
        usd(3)
    );

    // A debit of a kind the subject neither limits nor counts moves nothing.
    let out = store
        .adjust(
            &stored,
            &l,
            op(&[(LimitKind::RequestsPerMinute, Adjustment::Debit(5))]),
            later,
        )
        .await
        .unwrap();
    assert_eq!(out.applied, vec![0]);
    let after_hour = rolled(LimitKind::BudgetHourly, later);
    assert_eq!(
        used(&store, &s, &l, LimitKind::BudgetHourly, after_hour).await,
        0
    );
    assert_eq!(
        used(&store, &s, &l, LimitKind::BudgetDaily, after_hour).await,
        usd(3)
    );
    // Every adjustment kept its audit event.
    let audit = store.audit(None, 100).await.unwrap();
    assert_eq!(audit.len(), 5);
    assert!(audit.windows(2).all(|w| w[0].0 > w[1].0), "newest first");
}

async fn records_change_only_as_expected_and_keep_their_audit<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    let swap = |key: &'static str,
                expect: Option<&'static [u8]>,
                new: Option<&'static [u8]>,
                audit: &'static [u8]| RecordSwap {
        key,
        expect,
        new,
        audit: Some(audit),
        audit_keep: 100,
    };
    let before = store.records_version().await.unwrap();
    assert!(store.records().await.unwrap().records.is_empty());
    // Created only where absent.
    let done = store
        .swap_record(swap("team:a", None, Some(b"v1"), b"created a"))
        .await
        .unwrap();
    let Swapped::Done { audit_seq, version } = done else {
        panic!("{done:?}");
    };
    assert!(audit_seq > 0);
    assert_eq!(version, before + 1, "a change moves the version by one");
    assert_eq!(
        store
            .swap_record(swap("team:a", None, Some(b"other"), b"x"))
            .await
            .unwrap(),
        Swapped::Conflict(Some(b"v1".to_vec()))
    );
    // Changed only from what it holds.
    assert_eq!(
        store
            .swap_record(swap("team:a", Some(b"v0"), Some(b"v2"), b"x"))
            .await
            .unwrap(),
        Swapped::Conflict(Some(b"v1".to_vec()))
    );
    store
        .swap_record(swap("team:a", Some(b"v1"), Some(b"v2"), b"changed a"))
        .await
        .unwrap();
    store
        .swap_record(swap("user:b", None, Some(b"b1"), b"created b"))
        .await
        .unwrap();
    let records = store.records().await.unwrap();
    assert_eq!(
        records.records,
        vec![
            ("team:a".to_owned(), b"v2".to_vec()),
            ("user:b".to_owned(), b"b1".to_vec())
        ]
    );
    assert!(records.version > before);
    assert_eq!(store.records_version().await.unwrap(), records.version);
    // Removed, with and without an audit event.
    store
        .swap_record(swap("team:a", Some(b"v2"), None, b"deleted a"))
        .await
        .unwrap();
    let quiet = store
        .swap_record(RecordSwap {
            key: "user:b",
            expect: Some(b"b1"),
            new: None,
            audit: None,
            audit_keep: 100,
        })
        .await
        .unwrap();
    assert!(
        matches!(quiet, Swapped::Done { audit_seq: 0, .. }),
        "{quiet:?}"
    );
    assert!(store.records().await.unwrap().records.is_empty());
    assert_eq!(
        store
            .swap_record(swap("team:a", Some(b"v2"), None, b"x"))
            .await
            .unwrap(),
        Swapped::Conflict(None)
    );
    // Refused swaps left no event; the made ones did, newest first.
    let events: Vec<Vec<u8>> = store
        .audit(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(
        events,
        vec![
            b"deleted a".to_vec(),
            b"created b".to_vec(),
            b"changed a".to_vec(),
            b"created a".to_vec()
        ]
    );
}

async fn the_audit_trail_keeps_the_newest<S: Store>(make: impl Fn(usize) -> S) {
    let store = make(ROOMY);
    let mut expect: Option<Vec<u8>> = None;
    for i in 0..12u8 {
        let value = vec![i];
        store
            .swap_record(RecordSwap {
                key: "team:t",
                expect: expect.as_deref(),
                new: Some(&value),
                audit: Some(&[b'e', b'0' + i]),
                audit_keep: 5,
            })
            .await
            .unwrap();
        expect = Some(value);
    }
    let all = store.audit(None, 100).await.unwrap();
    assert_eq!(all.len(), 5, "only the newest five are kept");
    assert_eq!(all[0].1, vec![b'e', b'0' + 11]);
    assert_eq!(all[4].1, vec![b'e', b'0' + 7]);
    // Pages: older than a sequence number.
    let page = store.audit(Some(all[1].0), 2).await.unwrap();
    assert_eq!(page, all[2..4].to_vec());
    assert!(store.audit(Some(all[4].0), 10).await.unwrap().is_empty());
}
