//! `limits.server`, `limits.logging`, `limits.metrics` and `limits.security`.

mod common;

use common::*;
use limits::config::parse_str;

#[test]
fn bad_server_logging_and_metrics_are_rejected() {
    assert_rejects(
        "server:\n  grpc_addr: localhost:50051\n",
        "limits.server.grpc_addr",
        "expected IP:PORT",
    );
    assert_rejects(
        "server:\n  grpc_addr: 127.0.0.1:7000\n  metrics_addr: 127.0.0.1:7000\n",
        "limits.server.metrics_addr",
        "different ports",
    );
    assert_rejects(
        "server:\n  shutdown_grace: forever\n",
        "limits.server.shutdown_grace",
        "invalid duration",
    );
    assert_rejects(
        "logging:\n  format: xml\n",
        "limits.logging.format",
        "expected one of: json, pretty",
    );
    assert_rejects(
        "logging:\n  level: \"\"\n",
        "limits.logging.level",
        "must not be empty",
    );
    assert_rejects(
        "logging:\n  level: \"info,limits_server=loud\"\n",
        "limits.logging.level",
        "invalid filter",
    );
    assert_rejects(
        "metrics:\n  identifier_cap: 0\n",
        "limits.metrics.identifier_cap",
        "must be greater than 0",
    );
    assert_rejects(
        "metrics:\n  show_user_ids: sometimes\n",
        "limits.metrics.show_user_ids",
        "expected true or false",
    );
}

#[test]
fn request_bounds_have_ranges_named_in_the_error() {
    for (yaml, key) in [
        (
            "limits:\n  server:\n    max_request_bytes: 10MiB\n",
            "limits.server.max_request_bytes",
        ),
        (
            "limits:\n  server:\n    max_request_bytes: lots\n",
            "limits.server.max_request_bytes",
        ),
        (
            "limits:\n  server:\n    memory_budget: 1KiB\n",
            "limits.server.memory_budget",
        ),
        (
            "limits:\n  server:\n    max_in_flight: 0\n",
            "limits.server.max_in_flight",
        ),
        (
            "limits:\n  server:\n    max_concurrent_streams: 0\n",
            "limits.server.max_concurrent_streams",
        ),
    ] {
        let e = parse_str(yaml).expect_err(yaml);
        assert_eq!(e.key, key, "{e}");
    }
    let cfg = parse_str("limits:\n  server:\n    max_request_bytes: 8192\n").unwrap();
    assert_eq!(cfg.server.max_request_bytes, 8192);
}

#[test]
fn a_bad_secret_names_its_key() {
    let e = parse_str("limits:\n  security:\n    secret: short\n").unwrap_err();
    assert_eq!(e.key, "limits.security.secret");
    assert!(e.reason.contains("at least 16 bytes"), "{e}");
    let e =
        parse_str("limits:\n  security:\n    secret: 0123456789abcdef0123\n    secret_file: /x\n")
            .unwrap_err();
    assert_eq!(e.key, "limits.security.secret_file");
    let e = parse_str("limits:\n  security:\n    secret_file: /no/such/file\n").unwrap_err();
    assert_eq!(e.key, "limits.security.secret_file");
    assert!(e.reason.contains("cannot read"), "{e}");
}

/// Regression: a range that starts at zero read "between 1ns and 1h (or 0
/// for off)".
#[test]
fn the_shutdown_grace_range_starts_at_zero() {
    assert_rejects(
        "server:\n  shutdown_grace: 2h\n",
        "limits.server.shutdown_grace",
        "must be between 0s and 1h, got 2h",
    );
}
