//! Spend and budget reports: grouping, exact totals, CSV, tenant scoping and parameter
//! checks, on both databases. Money is compared as integers parsed from the decimals,
//! never through floating point.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_databases;
use crate::usage::{DAY, NOV_1, NOW, priced_event, worked_example_prices};

/// Parses an exact decimal (`"-0.008850"`) into micro-units, digit by digit.
fn micros(text: &str) -> i64 {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text),
    };
    let (whole, fraction) = digits.split_once('.').expect("six decimal places");
    assert_eq!(fraction.len(), 6, "{text}");
    assert!(
        whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit()),
        "{text}"
    );
    sign * (whole.parse::<i64>().unwrap() * 1_000_000 + fraction.parse::<i64>().unwrap())
}

/// A tenant in euros, in another timezone, with no cost centre.
async fn globex(app: &AdminApp) {
    let body =
        json!({"id": "globex", "name": "Globex", "currency": "EUR", "timezone": "Asia/Tokyo"});
    app.post("/tenants", ADMIN, body).await.expect(201);
    let eur = |token_type: &str, amount: &str| json!({"model": "claude-sonnet", "token_type": token_type, "currency": "EUR", "price_per_million": amount, "effective_from": NOV_1});
    app.post("/prices", ADMIN, eur("input", "2.80"))
        .await
        .expect(201);
    app.post("/prices", ADMIN, eur("output", "14.00"))
        .await
        .expect(201);
}

/// Usage across two tenants, currencies, sessions, token types and days (all in November).
async fn seed(app: &AdminApp) {
    app.tenant("acme").await;
    globex(app).await;
    worked_example_prices(app).await;
    let mut events = vec![
        priced_event(
            app,
            "r-1",
            "acme",
            Some("s-1"),
            NOW - 3 * DAY,
            &[("input", 1_200), ("output", 350)],
        )
        .await,
        priced_event(
            app,
            "r-2",
            "acme",
            Some("s-1"),
            NOW - 3 * DAY + 60_000,
            &[("input", 333), ("output", 7)],
        )
        .await,
        priced_event(
            app,
            "r-3",
            "acme",
            Some("s-2"),
            NOW - DAY,
            &[("input", 1), ("cached_input", 5)],
        )
        .await,
        priced_event(
            app,
            "r-4",
            "acme",
            None,
            NOW + 3_600_000,
            &[("output", 12_345)],
        )
        .await,
    ];
    // r-3's cached input has no price: it is recorded at 0.
    for (id, at, tokens) in [
        ("g-1", NOW - 2 * DAY, [("input", 10_001), ("output", 999)]),
        ("g-2", NOW, [("input", 7), ("output", 3)]),
    ] {
        let tokens: Vec<(String, u64)> =
            tokens.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect();
        let priced = app
            .ledger
            .price_usage("claude-sonnet", "EUR", at, &tokens)
            .await
            .unwrap();
        let mut event = priced_event(app, id, "globex", Some("s-9"), at, &[]).await;
        event.currency = "EUR".into();
        event.lines = priced.lines;
        events.push(event);
    }
    // One more model, for acme.
    let mut haiku = priced_event(app, "r-5", "acme", Some("s-2"), NOW - DAY, &[]).await;
    haiku.model = Some("claude-haiku".into());
    haiku.lines = vec![tollgate::ledger::usage::UsageLine {
        token_type: "input".into(),
        tokens: 100,
        cost_micros: 77,
    }];
    events.push(haiku);
    app.ledger.record_usage(&events).await.unwrap();
}

/// Every `(column -> value)` of the items, and the totals by currency, checked to be the
/// exact sums of the rows.
#[track_caller]
fn check_totals(report: &Value) {
    let mut sums: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for item in report["items"].as_array().unwrap() {
        let sum = sums
            .entry(item["currency"].as_str().unwrap().to_owned())
            .or_default();
        sum.0 += item["tokens"].as_i64().unwrap();
        sum.1 += micros(item["spend"].as_str().unwrap());
    }
    let totals: BTreeMap<String, (i64, i64)> = report["totals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["currency"].as_str().unwrap().to_owned(),
                (
                    t["tokens"].as_i64().unwrap(),
                    micros(t["spend"].as_str().unwrap()),
                ),
            )
        })
        .collect();
    assert_eq!(sums, totals, "totals are the sums of the rows: {report}");
}

const NOVEMBER: &str = "from=2026-11-01&to=2026-12-01";

on_both_databases! {
    async fn every_grouping_has_totals_equal_to_the_sum_of_its_rows(db: Db) {
        let app = spawn(db).await;
        seed(&app).await;
        let groupings = [
            "", "tenant", "cost_centre", "model", "token_type", "session", "day", "week", "month",
            "tenant,model", "tenant,token_type,day", "cost_centre,session", "month,model,token_type",
            "tenant,cost_centre,model,token_type,session,day", "session,tenant,week",
        ];
        let mut grand: Option<Value> = None;
        for group_by in groupings {
            let grouping = if group_by.is_empty() { String::new() } else { format!("&group_by={group_by}") };
            let report = app.get(&format!("/reports/spend?{NOVEMBER}{grouping}&limit=500"), ADMIN).await.expect(200);
            check_totals(&report.body);
            // The grouping changes the rows, never the totals.
            match &grand {
                None => grand = Some(report.body["totals"].clone()),
                Some(totals) => assert_eq!(&report.body["totals"], totals, "{group_by}"),
            }
            // No row mixes currencies, and the rows are sorted by their keys.
            let columns: Vec<String> = serde_json::from_value(report.body["columns"].clone()).unwrap();
            assert_eq!(columns[columns.len() - 3..], ["currency", "tokens", "spend"]);
            let keys: Vec<Vec<Value>> = report.body["items"].as_array().unwrap().iter()
                .map(|item| columns[..columns.len() - 2].iter().map(|c| item[c].clone()).collect())
                .collect();
            let mut sorted = keys.clone();
            sorted.sort_by(|a, b| {
                let text = |v: &Vec<Value>| v.iter().map(|k| k.as_str().map(|s| format!("1{s}")).unwrap_or_default()).collect::<Vec<_>>();
                text(a).cmp(&text(b))
            });
            assert_eq!(keys, sorted, "{group_by}");
            let unique: std::collections::BTreeSet<String> = keys.iter().map(|k| format!("{k:?}")).collect();
            assert_eq!(unique.len(), keys.len(), "one row per group: {group_by}");
        }
        // 1200 in @3 + 350 out @15 = 8850; 333 @3 = 999; 7 @15 = 105; 1 @3 = 3 (rounded from
        // 3); 12345 @15 = 185175; haiku 77. EUR: 10001 @2.80 = 28002.8 -> 28003; 999 @14 = 13986;
        // 7 @2.80 = 19.6 -> 20; 3 @14 = 42.
        assert_eq!(grand.unwrap(), json!([
            {"currency": "EUR", "tokens": 11_010, "spend": "0.042051"},
            {"currency": "USD", "tokens": 14_341, "spend": "0.195209"},
        ]));
    }

    async fn each_dimension_groups_as_expected(db: Db) {
        let app = spawn(db).await;
        seed(&app).await;
        let rows = |report: &Answer, key: &str| -> Vec<(Value, String, i64, String)> {
            report.body["items"].as_array().unwrap().iter()
                .map(|i| (i[key].clone(), i["currency"].as_str().unwrap().to_owned(), i["tokens"].as_i64().unwrap(), i["spend"].as_str().unwrap().to_owned()))
                .collect()
        };
        let r = |k: Value, c: &str, t: i64, s: &str| (k, c.to_owned(), t, s.to_owned());

        let tenant = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=tenant"), ADMIN).await.expect(200);
        assert_eq!(rows(&tenant, "tenant"), vec![r(json!("acme"), "USD", 14_341, "0.195209"), r(json!("globex"), "EUR", 11_010, "0.042051")]);
        let cc = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=cost_centre"), ADMIN).await.expect(200);
        assert_eq!(rows(&cc, "cost_centre"), vec![r(Value::Null, "EUR", 11_010, "0.042051"), r(json!("R&D-42"), "USD", 14_341, "0.195209")]);
        let model = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=model&tenant_id=acme"), ADMIN).await.expect(200);
        assert_eq!(rows(&model, "model"), vec![r(json!("claude-haiku"), "USD", 100, "0.000077"), r(json!("claude-sonnet"), "USD", 14_241, "0.195132")]);
        let types = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=token_type&tenant_id=acme"), ADMIN).await.expect(200);
        assert_eq!(rows(&types, "token_type"), vec![
            r(json!("cached_input"), "USD", 5, "0.000000"),
            r(json!("input"), "USD", 1_634, "0.004679"),
            r(json!("output"), "USD", 12_702, "0.190530"),
        ]);
        let sessions = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=session&tenant_id=acme"), ADMIN).await.expect(200);
        assert_eq!(rows(&sessions, "session"), vec![
            r(Value::Null, "USD", 12_345, "0.185175"),
            r(json!("s-1"), "USD", 1_890, "0.009954"),
            r(json!("s-2"), "USD", 106, "0.000080"),
        ]);
        let days = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=day&tenant_id=acme"), ADMIN).await.expect(200);
        assert_eq!(rows(&days, "day"), vec![
            r(json!("2026-11-19"), "USD", 1_890, "0.009954"),
            r(json!("2026-11-21"), "USD", 106, "0.000080"),
            r(json!("2026-11-22"), "USD", 12_345, "0.185175"),
        ]);
        // 2026-11-19 is a Thursday: its week starts Monday the 16th; the 22nd is a Sunday.
        let weeks = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=week&tenant_id=acme"), ADMIN).await.expect(200);
        assert_eq!(rows(&weeks, "week"), vec![r(json!("2026-11-16"), "USD", 14_341, "0.195209")]);
        let months = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=month&model=claude-haiku"), ADMIN).await.expect(200);
        assert_eq!(rows(&months, "month"), vec![r(json!("2026-11-01"), "USD", 100, "0.000077")]);
        // A combination: model by tenant.
        let both = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=model,tenant"), ADMIN).await.expect(200);
        let pairs: Vec<(String, String)> = both.body["items"].as_array().unwrap().iter()
            .map(|i| (i["tenant"].as_str().unwrap().to_owned(), i["model"].as_str().unwrap().to_owned())).collect();
        assert_eq!(pairs, vec![
            ("acme".to_owned(), "claude-haiku".to_owned()),
            ("acme".to_owned(), "claude-sonnet".to_owned()),
            ("globex".to_owned(), "claude-sonnet".to_owned()),
        ]);
        assert_eq!(both.body["group_by"], json!(["tenant", "model"]), "columns in their fixed order");
    }

    async fn buckets_follow_the_timezone_asked_for(db: Db) {
        let app = spawn(db).await;
        seed(&app).await;
        // r-4 at 2026-11-22 01:00 UTC; in Los Angeles that is still the 21st.
        let utc = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=day&tenant_id=acme&model=claude-sonnet"), ADMIN).await.expect(200);
        let la = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=day&tenant_id=acme&model=claude-sonnet&timezone=America/Los_Angeles"), ADMIN).await.expect(200);
        let days = |a: &Answer| a.body["items"].as_array().unwrap().iter().map(|i| i["day"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
        assert_eq!(days(&utc), vec!["2026-11-19", "2026-11-21", "2026-11-22"]);
        assert_eq!(days(&la), vec!["2026-11-18", "2026-11-20", "2026-11-21"]);
        assert_eq!(la.body["timezone"], "America/Los_Angeles");
        // Dates in `from`/`to` are midnights in that timezone too.
        assert_eq!(la.body["from"], "2026-11-01T07:00:00Z");
        assert_eq!(la.body["to"], "2026-12-01T08:00:00Z");
        // RFC 3339 bounds: exactly the second day of usage.
        let exact = app.get("/reports/spend?from=2026-11-21T00:00:00Z&to=2026-11-22T00:00:00%2B00:00&tenant_id=acme", ADMIN).await.expect(200);
        assert_eq!(exact.body["totals"], json!([{"currency": "USD", "tokens": 106, "spend": "0.000080"}]));
    }

    async fn the_csv_reads_back_with_a_standard_parser_and_sums_exactly(db: Db) {
        let app = spawn(db).await;
        seed(&app).await;
        let query = format!("/reports/spend?{NOVEMBER}&group_by=session,tenant,day");
        let json = app.get(&query, ADMIN).await.expect(200);
        let response = reqwest::Client::new()
            .get(format!("{}{query}&format=csv", app.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
        let text = response.text().await.unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
        assert_eq!(header, ["day", "tenant", "session", "currency", "tokens", "spend"]);
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), json.body["row_count"].as_u64().unwrap() as usize, "data rows only, no totals row");
        let mut sums: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for record in &records {
            assert!(record[0].parse::<jiff::civil::Date>().is_ok(), "an ISO date: {record:?}");
            let sum = sums.entry(record[3].to_owned()).or_default();
            sum.0 += record[4].parse::<i64>().unwrap();
            sum.1 += micros(&record[5]);
        }
        let totals: BTreeMap<String, (i64, i64)> = json.body["totals"].as_array().unwrap().iter()
            .map(|t| (t["currency"].as_str().unwrap().to_owned(), (t["tokens"].as_i64().unwrap(), micros(t["spend"].as_str().unwrap()))))
            .collect();
        assert_eq!(sums, totals);
        // The same rows as JSON, in the same order; an absent session is an empty field.
        for (record, item) in records.iter().zip(json.body["items"].as_array().unwrap()) {
            assert_eq!(&record[0], item["day"].as_str().unwrap());
            assert_eq!(&record[2], item["session"].as_str().unwrap_or(""));
            assert_eq!(&record[5], item["spend"].as_str().unwrap());
        }
        // A cost centre with a comma and quotes round-trips (RFC 4180 quoting).
        app.patch("/tenants/acme", ADMIN, json!({"cost_centre": "R&D, \"north\""})).await.expect(200);
        let cc = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=cost_centre&tenant_id=acme&format=csv"), ADMIN).await.expect(200);
        let mut reader = csv::Reader::from_reader(cc.text.as_bytes());
        let record = reader.records().next().unwrap().unwrap();
        assert_eq!(&record[0], "R&D, \"north\"");
    }

    async fn pages_split_the_rows_and_every_page_carries_the_totals(db: Db) {
        let app = spawn(db).await;
        seed(&app).await;
        let all = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=tenant,session,token_type&limit=500"), ADMIN).await.expect(200);
        let every = all.body["items"].as_array().unwrap().clone();
        assert!(every.len() > 4);
        let mut paged = Vec::new();
        let mut offset = 0;
        loop {
            let page = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=tenant,session,token_type&limit=3&offset={offset}"), ADMIN).await.expect(200);
            assert_eq!(page.body["totals"], all.body["totals"]);
            assert_eq!(page.body["row_count"], every.len());
            paged.extend(page.body["items"].as_array().unwrap().iter().cloned());
            match page.body["next_offset"].as_i64() {
                Some(next) => offset = next,
                None => break,
            }
        }
        assert_eq!(paged, every);
    }

    async fn a_tenant_token_sees_only_its_own_spend_and_approvers_none(db: Db) {
        let app = spawn(db).await;
        seed(&app).await;
        let acme = app.token("tenant", Some("acme")).await;
        let mine = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=tenant"), &acme).await.expect(200);
        assert_eq!(mine.body["items"].as_array().unwrap().len(), 1);
        assert_eq!(mine.body["items"][0]["tenant"], "acme");
        assert_eq!(mine.body["totals"], json!([{"currency": "USD", "tokens": 14_341, "spend": "0.195209"}]));
        app.get(&format!("/reports/spend?{NOVEMBER}&tenant_id=acme"), &acme).await.expect(200);
        app.get(&format!("/reports/spend?{NOVEMBER}&tenant_id=globex"), &acme).await.expect(404);
        let csv = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=tenant&format=csv"), &acme).await.expect(200);
        assert!(!csv.text.contains("globex") && !csv.text.contains("EUR"), "{}", csv.text);
        app.get("/reports/budgets?tenant_id=globex", &acme).await.expect(404);

        let finance = app.token("finance", None).await;
        let all = app.get(&format!("/reports/spend?{NOVEMBER}&group_by=tenant"), &finance).await.expect(200);
        assert_eq!(all.body["items"].as_array().unwrap().len(), 2);
        app.get("/reports/budgets", &finance).await.expect(200);

        let approver = app.token("approver", None).await;
        assert_eq!(app.get(&format!("/reports/spend?{NOVEMBER}"), &approver).await.expect(403).code(), "forbidden");
        app.get("/reports/budgets", &approver).await.expect(403);
        app.send(reqwest::Method::GET, &format!("/reports/spend?{NOVEMBER}"), None, None).await.expect(401);
    }

    async fn bad_parameters_are_422_naming_the_parameter(db: Db) {
        let app = spawn(db).await;
        let cases = [
            ("to=2026-12-01", "from"),
            ("from=2026-11-01", "to"),
            ("from=2026-11-31&to=2026-12-01", "from"),
            ("from=2026-11-01&to=tomorrow", "to"),
            ("from=2026-11-01T00:00:00&to=2026-12-01", "from"),
            ("from=2026-11-01T00:00:00+01:00&to=2026-12-01", "from"),
            ("from=2026-12-01&to=2026-12-01", "to"),
            ("from=2026-12-01&to=2026-11-01", "to"),
            ("from=2025-01-01&to=2026-12-01", "to"),
            ("from=2026-11-01&to=2026-12-01&group_by=planet", "group_by"),
            ("from=2026-11-01&to=2026-12-01&group_by=tenant,tenant", "group_by"),
            ("from=2026-11-01&to=2026-12-01&group_by=day,week", "group_by"),
            ("from=2026-11-01&to=2026-12-01&group_by=", "group_by"),
            ("from=2026-11-01&to=2026-12-01&group_by=tenant,cost_centre,model,token_type,session,day,month", "group_by"),
            ("from=2026-11-01&to=2026-12-01&timezone=Mars/Base", "timezone"),
            ("from=2026-11-01&to=2026-12-01&tenant_id=Not%20A%20Slug", "tenant_id"),
            ("from=2026-11-01&to=2026-12-01&model=bad%20model", "model"),
            ("from=2026-11-01&to=2026-12-01&format=xml", "format"),
            ("from=2026-11-01&to=2026-12-01&limit=0", "limit"),
            ("from=2026-11-01&to=2026-12-01&limit=ten", "limit"),
            ("from=2026-11-01&to=2026-12-01&offset=-1", "offset"),
            ("from=2026-11-01&to=2026-12-01&format=csv&limit=10", "limit"),
        ];
        for (query, field) in cases {
            let answer = app.get(&format!("/reports/spend?{query}"), ADMIN).await.expect(422);
            assert_eq!(answer.code(), "invalid", "{query}");
            assert_eq!(answer.field(), field, "{query}: {}", answer.text);
        }
        // A range of exactly 400 days is allowed.
        app.get("/reports/spend?from=2025-10-28&to=2026-12-02", ADMIN).await.expect(200);
        let unknown = app.get("/reports/spend?from=2026-11-01&to=2026-12-01&surprise=1", ADMIN).await.expect(422);
        assert!(unknown.text.contains("surprise"), "{}", unknown.text);
        for (query, field) in [("limit=0", "limit"), ("format=pdf", "format"), ("tenant_id=BAD!", "tenant_id"), ("format=csv&offset=1", "offset")] {
            assert_eq!(app.get(&format!("/reports/budgets?{query}"), ADMIN).await.expect(422).field(), field, "{query}");
        }
    }

    async fn a_report_over_an_empty_range_has_no_rows_and_no_totals(db: Db) {
        let app = spawn(db).await;
        seed(&app).await;
        let empty = app.get("/reports/spend?from=2026-10-01&to=2026-11-01&group_by=tenant,day", ADMIN).await.expect(200);
        assert_eq!(empty.body["items"], json!([]));
        assert_eq!(empty.body["totals"], json!([]));
        assert_eq!(empty.body["row_count"], 0);
        assert!(empty.body.get("next_offset").is_none());
        let csv = app.get("/reports/spend?from=2026-10-01&to=2026-11-01&group_by=tenant,day&format=csv", ADMIN).await.expect(200);
        assert_eq!(csv.text, "day,tenant,currency,tokens,spend\r\n", "a header row (CRLF, as RFC 4180) and nothing else");
        // A ledger with nothing in it at all.
        let fresh = spawn(db).await;
        let nothing = fresh.get(&format!("/reports/spend?{NOVEMBER}"), ADMIN).await.expect(200);
        assert_eq!(nothing.body["totals"], json!([]));
    }

    async fn budget_status_shows_limit_spent_remaining_and_the_period_end(db: Db) {
        let app = spawn(db).await;
        seed(&app).await;
        let monthly = json!({"name": "monthly-cost", "scope": "tenant", "tenant_id": "acme", "measure": "cost",
            "period": {"calendar": "month"}, "amount": "100.00", "enforcement": "hard", "alert_thresholds": [80, 100]});
        app.post("/budgets", ADMIN, monthly).await.expect(201);
        let daily = json!({"name": "daily-output", "scope": "tenant", "tenant_id": "acme", "measure": "tokens",
            "token_type": "output", "period": {"calendar": "day"}, "amount": 1_000_000, "enforcement": "soft"});
        app.post("/budgets", ADMIN, daily).await.expect(201);
        let haiku = json!({"name": "haiku-requests", "scope": "tenant_model", "tenant_id": "acme", "model": "claude-haiku",
            "measure": "requests", "period": {"window_seconds": 604_800}, "amount": 10, "enforcement": "hard"});
        app.post("/budgets", ADMIN, haiku).await.expect(201);
        let session = json!({"name": "session-requests", "scope": "session", "tenant_id": "acme",
            "measure": "requests", "period": "session", "amount": 5, "enforcement": "hard"});
        app.post("/budgets", ADMIN, session).await.expect(201);
        let globex = json!({"name": "monthly", "scope": "tenant", "tenant_id": "globex", "measure": "cost",
            "period": {"calendar": "month"}, "amount": "0.04", "enforcement": "hard"});
        app.post("/budgets", ADMIN, globex).await.expect(201);

        // Now is 2026-11-22 00:00 UTC = 01:00 in Berlin: acme's day began at 2026-11-21T23:00Z,
        // so only r-4 (12,345 output tokens at 01:00 UTC) is in today's period.
        let report = app.get("/reports/budgets?tenant_id=acme", ADMIN).await.expect(200);
        let items = report.body["items"].as_array().unwrap();
        let names: Vec<&str> = items.iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["daily-output", "haiku-requests", "monthly-cost"], "session budgets are per session, not listed");
        let by_name = |name: &str| items.iter().find(|i| i["name"] == name).unwrap().clone();
        let m = by_name("monthly-cost");
        assert_eq!(m["limit"], "100.000000");
        assert_eq!(m["spent"], "0.195209");
        assert_eq!(m["reserved"], "0.000000");
        assert_eq!(m["remaining"], "99.804791");
        assert_eq!(m["currency"], "USD");
        assert_eq!(m["period_start"], "2026-11-01T00:00:00+01:00");
        assert_eq!(m["period_end"], "2026-12-01T00:00:00+01:00");
        let d = by_name("daily-output");
        assert_eq!((d["limit"].clone(), d["spent"].clone(), d["remaining"].clone()), (json!(1_000_000), json!(12_345), json!(987_655)));
        assert_eq!(d["period_end"], "2026-11-23T00:00:00+01:00");
        let h = by_name("haiku-requests");
        assert_eq!((h["spent"].clone(), h["remaining"].clone()), (json!(1), json!(9)));

        // globex has overspent its 0.04 EUR; remaining stops at zero.
        let all = app.get("/reports/budgets", ADMIN).await.expect(200);
        let g = all.body["items"].as_array().unwrap().iter().find(|i| i["tenant_id"] == "globex").unwrap().clone();
        assert_eq!((g["spent"].clone(), g["remaining"].clone()), (json!("0.042051"), json!("0.000000")));
        assert_eq!(g["period_end"], "2026-12-01T00:00:00+09:00");

        // Past the month's end (in Berlin), the monthly budget starts again from zero.
        app.clock.set_secs(START_SECS + 9 * 86_400);
        let december = app.get("/reports/budgets?tenant_id=acme", ADMIN).await.expect(200);
        let m = december.body["items"].as_array().unwrap().iter().find(|i| i["name"] == "monthly-cost").unwrap().clone();
        assert_eq!((m["spent"].clone(), m["period_end"].clone()), (json!("0.000000"), json!("2027-01-01T00:00:00+01:00")));

        // CSV: one row per budget, amounts as exact decimals or counts.
        let csv = app.get("/reports/budgets?tenant_id=acme&format=csv", ADMIN).await.expect(200);
        let mut reader = csv::Reader::from_reader(csv.text.as_bytes());
        assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), [
            "tenant_id", "budget_id", "name", "scope", "model", "measure", "token_type", "enforcement", "currency",
            "limit", "spent", "reserved", "remaining", "period_start", "period_end",
        ]);
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), 3);
        let monthly = records.iter().find(|r| &r[2] == "monthly-cost").unwrap();
        assert_eq!((&monthly[3], &monthly[5], &monthly[9], &monthly[12]), ("tenant", "cost", "100.000000", "100.000000"));
    }
}
