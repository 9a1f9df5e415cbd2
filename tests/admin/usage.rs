//! Usage events into the ledger: once per request id, priced at the price in force,
//! corrected only by new entries; on both databases.

use serde_json::{Value, json};
use tollgate::ledger::usage::{UsageEvent, UsageLine};

use crate::helpers::*;
use crate::on_both_databases;

/// Test start, in milliseconds (2026-11-22 00:00 UTC).
pub const NOW: i64 = START_SECS as i64 * 1_000;
pub const DAY: i64 = 86_400_000;
/// 2026-11-01 00:00 UTC.
pub const NOV_1: i64 = NOW - 21 * DAY;
/// 2026-11-15 00:00 UTC.
pub const NOV_15: i64 = NOW - 7 * DAY;

/// A price version body.
pub fn price(model: &str, token_type: &str, amount: &str, from: i64) -> Value {
    json!({"model": model, "token_type": token_type, "currency": "USD", "price_per_million": amount, "effective_from": from})
}

/// The worked example's prices: input 3.00 and output 15.00 USD per million, from Nov 1.
pub async fn worked_example_prices(app: &AdminApp) {
    app.post(
        "/prices",
        ADMIN,
        price("claude-sonnet", "input", "3.00", NOV_1),
    )
    .await
    .expect(201);
    app.post(
        "/prices",
        ADMIN,
        price("claude-sonnet", "output", "15.00", NOV_1),
    )
    .await
    .expect(201);
}

/// A usage event of `claude-sonnet` priced by the app's ledger at the price in force at `at`.
pub async fn priced_event(
    app: &AdminApp,
    request_id: &str,
    tenant: &str,
    session: Option<&str>,
    at: i64,
    tokens: &[(&str, u64)],
) -> UsageEvent {
    let tokens: Vec<(String, u64)> = tokens.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect();
    // A token type without a price is recorded at 0 (the seeds use that on purpose).
    let priced = app
        .ledger
        .price_usage("claude-sonnet", "USD", at, &tokens)
        .await
        .unwrap();
    UsageEvent {
        request_id: request_id.into(),
        tenant_id: tenant.into(),
        session_id: session.map(str::to_owned),
        model: Some("claude-sonnet".into()),
        domain: Some(DOMAIN.into()),
        occurred_at: at,
        currency: "USD".into(),
        lines: priced.lines,
    }
}

/// Rows in a ledger table (through the app's own pool).
async fn count(app: &AdminApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {table}"))
        .fetch_one(app.ledger.pool())
        .await
        .unwrap()
}

fn line(token_type: &str, tokens: u64, cost_micros: i64) -> UsageLine {
    UsageLine {
        token_type: token_type.into(),
        tokens,
        cost_micros,
    }
}

on_both_databases! {
    async fn the_same_request_id_is_recorded_once_however_often_it_is_sent(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        worked_example_prices(&app).await;
        let event = priced_event(&app, "r-9", "acme", Some("s-123"), NOW, &[("input", 1_200), ("output", 350)]).await;

        let first = app.ledger.record_usage(std::slice::from_ref(&event)).await.unwrap();
        assert_eq!((first.inserted, first.duplicates), (1, 0));
        let again = app.ledger.record_usage(std::slice::from_ref(&event)).await.unwrap();
        assert_eq!((again.inserted, again.duplicates), (0, 1));
        assert_eq!(again.duplicate_request_ids, vec!["r-9".to_owned()]);
        // A batch that repeats an id, and mixes old and new.
        let mut other = event.clone();
        other.request_id = "r-10".into();
        let batch = app.ledger.record_usage(&[event.clone(), other.clone(), other]).await.unwrap();
        assert_eq!((batch.inserted, batch.duplicates), (1, 2));
        assert_eq!(batch.duplicate_request_ids, vec!["r-9".to_owned(), "r-10".to_owned()]);

        assert_eq!(count(&app, "ledger_entries").await, 2);
        assert_eq!(count(&app, "ledger_lines").await, 4, "lines are written only with a new entry");
        let cost: i64 = sqlx::query_scalar("SELECT cost_micros FROM ledger_entries WHERE request_id = 'r-9'")
            .fetch_one(app.ledger.pool()).await.unwrap();
        assert_eq!(cost, 8_850);
    }

    async fn a_large_batch_records_each_request_id_and_its_lines_once(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let event = |request_id: &str, input: u64| UsageEvent {
            request_id: request_id.into(),
            tenant_id: "acme".into(),
            session_id: None,
            model: Some("claude-sonnet".into()),
            domain: Some(DOMAIN.into()),
            occurred_at: NOW,
            currency: "USD".into(),
            lines: vec![line("input", input, 3), line("output", 1, 15), line("cached_input", 2, 0)],
        };
        app.ledger.record_usage(&[event("r-old", 1)]).await.unwrap();

        // One already recorded, then r-new twice (the second copy differs, and is far
        // enough behind the first to fall in the next insert statement), with enough
        // events between them that entries and lines each take two statements.
        const FILLER: u64 = 3_000;
        let mut batch = vec![event("r-old", 1_000), event("r-new", 7)];
        batch.extend((0..FILLER).map(|i| event(&format!("r-{i}"), 10)));
        batch.push(event("r-new", 1_000));
        let outcome = app.ledger.record_usage(&batch).await.unwrap();
        assert_eq!((outcome.inserted, outcome.duplicates), (1 + FILLER as usize, 2));
        assert_eq!(outcome.duplicate_request_ids, vec!["r-old".to_owned(), "r-new".to_owned()]);

        let entries = 2 + FILLER as i64;
        assert_eq!(count(&app, "ledger_entries").await, entries);
        assert_eq!(count(&app, "ledger_lines").await, 3 * entries, "each entry's lines once");
        let tokens: i64 = sqlx::query_scalar("SELECT CAST(SUM(tokens) AS BIGINT) FROM ledger_lines")
            .fetch_one(app.ledger.pool()).await.unwrap();
        assert_eq!(tokens as u64, (1 + 3) + (7 + 3) + FILLER * (10 + 3));
        let new_input: i64 = sqlx::query_scalar(
            "SELECT l.tokens FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id \
             WHERE e.request_id = 'r-new' AND l.token_type = 'input'",
        )
        .fetch_one(app.ledger.pool()).await.unwrap();
        assert_eq!(new_input, 7, "the first copy in the batch is the one recorded");
    }

    async fn the_worked_example_costs_exactly_0_008850_usd(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        worked_example_prices(&app).await;
        let event = priced_event(&app, "r-9", "acme", Some("s-123"), NOW, &[("input", 1_200), ("output", 350)]).await;
        assert_eq!(event.lines, vec![line("input", 1_200, 3_600), line("output", 350, 5_250)]);
        app.ledger.record_usage(&[event]).await.unwrap();

        let report = app.get("/reports/spend?from=2026-11-01&to=2026-12-01&group_by=token_type", ADMIN).await.expect(200);
        let items = report.body["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], json!({"token_type": "input", "currency": "USD", "tokens": 1_200, "spend": "0.003600"}));
        assert_eq!(items[1], json!({"token_type": "output", "currency": "USD", "tokens": 350, "spend": "0.005250"}));
        assert_eq!(report.body["totals"], json!([{"currency": "USD", "tokens": 1_550, "spend": "0.008850"}]));
    }

    async fn a_mid_month_price_change_charges_each_event_at_its_own_price(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        worked_example_prices(&app).await;
        // Input doubles from Nov 15; output stays.
        app.post("/prices", ADMIN, price("claude-sonnet", "input", "6.00", NOV_15)).await.expect(201);
        let before = priced_event(&app, "r-1", "acme", None, NOV_15 - 1, &[("input", 1_000), ("output", 100)]).await;
        let at_change = priced_event(&app, "r-2", "acme", None, NOV_15, &[("input", 1_000), ("output", 100)]).await;
        let after = priced_event(&app, "r-3", "acme", None, NOW, &[("input", 1_000)]).await;
        assert_eq!(before.lines, vec![line("input", 1_000, 3_000), line("output", 100, 1_500)]);
        assert_eq!(at_change.lines, vec![line("input", 1_000, 6_000), line("output", 100, 1_500)]);
        assert_eq!(after.lines, vec![line("input", 1_000, 6_000)]);
        app.ledger.record_usage(&[before, at_change, after]).await.unwrap();

        // A price added later does not reprice what is recorded.
        app.post("/prices", ADMIN, price("claude-sonnet", "input", "1.00", NOV_1 + DAY)).await.expect(201);
        let report = app.get("/reports/spend?from=2026-11-01&to=2026-12-01&group_by=day,token_type", ADMIN).await.expect(200);
        let rows: Vec<(String, String, String)> = report.body["items"].as_array().unwrap().iter()
            .map(|r| (r["day"].as_str().unwrap().to_owned(), r["token_type"].as_str().unwrap().to_owned(), r["spend"].as_str().unwrap().to_owned()))
            .collect();
        let row = |d: &str, t: &str, s: &str| (d.to_owned(), t.to_owned(), s.to_owned());
        assert_eq!(rows, vec![
            row("2026-11-14", "input", "0.003000"),
            row("2026-11-14", "output", "0.001500"),
            row("2026-11-15", "input", "0.006000"),
            row("2026-11-15", "output", "0.001500"),
            row("2026-11-22", "input", "0.006000"),
        ]);
        assert_eq!(report.body["totals"][0]["spend"], "0.018000");
    }

    async fn an_invalid_event_fails_the_whole_batch_and_nothing_is_stored(db: Db) {
        let app = spawn(db).await;
        let good = UsageEvent {
            request_id: "r-1".into(),
            tenant_id: "acme".into(),
            session_id: None,
            model: Some("claude-sonnet".into()),
            domain: None,
            occurred_at: NOW,
            currency: "USD".into(),
            lines: vec![line("input", 10, 30)],
        };
        let mut bad = good.clone();
        bad.request_id = "r-2".into();
        bad.lines.push(line("input", 1, 1));
        let error = app.ledger.record_usage(&[good, bad]).await.unwrap_err();
        assert!(error.to_string().contains("lines[1].token_type"), "{error}");
        assert_eq!(count(&app, "ledger_entries").await, 0);
    }

    async fn corrections_are_new_audited_entries_that_reports_include(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        worked_example_prices(&app).await;
        let event = priced_event(&app, "r-9", "acme", None, NOW - DAY, &[("input", 1_000_000)]).await;
        app.ledger.record_usage(&[event]).await.unwrap();

        let grant = app.post("/adjustments", ADMIN, json!({"tenant_id": "acme", "kind": "grant", "amount": "-1.25", "note": "goodwill"})).await.expect(201);
        assert_eq!(grant.body["amount"], "-1.250000");
        assert_eq!(grant.body["currency"], "USD");
        assert_eq!(grant.body["occurred_at"], NOW, "a correction counts now unless told otherwise");
        let fix = json!({"tenant_id": "acme", "kind": "adjustment", "amount": "0.000001", "note": "rounding", "model": "claude-sonnet", "occurred_at": NOW - DAY});
        app.post("/adjustments", ADMIN, fix).await.expect(201);
        let id = grant.body["id"].as_str().unwrap();
        let audit = app.get(&format!("/audit?entity_type=ledger_entry&entity_id={id}"), ADMIN).await.expect(200);
        assert_eq!(audit.body["items"][0]["action"], "ledger.grant");
        assert_eq!(audit.body["items"][0]["after"]["amount"], "-1.250000");

        // 3.000000 of usage, -1.25 granted, +0.000001 adjusted; the usage entry is untouched.
        let report = app.get("/reports/spend?from=2026-11-01&to=2026-12-01&group_by=day,token_type", ADMIN).await.expect(200);
        assert_eq!(report.body["totals"], json!([{"currency": "USD", "tokens": 1_000_000, "spend": "1.750001"}]));
        let items = report.body["items"].as_array().unwrap();
        assert_eq!(items[0], json!({"day": "2026-11-21", "token_type": null, "currency": "USD", "tokens": 0, "spend": "0.000001"}));
        assert_eq!(items[1], json!({"day": "2026-11-21", "token_type": "input", "currency": "USD", "tokens": 1_000_000, "spend": "3.000000"}));
        assert_eq!(items[2], json!({"day": "2026-11-22", "token_type": null, "currency": "USD", "tokens": 0, "spend": "-1.250000"}));
        let usage: i64 = sqlx::query_scalar("SELECT cost_micros FROM ledger_entries WHERE request_id = 'r-9'")
            .fetch_one(app.ledger.pool()).await.unwrap();
        assert_eq!(usage, 3_000_000);
    }

    async fn corrections_are_checked_and_only_admins_make_them(db: Db) {
        let app = spawn(db).await;
        app.tenant("acme").await;
        let finance = app.token("finance", None).await;
        let body = json!({"tenant_id": "acme", "kind": "adjustment", "amount": "1.00", "note": "x"});
        app.post("/adjustments", &finance, body.clone()).await.expect(403);
        let cases = [
            (json!({"tenant_id": "acme", "kind": "grant", "amount": "1.00", "note": "x"}), "amount"),
            (json!({"tenant_id": "acme", "kind": "adjustment", "amount": "0", "note": "x"}), "amount"),
            (json!({"tenant_id": "acme", "kind": "adjustment", "amount": 1.5, "note": "x"}), "amount"),
            (json!({"tenant_id": "acme", "kind": "adjustment", "amount": "1.0000001", "note": "x"}), "amount"),
            (json!({"tenant_id": "acme", "kind": "refund", "amount": "1.00", "note": "x"}), "kind"),
            (json!({"tenant_id": "acme", "kind": "adjustment", "amount": "1.00", "note": ""}), "note"),
            (json!({"tenant_id": "acme", "kind": "adjustment", "amount": "1.00", "note": "x", "occurred_at": -1}), "occurred_at"),
        ];
        for (body, field) in cases {
            let answer = app.post("/adjustments", ADMIN, body.clone()).await.expect(422);
            assert_eq!(answer.field(), field, "{body}: {}", answer.text);
        }
        let nobody = json!({"tenant_id": "nobody", "kind": "adjustment", "amount": "1.00", "note": "x"});
        app.post("/adjustments", ADMIN, nobody).await.expect(404);
        assert_eq!(count(&app, "ledger_entries").await, 0);
    }
}

/// The ledger is append-only: no source file updates or deletes its tables.
#[test]
fn nothing_updates_or_deletes_ledger_rows() {
    fn walk(dir: &std::path::Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "sql") {
                let text = std::fs::read_to_string(&path).unwrap().to_uppercase();
                for table in ["LEDGER_ENTRIES", "LEDGER_LINES"] {
                    for verb in [format!("UPDATE {table}"), format!("DELETE FROM {table}")] {
                        if text.contains(&verb) {
                            found.push(format!("{}: {verb}", path.display()));
                        }
                    }
                }
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    walk(&root.join("src"), &mut found);
    walk(&root.join("migrations"), &mut found);
    assert!(found.is_empty(), "the ledger is append-only: {found:?}");
}
