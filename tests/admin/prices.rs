//! The price book: versions, listing, and the price in force at a time, on both databases.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_databases;

/// 2026-11-01 00:00:00 UTC, in milliseconds.
const NOV_1: i64 = (START_SECS as i64 - 21 * 86_400) * 1_000;
/// 2026-11-15 00:00:00 UTC, in milliseconds: the mid-month price change.
const NOV_15: i64 = (START_SECS as i64 - 7 * 86_400) * 1_000;
/// Test start, 2026-11-22 00:00:00 UTC, in milliseconds.
const NOW: i64 = START_SECS as i64 * 1_000;
const DAY: i64 = 86_400_000;

fn price(model: &str, token_type: &str, amount: &str, from: i64) -> Value {
    json!({"model": model, "token_type": token_type, "currency": "USD", "price_per_million": amount, "effective_from": from})
}

fn items(answer: &Answer) -> &Vec<Value> {
    answer.body["items"].as_array().expect("a list")
}

on_both_databases! {
    async fn a_price_version_is_stored_exactly_and_audited(db: Db) {
        let app = spawn(db).await;
        let created = app.post("/prices", ADMIN, price("claude-sonnet", "input", "3.00", NOV_1)).await.expect(201);
        assert_eq!(created.body["price_per_million"], "3.000000");
        assert_eq!(created.body["effective_from"], NOV_1);
        assert_eq!(created.body["created_at"], NOW);
        let tiny = app.post("/prices", ADMIN, price("claude-sonnet", "cached_input", "0.000001", NOV_1)).await.expect(201);
        assert_eq!(tiny.body["price_per_million"], "0.000001");
        let id = created.body["id"].as_str().unwrap();
        let audit = app.get(&format!("/audit?entity_type=price&entity_id={id}"), ADMIN).await.expect(200);
        assert_eq!(items(&audit).len(), 1);
        assert_eq!(audit.body["items"][0]["action"], "price.create");
        assert_eq!(audit.body["items"][0]["after"], created.body);
        assert!(audit.body["items"][0]["before"].is_null());
    }

    async fn effective_from_defaults_to_now(db: Db) {
        let app = spawn(db).await;
        let body = json!({"model": "gpt-4o", "token_type": "output", "currency": "EUR", "price_per_million": "10"});
        let created = app.post("/prices", ADMIN, body).await.expect(201);
        assert_eq!(created.body["effective_from"], NOW);
        assert_eq!(created.body["price_per_million"], "10.000000");
    }

    async fn the_same_version_twice_is_a_conflict_and_other_versions_are_not(db: Db) {
        let app = spawn(db).await;
        app.post("/prices", ADMIN, price("claude-sonnet", "input", "3.00", NOV_1)).await.expect(201);
        let again = app.post("/prices", ADMIN, price("claude-sonnet", "input", "4.00", NOV_1)).await.expect(409);
        assert_eq!(again.code(), "conflict");
        // Another time, token type or currency is another version.
        app.post("/prices", ADMIN, price("claude-sonnet", "input", "4.00", NOV_15)).await.expect(201);
        app.post("/prices", ADMIN, price("claude-sonnet", "output", "15.00", NOV_1)).await.expect(201);
        let mut eur = price("claude-sonnet", "input", "2.80", NOV_1);
        eur["currency"] = "EUR".into();
        app.post("/prices", ADMIN, eur).await.expect(201);
        let list = app.get("/prices", ADMIN).await.expect(200);
        assert_eq!(items(&list).len(), 4);
        let audit = app.get("/audit?entity_type=price", ADMIN).await.expect(200);
        assert_eq!(items(&audit).len(), 4, "the conflict left no audit entry");
    }

    async fn each_time_sees_the_version_in_force_through_a_mid_month_change(db: Db) {
        let app = spawn(db).await;
        app.post("/prices", ADMIN, price("claude-sonnet", "input", "3.00", NOV_1)).await.expect(201);
        app.post("/prices", ADMIN, price("claude-sonnet", "input", "2.50", NOV_15)).await.expect(201);
        app.post("/prices", ADMIN, price("claude-sonnet", "output", "15.00", NOV_1)).await.expect(201);
        let at = |t: i64| format!("/prices/lookup?model=claude-sonnet&token_type=input&currency=USD&at={t}");
        for (t, expected) in [
            (NOV_1, "3.000000"),
            (NOV_1 + 10 * DAY, "3.000000"),
            (NOV_15 - 1, "3.000000"),
            (NOV_15, "2.500000"),
            (NOV_15 + 10 * DAY, "2.500000"),
        ] {
            let found = app.get(&at(t), ADMIN).await.expect(200);
            assert_eq!(found.body["price_per_million"], expected, "at {t}");
        }
        // Before the first version there is no price.
        assert_eq!(app.get(&at(NOV_1 - 1), ADMIN).await.expect(404).code(), "not_found");
        // Without `at`, the clock decides; a version added for the future takes over when its time comes.
        let now = "/prices/lookup?model=claude-sonnet&token_type=input&currency=USD";
        assert_eq!(app.get(now, ADMIN).await.expect(200).body["price_per_million"], "2.500000");
        app.post("/prices", ADMIN, price("claude-sonnet", "input", "2.00", NOW + DAY)).await.expect(201);
        assert_eq!(app.get(now, ADMIN).await.expect(200).body["price_per_million"], "2.500000");
        app.clock.advance(std::time::Duration::from_secs(86_400));
        assert_eq!(app.get(now, ADMIN).await.expect(200).body["price_per_million"], "2.000000");
        // Other token types and currencies have their own versions.
        let output = app.get("/prices/lookup?model=claude-sonnet&token_type=output&currency=USD", ADMIN).await.expect(200);
        assert_eq!(output.body["price_per_million"], "15.000000");
        app.get("/prices/lookup?model=claude-sonnet&token_type=input&currency=EUR", ADMIN).await.expect(404);
        app.get("/prices/lookup?model=unknown-model&token_type=input&currency=USD", ADMIN).await.expect(404);
    }

    async fn lookups_need_valid_parameters(db: Db) {
        let app = spawn(db).await;
        let missing = app.get("/prices/lookup?model=m&currency=USD", ADMIN).await.expect(422);
        assert!(missing.text.contains("token_type"), "{}", missing.text);
        for (query, field) in [
            ("model=m&token_type=input&currency=USD&at=soon", "at"),
            ("model=m&token_type=input&currency=USD&at=-1", "at"),
            ("model=m&token_type=input&currency=usd", "currency"),
            ("model=bad%20model&token_type=input&currency=USD", "model"),
            ("model=m&token_type=Input!&currency=USD", "token_type"),
            ("model=m&token_type=input&currency=USD&color=red", "color"),
        ] {
            let answer = app.get(&format!("/prices/lookup?{query}"), ADMIN).await.expect(422);
            assert!(answer.field() == field || answer.text.contains(field), "{query}: {}", answer.text);
        }
    }

    async fn prices_list_by_filter_and_page_in_a_stable_order(db: Db) {
        let app = spawn(db).await;
        for (model, token_type, amount, from) in [
            ("gpt-4o", "output", "10", NOV_1),
            ("claude-sonnet", "output", "15", NOV_1),
            ("claude-sonnet", "input", "2.5", NOV_15),
            ("claude-sonnet", "input", "3", NOV_1),
        ] {
            app.post("/prices", ADMIN, price(model, token_type, amount, from)).await.expect(201);
        }
        let all = app.get("/prices", ADMIN).await.expect(200);
        let order: Vec<(String, String, String)> = items(&all)
            .iter()
            .map(|p| (p["model"].as_str().unwrap().into(), p["token_type"].as_str().unwrap().into(), p["price_per_million"].as_str().unwrap().into()))
            .collect();
        assert_eq!(
            order,
            vec![
                ("claude-sonnet".into(), "input".into(), "3.000000".into()),
                ("claude-sonnet".into(), "input".into(), "2.500000".into()),
                ("claude-sonnet".into(), "output".into(), "15.000000".into()),
                ("gpt-4o".into(), "output".into(), "10.000000".into()),
            ]
        );
        let page = app.get("/prices?limit=3", ADMIN).await.expect(200);
        assert_eq!(items(&page).len(), 3);
        assert_eq!(page.body["next_offset"], 3);
        let last = app.get("/prices?limit=3&offset=3", ADMIN).await.expect(200);
        assert_eq!(last.body["items"][0]["model"], "gpt-4o");
        assert!(last.body.get("next_offset").is_none());
        let sonnet = app.get("/prices?model=claude-sonnet&token_type=input", ADMIN).await.expect(200);
        assert_eq!(items(&sonnet).len(), 2);
        let eur = app.get("/prices?currency=EUR", ADMIN).await.expect(200);
        assert!(items(&eur).is_empty());
        assert_eq!(app.get("/prices?limit=0", ADMIN).await.expect(422).field(), "limit");
        assert_eq!(app.get("/prices?currency=usd", ADMIN).await.expect(422).field(), "currency");
    }

    async fn bad_prices_are_rejected_with_the_field_and_nothing_is_stored(db: Db) {
        let app = spawn(db).await;
        let good = price("claude-sonnet", "input", "3.00", NOV_1);
        let with = |key: &str, value: Value| {
            let mut body = good.clone();
            if value.is_null() {
                body.as_object_mut().unwrap().remove(key);
            } else {
                body[key] = value;
            }
            body
        };
        let cases = [
            (with("price_per_million", json!("-1")), "price_per_million"),
            (with("price_per_million", json!("1000000000001")), "price_per_million"),
            (with("price_per_million", json!("99999999999999999999")), "price_per_million"),
            (with("price_per_million", json!("1.2345678")), "price_per_million"),
            (with("price_per_million", json!("1e3")), "price_per_million"),
            (with("price_per_million", json!(3.0)), "price_per_million"),
            (with("price_per_million", json!(3)), "price_per_million"),
            (with("price_per_million", Value::Null), "price_per_million"),
            (with("model", json!("")), "model"),
            (with("model", json!("has space")), "model"),
            (with("model", json!(7)), "model"),
            (with("token_type", json!("Input")), "token_type"),
            (with("currency", json!("usd")), "currency"),
            (with("effective_from", json!(-1)), "effective_from"),
            (with("effective_from", json!(1e20)), "effective_from"),
            (with("effective_from", json!("tomorrow")), "effective_from"),
            (with("effective_from", json!(253_402_300_800_000_i64)), "effective_from"),
            (with("discount", json!("10%")), "discount"),
        ];
        for (body, field) in cases {
            let answer = app.post("/prices", ADMIN, body.clone()).await.expect(422);
            assert_eq!(answer.code(), "invalid");
            assert!(answer.field() == field || answer.text.contains(field), "{body}: {}", answer.text);
        }
        app.send_raw(reqwest::Method::POST, "/prices", ADMIN, "application/json", b"{\"model\":".to_vec()).await.expect(400);
        app.send_raw(reqwest::Method::POST, "/prices", ADMIN, "text/plain", good.to_string().into_bytes()).await.expect(415);
        let list = app.get("/prices", ADMIN).await.expect(200);
        assert!(items(&list).is_empty(), "nothing stored: {}", list.text);
        let audit = app.get("/audit?entity_type=price", ADMIN).await.expect(200);
        assert!(items(&audit).is_empty());
    }

    async fn only_admins_add_prices_and_every_role_reads_them(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        app.post("/prices", ADMIN, price("claude-sonnet", "input", "3.00", NOV_1)).await.expect(201);
        let lookup = "/prices/lookup?model=claude-sonnet&token_type=input&currency=USD";
        for (role, tenant) in [("approver", None), ("finance", None), ("tenant", Some("acme"))] {
            let token = app.token(role, tenant).await;
            app.get("/prices", &token).await.expect(200);
            app.get(lookup, &token).await.expect(200);
            let denied = app.post("/prices", &token, price("claude-sonnet", "input", "1.00", NOV_15)).await.expect(403);
            assert_eq!(denied.code(), "forbidden");
        }
        app.send(reqwest::Method::GET, "/prices", None, None).await.expect(401);
        app.send(reqwest::Method::GET, lookup, Some("tg_wrong"), None).await.expect(401);
        let list = app.get("/prices", ADMIN).await.expect(200);
        assert_eq!(items(&list).len(), 1, "refused writes stored nothing");
    }
}
