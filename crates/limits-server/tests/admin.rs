//! The admin API end to end, against the real limitsd on 127.0.0.1:0:
//! runtime entries enforced at once and with the documented precedence,
//! etags, budget operations that are exact, the audit trail, credentials
//! and scopes, a listener of its own, and persistence across `kill -9`.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use limits_server::pb;
use limits_server::pb::admin as apb;
use limits_server::pb::admin::limits_admin_service_client::LimitsAdminServiceClient;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Code, Request};

const WRITE_TOKEN: &str = "w-6f1e0c3a9b2d4e8f";
const READ_TOKEN: &str = "r-0a9b8c7d6e5f4a3b";

fn sha(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A config with a write token (`ops`) and a read token (`auditor`), and
/// `body` appended under `limits:`.
fn config(body: &str) -> String {
    format!(
        "limits:\n  security:\n    tokens:\n      - {{ name: ops, sha256: \"{}\", scope: write }}\n      - {{ name: auditor, sha256: \"{}\", scope: read }}\n{body}",
        sha(WRITE_TOKEN),
        sha(READ_TOKEN)
    )
}

const BASE: &str = "  budgets:\n    by_api_key:\n      sk-live-a: { daily: 1.00 }\n      default: { daily: 5.00 }\n";

/// An admin client that sends `token` (if any) on every call.
struct Admin {
    inner: LimitsAdminServiceClient<Channel>,
    token: Option<String>,
}

impl Admin {
    async fn to(addr: std::net::SocketAddr, token: Option<&str>) -> Admin {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        Admin {
            inner: LimitsAdminServiceClient::new(channel),
            token: token.map(str::to_owned),
        }
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    async fn create(
        &mut self,
        limits: apb::SubjectLimits,
    ) -> Result<apb::SubjectLimits, tonic::Status> {
        let r = self.req(apb::CreateSubjectLimitsRequest {
            subject_limits: Some(limits),
            reason: "test".into(),
        });
        Ok(self
            .inner
            .create_subject_limits(r)
            .await?
            .into_inner()
            .subject_limits
            .unwrap())
    }

    async fn get(&mut self, subject: pb::Subject) -> Result<apb::SubjectLimits, tonic::Status> {
        let r = self.req(apb::GetSubjectLimitsRequest {
            subject: Some(by_id(subject)),
        });
        Ok(self
            .inner
            .get_subject_limits(r)
            .await?
            .into_inner()
            .subject_limits
            .unwrap())
    }

    async fn update(
        &mut self,
        subject: pb::Subject,
        limits: apb::SubjectLimits,
        paths: &[&str],
        etag: &str,
    ) -> Result<apb::SubjectLimits, tonic::Status> {
        let r = self.req(apb::UpdateSubjectLimitsRequest {
            subject: Some(by_id(subject)),
            subject_limits: Some(limits),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }),
            etag: etag.into(),
            allow_missing: false,
            reason: "raise for the launch".into(),
        });
        Ok(self
            .inner
            .update_subject_limits(r)
            .await?
            .into_inner()
            .subject_limits
            .unwrap())
    }

    async fn delete(&mut self, subject: pb::Subject) -> Result<(), tonic::Status> {
        let r = self.req(apb::DeleteSubjectLimitsRequest {
            subject: Some(by_id(subject)),
            etag: String::new(),
            reason: "back to the config".into(),
        });
        self.inner.delete_subject_limits(r).await.map(drop)
    }

    async fn adjust(
        &mut self,
        subject: pb::Subject,
        resource: apb::Resource,
        amount: f64,
        kind: pb::LimitKind,
    ) -> Result<Vec<pb::LimitStatus>, tonic::Status> {
        let r = self.req(apb::AdjustUsageRequest {
            subject: Some(by_id(subject)),
            resource: resource as i32,
            amount,
            kind: kind as i32,
            reason: "refund of a failed batch".into(),
        });
        Ok(self.inner.adjust_usage(r).await?.into_inner().statuses)
    }

    async fn list(&mut self) -> Vec<apb::SubjectLimits> {
        let r = self.req(apb::ListSubjectLimitsRequest::default());
        self.inner
            .list_subject_limits(r)
            .await
            .expect("list")
            .into_inner()
            .subject_limits
    }

    async fn audit(&mut self, page_size: i32, page_token: &str) -> apb::ListAuditEventsResponse {
        let r = self.req(apb::ListAuditEventsRequest {
            page_size,
            page_token: page_token.into(),
        });
        self.inner
            .list_audit_events(r)
            .await
            .expect("audit")
            .into_inner()
    }
}

fn by_id(subject: pb::Subject) -> apb::SubjectRef {
    apb::SubjectRef {
        subject: Some(subject),
        key_hash: String::new(),
    }
}

fn entry(subject: pb::Subject) -> apb::SubjectLimits {
    apb::SubjectLimits {
        subject: Some(subject),
        ..Default::default()
    }
}

fn in_secs(s: u64) -> prost_types::Timestamp {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(s);
    prost_types::Timestamp {
        seconds: t.as_secs() as i64,
        nanos: t.subsec_nanos() as i32,
    }
}

/// A limit's status in a GetUsage answer.
async fn status(d: &Limitsd, s: pb::Subject, kind: pb::LimitKind) -> pb::LimitStatus {
    let usage = d
        .client()
        .await
        .get_usage(usage_req(s))
        .await
        .unwrap()
        .into_inner();
    usage
        .statuses
        .into_iter()
        .find(|x| x.kind == kind as i32)
        .unwrap_or_else(|| panic!("no {kind:?}"))
}

async fn allowed(d: &Limitsd, s: pb::Subject, cost: f64) -> bool {
    d.client()
        .await
        .check_limits(check(vec![s], cost))
        .await
        .unwrap()
        .into_inner()
        .allowed
}

#[tokio::test]
async fn a_runtime_entry_is_enforced_at_once_and_deleting_it_falls_back_to_the_config() {
    let d = Limitsd::start(&config(BASE));
    let mut admin = Admin::to(d.addr, Some(WRITE_TOKEN)).await;
    let key = || key("sk-live-a");

    // The config's $1.00 daily budget, from the config.
    let s = status(&d, key(), pb::LimitKind::BudgetDaily).await;
    assert_eq!((s.limit, s.source), (1.0, pb::LimitSource::Config as i32));
    assert!(allowed(&d, key(), 0.50).await);

    // A runtime entry of $0.10 replaces it for the next check.
    let created = admin
        .create(apb::SubjectLimits {
            daily_usd: Some(0.10),
            requests_per_minute: Some(100),
            alias: "acme-prod".into(),
            ..entry(key())
        })
        .await
        .expect("create");
    assert!(
        created.subject.unwrap().id.is_empty(),
        "the key is never answered"
    );
    assert_eq!(created.key_hash.len(), 32);
    assert_eq!(created.etag.len(), 16);
    assert!(!allowed(&d, key(), 0.50).await, "$0.50 does not fit $0.10");
    let s = status(&d, key(), pb::LimitKind::BudgetDaily).await;
    assert_eq!((s.limit, s.source), (0.10, pb::LimitSource::Runtime as i32));
    // The runtime entry sets all of the subject's limits: the config's
    // budget does not show through, and its own request limit applies.
    let s = status(&d, key(), pb::LimitKind::RequestsPerMinute).await;
    assert_eq!(s.limit, 100.0);

    // Creating it again is ALREADY_EXISTS, and changes nothing.
    let again = admin
        .create(apb::SubjectLimits {
            daily_usd: Some(9.0),
            ..entry(key())
        })
        .await;
    assert_eq!(again.unwrap_err().code(), Code::AlreadyExists);
    assert_eq!(admin.get(key()).await.unwrap().daily_usd, Some(0.10));

    // Update with a field mask: only the daily budget changes.
    let updated = admin
        .update(
            key(),
            apb::SubjectLimits {
                daily_usd: Some(2.0),
                ..Default::default()
            },
            &["daily_usd"],
            &created.etag,
        )
        .await
        .expect("update");
    assert_eq!(updated.daily_usd, Some(2.0));
    assert_eq!(updated.requests_per_minute, Some(100), "not in the mask");
    assert_eq!(updated.alias, "acme-prod");
    assert_ne!(updated.etag, created.etag);
    assert!(allowed(&d, key(), 0.50).await);

    // A stale etag is ABORTED, and changes nothing.
    let stale = admin
        .update(
            key(),
            apb::SubjectLimits {
                daily_usd: Some(0.01),
                ..Default::default()
            },
            &["daily_usd"],
            &created.etag,
        )
        .await;
    assert_eq!(stale.unwrap_err().code(), Code::Aborted);
    assert_eq!(admin.get(key()).await.unwrap().daily_usd, Some(2.0));

    // A masked field left unset is cleared.
    let cleared = admin
        .update(
            key(),
            apb::SubjectLimits::default(),
            &["requests_per_minute"],
            "",
        )
        .await
        .expect("clear");
    assert_eq!(cleared.requests_per_minute, None);

    // Delete: the config's entry applies again.
    admin.delete(key()).await.expect("delete");
    assert_eq!(admin.get(key()).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        admin.delete(key()).await.unwrap_err().code(),
        Code::NotFound
    );
    let s = status(&d, key(), pb::LimitKind::BudgetDaily).await;
    assert_eq!((s.limit, s.source), (1.0, pb::LimitSource::Config as i32));

    // An id with no config entry: from the default, then the runtime entry.
    let other = || common::key("sk-live-b");
    let s = status(&d, other(), pb::LimitKind::BudgetDaily).await;
    assert_eq!((s.limit, s.source), (5.0, pb::LimitSource::Default as i32));
    admin
        .create(apb::SubjectLimits {
            daily_usd: Some(3.0),
            ..entry(other())
        })
        .await
        .unwrap();
    let s = status(&d, other(), pb::LimitKind::BudgetDaily).await;
    assert_eq!((s.limit, s.source), (3.0, pb::LimitSource::Runtime as i32));
    // Users and teams too, and all of them in the list.
    admin
        .create(apb::SubjectLimits {
            monthly_usd: Some(25_000.0),
            alias: "research".into(),
            ..entry(team("research"))
        })
        .await
        .unwrap();
    let list = admin.list().await;
    assert_eq!(list.len(), 2);
    assert_eq!(
        list[0].subject.as_ref().unwrap().dimension,
        pb::Dimension::ApiKey as i32
    );
    assert_eq!(list[1].subject.as_ref().unwrap().id, "research");
}

/// A runtime entry may put a subject's budgets on a calendar: checks then
/// report calendar periods ending at the zone's next midnight, and an
/// update can take the calendar away again.
#[tokio::test]
async fn a_runtime_entry_can_put_budgets_on_a_calendar() {
    let d = Limitsd::start(&config(BASE));
    let mut admin = Admin::to(d.addr, Some(WRITE_TOKEN)).await;
    let created = admin
        .create(apb::SubjectLimits {
            daily_usd: Some(2.0),
            weekly_usd: Some(5.0),
            calendar: Some(apb::BudgetCalendar {
                time_zone: "Asia/Tokyo".into(),
                week_start: "Sunday".into(),
                month_anchor_day: 0,
            }),
            ..entry(team("cal-team"))
        })
        .await
        .expect("create");
    let cal = created.calendar.clone().expect("the calendar is answered");
    assert_eq!(
        (
            cal.time_zone.as_str(),
            cal.week_start.as_str(),
            cal.month_anchor_day
        ),
        ("Asia/Tokyo", "sunday", 1)
    );
    assert_eq!(created.weekly_usd, Some(5.0));
    let got = admin.get(team("cal-team")).await.unwrap();
    assert_eq!(got.calendar, created.calendar);

    let daily = status(&d, team("cal-team"), pb::LimitKind::BudgetDaily).await;
    assert_eq!(daily.period, pb::BudgetPeriod::Calendar as i32);
    // Tokyo has no daylight saving: midnight there is 15:00 UTC.
    let reset = daily.reset_at.expect("a calendar budget always resets");
    assert_eq!(reset.seconds.rem_euclid(86_400), 15 * 3_600);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(reset.seconds > now && reset.seconds <= now + 86_400);
    let weekly = status(&d, team("cal-team"), pb::LimitKind::BudgetWeekly).await;
    assert_eq!(weekly.period, pb::BudgetPeriod::Calendar as i32);
    assert_eq!(weekly.limit, 5.0);

    // Spend counts against both; clearing the calendar makes them roll.
    d.client()
        .await
        .record_usage(record(vec![team("cal-team")], 1.5))
        .await
        .unwrap();
    assert!(!allowed(&d, team("cal-team"), 1.0).await);
    let updated = admin
        .update(
            team("cal-team"),
            apb::SubjectLimits::default(),
            &["calendar"],
            &got.etag,
        )
        .await
        .expect("update");
    assert_eq!(updated.calendar, None);
    let daily = status(&d, team("cal-team"), pb::LimitKind::BudgetDaily).await;
    assert_eq!(daily.period, pb::BudgetPeriod::Rolling as i32);
    assert_eq!(daily.used, 0.0, "a rolling window counts afresh");
}

/// A runtime entry may hold model scopes: they apply at once to checks for
/// their models, are answered by Get, replaced as a whole by an update,
/// and refused naming the field when wrong.
#[tokio::test]
async fn a_runtime_entry_can_hold_model_scopes() {
    let d = Limitsd::start(&config(BASE));
    let mut admin = Admin::to(d.addr, Some(WRITE_TOKEN)).await;
    let scope = |model: &str, daily: f64| apb::ModelScope {
        model: model.into(),
        limits: Some(apb::SubjectLimits {
            daily_usd: Some(daily),
            ..Default::default()
        }),
    };
    let created = admin
        .create(apb::SubjectLimits {
            daily_usd: Some(10.0),
            model_scopes: vec![scope("gpt-4*", 1.0), scope("claude-3-opus", 3.0)],
            ..entry(team("scoped"))
        })
        .await
        .expect("create");
    let got = admin.get(team("scoped")).await.unwrap();
    let models: Vec<&str> = got.model_scopes.iter().map(|s| s.model.as_str()).collect();
    assert_eq!(models, ["claude-3-opus", "gpt-4*"], "most specific first");
    assert_eq!(got.model_scopes, created.model_scopes);

    let ask = |model: &str, cost: f64| pb::CheckLimitsRequest {
        model: model.into(),
        ..check(vec![team("scoped")], cost)
    };
    let denied = d
        .client()
        .await
        .check_limits(ask("gpt-4o", 2.0))
        .await
        .unwrap()
        .into_inner();
    assert!(!denied.allowed, "$2 is over gpt-4*'s $1");
    let over = denied.statuses.iter().find(|s| s.exceeded).unwrap();
    assert_eq!(over.model_scope, "gpt-4*");
    assert!(
        denied.reason.contains("in model scope 'gpt-4*'"),
        "{}",
        denied.reason
    );
    let other = d
        .client()
        .await
        .check_limits(ask("claude-3-opus", 2.0))
        .await
        .unwrap()
        .into_inner();
    assert!(other.allowed, "{}", other.reason);

    // An update of `model_scopes` replaces the list: none left, the entry's
    // own $10 decides.
    let updated = admin
        .update(
            team("scoped"),
            apb::SubjectLimits::default(),
            &["model_scopes"],
            &got.etag,
        )
        .await
        .expect("update");
    assert!(updated.model_scopes.is_empty());
    assert_eq!(updated.daily_usd, Some(10.0));
    let now_allowed = d
        .client()
        .await
        .check_limits(ask("gpt-4o", 2.0))
        .await
        .unwrap()
        .into_inner();
    assert!(now_allowed.allowed, "{}", now_allowed.reason);

    // Wrong scopes are refused naming the field, and change nothing.
    let bad = |scopes: Vec<apb::ModelScope>| apb::SubjectLimits {
        model_scopes: scopes,
        ..entry(team("scoped-bad"))
    };
    let e = admin
        .create(bad(vec![scope("gpt-[4", 1.0)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message()
            .starts_with("subject_limits.model_scopes[0].model"),
        "{}",
        e.message()
    );
    let mut leased = scope("m", 1.0);
    leased.limits.as_mut().unwrap().max_concurrent = Some(2);
    let e = admin
        .create(bad(vec![scope("n", 1.0), leased]))
        .await
        .unwrap_err();
    assert!(
        e.message()
            .starts_with("subject_limits.model_scopes[1].limits.max_concurrent"),
        "{}",
        e.message()
    );
    let mut negative = scope("m", 1.0);
    negative.limits.as_mut().unwrap().hourly_usd = Some(-1.0);
    let e = admin.create(bad(vec![negative])).await.unwrap_err();
    assert!(
        e.message()
            .starts_with("subject_limits.model_scopes[0].limits.hourly_usd"),
        "{}",
        e.message()
    );
    assert!(admin.get(team("scoped-bad")).await.is_err());
}

/// A runtime entry may set its own alert thresholds: its crossings then
/// stream at those, and a bad one is refused naming the field.
#[tokio::test]
async fn a_runtime_entry_can_set_its_alert_thresholds() {
    let d = Limitsd::start(&config(BASE));
    let mut admin = Admin::to(d.addr, Some(WRITE_TOKEN)).await;
    let e = admin
        .create(apb::SubjectLimits {
            alert_thresholds: vec![1.5],
            daily_usd: Some(10.0),
            ..entry(team("thresh"))
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message()
            .starts_with("subject_limits.alert_thresholds[0]"),
        "{}",
        e.message()
    );
    let created = admin
        .create(apb::SubjectLimits {
            alert_thresholds: vec![0.9, 0.3],
            daily_usd: Some(10.0),
            ..entry(team("thresh"))
        })
        .await
        .expect("create");
    assert_eq!(created.alert_thresholds, [0.3, 0.9], "ascending");
    let mut stream = d
        .client()
        .await
        .watch_alerts(pb::WatchAlertsRequest {})
        .await
        .unwrap()
        .into_inner();
    d.client()
        .await
        .record_usage(record(vec![team("thresh")], 4.0))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap()
        .event
        .unwrap();
    assert_eq!((event.subject.as_str(), event.threshold), ("thresh", 0.3));
    let cleared = admin
        .update(
            team("thresh"),
            apb::SubjectLimits::default(),
            &["alert_thresholds"],
            &created.etag,
        )
        .await
        .expect("update");
    assert!(cleared.alert_thresholds.is_empty());
}

#[tokio::test]
async fn a_config_reload_keeps_runtime_entries() {
    let d = Limitsd::start(&config(BASE));
    let mut admin = Admin::to(d.addr, Some(WRITE_TOKEN)).await;
    admin
        .create(apb::SubjectLimits {
            daily_usd: Some(0.25),
            ..entry(user("alice"))
        })
        .await
        .unwrap();
    // A new config without alice, and another budget for sk-live-a.
    let path = d.dir.path().join("limits.yaml");
    std::fs::write(
        &path,
        config("  budgets:\n    by_api_key:\n      sk-live-a: { daily: 7.00 }\n"),
    )
    .unwrap();
    d.signal("HUP");
    eventually("the reload", || async {
        let s = status(&d, key("sk-live-a"), pb::LimitKind::BudgetDaily).await;
        (s.limit == 7.0).then_some(())
    })
    .await;
    let s = status(&d, user("alice"), pb::LimitKind::BudgetDaily).await;
    assert_eq!((s.limit, s.source), (0.25, pb::LimitSource::Runtime as i32));
}

#[tokio::test]
async fn adjustments_are_exact_and_a_temporary_increase_falls_away_by_itself() {
    let d = Limitsd::start(&config(BASE));
    let mut admin = Admin::to(d.addr, Some(WRITE_TOKEN)).await;
    let key = || key("sk-live-a");
    let mut c = d.client().await;
    c.record_usage(record(vec![key()], 0.8)).await.unwrap();
    assert!(!allowed(&d, key(), 0.30).await);

    // A credit of $0.50: exactly $0.30 left used, in nano-dollars.
    let statuses = admin
        .adjust(key(), apb::Resource::Usd, -0.5, pb::LimitKind::Unspecified)
        .await
        .expect("credit");
    let daily = statuses
        .iter()
        .find(|s| s.kind == pb::LimitKind::BudgetDaily as i32)
        .unwrap();
    assert_eq!(daily.used, 0.3);
    assert_eq!(
        daily.subject.as_ref().unwrap().id.len(),
        32,
        "named by hash"
    );
    assert!(allowed(&d, key(), 0.30).await);
    // A credit larger than the usage stops at zero.
    admin
        .adjust(
            key(),
            apb::Resource::Usd,
            -100.0,
            pb::LimitKind::BudgetDaily,
        )
        .await
        .unwrap();
    assert_eq!(
        status(&d, key(), pb::LimitKind::BudgetDaily).await.used,
        0.0
    );
    // A debit counts from now.
    admin
        .adjust(key(), apb::Resource::Usd, 0.75, pb::LimitKind::Unspecified)
        .await
        .unwrap();
    assert_eq!(
        status(&d, key(), pb::LimitKind::BudgetDaily).await.used,
        0.75
    );
    // A reset of the daily window.
    let r = admin.req(apb::ResetUsageRequest {
        subject: Some(by_id(key())),
        kinds: vec![pb::LimitKind::BudgetDaily as i32],
        reason: "abuse cleared".into(),
    });
    admin.inner.reset_usage(r).await.expect("reset");
    assert_eq!(
        status(&d, key(), pb::LimitKind::BudgetDaily).await.used,
        0.0
    );

    // A temporary increase of $1.50 for two seconds.
    c.record_usage(record(vec![key()], 1.0)).await.unwrap();
    assert!(!allowed(&d, key(), 0.5).await);
    let r = admin.req(apb::RaiseBudgetRequest {
        subject: Some(by_id(key())),
        kind: pb::LimitKind::BudgetDaily as i32,
        amount: 1.5,
        expire_time: Some(in_secs(2)),
        reason: "month-end close".into(),
    });
    let raised = admin
        .inner
        .raise_budget(r)
        .await
        .expect("raise")
        .into_inner();
    assert_eq!(raised.increases.len(), 1);
    let s = status(&d, key(), pb::LimitKind::BudgetDaily).await;
    assert_eq!((s.limit, s.raised), (2.5, 1.5));
    assert!(allowed(&d, key(), 0.5).await);
    // ... and gone by itself once it expires.
    eventually("the increase to expire", || async {
        let s = status(&d, key(), pb::LimitKind::BudgetDaily).await;
        (s.limit == 1.0 && s.raised == 0.0).then_some(())
    })
    .await;
    assert!(!allowed(&d, key(), 0.5).await);

    // A limit the subject does not have cannot be raised.
    let r = admin.req(apb::RaiseBudgetRequest {
        subject: Some(by_id(key())),
        kind: pb::LimitKind::TokensPerHour as i32,
        amount: 10.0,
        expire_time: Some(in_secs(60)),
        reason: "x".into(),
    });
    assert_eq!(
        admin.inner.raise_budget(r).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
}

#[tokio::test]
async fn credentials_are_required_scoped_and_a_refused_call_changes_nothing() {
    let d = Limitsd::start(&config(BASE));
    let attempt = |token: Option<&'static str>| {
        let addr = d.addr;
        async move {
            let mut a = Admin::to(addr, token).await;
            a.create(apb::SubjectLimits {
                daily_usd: Some(0.01),
                ..entry(key("sk-live-a"))
            })
            .await
            .map(drop)
            .map_err(|e| e.code())
        }
    };
    assert_eq!(attempt(None).await, Err(Code::Unauthenticated));
    assert_eq!(
        attempt(Some("not-a-token")).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(attempt(Some(READ_TOKEN)).await, Err(Code::PermissionDenied));
    // A malformed header is refused too.
    let mut raw = Admin::to(d.addr, None).await;
    let mut r = raw.req(apb::ListSubjectLimitsRequest::default());
    r.metadata_mut()
        .insert("authorization", "Basic b3BzOnB3".parse().unwrap());
    assert_eq!(
        raw.inner.list_subject_limits(r).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // Nothing changed: the reader sees no entry and an empty audit trail.
    let mut reader = Admin::to(d.addr, Some(READ_TOKEN)).await;
    assert!(reader.list().await.is_empty());
    assert!(reader.audit(0, "").await.events.is_empty());
    let s = status(&d, key("sk-live-a"), pb::LimitKind::BudgetDaily).await;
    assert_eq!(s.limit, 1.0);
    // The data plane needs no credential by default.
    assert!(allowed(&d, key("sk-live-a"), 0.1).await);
    let scrape = d.scrape();
    assert!(
        scrape.contains("mercator_limits_auth_refused_total{code=\"unauthenticated\"} 3"),
        "{scrape}"
    );
    assert!(scrape.contains("mercator_limits_auth_refused_total{code=\"permission_denied\"} 1"));
}

#[tokio::test]
async fn the_audit_trail_says_who_did_what_newest_first_and_never_shows_a_key() {
    let d = Limitsd::start(&config(BASE));
    let mut admin = Admin::to(d.addr, Some(WRITE_TOKEN)).await;
    admin
        .create(apb::SubjectLimits {
            daily_usd: Some(0.5),
            ..entry(key("sk-live-a"))
        })
        .await
        .unwrap();
    admin
        .update(
            key("sk-live-a"),
            apb::SubjectLimits {
                daily_usd: Some(0.75),
                alias: "acme".into(),
                ..Default::default()
            },
            &["daily_usd", "alias"],
            "",
        )
        .await
        .unwrap();
    admin
        .adjust(
            key("sk-live-a"),
            apb::Resource::Usd,
            0.25,
            pb::LimitKind::BudgetDaily,
        )
        .await
        .unwrap();
    let mut reader = Admin::to(d.addr, Some(READ_TOKEN)).await;
    let page1 = reader.audit(2, "").await;
    assert_eq!(page1.events.len(), 2);
    assert!(!page1.next_page_token.is_empty());
    let page2 = reader.audit(2, &page1.next_page_token).await;
    assert_eq!(page2.events.len(), 1);
    assert!(page2.next_page_token.is_empty());
    let events: Vec<_> = page1.events.iter().chain(&page2.events).collect();
    let methods: Vec<&str> = events.iter().map(|e| e.method.as_str()).collect();
    assert_eq!(
        methods,
        ["AdjustUsage", "UpdateSubjectLimits", "CreateSubjectLimits"]
    );
    assert!(events.iter().all(|e| e.actor == "ops"));
    assert_eq!(events[0].subject, "api_key:acme");
    assert!(events[2].subject.starts_with("api_key:"));
    assert_eq!(events[1].reason, "raise for the launch");
    assert!(
        events[1].before.contains("0.5") && events[1].after.contains("0.75"),
        "{:?}",
        events[1]
    );
    assert!(
        events[0].before.contains("\"daily\":0.0") && events[0].after.contains("0.25"),
        "{:?}",
        events[0]
    );
    let all = format!("{events:?}");
    assert!(
        !all.contains("sk-live-a"),
        "a raw key in the audit trail: {all}"
    );
    assert!(!all.contains(WRITE_TOKEN));
}

#[tokio::test]
async fn bad_input_names_the_field_and_changes_nothing() {
    let d = Limitsd::start(&config(BASE));
    let mut admin = Admin::to(d.addr, Some(WRITE_TOKEN)).await;
    let cases: Vec<(apb::SubjectLimits, &str)> = vec![
        (
            apb::SubjectLimits {
                daily_usd: Some(-1.0),
                ..entry(key("k"))
            },
            "subject_limits.daily_usd",
        ),
        (
            apb::SubjectLimits {
                daily_usd: Some(f64::NAN),
                ..entry(key("k"))
            },
            "subject_limits.daily_usd",
        ),
        (
            apb::SubjectLimits {
                requests_per_minute: Some(0),
                ..entry(key("k"))
            },
            "subject_limits.requests_per_minute",
        ),
        (
            apb::SubjectLimits {
                max_concurrent: Some(0),
                ..entry(key("k"))
            },
            "subject_limits.max_concurrent",
        ),
        (
            apb::SubjectLimits {
                alias: "x".repeat(65),
                ..entry(key("k"))
            },
            "subject_limits.alias",
        ),
        (
            apb::SubjectLimits {
                expire_time: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
                ..entry(key("k"))
            },
            "subject_limits.expire_time",
        ),
        (
            entry(pb::Subject {
                dimension: 0,
                id: "k".into(),
            }),
            "subject_limits.subject.dimension",
        ),
        (
            apb::SubjectLimits {
                subject: None,
                ..Default::default()
            },
            "subject_limits.subject",
        ),
        (entry(key("")), "subject_limits.subject.id"),
        (entry(team("t\u{7}")), "subject_limits.subject.id"),
        (
            apb::SubjectLimits {
                calendar: Some(apb::BudgetCalendar {
                    time_zone: "Mars/Olympus".into(),
                    ..Default::default()
                }),
                ..entry(key("k"))
            },
            "subject_limits.calendar.time_zone",
        ),
        (
            apb::SubjectLimits {
                calendar: Some(apb::BudgetCalendar {
                    week_start: "someday".into(),
                    ..Default::default()
                }),
                ..entry(key("k"))
            },
            "subject_limits.calendar.week_start",
        ),
        (
            apb::SubjectLimits {
                calendar: Some(apb::BudgetCalendar {
                    month_anchor_day: 32,
                    ..Default::default()
                }),
                ..entry(key("k"))
            },
            "subject_limits.calendar.month_anchor_day",
        ),
    ];
    for (limits, field) in cases {
        let e = admin.create(limits).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    let e = admin
        .update(key("k"), apb::SubjectLimits::default(), &["yearly_usd"], "")
        .await
        .unwrap_err();
    assert!(
        e.message().starts_with("update_mask.paths[0]"),
        "{}",
        e.message()
    );
    let e = admin
        .adjust(
            key("k"),
            apb::Resource::Requests,
            1.5,
            pb::LimitKind::Unspecified,
        )
        .await
        .unwrap_err();
    assert!(e.message().starts_with("amount"), "{}", e.message());
    let e = admin
        .adjust(
            key("k"),
            apb::Resource::Usd,
            1.0,
            pb::LimitKind::TokensPerHour,
        )
        .await
        .unwrap_err();
    assert!(e.message().starts_with("kind"), "{}", e.message());
    let r = admin.req(apb::AdjustUsageRequest {
        subject: Some(by_id(key("sk-live-a"))),
        resource: apb::Resource::Usd as i32,
        amount: 1.0,
        kind: 0,
        reason: String::new(),
    });
    let e = admin.inner.adjust_usage(r).await.unwrap_err();
    assert!(e.message().starts_with("reason"), "{}", e.message());
    let r = admin.req(apb::GetSubjectLimitsRequest {
        subject: Some(apb::SubjectRef {
            subject: Some(team("t")),
            key_hash: "ab".repeat(16),
        }),
    });
    let e = admin.inner.get_subject_limits(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(admin.list().await.is_empty());
    assert_eq!(
        status(&d, key("sk-live-a"), pb::LimitKind::BudgetDaily)
            .await
            .used,
        0.0
    );
}

#[tokio::test]
async fn api_keys_can_be_named_by_the_hash_answers_show() {
    let d = Limitsd::start(&config(BASE));
    let mut admin = Admin::to(d.addr, Some(WRITE_TOKEN)).await;
    let created = admin
        .create(apb::SubjectLimits {
            daily_usd: Some(0.2),
            ..entry(key("sk-live-a"))
        })
        .await
        .unwrap();
    let by_hash = |h: &str| apb::SubjectRef {
        subject: Some(pb::Subject {
            dimension: pb::Dimension::ApiKey as i32,
            id: String::new(),
        }),
        key_hash: h.to_owned(),
    };
    let r = admin.req(apb::GetSubjectLimitsRequest {
        subject: Some(by_hash(&format!("api_key:{}", created.key_hash))),
    });
    let got = admin
        .inner
        .get_subject_limits(r)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.subject_limits.unwrap().daily_usd, Some(0.2));
    // A debit by hash is the key's.
    let r = admin.req(apb::AdjustUsageRequest {
        subject: Some(by_hash(&created.key_hash)),
        resource: apb::Resource::Usd as i32,
        amount: 0.15,
        kind: 0,
        reason: "manual charge".into(),
    });
    admin.inner.adjust_usage(r).await.unwrap();
    assert_eq!(
        status(&d, key("sk-live-a"), pb::LimitKind::BudgetDaily)
            .await
            .used,
        0.15
    );
}

#[tokio::test]
async fn without_a_credential_configured_the_admin_api_is_off() {
    let d = Limitsd::start(&format!("limits:\n{BASE}"));
    let mut admin = Admin::to(d.addr, Some(WRITE_TOKEN)).await;
    let e = admin.list_raw().await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("admin API is off"), "{}", e.message());
    assert!(allowed(&d, key("sk-live-a"), 0.1).await);
}

impl Admin {
    async fn list_raw(&mut self) -> Result<apb::ListSubjectLimitsResponse, tonic::Status> {
        let r = self.req(apb::ListSubjectLimitsRequest::default());
        Ok(self.inner.list_subject_limits(r).await?.into_inner())
    }
}

#[tokio::test]
async fn the_admin_api_can_have_a_listener_of_its_own() {
    let d = Limitsd::start(&config(&format!(
        "{BASE}  server:\n    admin_addr: 127.0.0.1:0\n"
    )));
    let admin_addr = d.admin_addr.expect("an admin listener");
    let mut on_main = Admin::to(d.addr, Some(WRITE_TOKEN)).await;
    assert_eq!(
        on_main.list_raw().await.unwrap_err().code(),
        Code::Unimplemented
    );
    let mut admin = Admin::to(admin_addr, Some(WRITE_TOKEN)).await;
    admin
        .create(apb::SubjectLimits {
            daily_usd: Some(0.1),
            ..entry(key("sk-live-a"))
        })
        .await
        .unwrap();
    assert!(!allowed(&d, key("sk-live-a"), 0.5).await);
    // The data plane is not served on the admin listener.
    let mut data = limits_server::pb::limits_service_client::LimitsServiceClient::connect(format!(
        "http://{admin_addr}"
    ))
    .await
    .unwrap();
    let e = data
        .check_limits(check(vec![key("sk-live-a")], 0.1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
}

#[tokio::test]
async fn the_data_plane_may_require_a_token_too() {
    let yaml = config(BASE).replace("    tokens:\n", "    data_plane_auth: true\n    tokens:\n");
    let d = Limitsd::start(&yaml);
    let mut c = d.client().await;
    let e = c
        .check_limits(check(vec![key("sk-live-a")], 0.1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut r = Request::new(check(vec![key("sk-live-a")], 0.1));
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {READ_TOKEN}").parse().unwrap(),
    );
    assert!(c.check_limits(r).await.unwrap().into_inner().allowed);
    // Health needs nothing.
    let mut h = tonic_health::pb::health_client::HealthClient::new(d.channel().await);
    h.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await
    .expect("health without a token");
}

#[tokio::test]
async fn sled_keeps_runtime_entries_adjustments_and_the_audit_trail_across_kill_9() {
    let work = tempfile::tempdir().unwrap();
    let yaml = config(&format!(
        "{BASE}  storage:\n    backend: sled\n    sled:\n      path: {}\n",
        work.path().join("db").display()
    ));
    let config_path = work.path().join("limits.yaml");
    std::fs::write(&config_path, &yaml).unwrap();
    let mut d = Limitsd::start_in(work.path(), &config_path);
    let mut admin = Admin::to(d.addr, Some(WRITE_TOKEN)).await;
    admin
        .create(apb::SubjectLimits {
            daily_usd: Some(0.4),
            alias: "acme".into(),
            ..entry(key("sk-live-a"))
        })
        .await
        .unwrap();
    admin
        .adjust(
            key("sk-live-a"),
            apb::Resource::Usd,
            0.3,
            pb::LimitKind::BudgetDaily,
        )
        .await
        .unwrap();
    let r = admin.req(apb::RaiseBudgetRequest {
        subject: Some(by_id(key("sk-live-a"))),
        kind: pb::LimitKind::BudgetDaily as i32,
        amount: 0.6,
        expire_time: Some(in_secs(3600)),
        reason: "launch".into(),
    });
    admin.inner.raise_budget(r).await.unwrap();
    d.signal("KILL");
    d.wait_exit();

    let d = Limitsd::start_in(work.path(), &config_path);
    let s = status(&d, key("sk-live-a"), pb::LimitKind::BudgetDaily).await;
    assert_eq!(
        (s.limit, s.used, s.raised, s.source),
        (1.0, 0.3, 0.6, pb::LimitSource::Runtime as i32)
    );
    let mut reader = Admin::to(d.addr, Some(READ_TOKEN)).await;
    let methods: Vec<String> = reader
        .audit(10, "")
        .await
        .events
        .into_iter()
        .map(|e| e.method)
        .collect();
    assert_eq!(
        methods,
        ["RaiseBudget", "AdjustUsage", "CreateSubjectLimits"]
    );
    // No raw key in the database files.
    for entry in walk(&work.path().join("db")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(9).any(|w| w == b"sk-live-a"),
            "{} holds a raw key",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn an_entry_with_an_expiry_falls_away_by_itself() {
    let d = Limitsd::start(&config(BASE));
    let mut admin = Admin::to(d.addr, Some(WRITE_TOKEN)).await;
    admin
        .create(apb::SubjectLimits {
            daily_usd: Some(0.05),
            expire_time: Some(in_secs(2)),
            ..entry(key("sk-live-a"))
        })
        .await
        .unwrap();
    let s = status(&d, key("sk-live-a"), pb::LimitKind::BudgetDaily).await;
    assert_eq!((s.limit, s.source), (0.05, pb::LimitSource::Runtime as i32));
    assert!(!allowed(&d, key("sk-live-a"), 0.5).await);
    eventually("the entry to expire", || async {
        let s = status(&d, key("sk-live-a"), pb::LimitKind::BudgetDaily).await;
        (s.source == pb::LimitSource::Config as i32).then_some(())
    })
    .await;
    assert!(allowed(&d, key("sk-live-a"), 0.5).await);
    assert_eq!(
        admin.get(key("sk-live-a")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(admin.list().await.is_empty());
}

#[tokio::test]
async fn tokens_change_on_reload() {
    let d = Limitsd::start(&config(BASE));
    let path = d.dir.path().join("limits.yaml");
    let rotated = "w-rotated-5d4c3b2a1f0e";
    std::fs::write(
        &path,
        format!(
            "limits:\n  security:\n    tokens:\n      - {{ name: ops-2, sha256: \"{}\", scope: write }}\n{BASE}",
            sha(rotated)
        ),
    )
    .unwrap();
    d.signal("HUP");
    eventually("the rotated token", || async {
        let mut a = Admin::to(d.addr, Some(rotated)).await;
        a.list_raw().await.ok().map(drop)
    })
    .await;
    let mut old = Admin::to(d.addr, Some(WRITE_TOKEN)).await;
    assert_eq!(
        old.list_raw().await.unwrap_err().code(),
        Code::Unauthenticated
    );
}
