//! One budget contract, three stores: every scenario below runs against the memory store
//! (its outbox in memory), the memory store with a file outbox (as the service runs it),
//! and Redis, so the Lua script cannot drift from `BudgetBook`. Deadlines are judged by
//! the `now_ms` each call carries, so time moves by passing a later `now_ms`.
//!
//! Redis is the one at `redis://127.0.0.1:6379` unless `TOLLGATE_TEST_REDIS_URL` says
//! otherwise; it is shared, so each test works under its own key prefix (tests run in
//! parallel) and nothing here flushes or stops it. Tests that flush, or need a Cluster,
//! start private `redis-server` processes on free ports and kill only those.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use tollgate::clock::ManualClock;
use tollgate::store::budget::{
    BudgetCall, BudgetLine, BudgetOp, BudgetOutcome, BudgetReply, OutboxEntry, deadlines_key,
    global_marker, namespace, outbox_key, reservation_key, settled_key, tenant_marker,
};
use tollgate::store::redis::RedisOptions;
use tollgate::store::{CounterStore, MemoryStore, RedisStore};

#[path = "support/contract.rs"]
#[macro_use]
mod contract;
#[path = "support/private_redis.rs"]
mod private_redis;
use private_redis::{PrivateCluster, PrivateRedis};

/// Generous: the machine is shared with builds, and these tests are about behaviour.
const DEADLINE: Duration = Duration::from_secs(5);

/// Upper bound for every readiness loop (servers starting, a cluster forming).
const PATIENCE: Duration = Duration::from_secs(20);

/// The limiter's clock at the start of every scenario, in ms.
const T0: u64 = 1_700_000_000_000;

/// Long enough that no counter, marker or settled id expires during a test.
const HOUR: u64 = 3600;

fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix no other test (or earlier run) uses.
fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "tollgate-test:{}:{nanos:x}:{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------------------
// The harness: one store, its namespace, and what a scenario needs to look behind it.
// ---------------------------------------------------------------------------------------

enum Backing {
    Memory,
    /// The directory of the outbox file, removed with the harness.
    MemoryFile {
        _dir: tempfile::TempDir,
    },
    /// A direct connection to the Redis the store uses.
    Redis(MultiplexedConnection),
}

struct Harness<S> {
    store: S,
    ns: String,
    backing: Backing,
}

fn memory() -> Harness<MemoryStore> {
    let clock = ManualClock::at_secs(T0 / 1000);
    Harness {
        store: MemoryStore::new(Arc::new(clock)),
        ns: namespace(&unique_prefix()),
        backing: Backing::Memory,
    }
}

fn memory_file() -> Harness<MemoryStore> {
    let clock = ManualClock::at_secs(T0 / 1000);
    let dir = tempfile::tempdir().unwrap();
    let store =
        MemoryStore::with_outbox_file(Arc::new(clock), &dir.path().join("outbox.jsonl")).unwrap();
    Harness {
        store,
        ns: namespace(&unique_prefix()),
        backing: Backing::MemoryFile { _dir: dir },
    }
}

async fn redis() -> Harness<RedisStore> {
    redis_at(&redis_url(), &unique_prefix()).await
}

/// A store on `url` whose outbox is the one under `prefix`.
async fn redis_store(url: &str, prefix: &str) -> RedisStore {
    let mut options = RedisOptions::new(url, DEADLINE);
    options.key_prefix = prefix.to_owned();
    let store = RedisStore::connect_with(options)
        .await
        .expect("valid test URL");
    assert!(
        store.is_healthy(),
        "no Redis at {url}: start one or point TOLLGATE_TEST_REDIS_URL at one"
    );
    store
}

async fn redis_at(url: &str, prefix: &str) -> Harness<RedisStore> {
    Harness {
        store: redis_store(url, prefix).await,
        ns: namespace(prefix),
        backing: Backing::Redis(direct(url).await),
    }
}

async fn direct(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("valid test URL")
        .get_multiplexed_async_connection()
        .await
        .expect("direct connection to the test Redis")
}

/// A hard line named `name` (its two counters under the namespace), living an hour.
fn hard(h: &Harness<impl Sized>, name: &str, limit: u64, amount: u64) -> BudgetLine {
    BudgetLine {
        used_key: format!("{}used:{name}", h.ns),
        reserved_key: format!("{}reserved:{name}", h.ns),
        ttl_secs: HOUR,
        idle: false,
        limit: Some(limit),
        amount,
    }
}

fn soft(h: &Harness<impl Sized>, name: &str, amount: u64) -> BudgetLine {
    BudgetLine {
        limit: None,
        ..hard(h, name, 0, amount)
    }
}

/// The same lines with other amounts.
fn amounts(lines: &[BudgetLine], amounts: &[u64]) -> Vec<BudgetLine> {
    assert_eq!(lines.len(), amounts.len());
    lines
        .iter()
        .zip(amounts)
        .map(|(line, &amount)| BudgetLine {
            amount,
            ..line.clone()
        })
        .collect()
}

fn event(n: u64) -> String {
    format!(r#"{{"request_id":"r{n}","n":{n}}}"#)
}

impl<S: CounterStore + Clone> Harness<S> {
    fn tenant(&self) -> String {
        tenant_marker(&self.ns, "acme")
    }

    async fn call(
        &self,
        markers: &[String],
        lines: &[BudgetLine],
        op: BudgetOp,
        now_ms: u64,
    ) -> BudgetReply {
        let call = BudgetCall {
            namespace: self.ns.clone(),
            markers: markers.to_vec(),
            lines: lines.to_vec(),
            op,
            now_ms,
        };
        self.store.budget(&call).await.expect("budget call")
    }

    /// Rebuilds the lines under the tenant's marker.
    async fn rebuild(&self, lines: &[BudgetLine], now_ms: u64) -> BudgetReply {
        self.call(&[self.tenant()], lines, BudgetOp::Rebuild, now_ms)
            .await
    }

    async fn check(&self, lines: &[BudgetLine], now_ms: u64) -> BudgetReply {
        let lines = amounts(lines, &vec![0; lines.len()]);
        self.call(&[self.tenant()], &lines, BudgetOp::Check, now_ms)
            .await
    }

    async fn reserve(
        &self,
        lines: &[BudgetLine],
        id: &str,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> BudgetReply {
        let op = BudgetOp::Reserve {
            request_id: id.to_owned(),
            expires_at_ms,
        };
        self.call(&[self.tenant()], lines, op, now_ms).await
    }

    async fn settle(
        &self,
        lines: &[BudgetLine],
        id: &str,
        event: &str,
        now_ms: u64,
    ) -> BudgetReply {
        let op = BudgetOp::Settle {
            request_id: id.to_owned(),
            event: event.to_owned(),
            settled_ttl_secs: HOUR,
        };
        self.call(&[self.tenant()], lines, op, now_ms).await
    }

    async fn pending(&self, max: usize) -> Vec<OutboxEntry> {
        self.store.outbox_pending(max).await.expect("outbox read")
    }

    async fn pending_events(&self) -> Vec<String> {
        self.pending(100)
            .await
            .into_iter()
            .map(|e| e.event)
            .collect()
    }

    async fn ack(&self, entries: &[OutboxEntry]) {
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        self.store.outbox_ack(&ids).await.expect("outbox ack");
    }
}

// ---------------------------------------------------------------------------------------
// The contract.
// ---------------------------------------------------------------------------------------

contract!(
    [
        on_memory => super::memory(),
        on_memory_with_file_outbox => super::memory_file(),
        on_redis => super::redis().await,
    ],
    [
        a_check_reads_used_and_reserved_and_changes_nothing,
        a_reservation_is_taken_on_every_line_or_on_none,
        a_retried_reservation_holds_nothing_twice,
        a_settlement_releases_the_reservation_and_charges_the_usage,
        a_repeated_settlement_changes_nothing_and_queues_no_second_event,
        expired_reservations_are_released_by_the_next_call_and_counted,
        a_missing_marker_answers_unbuilt_and_changes_nothing,
        a_rebuild_sets_the_lines_once_and_clears_what_was_reserved,
        a_soft_line_counts_but_never_refuses,
        settled_events_wait_in_order_until_acknowledged,
        concurrent_reservations_grant_exactly_the_limit,
    ],
);

async fn a_check_reads_used_and_reserved_and_changes_nothing<S: CounterStore + Clone>(
    h: Harness<S>,
) {
    let lines = [hard(&h, "a", 100, 7), hard(&h, "b", 100, 0)];
    h.rebuild(&lines, T0).await;
    let read = h.check(&lines, T0).await;
    assert_eq!(read.outcome, BudgetOutcome::Done);
    assert_eq!((read.used, read.reserved), (vec![7, 0], vec![0, 0]));
    assert_eq!(read.expired, 0);

    h.reserve(&amounts(&lines, &[2, 3]), "r1", T0 + 60_000, T0)
        .await;
    for _ in 0..2 {
        let read = h.check(&lines, T0 + 1).await;
        assert_eq!(read.outcome, BudgetOutcome::Done);
        assert_eq!((read.used, read.reserved), (vec![7, 0], vec![2, 3]));
    }
    assert!(h.pending(10).await.is_empty(), "a check queues no event");
}

async fn a_reservation_is_taken_on_every_line_or_on_none<S: CounterStore + Clone>(h: Harness<S>) {
    let lines = [
        hard(&h, "a", 100, 0),
        hard(&h, "b", 10, 8),
        hard(&h, "c", 100, 0),
    ];
    h.rebuild(&lines, T0).await;

    let refused = h
        .reserve(&amounts(&lines, &[5, 5, 5]), "r1", T0 + 60_000, T0)
        .await;
    assert_eq!(refused.outcome, BudgetOutcome::Refused { line: 1 });
    assert_eq!(refused.reserved, [0, 0, 0], "nothing reserved anywhere");
    assert_eq!(refused.used, [0, 8, 0]);

    // Exactly up to the limit fits; the refusal remembered nothing, so the id is free.
    let taken = h
        .reserve(&amounts(&lines, &[5, 2, 5]), "r1", T0 + 60_000, T0)
        .await;
    assert_eq!(taken.outcome, BudgetOutcome::Done);
    assert_eq!(taken.reserved, [5, 2, 5]);

    // Now the first short line is the third; the reported line is the first short one.
    let lines = [
        hard(&h, "a", 100, 1),
        hard(&h, "b", 10, 0),
        hard(&h, "c", 5, 1),
    ];
    let refused = h.reserve(&lines, "r2", T0 + 60_000, T0).await;
    assert_eq!(refused.outcome, BudgetOutcome::Refused { line: 2 });
    let lines = [hard(&h, "a", 5, 1), lines[1].clone(), lines[2].clone()];
    let refused = h.reserve(&lines, "r2", T0 + 60_000, T0).await;
    assert_eq!(refused.outcome, BudgetOutcome::Refused { line: 0 });
    assert_eq!(h.check(&lines, T0).await.reserved, [5, 2, 5]);
}

async fn a_retried_reservation_holds_nothing_twice<S: CounterStore + Clone>(h: Harness<S>) {
    let lines = [hard(&h, "a", 100, 10), soft(&h, "b", 10)];
    h.rebuild(&amounts(&lines, &[0, 0]), T0).await;
    let first = h.reserve(&lines, "r1", T0 + 60_000, T0).await;
    assert_eq!(first.outcome, BudgetOutcome::Done);
    let retry = h.reserve(&lines, "r1", T0 + 60_000, T0 + 1).await;
    assert_eq!(retry.outcome, BudgetOutcome::Duplicate);
    assert_eq!(retry.reserved, [10, 10]);

    h.settle(&amounts(&lines, &[4, 4]), "r1", &event(1), T0 + 2)
        .await;
    let late = h.reserve(&lines, "r1", T0 + 60_000, T0 + 3).await;
    assert_eq!(late.outcome, BudgetOutcome::Duplicate, "settled ids too");
    assert_eq!((late.used, late.reserved), (vec![4, 4], vec![0, 0]));
}

async fn a_settlement_releases_the_reservation_and_charges_the_usage<S: CounterStore + Clone>(
    h: Harness<S>,
) {
    let lines = [hard(&h, "a", 100, 10), hard(&h, "b", 100, 20)];
    h.rebuild(&amounts(&lines, &[5, 5]), T0).await;
    h.reserve(&lines, "r1", T0 + 60_000, T0).await;
    h.reserve(&lines, "r2", T0 + 60_000, T0).await;

    let settled = h
        .settle(&amounts(&lines, &[4, 6]), "r1", &event(1), T0 + 1)
        .await;
    assert_eq!(settled.outcome, BudgetOutcome::Done);
    assert_eq!(settled.used, [9, 11]);
    assert_eq!(settled.reserved, [10, 20], "only r1's reservation left");

    // A settlement without a reservation (it expired, or none was taken) still charges.
    let unreserved = h
        .settle(&amounts(&lines, &[1, 1]), "r3", &event(3), T0 + 2)
        .await;
    assert_eq!(unreserved.outcome, BudgetOutcome::Done);
    assert_eq!(
        (unreserved.used, unreserved.reserved),
        (vec![10, 12], vec![10, 20])
    );
    assert_eq!(h.pending_events().await, [event(1), event(3)]);
}

async fn a_repeated_settlement_changes_nothing_and_queues_no_second_event<
    S: CounterStore + Clone,
>(
    h: Harness<S>,
) {
    let lines = [hard(&h, "a", 100, 10)];
    h.rebuild(&amounts(&lines, &[0]), T0).await;
    h.reserve(&lines, "r1", T0 + 60_000, T0).await;
    let first = h.settle(&amounts(&lines, &[3]), "r1", &event(1), T0).await;
    assert_eq!(first.outcome, BudgetOutcome::Done);

    // A retry, even with other amounts and another event.
    let again = h
        .settle(&amounts(&lines, &[50]), "r1", &event(9), T0 + 1)
        .await;
    assert_eq!(again.outcome, BudgetOutcome::Duplicate);
    assert_eq!((again.used, again.reserved), (vec![3], vec![0]));
    assert_eq!(h.pending_events().await, [event(1)]);
}

async fn expired_reservations_are_released_by_the_next_call_and_counted<S: CounterStore + Clone>(
    h: Harness<S>,
) {
    let lines = [hard(&h, "a", 100, 10), soft(&h, "b", 1)];
    h.rebuild(&amounts(&lines, &[0, 0]), T0).await;
    h.reserve(&lines, "early", T0 + 1_000, T0).await;
    h.reserve(&lines, "late", T0 + 5_000, T0).await;
    h.reserve(&lines, "held", T0 + 3_600_000, T0).await;
    assert_eq!(h.check(&lines, T0).await.reserved, [30, 3]);

    let before = h.check(&lines, T0 + 999).await;
    assert_eq!((before.expired, before.reserved), (0, vec![30, 3]));
    let at = h.check(&lines, T0 + 1_000).await;
    assert_eq!(
        (at.expired, at.reserved),
        (1, vec![20, 2]),
        "due at its deadline"
    );
    // Any call sweeps, whatever it does.
    let swept = h
        .settle(&amounts(&lines, &[0, 0]), "other", &event(1), T0 + 10_000)
        .await;
    assert_eq!((swept.expired, swept.reserved), (1, vec![10, 1]));
    let after = h.check(&lines, T0 + 10_000).await;
    assert_eq!((after.expired, after.reserved), (0, vec![10, 1]));

    // A late settlement charges, and gives back nothing twice.
    let settled = h
        .settle(&amounts(&lines, &[7, 7]), "early", &event(2), T0 + 11_000)
        .await;
    assert_eq!(settled.outcome, BudgetOutcome::Done);
    assert_eq!((settled.used, settled.reserved), (vec![7, 7], vec![10, 1]));
    // An expired reservation's id may reserve again.
    let again = h.reserve(&lines, "late", T0 + 60_000, T0 + 12_000).await;
    assert_eq!(again.outcome, BudgetOutcome::Done);
    assert_eq!(again.reserved, [20, 2]);
}

async fn a_missing_marker_answers_unbuilt_and_changes_nothing<S: CounterStore + Clone>(
    h: Harness<S>,
) {
    let lines = [hard(&h, "a", 100, 5)];
    let markers = [h.tenant(), global_marker(&h.ns)];
    h.rebuild(&amounts(&lines, &[1]), T0).await;

    let check = h.call(&markers, &lines, BudgetOp::Check, T0).await;
    assert_eq!(check.outcome, BudgetOutcome::Unbuilt { marker: 1 });
    let reserve = BudgetOp::Reserve {
        request_id: "r1".into(),
        expires_at_ms: T0 + 60_000,
    };
    let reserved = h.call(&markers, &lines, reserve.clone(), T0).await;
    assert_eq!(reserved.outcome, BudgetOutcome::Unbuilt { marker: 1 });
    assert_eq!((reserved.used, reserved.reserved), (vec![1], vec![0]));
    let settle = BudgetOp::Settle {
        request_id: "r2".into(),
        event: event(2),
        settled_ttl_secs: HOUR,
    };
    let settled = h.call(&markers, &lines, settle.clone(), T0).await;
    assert_eq!(settled.outcome, BudgetOutcome::Unbuilt { marker: 1 });
    assert_eq!((settled.used, settled.reserved), (vec![1], vec![0]));
    assert!(h.pending(10).await.is_empty(), "no event queued");

    // The first missing marker is named.
    let backwards = [global_marker(&h.ns), tenant_marker(&h.ns, "other")];
    let check = h.call(&backwards, &lines, BudgetOp::Check, T0).await;
    assert_eq!(check.outcome, BudgetOutcome::Unbuilt { marker: 0 });

    // Once built, the same calls go through: nothing of them was remembered. (A line of
    // its own keeps the global marker alive for the test.)
    let global_line = soft(&h, "global", 0);
    h.call(
        &[global_marker(&h.ns)],
        &[global_line],
        BudgetOp::Rebuild,
        T0,
    )
    .await;
    let reserved = h.call(&markers, &lines, reserve, T0).await;
    assert_eq!(reserved.outcome, BudgetOutcome::Done);
    let settled = h.call(&markers, &lines, settle, T0).await;
    assert_eq!(settled.outcome, BudgetOutcome::Done);
    assert_eq!(h.pending_events().await, [event(2)]);
}

async fn a_rebuild_sets_the_lines_once_and_clears_what_was_reserved<S: CounterStore + Clone>(
    h: Harness<S>,
) {
    let lines = [hard(&h, "a", 100, 7), soft(&h, "b", 9)];
    let built = h.rebuild(&lines, T0).await;
    assert_eq!(built.outcome, BudgetOutcome::Done);
    assert_eq!((built.used, built.reserved), (vec![7, 9], vec![0, 0]));
    h.reserve(&amounts(&lines, &[3, 3]), "r1", T0 + 60_000, T0)
        .await;

    // Another replica rebuilding the same marker changes nothing.
    let again = h.rebuild(&amounts(&lines, &[100, 100]), T0 + 1).await;
    assert_eq!(again.outcome, BudgetOutcome::Done);
    assert_eq!((again.used, again.reserved), (vec![7, 9], vec![3, 3]));

    // A missing marker's rebuild sets the used counters and clears the reserved ones.
    let global = [global_marker(&h.ns)];
    let rebuilt = h
        .call(
            &global,
            &amounts(&lines, &[20, 30]),
            BudgetOp::Rebuild,
            T0 + 2,
        )
        .await;
    assert_eq!(rebuilt.outcome, BudgetOutcome::Done);
    assert_eq!((rebuilt.used, rebuilt.reserved), (vec![20, 30], vec![0, 0]));
    // The cleared reservation settles without taking the counters below zero.
    let settled = h
        .settle(&amounts(&lines, &[1, 1]), "r1", &event(1), T0 + 3)
        .await;
    assert_eq!((settled.used, settled.reserved), (vec![21, 31], vec![0, 0]));

    // No marker: nothing to rebuild.
    let none = h.call(&[], &lines, BudgetOp::Rebuild, T0 + 4).await;
    assert_eq!((none.used, none.reserved), (vec![21, 31], vec![0, 0]));
}

async fn a_soft_line_counts_but_never_refuses<S: CounterStore + Clone>(h: Harness<S>) {
    let big = 1_000_000_000_000;
    let lines = [soft(&h, "spend", big)];
    h.rebuild(&amounts(&lines, &[big]), T0).await;
    for id in ["r1", "r2", "r3"] {
        let taken = h.reserve(&lines, id, T0 + 60_000, T0).await;
        assert_eq!(taken.outcome, BudgetOutcome::Done);
    }
    let read = h.check(&lines, T0).await;
    assert_eq!((read.used, read.reserved), (vec![big], vec![3 * big]));
    let settled = h.settle(&lines, "r1", &event(1), T0).await;
    assert_eq!(
        (settled.used, settled.reserved),
        (vec![2 * big], vec![2 * big])
    );
}

async fn settled_events_wait_in_order_until_acknowledged<S: CounterStore + Clone>(h: Harness<S>) {
    let lines = [soft(&h, "a", 1)];
    h.rebuild(&amounts(&lines, &[0]), T0).await;
    // Settled before anything reads the outbox: read all the same.
    for n in 1..=3 {
        h.settle(&lines, &format!("r{n}"), &event(n), T0 + n).await;
    }
    let all = h.pending(10).await;
    let events: Vec<String> = all.iter().map(|e| e.event.clone()).collect();
    assert_eq!(events, [event(1), event(2), event(3)]);
    assert_eq!(h.pending(2).await, all[..2], "at most max, oldest first");
    assert_eq!(h.pending(10).await, all, "read again until acknowledged");
    assert!(h.pending(0).await.is_empty());

    h.ack(&all[..2]).await;
    assert_eq!(h.pending(10).await, all[2..]);
    h.ack(&[]).await;
    h.settle(&lines, "r4", &event(4), T0 + 4).await;
    assert_eq!(h.pending_events().await, [event(3), event(4)]);
    let rest = h.pending(10).await;
    h.ack(&rest).await;
    assert!(
        h.pending(10).await.is_empty(),
        "never read after acknowledged"
    );
    h.settle(&lines, "r5", &event(5), T0 + 5).await;
    assert_eq!(h.pending_events().await, [event(5)]);
}

async fn concurrent_reservations_grant_exactly_the_limit<S: CounterStore + Clone>(h: Harness<S>) {
    let amount = 7;
    let lines = [hard(&h, "a", 10 * amount, amount), soft(&h, "b", amount)];
    h.rebuild(&amounts(&lines, &[0, 0]), T0).await;
    let h = Arc::new(h);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let h = h.clone();
            let lines = lines.clone();
            tokio::spawn(async move {
                h.reserve(&lines, &format!("r{i}"), T0 + 60_000, T0)
                    .await
                    .outcome
            })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        match task.await.unwrap() {
            BudgetOutcome::Done => granted += 1,
            BudgetOutcome::Refused { line: 0 } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(granted, 10);
    let read = h.check(&lines, T0).await;
    assert_eq!(read.reserved, [10 * amount, 10 * amount]);
}

// ---------------------------------------------------------------------------------------
// Memory only: what the passed-in clock does to counters.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn memory_an_idle_lines_counters_live_from_every_change() {
    let h = memory();
    let idle = BudgetLine {
        ttl_secs: 10,
        idle: true,
        ..soft(&h, "session", 1)
    };
    let period = BudgetLine {
        ttl_secs: 10,
        ..soft(&h, "period", 1)
    };
    // An hour-long line keeps the marker (as long as the longest line) alive.
    let lines = [idle, period, soft(&h, "month", 1)];
    h.rebuild(&amounts(&lines, &[0, 0, 0]), T0).await;
    h.reserve(&lines, "r1", T0 + 3_600_000, T0).await;
    h.reserve(&lines, "r2", T0 + 3_600_000, T0 + 8_000).await;
    let read = h.check(&lines, T0 + 15_000).await;
    assert_eq!(read.outcome, BudgetOutcome::Done);
    assert_eq!(read.reserved, [2, 0, 2], "the idle line moved on at 8 s");
}

#[tokio::test]
async fn memory_forgotten_counters_must_be_rebuilt_and_the_outbox_survives() {
    let h = memory_file();
    let lines = [hard(&h, "a", 100, 5)];
    h.rebuild(&amounts(&lines, &[0]), T0).await;
    h.settle(&lines, "r1", &event(1), T0).await;
    h.store.forget_counters();
    let check = h.check(&lines, T0).await;
    assert_eq!(check.outcome, BudgetOutcome::Unbuilt { marker: 0 });
    assert_eq!(h.pending_events().await, [event(1)]);
}

// ---------------------------------------------------------------------------------------
// Redis only: what the script leaves in Redis, the consumer group, a flush and a Cluster.
// ---------------------------------------------------------------------------------------

async fn ttl_of(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("TTL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("TTL")
}

async fn expire(conn: &mut MultiplexedConnection, key: &str, secs: u64) {
    let set: i64 = redis::cmd("EXPIRE")
        .arg(key)
        .arg(secs)
        .query_async(conn)
        .await
        .expect("EXPIRE");
    assert_eq!(set, 1, "{key} exists");
}

async fn exists(conn: &mut MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(conn)
        .await
        .expect("EXISTS")
        == 1
}

fn conn(h: &Harness<RedisStore>) -> MultiplexedConnection {
    match &h.backing {
        Backing::Redis(conn) => conn.clone(),
        _ => unreachable!("a Redis harness"),
    }
}

#[tokio::test]
async fn redis_an_idle_lines_ttl_moves_on_every_change_and_a_periods_does_not() {
    let h = redis().await;
    let mut conn = conn(&h);
    let idle = BudgetLine {
        ttl_secs: 1000,
        idle: true,
        ..soft(&h, "session", 1)
    };
    let period = BudgetLine {
        ttl_secs: 1000,
        ..soft(&h, "period", 1)
    };
    let lines = [idle.clone(), period.clone()];
    h.rebuild(&amounts(&lines, &[0, 0]), T0).await;
    h.reserve(&lines, "r1", T0 + 60_000, T0).await;
    for key in [&idle.reserved_key, &period.reserved_key] {
        assert!(ttl_of(&mut conn, key).await > 900, "{key} lives its ttl");
        expire(&mut conn, key, 100).await;
    }
    for key in [&idle.used_key, &period.used_key] {
        expire(&mut conn, key, 100).await;
    }

    h.reserve(&lines, "r2", T0 + 60_000, T0).await;
    assert!(ttl_of(&mut conn, &idle.reserved_key).await > 900);
    assert!(ttl_of(&mut conn, &period.reserved_key).await <= 100);
    h.settle(&lines, "r1", &event(1), T0).await;
    assert!(ttl_of(&mut conn, &idle.used_key).await > 900);
    assert!(ttl_of(&mut conn, &period.used_key).await <= 100);
    // Giving a reservation back is a change, but moves no expiry.
    expire(&mut conn, &idle.reserved_key, 100).await;
    h.settle(&lines, "r2", &event(2), T0).await;
    assert!(ttl_of(&mut conn, &idle.reserved_key).await <= 100);
}

#[tokio::test]
async fn redis_markers_settled_ids_and_reservations_expire_and_the_sweep_deletes_records() {
    let h = redis().await;
    let mut conn = conn(&h);
    let lines = [
        BudgetLine {
            ttl_secs: 500,
            ..hard(&h, "a", 100, 1)
        },
        BudgetLine {
            ttl_secs: 2000,
            ..soft(&h, "b", 1)
        },
    ];
    h.rebuild(&amounts(&lines, &[0, 0]), T0).await;
    let marker_ttl = ttl_of(&mut conn, &h.tenant()).await;
    assert!((1900..=2000).contains(&marker_ttl), "{marker_ttl}");

    h.reserve(&lines, "r1", T0 + 60_000, T0).await;
    let record = reservation_key(&h.ns, "r1");
    // Outlives the deadline by the longest line, so it is there for the sweep.
    let record_ttl = ttl_of(&mut conn, &record).await;
    assert!((2000..=2200).contains(&record_ttl), "{record_ttl}");
    let deadline: Option<u64> = redis::cmd("ZSCORE")
        .arg(deadlines_key(&h.ns))
        .arg("r1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(deadline, Some(T0 + 60_000));

    let swept = h.check(&lines, T0 + 60_000).await;
    assert_eq!(swept.expired, 1);
    assert!(!exists(&mut conn, &record).await, "record deleted");
    assert!(
        !exists(&mut conn, &deadlines_key(&h.ns)).await,
        "deadline removed"
    );

    h.settle(&lines, "r1", &event(1), T0 + 60_000).await;
    let settled_ttl = ttl_of(&mut conn, &settled_key(&h.ns, "r1")).await;
    assert!((3500..=3600).contains(&settled_ttl), "{settled_ttl}");
}

#[tokio::test]
async fn redis_a_consumers_entries_are_its_own_until_it_goes_idle() {
    let prefix = unique_prefix();
    let a = redis_at(&redis_url(), &prefix).await;
    let b = redis_store(&redis_url(), &prefix).await;
    let mut conn = conn(&a);
    let lines = [soft(&a, "a", 1)];
    a.rebuild(&amounts(&lines, &[0]), T0).await;
    a.settle(&lines, "r1", &event(1), T0).await;

    let mine = a.pending(10).await;
    assert_eq!(mine.len(), 1);
    assert!(b.outbox_pending(10).await.unwrap().is_empty(), "a holds it");
    a.settle(&lines, "r2", &event(2), T0).await;
    let theirs = b.outbox_pending(10).await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].event, event(2));
    assert_eq!(a.pending(10).await, mine);

    // A dead consumer: b holds r2 and says nothing for a minute.
    let stream = outbox_key(&a.ns);
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&stream)
        .arg("ledger")
        .arg("ghost")
        .arg(0)
        .arg(&theirs[0].id)
        .arg("IDLE")
        .arg(60_000)
        .arg("JUSTID")
        .query_async(&mut conn)
        .await
        .unwrap();
    let both = a.pending(10).await;
    assert_eq!(
        both.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        [event(1), event(2)]
    );
    a.ack(&both).await;
    assert!(a.pending(10).await.is_empty());
    assert!(b.outbox_pending(10).await.unwrap().is_empty());
    let length: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(length, 0, "acknowledged entries leave the stream");
}

#[tokio::test]
async fn redis_after_a_flush_the_counters_are_unbuilt_and_the_outbox_group_is_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = PrivateRedis::start(dir.path(), &[]).await;
    let h = redis_at(&server.url(), &unique_prefix()).await;
    let mut conn = conn(&h);
    let lines = [hard(&h, "a", 100, 5)];
    h.rebuild(&amounts(&lines, &[0]), T0).await;
    h.settle(&lines, "r1", &event(1), T0).await;
    assert_eq!(h.pending_events().await, [event(1)]);

    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    assert_eq!(
        h.check(&lines, T0).await.outcome,
        BudgetOutcome::Unbuilt { marker: 0 }
    );
    assert!(h.pending(10).await.is_empty(), "no group: made again");
    // An entry acknowledged after the flush is gone already: no error.
    h.store
        .outbox_ack(&["1-1".to_owned()])
        .await
        .expect("ack after a flush");

    h.rebuild(&amounts(&lines, &[5]), T0).await;
    h.settle(&lines, "r2", &event(2), T0).await;
    assert_eq!(h.pending_events().await, [event(2)]);
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    h.rebuild(&amounts(&lines, &[5]), T0).await;
    h.settle(&lines, "r3", &event(3), T0).await;
    assert_eq!(
        h.pending_events().await,
        [event(3)],
        "settled after the flush"
    );
    assert!(h.store.is_healthy());
}

#[tokio::test]
async fn redis_cluster_runs_budget_calls_and_the_outbox_in_the_namespaces_slot() {
    let cluster = PrivateCluster::start().await;
    let url = cluster.url();
    let prefix = unique_prefix();
    let mut options = RedisOptions::new(&url, DEADLINE);
    options.key_prefix = prefix.clone();
    let store = RedisStore::connect_with(options).await.unwrap();
    let h = Harness {
        store,
        ns: namespace(&prefix),
        backing: Backing::Memory,
    };
    let lines = [hard(&h, "a", 10, 5), soft(&h, "b", 5)];
    let started = Instant::now();
    while h
        .store
        .budget(&BudgetCall {
            namespace: h.ns.clone(),
            markers: vec![h.tenant()],
            lines: lines.to_vec(),
            op: BudgetOp::Rebuild,
            now_ms: T0,
        })
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < PATIENCE,
            "the cluster store never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = amounts(&lines, &[5, 5]);
    assert_eq!(
        h.reserve(&lines, "r1", T0 + 1_000, T0).await.outcome,
        BudgetOutcome::Done
    );
    assert_eq!(
        h.reserve(&lines, "r2", T0 + 1_000, T0).await.outcome,
        BudgetOutcome::Refused { line: 0 }
    );
    // The sweep names the record inside the script: the same slot, on the same node.
    let swept = h.check(&lines, T0 + 1_000).await;
    assert_eq!((swept.expired, swept.reserved), (1, vec![0, 0]));
    h.settle(&lines, "r1", &event(1), T0 + 2_000).await;
    let pending = h.pending(10).await;
    assert_eq!(pending.len(), 1);
    h.ack(&pending).await;
    assert!(h.pending(10).await.is_empty());
}
