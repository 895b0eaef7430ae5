//! `limitsctl usage`: one subject's limits, usage, reservations and leases
//! (the data plane's GetUsage).

use std::fmt::Write as _;
use std::time::SystemTime;

use limits_server::pb;
use serde_json::json;

use crate::cli::{Global, Output, UsageArgs};
use crate::connect::Conn;
use crate::error::{Api, Error};
use crate::render;
use crate::subject::dimension_name;

pub async fn run(g: &Global, args: &UsageArgs) -> Result<String, Error> {
    let output = g.output;
    let conn = Conn::open(g).await?;
    let answer = conn
        .limits()
        .get_usage(pb::GetUsageRequest {
            subject: Some(args.subject.pb()),
        })
        .await
        .map_err(conn.failed(Api::Data))?
        .into_inner();
    let now = SystemTime::now();
    Ok(match output {
        Output::Json => json(&args.subject, &answer, now),
        Output::Table => table(&args.subject, &answer, now),
    })
}

fn table(subject: &crate::subject::Subject, u: &pb::GetUsageResponse, now: SystemTime) -> String {
    let mut out = String::new();
    if u.statuses.is_empty() {
        let _ = writeln!(
            out,
            "{subject}: no limits apply (no runtime entry, config entry or default)"
        );
    } else {
        let _ = writeln!(out, "{}", render::status_table(&u.statuses, now));
    }
    out.push('\n');
    if u.reservations.is_empty() {
        out.push_str("Reservations: none\n");
    } else {
        let mut t = render::table(&["reservation", "held", "tokens", "expires"]);
        for r in &u.reservations {
            t.add_row([
                r.reservation_id.clone(),
                render::usd(r.held_cost_usd),
                r.held_tokens.to_string(),
                render::when(r.expires_at.as_ref(), now),
            ]);
        }
        render::align_right(&mut t, &[1, 2]);
        let _ = writeln!(out, "Reservations:\n{t}");
    }
    if u.leases.is_empty() {
        out.push_str("Leases: none\n");
    } else {
        let mut t = render::table(&["lease", "expires"]);
        for l in &u.leases {
            t.add_row([l.lease_id.clone(), render::when(l.expires_at.as_ref(), now)]);
        }
        let _ = writeln!(out, "Leases:\n{t}");
    }
    out
}

fn json(subject: &crate::subject::Subject, u: &pb::GetUsageResponse, now: SystemTime) -> String {
    // The subject as asked, except that an API key is never printed.
    let id = match subject.dimension {
        pb::Dimension::ApiKey => serde_json::Value::Null,
        _ => json!(subject.id),
    };
    let doc = json!({
        "subject": { "dimension": dimension_name(subject.dimension), "id": id },
        "limits": u.statuses.iter().map(|s| render::status_json(s, now)).collect::<Vec<_>>(),
        "reservations": u.reservations.iter().map(|r| json!({
            "reservation_id": r.reservation_id,
            "held_cost_usd": r.held_cost_usd,
            "held_tokens": r.held_tokens,
            "expires_at": render::when_json(r.expires_at.as_ref()),
        })).collect::<Vec<_>>(),
        "leases": u.leases.iter().map(|l| json!({
            "lease_id": l.lease_id,
            "expires_at": render::when_json(l.expires_at.as_ref()),
        })).collect::<Vec<_>>(),
    });
    crate::pretty(&doc)
}
