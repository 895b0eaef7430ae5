//! limitsctl: the operator's command line for limitsd.
//!
//! It speaks only gRPC to a running limitsd, with the stubs limits-server
//! generates (`limits_server::pb`): the data plane's `GetUsage` for
//! `usage`, `CheckLimits` for `check` and `WatchAlerts` for `alerts
//! watch`, and the admin API (`mercator.limits.admin.v1`) for `limits`,
//! `budget` and `audit`. `token new` and `completion` run locally.
//!
//! - [`cli`]: every command and option (clap derive), with examples;
//! - [`connect`]: the address, TLS and the bearer token on every call;
//! - [`usage`], [`entries`], [`budget`], [`audit`], [`token`]: the
//!   commands, each turning an answer into a table or JSON; [`alerts`],
//!   which prints each event of a stream as it arrives;
//! - [`render`]: amounts, times and tables; [`kind`] and [`subject`]: the
//!   names of limits and subjects on the command line;
//! - [`error`]: failures, with the server's message and a hint per code.
//!
//! Exit codes: 0 on success, 1 when limitsd answers with an error or cannot
//! be reached, 2 on a usage error. Neither the token nor an API key is ever
//! printed.

#![forbid(unsafe_code)]

mod alerts;
mod audit;
mod budget;
mod check;
mod cli;
mod connect;
mod entries;
mod error;
mod kind;
mod render;
mod subject;
mod token;
mod usage;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::cli::{AlertsCommand, BudgetCommand, Cli, Command, LimitsCommand, TokenCommand};
use crate::error::Error;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(&cli)),
        Err(e) => Err(Error::Local(format!("cannot start the runtime: {e}"))),
    };
    match result {
        Ok(text) => {
            // A reader that went away (`limitsctl audit | head`) is not a
            // failure.
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("limitsctl: cannot write the answer: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(Error::Usage(message)) => usage_error(&matches, message),
        Err(e) => {
            eprintln!("limitsctl: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs the command (connecting only once its arguments are known to be
/// good); its output, printed only when it succeeded.
async fn run(cli: &Cli) -> Result<String, Error> {
    let g = &cli.global;
    match &cli.command {
        Command::Usage(args) => usage::run(g, args).await,
        Command::Check(args) => check::run(g, args).await,
        Command::Limits(LimitsCommand::Get(args)) => entries::get(g, args).await,
        Command::Limits(LimitsCommand::List(args)) => entries::list(g, args).await,
        Command::Limits(LimitsCommand::Set(args)) => entries::set(g, args).await,
        Command::Limits(LimitsCommand::Delete(args)) => entries::delete(g, args).await,
        Command::Budget(BudgetCommand::Adjust(args)) => budget::adjust(g, args).await,
        Command::Budget(BudgetCommand::Reset(args)) => budget::reset(g, args).await,
        Command::Budget(BudgetCommand::Raise(args)) => budget::raise(g, args).await,
        Command::Audit(args) => audit::run(g, args).await,
        Command::Alerts(AlertsCommand::Watch(args)) => alerts::watch(g, args).await,
        Command::Token(TokenCommand::New(args)) => token::new(args, g.output),
        Command::Completion(args) => {
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), "limitsctl", &mut script);
            String::from_utf8(script).map_err(|e| Error::Local(e.to_string()))
        }
    }
}

/// Reports a usage error found after parsing the way clap reports its own,
/// with the usage of the command given, and exits with clap's code (2).
fn usage_error(matches: &ArgMatches, message: String) -> ! {
    let mut cmd = Cli::command();
    cmd.build();
    let mut m = matches;
    while let Some((name, sub)) = m.subcommand() {
        let Some(next) = cmd.find_subcommand(name).cloned() else {
            break;
        };
        cmd = next;
        m = sub;
    }
    cmd.error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

/// A JSON document as printed: indented, with a final newline.
fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}
