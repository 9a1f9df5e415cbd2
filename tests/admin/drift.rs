//! Drift between the budget counters and the ledger: `GET /v1/reports/drift` (JSON and
//! CSV), reservations in the budget report, and `tollgate reconcile`'s exit codes. Usage
//! is settled through `ShouldRateLimit` (stream-done descriptors), corrections go through
//! `POST /v1/adjustments`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_databases;

/// Active tenant `acme` with [`MODEL`] granted and priced ([`llm_tenant`]), and four
/// budgets: acme's monthly cost (hard), acme's daily output tokens (soft), acme's hourly
/// requests to the model (soft) and a global monthly cost (soft). Every settlement below
/// is 1,200 input and 350 output tokens: 0.008850 USD at these prices.
async fn setup(app: &AdminApp) {
    llm_tenant(app).await;
    for body in [
        json!({"name": "monthly-cost", "scope": "tenant", "tenant_id": "acme", "measure": "cost",
            "period": {"calendar": "month"}, "amount": "100.00", "enforcement": "hard"}),
        json!({"name": "daily-output", "scope": "tenant", "tenant_id": "acme", "measure": "tokens",
            "token_type": "output", "period": {"calendar": "day"}, "amount": 1_000_000, "enforcement": "soft"}),
        json!({"name": "platform-cost", "scope": "global", "measure": "cost", "currency": "USD",
            "period": {"calendar": "month"}, "amount": "1000.00", "enforcement": "soft"}),
        json!({"name": "sonnet-hourly", "scope": "tenant_model", "tenant_id": "acme", "model": MODEL,
            "measure": "requests", "period": {"window_seconds": 3600}, "amount": 100, "enforcement": "soft"}),
    ] {
        app.post("/budgets", ADMIN, body).await.expect(201);
    }
}

/// The request path with a reservation of `estimate` tokens for `request_id`.
async fn reserve(app: &AdminApp, request_id: &str, estimate: &str) {
    let entries = [
        ("tenant_id", "acme"),
        ("model", MODEL),
        ("request_id", request_id),
        ("estimate", estimate),
    ];
    let answer = app.decide_with(&[(&entries, Some(0))]).await;
    assert_eq!(answer.overall_code, Code::Ok as i32, "reserved: {answer:?}");
}

/// The drift report's rows by budget name.
async fn drift(app: &AdminApp, query: &str) -> Vec<Value> {
    let report = app
        .get(&format!("/reports/drift{query}"), ADMIN)
        .await
        .expect(200);
    report.body["items"].as_array().unwrap().clone()
}

fn by_name<'v>(rows: &'v [Value], name: &str) -> &'v Value {
    rows.iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row {name} in {rows:?}"))
}

/// `(counter, reserved, ledger, drift)` as shown.
fn figures(row: &Value) -> (&str, &str, &str, &str) {
    let s = |k: &str| row[k].as_str().unwrap();
    (s("counter"), s("reserved"), s("ledger"), s("drift"))
}

on_both_databases! {
    async fn counters_settled_through_the_decision_path_agree_with_the_ledger(db: Db) {
        let app = spawn(db).await;
        setup(&app).await;
        settle(&app, "r-1", 1_200, 350).await;
        settle(&app, "r-1", 1_200, 350).await; // a resend is charged once, in both places

        let rows = drift(&app, "").await;
        let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["daily-output", "monthly-cost", "sonnet-hourly", "platform-cost"], "by tenant and name, global last");
        let monthly = by_name(&rows, "monthly-cost");
        assert_eq!(figures(monthly), ("0.008850", "0.000000", "0.008850", "0.000000"));
        assert_eq!(monthly["units"], json!({"counter": 8_850, "reserved": 0, "ledger": 8_850, "drift": 0}));
        assert_eq!(monthly["tenant_id"], "acme");
        assert_eq!((monthly["scope"].as_str(), monthly["measure"].as_str(), monthly["currency"].as_str()),
            (Some("tenant"), Some("cost"), Some("USD")));
        assert_eq!(monthly["period_start"], "2026-11-01T00:00:00+01:00");
        assert_eq!(monthly["period_end"], "2026-12-01T00:00:00+01:00");
        let daily = by_name(&rows, "daily-output");
        assert_eq!(figures(daily), ("350", "0", "350", "0"));
        assert_eq!(daily["period_start"], "2026-11-22T00:00:00+01:00", "acme's day, in Berlin");
        let requests = by_name(&rows, "sonnet-hourly");
        assert_eq!(figures(requests), ("1", "0", "1", "0"), "one settled request");
        assert_eq!((requests["scope"].as_str(), requests["model"].as_str()), (Some("tenant_model"), Some(MODEL)));
        assert_eq!(requests["period_start"], "2026-11-22T01:00:00+01:00");
        let global = by_name(&rows, "platform-cost");
        assert_eq!(figures(global), ("0.008850", "0.000000", "0.008850", "0.000000"));
        assert!(global["tenant_id"].is_null());
        assert_eq!(global["period_start"], "2026-11-01T00:00:00+00:00", "global periods are UTC");
        assert!(rows.iter().all(|r| r["units"]["drift"] == 0));
    }

    async fn an_adjustment_moves_the_ledger_and_shows_as_drift_of_exactly_its_amount(db: Db) {
        let app = spawn(db).await;
        setup(&app).await;
        settle(&app, "r-1", 1_200, 350).await;
        let adjustment = json!({"tenant_id": "acme", "kind": "adjustment", "amount": "1.25", "note": "late invoice"});
        app.post("/adjustments", ADMIN, adjustment).await.expect(201);

        let rows = drift(&app, "").await;
        let monthly = by_name(&rows, "monthly-cost");
        assert_eq!(figures(monthly), ("0.008850", "0.000000", "1.258850", "-1.250000"), "counter unchanged, ledger moved");
        assert_eq!(monthly["units"]["drift"], -1_250_000);
        // The global cost budget counts every tenant's corrections too; tokens have none.
        assert_eq!(by_name(&rows, "platform-cost")["units"]["drift"], -1_250_000);
        assert_eq!(figures(by_name(&rows, "daily-output")), ("350", "0", "350", "0"));

        // CSV: one row per budget, the same figures as exact decimals.
        let csv = app.get("/reports/drift?format=csv", ADMIN).await.expect(200);
        let mut reader = csv::Reader::from_reader(csv.text.as_bytes());
        assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), [
            "tenant_id", "budget_id", "name", "scope", "model", "measure", "token_type", "currency",
            "period_start", "period_end", "counter", "reserved", "ledger", "drift",
        ]);
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), 4);
        let m = records.iter().find(|r| &r[2] == "monthly-cost").unwrap();
        assert_eq!((&m[0], &m[7], &m[10], &m[12], &m[13]), ("acme", "USD", "0.008850", "1.258850", "-1.250000"));
        let g = records.iter().find(|r| &r[2] == "platform-cost").unwrap();
        assert_eq!((&g[0], &g[3]), ("", "global"));
    }

    async fn a_reservation_shows_as_reserved_in_the_drift_and_budget_reports(db: Db) {
        let app = spawn(db).await;
        setup(&app).await;
        settle(&app, "r-1", 1_200, 350).await;
        let adjustment = json!({"tenant_id": "acme", "kind": "adjustment", "amount": "1.00", "note": "fix"});
        app.post("/adjustments", ADMIN, adjustment).await.expect(201);
        // 1000 tokens at the model's highest price (15.00 per million) hold 0.015000 USD on
        // the hard budget; soft budgets are never reserved.
        reserve(&app, "r-2", "1000").await;

        let rows = drift(&app, "").await;
        let monthly = by_name(&rows, "monthly-cost");
        assert_eq!(figures(monthly), ("0.008850", "0.015000", "1.008850", "-1.000000"), "a reservation is not drift");
        assert_eq!(monthly["units"]["reserved"], 15_000);
        assert_eq!(figures(by_name(&rows, "daily-output")).1, "0");

        let report = app.get("/reports/budgets?tenant_id=acme", ADMIN).await.expect(200);
        let items = report.body["items"].as_array().unwrap();
        let m = by_name(items, "monthly-cost");
        assert_eq!((m["spent"].as_str(), m["reserved"].as_str(), m["remaining"].as_str()),
            (Some("1.008850"), Some("0.015000"), Some("98.976150")), "remaining = limit - spent - reserved");
        let d = by_name(items, "daily-output");
        assert_eq!((d["reserved"].clone(), d["remaining"].clone()), (json!(0), json!(999_650)));
        let csv = app.get("/reports/budgets?tenant_id=acme&format=csv", ADMIN).await.expect(200);
        let mut reader = csv::Reader::from_reader(csv.text.as_bytes());
        let m = reader.records().map(Result::unwrap).find(|r| &r[2] == "monthly-cost").unwrap();
        assert_eq!((&m[11], &m[12]), ("0.015000", "98.976150"));

        // Settling it gives the reservation back and charges the actual usage.
        settle(&app, "r-2", 1_200, 350).await;
        let monthly = by_name(&drift(&app, "").await, "monthly-cost").clone();
        assert_eq!(figures(&monthly), ("0.017700", "0.000000", "1.017700", "-1.000000"));
    }

    async fn a_tenant_token_sees_only_its_own_budgets_and_no_global_ones(db: Db) {
        let app = spawn(db).await;
        setup(&app).await;
        app.tenant("globex").await;
        let globex = json!({"name": "globex-monthly", "scope": "tenant", "tenant_id": "globex", "measure": "cost",
            "period": {"calendar": "month"}, "amount": "5.00", "enforcement": "hard"});
        app.post("/budgets", ADMIN, globex).await.expect(201);
        let acme = app.token("tenant", Some("acme")).await;
        let mine = app.get("/reports/drift", &acme).await.expect(200);
        let names: Vec<&str> = mine.body["items"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["daily-output", "monthly-cost", "sonnet-hourly"]);
        app.get("/reports/drift?tenant_id=globex", &acme).await.expect(404);
        let staff = drift(&app, "?tenant_id=globex").await;
        assert_eq!(staff.len(), 1);
        assert_eq!(staff[0]["name"], "globex-monthly");
        let approver = app.token("approver", None).await;
        app.get("/reports/drift", &approver).await.expect(403);
        let page = app.get("/reports/drift?limit=2", ADMIN).await.expect(200);
        assert_eq!((page.body["items"].as_array().unwrap().len(), page.body["next_offset"].clone()), (2, json!(2)));
        assert_eq!(app.get("/reports/drift?format=csv&limit=2", ADMIN).await.expect(422).field(), "limit");
    }
}

/// Reports that read counters answer 503 (retry later) while the counter store is down,
/// not an opaque 500.
#[tokio::test]
async fn reports_that_read_counters_answer_503_while_the_store_is_down() {
    let database = Arc::new(TestDb::create(Db::Sqlite).await);
    // Nothing listens on port 1: every store call fails at once.
    let app = spawn_on(Db::Sqlite, database, |s| {
        s.store = "redis://127.0.0.1:1".into();
        s.store_deadline_ms = 100;
    })
    .await;
    setup(&app).await;
    for path in [
        "/reports/budgets",
        "/reports/drift",
        "/reports/budgets?format=csv",
    ] {
        let answer = app.get(path, ADMIN).await.expect(503);
        assert_eq!(
            answer.body["error"]["code"], "unavailable",
            "{path}: {}",
            answer.body
        );
        let message = answer.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("counter store"), "{path}: {message}");
    }
    // What needs only the ledger still answers.
    app.get("/budgets", ADMIN).await.expect(200);
}

/// Runs `tollgate reconcile` (with `args`) on `database_url` and `store`, with nothing
/// else from this process's environment; its exit code, and its output and errors.
fn reconcile(
    dir: &Path,
    database_url: &str,
    store: &str,
    prefix: &str,
    args: &[&str],
) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("reconcile")
        .args(args)
        .env_clear()
        .env("TOLLGATE_DATABASE_URL", database_url)
        .env("TOLLGATE_STORE", store)
        .env("TOLLGATE_KEY_PREFIX", prefix)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The memory store's counters live in the serving process: the command cannot read them,
/// and says so (exit 2) rather than report every budget with spending as drifting.
#[tokio::test]
async fn reconcile_refuses_the_memory_store_with_exit_2() {
    let database = TestDb::create(Db::Sqlite).await;
    let dir = tempfile::TempDir::new().unwrap();
    let (code, out, err) = reconcile(dir.path(), &database.url, "memory", "", &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(out, "", "no verdict is printed");
    assert!(
        err.contains("the memory store's counters live in the serving process")
            && err.contains("GET /v1/reports/drift"),
        "{err}"
    );
    assert!(
        !dir.path().join("tollgate-outbox.jsonl").exists(),
        "the service's outbox is left alone"
    );
}

/// Redis is shared, so the command sees what the service counted: no drift after a
/// settlement (exit 0), drift after a correction (exit 1), and 2 when it cannot tell.
#[tokio::test]
async fn reconcile_reads_redis_counters_and_exits_1_when_a_budget_drifts() {
    let database = Arc::new(TestDb::create(Db::Sqlite).await);
    let prefix = format!("tollgate-drift-test:{}:", uuid::Uuid::now_v7().simple());
    let redis = "redis://127.0.0.1:6379";
    let app = spawn_on(Db::Sqlite, database.clone(), |s| {
        s.store = redis.into();
        s.key_prefix = prefix.clone();
    })
    .await;
    // The command reads the system clock: the app counts in the same periods.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    app.clock.set_secs(now.as_secs());
    setup(&app).await;
    settle(&app, "r-1", 1_200, 350).await;
    let dir = tempfile::TempDir::new().unwrap();
    let run = |args: &[&str]| reconcile(dir.path(), &database.url, redis, &prefix, args);

    // The service's own report first: its drain waits for its writer's, so the event is
    // in the ledger (an event a replica is still writing is invisible to another drain).
    let served = drift(&app, "").await;
    let (code, out, err) = run(&["--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(rows, served, "the command and the service agree");
    assert_eq!(
        figures(by_name(&rows, "monthly-cost")),
        ("0.008850", "0.000000", "0.008850", "0.000000")
    );
    assert_eq!(
        figures(by_name(&rows, "daily-output")),
        ("350", "0", "350", "0")
    );

    let grant =
        json!({"tenant_id": "acme", "kind": "grant", "amount": "-0.50", "note": "goodwill"});
    app.post("/adjustments", ADMIN, grant).await.expect(201);
    let (code, out, err) = run(&[]);
    assert_eq!(code, 1, "{out}{err}");
    let monthly = out
        .lines()
        .find(|l| l.contains("monthly-cost"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(monthly.starts_with("acme "), "{out}");
    assert!(
        monthly.ends_with("0.008850 USD  0.000000 USD  -0.491150 USD  0.500000 USD"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 5, "a header and four budgets: {out}");
    assert!(
        err.contains("2 of 4 budgets drift from the ledger"),
        "{err}"
    );

    // A ledger it cannot open is an error, not a verdict.
    let (code, _, err) = reconcile(
        dir.path(),
        "sqlite:///nonexistent-dir/ledger.db",
        redis,
        &prefix,
        &[],
    );
    assert_eq!(code, 2, "{err}");
}
