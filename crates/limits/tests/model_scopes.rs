//! Limits per model under a subject (`models:`): the config, and the
//! library's check, record and usage with them, on the embedded store.

mod common;

use common::*;
use limits::{CheckRequest, Decision, Limiter, RecordRequest, Subject, usd};
use limits_core::{Action, Dimension, LimitKind};

const CONFIG: &str = "
limits:
  by_api_key:
    sk-prod:
      daily: 10
      requests_per_minute: 100
      models:
        \"gpt-4*\": { daily: 5, tokens_per_minute: 40000 }
        \"gpt-4o-mini\": { requests_per_minute: 2 }
        \"claude-3-opus\": { requests_per_minute: 30 }
  budgets:
    by_team:
      ml:
        daily: 100
        models:
          \"gpt-3.5*\": { daily: 3 }
  rate_limits:
    by_team:
      ml:
        models:
          \"gpt-3.5*\": { requests_per_hour: 1000 }
";

fn check<'a>(subjects: &'a [Subject], model: &'a str, cost: f64) -> CheckRequest<'a> {
    CheckRequest {
        subjects,
        model,
        estimated_tokens: 100,
        estimated_input_tokens: None,
        estimated_output_tokens: None,
        estimated_cost: Some(usd(cost).unwrap()),
        reserve: false,
        reservation_ttl: None,
    }
}

#[test]
fn scopes_load_from_every_kind_of_entry() {
    let cfg = parse(CONFIG);
    let key = cfg.table.resolve(Dimension::ApiKey, "sk-prod");
    let scopes = key.scopes().expect("sk-prod has model scopes");
    assert_eq!(scopes.len(), 3);
    let gpt4 = scopes.find("gpt-4-turbo").expect("gpt-4* matches");
    assert_eq!(gpt4.pattern(), "gpt-4*");
    assert_eq!(
        gpt4.limits().get(LimitKind::BudgetDaily),
        Some(5_000_000_000)
    );
    assert_eq!(gpt4.limits().get(LimitKind::TokensPerMinute), Some(40_000));
    // The exact name is more specific than the glob that also matches it.
    let mini = scopes.find("gpt-4o-mini").unwrap();
    assert_eq!(mini.pattern(), "gpt-4o-mini");
    assert_eq!(mini.limits().get(LimitKind::BudgetDaily), None);
    assert!(scopes.find("mistral-large").is_none());
    // A budgets entry's scope and a rate entry's scope of one pattern merge.
    let team = cfg.table.resolve(Dimension::Team, "ml");
    let s = team.scopes().unwrap().find("gpt-3.5-turbo").unwrap();
    assert_eq!(s.limits().get(LimitKind::BudgetDaily), Some(3_000_000_000));
    assert_eq!(s.limits().get(LimitKind::RequestsPerHour), Some(1000));
}

#[test]
fn bad_scopes_are_rejected_naming_the_key() {
    assert_rejects(
        "limits:\n  by_user:\n    u:\n      models:\n        \"gpt-[4\": { daily: 1 }\n",
        "limits.by_user.u.models.gpt-[4",
        "not a valid pattern",
    );
    assert_rejects(
        "limits:\n  by_user:\n    u:\n      models:\n        m: { daily: -1 }\n",
        "limits.by_user.u.models.m.daily",
        "",
    );
    assert_rejects(
        "limits:\n  budgets:\n    by_user:\n      u:\n        models:\n          m: { requests_per_minute: 5 }\n",
        "limits.budgets.by_user.u.models.m.requests_per_minute",
        "a rate limit in this family's model scope",
    );
    assert_rejects(
        "limits:\n  rate_limits:\n    by_team:\n      t:\n        models:\n          m: { daily: 5 }\n",
        "limits.rate_limits.by_team.t.models.m.daily",
        "a budget limit in this family's model scope",
    );
    assert_rejects(
        "limits:\n  by_team:\n    t:\n      models:\n        m: { max_concurrent: 5 }\n",
        "limits.by_team.t.models.m.max_concurrent",
        "unknown key",
    );
}

#[tokio::test]
async fn a_spent_scope_denies_its_models_and_leaves_the_others_alone() {
    let limiter = Limiter::from_yaml_str(CONFIG).unwrap();
    let config = limiter.config();
    let key = [Subject::new(Dimension::ApiKey, "sk-prod")];

    let first = limiter
        .check(&config, check(&key, "gpt-4o", 4.0))
        .await
        .unwrap();
    assert!(first.allowed());
    limiter
        .record(
            &config,
            RecordRequest {
                subjects: &key,
                reservation_id: None,
                request_tokens: 10,
                response_tokens: 10,
                total_tokens: 0,
                cost: Some(usd(4.0).unwrap()),
                model: "gpt-4o",
                progress: false,
                sequence: 0,
            },
        )
        .await
        .unwrap();
    // $4 of gpt-4*'s $5: another $2 for any gpt-4 model is over the scope.
    let denied = limiter
        .check(&config, check(&key, "gpt-4-turbo", 2.0))
        .await
        .unwrap();
    let Decision::Deny { denial, .. } = denied.decision else {
        panic!("the gpt-4* scope is spent: {:?}", denied.decision);
    };
    assert_eq!(denial.subject, 0, "a scope's denial names its subject");
    assert_eq!(denial.kind, LimitKind::BudgetDaily);
    assert_eq!(denied.denied_scope(), Some("gpt-4*"));
    let reason = denied.reason(limits::explain::Queued::No);
    assert!(reason.contains("in model scope 'gpt-4*'"), "{reason}");
    assert!(!reason.contains("sk-prod"), "never the raw key: {reason}");
    let scoped: Vec<_> = denied
        .outcome
        .statuses
        .iter()
        .filter(|s| s.scope.as_deref() == Some("gpt-4*"))
        .collect();
    assert_eq!(scoped.len(), 2, "the scope's budget and token limit");
    assert!(scoped.iter().all(|s| s.subject == 0));
    let budget = scoped
        .iter()
        .find(|s| s.kind == LimitKind::BudgetDaily)
        .unwrap();
    assert!(budget.exceeded);
    assert_eq!(budget.used, 4_000_000_000);
    assert_eq!(
        denied.headers.get(limits_core::headers::Name::BudgetScope),
        Some("gpt-4*")
    );

    // Another model meets only the key's own limits ($4 of $10).
    let other = limiter
        .check(&config, check(&key, "mistral-large", 2.0))
        .await
        .unwrap();
    assert!(other.allowed(), "{:?}", other.decision);
    assert!(other.outcome.statuses.iter().all(|s| s.scope.is_none()));

    // GetUsage lists the key's own limits, then every scope's.
    let usage = limiter.usage(&config, &key[0]).await.unwrap();
    let scopes: Vec<_> = usage
        .statuses
        .iter()
        .filter_map(|s| s.scope.as_deref())
        .collect();
    assert!(scopes.contains(&"gpt-4*") && scopes.contains(&"claude-3-opus"));
    let own = usage
        .statuses
        .iter()
        .find(|s| s.scope.is_none() && s.kind == LimitKind::BudgetDaily)
        .unwrap();
    assert_eq!(own.used, 4_000_000_000, "the record charged the key too");
}

#[tokio::test]
async fn the_downgrade_walk_checks_each_model_under_its_own_scope() {
    let yaml = format!(
        "{CONFIG}  enforcement:\n    action: downgrade\n    model_downgrades:\n      gpt-4o: gpt-4o-mini\n      gpt-4o-mini: claude-3-opus\n"
    );
    let limiter = Limiter::from_yaml_str(&yaml).unwrap();
    let config = limiter.config();
    let key = [Subject::new(Dimension::ApiKey, "sk-prod")];
    // gpt-4* has $5: a $6 request for gpt-4o cannot fit there, but the
    // key's own $10 has room, so it runs on gpt-4o-mini, whose exact scope
    // (2 a minute) is more specific than gpt-4* and does not hold its
    // budget.
    let small = limiter
        .check(&config, check(&key, "gpt-4o", 0.5))
        .await
        .unwrap();
    assert_eq!(small.outcome.action, Action::Allow);
    let big = limiter
        .check(&config, check(&key, "gpt-4o", 6.0))
        .await
        .unwrap();
    assert_eq!(big.outcome.action, Action::Downgrade);
    assert_eq!(big.downgrade_to(), Some("gpt-4o-mini"));
    assert!(
        big.outcome
            .statuses
            .iter()
            .all(|s| s.scope.as_deref() != Some("gpt-4*")),
        "an admitted attempt's statuses are its own scopes'"
    );
    let next = limiter
        .check(&config, check(&key, "gpt-4o", 6.0))
        .await
        .unwrap();
    assert_eq!(next.downgrade_to(), Some("gpt-4o-mini"));
    // gpt-4o-mini's 2 a minute are used: the walk goes on to
    // claude-3-opus, whose scope has room.
    let last = limiter
        .check(&config, check(&key, "gpt-4o", 6.0))
        .await
        .unwrap();
    assert_eq!(
        last.downgrade_to(),
        Some("claude-3-opus"),
        "gpt-4o-mini's 2 a minute are used: {:?}",
        last.outcome.statuses
    );
}
