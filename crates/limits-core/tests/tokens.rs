//! Input and output token limits: a check holds each part of the estimate
//! against its own limits (all of the estimate against both when no split
//! is given), and a record charges what each part turned out to be, larger
//! than its estimate or not.

mod common;

use common::{Group, T0, limits, ms};
use limits_core::engine::Reserve;
use limits_core::{Attempt, LimitKind, NanoUsd, Policy, RecordRequest};

fn split(input: u64, output: u64) -> Vec<Attempt> {
    vec![Attempt {
        model: "gpt-4".to_owned(),
        cost: NanoUsd(0),
        tokens: input + output,
        input,
        output,
        skip: 0,
    }]
}

fn used(g: &mut Group, kind: LimitKind, at: limits_core::Nanos) -> u64 {
    g.used(0, kind, at)
}

#[test]
fn each_part_of_an_estimate_is_held_and_settled_against_its_own_limits() {
    let mut g = Group::one(limits(&[
        (LimitKind::InputTokensPerMinute, 1_000),
        (LimitKind::OutputTokensPerMinute, 500),
        (LimitKind::TokensPerMinute, 10_000),
    ]));
    let reserve = |id| {
        Some(Reserve {
            id,
            expires_at: T0.saturating_add(ms(60_000)),
            tag: 0,
        })
    };
    let policy = Policy::default();
    let out = g.check_with(&split(800, 400), reserve(1), &policy, T0);
    assert!(out.allowed(), "{out:?}");
    assert_eq!(used(&mut g, LimitKind::InputTokensPerMinute, T0), 800);
    assert_eq!(used(&mut g, LimitKind::OutputTokensPerMinute, T0), 400);
    assert_eq!(used(&mut g, LimitKind::TokensPerMinute, T0), 1_200);

    // 300 more input tokens do not fit the input limit; the output limit
    // has room for 50 more.
    let out = g.check_with(&split(300, 50), None, &policy, T0);
    assert_eq!(
        out.denial().map(|d| d.kind),
        Some(LimitKind::InputTokensPerMinute)
    );

    // The response is longer than estimated: 600 output tokens are charged
    // (usage happened, it is never refused), and the hold is gone.
    let at = T0.saturating_add(ms(10));
    let req = RecordRequest {
        reservation: Some(1),
        cost: NanoUsd(0),
        tokens: 1_300,
        input: 700,
        output: 600,
        ..RecordRequest::default()
    };
    let rec = g.record_with_request(&req, at);
    assert!(!rec.duplicate);
    assert_eq!(used(&mut g, LimitKind::InputTokensPerMinute, at), 700);
    assert_eq!(used(&mut g, LimitKind::OutputTokensPerMinute, at), 600);
    assert_eq!(used(&mut g, LimitKind::TokensPerMinute, at), 1_300);
    let out = g.check_with(&split(0, 1), None, &policy, at);
    assert_eq!(
        out.denial().map(|d| d.kind),
        Some(LimitKind::OutputTokensPerMinute),
        "the output limit is over"
    );
    assert!(
        !g.check_with(&split(300, 0), None, &policy, at).allowed(),
        "700 + 300 input fits exactly, but the output limit is still over"
    );
}

#[test]
fn without_a_split_the_whole_estimate_is_held_against_both() {
    let mut g = Group::one(limits(&[
        (LimitKind::InputTokensPerHour, 10_000),
        (LimitKind::OutputTokensPerHour, 500),
    ]));
    let policy = Policy::default();
    let attempts = policy.attempts("gpt-4", 600, None);
    assert_eq!((attempts[0].input, attempts[0].output), (600, 600));
    let out = g.check_with(&attempts, None, &policy, T0);
    assert_eq!(
        out.denial().map(|d| (d.kind, d.retry_after)),
        Some((LimitKind::OutputTokensPerHour, None)),
        "600 could all be output: more than the limit, never"
    );
    assert!(g.check_with(&split(600, 100), None, &policy, T0).allowed());
}
