//! Budgets: create, read, list, update and retire, every combination checked, on both databases.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_databases;

/// Test start, in milliseconds.
const NOW: i64 = START_SECS as i64 * 1_000;

/// The worked example's monthly cost budget for acme.
fn monthly_cost() -> Value {
    json!({"name": "monthly-cost", "scope": "tenant", "tenant_id": "acme", "measure": "cost",
           "period": {"calendar": "month"}, "amount": "100.00", "enforcement": "hard", "alert_thresholds": [80, 100]})
}

/// `base` with `changes` applied; a `null` removes the key.
fn with(base: &Value, changes: Value) -> Value {
    let mut body = base.clone();
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            body.as_object_mut().unwrap().remove(key);
        } else {
            body[key] = value.clone();
        }
    }
    body
}

fn items(answer: &Answer) -> &Vec<Value> {
    answer.body["items"].as_array().expect("a list")
}

fn names(answer: &Answer) -> Vec<String> {
    items(answer)
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts a 422 names `field`: as the error's field, or in the message when the field is
/// missing altogether (serde reports those against the whole body).
#[track_caller]
fn assert_field(answer: &Answer, field: &str, context: &Value) {
    assert_eq!(answer.code(), "invalid", "{context}: {}", answer.text);
    let missing =
        answer.field() == "body" && answer.text.contains(&format!("missing field `{field}`"));
    assert!(
        answer.field() == field || missing,
        "{context}: expected field {field}: {}",
        answer.text
    );
}

async fn audit_actions(app: &AdminApp, id: &str) -> Vec<String> {
    let audit = app
        .get(&format!("/audit?entity_type=budget&entity_id={id}"), ADMIN)
        .await
        .expect(200);
    items(&audit)
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

on_both_databases! {
    async fn the_worked_examples_budgets_are_created_and_read_back(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let monthly = app.post("/budgets", ADMIN, monthly_cost()).await.expect(201);
        let b = &monthly.body;
        assert_eq!(b["amount"], "100.000000");
        assert_eq!(b["effective_amount"], "100.000000");
        assert_eq!(b["currency"], "USD", "a tenant's cost budget is in its currency");
        assert_eq!(b["period"], json!({"calendar": "month"}));
        assert_eq!(b["alert_thresholds"], json!([80, 100]));
        assert_eq!(b["enforcement"], "hard");
        assert_eq!(b["overrides"], json!([]));
        assert!(b["deleted_at"].is_null());
        assert_eq!(b["created_at"], NOW);
        let id = b["id"].as_str().unwrap();
        assert_eq!(app.get(&format!("/budgets/{id}"), ADMIN).await.expect(200).body, monthly.body);

        let daily = json!({"name": "daily-output", "scope": "tenant", "tenant_id": "acme", "measure": "tokens",
            "token_type": "output", "period": {"calendar": "day"}, "amount": 1_000_000, "enforcement": "soft"});
        let daily = app.post("/budgets", ADMIN, daily).await.expect(201);
        assert_eq!(daily.body["amount"], 1_000_000);
        assert!(daily.body["currency"].is_null());
        assert_eq!(daily.body["alert_thresholds"], json!([]));
        let session_requests = json!({"name": "session-requests", "scope": "session", "tenant_id": "acme",
            "measure": "requests", "period": "session", "amount": 5, "enforcement": "hard"});
        let session_requests = app.post("/budgets", ADMIN, session_requests).await.expect(201);
        assert_eq!(session_requests.body["period"], "session");
        let session_tokens = json!({"name": "session-tokens", "scope": "session", "tenant_id": "acme",
            "measure": "tokens", "period": "session", "amount": 50_000, "enforcement": "hard"});
        app.post("/budgets", ADMIN, session_tokens).await.expect(201);
        let per_model = json!({"name": "sonnet-hourly", "scope": "tenant_model", "tenant_id": "acme", "model": "claude-sonnet",
            "measure": "requests", "period": {"window_seconds": 3600}, "amount": 10_000, "enforcement": "hard"});
        let per_model = app.post("/budgets", ADMIN, per_model).await.expect(201);
        assert_eq!(per_model.body["model"], "claude-sonnet");
        assert_eq!(per_model.body["period"], json!({"window_seconds": 3600}));
        let global = json!({"name": "platform-cost", "scope": "global", "measure": "cost", "currency": "EUR",
            "period": {"calendar": "week"}, "amount": "5000.5", "enforcement": "soft", "alert_thresholds": [50, 90]});
        let global = app.post("/budgets", ADMIN, global).await.expect(201);
        assert_eq!(global.body["currency"], "EUR");
        assert_eq!(global.body["amount"], "5000.500000");
        assert!(global.body["tenant_id"].is_null());

        let list = app.get("/budgets", ADMIN).await.expect(200);
        assert_eq!(names(&list), vec!["platform-cost", "daily-output", "monthly-cost", "session-requests", "session-tokens", "sonnet-hourly"]);
        assert_eq!(audit_actions(&app, id).await, vec!["budget.create"]);
    }

    async fn budgets_need_a_known_tenant_and_unknown_ids_are_404(db: Db) {
        let app = spawn(db).await;
        let missing = app.post("/budgets", ADMIN, monthly_cost()).await.expect(404);
        assert_eq!(missing.code(), "not_found");
        assert!(missing.text.contains("acme"), "{}", missing.text);
        app.get("/budgets/nope", ADMIN).await.expect(404);
        app.patch("/budgets/nope", ADMIN, json!({"amount": "5.00"})).await.expect(404);
        app.delete("/budgets/nope", ADMIN).await.expect(404);
        let list = app.get("/budgets?include_retired=true", ADMIN).await.expect(200);
        assert!(items(&list).is_empty());
    }

    async fn a_live_name_is_unique_per_tenant(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        app.tenant("globex").await;
        let first = app.post("/budgets", ADMIN, monthly_cost()).await.expect(201);
        let clash = app.post("/budgets", ADMIN, with(&monthly_cost(), json!({"measure": "requests", "amount": 5}))).await.expect(409);
        assert!(clash.text.contains("monthly-cost"), "{}", clash.text);
        // Another tenant, or the global bucket, may use the name.
        app.post("/budgets", ADMIN, with(&monthly_cost(), json!({"tenant_id": "globex"}))).await.expect(201);
        let global = json!({"name": "monthly-cost", "scope": "global", "measure": "requests", "period": {"calendar": "month"}, "amount": 1, "enforcement": "soft"});
        app.post("/budgets", ADMIN, global.clone()).await.expect(201);
        app.post("/budgets", ADMIN, global).await.expect(409);
        // A retired budget frees its name.
        let id = first.body["id"].as_str().unwrap();
        app.delete(&format!("/budgets/{id}"), ADMIN).await.expect(200);
        app.post("/budgets", ADMIN, monthly_cost()).await.expect(201);
        // Renaming onto a live name clashes too.
        let other = app.post("/budgets", ADMIN, with(&monthly_cost(), json!({"name": "other"}))).await.expect(201);
        let other_id = other.body["id"].as_str().unwrap();
        app.patch(&format!("/budgets/{other_id}"), ADMIN, json!({"name": "monthly-cost"})).await.expect(409);
        assert_eq!(app.get(&format!("/budgets/{other_id}"), ADMIN).await.expect(200).body["name"], "other");
    }

    async fn every_bad_combination_is_a_422_naming_the_field_and_nothing_is_stored(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let base = monthly_cost();
        let cases = [
            // Scope and ownership.
            (json!({"scope": "everything"}), "scope"),
            (json!({"scope": "global"}), "tenant_id"),
            (json!({"tenant_id": null}), "tenant_id"),
            (json!({"tenant_id": "Not A Slug"}), "tenant_id"),
            (json!({"scope": "tenant_model"}), "model"),
            (json!({"model": "claude-sonnet"}), "model"),
            (json!({"scope": "tenant_model", "model": "bad model"}), "model"),
            (json!({"scope": "session", "period": {"calendar": "day"}}), "period"),
            // Measure.
            (json!({"measure": "dollars"}), "measure"),
            (json!({"token_type": "output"}), "token_type"),
            (json!({"measure": "tokens", "amount": 5, "token_type": "Output!"}), "token_type"),
            // Period.
            (json!({"period": "session"}), "period"),
            (json!({"period": "monthly"}), "period"),
            (json!({"period": {"calendar": "year"}}), "period"),
            (json!({"period": {"window_seconds": 0}}), "period.window_seconds"),
            (json!({"period": {"window_seconds": 31_708_801}}), "period.window_seconds"),
            (json!({"period": {"window_seconds": -60}}), "period"),
            (json!({"period": {"window_seconds": 60, "calendar": "day"}}), "period"),
            (json!({"period": 3600}), "period"),
            // Amounts: negative, huge, fractional, of the wrong kind.
            (json!({"amount": "-100.00"}), "amount"),
            (json!({"amount": "1000000000000.000001"}), "amount"),
            (json!({"amount": "99999999999999999999999"}), "amount"),
            (json!({"amount": "100.0000001"}), "amount"),
            (json!({"amount": 100}), "amount"),
            (json!({"amount": 100.5}), "amount"),
            (json!({"amount": null}), "amount"),
            (json!({"measure": "requests", "amount": -5}), "amount"),
            (json!({"measure": "requests", "amount": "5"}), "amount"),
            (json!({"measure": "requests", "amount": 1_000_000_000_000_001_u64}), "amount"),
            (json!({"measure": "tokens", "amount": 1e30}), "amount"),
            (json!({"measure": "tokens", "amount": true}), "amount"),
            // Currency.
            (json!({"currency": "USD"}), "currency"),
            (json!({"scope": "global", "tenant_id": null}), "currency"),
            (json!({"scope": "global", "tenant_id": null, "currency": "usd"}), "currency"),
            (json!({"scope": "global", "tenant_id": null, "measure": "requests", "amount": 5, "currency": "USD"}), "currency"),
            // Enforcement and thresholds.
            (json!({"enforcement": "maybe"}), "enforcement"),
            (json!({"enforcement": 1}), "enforcement"),
            (json!({"enforcement": null}), "enforcement"),
            (json!({"alert_thresholds": [100, 80]}), "alert_thresholds[1]"),
            (json!({"alert_thresholds": [80, 80]}), "alert_thresholds[1]"),
            (json!({"alert_thresholds": [0]}), "alert_thresholds[0]"),
            (json!({"alert_thresholds": [101]}), "alert_thresholds[0]"),
            (json!({"alert_thresholds": [-5]}), "alert_thresholds[0]"),
            (json!({"alert_thresholds": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]}), "alert_thresholds"),
            (json!({"alert_thresholds": "80,100"}), "alert_thresholds"),
            // Names and unknown fields.
            (json!({"name": "Monthly Cost"}), "name"),
            (json!({"name": ""}), "name"),
            (json!({"name": 42}), "name"),
            (json!({"rollover": true}), "rollover"),
        ];
        for (changes, field) in cases {
            let body = with(&base, changes.clone());
            let answer = app.post("/budgets", ADMIN, body).await.expect(422);
            assert_field(&answer, field, &changes);
        }
        app.send_raw(reqwest::Method::POST, "/budgets", ADMIN, "application/json", b"[1, 2".to_vec()).await.expect(400);
        app.send_raw(reqwest::Method::POST, "/budgets", ADMIN, "application/json", b"[]".to_vec()).await.expect(422);
        let huge = format!("{{\"name\":\"{}\"}}", "x".repeat(70_000));
        app.send_raw(reqwest::Method::POST, "/budgets", ADMIN, "application/json", huge.into_bytes()).await.expect(413);
        let list = app.get("/budgets?include_retired=true", ADMIN).await.expect(200);
        assert!(items(&list).is_empty(), "nothing stored: {}", list.text);
        let audit = app.get("/audit?entity_type=budget", ADMIN).await.expect(200);
        assert!(items(&audit).is_empty());
    }

    async fn an_update_changes_the_given_fields_is_checked_and_audited(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let created = app.post("/budgets", ADMIN, monthly_cost()).await.expect(201);
        let id = created.body["id"].as_str().unwrap();
        let path = format!("/budgets/{id}");
        app.clock.advance(std::time::Duration::from_secs(60));
        let updated = app
            .patch(&path, ADMIN, json!({"amount": "250.5", "alert_thresholds": [50, 75, 100], "enforcement": "soft"}))
            .await
            .expect(200);
        assert_eq!(updated.body["amount"], "250.500000");
        assert_eq!(updated.body["alert_thresholds"], json!([50, 75, 100]));
        assert_eq!(updated.body["enforcement"], "soft");
        assert_eq!(updated.body["name"], "monthly-cost");
        assert_eq!(updated.body["period"], json!({"calendar": "month"}));
        assert_eq!(updated.body["updated_at"], NOW + 60_000);
        assert_eq!(updated.body["created_at"], NOW);
        assert_eq!(app.get(&path, ADMIN).await.expect(200).body, updated.body);
        let audit = app.get(&format!("/audit?entity_type=budget&entity_id={id}"), ADMIN).await.expect(200);
        let entry = &audit.body["items"][1];
        assert_eq!(entry["action"], "budget.update");
        assert_eq!(entry["before"]["amount"], "100.000000");
        assert_eq!(entry["after"]["amount"], "250.500000");

        // Bad updates name the field and change nothing.
        for (body, field) in [
            (json!({"scope": "global"}), "scope"),
            (json!({"tenant_id": "globex"}), "tenant_id"),
            (json!({"measure": "requests"}), "measure"),
            (json!({"currency": "EUR"}), "currency"),
            (json!({"model": "gpt-4o"}), "model"),
            (json!({"token_type": "input"}), "token_type"),
            (json!({"amount": 300}), "amount"),
            (json!({"amount": "-1"}), "amount"),
            (json!({"period": "session"}), "period"),
            (json!({"period": {"window_seconds": 0}}), "period.window_seconds"),
            (json!({"alert_thresholds": [90, 10]}), "alert_thresholds[1]"),
            (json!({"name": "Bad Name"}), "name"),
            (json!({"deleted_at": 1}), "deleted_at"),
        ] {
            let answer = app.patch(&path, ADMIN, body.clone()).await.expect(422);
            assert_field(&answer, field, &body);
        }
        assert_eq!(app.get(&path, ADMIN).await.expect(200).body, updated.body);
        assert_eq!(audit_actions(&app, id).await, vec!["budget.create", "budget.update"]);

        // A window can become a calendar period and back.
        let windowed = app.patch(&path, ADMIN, json!({"period": {"window_seconds": 86400}})).await.expect(200);
        assert_eq!(windowed.body["period"], json!({"window_seconds": 86400}));
    }

    async fn retiring_keeps_the_budget_on_record(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let created = app.post("/budgets", ADMIN, monthly_cost()).await.expect(201);
        let id = created.body["id"].as_str().unwrap();
        let path = format!("/budgets/{id}");
        let retired = app.delete(&path, ADMIN).await.expect(200);
        assert_eq!(retired.body["deleted_at"], NOW);
        // Still readable, not listed unless asked.
        assert_eq!(app.get(&path, ADMIN).await.expect(200).body["deleted_at"], NOW);
        assert!(items(&app.get("/budgets", ADMIN).await.expect(200)).is_empty());
        let all = app.get("/budgets?include_retired=true", ADMIN).await.expect(200);
        assert_eq!(names(&all), vec!["monthly-cost"]);
        // Retired twice, or changed after retiring: conflicts.
        assert_eq!(app.delete(&path, ADMIN).await.expect(409).code(), "conflict");
        app.patch(&path, ADMIN, json!({"amount": "1.00"})).await.expect(409);
        assert_eq!(audit_actions(&app, id).await, vec!["budget.create", "budget.retire"]);
        // The row is still in the database.
        let ledger = tollgate::ledger::Ledger::connect(&app.database.url, std::sync::Arc::new(tollgate::clock::SystemClock)).await.unwrap();
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM budgets").fetch_one(ledger.pool()).await.unwrap();
        assert_eq!(count, 1);
    }

    async fn budgets_list_by_tenant_scope_and_page(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        app.tenant("globex").await;
        for (tenant, name) in [("acme", "a-one"), ("acme", "a-two"), ("globex", "g-one")] {
            app.post("/budgets", ADMIN, with(&monthly_cost(), json!({"tenant_id": tenant, "name": name}))).await.expect(201);
        }
        let session = json!({"name": "a-session", "scope": "session", "tenant_id": "acme", "measure": "requests",
            "period": "session", "amount": 5, "enforcement": "hard"});
        app.post("/budgets", ADMIN, session).await.expect(201);
        assert_eq!(names(&app.get("/budgets?tenant_id=acme", ADMIN).await.expect(200)), vec!["a-one", "a-session", "a-two"]);
        assert_eq!(names(&app.get("/budgets?scope=session", ADMIN).await.expect(200)), vec!["a-session"]);
        assert_eq!(names(&app.get("/budgets?tenant_id=acme&scope=tenant", ADMIN).await.expect(200)), vec!["a-one", "a-two"]);
        let page = app.get("/budgets?limit=2", ADMIN).await.expect(200);
        assert_eq!(names(&page), vec!["a-one", "a-session"]);
        assert_eq!(page.body["next_offset"], 2);
        let rest = app.get("/budgets?limit=2&offset=2", ADMIN).await.expect(200);
        assert_eq!(names(&rest), vec!["a-two", "g-one"]);
        assert!(rest.body.get("next_offset").is_none());
        assert_eq!(app.get("/budgets?scope=planet", ADMIN).await.expect(422).field(), "scope");
        assert_eq!(app.get("/budgets?limit=501", ADMIN).await.expect(422).field(), "limit");
        assert_eq!(app.get("/budgets?offset=-1", ADMIN).await.expect(422).field(), "offset");
        assert_eq!(app.get("/budgets?include_retired=maybe", ADMIN).await.expect(422).field(), "include_retired");
        assert_eq!(app.get("/budgets?tenant_id=Not%20Slug", ADMIN).await.expect(422).field(), "tenant_id");
        assert_eq!(app.get("/budgets?colour=red", ADMIN).await.expect(422).field(), "colour");
    }

    async fn staff_read_everything_tenants_only_their_own_and_only_admins_write(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        app.tenant("globex").await;
        let acme_budget = app.post("/budgets", ADMIN, monthly_cost()).await.expect(201);
        let acme_id = acme_budget.body["id"].as_str().unwrap().to_owned();
        let globex_budget = app.post("/budgets", ADMIN, with(&monthly_cost(), json!({"tenant_id": "globex"}))).await.expect(201);
        let globex_id = globex_budget.body["id"].as_str().unwrap().to_owned();
        let global = json!({"name": "all-requests", "scope": "global", "measure": "requests", "period": {"window_seconds": 60}, "amount": 100000, "enforcement": "hard"});
        let global_id = app.post("/budgets", ADMIN, global).await.expect(201).body["id"].as_str().unwrap().to_owned();

        for role in ["approver", "finance"] {
            let token = app.token(role, None).await;
            assert_eq!(items(&app.get("/budgets", &token).await.expect(200)).len(), 3);
            for id in [&acme_id, &globex_id, &global_id] {
                app.get(&format!("/budgets/{id}"), &token).await.expect(200);
            }
        }
        let acme = app.token("tenant", Some("acme")).await;
        assert_eq!(names(&app.get("/budgets", &acme).await.expect(200)), vec!["monthly-cost"]);
        let own = app.get("/budgets?tenant_id=acme", &acme).await.expect(200);
        assert_eq!(items(&own)[0]["id"], acme_id.as_str());
        app.get("/budgets?tenant_id=globex", &acme).await.expect(404);
        app.get(&format!("/budgets/{acme_id}"), &acme).await.expect(200);
        app.get(&format!("/budgets/{globex_id}"), &acme).await.expect(404);
        app.get(&format!("/budgets/{global_id}"), &acme).await.expect(404);

        for (role, tenant) in [("approver", None), ("finance", None), ("tenant", Some("acme"))] {
            let token = app.token(role, tenant).await;
            app.post("/budgets", &token, with(&monthly_cost(), json!({"name": "sneaky"}))).await.expect(403);
            app.patch(&format!("/budgets/{acme_id}"), &token, json!({"amount": "1000000.00"})).await.expect(403);
            app.delete(&format!("/budgets/{acme_id}"), &token).await.expect(403);
        }
        app.send(reqwest::Method::GET, "/budgets", None, None).await.expect(401);
        let after = app.get(&format!("/budgets/{acme_id}"), ADMIN).await.expect(200);
        assert_eq!(after.body, acme_budget.body, "refused writes changed nothing");
        assert_eq!(items(&app.get("/budgets", ADMIN).await.expect(200)).len(), 3);
    }
}
