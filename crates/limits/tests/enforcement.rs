//! `limits.enforcement` and `limits.pricing`: the action, the queue, the
//! downgrade chains and model prices.

mod common;

use common::*;

#[test]
fn downgrade_mode_without_downgrades_warns() {
    let cfg = parse("enforcement:\n  action: downgrade\n");
    assert_eq!(cfg.warnings.len(), 1);
    assert!(
        cfg.warnings[0].contains("model_downgrades"),
        "{:?}",
        cfg.warnings
    );
}

#[test]
fn bad_enforcement_is_rejected() {
    assert_rejects(
        "enforcement:\n  action: deny\n",
        "limits.enforcement.action",
        "expected one of: block, queue, downgrade, alert",
    );
    assert_rejects(
        "enforcement:\n  queue_depth: 0\n",
        "limits.enforcement.queue_depth",
        "must be greater than 0",
    );
    assert_rejects(
        "enforcement:\n  queue_timeout: thirty\n",
        "limits.enforcement.queue_timeout",
        "invalid duration",
    );
    assert_rejects(
        "enforcement:\n  queue_timeout: 0s\n",
        "limits.enforcement.queue_timeout",
        "must be greater than 0",
    );
    assert_rejects(
        "enforcement:\n  queue_timeout: 30\n",
        "limits.enforcement.queue_timeout",
        "expected a duration with a unit, such as \"30s\"",
    );
    assert_rejects(
        "enforcement:\n  reservation_ttl: 5 parsecs\n",
        "limits.enforcement.reservation_ttl",
        "invalid duration",
    );
}

#[test]
fn downgrade_cycles_and_self_maps_are_rejected() {
    assert_rejects(
        "enforcement:\n  model_downgrades:\n    gpt-4: gpt-4\n",
        "limits.enforcement.model_downgrades.gpt-4",
        "to itself",
    );
    assert_rejects(
        "enforcement:\n  model_downgrades:\n    a: b\n    b: a\n",
        "limits.enforcement.model_downgrades.a",
        "loops: a -> b -> a",
    );
    assert_rejects(
        "enforcement:\n  model_downgrades:\n    a: b\n    b: c\n    c: b\n",
        "limits.enforcement.model_downgrades.a",
        "loops: a -> b -> c -> b",
    );
    let long: String = (0..17)
        .map(|i| format!("    m{i:02}: m{:02}\n", i + 1))
        .collect();
    assert_rejects(
        &format!("enforcement:\n  model_downgrades:\n{long}"),
        "limits.enforcement.model_downgrades.m00",
        "17 steps",
    );
    assert_rejects(
        "enforcement:\n  model_downgrades:\n    a: \"\"\n",
        "limits.enforcement.model_downgrades.a",
        "must name the model",
    );
}

#[test]
fn bad_pricing_is_rejected() {
    assert_rejects(
        "pricing:\n  gpt-4:\n    input_per_1k: -0.03\n    output_per_1k: 0.06\n",
        "limits.pricing.gpt-4.input_per_1k",
        "must not be negative",
    );
    assert_rejects(
        "pricing:\n  gpt-4:\n    input_per_1k: 0.03\n    output_per_1k: .nan\n",
        "limits.pricing.gpt-4.output_per_1k",
        "finite",
    );
    assert_rejects(
        "pricing:\n  gpt-4:\n    input_per_1k: 0.03\n",
        "limits.pricing.gpt-4.output_per_1k",
        "required key is missing",
    );
}
