//! How answers are shown: tables for people (amounts in their unit, times
//! in RFC 3339 UTC with a relative form, a bar of the fraction used) and
//! JSON for scripts (numbers as numbers, times as RFC 3339 text).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comfy_table::{Cell, CellAlignment, ContentArrangement, Table, presets};
use limits_core::NanoUsd;
use limits_server::pb;
use serde_json::{Value, json};

use crate::kind::{Kind, name_of};

/// A table that fits the terminal (when there is one), in the plain style
/// of kubectl's: columns, a header, no borders to copy around.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().map(|h| Cell::new(h.to_uppercase())));
    t
}

/// Right-aligns the columns at `indexes` (the amounts).
pub fn align_right(t: &mut Table, indexes: &[usize]) {
    for &i in indexes {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// Dollars with exactly the precision the amount needs: `$1.50`,
/// `$0.000123`, `-$0.50` (amounts are whole nano-dollars inside limitsd).
pub fn usd(v: f64) -> String {
    let sign = if v < 0.0 { "-" } else { "" };
    match NanoUsd::try_from_usd(v.abs()) {
        Ok(n) => format!("{sign}${n}"),
        Err(_) => format!("{sign}${}", v.abs()),
    }
}

/// An amount of `kind` as a table shows it: USD for budgets, a whole
/// number otherwise.
pub fn amount(kind: Option<Kind>, v: f64) -> String {
    match kind {
        Some(k) if k.is_usd() => usd(v),
        _ => count(v).to_string(),
    }
}

/// An amount of `kind` as JSON: a number, whole for counts.
pub fn amount_json(kind: Option<Kind>, v: f64) -> Value {
    match kind {
        Some(k) if k.is_usd() => json!(v),
        _ => match count(v) {
            Count::Whole(n) => json!(n),
            Count::Other(v) => json!(v),
        },
    }
}

/// A fraction as a percentage, with the precision it has (to 1/10000 of
/// a percent): `80%`, `95%`, `33.3%`.
pub fn percent(fraction: f64) -> String {
    let text = format!("{:.4}", fraction * 100.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// A count from the wire's double: whole, or (from a newer server, or a
/// bad one) not.
enum Count {
    Whole(i64),
    Other(f64),
}

fn count(v: f64) -> Count {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        Count::Whole(v as i64)
    } else {
        Count::Other(v)
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Count::Whole(n) => write!(f, "{n}"),
            Count::Other(v) => write!(f, "{v}"),
        }
    }
}

/// A duration in its two largest units: `45s`, `12m30s`, `3h12m`, `6d23h`.
pub fn compact(d: Duration) -> String {
    let s = d.as_secs();
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let Some(first) = units.iter().position(|&(n, _)| s >= n) else {
        return if d.is_zero() { "0s" } else { "<1s" }.to_owned();
    };
    let mut out = String::new();
    let mut left = s;
    for &(n, unit) in units.iter().skip(first).take(2) {
        let v = left / n;
        left %= n;
        if v > 0 || out.is_empty() {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    out
}

/// An instant of the wire, if it is one.
pub fn instant(t: &prost_types::Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// An instant in RFC 3339, UTC, to the second.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// When, for a table: `2025-07-01T12:00:00Z (in 3h12m)`, or `-` for none.
pub fn when(t: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    match t.and_then(instant) {
        None => "-".to_owned(),
        Some(t) => format!("{} ({})", rfc3339(t), relative(t, now)),
    }
}

/// `in 3h12m`, `5m ago` or `now`.
pub fn relative(t: SystemTime, now: SystemTime) -> String {
    match t.duration_since(now) {
        Ok(d) if d.as_secs() >= 1 => format!("in {}", compact(d)),
        Ok(_) => "now".to_owned(),
        Err(e) if e.duration().as_secs() >= 1 => format!("{} ago", compact(e.duration())),
        Err(_) => "now".to_owned(),
    }
}

/// When, for JSON: RFC 3339 text, or null.
pub fn when_json(t: Option<&prost_types::Timestamp>) -> Value {
    match t.and_then(instant) {
        Some(t) => json!(rfc3339(t)),
        None => Value::Null,
    }
}

/// Seconds from `now` until `t` (negative when past), or null.
pub fn seconds_until_json(t: Option<&prost_types::Timestamp>, now: SystemTime) -> Value {
    match t.and_then(instant) {
        None => Value::Null,
        Some(t) => match t.duration_since(now) {
            Ok(d) => json!(d.as_secs()),
            Err(e) => json!(-(e.duration().as_secs() as i64)),
        },
    }
}

/// A bar of the fraction used, ten cells wide: `██████░░░░ 61%`.
pub fn bar(used: f64, limit: f64) -> String {
    if limit.is_nan() || limit <= 0.0 {
        return "-".to_owned();
    }
    let fraction = (used / limit).max(0.0);
    let filled = ((fraction * 10.0).floor() as usize).min(10);
    format!(
        "{}{} {:.0}%",
        "█".repeat(filled),
        "░".repeat(10 - filled),
        fraction * 100.0
    )
}

/// Where a limit comes from, as a table shows it.
pub fn source(raw: i32) -> &'static str {
    match pb::LimitSource::try_from(raw) {
        Ok(pb::LimitSource::Default) => "default",
        Ok(pb::LimitSource::Config) => "config",
        Ok(pb::LimitSource::Runtime) => "runtime",
        Ok(pb::LimitSource::Unspecified) | Err(_) => "-",
    }
}

/// The model scope of a status, as a table shows it: its pattern, or `-`
/// for the subject's own limits.
pub fn scope(s: &pb::LimitStatus) -> &str {
    if s.model_scope.is_empty() {
        "-"
    } else {
        &s.model_scope
    }
}

/// A table of limit statuses: one row per limit. The model column shows
/// only when a status belongs to a model scope, and the source column only
/// when the answer has sources (GetUsage's do; the admin API's answers
/// after an adjustment do not).
pub fn status_table(statuses: &[pb::LimitStatus], now: SystemTime) -> Table {
    let with_scope = statuses.iter().any(|s| !s.model_scope.is_empty());
    let with_source = statuses.iter().any(|s| s.source != 0);
    let mut header = vec!["limit"];
    if with_scope {
        header.push("model");
    }
    header.extend(["window", "max", "used", "remaining", "reset"]);
    if with_source {
        header.push("source");
    }
    header.push("used %");
    let mut t = table(&header);
    for s in statuses {
        let kind = Kind::from_pb(s.kind);
        let mut window = s
            .window
            .as_ref()
            .and_then(|w| Duration::try_from(*w).ok())
            .map_or_else(|| "-".to_owned(), compact);
        if s.period == pb::BudgetPeriod::Calendar as i32 {
            window.push_str(", calendar");
        }
        let mut max = amount(kind, s.limit);
        if s.raised > 0.0 {
            max = format!("{max} (+{} raised)", amount(kind, s.raised));
        }
        let mut row = vec![name_of(s.kind)];
        if with_scope {
            row.push(scope(s).to_owned());
        }
        row.extend([
            window,
            max,
            amount(kind, s.used),
            amount(kind, s.remaining),
            when(s.reset_at.as_ref(), now),
        ]);
        if with_source {
            row.push(source(s.source).to_owned());
        }
        row.push(bar(s.used, s.limit));
        t.add_row(row);
    }
    // MAX, USED and REMAINING, after LIMIT, MODEL (if shown) and WINDOW.
    let max = if with_scope { 3 } else { 2 };
    align_right(&mut t, &[max, max + 1, max + 2]);
    t
}

/// A limit status as JSON.
pub fn status_json(s: &pb::LimitStatus, now: SystemTime) -> Value {
    let kind = Kind::from_pb(s.kind);
    let window = s
        .window
        .as_ref()
        .and_then(|w| Duration::try_from(*w).ok())
        .map_or(Value::Null, |w| json!(w.as_secs()));
    let fraction = if s.limit > 0.0 {
        json!(s.used / s.limit)
    } else {
        Value::Null
    };
    json!({
        "limit": name_of(s.kind),
        // The scope's pattern; null for the subject's own limits.
        "model_scope": (!s.model_scope.is_empty()).then(|| s.model_scope.clone()),
        "unit": kind.map_or("", |k| if k.is_usd() { "usd" } else { "count" }),
        "window_seconds": window,
        "max": amount_json(kind, s.limit),
        "used": amount_json(kind, s.used),
        "remaining": amount_json(kind, s.remaining),
        "raised": amount_json(kind, s.raised),
        "fraction_used": fraction,
        "reset_at": when_json(s.reset_at.as_ref()),
        "reset_in_seconds": seconds_until_json(s.reset_at.as_ref(), now),
        "source": match source(s.source) {
            "-" => Value::Null,
            shown => json!(shown),
        },
        "exceeded": s.exceeded,
        "period": match pb::BudgetPeriod::try_from(s.period) {
            Ok(pb::BudgetPeriod::Rolling) => json!("rolling"),
            Ok(pb::BudgetPeriod::Calendar) => json!("calendar"),
            _ => Value::Null,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_money_with_the_precision_it_has() {
        assert_eq!(usd(1.5), "$1.50");
        assert_eq!(usd(0.000123), "$0.000123");
        assert_eq!(usd(-0.5), "-$0.50");
        assert_eq!(usd(25000.0), "$25000.00");
        // A double's error does not show up as a nano-dollar.
        assert_eq!(usd(0.1 + 0.2), "$0.30");
    }

    #[test]
    fn shows_fractions_as_percentages() {
        assert_eq!(percent(0.5), "50%");
        // 0.95 * 100 is 94.99999999999999 in binary.
        assert_eq!(percent(0.95), "95%");
        assert_eq!(percent(0.333), "33.3%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.005), "0.5%");
    }

    #[test]
    fn shows_durations_in_two_units() {
        assert_eq!(compact(Duration::from_secs(45)), "45s");
        assert_eq!(
            compact(Duration::from_secs(3 * 3600 + 12 * 60 + 5)),
            "3h12m"
        );
        assert_eq!(compact(Duration::from_secs(86_400)), "1d");
        assert_eq!(compact(Duration::from_secs(30 * 86_400)), "30d");
        assert_eq!(compact(Duration::from_secs(3600 + 5)), "1h");
        assert_eq!(compact(Duration::from_secs(750)), "12m30s");
        assert_eq!(compact(Duration::ZERO), "0s");
    }

    #[test]
    fn draws_the_fraction_used() {
        assert_eq!(bar(0.61, 1.0), "██████░░░░ 61%");
        assert_eq!(bar(0.0, 1.0), "░░░░░░░░░░ 0%");
        assert_eq!(bar(3.0, 2.0), "██████████ 150%");
        assert_eq!(bar(1.0, 0.0), "-");
    }

    #[test]
    fn names_the_model_scope_of_a_status_only_when_there_is_one() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let status = |scope: &str, limit: f64| pb::LimitStatus {
            kind: pb::LimitKind::BudgetDaily as i32,
            limit,
            model_scope: scope.to_owned(),
            ..Default::default()
        };
        let own = status_table(&[status("", 10.0)], now).to_string();
        assert!(!own.contains("MODEL"), "{own}");
        let both = status_table(&[status("", 10.0), status("gpt-4*", 2.0)], now).to_string();
        let cells: Vec<Vec<&str>> = both
            .lines()
            .map(|l| l.split_whitespace().take(2).collect())
            .collect();
        assert_eq!(
            cells,
            [["LIMIT", "MODEL"], ["daily", "-"], ["daily", "gpt-4*"]],
            "{both}"
        );
        assert_eq!(
            status_json(&status("gpt-4*", 2.0), now)["model_scope"],
            "gpt-4*"
        );
        assert_eq!(
            status_json(&status("", 2.0), now)["model_scope"],
            Value::Null
        );
    }

    #[test]
    fn says_when_relative_to_now() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let later = now + Duration::from_secs(3 * 3600 + 12 * 60);
        assert_eq!(relative(later, now), "in 3h12m");
        assert_eq!(relative(now, later), "3h12m ago");
        let ts = prost_types::Timestamp::from(later);
        assert_eq!(when(Some(&ts), now), "2023-11-15T01:25:20Z (in 3h12m)");
    }
}
