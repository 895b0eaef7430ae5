//! limitsctl end to end: the real `limitsctl` binary against the real
//! `limitsd` on 127.0.0.1:0, with tokens configured by their SHA-256, and
//! once over TLS with certificates made here (rcgen). The checks read what
//! an operator reads: the tables, the JSON, the exit codes and stderr.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use limits_server::pb;
use limits_server::pb::limits_service_client::LimitsServiceClient;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long limitsd may take to start.
const DEADLINE: Duration = Duration::from_secs(30);
const OPS: &str = "ops-token-cli-0123456789";
const AUDITOR: &str = "auditor-token-cli-0123456789";
/// The API key of the tests: it must never appear in limitsctl's output.
const KEY: &str = "sk-cli";

fn sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The `limitsd` binary beside `limitsctl`, built once if it is not there.
fn limitsd_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let path = Path::new(env!("CARGO_BIN_EXE_limitsctl")).with_file_name("limitsd");
        if !path.exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "limits-server", "--bin", "limitsd"])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building limitsd failed");
        }
        path
    })
}

/// The config of most tests: a daily budget for `sk-cli` and two tokens.
fn config() -> String {
    format!(
        r#"limits:
  budgets:
    by_api_key:
      {KEY}: {{ daily: 1.00 }}
  security:
    tokens:
      - {{ name: ops, sha256: "{ops}", scope: write }}
      - {{ name: auditor, sha256: "{auditor}", scope: read }}
"#,
        ops = sha256(OPS),
        auditor = sha256(AUDITOR),
    )
}

/// A running limitsd, killed on drop.
struct Limitsd {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Limitsd {
    fn start(yaml: &str) -> Limitsd {
        Limitsd::start_in(tempfile::tempdir().expect("temp dir"), yaml)
    }

    /// Starts limitsd with `yaml` as its config, in `dir` (which may hold
    /// files the config names).
    fn start_in(dir: tempfile::TempDir, yaml: &str) -> Limitsd {
        let config = dir.path().join("limits.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let mut child = Command::new(limitsd_bin())
            .arg("--config")
            .arg(&config)
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn limitsd");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        let addr = loop {
            let left = DEADLINE
                .checked_sub(start.elapsed())
                .expect("limitsd did not start in time");
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let status = child.try_wait().ok().flatten();
                    panic!("limitsd did not print its address (exit status {status:?})");
                }
            };
            if line.starts_with("limitsd listening ") {
                break line
                    .split_whitespace()
                    .find_map(|t| t.strip_prefix("grpc="))
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("no grpc= in {line:?}"));
            }
        };
        Limitsd { child, addr, dir }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs limitsctl against this limitsd with `token` (given through
    /// LIMITSD_TOKEN).
    fn ctl(&self, token: Option<&str>, args: &[&str]) -> Run {
        let mut env = vec![("LIMITSD_ADDR", self.url())];
        if let Some(t) = token {
            env.push(("LIMITSD_TOKEN", t.to_owned()));
        }
        limitsctl(&env, args)
    }

    /// A data-plane call, as a gateway makes it.
    fn call<T>(
        &self,
        f: impl AsyncFnOnce(LimitsServiceClient<tonic::transport::Channel>) -> T,
    ) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = LimitsServiceClient::connect(self.url())
                .await
                .expect("connect to limitsd");
            f(client).await
        })
    }

    fn allowed(&self, cost: f64) -> bool {
        self.call(async |mut c| {
            c.check_limits(pb::CheckLimitsRequest {
                subjects: vec![key()],
                model: "gpt-4".into(),
                estimated_cost_usd: Some(cost),
                ..Default::default()
            })
            .await
            .expect("CheckLimits")
            .into_inner()
            .allowed
        })
    }

    fn record(&self, cost: f64) {
        self.call(async |mut c| {
            c.record_usage(pb::RecordUsageRequest {
                subjects: vec![key()],
                cost_usd: Some(cost),
                model: "gpt-4".into(),
                ..Default::default()
            })
            .await
            .expect("RecordUsage")
        });
    }
}

impl Drop for Limitsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key() -> pb::Subject {
    pb::Subject {
        dimension: pb::Dimension::ApiKey as i32,
        id: KEY.into(),
    }
}

/// One run of limitsctl.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    fn ok(self) -> String {
        assert_eq!(self.code, 0, "limitsctl failed: {self:#?}");
        assert!(
            !self.stdout.contains(KEY) && !self.stderr.contains(KEY),
            "the API key was printed: {self:#?}"
        );
        self.stdout
    }

    fn json(self) -> Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// Asserts failure with `code` and returns stderr.
    fn fails(self, code: i32) -> String {
        assert_eq!(self.code, code, "unexpected exit: {self:#?}");
        assert!(self.stdout.is_empty(), "output on failure: {self:#?}");
        self.stderr
    }
}

/// Runs limitsctl with only the environment given (none of the caller's
/// LIMITSD_* variables). limitsctl's own --timeout bounds every run.
fn limitsctl(env: &[(&str, String)], args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_limitsctl"));
    for var in [
        "LIMITSD_ADDR",
        "LIMITSD_TOKEN",
        "LIMITSD_CA_CERT",
        "LIMITSD_CERT",
        "LIMITSD_KEY",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .args(["--timeout", "10s"])
        .args(args)
        .stdin(Stdio::null());
    let out = cmd.output().expect("run limitsctl");
    Run {
        code: out.status.code().expect("limitsctl exited by a signal"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// The status of one limit in a JSON `limits` list.
fn limit<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .find(|l| l["limit"] == name)
        .unwrap_or_else(|| panic!("no {name} in {doc:#}"))
}

/// The table row of one limit.
fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} row in\n{table}"))
}

/// The table row whose first two cells are `first` and `second`: a model
/// scope's row of `limits get` (`model gpt-4*`), or a scope's limit in a
/// status table (`daily gpt-4*`); without the padding after its last cell.
fn row2<'a>(table: &'a str, first: &str, second: &str) -> &'a str {
    table
        .lines()
        .find(|l| {
            let mut cells = l.split_whitespace();
            cells.next() == Some(first) && cells.next() == Some(second)
        })
        .map(str::trim_end)
        .unwrap_or_else(|| panic!("no {first} {second} row in\n{table}"))
}

/// The status of one limit of one model scope in a JSON `limits` list.
fn scoped<'a>(doc: &'a Value, name: &str, scope: &str) -> &'a Value {
    doc["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .find(|l| l["limit"] == name && l["model_scope"] == scope)
        .unwrap_or_else(|| panic!("no {name} of {scope} in {doc:#}"))
}

/// `limits set --model` changes one model scope of an entry at a time,
/// keeping its other scopes and the scope's other limits; `limits get`
/// shows the scopes, `--remove-model` removes one, and `check` and `usage`
/// name the scope each limit belongs to.
#[test]
fn model_scopes_are_set_one_at_a_time_and_named() {
    let d = Limitsd::start(&config());
    let ops = Some(OPS);
    let team = "team=scoped";
    // The first scope creates the entry, which had none.
    let set = d
        .ctl(
            ops,
            &[
                "limits",
                "set",
                team,
                "--model",
                "gpt-4*",
                "--daily",
                "1",
                "--tpm",
                "1000",
                "--reason",
                "per model",
            ],
        )
        .ok();
    assert!(
        row2(&set, "model", "gpt-4*").ends_with("daily $1.00, tokens_per_minute 1000"),
        "{set}"
    );
    assert!(row(&set, "limits").contains("none of its own"), "{set}");
    // A second scope keeps the first.
    let entry = d
        .ctl(
            ops,
            &[
                "limits",
                "set",
                team,
                "--model",
                "claude-3-opus",
                "--daily",
                "3",
                "--rpm",
                "5",
                "-o",
                "json",
            ],
        )
        .json();
    let both = serde_json::json!({
        "gpt-4*": { "daily": 1.0, "tokens_per_minute": 1000 },
        "claude-3-opus": { "daily": 3.0, "requests_per_minute": 5 },
    });
    assert_eq!(entry["models"], both, "{entry:#}");
    assert_eq!(
        entry["limits"],
        serde_json::json!({}),
        "no limit of its own"
    );
    // `limits get`: a row per scope, most specific (the exact name) first.
    let got = d.ctl(Some(AUDITOR), &["limits", "get", team]).ok();
    let claude = row2(&got, "model", "claude-3-opus");
    assert!(
        claude.ends_with("daily $3.00, requests_per_minute 5"),
        "{got}"
    );
    assert!(
        got.find(claude) < got.find(row2(&got, "model", "gpt-4*")),
        "{got}"
    );
    let got = d
        .ctl(Some(AUDITOR), &["limits", "get", team, "-o", "json"])
        .json();
    assert_eq!(got["models"], both);
    let list = d.ctl(Some(AUDITOR), &["limits", "list"]).ok();
    assert!(
        list.contains("model gpt-4*: daily $1.00, tokens_per_minute 1000"),
        "{list}"
    );

    // A stale etag is refused, and changes nothing.
    let err = d
        .ctl(
            ops,
            &[
                "limits", "set", team, "--model", "gpt-4*", "--daily", "9", "--etag", "stale",
            ],
        )
        .fails(1);
    assert!(err.contains("etag"), "{err}");
    // One limit of one scope changes, with the etag just read; its other
    // limit and the other scope stay.
    let etag = got["etag"].as_str().expect("etag");
    let entry = d
        .ctl(
            ops,
            &[
                "limits", "set", team, "--model", "gpt-4*", "--daily", "2", "--etag", etag, "-o",
                "json",
            ],
        )
        .json();
    assert_eq!(
        entry["models"],
        serde_json::json!({
            "gpt-4*": { "daily": 2.0, "tokens_per_minute": 1000 },
            "claude-3-opus": { "daily": 3.0, "requests_per_minute": 5 },
        }),
        "{entry:#}"
    );

    // The entry's own fields are not a scope's: usage errors.
    let err = d
        .ctl(
            ops,
            &[
                "limits", "set", team, "--model", "gpt-4*", "--daily", "1", "--alias", "x",
            ],
        )
        .fails(2);
    assert!(err.contains("--alias"), "{err}");
    let err = d
        .ctl(
            ops,
            &[
                "limits",
                "set",
                team,
                "--remove-model",
                "gpt-4*",
                "--daily",
                "1",
            ],
        )
        .fails(2);
    assert!(err.contains("--remove-model"), "{err}");

    // limitsd enforces the scope: $2.50 of gpt-4o is over gpt-4*'s $2, and
    // the denial names it; the same under claude-3-opus's $3, or for a
    // model no scope matches, fits.
    let denied = d
        .ctl(None, &["check", team, "--model", "gpt-4o", "--cost", "2.5"])
        .ok();
    assert!(denied.starts_with("DENIED"), "{denied}");
    assert!(denied.contains("model scope 'gpt-4*'"), "{denied}");
    assert!(
        row2(&denied, "daily", "gpt-4*").contains("$2.00"),
        "{denied}"
    );
    let doc = d
        .ctl(
            None,
            &[
                "check", team, "--model", "gpt-4o", "--cost", "2.5", "-o", "json",
            ],
        )
        .json();
    assert_eq!(scoped(&doc, "daily", "gpt-4*")["exceeded"], true, "{doc:#}");
    for model in ["claude-3-opus", "gpt-3.5-turbo"] {
        let doc = d
            .ctl(
                None,
                &[
                    "check", team, "--model", model, "--cost", "2.5", "-o", "json",
                ],
            )
            .json();
        assert_eq!(doc["allowed"], true, "{model}: {doc:#}");
    }

    // A gpt-4o call's cost is charged to its scope, and `usage` shows each
    // scope's limits beside (here, instead of) the subject's own.
    d.call(async |mut c| {
        c.record_usage(pb::RecordUsageRequest {
            subjects: vec![pb::Subject {
                dimension: pb::Dimension::Team as i32,
                id: "scoped".into(),
            }],
            cost_usd: Some(0.5),
            model: "gpt-4o".into(),
            ..Default::default()
        })
        .await
        .expect("RecordUsage")
    });
    let usage = d.ctl(None, &["usage", team]).ok();
    let gpt4 = row2(&usage, "daily", "gpt-4*");
    assert!(
        gpt4.contains("$2.00") && gpt4.contains("$0.50") && gpt4.contains("25%"),
        "{usage}"
    );
    assert!(
        row2(&usage, "daily", "claude-3-opus").contains("$3.00"),
        "{usage}"
    );
    let doc = d.ctl(None, &["usage", team, "-o", "json"]).json();
    assert_eq!(scoped(&doc, "daily", "gpt-4*")["used"], 0.5, "{doc:#}");
    assert_eq!(scoped(&doc, "daily", "claude-3-opus")["used"], 0.0);
    assert_eq!(
        scoped(&doc, "requests_per_minute", "claude-3-opus")["max"],
        5
    );

    // --remove-model removes one scope and keeps the other.
    let entry = d
        .ctl(
            ops,
            &[
                "limits",
                "set",
                team,
                "--remove-model",
                "claude-3-opus",
                "--reason",
                "done",
                "-o",
                "json",
            ],
        )
        .json();
    assert_eq!(
        entry["models"],
        serde_json::json!({ "gpt-4*": { "daily": 2.0, "tokens_per_minute": 1000 } }),
        "{entry:#}"
    );
    let doc = d.ctl(None, &["usage", team, "-o", "json"]).json();
    let scopes: Vec<&Value> = doc["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["model_scope"])
        .collect();
    assert!(
        !scopes.is_empty() && scopes.iter().all(|s| *s == "gpt-4*"),
        "{doc:#}"
    );
    let err = d
        .ctl(
            ops,
            &["limits", "set", team, "--remove-model", "claude-3-opus"],
        )
        .fails(1);
    assert!(
        err.contains("team=scoped has no model scope \"claude-3-opus\" (its scopes: gpt-4*)"),
        "{err}"
    );
    // Clearing a scope's last limits removes it too.
    let entry = d
        .ctl(
            ops,
            &[
                "limits", "set", team, "--model", "gpt-4*", "--clear", "daily", "--clear", "tpm",
                "-o", "json",
            ],
        )
        .json();
    assert_eq!(entry["models"], serde_json::json!({}), "{entry:#}");
    // An API key's scope: the key is named by its hash, never printed (ok()
    // checks the output of every run).
    let key = format!("api_key={KEY}");
    let set = d
        .ctl(
            ops,
            &["limits", "set", &key, "--model", "gpt-4*", "--rpm", "7"],
        )
        .ok();
    assert!(set.contains("api_key_hash="), "{set}");
    let err = d
        .ctl(ops, &["limits", "set", &key, "--remove-model", "o1"])
        .fails(1);
    assert!(err.contains("api_key=…") && !err.contains(KEY), "{err}");
}

/// `limits set --calendar` puts a subject's budgets on a calendar: the
/// entry and `usage` say so, and its daily budget resets at midnight in
/// the zone given.
#[test]
fn budgets_on_a_calendar() {
    let d = Limitsd::start(&config());
    let ops = Some(OPS);
    // A team's budgets on a calendar: shown as such, resetting at
    // midnight in Tokyo (15:00 UTC).
    let set = d
        .ctl(
            ops,
            &[
                "limits",
                "set",
                "team=tokyo",
                "--daily",
                "3",
                "--weekly",
                "9",
                "--otpm",
                "250",
                "--calendar",
                "Asia/Tokyo",
                "--week-start",
                "sunday",
                "--reason",
                "local days",
            ],
        )
        .ok();
    assert!(
        row(&set, "calendar").contains("Asia/Tokyo, weeks from sunday, months from day 1"),
        "{set}"
    );
    assert!(row(&set, "weekly").contains("$9.00"), "{set}");
    assert!(
        row(&set, "output_tokens_per_minute").contains("250"),
        "{set}"
    );
    assert!(row(&d.ctl(ops, &["usage", "team=tokyo"]).ok(), "daily").contains("calendar"));
    let doc = d.ctl(ops, &["usage", "team=tokyo", "-o", "json"]).json();
    assert_eq!(limit(&doc, "daily")["period"], "calendar");
    assert_eq!(limit(&doc, "weekly")["period"], "calendar");
    let reset = limit(&doc, "daily")["reset_at"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reset.ends_with("T15:00:00Z"), "{reset}");
    let e = d
        .ctl(
            ops,
            &["limits", "set", "team=tokyo", "--calendar", "Nowhere/Town"],
        )
        .fails(1);
    assert!(e.contains("subject_limits.calendar.time_zone"), "{e}");
}

/// `limits set --alert-thresholds` gives an entry its own thresholds,
/// `limits get` shows them (as percentages, and as fractions in JSON),
/// `--clear alert-thresholds` goes back to the config's; bad values are
/// limitsd's refusals naming the element, and the flag is the entry's,
/// not a model scope's.
#[test]
fn alert_thresholds_are_set_shown_and_cleared() {
    let d = Limitsd::start(&config());
    let ops = Some(OPS);
    let team = "team=alerting";
    // Given in any order, as fractions or percentages: answered ascending.
    let set = d
        .ctl(
            ops,
            &[
                "limits",
                "set",
                team,
                "--daily",
                "10",
                "--alert-thresholds",
                "0.95,0.5,80%",
                "--reason",
                "warn early",
            ],
        )
        .ok();
    assert!(
        row(&set, "alert").trim_end().ends_with("50%, 80%, 95%"),
        "{set}"
    );
    let got = d.ctl(Some(AUDITOR), &["limits", "get", team]).ok();
    assert!(
        row(&got, "alert").trim_end().ends_with("50%, 80%, 95%"),
        "{got}"
    );
    let doc = d
        .ctl(Some(AUDITOR), &["limits", "get", team, "-o", "json"])
        .json();
    assert_eq!(
        doc["alert_thresholds"],
        serde_json::json!([0.5, 0.8, 0.95]),
        "{doc:#}"
    );
    // Another field changes alone; the thresholds stay.
    let doc = d
        .ctl(ops, &["limits", "set", team, "--rpm", "5", "-o", "json"])
        .json();
    assert_eq!(doc["alert_thresholds"], serde_json::json!([0.5, 0.8, 0.95]));
    // A new list replaces the old one.
    let doc = d
        .ctl(
            ops,
            &[
                "limits",
                "set",
                team,
                "--alert-thresholds",
                "0.25",
                "-o",
                "json",
            ],
        )
        .json();
    assert_eq!(doc["alert_thresholds"], serde_json::json!([0.25]));

    // limitsd refuses a fraction out of (0, 1], naming the element.
    let err = d
        .ctl(
            ops,
            &["limits", "set", team, "--alert-thresholds", "0.5,1.5"],
        )
        .fails(1);
    assert!(err.contains("subject_limits.alert_thresholds[1]"), "{err}");
    // limitsctl refuses what is not a number, and the flag with --model.
    let err = d
        .ctl(ops, &["limits", "set", team, "--alert-thresholds", "lots"])
        .fails(2);
    assert!(err.contains("is not a threshold"), "{err}");
    let err = d
        .ctl(
            ops,
            &[
                "limits",
                "set",
                team,
                "--model",
                "gpt-4*",
                "--daily",
                "1",
                "--alert-thresholds",
                "0.5",
            ],
        )
        .fails(2);
    assert!(err.contains("--alert-thresholds"), "{err}");
    let err = d
        .ctl(
            ops,
            &[
                "limits",
                "set",
                team,
                "--model",
                "gpt-4*",
                "--clear",
                "alert-thresholds",
            ],
        )
        .fails(2);
    assert!(err.contains("belongs to the entry"), "{err}");
    let err = d
        .ctl(
            ops,
            &[
                "limits",
                "set",
                team,
                "--alert-thresholds",
                "0.5",
                "--clear",
                "alert_thresholds",
            ],
        )
        .fails(2);
    assert!(err.contains("both set and cleared"), "{err}");
    let unchanged = d
        .ctl(Some(AUDITOR), &["limits", "get", team, "-o", "json"])
        .json();
    assert_eq!(
        unchanged["alert_thresholds"],
        serde_json::json!([0.25]),
        "the refused calls changed nothing"
    );

    // Cleared (by the flag's name or the field's): the config's apply, the
    // row is gone, the list empty; the entry's limits stay.
    for name in ["alert-thresholds", "alert_thresholds"] {
        d.ctl(ops, &["limits", "set", team, "--alert-thresholds", "0.5"])
            .ok();
        let doc = d
            .ctl(ops, &["limits", "set", team, "--clear", name, "-o", "json"])
            .json();
        assert_eq!(doc["alert_thresholds"], serde_json::json!([]), "{name}");
        assert_eq!(doc["limits"]["daily"], 10.0);
    }
    let got = d.ctl(Some(AUDITOR), &["limits", "get", team]).ok();
    assert!(!got.contains("alert thresholds"), "{got}");
}

/// The data token of `watch_config`'s limitsd.
const GATEWAY: &str = "gateway-token-cli-0123456789";

/// A limitsd whose data plane asks for a token: `sk-cli` has a daily $1,
/// `ops` may change limits and `gateway` may use the data plane.
fn watch_config() -> String {
    format!(
        r#"limits:
  budgets:
    by_api_key:
      {KEY}: {{ daily: 1.00 }}
  security:
    data_plane_auth: true
    tokens:
      - {{ name: ops, sha256: "{ops}", scope: write }}
      - {{ name: gateway, sha256: "{gateway}", scope: data }}
"#,
        ops = sha256(OPS),
        gateway = sha256(GATEWAY),
    )
}

/// How long a watcher may take to start, or to see an event and exit.
const WATCH_DEADLINE: Duration = Duration::from_secs(20);

/// `limitsctl alerts watch` running beside the test, killed on drop: its
/// stdout and stderr are read line by line as they come.
struct Watcher {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// The stderr lines read so far, for failure messages.
    errors: Vec<String>,
}

/// Sends the lines of `pipe` to a channel, from a thread of their own.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Watcher {
    /// Starts `limitsctl [args]` with the data token, and waits until it
    /// says (on stderr) that the stream is open: limitsd has subscribed it,
    /// so every event from then on reaches it.
    fn start(d: &Limitsd, args: &[&str]) -> Watcher {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_limitsctl"));
        for var in [
            "LIMITSD_TOKEN",
            "LIMITSD_CA_CERT",
            "LIMITSD_CERT",
            "LIMITSD_KEY",
        ] {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .env("LIMITSD_ADDR", d.url())
            .env("LIMITSD_TOKEN", GATEWAY)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn limitsctl alerts watch");
        let stdout = lines_of(child.stdout.take().expect("stdout"));
        let stderr = lines_of(child.stderr.take().expect("stderr"));
        let mut w = Watcher {
            child,
            stdout,
            stderr,
            errors: Vec::new(),
        };
        let start = Instant::now();
        loop {
            let left = WATCH_DEADLINE.saturating_sub(start.elapsed());
            match w.stderr.recv_timeout(left) {
                Ok(line) if line.starts_with("limitsctl: watching alerts on ") => break,
                Ok(line) => w.errors.push(line),
                Err(e) => panic!(
                    "the watcher did not open its stream ({e:?}; exit {:?}); stderr: {:?}",
                    w.child.try_wait(),
                    w.errors
                ),
            }
        }
        w
    }

    /// The next line printed on stdout, within the deadline.
    fn line(&mut self) -> String {
        self.stdout
            .recv_timeout(WATCH_DEADLINE)
            .unwrap_or_else(|e| {
                let errors: Vec<String> = self.stderr.try_iter().collect();
                panic!("no line from the watcher ({e:?}); stderr: {errors:?}")
            })
    }

    /// Waits (within the deadline) for the watcher to exit by itself;
    /// its exit code, and what else it printed on stdout.
    fn exit(&mut self) -> (i32, Vec<String>) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for limitsctl") {
                break status;
            }
            assert!(
                start.elapsed() < WATCH_DEADLINE,
                "the watcher did not exit after its --count"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader threads end with the pipes: every line is in by then.
        let rest = self.stdout.iter().collect();
        self.errors.extend(self.stderr.iter());
        (status.code().expect("exited by a signal"), rest)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records `cost` for `sk-cli` as a gateway does, with the data token.
fn record_with_token(d: &Limitsd, cost: f64) -> pb::RecordUsageResponse {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(d.url())
            .unwrap()
            .connect()
            .await
            .expect("connect to limitsd");
        let bearer: tonic::metadata::MetadataValue<_> =
            format!("Bearer {GATEWAY}").parse().unwrap();
        let mut client =
            LimitsServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                Ok(req)
            });
        client
            .record_usage(pb::RecordUsageRequest {
                subjects: vec![key()],
                cost_usd: Some(cost),
                model: "gpt-4".into(),
                ..Default::default()
            })
            .await
            .expect("RecordUsage")
            .into_inner()
    })
}

/// `alerts watch` prints each crossing as it happens, as JSON or as a
/// line of a table, with the data plane's token; an API key is named by
/// its hash prefix, never printed; the stream outlives --timeout; --count
/// ends it.
#[test]
fn alerts_watch_prints_each_crossing_as_it_happens() {
    let d = Limitsd::start(&watch_config());
    let key = format!("api_key={KEY}");
    let set = d
        .ctl(
            Some(OPS),
            &[
                "limits",
                "set",
                &key,
                "--daily",
                "1",
                "--alert-thresholds",
                "0.5,0.9",
            ],
        )
        .ok();
    assert!(row(&set, "alert").contains("50%, 90%"), "{set}");

    // Without the data plane's token, refused with a hint, at once.
    let err = d.ctl(None, &["alerts", "watch", "--count", "1"]).fails(1);
    assert!(err.contains("hint: pass a token"), "{err}");

    // JSON: $0.60 of the key's $1 crosses 50 %, once.
    let mut json = Watcher::start(&d, &["alerts", "watch", "--count", "1", "-o", "json"]);
    assert_eq!(record_with_token(&d, 0.6).cost_usd, 0.6);
    let line = json.line();
    let (code, rest) = json.exit();
    assert_eq!((code, rest.len()), (0, 0), "one event, then exit 0");
    let event: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(event["type"], "budget.threshold_crossed");
    assert_eq!(event["dimension"], "api_key");
    assert_eq!(event["budget"], "daily");
    assert_eq!(event["period"], "rolling");
    assert_eq!(event["model_scope"], Value::Null);
    assert_eq!(event["threshold"], 0.5);
    assert_eq!(event["used_usd"], 0.6);
    assert_eq!(event["limit_usd"], 1.0);
    assert!(
        event["id"]
            .as_str()
            .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())),
        "{event}"
    );
    assert!(event["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    let subject = event["subject"].as_str().expect("subject");
    assert!(!subject.is_empty() && !line.contains(KEY), "{line}");

    // A table, open longer than its --timeout (which bounds the connection
    // and the stream's opening, not its events): $0.35 more crosses 90 %.
    let mut table = Watcher::start(&d, &["--timeout", "2s", "alerts", "watch", "--count", "1"]);
    let header: Vec<String> = table.line().split_whitespace().map(String::from).collect();
    assert_eq!(
        header,
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
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(record_with_token(&d, 0.35).cost_usd, 0.35);
    let line = table.line();
    let (code, _) = table.exit();
    assert_eq!(code, 0, "stderr: {:?}", table.errors);
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells[1..],
        [
            format!("api_key:{subject}").as_str(),
            "-",
            "daily",
            "90%",
            "$0.95",
            "$1.00"
        ],
        "{line}"
    );
    assert!(cells[0].ends_with('Z') && !line.contains(KEY), "{line}");
}

#[test]
fn runtime_limits_budgets_and_the_audit_trail() {
    let d = Limitsd::start(&config());
    let ops = Some(OPS);
    let key = format!("api_key={KEY}");
    // The config's $1.00 stops a $1.50 call.
    assert!(!d.allowed(1.5));

    // A runtime entry replaces the config's limits.
    let set = d
        .ctl(
            ops,
            &[
                "limits", "set", &key, "--daily", "2", "--rpm", "100", "--alias", "cli-key",
                "--reason", "trial",
            ],
        )
        .ok();
    assert!(
        set.contains("api_key_hash=") && set.contains("cli-key"),
        "{set}"
    );
    assert!(row(&set, "daily").contains("$2.00"), "{set}");
    let usage = d.ctl(ops, &["usage", &key]).ok();
    let daily = row(&usage, "daily");
    assert!(
        daily.contains("$2.00") && daily.contains("runtime") && daily.contains("0%"),
        "{usage}"
    );
    assert!(usage.contains("Reservations: none") && usage.contains("Leases: none"));
    let doc = d.ctl(ops, &["usage", &key, "-o", "json"]).json();
    assert_eq!(limit(&doc, "daily")["max"], 2.0);
    assert_eq!(limit(&doc, "daily")["source"], "runtime");
    assert_eq!(limit(&doc, "daily")["window_seconds"], 86_400);
    assert_eq!(limit(&doc, "requests_per_minute")["max"], 100);
    assert_eq!(doc["subject"]["dimension"], "api_key");

    // limitsd enforces it: the $1.50 call now fits, and is charged.
    assert!(d.allowed(1.5));
    d.record(1.5);
    let doc = d.ctl(ops, &["usage", &key, "-o", "json"]).json();
    assert_eq!(limit(&doc, "daily")["used"], 1.5);
    assert!(row(&d.ctl(ops, &["usage", &key]).ok(), "daily").contains("███████░░░ 75%"));

    // A refund of $0.50, exactly.
    let doc = d
        .ctl(
            ops,
            &[
                "budget", "adjust", &key, "--usd", "-0.5", "--reason", "refund", "-o", "json",
            ],
        )
        .json();
    assert_eq!(limit(&doc, "daily")["used"], 1.0);
    assert_eq!(limit(&doc, "daily")["remaining"], 1.0);
    let table = d
        .ctl(
            ops,
            &[
                "budget", "adjust", &key, "--usd", "0.25", "--reason", "debit",
            ],
        )
        .ok();
    assert!(row(&table, "daily").contains("$1.25"), "{table}");
    let doc = d
        .ctl(
            ops,
            &[
                "budget", "adjust", &key, "--usd", "-0.25", "--window", "daily", "--reason",
                "undo", "-o", "json",
            ],
        )
        .json();
    assert_eq!(limit(&doc, "daily")["used"], 1.0);

    // A temporary increase shows as raised, and is enforced.
    let raised = d
        .ctl(
            ops,
            &[
                "budget", "raise", &key, "--window", "daily", "--usd", "1", "--for", "1h",
                "--reason", "launch",
            ],
        )
        .ok();
    assert!(row(&raised, "daily").contains("+$1.00"), "{raised}");
    assert!(
        raised.contains("launch") && raised.contains("(in "),
        "{raised}"
    );
    let usage = d.ctl(ops, &["usage", &key]).ok();
    assert!(
        row(&usage, "daily").contains("$3.00 (+$1.00 raised)"),
        "{usage}"
    );
    let doc = d.ctl(ops, &["usage", &key, "-o", "json"]).json();
    assert_eq!(limit(&doc, "daily")["max"], 3.0);
    assert_eq!(limit(&doc, "daily")["raised"], 1.0);
    assert!(d.allowed(1.9), "$1.00 used + $1.90 fits the raised $3.00");

    // An etag makes a change conditional.
    let entry = d.ctl(ops, &["limits", "get", &key, "-o", "json"]).json();
    let etag = entry["etag"].as_str().expect("etag").to_owned();
    let hash = entry["key_hash"].as_str().expect("key_hash").to_owned();
    assert_eq!(hash.len(), 32);
    assert_eq!(entry["limits"]["daily"], 2.0);
    let err = d
        .ctl(
            ops,
            &["limits", "set", &key, "--rpm", "200", "--etag", "stale"],
        )
        .fails(1);
    assert!(
        err.starts_with("limitsctl: ") && err.contains("etag"),
        "{err}"
    );
    let by_hash = format!("api_key_hash={hash}");
    d.ctl(
        ops,
        &[
            "limits", "set", &by_hash, "--rpm", "200", "--etag", &etag, "--reason", "more",
        ],
    )
    .ok();
    let list = d
        .ctl(Some(AUDITOR), &["limits", "list", "-o", "json"])
        .json();
    let entries = list["subject_limits"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list:#}");
    assert_eq!(entries[0]["key_hash"], hash.as_str());
    assert_eq!(entries[0]["limits"]["requests_per_minute"], 200);
    assert!(
        d.ctl(Some(AUDITOR), &["limits", "list"])
            .ok()
            .contains("cli-key")
    );

    // Deleting the entry falls back to the config (plus the live increase).
    let deleted = d
        .ctl(
            ops,
            &["limits", "delete", &key, "--reason", "back to the config"],
        )
        .ok();
    assert!(deleted.contains("config limits"), "{deleted}");
    let doc = d.ctl(ops, &["usage", &key, "-o", "json"]).json();
    let daily = limit(&doc, "daily");
    assert_eq!(daily["source"], "config");
    assert_eq!(
        daily["max"].as_f64().unwrap() - daily["raised"].as_f64().unwrap(),
        1.0
    );
    assert!(row(&d.ctl(ops, &["usage", &key]).ok(), "daily").contains("config"));
    let err = d.ctl(ops, &["limits", "get", &key]).fails(1);
    assert!(err.contains("no runtime entry"), "{err}");

    // The task's own example.
    d.ctl(
        ops,
        &[
            "limits",
            "set",
            "team=research",
            "--monthly",
            "25000",
            "--alias",
            "research",
        ],
    )
    .ok();
    let teams = d
        .ctl(
            ops,
            &["limits", "list", "--dimension", "team", "-o", "json"],
        )
        .json();
    assert_eq!(teams["subject_limits"][0]["subject"], "team=research");
    assert_eq!(teams["subject_limits"][0]["limits"]["monthly"], 25000.0);
    assert_eq!(teams["subject_limits"][0]["alias"], "research");
    let usage = d.ctl(ops, &["usage", "team=research"]).ok();
    assert!(row(&usage, "monthly").contains("$25000.00"), "{usage}");

    // A reset empties the window.
    let reset = d
        .ctl(
            ops,
            &[
                "budget", "reset", &key, "--window", "daily", "--reason", "clean", "-o", "json",
            ],
        )
        .json();
    assert_eq!(limit(&reset, "daily")["used"], 0.0);

    // The trail, newest first, by ops, and never the key.
    let audit = d.ctl(Some(AUDITOR), &["audit"]).ok();
    let rows: Vec<&str> = audit
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        rows[0].contains("ResetUsage") && rows[0].contains("ops"),
        "{audit}"
    );
    assert!(
        rows[1].contains("UpdateSubjectLimits") && rows[1].contains("monthly – → 25000.0"),
        "{audit}"
    );
    assert!(rows[2].contains("DeleteSubjectLimits"), "{audit}");
    assert!(audit.contains("daily – → 2.0"), "{audit}");
    let doc = d.ctl(Some(AUDITOR), &["audit", "-o", "json"]).json();
    let events = doc["events"].as_array().unwrap();
    let methods: Vec<&str> = events
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "ResetUsage",
            "UpdateSubjectLimits",
            "DeleteSubjectLimits",
            "UpdateSubjectLimits",
            "RaiseBudget",
            "AdjustUsage",
            "AdjustUsage",
            "AdjustUsage",
            "UpdateSubjectLimits",
        ]
    );
    assert!(events.iter().all(|e| e["actor"] == "ops"), "{doc:#}");
    let times: Vec<&str> = events.iter().map(|e| e["time"].as_str().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {times:?}"
    );
    assert_eq!(events[7]["reason"], "refund");
    assert_eq!(events[7]["before"]["used"]["daily"], 1.5);
    assert_eq!(events[7]["after"]["used"]["daily"], 1.0);
    // Pages: two at a time, followed to the end with --all.
    let page = d
        .ctl(Some(AUDITOR), &["audit", "--page-size", "2", "-o", "json"])
        .json();
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_ne!(page["next_page_token"], "");
    let all = d
        .ctl(
            Some(AUDITOR),
            &["audit", "--page-size", "2", "--all", "-o", "json"],
        )
        .json();
    assert_eq!(all["events"], doc["events"]);
}

#[test]
fn refusals_and_bad_values_are_readable() {
    let d = Limitsd::start(&config());
    // No token, and an unknown one.
    for token in [None, Some("not-a-token")] {
        let err = d.ctl(token, &["limits", "list"]).fails(1);
        assert!(err.starts_with("limitsctl: "), "{err}");
        assert!(
            err.contains("hint: pass a token with --token or LIMITSD_TOKEN"),
            "{err}"
        );
        assert!(
            !err.contains("Status {") && !err.contains("not-a-token"),
            "{err}"
        );
    }
    // A read token cannot write.
    let err = d
        .ctl(Some(AUDITOR), &["limits", "set", "team=x", "--daily", "1"])
        .fails(1);
    assert!(
        err.contains("read scope") && err.contains("changes need `write`"),
        "{err}"
    );
    assert!(!err.contains(AUDITOR), "{err}");
    // The server's message names the field.
    let err = d
        .ctl(Some(OPS), &["limits", "set", "team=x", "--daily", "-1"])
        .fails(1);
    assert!(
        err.starts_with("limitsctl: subject_limits.daily_usd: "),
        "{err}"
    );
    let err = d
        .ctl(
            Some(OPS),
            &[
                "budget", "raise", "team=x", "--window", "daily", "--usd", "1", "--for", "1h",
                "--reason", "r",
            ],
        )
        .fails(1);
    assert!(err.contains("hint: the subject has no such limit"), "{err}");
    // Usage errors are clap's: exit code 2, nothing sent.
    d.ctl(Some(OPS), &["limits", "set", "team=x"]).fails(2);
    d.ctl(
        Some(OPS),
        &[
            "limits", "set", "team=x", "--daily", "1", "--clear", "daily",
        ],
    )
    .fails(2);
    d.ctl(
        Some(OPS),
        &["usage", "api_key_hash=0123456789abcdef0123456789abcdef"],
    )
    .fails(2);
    d.ctl(Some(OPS), &["usage", "group=x"]).fails(2);
    d.ctl(Some(OPS), &["budget", "adjust", "team=x", "--reason", "r"])
        .fails(2);
    d.ctl(
        Some(OPS),
        &[
            "budget", "adjust", "team=x", "--usd", "1", "--window", "rpm", "--reason", "r",
        ],
    )
    .fails(2);
    // Nothing was changed by any of it.
    assert!(
        d.ctl(Some(OPS), &["audit"])
            .ok()
            .contains("No admin changes"),
        "a refused call left a trace"
    );
    // Nobody listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = limitsctl(
        &[("LIMITSD_TOKEN", OPS.to_owned())],
        &["--addr", &format!("127.0.0.1:{port}"), "limits", "list"],
    )
    .fails(1);
    assert!(
        err.contains(&format!("cannot reach limitsd at 127.0.0.1:{port}")),
        "{err}"
    );
    // The token is never shown, not even by --help.
    let help = limitsctl(&[("LIMITSD_TOKEN", OPS.to_owned())], &["--help"]).ok();
    assert!(
        help.contains("LIMITSD_TOKEN") && !help.contains(OPS),
        "{help}"
    );
}

#[test]
fn the_admin_api_off_is_said_so_and_usage_shows_holds() {
    let d = Limitsd::start(
        "limits:\n  budgets:\n    by_team:\n      eng: { daily: 5 }\n  \
         rate_limits:\n    by_team:\n      eng: { max_concurrent: 2 }\n",
    );
    let err = d.ctl(Some(OPS), &["limits", "list"]).fails(1);
    assert!(
        err.contains("hint: the admin API is off on this server"),
        "{err}"
    );
    // The data plane needs no token here. A reserved check and a lease
    // show under the limits.
    let eng = pb::Subject {
        dimension: pb::Dimension::Team as i32,
        id: "eng".into(),
    };
    let (reservation, lease) = d.call(async |mut c| {
        let check = c
            .check_limits(pb::CheckLimitsRequest {
                subjects: vec![eng.clone()],
                model: "gpt-4".into(),
                estimated_cost_usd: Some(0.5),
                reserve: true,
                ..Default::default()
            })
            .await
            .expect("CheckLimits")
            .into_inner();
        let lease = c
            .acquire_concurrent(pb::AcquireConcurrentRequest {
                subjects: vec![eng.clone()],
                ttl: None,
            })
            .await
            .expect("AcquireConcurrent")
            .into_inner();
        assert!(check.allowed && lease.acquired);
        (check.reservation_id, lease.lease_id)
    });
    let usage = d.ctl(None, &["usage", "team=eng"]).ok();
    let daily = row(&usage, "daily");
    assert!(
        daily.contains("$5.00") && daily.contains("$0.50") && daily.contains("config"),
        "{usage}"
    );
    assert!(row(&usage, "max_concurrent").contains("50%"), "{usage}");
    assert!(
        usage.contains(&reservation) && usage.contains(&lease),
        "{usage}"
    );
    let doc = d.ctl(None, &["usage", "team=eng", "-o", "json"]).json();
    assert_eq!(doc["subject"]["id"], "eng");
    assert_eq!(
        doc["reservations"][0]["reservation_id"],
        reservation.as_str()
    );
    assert_eq!(doc["reservations"][0]["held_cost_usd"], 0.5);
    assert_eq!(doc["leases"][0]["lease_id"], lease.as_str());
    assert_eq!(limit(&doc, "max_concurrent")["used"], 1);
    assert_eq!(limit(&doc, "max_concurrent")["window_seconds"], Value::Null);
}

#[test]
fn limits_list_follows_pages() {
    let d = Limitsd::start(&config());
    for team in ["a", "b", "c"] {
        d.ctl(
            Some(OPS),
            &["limits", "set", &format!("team={team}"), "--rpm", "5"],
        )
        .ok();
    }
    let subjects = |doc: &Value| -> Vec<String> {
        doc["subject_limits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["subject"].as_str().unwrap().to_owned())
            .collect()
    };
    // Pages of two, followed to the end.
    let all = d
        .ctl(
            Some(AUDITOR),
            &["limits", "list", "--page-size", "2", "-o", "json"],
        )
        .json();
    assert_eq!(subjects(&all), ["team=a", "team=b", "team=c"]);
    assert_eq!(all["next_page_token"], "");
    // One page at a time: the first, then the one its token names.
    let first = d
        .ctl(
            Some(AUDITOR),
            &[
                "limits",
                "list",
                "--page-size",
                "2",
                "--page-token",
                "",
                "-o",
                "json",
            ],
        )
        .json();
    assert_eq!(subjects(&first), ["team=a", "team=b"]);
    let next = first["next_page_token"].as_str().unwrap();
    assert!(!next.is_empty());
    let table = d
        .ctl(
            Some(AUDITOR),
            &[
                "limits",
                "list",
                "--page-size",
                "2",
                "--page-token",
                "",
                "--dimension",
                "team",
            ],
        )
        .ok();
    assert!(
        table.contains(&format!("More: --page-size 2 --page-token {next}")),
        "{table}"
    );
    let last = d
        .ctl(
            Some(AUDITOR),
            &[
                "limits",
                "list",
                "--page-size",
                "2",
                "--page-token",
                next,
                "-o",
                "json",
            ],
        )
        .json();
    assert_eq!(subjects(&last), ["team=c"]);
    assert_eq!(last["next_page_token"], "");
}

#[test]
fn token_new_makes_a_token_limitsd_accepts() {
    let run = limitsctl(&[], &["token", "new", "--name", "robot", "--scope", "read"]);
    let out = run.ok();
    let mut lines = out.lines().map(str::trim).filter(|l| !l.is_empty());
    assert!(lines.next().unwrap().starts_with("Token"));
    let token = lines.next().unwrap();
    assert_eq!(token.len(), 64, "{out}");
    assert!(lines.next().unwrap().starts_with("SHA-256"));
    assert_eq!(lines.next().unwrap(), sha256(token));
    assert!(
        out.contains(&format!("sha256: \"{}\", scope: read", sha256(token))),
        "{out}"
    );
    assert!(
        !out.contains("MERCATOR_LIMITS_SECURITY_ADMIN_TOKEN_SHA256"),
        "only for write tokens"
    );

    // The JSON form's config, as it is, turns the admin API on for it.
    let doc = limitsctl(&[], &["token", "new", "--name", "robot", "-o", "json"]).json();
    let token = doc["token"].as_str().unwrap();
    assert_eq!(doc["sha256"], sha256(token).as_str());
    assert_eq!(
        doc["env"],
        format!(
            "MERCATOR_LIMITS_SECURITY_ADMIN_TOKEN_SHA256={}",
            sha256(token)
        )
        .as_str()
    );
    let d = Limitsd::start(doc["config"].as_str().unwrap());
    d.ctl(Some(token), &["limits", "set", "user=bot", "--rps", "5"])
        .ok();
    let audit = d.ctl(Some(token), &["audit", "-o", "json"]).json();
    assert_eq!(audit["events"][0]["actor"], "robot");
    // An expiry, by instant and from now, and cleared.
    let entry = d
        .ctl(
            Some(token),
            &[
                "limits",
                "set",
                "user=bot",
                "--expires",
                "2099-01-01T00:00:00Z",
                "-o",
                "json",
            ],
        )
        .json();
    assert_eq!(entry["expire_time"], "2099-01-01T00:00:00Z");
    assert_eq!(
        entry["limits"]["requests_per_second"], 5,
        "other fields stay"
    );
    let entry = d
        .ctl(
            Some(token),
            &[
                "limits",
                "set",
                "user=bot",
                "--expires-in",
                "7d",
                "-o",
                "json",
            ],
        )
        .json();
    assert!(entry["expire_time"].as_str().unwrap() < "2099", "{entry:#}");
    let entry = d
        .ctl(
            Some(token),
            &[
                "limits", "set", "user=bot", "--clear", "expires", "--clear", "rps", "--tpm", "9",
                "-o", "json",
            ],
        )
        .json();
    assert_eq!(entry["expire_time"], Value::Null);
    assert_eq!(
        entry["limits"],
        serde_json::json!({ "tokens_per_minute": 9 })
    );
    // Two runs, two tokens.
    let again = limitsctl(&[], &["token", "new", "-o", "json"]).json();
    assert_ne!(again["token"], doc["token"]);
}

#[test]
fn completion_and_help_for_every_command() {
    let script = limitsctl(&[], &["completion", "bash"]).ok();
    assert!(
        script.contains("_limitsctl") && script.contains("complete "),
        "{script}"
    );
    assert!(
        limitsctl(&[], &["completion", "zsh"])
            .ok()
            .contains("#compdef limitsctl")
    );
    let commands: &[&[&str]] = &[
        &[],
        &["usage"],
        &["limits"],
        &["limits", "get"],
        &["limits", "list"],
        &["limits", "set"],
        &["limits", "delete"],
        &["budget"],
        &["budget", "adjust"],
        &["budget", "reset"],
        &["budget", "raise"],
        &["audit"],
        &["alerts"],
        &["alerts", "watch"],
        &["token"],
        &["token", "new"],
        &["completion"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let help = limitsctl(&[], &args).ok();
        let examples = help.split_once("Examples:\n").map(|(_, e)| e);
        assert!(
            examples.is_some_and(|e| e.contains("\n  limitsctl ")),
            "no examples in {args:?}:\n{help}"
        );
    }
    assert!(
        limitsctl(&[], &["--version"])
            .ok()
            .starts_with("limitsctl ")
    );
    limitsctl(&[], &["no-such-command"]).fails(2);
}

/// A CA, and certificates it signs.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    /// Writes a leaf certificate for `names` with `cn` as its common name
    /// to `<file>.crt` and `<file>.key` in `dir`.
    fn leaf(&self, dir: &Path, file: &str, cn: &str, names: &[&str]) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{file}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    }
}

#[test]
fn over_tls_with_a_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("limitsctl test CA");
    std::fs::write(dir.path().join("ca.crt"), ca.issuer.pem()).unwrap();
    ca.leaf(dir.path(), "server", "limitsd", &["localhost", "127.0.0.1"]);
    ca.leaf(
        dir.path(),
        "client",
        "ops.example.com",
        &["ops.example.com"],
    );
    let tls = format!(
        "  server:\n    tls:\n      cert_file: {d}/server.crt\n      key_file: {d}/server.key\n      \
         client_ca_file: {d}/ca.crt\n      client_auth: optional\n",
        d = dir.path().display()
    );
    let clients = "    clients:\n      - { subject: ops.example.com, scope: write }\n";
    // The security section is last in config(): the client list joins it.
    let yaml = format!("{}{clients}{tls}", config());
    let d = Limitsd::start_in(dir, &yaml);
    let files = d.dir.path();
    let ca_cert = files.join("ca.crt").display().to_string();
    let https = format!("https://127.0.0.1:{}", d.addr.port());

    // The CA and a token.
    let list = limitsctl(
        &[("LIMITSD_TOKEN", AUDITOR.to_owned())],
        &["--addr", &https, "--ca-cert", &ca_cert, "limits", "list"],
    )
    .ok();
    assert!(list.contains("No runtime entries"), "{list}");
    // host:port with a CA means TLS; the name checked can be given.
    let localhost = format!("localhost:{}", d.addr.port());
    limitsctl(
        &[
            ("LIMITSD_TOKEN", AUDITOR.to_owned()),
            ("LIMITSD_CA_CERT", ca_cert.clone()),
        ],
        &[
            "--addr",
            &localhost,
            "--tls-server-name",
            "localhost",
            "limits",
            "list",
        ],
    )
    .ok();
    // The client certificate is the credential: no token.
    let cert = files.join("client.crt").display().to_string();
    let key_file = files.join("client.key").display().to_string();
    limitsctl(
        &[],
        &[
            "--addr",
            &https,
            "--ca-cert",
            &ca_cert,
            "--cert",
            &cert,
            "--key",
            &key_file,
            "limits",
            "set",
            "team=tls",
            "--daily",
            "3",
            "--reason",
            "mTLS",
        ],
    )
    .ok();
    let audit = limitsctl(
        &[("LIMITSD_TOKEN", AUDITOR.to_owned())],
        &[
            "--addr",
            &https,
            "--ca-cert",
            &ca_cert,
            "audit",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(audit["events"][0]["actor"], "cert:ops.example.com");
    // Without the CA, limitsd's certificate is not trusted; plaintext to a
    // TLS listener gets no answer.
    let err = limitsctl(
        &[("LIMITSD_TOKEN", AUDITOR.to_owned())],
        &["--addr", &https, "limits", "list"],
    )
    .fails(1);
    assert!(err.starts_with("limitsctl: "), "{err}");
    let err = limitsctl(
        &[("LIMITSD_TOKEN", AUDITOR.to_owned())],
        &[
            "--addr",
            &format!("http://127.0.0.1:{}", d.addr.port()),
            "limits",
            "list",
        ],
    )
    .fails(1);
    assert!(
        err.starts_with("limitsctl: ") && err.contains("hint: cannot reach limitsd"),
        "{err}"
    );
    // --cert without --key is a usage error.
    limitsctl(&[], &["--addr", &https, "--cert", &cert, "limits", "list"]).fails(2);
}

#[test]
fn check_says_whether_a_request_fits_and_why_not() {
    let d = Limitsd::start(&config());
    let key = format!("api_key={KEY}");
    // The config's $1.00 daily budget: $1.50 is denied, with the reason.
    let denied = d.ctl(None, &["check", &key, "--cost", "1.5"]).ok();
    assert!(denied.starts_with("DENIED (action block)"), "{denied}");
    assert!(denied.contains("daily budget"), "{denied}");
    assert!(!denied.contains(KEY), "the key is never printed: {denied}");
    let doc = d
        .ctl(None, &["check", &key, "--cost", "0.5", "-o", "json"])
        .json();
    assert_eq!(doc["allowed"], true);
    assert_eq!(doc["action"], "allow");
    assert_eq!(limit(&doc, "daily")["max"], 1.0);
    // It is the gateway's check: it agrees with one made over gRPC.
    assert!(d.allowed(0.5) && !d.allowed(1.5));
    // Bad input is the server's field-naming message.
    let err = d.ctl(None, &["check", &key, "--cost", "-1"]).fails(1);
    assert!(err.contains("estimated_cost_usd"), "{err}");
}
