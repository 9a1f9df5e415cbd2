//! Request-path quota: tenant plan request limits and session request budgets, charged
//! through the counter store (memory, and Redis for the race), created through the admin API.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use serde_json::{Value, json};
use tollgate::ledger::tenants::TenantStatus;

use crate::helpers::*;
use crate::on_both_databases;

const MCP: &str = "Too Many Requests for this MCP session.";

/// An active tenant `acme` with `plan`, created through the API and activated in the ledger.
async fn active_acme(app: &AdminApp, plan: Value) {
    app.tenant("acme").await;
    app.patch("/tenants/acme", ADMIN, json!({"plan": plan}))
        .await
        .expect(200);
    activate(&app.ledger, "acme").await;
}

/// A session-scope request budget of acme.
async fn session_budget(app: &AdminApp, name: &str, period: Value, amount: u64, enforcement: &str) {
    let body = json!({"name": name, "scope": "session", "tenant_id": "acme", "measure": "requests",
        "period": period, "amount": amount, "enforcement": enforcement});
    app.post("/budgets", ADMIN, body).await.expect(201);
}

fn ok(response: &RateLimitResponse) -> bool {
    response.overall_code == Code::Ok as i32
}

fn name(response: &RateLimitResponse) -> String {
    response.statuses[0]
        .current_limit
        .as_ref()
        .map(|l| l.name.clone())
        .unwrap_or_default()
}

fn session(id: &str) -> [(&'static str, &str); 2] {
    [("tenant_id", "acme"), ("session_id", id)]
}

async fn call_session(app: &AdminApp, id: &str) -> RateLimitResponse {
    app.decide(&[&session(id)]).await
}

on_both_databases! {
    async fn a_plan_limit_per_minute_counts_to_the_limit_then_refuses_with_its_name_and_body(db: Db) {
        let app = spawn(db).await;
        active_acme(&app, json!({"requests": [{"window_seconds": 60, "limit": 3}, {"window_seconds": 3600, "limit": 100}]})).await;
        // Halfway through the minute.
        app.clock.advance(Duration::from_secs(30));
        for i in 0..3 {
            let answer = app.decide(&[&[("tenant_id", "acme")]]).await;
            assert!(ok(&answer), "call {i}: {answer:?}");
        }
        let refused = app.decide(&[&[("tenant_id", "acme")]]).await;
        assert_eq!(refused.overall_code, Code::OverLimit as i32);
        assert_eq!(name(&refused), "plan-requests-60s");
        assert_eq!(refused.statuses[0].current_limit.as_ref().unwrap().requests_per_unit, 3);
        let body: Value = serde_json::from_slice(&refused.raw_body).unwrap();
        assert_eq!(
            body,
            json!({"error": "rate_limited", "tenant": "acme", "limit": 3, "window_seconds": 60,
                   "resets_at": "2026-11-22T01:01:00+01:00"})
        );
        assert!(refused.response_headers_to_add.iter().any(|h| h.key == "content-type" && h.value == "application/json"));
        let metrics = reqwest::get(app.base.replace("/v1", "/metrics")).await.unwrap().text().await.unwrap();
        assert!(metrics.contains(r#"tollgate_quota_refused{reason="rate_limited"} 1"#), "{metrics}");
        // The next minute starts again; the hourly limit kept counting.
        app.clock.advance(Duration::from_secs(30));
        assert!(ok(&app.decide(&[&[("tenant_id", "acme")]]).await));
        // Another tenant's counters are its own.
        app.active_tenant("beta", &[]).await;
        assert!(ok(&app.decide(&[&[("tenant_id", "beta")]]).await));
    }

    async fn the_sixth_request_of_a_five_request_session_is_refused_while_another_session_passes(db: Db) {
        let app = spawn(db).await;
        active_acme(&app, json!({})).await;
        session_budget(&app, "mcp-session", json!("session"), 5, "hard").await;
        for i in 0..5 {
            // The request-path call of the worked example: tenant + model, then tenant + session.
            let answer = app.decide(&[&[("tenant_id", "acme")], &session("s-123")]).await;
            assert!(ok(&answer), "call {i}: {answer:?}");
        }
        let refused = call_session(&app, "s-123").await;
        assert_eq!(refused.overall_code, Code::OverLimit as i32);
        assert_eq!(name(&refused), "mcp-session");
        assert_eq!(refused.raw_body, MCP.as_bytes());
        assert!(!refused.response_headers_to_add.iter().any(|h| h.key == "content-type"), "the MCP message is plain text");
        assert!(ok(&call_session(&app, "s-456").await), "another session of the tenant still passes");
        assert_eq!(call_session(&app, "s-123").await.overall_code, Code::OverLimit as i32);
    }
}

#[tokio::test]
async fn an_idle_session_starts_fresh_and_a_busy_one_does_not() {
    let app = spawn(Db::Sqlite).await;
    active_acme(&app, json!({})).await;
    session_budget(&app, "mcp-session", json!("session"), 5, "hard").await;
    for _ in 0..5 {
        assert!(ok(&call_session(&app, "s-1").await));
    }
    // Still in use within the idle TTL (30 minutes): every request keeps it alive.
    for _ in 0..3 {
        app.clock.advance(Duration::from_secs(29 * 60));
        assert_eq!(
            call_session(&app, "s-1").await.overall_code,
            Code::OverLimit as i32
        );
    }
    // Idle past the TTL: forgotten, it starts from zero.
    app.clock.advance(Duration::from_secs(30 * 60 + 1));
    for i in 0..5 {
        assert!(
            ok(&call_session(&app, "s-1").await),
            "call {i} after the idle TTL"
        );
    }
    assert_eq!(
        call_session(&app, "s-1").await.overall_code,
        Code::OverLimit as i32
    );
}

#[tokio::test]
async fn a_windowed_session_budget_counts_per_window_and_a_soft_one_never_refuses() {
    let app = spawn(Db::Sqlite).await;
    active_acme(&app, json!({})).await;
    session_budget(
        &app,
        "session-rpm",
        json!({"window_seconds": 60}),
        2,
        "hard",
    )
    .await;
    session_budget(&app, "session-soft", json!("session"), 1, "soft").await;
    assert!(ok(&call_session(&app, "s-1").await));
    assert!(
        ok(&call_session(&app, "s-1").await),
        "the soft budget (1) does not refuse the second call"
    );
    let refused = call_session(&app, "s-1").await;
    assert_eq!(name(&refused), "session-rpm");
    assert_eq!(refused.raw_body, MCP.as_bytes());
    app.clock.advance(Duration::from_secs(60));
    for _ in 0..2 {
        assert!(
            ok(&call_session(&app, "s-1").await),
            "a new window, and the soft budget still only counts"
        );
    }
}

#[tokio::test]
async fn usage_descriptors_are_neither_tenant_checked_nor_request_counted() {
    let app = spawn(Db::Sqlite).await;
    active_acme(
        &app,
        json!({"requests": [{"window_seconds": 60, "limit": 1}]}),
    )
    .await;
    session_budget(&app, "mcp-session", json!("session"), 1, "hard").await;
    let usage: &[(&str, &str)] = &[
        ("tenant_id", "acme"),
        ("model", "claude-sonnet"),
        ("session_id", "s-1"),
        ("request_id", "r-9"),
        ("token_type", "output"),
    ];
    for _ in 0..3 {
        assert!(ok(&app.decide(&[usage]).await));
    }
    // None of them counted: the tenant's and the session's first requests still pass.
    assert!(ok(&app.decide(&[&[("tenant_id", "acme")]]).await));
    assert!(ok(&call_session(&app, "s-1").await));
    // Suspended mid-stream: its usage still passes (to be charged), its requests do not.
    app.ledger
        .set_tenant_status(
            "test",
            "acme",
            &[TenantStatus::Active],
            TenantStatus::Suspended,
        )
        .await
        .unwrap();
    assert!(ok(&app.decide(&[usage]).await));
    assert_eq!(
        name(&app.decide(&[&[("tenant_id", "acme")]]).await),
        "tenant_not_active"
    );
}

/// 32 concurrent requests on one session limited to 5: exactly 5 pass.
async fn race(app: AdminApp) {
    active_acme(&app, json!({})).await;
    session_budget(&app, "mcp-session", json!("session"), 5, "hard").await;
    let app = Arc::new(app);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { ok(&call_session(&app, "s-race").await) })
        })
        .collect();
    let mut passed = 0;
    for task in tasks {
        passed += usize::from(task.await.unwrap());
    }
    assert_eq!(passed, 5);
    assert!(!ok(&call_session(&app, "s-race").await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_on_one_session_pass_exactly_its_quota_on_memory() {
    race(spawn(Db::Sqlite).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_on_one_session_pass_exactly_its_quota_on_redis() {
    let database = Arc::new(TestDb::create(Db::Sqlite).await);
    let prefix = format!("tollgate-quota-test:{}:", uuid::Uuid::now_v7().simple());
    let app = spawn_on(Db::Sqlite, database, |s| {
        s.store = "redis://127.0.0.1:6379".into();
        s.key_prefix = prefix;
    })
    .await;
    race(app).await;
}
