//! Token and money budgets through the whole service: budgets and prices created through
//! the admin API, usage settled through `ShouldRateLimit` (stream-done descriptors), the
//! ledger written by the app's own writer. Races run with real concurrency against the
//! memory store and real Redis; the Redis flush breaks a private Redis owned by the test.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use serde_json::{Value, json};
use tollgate::ledger::Ledger;

use crate::helpers::*;
use crate::on_both_databases;
use crate::private_postgres::PrivatePostgres;
use crate::private_redis::PrivateRedis;

async fn budget(app: &AdminApp, body: Value) {
    app.post("/budgets", ADMIN, body).await.expect(201);
}

/// A hard hourly budget of `tokens` tokens on all of acme's traffic.
async fn hourly_tokens(app: &AdminApp, tokens: u64) {
    budget(
        app,
        json!({"name": "hourly-tokens", "scope": "tenant", "tenant_id": "acme", "measure": "tokens",
            "period": {"window_seconds": 3600}, "amount": tokens, "enforcement": "hard"}),
    )
    .await;
}

/// The request path's budget descriptor: check only, or a reservation of `estimate`.
async fn guard(app: &AdminApp, reservation: Option<(&str, u64)>) -> RateLimitResponse {
    match reservation {
        None => {
            app.decide_with(&[(&[("tenant_id", "acme"), ("model", MODEL)], Some(0))])
                .await
        }
        Some((request_id, estimate)) => {
            let estimate = estimate.to_string();
            let entries = [
                ("tenant_id", "acme"),
                ("model", MODEL),
                ("request_id", request_id),
                ("estimate", estimate.as_str()),
            ];
            app.decide_with(&[(&entries, Some(0))]).await
        }
    }
}

fn header<'r>(response: &'r RateLimitResponse, name: &str) -> Option<&'r str> {
    response
        .response_headers_to_add
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

fn remaining(response: &RateLimitResponse) -> u64 {
    header(response, "x-tollgate-budget-remaining")
        .expect("a remaining-budget header")
        .parse()
        .unwrap()
}

/// Usage events of acme in the ledger: (count, tokens, cost in micro-units).
async fn ledger_usage(ledger: &Ledger) -> (i64, i64, i64) {
    let events: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM ledger_entries WHERE kind = 'usage' AND tenant_id = 'acme'",
    )
    .fetch_one(ledger.pool())
    .await
    .unwrap();
    let tokens: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(l.tokens), 0) AS BIGINT) FROM ledger_lines l \
         JOIN ledger_entries e ON e.id = l.entry_id WHERE e.tenant_id = 'acme'",
    )
    .fetch_one(ledger.pool())
    .await
    .unwrap();
    let cost: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) FROM ledger_entries WHERE tenant_id = 'acme'",
    )
    .fetch_one(ledger.pool())
    .await
    .unwrap();
    (events, tokens, cost)
}

/// Waits (with a deadline, no fixed sleep) until the ledger holds `events` usage events.
async fn ledger_settles_at(ledger: &Ledger, events: i64) -> (i64, i64, i64) {
    // Generous: after a database outage the writer retries with a backoff of up to 5 s.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let usage = ledger_usage(ledger).await;
        if usage.0 >= events || Instant::now() > deadline {
            return usage;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An app on a fresh SQLite ledger whose counters are in Redis at `url`, under a key
/// prefix of its own.
async fn on_redis(url: &str) -> AdminApp {
    let database = Arc::new(TestDb::create(Db::Sqlite).await);
    let prefix = format!("tollgate-budget-test:{}:", uuid::Uuid::now_v7().simple());
    let url = url.to_owned();
    spawn_on(Db::Sqlite, database, move |s| {
        s.store = url;
        s.key_prefix = prefix;
    })
    .await
}

/// 50 workers race, each reserving 1,000 tokens and settling 500-999 until refused: what
/// is settled never passes the 10,000-token budget, and each request is in the ledger once.
async fn reservations_race(app: AdminApp) {
    const LIMIT: u64 = 10_000;
    llm_tenant(&app).await;
    hourly_tokens(&app, LIMIT).await;
    let app = Arc::new(app);
    let settled = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..50)
        .map(|worker| {
            let (app, settled, requests) = (app.clone(), settled.clone(), requests.clone());
            tokio::spawn(async move {
                for round in 0.. {
                    let id = format!("w{worker}-r{round}");
                    if !ok(&guard(&app, Some((&id, 1_000))).await) {
                        return;
                    }
                    let used = 500 + (worker * 37 + round * 11) % 500;
                    settle(&app, &id, used / 4, used - used / 4).await;
                    settled.fetch_add(used, Ordering::Relaxed);
                    requests.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let settled = settled.load(Ordering::Relaxed);
    let requests = requests.load(Ordering::Relaxed);
    assert!(settled <= LIMIT, "zero overshoot: {settled} of {LIMIT}");
    assert!(
        requests > 10,
        "actual usage below the estimate gave back room: {requests}"
    );
    // Nothing is held any more, so what is left is exactly what was not settled.
    assert_eq!(remaining(&guard(&app, None).await), LIMIT - settled);
    let (events, tokens, _) = ledger_settles_at(&app.ledger, requests as i64).await;
    assert_eq!(events as u64, requests, "one usage event per request");
    assert_eq!(tokens as u64, settled);
}

/// 50 workers race, each checking (addend 0) and then using 1,000 tokens: the budget is
/// passed by at most what was in flight when it ran out.
async fn check_only_race(app: AdminApp) {
    const LIMIT: u64 = 10_000;
    const WORKERS: u64 = 50;
    const USE: u64 = 1_000;
    llm_tenant(&app).await;
    hourly_tokens(&app, LIMIT).await;
    let app = Arc::new(app);
    let settled = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (app, settled) = (app.clone(), settled.clone());
            tokio::spawn(async move {
                for round in 0.. {
                    if !ok(&guard(&app, None).await) {
                        return;
                    }
                    settle(&app, &format!("w{worker}-r{round}"), USE / 2, USE / 2).await;
                    settled.fetch_add(USE, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let settled = settled.load(Ordering::Relaxed);
    assert!(settled >= LIMIT, "the budget was used up: {settled}");
    assert!(
        settled - LIMIT < WORKERS * USE,
        "overshoot {} is bounded by the usage in flight ({WORKERS} x {USE})",
        settled - LIMIT
    );
    let refused = guard(&app, None).await;
    assert!(!ok(&refused));
    let (events, tokens, _) = ledger_settles_at(&app.ledger, (settled / USE) as i64).await;
    assert_eq!(events as u64, settled / USE);
    assert_eq!(tokens as u64, settled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_racing_reservations_never_overspend_on_memory() {
    reservations_race(spawn(Db::Sqlite).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_racing_reservations_never_overspend_on_redis() {
    reservations_race(on_redis("redis://127.0.0.1:6379").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_only_overshoot_is_bounded_by_the_usage_in_flight_on_memory() {
    check_only_race(spawn(Db::Sqlite).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_only_overshoot_is_bounded_by_the_usage_in_flight_on_redis() {
    check_only_race(on_redis("redis://127.0.0.1:6379").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_flush_mid_period_rebuilds_balances_from_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let redis = PrivateRedis::start(dir.path(), &[]).await;
    let app = on_redis(&redis.url()).await;
    llm_tenant(&app).await;
    hourly_tokens(&app, 10_000).await;
    for i in 0..6 {
        settle(&app, &format!("before-{i}"), 500, 500).await;
    }
    ledger_settles_at(&app.ledger, 6).await;
    assert_eq!(remaining(&guard(&app, None).await), 4_000);

    redis.flush_all().await;
    // The next decision rebuilds the period from the ledger: the tenant cannot overspend
    // by wiping the cache.
    assert_eq!(remaining(&guard(&app, None).await), 4_000);
    for i in 0..4 {
        assert!(ok(&guard(&app, None).await));
        settle(&app, &format!("after-{i}"), 500, 500).await;
    }
    let refused = guard(&app, None).await;
    assert!(!ok(&refused), "10 x 1,000 of 10,000 spent: {refused:?}");
    // A settlement replayed after the flush is still recorded once in the ledger.
    settle(&app, "before-0", 500, 500).await;
    let (events, tokens, _) = ledger_settles_at(&app.ledger, 10).await;
    assert_eq!((events, tokens), (10, 10_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_continue_while_postgres_is_stopped_and_every_event_lands_once() {
    let postgres = PrivatePostgres::start();
    let unused = Arc::new(TestDb::create(Db::Sqlite).await);
    let prefix = format!("tollgate-budget-test:{}:", uuid::Uuid::now_v7().simple());
    let url = postgres.url();
    let app = spawn_on(Db::Postgres, unused, move |s| {
        s.database_url = url;
        s.store = "redis://127.0.0.1:6379".into();
        s.key_prefix = prefix;
    })
    .await;
    llm_tenant(&app).await;
    hourly_tokens(&app, 100_000).await;
    for i in 0..5 {
        assert!(ok(&guard(&app, None).await));
        settle(&app, &format!("before-{i}"), 500, 500).await;
    }
    assert_eq!(ledger_settles_at(&app.ledger, 5).await.0, 5);

    postgres.stop();
    for i in 0..20 {
        let answer = guard(&app, None).await;
        assert!(ok(&answer), "request {i} with the ledger down: {answer:?}");
        settle(&app, &format!("during-{i}"), 500, 500).await;
    }
    // A retry of a settlement made before the outage changes nothing.
    settle(&app, "before-0", 500, 500).await;
    assert_eq!(remaining(&guard(&app, None).await), 100_000 - 25 * 1_000);

    postgres.restart();
    let (events, tokens, cost) = ledger_settles_at(&app.ledger, 25).await;
    assert_eq!((events, tokens), (25, 25_000), "every event exactly once");
    assert_eq!(cost, 25 * (1_500 + 7_500));
}

on_both_databases! {
    async fn a_duplicate_settlement_is_charged_once_in_counters_and_ledger(db: Db) {
        let app = spawn(db).await;
        llm_tenant(&app).await;
        hourly_tokens(&app, 10_000).await;
        settle(&app, "r-9", 1_200, 350).await;
        settle(&app, "r-9", 1_200, 350).await;
        assert_eq!(remaining(&guard(&app, None).await), 10_000 - 1_550);
        let (events, tokens, cost) = ledger_settles_at(&app.ledger, 1).await;
        assert_eq!((events, tokens, cost), (1, 1_550, 8_850), "the worked example, once");
    }

    async fn usage_the_ledger_could_not_record_is_refused_before_anything_is_charged(db: Db) {
        let app = spawn(db).await;
        llm_tenant(&app).await;
        hourly_tokens(&app, 10_000).await;
        // A valid request's usage first in the same call: it is not charged either.
        let valid = [
            ("tenant_id", "acme"),
            ("model", MODEL),
            ("request_id", "r-8"),
            ("token_type", "input"),
        ];
        let entries = [
            ("tenant_id", "acme"),
            ("model", MODEL),
            ("request_id", "r\u{0}9"),
            ("token_type", "input"),
        ];
        let refused = app
            .try_decide_with(&[(&valid, Some(500)), (&entries, Some(1_200))])
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unknown);
        assert!(
            refused.message().contains("request_id must not contain a NUL character"),
            "{}",
            refused.message()
        );
        assert_eq!(remaining(&guard(&app, None).await), 10_000, "nothing charged");
        settle(&app, "r-9", 1_200, 350).await;
        let (events, tokens, _) = ledger_settles_at(&app.ledger, 1).await;
        assert_eq!((events, tokens), (1, 1_550), "only the valid request reached the ledger");
    }

    async fn a_berlin_month_ends_at_local_midnight_and_each_request_pays_the_price_in_force(db: Db) {
        let app = spawn(db).await;
        llm_tenant(&app).await;
        budget(&app, json!({"name": "monthly-cost", "scope": "tenant", "tenant_id": "acme",
            "measure": "cost", "period": {"calendar": "month"}, "amount": "1.00", "enforcement": "hard"}))
        .await;
        // 2026-11-15T00:00:00Z: the output price doubles mid-month.
        const NOV_15_MS: i64 = 1_794_700_800_000;
        price_from(&app, "output", "30.00", NOV_15_MS).await;
        let at = |secs: u64| app.clock.set_secs(secs);

        at(1_794_614_400); // 2026-11-14T00:00:00Z: old price
        settle(&app, "old-price", 1_200, 350).await; // 0.003600 + 0.005250
        at(1_794_787_200); // 2026-11-16T00:00:00Z: new price
        settle(&app, "new-price", 1_200, 350).await; // 0.003600 + 0.010500
        // 2026-11-30T23:30:00Z is already December 1st, 00:30 in Berlin.
        at(1_796_081_400);
        let december = guard(&app, None).await;
        assert_eq!(header(&december, "x-tollgate-budget-remaining"), Some("1.000000 USD"));
        assert_eq!(header(&december, "x-tollgate-budget-reset"), Some("2027-01-01T00:00:00+01:00"));
        settle(&app, "december", 1_200, 350).await;
        let (events, _, cost) = ledger_settles_at(&app.ledger, 3).await;
        assert_eq!(events, 3);
        assert_eq!(cost, 8_850 + 14_100 + 14_100, "each at the price in force");

        // Back in November (Berlin time), its two requests are what was spent.
        at(1_796_077_800); // 2026-11-30T22:30:00Z, 23:30 in Berlin
        let november = guard(&app, None).await;
        assert_eq!(header(&november, "x-tollgate-budget-remaining"), Some("0.977050 USD"));
        assert_eq!(header(&november, "x-tollgate-budget-reset"), Some("2026-12-01T00:00:00+01:00"));
    }
}
