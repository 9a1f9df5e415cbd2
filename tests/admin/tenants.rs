//! Tenants, tokens and the audit log, on both databases.

use serde_json::json;

use crate::helpers::*;
use crate::on_both_databases;

on_both_databases! {
    async fn a_new_tenant_starts_pending_and_can_be_read_back(db: Db) {
        let app = spawn(db).await;
        let created = app.tenant("acme").await;
        assert_eq!(created["status"], "pending");
        assert_eq!(created["currency"], "USD");
        let read = app.get("/tenants/acme", ADMIN).await.expect(200);
        assert_eq!(read.body, created);
    }

    async fn creating_a_tenant_twice_is_a_conflict(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let again = app.post("/tenants", ADMIN, json!({"id": "acme", "name": "Again", "currency": "USD"})).await.expect(409);
        assert_eq!(again.code(), "conflict");
    }

    async fn an_unknown_tenant_is_404(db: Db) {
        let app = spawn(db).await;
        assert_eq!(app.get("/tenants/nope", ADMIN).await.expect(404).code(), "not_found");
    }

    async fn tenants_list_by_page_and_filter(db: Db) {
        let app = spawn(db).await;
        for id in ["a1", "a2", "a3"] {
            app.tenant(id).await;
        }
        let page = app.get("/tenants?limit=2", ADMIN).await.expect(200);
        assert_eq!(page.body["items"].as_array().unwrap().len(), 2);
        assert_eq!(page.body["next_offset"], 2);
        let last = app.get("/tenants?limit=2&offset=2", ADMIN).await.expect(200);
        assert_eq!(last.body["items"][0]["id"], "a3");
        assert!(last.body.get("next_offset").is_none());
        let pending = app.get("/tenants?status=pending", ADMIN).await.expect(200);
        assert_eq!(pending.body["items"].as_array().unwrap().len(), 3);
        let active = app.get("/tenants?status=active", ADMIN).await.expect(200);
        assert!(active.body["items"].as_array().unwrap().is_empty());
        let bad = app.get("/tenants?status=sleeping", ADMIN).await.expect(422);
        assert_eq!(bad.field(), "status");
    }

    async fn a_tenant_update_changes_only_the_given_fields_and_is_audited(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let plan = json!({"requests": [{"window_seconds": 60, "limit": 600}], "tokens": [{"token_type": "output", "window_seconds": 86400, "limit": 1000000}]});
        let updated = app.patch("/tenants/acme", ADMIN, json!({"name": "Acme Corp", "plan": plan})).await.expect(200);
        assert_eq!(updated.body["name"], "Acme Corp");
        assert_eq!(updated.body["timezone"], "Europe/Berlin");
        assert_eq!(updated.body["plan"], plan);
        let audit = app.get("/audit?entity_type=tenant&entity_id=acme", ADMIN).await.expect(200);
        let actions: Vec<&str> = audit.body["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert_eq!(actions, vec!["tenant.create", "tenant.update"]);
        let update = &audit.body["items"][1];
        assert_eq!(update["before"]["name"], "acme Inc.");
        assert_eq!(update["after"]["name"], "Acme Corp");
    }

    async fn suspend_needs_an_active_tenant(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let pending = app.post("/tenants/acme/suspend", ADMIN, json!({})).await.expect(409);
        assert!(pending.text.contains("pending"), "{}", pending.text);
        app.post("/tenants/acme/reactivate", ADMIN, json!({})).await.expect(409);
    }

    async fn tokens_are_shown_once_stored_hashed_and_revocable(db: Db) {
        let app = spawn(db).await;
        let created = app.post("/tokens", ADMIN, json!({"name": "ci", "role": "finance"})).await.expect(201);
        let secret = created.body["secret"].as_str().unwrap().to_owned();
        let id = created.body["id"].as_str().unwrap().to_owned();
        // The secret works, and is never listed.
        app.get("/audit", &secret).await.expect(200);
        let list = app.get("/tokens", ADMIN).await.expect(200);
        assert!(!list.text.contains(&secret));
        // The database holds a hash, not the secret.
        let ledger = tollgate::ledger::Ledger::connect(&app.database.url, std::sync::Arc::new(tollgate::clock::SystemClock)).await.unwrap();
        let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM api_tokens").fetch_all(ledger.pool()).await.unwrap();
        assert!(stored.iter().all(|h| !h.contains(&secret) && h.len() == 64));
        assert!(stored.contains(&tollgate::ledger::tokens::hash_secret(&secret)));
        app.delete(&format!("/tokens/{id}"), ADMIN).await.expect(200);
        app.get("/audit", &secret).await.expect(401);
        app.delete(&format!("/tokens/{id}"), ADMIN).await.expect(409);
    }

    async fn requests_without_a_valid_token_are_401(db: Db) {
        let app = spawn(db).await;
        let none = app.send(reqwest::Method::GET, "/tenants", None, None).await.expect(401);
        assert_eq!(none.code(), "unauthenticated");
        app.get("/tenants", "tg_not_a_real_token").await.expect(401);
    }

    async fn a_tenant_token_sees_only_its_own_tenant(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        app.tenant("globex").await;
        let acme = app.token("tenant", Some("acme")).await;
        let list = app.get("/tenants", &acme).await.expect(200);
        let ids: Vec<&str> = list.body["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec!["acme"]);
        app.get("/tenants/acme", &acme).await.expect(200);
        app.get("/tenants/globex", &acme).await.expect(404);
        app.post("/tenants", &acme, json!({"id": "mine", "name": "x", "currency": "USD"})).await.expect(403);
    }

    async fn bad_tenant_input_is_rejected_with_the_field_and_nothing_is_stored(db: Db) {
        let app = spawn(db).await;
        let cases = [
            (json!({"id": "Bad Id", "name": "x", "currency": "USD"}), "id"),
            (json!({"id": "ok", "name": "", "currency": "USD"}), "name"),
            (json!({"id": "ok", "name": "x", "currency": "usd"}), "currency"),
            (json!({"id": "ok", "name": "x", "currency": "USD", "timezone": "Mars/Base"}), "timezone"),
            (json!({"id": "ok", "name": "x", "currency": "USD", "surprise": 1}), "surprise"),
            (json!({"id": "ok", "name": 7, "currency": "USD"}), "name"),
            (json!({"id": "ok", "name": "x", "currency": "USD", "plan": {"requests": [{"window_seconds": 0, "limit": 1}]}}), "plan.requests[0].window_seconds"),
            (json!({"id": "ok", "name": "x", "currency": "USD", "plan": {"requests": [{"window_seconds": 60, "limit": -1}]}}), "plan.requests[0].limit"),
            (json!({"name": "x", "currency": "USD"}), "id"),
        ];
        for (body, field) in cases {
            let answer = app.post("/tenants", ADMIN, body.clone()).await.expect(422);
            assert!(answer.field().starts_with(field) || answer.text.contains(field), "{body}: {}", answer.text);
        }
        let malformed = app.send_raw(reqwest::Method::POST, "/tenants", ADMIN, "application/json", b"{\"id\": ".to_vec()).await.expect(400);
        assert_eq!(malformed.code(), "bad_request");
        app.send_raw(reqwest::Method::POST, "/tenants", ADMIN, "text/plain", b"{}".to_vec()).await.expect(415);
        let huge = format!("{{\"id\":\"ok\",\"name\":\"{}\",\"currency\":\"USD\"}}", "x".repeat(100_000));
        app.send_raw(reqwest::Method::POST, "/tenants", ADMIN, "application/json", huge.into_bytes()).await.expect(413);
        let list = app.get("/tenants", ADMIN).await.expect(200);
        assert!(list.body["items"].as_array().unwrap().is_empty(), "nothing stored: {}", list.text);
    }

    async fn the_openapi_document_describes_the_api(db: Db) {
        let app = spawn(db).await;
        let doc = app.send(reqwest::Method::GET, "/openapi.json", None, None).await.expect(200);
        assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
        for path in ["/v1/tenants", "/v1/tenants/{id}", "/v1/tokens", "/v1/audit"] {
            assert!(doc.body["paths"].get(path).is_some(), "{path} missing");
        }
        assert!(doc.body["components"]["schemas"].get("Tenant").is_some());
    }
}
