//! `limitsctl alerts watch`: budget alert events as limitsd sends them
//! (the data plane's WatchAlerts), one line each, printed as they arrive.

use std::io::Write as _;

use limits_server::pb;
use serde_json::{Value, json};

use crate::cli::{Global, Output, WatchArgs};
use crate::connect::Conn;
use crate::error::{Api, Error};
use crate::render;
use crate::subject::dimension_name;

/// The columns of the text output and their widths (a longer value pushes
/// the rest of its line to the right).
const COLUMNS: [(&str, usize); 7] = [
    ("TIME", 20),
    ("SUBJECT", 24),
    ("MODEL", 12),
    ("BUDGET", 8),
    ("THRESHOLD", 9),
    ("USED", 12),
    ("LIMIT", 12),
];

/// Streams the events to stdout until --count of them, or until limitsd
/// ends the stream (an error: exit 1). Everything is printed here, line by
/// line; the answer left for `main` to print is empty.
pub async fn watch(g: &Global, args: &WatchArgs) -> Result<String, Error> {
    let conn = Conn::open(g).await?;
    // Answered once limitsd has subscribed this stream: every event from
    // now on is sent on it.
    let mut stream = conn
        .limits()
        .watch_alerts(pb::WatchAlertsRequest {})
        .await
        .map_err(conn.failed(Api::Data))?
        .into_inner();
    eprintln!(
        "limitsctl: watching alerts on {} (Ctrl-C to stop)",
        conn.addr
    );
    if g.output == Output::Table && !print(&header())? {
        return Ok(String::new());
    }
    let mut seen = 0u64;
    while args.count.is_none_or(|n| seen < n) {
        let message = stream
            .message()
            .await
            .map_err(conn.failed(Api::Data))?
            .ok_or_else(|| {
                Error::Local(format!(
                    "limitsd at {} ended the alert stream (is it shutting down?)",
                    conn.addr
                ))
            })?;
        let Some(event) = message.event else {
            continue;
        };
        let text = match g.output {
            Output::Table => line(&event),
            Output::Json => event_json(&event).to_string(),
        };
        if !print(&text)? {
            break;
        }
        seen += 1;
    }
    Ok(String::new())
}

/// Prints one line at once (a pipe's reader sees each event as it comes);
/// false when the reader went away (`limitsctl alerts watch | head -1`),
/// which ends the watch without an error.
fn print(text: &str) -> Result<bool, Error> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Error::Local(format!("cannot write the event: {e}"))),
    }
}

/// Cells padded to their column's width, two spaces apart; USED and LIMIT
/// aligned to the right.
fn columns(cells: [&str; 7]) -> String {
    let mut out = String::new();
    for (i, (cell, (_, width))) in cells.iter().zip(COLUMNS).enumerate() {
        if i > 0 {
            out.push_str("  ");
        }
        if i >= 5 {
            out.push_str(&format!("{cell:>width$}"));
        } else {
            out.push_str(&format!("{cell:<width$}"));
        }
    }
    out.trim_end().to_owned()
}

fn header() -> String {
    columns(COLUMNS.map(|(name, _)| name))
}

/// The subject as the event names it: `team:research`, `api_key:acme`
/// (an API key by its alias or keyed-hash prefix, never the key).
fn subject(e: &pb::AlertEvent) -> String {
    let dimension = pb::Dimension::try_from(e.dimension).map_or_else(
        |_| format!("dimension {}", e.dimension),
        |d| dimension_name(d).to_owned(),
    );
    format!("{dimension}:{}", e.subject)
}

/// One event as a line of the text output.
fn line(e: &pb::AlertEvent) -> String {
    let time = e
        .time
        .as_ref()
        .and_then(render::instant)
        .map_or_else(|| "-".to_owned(), render::rfc3339);
    let model = if e.model_scope.is_empty() {
        "-"
    } else {
        &e.model_scope
    };
    columns([
        &time,
        &subject(e),
        model,
        &crate::kind::name_of(e.kind),
        &render::percent(e.threshold),
        &render::usd(e.used_usd),
        &render::usd(e.limit_usd),
    ])
}

/// One event as JSON: the body the webhooks get.
fn event_json(e: &pb::AlertEvent) -> Value {
    let dimension =
        pb::Dimension::try_from(e.dimension).map_or(Value::Null, |d| json!(dimension_name(d)));
    json!({
        "id": e.id,
        "type": "budget.threshold_crossed",
        "dimension": dimension,
        "subject": e.subject,
        // null for the subject's own budget.
        "model_scope": (!e.model_scope.is_empty()).then(|| e.model_scope.clone()),
        "budget": crate::kind::name_of(e.kind),
        "period": match pb::BudgetPeriod::try_from(e.period) {
            Ok(pb::BudgetPeriod::Rolling) => json!("rolling"),
            Ok(pb::BudgetPeriod::Calendar) => json!("calendar"),
            _ => Value::Null,
        },
        "threshold": e.threshold,
        "used_usd": e.used_usd,
        "limit_usd": e.limit_usd,
        "time": render::when_json(e.time.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn event(scope: &str) -> pb::AlertEvent {
        pb::AlertEvent {
            id: "0123456789abcdef0123456789abcdef".into(),
            dimension: pb::Dimension::Team as i32,
            subject: "research".into(),
            model_scope: scope.into(),
            kind: pb::LimitKind::BudgetDaily as i32,
            period: pb::BudgetPeriod::Calendar as i32,
            threshold: 0.8,
            used_usd: 81.5,
            limit_usd: 100.0,
            time: Some((UNIX_EPOCH + Duration::from_secs(1_700_000_000)).into()),
        }
    }

    #[test]
    fn a_line_per_event_under_the_header() {
        let cells = |s: &str| -> Vec<String> { s.split_whitespace().map(String::from).collect() };
        assert_eq!(
            cells(&header()),
            [
                "TIME",
                "SUBJECT",
                "MODEL",
                "BUDGET",
                "THRESHOLD",
                "USED",
                "LIMIT"
            ]
        );
        assert_eq!(
            cells(&line(&event(""))),
            [
                "2023-11-14T22:13:20Z",
                "team:research",
                "-",
                "daily",
                "80%",
                "$81.50",
                "$100.00"
            ]
        );
        assert_eq!(cells(&line(&event("gpt-4*")))[2], "gpt-4*");
        // The columns line up: each cell starts under its header.
        let (h, l) = (header(), line(&event("gpt-4*")));
        for (name, cell) in [
            ("MODEL", "gpt-4*"),
            ("BUDGET", "daily"),
            ("THRESHOLD", "80%"),
        ] {
            assert_eq!(h.find(name), l.find(cell), "{h}\n{l}");
        }
        assert_eq!(h.len(), l.len(), "USED and LIMIT end under theirs");
    }

    #[test]
    fn json_is_the_webhooks_body() {
        assert_eq!(
            event_json(&event("gpt-4*")),
            json!({
                "id": "0123456789abcdef0123456789abcdef",
                "type": "budget.threshold_crossed",
                "dimension": "team",
                "subject": "research",
                "model_scope": "gpt-4*",
                "budget": "daily",
                "period": "calendar",
                "threshold": 0.8,
                "used_usd": 81.5,
                "limit_usd": 100.0,
                "time": "2023-11-14T22:13:20Z",
            })
        );
        assert_eq!(event_json(&event(""))["model_scope"], Value::Null);
    }
}
