//! Approval requests end to end: file, approve (the effect visible at once), reject, cancel,
//! expiry on the app's clock, self-approval refused, and all-or-nothing approval, on both
//! databases.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_databases;

/// Test start, in milliseconds.
const NOW: i64 = START_SECS as i64 * 1_000;
const DAY_MS: i64 = 86_400_000;
/// How long a request stays pending.
const PENDING_TTL: Duration = Duration::from_secs(7 * 86_400);

/// A token's secret and id.
struct Token {
    secret: String,
    id: String,
}

async fn token(app: &AdminApp, role: &str, tenant: Option<&str>) -> Token {
    let mut body = json!({"name": format!("{role} token"), "role": role});
    if let Some(tenant) = tenant {
        body["tenant_id"] = tenant.into();
    }
    let created = app.post("/tokens", ADMIN, body).await.expect(201);
    Token {
        secret: created.body["secret"].as_str().unwrap().to_owned(),
        id: created.body["id"].as_str().unwrap().to_owned(),
    }
}

fn items(answer: &Answer) -> &Vec<Value> {
    answer.body["items"].as_array().expect("a list")
}

fn id_of(answer: &Answer) -> String {
    answer.body["id"].as_str().unwrap().to_owned()
}

/// The audit actions on one entity, oldest first.
async fn actions(app: &AdminApp, entity_type: &str, id: &str) -> Vec<String> {
    let audit = app
        .get(
            &format!("/audit?entity_type={entity_type}&entity_id={id}"),
            ADMIN,
        )
        .await
        .expect(200);
    items(&audit)
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

/// The acme monthly cost budget of the worked example; its id.
async fn monthly_cost(app: &AdminApp) -> String {
    let body = json!({"name": "monthly-cost", "scope": "tenant", "tenant_id": "acme", "measure": "cost",
        "period": {"calendar": "month"}, "amount": "100.00", "enforcement": "hard", "alert_thresholds": [80, 100]});
    id_of(&app.post("/budgets", ADMIN, body).await.expect(201))
}

fn increase(budget: &str, amount: Value) -> Value {
    json!({"kind": "budget_increase", "reason": "quarter-end batch jobs", "payload": {"budget_id": budget, "amount": amount}})
}

on_both_databases! {
    async fn tenant_activation_filed_by_the_tenant_and_approved_activates_it(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let acme = token(&app, "tenant", Some("acme")).await;
        let approver = token(&app, "approver", None).await;
        let filed = app.post("/approvals", &acme.secret, json!({"kind": "tenant_activation", "reason": "we are ready"})).await.expect(201);
        let b = &filed.body;
        assert_eq!(b["status"], "pending");
        assert_eq!(b["tenant_id"], "acme", "a tenant token files for its own tenant");
        assert_eq!(b["requested_by"], acme.id.as_str());
        assert_eq!(b["created_at"], NOW);
        assert_eq!(b["expires_at"], NOW + 7 * DAY_MS);
        assert_eq!(b["payload"], json!({}));
        assert!(b["decided_by"].is_null() && b["decided_at"].is_null());
        let id = id_of(&filed);
        assert_eq!(app.get(&format!("/approvals/{id}"), &acme.secret).await.expect(200).body, filed.body);

        app.clock.advance(Duration::from_secs(3600));
        let approved = app.post(&format!("/approvals/{id}/approve"), &approver.secret, json!({"note": "welcome"})).await.expect(200);
        assert_eq!(approved.body["status"], "approved");
        assert_eq!(approved.body["decided_by"], approver.id.as_str());
        assert_eq!(approved.body["decided_at"], NOW + 3_600_000);
        assert_eq!(approved.body["note"], "welcome");
        // The effect is visible at once.
        assert_eq!(app.get("/tenants/acme", ADMIN).await.expect(200).body["status"], "active");
        assert_eq!(app.get(&format!("/approvals/{id}"), ADMIN).await.expect(200).body, approved.body);
        // Every change is audited: the request, and the tenant it activated.
        assert_eq!(actions(&app, "approval", &id).await, vec!["approval.file", "approval.approve"]);
        assert_eq!(actions(&app, "tenant", "acme").await, vec!["tenant.create", "tenant.active"]);
        let audit = app.get(&format!("/audit?entity_type=tenant&entity_id=acme&actor={}", approver.id), ADMIN).await.expect(200);
        assert_eq!(audit.body["items"][0]["after"]["status"], "active");
        // Deciding twice is a conflict, either way.
        assert_eq!(app.post(&format!("/approvals/{id}/approve"), &approver.secret, json!({})).await.expect(409).code(), "conflict");
        app.post(&format!("/approvals/{id}/reject"), ADMIN, json!({})).await.expect(409);
        app.post(&format!("/approvals/{id}/cancel"), &acme.secret, json!({})).await.expect(409);
        // An active tenant cannot be activated again.
        app.post("/approvals", &acme.secret, json!({"kind": "tenant_activation", "reason": "again"})).await.expect(409);
    }

    async fn model_access_approved_grants_the_model(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let approver = token(&app, "approver", None).await;
        let body = json!({"kind": "model_access", "tenant_id": "acme", "reason": "coding assistant", "payload": {"model": "claude-sonnet"}});
        let filed = app.post("/approvals", ADMIN, body.clone()).await.expect(201);
        assert_eq!(filed.body["payload"], json!({"model": "claude-sonnet"}));
        // The same request again, while pending, is a conflict.
        app.post("/approvals", ADMIN, body.clone()).await.expect(409);
        let id = id_of(&filed);
        app.post(&format!("/approvals/{id}/approve"), &approver.secret, json!({})).await.expect(200);
        assert_eq!(app.get("/tenants/acme", ADMIN).await.expect(200).body["models"], json!(["claude-sonnet"]));
        assert_eq!(actions(&app, "tenant", "acme").await, vec!["tenant.create", "tenant.grant_model"]);
        // A model already granted cannot be asked for again.
        let again = app.post("/approvals", ADMIN, body).await.expect(409);
        assert!(again.text.contains("already has access"), "{}", again.text);
    }

    async fn concurrent_identical_filings_leave_one_pending_request(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let body = json!({"kind": "model_access", "tenant_id": "acme", "reason": "race", "payload": {"model": "claude-sonnet"}});
        let filings = (0..16).map(|_| app.post("/approvals", ADMIN, body.clone()));
        let mut statuses: Vec<u16> = futures::future::join_all(filings).await.iter().map(|a| a.status.as_u16()).collect();
        statuses.sort();
        assert_eq!(statuses, [vec![201], vec![409; 15]].concat(), "one filed, the rest refused as duplicates");
        let pending = app.get("/approvals?tenant_id=acme&status=pending", ADMIN).await.expect(200);
        assert_eq!(items(&pending).len(), 1);
    }

    async fn a_budget_increase_raises_the_amount_in_the_budgets_own_units(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let budget = monthly_cost(&app).await;
        let acme = token(&app, "tenant", Some("acme")).await;
        let approver = token(&app, "approver", None).await;
        let filed = app.post("/approvals", &acme.secret, increase(&budget, json!("150.5"))).await.expect(201);
        assert_eq!(filed.body["tenant_id"], "acme", "a budget request belongs to the budget's tenant");
        assert_eq!(filed.body["payload"], json!({"budget_id": budget, "amount": "150.500000"}));
        // Nothing changes until it is approved.
        assert_eq!(app.get(&format!("/budgets/{budget}"), ADMIN).await.expect(200).body["amount"], "100.000000");
        let id = id_of(&filed);
        app.post(&format!("/approvals/{id}/approve"), &approver.secret, json!({})).await.expect(200);
        let after = app.get(&format!("/budgets/{budget}"), &acme.secret).await.expect(200);
        assert_eq!(after.body["amount"], "150.500000");
        assert_eq!(after.body["effective_amount"], "150.500000");
        assert_eq!(actions(&app, "budget", &budget).await, vec!["budget.create", "budget.increase"]);

        // A request budget takes a whole number.
        let requests = json!({"name": "hourly", "scope": "tenant", "tenant_id": "acme", "measure": "requests",
            "period": {"window_seconds": 3600}, "amount": 1000, "enforcement": "hard"});
        let requests = id_of(&app.post("/budgets", ADMIN, requests).await.expect(201));
        let filed = app.post("/approvals", &acme.secret, increase(&requests, json!(5000))).await.expect(201);
        assert_eq!(filed.body["payload"]["amount"], 5000);
        app.post(&format!("/approvals/{}/approve", id_of(&filed)), ADMIN, json!({})).await.expect(200);
        assert_eq!(app.get(&format!("/budgets/{requests}"), ADMIN).await.expect(200).body["amount"], 5000);
    }

    async fn a_temporary_override_holds_until_it_expires(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let budget = monthly_cost(&app).await;
        let approver = token(&app, "approver", None).await;
        let expires_at = NOW + 3 * DAY_MS;
        let body = json!({"kind": "temporary_override", "reason": "launch week", "payload": {"budget_id": budget, "amount": "200", "expires_at": expires_at}});
        let filed = app.post("/approvals", ADMIN, body).await.expect(201);
        assert_eq!(filed.body["payload"]["amount"], "200.000000");
        assert_eq!(filed.body["payload"]["expires_at"], expires_at);
        let id = id_of(&filed);
        app.post(&format!("/approvals/{id}/approve"), &approver.secret, json!({})).await.expect(200);
        let during = app.get(&format!("/budgets/{budget}"), ADMIN).await.expect(200);
        assert_eq!(during.body["amount"], "100.000000", "the budget's own amount is untouched");
        assert_eq!(during.body["effective_amount"], "200.000000");
        let overrides = during.body["overrides"].as_array().unwrap();
        assert_eq!(overrides.len(), 1);
        assert_eq!(overrides[0]["amount"], "200.000000");
        assert_eq!(overrides[0]["expires_at"], expires_at);
        assert_eq!(overrides[0]["approval_id"], id.as_str());
        assert_eq!(actions(&app, "budget", &budget).await, vec!["budget.create", "budget.override"]);
        app.clock.advance(Duration::from_secs(3 * 86_400));
        let after = app.get(&format!("/budgets/{budget}"), ADMIN).await.expect(200);
        assert_eq!(after.body["overrides"], json!([]));
        assert_eq!(after.body["effective_amount"], "100.000000");
    }

    async fn a_rejected_request_changes_nothing_but_its_status(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let acme = token(&app, "tenant", Some("acme")).await;
        let approver = token(&app, "approver", None).await;
        let id = id_of(&app.post("/approvals", &acme.secret, json!({"kind": "tenant_activation", "reason": "please"})).await.expect(201));
        let rejected = app.post(&format!("/approvals/{id}/reject"), &approver.secret, json!({"note": "missing contract"})).await.expect(200);
        assert_eq!(rejected.body["status"], "rejected");
        assert_eq!(rejected.body["note"], "missing contract");
        assert_eq!(rejected.body["decided_by"], approver.id.as_str());
        assert_eq!(app.get("/tenants/acme", ADMIN).await.expect(200).body["status"], "pending");
        assert_eq!(actions(&app, "approval", &id).await, vec!["approval.file", "approval.reject"]);
        assert_eq!(actions(&app, "tenant", "acme").await, vec!["tenant.create"]);
        app.post(&format!("/approvals/{id}/approve"), &approver.secret, json!({})).await.expect(409);
        app.post(&format!("/approvals/{id}/reject"), &approver.secret, json!({})).await.expect(409);
        // A new request may follow a rejected one.
        app.post("/approvals", &acme.secret, json!({"kind": "tenant_activation", "reason": "contract signed"})).await.expect(201);
    }

    async fn the_requester_or_an_admin_may_cancel(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let acme = token(&app, "tenant", Some("acme")).await;
        let acme_too = token(&app, "tenant", Some("acme")).await;
        let approver = token(&app, "approver", None).await;
        let finance = token(&app, "finance", None).await;
        let file = |reason: &str| json!({"kind": "model_access", "reason": reason, "payload": {"model": format!("model-{reason}")}});
        let first = id_of(&app.post("/approvals", &acme.secret, file("a")).await.expect(201));
        for other in [&acme_too, &approver, &finance] {
            let denied = app.post(&format!("/approvals/{first}/cancel"), &other.secret, json!({})).await.expect(403);
            assert!(denied.text.contains("requester"), "{}", denied.text);
        }
        // No body at all is fine too.
        let cancelled = app.send(reqwest::Method::POST, &format!("/approvals/{first}/cancel"), Some(&acme.secret), None).await.expect(200);
        assert_eq!(cancelled.body["status"], "cancelled");
        assert_eq!(cancelled.body["decided_by"], acme.id.as_str());
        app.post(&format!("/approvals/{first}/cancel"), &acme.secret, json!({})).await.expect(409);
        app.post(&format!("/approvals/{first}/approve"), &approver.secret, json!({})).await.expect(409);
        let second = id_of(&app.post("/approvals", &acme.secret, file("b")).await.expect(201));
        let by_admin = app.post(&format!("/approvals/{second}/cancel"), ADMIN, json!({"note": "duplicate"})).await.expect(200);
        assert_eq!(by_admin.body["status"], "cancelled");
        assert_eq!(by_admin.body["note"], "duplicate");
        assert_eq!(actions(&app, "approval", &first).await, vec!["approval.file", "approval.cancel"]);
        assert_eq!(app.get("/tenants/acme", ADMIN).await.expect(200).body["models"], json!([]));
    }

    async fn a_pending_request_expires_after_seven_days(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let acme = token(&app, "tenant", Some("acme")).await;
        let approver = token(&app, "approver", None).await;
        let id = id_of(&app.post("/approvals", &acme.secret, json!({"kind": "tenant_activation", "reason": "please"})).await.expect(201));
        // One millisecond before its expiry it is still pending.
        app.clock.advance(PENDING_TTL - Duration::from_millis(1));
        assert_eq!(app.get(&format!("/approvals/{id}"), ADMIN).await.expect(200).body["status"], "pending");
        app.clock.advance(Duration::from_millis(1));
        let expired = app.get(&format!("/approvals/{id}"), &acme.secret).await.expect(200);
        assert_eq!(expired.body["status"], "expired");
        assert_eq!(expired.body["decided_at"], NOW + 7 * DAY_MS);
        assert!(expired.body["decided_by"].is_null());
        let refused = app.post(&format!("/approvals/{id}/approve"), &approver.secret, json!({})).await.expect(409);
        assert!(refused.text.contains("expired"), "{}", refused.text);
        app.post(&format!("/approvals/{id}/cancel"), &acme.secret, json!({})).await.expect(409);
        assert_eq!(app.get("/tenants/acme", ADMIN).await.expect(200).body["status"], "pending");
        // The expiry is stored and audited once, by the system.
        let audit = app.get(&format!("/audit?entity_type=approval&entity_id={id}"), ADMIN).await.expect(200);
        let entries = items(&audit);
        assert_eq!(entries.iter().map(|e| e["action"].as_str().unwrap()).collect::<Vec<_>>(), vec!["approval.file", "approval.expire"]);
        assert_eq!(entries[1]["actor"], "system");
        assert_eq!(entries[1]["before"]["status"], "pending");
        assert_eq!(entries[1]["after"]["status"], "expired");
        // Listing reports it expired, not pending.
        assert!(items(&app.get("/approvals?status=pending", ADMIN).await.expect(200)).is_empty());
        assert_eq!(items(&app.get("/approvals?status=expired", ADMIN).await.expect(200)).len(), 1);
        // A new request may be filed in its place.
        app.post("/approvals", &acme.secret, json!({"kind": "tenant_activation", "reason": "still ready"})).await.expect(201);
    }

    async fn deciding_an_overdue_request_expires_it_and_is_refused(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let approver = token(&app, "approver", None).await;
        let first = id_of(&app.post("/approvals", ADMIN, json!({"kind": "tenant_activation", "tenant_id": "acme", "reason": "r"})).await.expect(201));
        app.clock.advance(PENDING_TTL + Duration::from_secs(1));
        // Decided before anyone read it: refused, and the expiry is kept all the same.
        let refused = app.post(&format!("/approvals/{first}/reject"), &approver.secret, json!({})).await.expect(409);
        assert!(refused.text.contains("expired"), "{}", refused.text);
        assert_eq!(app.get(&format!("/approvals/{first}"), ADMIN).await.expect(200).body["status"], "expired");
        assert_eq!(actions(&app, "approval", &first).await, vec!["approval.file", "approval.expire"]);
        // Listing expires overdue requests too.
        let second = id_of(&app.post("/approvals", ADMIN, json!({"kind": "tenant_activation", "tenant_id": "acme", "reason": "r"})).await.expect(201));
        app.clock.advance(PENDING_TTL);
        let list = app.get("/approvals", &approver.secret).await.expect(200);
        assert!(items(&list).iter().all(|a| a["status"] == "expired"), "{}", list.text);
        assert_eq!(actions(&app, "approval", &second).await, vec!["approval.file", "approval.expire"]);
        assert_eq!(app.get("/tenants/acme", ADMIN).await.expect(200).body["status"], "pending");
    }

    async fn nobody_decides_their_own_request(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let second_admin = token(&app, "admin", None).await;
        let body = json!({"kind": "tenant_activation", "tenant_id": "acme", "reason": "self-service"});
        let id = id_of(&app.post("/approvals", ADMIN, body).await.expect(201));
        for action in ["approve", "reject"] {
            let refused = app.post(&format!("/approvals/{id}/{action}"), ADMIN, json!({})).await.expect(403);
            assert_eq!(refused.code(), "forbidden");
            assert!(refused.text.contains("requester"), "{}", refused.text);
        }
        assert_eq!(app.get(&format!("/approvals/{id}"), ADMIN).await.expect(200).body["status"], "pending");
        assert_eq!(app.get("/tenants/acme", ADMIN).await.expect(200).body["status"], "pending");
        assert_eq!(actions(&app, "approval", &id).await, vec!["approval.file"]);
        // Another admin may.
        app.post(&format!("/approvals/{id}/approve"), &second_admin.secret, json!({})).await.expect(200);
        assert_eq!(app.get("/tenants/acme", ADMIN).await.expect(200).body["status"], "active");
    }

    async fn a_failing_effect_rolls_back_the_whole_approval(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let budget = monthly_cost(&app).await;
        let approver = token(&app, "approver", None).await;
        let to_150 = id_of(&app.post("/approvals", ADMIN, increase(&budget, json!("150.00"))).await.expect(201));
        let to_120 = id_of(&app.post("/approvals", ADMIN, increase(&budget, json!("120.00"))).await.expect(201));
        app.post(&format!("/approvals/{to_150}/approve"), &approver.secret, json!({})).await.expect(200);
        // Approving the smaller raise now would lower the budget: refused, and its status
        // change (written before the effect) is rolled back with it.
        let refused = app.post(&format!("/approvals/{to_120}/approve"), &approver.secret, json!({})).await.expect(409);
        assert!(refused.text.contains("150.000000"), "{}", refused.text);
        let still = app.get(&format!("/approvals/{to_120}"), ADMIN).await.expect(200);
        assert_eq!(still.body["status"], "pending");
        assert!(still.body["decided_by"].is_null());
        assert_eq!(actions(&app, "approval", &to_120).await, vec!["approval.file"]);
        assert_eq!(app.get(&format!("/budgets/{budget}"), ADMIN).await.expect(200).body["amount"], "150.000000");
        assert_eq!(actions(&app, "budget", &budget).await, vec!["budget.create", "budget.increase"]);
        // A retired budget cannot be raised either; the request stays pending and can be rejected.
        let to_500 = id_of(&app.post("/approvals", ADMIN, increase(&budget, json!("500"))).await.expect(201));
        app.delete(&format!("/budgets/{budget}"), ADMIN).await.expect(200);
        let retired = app.post(&format!("/approvals/{to_500}/approve"), &approver.secret, json!({})).await.expect(409);
        assert!(retired.text.contains("retired"), "{}", retired.text);
        assert_eq!(app.get(&format!("/approvals/{to_500}"), ADMIN).await.expect(200).body["status"], "pending");
        app.post(&format!("/approvals/{to_500}/reject"), &approver.secret, json!({})).await.expect(200);
        assert_eq!(app.get(&format!("/budgets/{budget}"), ADMIN).await.expect(200).body["amount"], "150.000000");
    }

    async fn unknown_ids_are_404(db: Db) {
        let app = spawn(db).await;
        let approver = token(&app, "approver", None).await;
        app.get("/approvals/nope", ADMIN).await.expect(404);
        app.post("/approvals/nope/approve", &approver.secret, json!({})).await.expect(404);
        app.post("/approvals/nope/reject", &approver.secret, json!({})).await.expect(404);
        app.post("/approvals/nope/cancel", ADMIN, json!({})).await.expect(404);
        let no_tenant = app.post("/approvals", ADMIN, json!({"kind": "tenant_activation", "tenant_id": "ghost", "reason": "r"})).await.expect(404);
        assert!(no_tenant.text.contains("ghost"), "{}", no_tenant.text);
        app.post("/approvals", ADMIN, increase("no-such-budget", json!("5"))).await.expect(404);
        assert!(items(&app.get("/approvals", ADMIN).await.expect(200)).is_empty());
    }

    async fn bad_requests_are_422_naming_the_field_and_nothing_is_stored(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        app.tenant("globex").await;
        let budget = monthly_cost(&app).await;
        let requests = json!({"name": "hourly", "scope": "tenant", "tenant_id": "acme", "measure": "requests",
            "period": {"window_seconds": 3600}, "amount": 1000, "enforcement": "hard"});
        let requests = id_of(&app.post("/budgets", ADMIN, requests).await.expect(201));
        let override_body = |amount: Value, expires_at: Value| {
            json!({"kind": "temporary_override", "reason": "r", "payload": {"budget_id": budget, "amount": amount, "expires_at": expires_at}})
        };
        let cases = [
            (json!({"kind": "world_peace", "tenant_id": "acme", "reason": "r"}), "kind"),
            (json!({"kind": "tenant_activation", "tenant_id": "acme"}), "reason"),
            (json!({"kind": "tenant_activation", "tenant_id": "acme", "reason": ""}), "reason"),
            (json!({"kind": "tenant_activation", "tenant_id": "acme", "reason": "x".repeat(2001)}), "reason"),
            (json!({"kind": "tenant_activation", "tenant_id": "acme", "reason": 5}), "reason"),
            (json!({"kind": "tenant_activation", "reason": "admins must name the tenant"}), "tenant_id"),
            (json!({"kind": "tenant_activation", "tenant_id": "Acme!", "reason": "r"}), "tenant_id"),
            (json!({"kind": "tenant_activation", "tenant_id": "acme", "reason": "r", "urgent": true}), "urgent"),
            (json!({"kind": "tenant_activation", "tenant_id": "acme", "reason": "r", "payload": {"model": "m"}}), "payload.model"),
            (json!({"kind": "model_access", "tenant_id": "acme", "reason": "r"}), "payload.model"),
            (json!({"kind": "model_access", "tenant_id": "acme", "reason": "r", "payload": {"model": "bad model"}}), "payload.model"),
            (json!({"kind": "model_access", "tenant_id": "acme", "reason": "r", "payload": {"model": "m", "colour": 1}}), "payload.colour"),
            (json!({"kind": "budget_increase", "reason": "r", "payload": {"budget_id": budget}}), "payload.amount"),
            (increase(&budget, json!("-150.00")), "payload.amount"),
            (increase(&budget, json!("1000000000000.000001")), "payload.amount"),
            (increase(&budget, json!("50.00")), "payload.amount"),
            (increase(&budget, json!("100.00")), "payload.amount"),
            (increase(&budget, json!(150)), "payload.amount"),
            (increase(&budget, json!(150.5)), "payload.amount"),
            (increase(&requests, json!(-5)), "payload.amount"),
            (increase(&requests, json!("5000")), "payload.amount"),
            (increase(&requests, json!(1e30)), "payload.amount"),
            (increase(&requests, json!(1_000_000_000_000_001_u64)), "payload.amount"),
            (with_tenant(increase(&budget, json!("150")), "globex"), "tenant_id"),
            (override_body(json!("150"), Value::Null), "payload.expires_at"),
            (override_body(json!("150"), json!(NOW)), "payload.expires_at"),
            (override_body(json!("150"), json!(NOW - 1)), "payload.expires_at"),
            (override_body(json!("150"), json!(NOW + 367 * DAY_MS)), "payload.expires_at"),
            (override_body(json!("150"), json!("tomorrow")), "payload.expires_at"),
        ];
        for (body, field) in cases {
            let answer = app.post("/approvals", ADMIN, body.clone()).await.expect(422);
            assert_eq!(answer.code(), "invalid", "{body}: {}", answer.text);
            let missing = answer.field() == "body" && answer.text.contains(&format!("missing field `{field}`"));
            assert!(answer.field() == field || missing, "{body}: expected {field}: {}", answer.text);
        }
        for action in ["approve", "reject", "cancel"] {
            let id = id_of(&app.post("/approvals", ADMIN, increase(&budget, json!("101"))).await.expect(201));
            let approver = token(&app, "approver", None).await;
            let who = if action == "cancel" { ADMIN.to_owned() } else { approver.secret };
            let answer = app.post(&format!("/approvals/{id}/{action}"), &who, json!({"note": ""})).await.expect(422);
            assert_eq!(answer.field(), "note");
            app.post(&format!("/approvals/{id}/{action}"), &who, json!({"verdict": "yes"})).await.expect(422);
            app.send_raw(reqwest::Method::POST, &format!("/approvals/{id}/{action}"), &who, "text/plain", b"ok".to_vec()).await.expect(415);
            assert_eq!(app.get(&format!("/approvals/{id}"), ADMIN).await.expect(200).body["status"], "pending");
            app.post(&format!("/approvals/{id}/cancel"), ADMIN, json!({})).await.expect(200);
        }
        app.send_raw(reqwest::Method::POST, "/approvals", ADMIN, "application/json", b"{\"kind\":".to_vec()).await.expect(400);
        let list = app.get("/approvals?kind=tenant_activation", ADMIN).await.expect(200);
        assert!(items(&list).is_empty(), "nothing stored: {}", list.text);
        assert_eq!(items(&app.get("/approvals", ADMIN).await.expect(200)).len(), 3, "only the three filed for the note checks");
        assert_eq!(app.get("/approvals?status=done", ADMIN).await.expect(422).field(), "status");
        assert_eq!(app.get("/approvals?kind=bribe", ADMIN).await.expect(422).field(), "kind");
    }

    async fn the_openapi_document_describes_prices_budgets_and_approvals(db: Db) {
        let app = spawn(db).await;
        let doc = app.send(reqwest::Method::GET, "/openapi.json", None, None).await.expect(200);
        for path in [
            "/v1/prices", "/v1/prices/lookup", "/v1/budgets", "/v1/budgets/{id}", "/v1/approvals", "/v1/approvals/{id}",
            "/v1/approvals/{id}/approve", "/v1/approvals/{id}/reject", "/v1/approvals/{id}/cancel",
        ] {
            assert!(doc.body["paths"].get(path).is_some(), "{path} missing");
        }
        for schema in ["Price", "NewPrice", "Budget", "NewBudget", "BudgetUpdate", "Approval", "NewApproval"] {
            assert!(doc.body["components"]["schemas"].get(schema).is_some(), "{schema} missing");
        }
    }

    async fn who_may_file_read_and_decide(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        app.tenant("globex").await;
        let acme = token(&app, "tenant", Some("acme")).await;
        let globex = token(&app, "tenant", Some("globex")).await;
        let approver = token(&app, "approver", None).await;
        let finance = token(&app, "finance", None).await;
        let globex_budget = {
            let body = json!({"name": "monthly-cost", "scope": "tenant", "tenant_id": "globex", "measure": "cost",
                "period": {"calendar": "month"}, "amount": "100.00", "enforcement": "hard"});
            id_of(&app.post("/budgets", ADMIN, body).await.expect(201))
        };
        let activation = json!({"kind": "tenant_activation", "reason": "r"});
        // Staff other than admins do not file.
        for staff in [&approver, &finance] {
            let body = json!({"kind": "tenant_activation", "tenant_id": "acme", "reason": "r"});
            app.post("/approvals", &staff.secret, body).await.expect(403);
        }
        // A tenant files only for itself: another tenant, or its budget, is not found.
        app.post("/approvals", &acme.secret, json!({"kind": "tenant_activation", "tenant_id": "globex", "reason": "r"})).await.expect(404);
        app.post("/approvals", &acme.secret, increase(&globex_budget, json!("200"))).await.expect(404);
        let acme_request = id_of(&app.post("/approvals", &acme.secret, activation.clone()).await.expect(201));
        let globex_request = id_of(&app.post("/approvals", &globex.secret, activation).await.expect(201));
        // Tenants see only their own requests.
        let own = app.get("/approvals", &acme.secret).await.expect(200);
        assert_eq!(items(&own).iter().map(|a| a["id"].as_str().unwrap()).collect::<Vec<_>>(), vec![acme_request.as_str()]);
        app.get("/approvals?tenant_id=globex", &acme.secret).await.expect(404);
        app.get(&format!("/approvals/{globex_request}"), &acme.secret).await.expect(404);
        app.post(&format!("/approvals/{globex_request}/cancel"), &acme.secret, json!({})).await.expect(404);
        // Staff see all of them, newest first.
        for staff in [&approver, &finance] {
            let all = app.get("/approvals", &staff.secret).await.expect(200);
            let ids: Vec<&str> = items(&all).iter().map(|a| a["id"].as_str().unwrap()).collect();
            assert_eq!(ids, vec![globex_request.as_str(), acme_request.as_str()]);
            app.get(&format!("/approvals/{acme_request}"), &staff.secret).await.expect(200);
        }
        let by_tenant = app.get("/approvals?tenant_id=acme&status=pending&kind=tenant_activation", &finance.secret).await.expect(200);
        assert_eq!(items(&by_tenant).len(), 1);
        let page = app.get("/approvals?limit=1", ADMIN).await.expect(200);
        assert_eq!(page.body["next_offset"], 1);
        // Only approvers and admins decide; finance and tenants may not.
        for token in [&finance, &acme, &globex] {
            app.post(&format!("/approvals/{acme_request}/approve"), &token.secret, json!({})).await.expect(403);
            app.post(&format!("/approvals/{acme_request}/reject"), &token.secret, json!({})).await.expect(403);
        }
        app.send(reqwest::Method::GET, "/approvals", None, None).await.expect(401);
        assert_eq!(app.get(&format!("/approvals/{acme_request}"), ADMIN).await.expect(200).body["status"], "pending");
        app.post(&format!("/approvals/{acme_request}/approve"), &approver.secret, json!({})).await.expect(200);
        assert_eq!(app.get("/tenants/acme", &acme.secret).await.expect(200).body["status"], "active");
        assert_eq!(app.get("/tenants/globex", ADMIN).await.expect(200).body["status"], "pending");
    }
}

fn with_tenant(mut body: Value, tenant: &str) -> Value {
    body["tenant_id"] = tenant.into();
    body
}
