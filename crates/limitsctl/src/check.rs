//! `limitsctl check`: whether a request would be allowed now, and why not
//! (the data plane's CheckLimits, without a reservation).

use std::fmt::Write as _;
use std::time::SystemTime;

use limits_server::pb;
use serde_json::json;

use crate::cli::{CheckArgs, Global, Output};
use crate::connect::Conn;
use crate::error::{Api, Error};
use crate::render;

pub async fn run(g: &Global, args: &CheckArgs) -> Result<String, Error> {
    let conn = Conn::open(g).await?;
    let answer = conn
        .limits()
        .check_limits(pb::CheckLimitsRequest {
            subjects: args.subjects.iter().map(|s| s.pb()).collect(),
            model: args.model.clone(),
            estimated_tokens: args.tokens,
            estimated_input_tokens: None,
            estimated_output_tokens: None,
            estimated_cost_usd: args.cost,
            reserve: false,
            reservation_ttl: None,
        })
        .await
        .map_err(conn.failed(Api::Data))?
        .into_inner();
    let now = SystemTime::now();
    let action = pb::Action::try_from(answer.action)
        .map_or("unknown", |a| a.as_str_name())
        .trim_start_matches("ACTION_")
        .to_ascii_lowercase();
    let retry = answer
        .retry_after
        .as_ref()
        .map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9);
    Ok(match g.output {
        Output::Json => crate::pretty(&json!({
            "allowed": answer.allowed,
            "action": action,
            "reason": answer.reason,
            "downgrade_to": answer.downgrade_to,
            "retry_after_seconds": retry,
            "limits": answer.statuses.iter().map(|s| render::status_json(s, now)).collect::<Vec<_>>(),
        })),
        Output::Table => {
            let mut out = String::new();
            let verdict = if answer.allowed { "ALLOWED" } else { "DENIED" };
            let _ = writeln!(out, "{verdict} (action {action})");
            if !answer.reason.is_empty() {
                let _ = writeln!(out, "reason: {}", answer.reason);
            }
            if !answer.downgrade_to.is_empty() {
                let _ = writeln!(out, "downgrade to: {}", answer.downgrade_to);
            }
            if let Some(r) = retry {
                let _ = writeln!(out, "retry after: {r:.0}s");
            }
            if !answer.statuses.is_empty() {
                let _ = writeln!(out, "{}", render::status_table(&answer.statuses, now));
            }
            out
        }
    })
}
