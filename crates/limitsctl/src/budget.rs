//! `limitsctl budget`: credits, debits and resets of a subject's usage, and
//! temporary increases of its limits (AdjustUsage, ResetUsage and
//! RaiseBudget of the admin API).

use std::time::SystemTime;

use limits_server::pb;
use limits_server::pb::admin as apb;
use serde_json::json;

use crate::cli::{AdjustArgs, Global, Output, RaiseArgs, ResetArgs};
use crate::connect::Conn;
use crate::entries::{increase_json, increases_table};
use crate::error::{Api, Error};
use crate::render;

pub async fn adjust(g: &Global, args: &AdjustArgs) -> Result<String, Error> {
    let output = g.output;
    // clap's group makes exactly one of the three present.
    let (resource, amount) = match (args.usd, args.requests, args.tokens) {
        (Some(usd), _, _) => (apb::Resource::Usd, usd),
        (_, Some(n), _) => (apb::Resource::Requests, n as f64),
        (_, _, Some(n)) => (apb::Resource::Tokens, n as f64),
        _ => {
            return Err(Error::Usage(
                "give --usd, --requests or --tokens".to_owned(),
            ));
        }
    };
    if let Some(k) = args.window
        && k.resource() != Some(resource)
    {
        let flag = match resource {
            apb::Resource::Usd => "--usd",
            apb::Resource::Requests => "--requests",
            _ => "--tokens",
        };
        return Err(Error::Usage(format!(
            "--window {} does not count what {flag} adjusts",
            k.name()
        )));
    }
    let conn = Conn::open(g).await?;
    let statuses = conn
        .admin()
        .adjust_usage(apb::AdjustUsageRequest {
            subject: Some(args.subject.pb()),
            resource: resource as i32,
            amount,
            kind: args.window.map_or(0, |k| k.pb() as i32),
            reason: args.reason.clone(),
        })
        .await
        .map_err(conn.failed(Api::Admin))?
        .into_inner()
        .statuses;
    Ok(statuses_out(&statuses, output))
}

pub async fn reset(g: &Global, args: &ResetArgs) -> Result<String, Error> {
    let output = g.output;
    let conn = Conn::open(g).await?;
    let statuses = conn
        .admin()
        .reset_usage(apb::ResetUsageRequest {
            subject: Some(args.subject.pb()),
            kinds: args.window.iter().map(|k| k.pb() as i32).collect(),
            reason: args.reason.clone(),
        })
        .await
        .map_err(conn.failed(Api::Admin))?
        .into_inner()
        .statuses;
    Ok(statuses_out(&statuses, output))
}

pub async fn raise(g: &Global, args: &RaiseArgs) -> Result<String, Error> {
    let output = g.output;
    let amount = match (args.usd, args.amount) {
        (Some(_), _) if !args.window.is_usd() => {
            return Err(Error::Usage(format!(
                "--window {} is not a budget: give --amount N",
                args.window.name()
            )));
        }
        (_, Some(_)) if args.window.is_usd() => {
            return Err(Error::Usage(format!(
                "--window {} is a budget: give --usd AMOUNT",
                args.window.name()
            )));
        }
        (Some(usd), _) => usd,
        (_, Some(n)) => n as f64,
        _ => return Err(Error::Usage("give --usd or --amount".to_owned())),
    };
    let now = SystemTime::now();
    let until = match (args.until, args.for_) {
        (Some(t), _) => t,
        (_, Some(d)) => now + d,
        _ => return Err(Error::Usage("give --until or --for".to_owned())),
    };
    let conn = Conn::open(g).await?;
    let increases = conn
        .admin()
        .raise_budget(apb::RaiseBudgetRequest {
            subject: Some(args.subject.pb()),
            kind: args.window.pb() as i32,
            amount,
            expire_time: Some(until.into()),
            reason: args.reason.clone(),
        })
        .await
        .map_err(conn.failed(Api::Admin))?
        .into_inner()
        .increases;
    Ok(match output {
        Output::Json => crate::pretty(&json!({
            "increases": increases.iter().map(increase_json).collect::<Vec<_>>(),
        })),
        Output::Table => {
            let mut out = format!("Active increases of {}:\n", args.subject);
            out.push_str(&increases_table(&increases, now));
            out
        }
    })
}

/// The subject's limits after an adjustment or a reset.
fn statuses_out(statuses: &[pb::LimitStatus], output: Output) -> String {
    let now = SystemTime::now();
    match output {
        Output::Json => crate::pretty(&json!({
            "limits": statuses.iter().map(|s| render::status_json(s, now)).collect::<Vec<_>>(),
        })),
        Output::Table if statuses.is_empty() => "Done; the subject has no limits.\n".to_owned(),
        Output::Table => format!("{}\n", render::status_table(statuses, now)),
    }
}
