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
    if let Some(model) = &args.remove_model {
        check_pattern("--remove-model", model)?;
        return set_scopes(g, args, &ScopeChange::Remove { model }).await;
    }
    let (entry, mask) = update(args, SystemTime::now())?;
    if let Some(model) = &args.model {
        let change = ScopeChange::Set {
            model,
            values: &entry,
            fields: &mask,
        };
        return set_scopes(g, args, &change).await;
    }
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

/// One change to an entry's model scopes, as `limits set --model` or
/// `--remove-model` asks for it.
enum ScopeChange<'a> {
    /// Set the `fields` of the scope `model` to their values in `values`
    /// (a field unset there is cleared), creating the scope if the entry
    /// has none for `model`.
    Set {
        model: &'a str,
        values: &'a apb::SubjectLimits,
        fields: &'a [Field],
    },
    /// Remove the scope `model`.
    Remove { model: &'a str },
}

/// `limits set --model` and `--remove-model`: the entry's scopes are read,
/// changed here and written back whole (the update mask `model_scopes`
/// replaces the list). The write carries the etag read (or the user's
/// --etag), so that a change made in between is refused, not lost.
async fn set_scopes(g: &Global, args: &SetArgs, change: &ScopeChange<'_>) -> Result<String, Error> {
    let conn = Conn::open(g).await?;
    let mut client = conn.admin();
    let current = match client
        .get_subject_limits(apb::GetSubjectLimitsRequest {
            subject: Some(args.subject.pb()),
        })
        .await
    {
        Ok(answer) => answer.into_inner().subject_limits.unwrap_or_default(),
        // No entry yet: the update creates one (allow_missing).
        Err(status) if status.code() == tonic::Code::NotFound => apb::SubjectLimits::default(),
        Err(status) => return Err(conn.failed(Api::Admin)(status)),
    };
    let mut scopes = current.model_scopes;
    change_scopes(&mut scopes, change).map_err(|missing| {
        let known: Vec<&str> = scopes.iter().map(|s| s.model.as_str()).collect();
        Error::Local(if known.is_empty() {
            format!(
                "{} has no model scope {missing:?} (it has none)",
                args.subject
            )
        } else {
            format!(
                "{} has no model scope {missing:?} (its scopes: {})",
                args.subject,
                known.join(", ")
            )
        })
    })?;
    let entry = client
        .update_subject_limits(apb::UpdateSubjectLimitsRequest {
            subject: Some(args.subject.pb()),
            subject_limits: Some(apb::SubjectLimits {
                model_scopes: scopes,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["model_scopes".to_owned()],
            }),
            etag: args.etag.clone().unwrap_or(current.etag),
            allow_missing: true,
            reason: args.reason.clone(),
        })
        .await
        .map_err(conn.failed(Api::Admin))?
        .into_inner()
        .subject_limits
        .unwrap_or_default();
    Ok(one(&entry, g.output))
}

/// Applies `change` to an entry's scopes: the other scopes, and the
/// scope's limits not named, are kept; a scope left with no limit is
/// removed. Fails with the pattern when the scope to remove, or to clear
/// limits of (and set none), is not there: nothing would change, and on a
/// subject without an entry the write would create an empty one.
fn change_scopes<'a>(
    scopes: &mut Vec<apb::ModelScope>,
    change: &ScopeChange<'a>,
) -> Result<(), &'a str> {
    match *change {
        ScopeChange::Remove { model } => {
            let before = scopes.len();
            scopes.retain(|s| s.model != model);
            if scopes.len() == before {
                return Err(model);
            }
        }
        ScopeChange::Set {
            model,
            values,
            fields,
        } => {
            let found = scopes.iter().position(|s| s.model == model);
            let at = found.unwrap_or_else(|| {
                scopes.push(apb::ModelScope {
                    model: model.to_owned(),
                    limits: Some(apb::SubjectLimits::default()),
                });
                scopes.len() - 1
            });
            let scope = scopes[at].limits.get_or_insert_default();
            for &f in fields {
                copy_field(values, scope, f);
            }
            if limits(scope).is_empty() {
                scopes.remove(at);
                if found.is_none() {
                    return Err(model);
                }
            }
        }
    }
    Ok(())
}

/// Sets the field `f` of `to` to its value in `from` (unset if unset).
fn copy_field(from: &apb::SubjectLimits, to: &mut apb::SubjectLimits, f: Field) {
    match f {
        Field::Hourly => to.hourly_usd = from.hourly_usd,
        Field::Daily => to.daily_usd = from.daily_usd,
        Field::Weekly => to.weekly_usd = from.weekly_usd,
        Field::Monthly => to.monthly_usd = from.monthly_usd,
        Field::Rps => to.requests_per_second = from.requests_per_second,
        Field::Rpm => to.requests_per_minute = from.requests_per_minute,
        Field::Rph => to.requests_per_hour = from.requests_per_hour,
        Field::Tpm => to.tokens_per_minute = from.tokens_per_minute,
        Field::Tph => to.tokens_per_hour = from.tokens_per_hour,
        Field::Itpm => to.input_tokens_per_minute = from.input_tokens_per_minute,
        Field::Itph => to.input_tokens_per_hour = from.input_tokens_per_hour,
        Field::Otpm => to.output_tokens_per_minute = from.output_tokens_per_minute,
        Field::Otph => to.output_tokens_per_hour = from.output_tokens_per_hour,
        Field::MaxConcurrent => to.max_concurrent = from.max_concurrent,
        Field::Alias => to.alias.clone_from(&from.alias),
        Field::Expires => to.expire_time = from.expire_time,
        Field::Calendar => to.calendar.clone_from(&from.calendar),
        Field::AlertThresholds => to.alert_thresholds.clone_from(&from.alert_thresholds),
    }
}

/// A model pattern given on the command line is not empty (limitsd checks
/// the glob itself, naming the field).
fn check_pattern(flag: &str, model: &str) -> Result<(), Error> {
    if model.is_empty() {
        return Err(Error::Usage(format!(
            "{flag} needs a model name or a glob such as 'gpt-4*'"
        )));
    }
    Ok(())
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
    put(Field::AlertThresholds, args.alert_thresholds.is_some());
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
    e.alert_thresholds = args.alert_thresholds.clone().unwrap_or_default();
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
    if let Some(model) = &args.model {
        check_pattern("--model", model)?;
        // clap refuses the entry's own flags with --model; --clear can
        // still name one.
        if let Some(f) = set.iter().find(|f| !f.in_scope()) {
            let name = f.flag().trim_start_matches('-').to_owned();
            return Err(Error::Usage(format!(
                "--clear {name}: a model scope holds only budgets and rates, and {name} \
                 belongs to the entry (give it without --model)"
            )));
        }
        if set.is_empty() {
            return Err(Error::Usage(format!(
                "nothing to set in model scope {model:?}: give at least one of --hourly, \
                 --daily, --weekly, --monthly, --rps, --rpm, --rph, --tpm, --tph, --itpm, \
                 --itph, --otpm, --otph or --clear (or --remove-model {model:?} to remove it)"
            )));
        }
    }
    if set.is_empty() {
        return Err(Error::Usage(
            "nothing to set: give at least one of --hourly, --daily, --weekly, --monthly, \
             --calendar, --rps, --rpm, --rph, --tpm, --tph, --itpm, --itph, --otpm, --otph, \
             --max-concurrent, --alias, --expires, --expires-in, --alert-thresholds or \
             --clear; or --model PATTERN with limits for a model scope, or --remove-model \
             PATTERN"
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

/// The limits an entry (or a model scope) sets, on one line:
/// `daily $50.00, tokens_per_minute 40000`; empty when there is none.
fn limits_line(e: &apb::SubjectLimits) -> String {
    let shown: Vec<String> = limits(e)
        .into_iter()
        .map(|(k, v)| format!("{} {}", k.name(), render::amount(Some(k), v)))
        .collect();
    shown.join(", ")
}

/// What an entry's own limits are, when it sets none: unlimited, unless
/// model scopes limit some models.
fn no_limits(e: &apb::SubjectLimits) -> &'static str {
    if e.model_scopes.is_empty() {
        "none (unlimited)"
    } else {
        "none of its own"
    }
}

/// The limits column of `limits list`: the entry's own limits, then one
/// line per model scope (`model gpt-4*: daily $50.00`).
fn limits_text(e: &apb::SubjectLimits) -> String {
    let own = limits_line(e);
    let mut lines = Vec::with_capacity(1 + e.model_scopes.len());
    if !own.is_empty() || e.model_scopes.is_empty() {
        lines.push(if own.is_empty() {
            no_limits(e).to_owned()
        } else {
            own
        });
    }
    for s in &e.model_scopes {
        lines.push(format!("model {}: {}", s.model, scope_text(s)));
    }
    lines.join("\n")
}

/// A model scope's limits on one line.
fn scope_text(s: &apb::ModelScope) -> String {
    let line = limits_line(s.limits.as_ref().unwrap_or(&apb::SubjectLimits::default()));
    if line.is_empty() {
        "none".to_owned()
    } else {
        line
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

/// An entry's own alert thresholds, as percentages: `50%, 80%, 95%`.
fn thresholds_text(e: &apb::SubjectLimits) -> String {
    let shown: Vec<String> = e
        .alert_thresholds
        .iter()
        .map(|&t| render::percent(t))
        .collect();
    shown.join(", ")
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
        t.add_row(["limits".to_owned(), no_limits(e).to_owned()]);
    }
    for (k, v) in limits {
        t.add_row([k.name().to_owned(), render::amount(Some(k), v)]);
    }
    // Most specific first, as limitsd answers them.
    for s in &e.model_scopes {
        t.add_row([format!("model {}", s.model), scope_text(s)]);
    }
    if let Some(c) = &e.calendar {
        t.add_row(["calendar".to_owned(), calendar_text(c)]);
    }
    if !e.alert_thresholds.is_empty() {
        t.add_row(["alert thresholds".to_owned(), thresholds_text(e)]);
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
    let limits_map = limits_json(e);
    // Each model scope's limits, by its pattern, named like the entry's.
    let models: serde_json::Map<String, Value> = e
        .model_scopes
        .iter()
        .map(|s| {
            let limits = s.limits.as_ref().map(limits_json).unwrap_or_default();
            (s.model.clone(), Value::Object(limits))
        })
        .collect();
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
        "models": models,
        "calendar": e.calendar.as_ref().map(|c| json!({
            "time_zone": c.time_zone,
            "week_start": c.week_start,
            "month_anchor_day": c.month_anchor_day,
        })),
        // The entry's own thresholds, ascending; empty: the config's.
        "alert_thresholds": e.alert_thresholds,
        "expire_time": render::when_json(e.expire_time.as_ref()),
        "etag": e.etag,
        "create_time": render::when_json(e.create_time.as_ref()),
        "update_time": render::when_json(e.update_time.as_ref()),
        "increases": e.increases.iter().map(increase_json).collect::<Vec<_>>(),
    })
}

/// The limits an entry (or a model scope) sets, by their config names, in
/// their units.
fn limits_json(e: &apb::SubjectLimits) -> serde_json::Map<String, Value> {
    limits(e)
        .into_iter()
        .map(|(k, v)| (k.name().to_owned(), render::amount_json(Some(k), v)))
        .collect()
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
        // The thresholds: a list set whole, or cleared (empty).
        let args = set_args(&[
            "limitsctl",
            "limits",
            "set",
            "user=a",
            "--alert-thresholds",
            "0.5,0.8",
        ]);
        let (e, mask) = update(&args, SystemTime::now()).unwrap();
        assert_eq!(mask, [Field::AlertThresholds]);
        assert_eq!(e.alert_thresholds, [0.5, 0.8]);
        let args = set_args(&[
            "limitsctl",
            "limits",
            "set",
            "user=a",
            "--clear",
            "alert_thresholds",
        ]);
        let (e, mask) = update(&args, SystemTime::now()).unwrap();
        assert_eq!(
            mask.iter().map(|f| f.mask()).collect::<Vec<_>>(),
            ["alert_thresholds"]
        );
        assert!(e.alert_thresholds.is_empty());
    }

    /// The scopes after `limits set SUBJECT --model ... LINE`, from
    /// `scopes`.
    fn scopes_after(
        scopes: &[apb::ModelScope],
        line: &[&str],
    ) -> Result<Vec<apb::ModelScope>, Error> {
        let mut argv = vec!["limitsctl", "limits", "set", "team=t"];
        argv.extend(line);
        let args = set_args(&argv);
        let mut scopes = scopes.to_vec();
        let missing = |m: &str| Error::Local(m.to_owned());
        if let Some(model) = &args.remove_model {
            change_scopes(&mut scopes, &ScopeChange::Remove { model }).map_err(missing)?;
            return Ok(scopes);
        }
        let (values, fields) = update(&args, SystemTime::now())?;
        let change = ScopeChange::Set {
            model: args.model.as_deref().unwrap(),
            values: &values,
            fields: &fields,
        };
        change_scopes(&mut scopes, &change).map_err(missing)?;
        Ok(scopes)
    }

    /// Each scope's pattern and limits, as `limits get -o json` shows them.
    fn shown_scopes(scopes: Vec<apb::ModelScope>) -> Value {
        entry_json(&apb::SubjectLimits {
            model_scopes: scopes,
            ..Default::default()
        })["models"]
            .clone()
    }

    #[test]
    fn a_model_scope_changes_alone() {
        let line = ["--model", "gpt-4*", "--daily", "50", "--tpm", "40000"];
        let one = scopes_after(&[], &line).unwrap();
        assert_eq!(
            shown_scopes(one.clone()),
            json!({ "gpt-4*": { "daily": 50.0, "tokens_per_minute": 40000 } })
        );
        // A second scope keeps the first.
        let two = scopes_after(&one, &["--model", "claude-3-opus", "--rpm", "5"]).unwrap();
        // One limit of one scope changes; its other limit and the other
        // scope stay.
        let changed = scopes_after(
            &two,
            &["--model", "gpt-4*", "--daily", "20", "--clear", "rpm"],
        );
        assert_eq!(
            shown_scopes(changed.unwrap()),
            json!({
                "gpt-4*": { "daily": 20.0, "tokens_per_minute": 40000 },
                "claude-3-opus": { "requests_per_minute": 5 },
            })
        );
        // A scope left with no limit is gone; so is one removed.
        let cleared = scopes_after(&two, &["--model", "claude-3-opus", "--clear", "rpm"]).unwrap();
        assert_eq!(
            shown_scopes(cleared),
            json!({ "gpt-4*": { "daily": 50.0, "tokens_per_minute": 40000 } })
        );
        let removed = scopes_after(&two, &["--remove-model", "gpt-4*"]).unwrap();
        assert_eq!(
            shown_scopes(removed),
            json!({ "claude-3-opus": { "requests_per_minute": 5 } })
        );
        // A scope that is not there cannot be removed, nor cleared.
        assert!(matches!(
            scopes_after(&two, &["--remove-model", "gpt-5"]),
            Err(Error::Local(m)) if m == "gpt-5"
        ));
        assert!(matches!(
            scopes_after(&two, &["--model", "gpt-5", "--clear", "daily"]),
            Err(Error::Local(m)) if m == "gpt-5"
        ));
    }

    #[test]
    fn a_model_scope_takes_only_budgets_and_rates() {
        let parse = |line: &[&str]| {
            let mut argv = vec!["limitsctl", "limits", "set", "team=t"];
            argv.extend(line);
            Cli::try_parse_from(argv).map(|_| ())
        };
        // The entry's own fields, with --model, are clap's usage errors.
        for entry_flag in [
            &["--alias", "x"][..],
            &["--max-concurrent", "2"],
            &["--calendar", "UTC"],
            &["--expires-in", "1d"],
            &["--alert-thresholds", "0.5"],
        ] {
            let mut line = vec!["--model", "gpt-4*", "--daily", "1"];
            line.extend(entry_flag);
            let e = parse(&line).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{line:?}"
            );
        }
        // --remove-model stands alone.
        for other in [
            &["--daily", "1"][..],
            &["--model", "m"],
            &["--clear", "daily"],
            &["--alias", "a"],
            &["--alert-thresholds", "0.5"],
        ] {
            let mut line = vec!["--remove-model", "gpt-4*"];
            line.extend(other);
            assert!(parse(&line).is_err(), "{line:?}");
        }
        assert!(parse(&["--remove-model", "gpt-4*", "--etag", "e", "--reason", "r"]).is_ok());
        // --clear of an entry field, nothing to set, an empty pattern.
        assert!(matches!(
            mask_of(&["limitsctl", "limits", "set", "team=t", "--model", "m", "--clear", "alias"]),
            Err(Error::Usage(m)) if m.starts_with("--clear alias: a model scope holds only")
        ));
        assert!(matches!(
            mask_of(&["limitsctl", "limits", "set", "team=t", "--model", "m"]),
            Err(Error::Usage(m)) if m.starts_with("nothing to set in model scope \"m\"")
        ));
        assert!(matches!(
            mask_of(&["limitsctl", "limits", "set", "team=t", "--model", "", "--daily", "1"]),
            Err(Error::Usage(m)) if m.starts_with("--model needs")
        ));
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
