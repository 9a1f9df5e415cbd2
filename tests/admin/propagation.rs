//! Ledger changes reach every replica's decisions: tenant status and model grants on a
//! quota domain, across two running replicas on PostgreSQL (within a second), in the
//! next decision of the replica that made the change (both databases), through the
//! periodic resync when notifications are lost, and `check-config` on the quota block.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use serde_json::{Value, json};
use tokio::time::Instant;
use tollgate::clock::SystemClock;
use tollgate::ledger::Ledger;
use tollgate::limiter::{self, Descriptor, Limiter, LimiterOptions, Request};
use tollgate::policy;
use tollgate::rules::load::{LoadOptions, compile};
use tollgate::store::{MemoryStore, Store};
use tollgate::telemetry::Metrics;

use crate::helpers::*;
use crate::on_both_databases;

/// The propagation target between replicas.
const SECOND: Duration = Duration::from_secs(1);

const ACME: &[(&str, &str)] = &[("tenant_id", "acme")];
const ACME_SONNET: &[(&str, &str)] = &[("tenant_id", "acme"), ("model", "claude-sonnet")];

/// What a replica answered for one descriptor.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Ok,
    /// OVER_LIMIT: `current_limit.name` and the parsed `raw_body`.
    Refused(String, Value),
}

fn not_active(status: &str) -> Verdict {
    Verdict::Refused(
        "tenant_not_active".into(),
        json!({"error": "tenant_not_active", "tenant": "acme", "status": status}),
    )
}

fn not_approved(model: &str) -> Verdict {
    Verdict::Refused(
        "model_not_approved".into(),
        json!({"error": "model_not_approved", "tenant": "acme", "model": model}),
    )
}

/// One call over gRPC with one descriptor.
async fn verdict(app: &AdminApp, entries: &[(&str, &str)]) -> Verdict {
    let response = app.decide(&[entries]).await;
    if response.overall_code == Code::Ok as i32 {
        assert!(response.raw_body.is_empty());
        return Verdict::Ok;
    }
    let json_header = response
        .response_headers_to_add
        .iter()
        .any(|h| h.key == "content-type" && h.value == "application/json");
    assert!(
        json_header,
        "a refusal's body is declared as JSON: {response:?}"
    );
    let name = response.statuses[0]
        .current_limit
        .as_ref()
        .map(|l| l.name.clone())
        .unwrap_or_default();
    Verdict::Refused(
        name,
        serde_json::from_slice(&response.raw_body).unwrap_or(Value::Null),
    )
}

/// Polls `app` until it answers `expected` for `entries`; fails after `within`.
async fn eventually(
    app: &AdminApp,
    entries: &[(&str, &str)],
    expected: &Verdict,
    within: Duration,
) {
    let started = Instant::now();
    loop {
        let got = verdict(app, entries).await;
        if got == *expected {
            return;
        }
        assert!(
            started.elapsed() < within,
            "after {within:?} the replica still answers {got:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A connection of its own to the test database, as another process would have.
async fn other_ledger(app: &AdminApp) -> Ledger {
    Ledger::connect(&app.database.url, Arc::new(SystemClock))
        .await
        .unwrap()
}

#[tokio::test]
async fn postgres_changes_reach_the_other_replica_within_a_second() {
    let a = spawn(Db::Postgres).await;
    let b = spawn_on(Db::Postgres, a.database.clone(), |_| {}).await;
    assert_eq!(verdict(&a, ACME).await, not_active("unknown"));
    assert_eq!(verdict(&b, ACME).await, not_active("unknown"));

    // Created (pending) through A: denied on both.
    a.tenant("acme").await;
    assert_eq!(verdict(&a, ACME).await, not_active("pending"));
    eventually(&b, ACME, &not_active("pending"), SECOND).await;

    // Activated in the ledger by a third party (as an approval will): both allow it.
    let ledger = other_ledger(&a).await;
    activate(&ledger, "acme").await;
    eventually(&b, ACME, &Verdict::Ok, SECOND).await;
    eventually(&a, ACME, &Verdict::Ok, SECOND).await;

    // A model is refused until it is granted, then allowed on both.
    assert_eq!(
        verdict(&a, ACME_SONNET).await,
        not_approved("claude-sonnet")
    );
    assert_eq!(
        verdict(&b, ACME_SONNET).await,
        not_approved("claude-sonnet")
    );
    grant(&ledger, "acme", "claude-sonnet").await;
    eventually(&b, ACME_SONNET, &Verdict::Ok, SECOND).await;
    eventually(&a, ACME_SONNET, &Verdict::Ok, SECOND).await;

    // Suspended through A's API: A denies at once, B within a second, model or not.
    a.post("/tenants/acme/suspend", ADMIN, json!({}))
        .await
        .expect(200);
    assert_eq!(verdict(&a, ACME_SONNET).await, not_active("suspended"));
    eventually(&b, ACME_SONNET, &not_active("suspended"), SECOND).await;

    // Reactivated through B's API: A allows it again within a second.
    b.post("/tenants/acme/reactivate", ADMIN, json!({}))
        .await
        .expect(200);
    assert_eq!(verdict(&b, ACME).await, Verdict::Ok);
    eventually(&a, ACME, &Verdict::Ok, SECOND).await;
}

on_both_databases! {
    async fn a_change_is_in_force_in_the_next_decision_of_its_replica(db: Db) {
        let app = spawn(db).await;
        assert_eq!(verdict(&app, ACME).await, not_active("unknown"));
        app.tenant("acme").await;
        assert_eq!(verdict(&app, ACME).await, not_active("pending"));
        activate(&app.ledger, "acme").await;
        assert_eq!(verdict(&app, ACME).await, Verdict::Ok);
        assert_eq!(verdict(&app, ACME_SONNET).await, not_approved("claude-sonnet"));
        grant(&app.ledger, "acme", "claude-sonnet").await;
        assert_eq!(verdict(&app, ACME_SONNET).await, Verdict::Ok);
        assert_eq!(verdict(&app, &[("tenant_id", "acme"), ("model", "claude-opus")]).await, not_approved("claude-opus"));
        app.post("/tenants/acme/suspend", ADMIN, json!({})).await.expect(200);
        assert_eq!(verdict(&app, ACME_SONNET).await, not_active("suspended"));
        app.post("/tenants/acme/reactivate", ADMIN, json!({})).await.expect(200);
        assert_eq!(verdict(&app, ACME_SONNET).await, Verdict::Ok);
        // Descriptors without the tenant key keep their ordinary rules.
        assert_eq!(verdict(&app, &[("generic", "x")]).await, Verdict::Ok);
    }

    async fn without_notifications_the_periodic_resync_converges(db: Db) {
        let app = spawn(db).await;
        // A replica that hears no notification: its own ledger connection with no
        // listener, a policy resynced every second, and a limiter on the same rules.
        let metrics = Metrics::new();
        let loader = policy::start(other_ledger(&app).await, SECOND, metrics.policy.clone()).await.unwrap();
        let yaml = std::fs::read_to_string(app.rules.path().join("rules.yaml")).unwrap();
        let rules = compile(&[(PathBuf::from("rules.yaml"), yaml)], &LoadOptions::default(), &metrics).unwrap();
        let clock = Arc::new(SystemClock);
        let deaf = Limiter::new(
            Arc::new(ArcSwapOption::from_pointee(rules)),
            Store::Memory(MemoryStore::new(clock.clone())),
            clock,
            metrics.clone(),
            LimiterOptions::default(),
        )
        .with_policy(loader.current().clone());
        let decide = async |entries: &[(&str, &str)]| {
            let request = Request {
                domain: DOMAIN,
                descriptors: vec![Descriptor { entries: entries.to_vec(), ..Descriptor::default() }],
                hits_addend: 0,
            };
            let decision = deaf.decide(&request).await.unwrap();
            (decision.overall_code, decision.raw_body)
        };
        assert_eq!(decide(ACME).await.0, limiter::Code::OverLimit);

        app.active_tenant("acme", &[]).await;
        assert_eq!(verdict(&app, ACME).await, Verdict::Ok, "the writing replica has it at once");
        // Only a resync can tell the deaf replica: within two periods it does.
        let started = Instant::now();
        while decide(ACME).await.0 != limiter::Code::Ok {
            assert!(started.elapsed() < 2 * SECOND + Duration::from_millis(500), "the resync did not converge");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The same for a suspension.
        app.post("/tenants/acme/suspend", ADMIN, json!({})).await.expect(200);
        let started = Instant::now();
        loop {
            let (code, body) = decide(ACME).await;
            if code == limiter::Code::OverLimit {
                assert!(body.unwrap().contains(r#""status":"suspended""#));
                break;
            }
            assert!(started.elapsed() < 2 * SECOND + Duration::from_millis(500), "the resync did not converge");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reloads = metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("tollgate_policy_reload_success ").map(|n| n.trim().parse::<u64>().unwrap()))
            .unwrap();
        assert!(reloads >= 3, "the first load and at least two resyncs: {reloads}");
    }
}

fn check_config(yaml: &str) -> (bool, String) {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(dir.path().join("quota.yaml"), yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check-config")
        .arg(dir.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_a_quota_block_and_rejects_bad_ones() {
    let good = "domain: ai-gateway\nquota: {}\ndescriptors:\n  - key: generic\n    rate_limit: {unit: second, requests_per_unit: 1}\n";
    let (ok, stderr) = check_config(good);
    assert!(ok, "{stderr}");
    let (ok, stderr) =
        check_config("domain: ai-gateway\nquota: {tenant_key: x-tenant, session_key: mcp}\n");
    assert!(ok, "{stderr}");
    for (yaml, expected) in [
        (
            "domain: d\nquota: {tenant: t}\n",
            "quota: unknown field 'tenant'",
        ),
        (
            "domain: d\nquota: {bogus_key: t}\n",
            "quota: unknown field 'bogus_key'",
        ),
        (
            "domain: d\nquota: {tenant_key: ''}\n",
            "quota.tenant_key must not be empty",
        ),
        (
            "domain: d\nquota: {model_key: }\n",
            "quota.model_key must not be empty",
        ),
        (
            "domain: d\nquota: {tenant_key: model}\n",
            "quota.tenant_key and quota.model_key both name descriptor key 'model'",
        ),
        ("domain: d\nquota:\n", "quota must be a mapping"),
        (
            "domain: d\nquota: [tenant_key]\n",
            "quota must be a mapping",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    quota: {}\n",
            "quota is only allowed at the top level",
        ),
    ] {
        let (ok, stderr) = check_config(yaml);
        assert!(!ok, "accepted: {yaml}");
        assert!(
            stderr.contains("quota.yaml") && stderr.contains(expected),
            "{yaml}: {stderr}"
        );
    }
}
