//! `limitsctl audit`: the admin changes made, newest first
//! (ListAuditEvents), each with a compact "before → after".

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use limits_server::pb::admin as apb;
use serde_json::{Value, json};

use crate::cli::{AuditArgs, Global, Output};
use crate::connect::Conn;
use crate::error::{Api, Error};
use crate::render;

pub async fn run(g: &Global, args: &AuditArgs) -> Result<String, Error> {
    let output = g.output;
    let conn = Conn::open(g).await?;
    let mut client = conn.admin();
    let mut events = Vec::new();
    let mut token = args.page_token.clone().unwrap_or_default();
    let next = loop {
        let page = client
            .list_audit_events(apb::ListAuditEventsRequest {
                page_size: args.page_size.unwrap_or(0),
                page_token: token,
            })
            .await
            .map_err(conn.failed(Api::Admin))?
            .into_inner();
        events.extend(page.events);
        if !args.all || page.next_page_token.is_empty() {
            break page.next_page_token;
        }
        token = page.next_page_token;
    };
    Ok(match output {
        Output::Json => crate::pretty(&json!({
            "events": events.iter().map(event_json).collect::<Vec<_>>(),
            "next_page_token": next,
        })),
        Output::Table => {
            if events.is_empty() {
                return Ok("No admin changes recorded.\n".to_owned());
            }
            let now = SystemTime::now();
            let mut t = render::table(&["time", "actor", "method", "subject", "reason", "change"]);
            for e in &events {
                t.add_row([
                    render::when(e.time.as_ref(), now),
                    e.actor.clone(),
                    e.method.clone(),
                    e.subject.clone(),
                    e.reason.clone(),
                    change(&e.before, &e.after),
                ]);
            }
            let mut out = format!("{t}\n");
            if !next.is_empty() {
                let size = args.page_size.unwrap_or(100);
                let _ = writeln!(
                    out,
                    "\nOlder: --page-size {size} --page-token {next} (or --all)"
                );
            }
            out
        }
    })
}

fn event_json(e: &apb::AuditEvent) -> Value {
    json!({
        "time": render::when_json(e.time.as_ref()),
        "actor": e.actor,
        "method": e.method,
        "subject": e.subject,
        "reason": e.reason,
        "before": parse(&e.before),
        "after": parse(&e.after),
    })
}

/// A state of the trail as JSON: null when there was none, the text itself
/// if it is not JSON (from a newer server).
fn parse(s: &str) -> Value {
    if s.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(s).unwrap_or_else(|_| json!(s))
}

/// What changed, compactly: `daily 1.0 → 0.5, alias – → research`; the
/// fields that stayed the same are left out.
fn change(before: &str, after: &str) -> String {
    let (b, a) = (flatten(&parse(before)), flatten(&parse(after)));
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    let parts: Vec<String> = keys
        .into_iter()
        .filter(|k| b.get(*k) != a.get(*k))
        .map(|k| {
            let side = |m: &BTreeMap<String, String>| m.get(k).cloned().unwrap_or("–".into());
            format!("{k} {} → {}", side(&b), side(&a))
        })
        .collect();
    if parts.is_empty() {
        "no change".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The leaves of a state, by path. The entry's `limits` are named by the
/// limit alone (`daily`, not `limits.daily`), a model scope's by its
/// pattern (`models.gpt-4*.daily`); a list of increases shows as one leaf.
fn flatten(v: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let path = match prefix {
                        "" | "limits" => k.clone(),
                        p => format!("{p}.{k}"),
                    };
                    walk(&path, v, out);
                }
            }
            Value::Array(items) => {
                let shown: Vec<String> = items.iter().map(item).collect();
                let shown = if shown.is_empty() {
                    "none".to_owned()
                } else {
                    shown.join("; ")
                };
                out.insert(prefix.to_owned(), shown);
            }
            Value::Null => {}
            Value::String(s) => {
                out.insert(prefix.to_owned(), s.clone());
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

/// One item of a list: an increase as `daily +1.0 until <time>`, anything
/// else as JSON.
fn item(v: &Value) -> String {
    match (v.get("kind"), v.get("amount"), v.get("expire_time")) {
        (Some(Value::String(k)), Some(a), Some(Value::String(t))) => format!("{k} +{a} until {t}"),
        _ => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_what_changed() {
        assert_eq!(
            change(
                r#"{"limits":{"daily":1.0,"requests_per_minute":5}}"#,
                r#"{"limits":{"daily":0.5,"requests_per_minute":5},"alias":"x"}"#
            ),
            "alias – → x, daily 1.0 → 0.5"
        );
        assert_eq!(
            change("", r#"{"limits":{"monthly":25000.0}}"#),
            "monthly – → 25000.0"
        );
        assert_eq!(change(r#"{"limits":{"daily":2.0}}"#, ""), "daily 2.0 → –");
        assert_eq!(
            change(r#"{"used":{"daily":1.5}}"#, r#"{"used":{"daily":1.0}}"#),
            "used.daily 1.5 → 1.0"
        );
        assert_eq!(
            change(
                r#"{"increases":[]}"#,
                r#"{"increases":[{"kind":"daily","amount":1.0,"expire_time":"2030-01-01T00:00:00Z"}]}"#
            ),
            "increases none → daily +1.0 until 2030-01-01T00:00:00Z"
        );
        // A model scope's limits, by the scope's pattern.
        assert_eq!(
            change(
                r#"{"limits":{"daily":5.0},"models":{"gpt-4*":{"daily":1.0}}}"#,
                r#"{"limits":{"daily":5.0},"models":{"gpt-4*":{"daily":2.0},"o1":{"requests_per_minute":5}}}"#
            ),
            "models.gpt-4*.daily 1.0 → 2.0, models.o1.requests_per_minute – → 5"
        );
    }
}
