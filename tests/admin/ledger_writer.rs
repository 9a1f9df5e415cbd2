//! The ledger writer: settled usage events move from the store's outbox into the ledger
//! exactly once (on both databases), invalid events never block the ones behind them, and
//! nothing is lost while PostgreSQL is down or the writer restarts.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tollgate::clock::{ManualClock, SharedClock};
use tollgate::ledger::Ledger;
use tollgate::ledger::usage::{UsageEvent, UsageLine};
use tollgate::ledger::writer::LedgerWriter;
use tollgate::store::budget::{BudgetCall, BudgetOp, BudgetOutcome, namespace};
use tollgate::store::{CounterStore, MemoryStore, Store};
use tollgate::telemetry::Metrics;

use crate::helpers::*;
use crate::on_both_databases;
use crate::private_postgres::PrivatePostgres;

/// Test start, in milliseconds.
const NOW_MS: u64 = START_SECS * 1_000;
/// How long the store remembers a settled request id in these tests.
const SETTLED_TTL_SECS: u64 = 3_600;

/// A usage event of tenant `acme` with `tokens` input tokens.
fn event(request_id: &str, tokens: u64) -> UsageEvent {
    UsageEvent {
        request_id: request_id.into(),
        tenant_id: "acme".into(),
        session_id: Some("s-123".into()),
        model: Some("claude-sonnet".into()),
        domain: Some(DOMAIN.into()),
        occurred_at: NOW_MS as i64,
        currency: "USD".into(),
        lines: vec![UsageLine {
            token_type: "input".into(),
            tokens,
            cost_micros: tokens as i64 * 3,
        }],
    }
}

fn json(event: &UsageEvent) -> String {
    serde_json::to_string(event).unwrap()
}

/// Settles `settle_id` at `now_ms` with `event` as its usage event: no lines and no
/// markers, so the store only records the settlement and appends the event.
async fn settle(store: &Store, settle_id: &str, event: &str, now_ms: u64) -> BudgetOutcome {
    let call = BudgetCall {
        namespace: namespace("ledger-writer-test:"),
        markers: vec![],
        lines: vec![],
        op: BudgetOp::Settle {
            request_id: settle_id.into(),
            event: event.into(),
            settled_ttl_secs: SETTLED_TTL_SECS,
        },
        now_ms,
    };
    store.budget(&call).await.expect("a settlement").outcome
}

/// Settles events `ids` (each under its own request id) and wakes the writer.
async fn settle_all(store: &Store, writer: &LedgerWriter, ids: impl Iterator<Item = u32>) {
    for i in ids {
        let id = format!("r-{i:02}");
        let outcome = settle(store, &id, &json(&event(&id, 100 + i as u64)), NOW_MS).await;
        assert_eq!(outcome, BudgetOutcome::Done, "{id} is accepted");
        writer.notify();
    }
}

/// Every usage entry's request id with how often the ledger holds it, in order.
async fn recorded(ledger: &Ledger) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT request_id, CAST(COUNT(*) AS BIGINT) FROM ledger_entries \
         WHERE kind = 'usage' GROUP BY request_id ORDER BY request_id",
    )
    .fetch_all(ledger.pool())
    .await
    .unwrap()
}

/// `ids`, each once.
fn once(ids: &[&str]) -> Vec<(String, i64)> {
    ids.iter().map(|id| ((*id).to_owned(), 1)).collect()
}

/// The request ids of the events pending in `store`'s outbox.
async fn pending(store: &Store) -> Vec<String> {
    store
        .outbox_pending(1_000)
        .await
        .unwrap()
        .iter()
        .map(|entry| {
            serde_json::from_str::<UsageEvent>(&entry.event)
                .map(|e| e.request_id)
                .unwrap_or_else(|_| entry.event.clone())
        })
        .collect()
}

/// A metric's value in `metrics`' Prometheus rendering (0 when absent).
fn metric(metrics: &Metrics, name: &str) -> f64 {
    metrics
        .render()
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// A fresh ledger, a memory store with a file outbox and a writer between them.
struct Setup {
    store: Store,
    ledger: Ledger,
    writer: LedgerWriter,
    metrics: Metrics,
    _outbox: TempDir,
    _db: TestDb,
}

async fn setup(db: Db) -> Setup {
    let database = TestDb::create(db).await;
    let clock: SharedClock = Arc::new(ManualClock::at_secs(START_SECS));
    let ledger = Ledger::connect(&database.url, clock.clone()).await.unwrap();
    ledger.migrate().await.unwrap();
    let outbox = TempDir::new().unwrap();
    let store = MemoryStore::with_outbox_file(clock, &outbox.path().join("outbox.jsonl")).unwrap();
    let store = Store::Memory(store);
    let metrics = Metrics::new();
    let writer = LedgerWriter::new(store.clone(), ledger.clone(), metrics.ledger_writer.clone());
    Setup {
        store,
        ledger,
        writer,
        metrics,
        _outbox: outbox,
        _db: database,
    }
}

on_both_databases! {
    async fn settled_events_reach_the_ledger_once(db: Db) {
        let mut t = setup(db).await;
        // Small batches, so one drain takes several.
        t.writer = LedgerWriter::new(t.store.clone(), t.ledger.clone(), t.metrics.ledger_writer.clone())
            .with_batch(2);
        settle_all(&t.store, &t.writer, 1..=5).await;
        assert_eq!(pending(&t.store).await.len(), 5);

        assert_eq!(t.writer.drain().await.unwrap(), 5);
        assert_eq!(
            recorded(&t.ledger).await,
            once(&["r-01", "r-02", "r-03", "r-04", "r-05"])
        );
        let (lines, tokens): (i64, i64) = sqlx::query_as(
            "SELECT CAST(COUNT(*) AS BIGINT), CAST(SUM(tokens) AS BIGINT) FROM ledger_lines",
        )
        .fetch_one(t.ledger.pool())
        .await
        .unwrap();
        assert_eq!((lines, tokens), (5, 101 + 102 + 103 + 104 + 105));
        assert!(pending(&t.store).await.is_empty(), "acknowledged");

        assert_eq!(t.writer.drain().await.unwrap(), 0, "nothing left to insert");
        assert_eq!(recorded(&t.ledger).await.len(), 5);
        assert_eq!(metric(&t.metrics, "tollgate_ledger_writer_events_total"), 5.0);
        assert_eq!(metric(&t.metrics, "tollgate_ledger_writer_backlog"), 0.0);
    }

    async fn a_resent_event_is_recorded_once(db: Db) {
        let t = setup(db).await;
        let first = json(&event("r-01", 10));
        assert_eq!(settle(&t.store, "r-01", &first, NOW_MS).await, BudgetOutcome::Done);
        assert_eq!(t.writer.drain().await.unwrap(), 1);

        // Settled again once the store has forgotten the request id: the event is
        // appended a second time, and the ledger keeps the first.
        let later = NOW_MS + (SETTLED_TTL_SECS + 1) * 1_000;
        assert_eq!(
            settle(&t.store, "r-01", &json(&event("r-01", 99)), later).await,
            BudgetOutcome::Done
        );
        // And twice in one batch (settled under two store ids, one request id).
        let second = json(&event("r-02", 20));
        assert_eq!(settle(&t.store, "r-02", &second, NOW_MS).await, BudgetOutcome::Done);
        assert_eq!(settle(&t.store, "r-02-again", &second, NOW_MS).await, BudgetOutcome::Done);
        assert_eq!(pending(&t.store).await, ["r-01", "r-02", "r-02"]);

        assert_eq!(t.writer.drain().await.unwrap(), 1, "only r-02 is new");
        assert_eq!(recorded(&t.ledger).await, once(&["r-01", "r-02"]));
        let tokens: i64 = sqlx::query_scalar(
            "SELECT l.tokens FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id \
             WHERE e.request_id = 'r-01'",
        )
        .fetch_one(t.ledger.pool())
        .await
        .unwrap();
        assert_eq!(tokens, 10, "the first recording stands");
        assert!(pending(&t.store).await.is_empty(), "duplicates are acknowledged too");
        assert_eq!(metric(&t.metrics, "tollgate_ledger_writer_events_total"), 2.0);
        assert_eq!(metric(&t.metrics, "tollgate_ledger_writer_duplicates_total"), 2.0);
    }

    async fn an_invalid_event_is_skipped_and_acknowledged(db: Db) {
        let t = setup(db).await;
        let mut lowercase_currency = event("r-bad", 5);
        lowercase_currency.currency = "usd".into();
        let batch = [
            ("r-01", json(&event("r-01", 1))),
            ("r-garbled", "{\"request_id\": \"r-garbled\", tokens".to_owned()),
            ("r-bad", json(&lowercase_currency)),
            ("r-02", json(&event("r-02", 2))),
        ];
        for (id, text) in &batch {
            assert_eq!(settle(&t.store, id, text, NOW_MS).await, BudgetOutcome::Done);
        }

        assert_eq!(t.writer.drain().await.unwrap(), 2);
        assert_eq!(recorded(&t.ledger).await, once(&["r-01", "r-02"]));
        assert!(pending(&t.store).await.is_empty(), "the invalid ones are acknowledged");
        assert_eq!(metric(&t.metrics, "tollgate_ledger_writer_invalid_total"), 2.0);
        assert_eq!(metric(&t.metrics, "tollgate_ledger_writer_events_total"), 2.0);

        // The pipeline goes on behind them.
        settle_all(&t.store, &t.writer, 3..=3).await;
        assert_eq!(t.writer.drain().await.unwrap(), 1);
        assert_eq!(recorded(&t.ledger).await, once(&["r-01", "r-02", "r-03"]));
    }
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `within`.
async fn wait_until<F: Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A memory store over the outbox file at `path` and a running writer into `ledger`.
fn start_writer(
    path: &Path,
    clock: &SharedClock,
    ledger: &Ledger,
) -> (
    Store,
    Arc<LedgerWriter>,
    Metrics,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let store = Store::Memory(MemoryStore::with_outbox_file(clock.clone(), path).unwrap());
    let metrics = Metrics::new();
    let writer = Arc::new(LedgerWriter::new(
        store.clone(),
        ledger.clone(),
        metrics.ledger_writer.clone(),
    ));
    let stop = CancellationToken::new();
    let task = writer
        .clone()
        .spawn(Duration::from_millis(50), stop.clone());
    (store, writer, metrics, stop, task)
}

on_both_databases! {
    async fn settlements_reach_the_ledger_through_their_wakes_alone(db: Db) {
        let Setup { store, ledger, writer, metrics: _metrics, _outbox, _db } = setup(db).await;
        let writer = Arc::new(writer);
        let stop = CancellationToken::new();
        // No tick within the test: only the settlements' wakes can drain.
        let task = writer.clone().spawn(Duration::from_secs(3_600), stop.clone());
        let patience = Duration::from_secs(30);

        settle_all(&store, &writer, 1..=1).await;
        wait_until(patience, "the first settlement is recorded", || async {
            recorded(&ledger).await.len() == 1
        })
        .await;
        // Woken within the gap after that drain began: the wake is kept, and the drain
        // follows the gap.
        settle_all(&store, &writer, 2..=2).await;
        wait_until(patience, "the second settlement is recorded", || async {
            recorded(&ledger).await.len() == 2
        })
        .await;
        // A burst, partly arriving while a drain runs, is recorded whole.
        settle_all(&store, &writer, 3..=40).await;
        wait_until(patience, "the burst is recorded", || async {
            recorded(&ledger).await.len() == 40
        })
        .await;

        let all: Vec<String> = (1..=40).map(|i| format!("r-{i:02}")).collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        assert_eq!(recorded(&ledger).await, once(&all));
        assert!(pending(&store).await.is_empty(), "acknowledged");
        stop.cancel();
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_postgres_stops_during_traffic_and_the_writer_restarts() {
    let postgres = PrivatePostgres::start();
    let clock: SharedClock = Arc::new(ManualClock::at_secs(START_SECS));
    let ledger = Ledger::connect(&postgres.url(), clock.clone())
        .await
        .unwrap();
    ledger.migrate().await.unwrap();
    let outbox = TempDir::new().unwrap();
    let path = outbox.path().join("outbox.jsonl");
    let patience = Duration::from_secs(60);

    // Traffic while everything is up reaches the ledger through the loop alone.
    let (store, writer, metrics, stop, task) = start_writer(&path, &clock, &ledger);
    settle_all(&store, &writer, 1..=5).await;
    wait_until(patience, "the first events are recorded", || async {
        recorded(&ledger).await.len() == 5
    })
    .await;

    // PostgreSQL stops; settlements go on (the store step never touches it) and wait.
    postgres.stop();
    settle_all(&store, &writer, 6..=10).await;
    wait_until(patience, "the writer reports its errors", || async {
        metric(&metrics, "tollgate_ledger_writer_errors_total") >= 1.0
    })
    .await;
    let waiting = ["r-06", "r-07", "r-08", "r-09", "r-10"];
    assert_eq!(pending(&store).await, waiting, "kept in the outbox");

    // The process restarts while PostgreSQL is still down: the new store reopens the
    // outbox file and finds the events again.
    stop.cancel();
    task.await.unwrap();
    drop((store, writer));
    let (store, writer, _metrics, stop, task) = start_writer(&path, &clock, &ledger);
    assert_eq!(pending(&store).await, waiting, "kept across the restart");
    settle_all(&store, &writer, 11..=13).await;

    // PostgreSQL comes back: every event is recorded, each exactly once.
    postgres.restart();
    let all: Vec<String> = (1..=13).map(|i| format!("r-{i:02}")).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    wait_until(patience, "every event is recorded", || async {
        recorded(&ledger).await.len() == all.len()
    })
    .await;
    assert_eq!(recorded(&ledger).await, once(&all));
    wait_until(patience, "the outbox is empty", || async {
        pending(&store).await.is_empty()
    })
    .await;
    stop.cancel();
    task.await.unwrap();
}

/// Settings for an app of its own on `database` (rules and outbox in `dir`).
fn app_settings(database: &TestDb, dir: &Path) -> tollgate::settings::Settings {
    std::fs::write(
        dir.join("rules.yaml"),
        "domain: ai-gateway\nquota: {}\ndescriptors:\n  - key: generic\n    rate_limit: {unit: second, requests_per_unit: 100}\n",
    )
    .unwrap();
    tollgate::settings::Settings {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        rules_dir: dir.to_owned(),
        watch_rules: false,
        shutdown_grace_secs: 5,
        database_url: database.url.clone(),
        outbox_path: dir.join("outbox.jsonl"),
        // Only a wake-up or the shutdown drains in this test, never the interval.
        ledger_writer_interval_ms: 3_600_000,
        ..Default::default()
    }
}

on_both_databases! {
    async fn the_app_writes_settled_usage_and_drains_the_outbox_after_its_servers_stop(db: Db) {
        let database = TestDb::create(db).await;
        let dir = TempDir::new().unwrap();
        let clock: SharedClock = Arc::new(ManualClock::at_secs(START_SECS));
        let app = tollgate::app::App::build_with_clock(app_settings(&database, dir.path()), clock)
            .await
            .unwrap();
        let store = app.limiter().store().clone();
        let ledger = app.ledger().clone();
        let writer = app.ledger_writer().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));

        settle_all(&store, &writer, 1..=2).await;
        wait_until(Duration::from_secs(30), "a wake-up writes the events", || async {
            recorded(&ledger).await.len() == 2
        })
        .await;

        // Settled without a wake-up just before shutdown: the last drain writes it.
        let id = "r-03";
        assert_eq!(settle(&store, id, &json(&event(id, 3)), NOW_MS).await, BudgetOutcome::Done);
        stop.send(()).unwrap();
        running.await.unwrap().unwrap();
        assert_eq!(recorded(&ledger).await, once(&["r-01", "r-02", "r-03"]));
        assert!(pending(&store).await.is_empty());
    }
}

#[tokio::test]
async fn an_outbox_that_cannot_be_opened_fails_startup_naming_it() {
    let database = TestDb::create(Db::Sqlite).await;
    let dir = TempDir::new().unwrap();
    let mut settings = app_settings(&database, dir.path());
    // A directory is no file.
    settings.outbox_path = dir.path().to_owned();
    let error = match tollgate::app::App::build(settings).await {
        Ok(_) => panic!("the app must not start without its outbox"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("usage outbox") && error.contains(&dir.path().display().to_string()),
        "{error}"
    );
}
