//! `limitsctl limits`: subjects' runtime entries (Get, List, Update with a
//! field mask, Delete of the admin API).

use std::fmt::Write as _;
use std::time::SystemTime;

use limits_core::LimitKind;
use limits_server::pb;
use limits_server::pb::admin as apb;
use serde_json::{Value, json};

use crate::cli::{DeleteArgs, DimensionArg, Field, GetArgs, Global, ListArgs, Output, SetArgs};
use crate::connect::Conn;
use crate::error::{Api, Error};
use crate::kind::Kind;
use crate::render;
use crate::subject::shown;

pub async fn get(g: &Global, args: &GetArgs) -> Result<String, Error> {
    let output = g.output;
    let conn = Conn::open(g).await?;
    let entry = conn
        .admin()
        .get_subject_limits(apb::GetSubjectLimitsRequest {
            subject: Some(args.subject.pb()),
        })
        .await
        .map_err(conn.failed(Api::Admin))?
        .into_inner()
        .subject_limits
        .unwrap_or_default();
    Ok(one(&entry, output))
}

pub async fn list(g: &Global, args: &ListArgs) -> Result<String, Error> {
    let output = g.output;
    let dimension = match args.dimension {
        None => pb::Dimension::Unspecified,
        Some(DimensionArg::ApiKey) => pb::Dimension::ApiKey,
        Some(DimensionArg::User) => pb::Dimension::User,
        Some(DimensionArg::Team) => pb::Dimension::Team,
    };
    let conn = Conn::open(g).await?;
    let mut client = conn.admin();
    let mut entries = Vec::new();
    let mut token = args.page_token.clone().unwrap_or_default();
    // With --page-size and --page-token, that one page; otherwise every
    // page from there on.
    let one_page = args.page_token.is_some() && args.page_size.is_some();
    let next = loop {
        let page = client
            .list_subject_limits(apb::ListSubjectLimitsRequest {
                dimension: dimension as i32,
                page_size: args.page_size.unwrap_or(0),
                page_token: token,
            })
            .await
            .map_err(conn.failed(Api::Admin))?
            .into_inner();
        entries.extend(page.subject_limits);
        if one_page || page.next_page_token.is_empty() {
            break page.next_page_token;
        }
        token = page.next_page_token;
    };
    let now = SystemTime::now();
    Ok(match output {
        Output::Json => crate::pretty(&json!({
            "subject_limits": entries.iter().map(entry_json).collect::<Vec<_>>(),
            "next_page_token": next,
        })),
        Output::Table => {
            if entries.is_empty() {
                return Ok("No runtime entries: every subject has its config limits.\n".to_owned());
            }
            let mut t = render::table(&["subject", "alias", "limits", "expires", "updated"]);
            for e in &entries {
                t.add_row([
                    shown(e.subject.as_ref(), &e.key_hash),
                    e.alias.clone(),
                    limits_text(e),
                    expires_text(e, now),
                    render::when(e.update_time.as_ref(), now),
                ]);
            }
            let mut out = format!("{t}\n");
            if !next.is_empty() {
                let size = args.page_size.unwrap_or(100);
                let _ = writeln!(out, "\nMore: --page-size {size} --page-token {next}");
            }
            out
        }
    })
}

pub async fn set(g: &Global, args: &SetArgs) -> Result<String, Error> {
    let output = g.output;
    let (entry, mask) = update(args, SystemTime::now())?;
    let conn = Conn::open(g).await?;
    let entry = conn
        .admin()
        .update_subject_limits(apb::UpdateSubjectLimitsRequest {
            subject: Some(args.subject.pb()),
            subject_limits: Some(entry),
            update_mask: Some(prost_types::FieldMask {
                paths: mask.iter().map(|f| f.mask().to_owned()).collect(),
            }),
            etag: args.etag.clone().unwrap_or_default(),
            allow_missing: true,
            reason: args.reason.clone(),
        })
        .await
        .map_err(conn.failed(Api::Admin))?
        .into_inner()
        .subject_limits
        .unwrap_or_default();
    Ok(one(&entry, output))
}

pub async fn delete(g: &Global, args: &DeleteArgs) -> Result<String, Error> {
    let output = g.output;
    let conn = Conn::open(g).await?;
    conn.admin()
        .delete_subject_limits(apb::DeleteSubjectLimitsRequest {
            subject: Some(args.subject.pb()),
            etag: args.etag.clone().unwrap_or_default(),
            reason: args.reason.clone(),
        })
        .await
        .map_err(conn.failed(Api::Admin))?;
    Ok(match output {
        Output::Json => crate::pretty(&json!({ "deleted": args.subject.to_string() })),
        Output::Table => format!(
            "Deleted the runtime entry of {}: its config limits (or its dimension's default) apply again.\n",
            args.subject
        ),
    })
}

/// The entry values and the update mask of `limits set`: exactly the
/// fields given, and those cleared (named in the mask, left unset).
fn update(args: &SetArgs, now: SystemTime) -> Result<(apb::SubjectLimits, Vec<Field>), Error> {
    let mut e = apb::SubjectLimits::default();
    let mut set = Vec::new();
    let mut put = |field: Field, given: bool| {
        if given {
            set.push(field);
        }
    };
    put(Field::Hourly, args.hourly.is_some());
    put(Field::Daily, args.daily.is_some());
    put(Field::Weekly, args.weekly.is_some());
    put(Field::Monthly, args.monthly.is_some());
    put(Field::Calendar, args.calendar.is_some());
    put(Field::Rps, args.rps.is_some());
    put(Field::Rpm, args.rpm.is_some());
    put(Field::Rph, args.rph.is_some());
    put(Field::Tpm, args.tpm.is_some());
    put(Field::Tph, args.tph.is_some());
    put(Field::Itpm, args.itpm.is_some());
    put(Field::Itph, args.itph.is_some());
    put(Field::Otpm, args.otpm.is_some());
    put(Field::Otph, args.otph.is_some());
    put(Field::MaxConcurrent, args.max_concurrent.is_some());
    put(Field::Alias, args.alias.is_some());
    put(
        Field::Expires,
        args.expires.is_some() || args.expires_in.is_some(),
    );
    e.hourly_usd = args.hourly;
    e.daily_usd = args.daily;
    e.weekly_usd = args.weekly;
    e.monthly_usd = args.monthly;
    e.calendar = args.calendar.as_ref().map(|zone| apb::BudgetCalendar {
        time_zone: zone.clone(),
        week_start: args.week_start.clone().unwrap_or_default(),
        month_anchor_day: args.month_anchor_day.unwrap_or(0),
    });
    e.requests_per_second = args.rps;
    e.requests_per_minute = args.rpm;
    e.requests_per_hour = args.rph;
    e.tokens_per_minute = args.tpm;
    e.tokens_per_hour = args.tph;
    e.input_tokens_per_minute = args.itpm;
    e.input_tokens_per_hour = args.itph;
    e.output_tokens_per_minute = args.otpm;
    e.output_tokens_per_hour = args.otph;
    e.max_concurrent = args.max_concurrent;
    e.alias = args.alias.clone().unwrap_or_default();
    e.expire_time = args
        .expires
        .or_else(|| args.expires_in.map(|d| now + d))
        .map(prost_types::Timestamp::from);
    if let Some(f) = args.clear.iter().find(|f| set.contains(f)) {
        return Err(Error::Usage(format!(
            "{} is both set and cleared",
            f.flag()
        )));
    }
    for &f in &args.clear {
        if !set.contains(&f) {
            set.push(f);
        }
    }
    if set.is_empty() {
        return Err(Error::Usage(
            "nothing to set: give at least one of --hourly, --daily, --weekly, --monthly, \
             --calendar, --rps, --rpm, --rph, --tpm, --tph, --itpm, --itph, --otpm, --otph, \
             --max-concurrent, --alias, --expires, --expires-in or --clear"
                .to_owned(),
        ));
    }
    Ok((e, set))
}

/// The limits an entry sets, with their kinds, in the API's order.
fn limits(e: &apb::SubjectLimits) -> Vec<(Kind, f64)> {
    let usd = [
        (LimitKind::BudgetHourly, e.hourly_usd),
        (LimitKind::BudgetDaily, e.daily_usd),
        (LimitKind::BudgetWeekly, e.weekly_usd),
        (LimitKind::BudgetMonthly, e.monthly_usd),
    ];
    let counts = [
        (LimitKind::RequestsPerSecond, e.requests_per_second),
        (LimitKind::RequestsPerMinute, e.requests_per_minute),
        (LimitKind::RequestsPerHour, e.requests_per_hour),
        (LimitKind::TokensPerMinute, e.tokens_per_minute),
        (LimitKind::TokensPerHour, e.tokens_per_hour),
        (LimitKind::InputTokensPerMinute, e.input_tokens_per_minute),
        (LimitKind::InputTokensPerHour, e.input_tokens_per_hour),
        (LimitKind::OutputTokensPerMinute, e.output_tokens_per_minute),
        (LimitKind::OutputTokensPerHour, e.output_tokens_per_hour),
        (LimitKind::MaxConcurrent, e.max_concurrent.map(u64::from)),
    ];
    let usd = usd.into_iter().filter_map(|(k, v)| Some((Kind(k), v?)));
    let counts = counts
        .into_iter()
        .filter_map(|(k, v)| Some((Kind(k), v? as f64)));
    usd.chain(counts).collect()
}

fn limits_text(e: &apb::SubjectLimits) -> String {
    let shown: Vec<String> = limits(e)
        .into_iter()
        .map(|(k, v)| format!("{} {}", k.name(), render::amount(Some(k), v)))
        .collect();
    if shown.is_empty() {
        "none (unlimited)".to_owned()
    } else {
        shown.join(", ")
    }
}

/// Where an entry's calendar periods begin: `Europe/Paris, weeks from
/// monday, months from day 1`.
fn calendar_text(c: &apb::BudgetCalendar) -> String {
    format!(
        "{}, weeks from {}, months from day {}",
        c.time_zone, c.week_start, c.month_anchor_day
    )
}

fn expires_text(e: &apb::SubjectLimits, now: SystemTime) -> String {
    match &e.expire_time {
        None => "never".to_owned(),
        Some(t) => render::when(Some(t), now),
    }
}

fn increase_text(i: &apb::BudgetIncrease, now: SystemTime) -> String {
    let kind = Kind::from_pb(i.kind);
    format!(
        "{} +{} until {}: {}",
        crate::kind::name_of(i.kind),
        render::amount(kind, i.amount),
        render::when(i.expire_time.as_ref(), now),
        i.reason
    )
}

/// One entry: a two-column table of its fields, or JSON.
fn one(e: &apb::SubjectLimits, output: Output) -> String {
    if output == Output::Json {
        return crate::pretty(&entry_json(e));
    }
    let now = SystemTime::now();
    let mut t = render::table(&["field", "value"]);
    t.add_row(["subject".to_owned(), shown(e.subject.as_ref(), &e.key_hash)]);
    if !e.alias.is_empty() {
        t.add_row(["alias".to_owned(), e.alias.clone()]);
    }
    let limits = limits(e);
    if limits.is_empty() {
        t.add_row(["limits".to_owned(), "none (unlimited)".to_owned()]);
    }
    for (k, v) in limits {
        t.add_row([k.name().to_owned(), render::amount(Some(k), v)]);
    }
    if let Some(c) = &e.calendar {
        t.add_row(["calendar".to_owned(), calendar_text(c)]);
    }
    t.add_row(["expires".to_owned(), expires_text(e, now)]);
    for i in &e.increases {
        t.add_row(["raised".to_owned(), increase_text(i, now)]);
    }
    t.add_row(["etag".to_owned(), e.etag.clone()]);
    t.add_row([
        "created".to_owned(),
        render::when(e.create_time.as_ref(), now),
    ]);
    t.add_row([
        "updated".to_owned(),
        render::when(e.update_time.as_ref(), now),
    ]);
    format!("{t}\n")
}

/// An entry as JSON: limits by their config names, in their units.
pub fn entry_json(e: &apb::SubjectLimits) -> Value {
    let mut limits_map = serde_json::Map::new();
    for (k, v) in limits(e) {
        limits_map.insert(k.name().to_owned(), render::amount_json(Some(k), v));
    }
    let dimension = e
        .subject
        .as_ref()
        .and_then(|s| pb::Dimension::try_from(s.dimension).ok())
        .map_or("", crate::subject::dimension_name);
    json!({
        "subject": shown(e.subject.as_ref(), &e.key_hash),
        "dimension": dimension,
        "id": e.subject.as_ref().map(|s| s.id.clone()).filter(|id| !id.is_empty()),
        "key_hash": (!e.key_hash.is_empty()).then(|| e.key_hash.clone()),
        "alias": (!e.alias.is_empty()).then(|| e.alias.clone()),
        "limits": limits_map,
        "calendar": e.calendar.as_ref().map(|c| json!({
            "time_zone": c.time_zone,
            "week_start": c.week_start,
            "month_anchor_day": c.month_anchor_day,
        })),
        "expire_time": render::when_json(e.expire_time.as_ref()),
        "etag": e.etag,
        "create_time": render::when_json(e.create_time.as_ref()),
        "update_time": render::when_json(e.update_time.as_ref()),
        "increases": e.increases.iter().map(increase_json).collect::<Vec<_>>(),
    })
}

pub fn increase_json(i: &apb::BudgetIncrease) -> Value {
    let kind = Kind::from_pb(i.kind);
    json!({
        "limit": crate::kind::name_of(i.kind),
        "amount": render::amount_json(kind, i.amount),
        "expire_time": render::when_json(i.expire_time.as_ref()),
        "reason": i.reason,
    })
}

/// The increases of a RaiseBudget answer, as a table.
pub fn increases_table(increases: &[apb::BudgetIncrease], now: SystemTime) -> String {
    let mut t = render::table(&["limit", "raised by", "until", "reason"]);
    for i in increases {
        let kind = Kind::from_pb(i.kind);
        t.add_row([
            crate::kind::name_of(i.kind),
            format!("+{}", render::amount(kind, i.amount)),
            render::when(i.expire_time.as_ref(), now),
            i.reason.clone(),
        ]);
    }
    render::align_right(&mut t, &[1]);
    format!("{t}\n")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command, LimitsCommand};

    fn set_args(line: &[&str]) -> SetArgs {
        let cli = Cli::try_parse_from(line).unwrap();
        match cli.command {
            Command::Limits(LimitsCommand::Set(a)) => *a,
            _ => unreachable!(),
        }
    }

    fn mask_of(line: &[&str]) -> Result<Vec<&'static str>, Error> {
        let args = set_args(line);
        let (_, mask) = update(&args, SystemTime::now())?;
        Ok(mask.iter().map(|f| f.mask()).collect())
    }

    #[test]
    fn the_mask_names_exactly_the_fields_given() {
        let m = mask_of(&[
            "limitsctl",
            "limits",
            "set",
            "team=research",
            "--monthly",
            "25000",
            "--alias",
            "research",
        ])
        .unwrap();
        assert_eq!(m, ["monthly_usd", "alias"]);
        let m = mask_of(&[
            "limitsctl",
            "limits",
            "set",
            "user=a",
            "--clear",
            "daily",
            "--clear",
            "expire_time",
            "--rpm",
            "5",
        ])
        .unwrap();
        assert_eq!(m, ["requests_per_minute", "daily_usd", "expire_time"]);
        let args = set_args(&["limitsctl", "limits", "set", "user=a", "--clear", "daily"]);
        let (e, _) = update(&args, SystemTime::now()).unwrap();
        assert_eq!(e.daily_usd, None, "a cleared field is unset");
    }

    #[test]
    fn refuses_nothing_and_contradictions() {
        assert!(matches!(
            mask_of(&["limitsctl", "limits", "set", "user=a"]),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            mask_of(&["limitsctl", "limits", "set", "user=a", "--daily", "1", "--clear", "daily"]),
            Err(Error::Usage(m)) if m.contains("--daily")
        ));
    }
}
