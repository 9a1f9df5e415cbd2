//! One contract, two stores: every scenario below runs against the in-memory store (time
//! moved by a `ManualClock`) and against Redis, so the two cannot drift. Every counter
//! kind is covered: fixed windows, sliding windows (given the previous window's key and
//! weight, as the limiter gives them) and token buckets (given the time, `now_us`).
//! `tests/store_equivalence.rs` adds random sequences run on both stores in lockstep.
//!
//! Redis is the one at `redis://127.0.0.1:6379` unless `TOLLGATE_TEST_REDIS_URL` says
//! otherwise; it is shared, so each test works under its own key prefix (tests run in
//! parallel) and nothing here flushes or stops it. Tests that need to stop Redis, or a
//! Sentinel or Cluster, start private `redis-server` processes on free ports and kill
//! only those.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use tollgate::clock::ManualClock;
use tollgate::store::keys::{counter_key, hash_tag};
use tollgate::store::redis::RedisOptions;
use tollgate::store::{
    CounterKind, CounterStore, CounterUpdate, MemoryStore, RedisStore, StoreError,
};

#[path = "support/contract.rs"]
#[macro_use]
mod contract;
#[path = "support/private_redis.rs"]
mod private_redis;
use private_redis::{PrivateCluster, PrivateRedis, Ready, free_port};

/// Generous: the machine is shared with builds, and these tests are about behaviour.
const DEADLINE: Duration = Duration::from_secs(5);

/// Upper bound for every readiness loop (servers starting, keys expiring, reconnecting).
const PATIENCE: Duration = Duration::from_secs(20);

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

fn add(key: &str, hits: u64, ttl_secs: u64) -> CounterUpdate {
    CounterUpdate::window(key, hits, ttl_secs)
}

fn add_capped(key: &str, hits: u64, cap: u64) -> CounterUpdate {
    add(key, hits, 60).capped(cap)
}

fn refund(key: &str, hits: u64) -> CounterUpdate {
    add(key, hits, 60).refunding()
}

fn read(key: &str) -> CounterUpdate {
    add(key, 0, 60)
}

/// The memory store's clock starts here; bucket times are given from the same origin so
/// the memory store's expiry (by its clock) and the bucket's time (an argument) agree.
const T0_SECS: u64 = 1_700_000_000;
const T0_US: u64 = T0_SECS * 1_000_000;

/// A sliding-window update as the limiter builds it: this window's key, the previous
/// window's key and the share of the previous window still covered, in millionths.
fn slide(
    key: &str,
    previous: &str,
    previous_weight_ppm: u64,
    hits: u64,
    limit: u64,
) -> CounterUpdate {
    CounterUpdate {
        key: key.to_owned(),
        hits,
        refund: false,
        kind: CounterKind::Sliding {
            previous_key: previous.to_owned(),
            previous_weight_ppm,
            ttl_secs: 120,
            limit,
        },
    }
}

/// A token-bucket (GCRA) update at `now_us`.
fn take(key: &str, hits: u64, now_us: u64, interval_us: u64, capacity: u64) -> CounterUpdate {
    CounterUpdate {
        key: key.to_owned(),
        hits,
        refund: false,
        kind: CounterKind::Bucket {
            now_us,
            interval_us,
            capacity,
        },
    }
}

/// Whether the limiter admits `hits` given the capacity in use before them.
fn admits(before: u64, hits: u64, capacity: u64) -> bool {
    before + hits <= capacity
}

/// Polls `check` until it returns true, failing the test after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < PATIENCE, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The harness: one store plus what a scenario needs to know about time and keys.
// ---------------------------------------------------------------------------------------

enum Backing {
    /// The memory store and the clock it reads.
    Memory(MemoryStore, ManualClock),
    /// A direct connection to the Redis the store uses, for looking behind its back.
    Redis(MultiplexedConnection),
}

struct Harness<S> {
    store: S,
    prefix: String,
    backing: Backing,
}

fn memory() -> Harness<MemoryStore> {
    let clock = ManualClock::at_secs(T0_SECS);
    let store = MemoryStore::new(Arc::new(clock.clone()));
    Harness {
        store: store.clone(),
        prefix: unique_prefix(),
        backing: Backing::Memory(store, clock),
    }
}

async fn redis() -> Harness<RedisStore> {
    let url = redis_url();
    let store = RedisStore::connect(&url, DEADLINE)
        .await
        .expect("valid test URL");
    assert!(
        store.is_healthy(),
        "no Redis at {url}: start one or point TOLLGATE_TEST_REDIS_URL at one"
    );
    Harness {
        store,
        prefix: unique_prefix(),
        backing: Backing::Redis(direct(&url).await),
    }
}

async fn direct(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("valid test URL")
        .get_multiplexed_async_connection()
        .await
        .expect("direct connection to the test Redis")
}

impl<S: CounterStore + Clone> Harness<S> {
    /// A counter key under this test's prefix, built the way the limiter builds them.
    fn key(&self, name: &str) -> String {
        self.key_at(name, Some(0))
    }

    /// The key of `name`'s counter for the window starting at `window_start` (none for a
    /// token bucket).
    fn key_at(&self, name: &str, window_start: Option<u64>) -> String {
        counter_key(
            &self.prefix,
            "contract",
            [("name", name), ("model", "m1")],
            "",
            window_start,
        )
    }

    async fn apply(&self, updates: &[CounterUpdate]) -> Vec<u64> {
        self.store.apply(updates).await.expect("store call")
    }

    async fn one(&self, update: CounterUpdate) -> u64 {
        let values = self.apply(std::slice::from_ref(&update)).await;
        assert_eq!(values.len(), 1);
        values[0]
    }

    async fn value(&self, key: &str) -> u64 {
        self.one(read(key)).await
    }

    /// How many counters this test holds (the store is fresh, or the prefix unique).
    async fn counters_held(&mut self) -> usize {
        match &mut self.backing {
            Backing::Memory(store, _) => store.len(),
            Backing::Redis(conn) => {
                let pattern = format!("{}*", self.prefix);
                let mut cursor = 0u64;
                let mut held = 0;
                loop {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(conn)
                        .await
                        .expect("SCAN");
                    held += keys.len();
                    if next == 0 {
                        return held;
                    }
                    cursor = next;
                }
            }
        }
    }

    /// Lets a counter created with `ttl_secs` live out its life, and waits until it is gone.
    async fn outlive(&self, key: &str, ttl_secs: u64) {
        match &self.backing {
            Backing::Memory(store, clock) => {
                clock.advance(Duration::from_secs(ttl_secs));
                store.sweep();
                assert_eq!(self.value(key).await, 0, "expired counter still counted");
            }
            Backing::Redis(_) => {
                eventually(&format!("{key} to expire"), || async move {
                    self.value(key).await == 0
                })
                .await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The contract.
// ---------------------------------------------------------------------------------------

contract!(
    [on_memory => super::memory(), on_redis => super::redis().await],
    [
        a_counter_counts_from_zero,
        several_hits_are_added_at_once,
        a_check_only_read_creates_no_counter,
        a_refund_never_takes_a_counter_below_zero,
        a_cap_leaves_the_counter_unchanged_and_reports_the_value_before,
        a_batch_returns_each_value_before_its_update_in_order,
        counters_do_not_interfere,
        a_counter_expires_after_its_ttl_and_starts_again_from_zero,
        a_count_given_back_to_zero_and_charged_again_still_expires,
        concurrent_increments_are_never_lost_and_the_cap_holds_exactly,
        a_sliding_estimate_adds_the_previous_window_weighted_and_rounded_down,
        a_sliding_window_counts_hits_only_while_the_estimate_stays_within_the_limit,
        a_sliding_check_only_read_creates_no_counter,
        a_sliding_refund_never_takes_the_current_window_below_zero,
        a_sliding_counter_keeps_the_ttl_it_was_created_with,
        a_sliding_window_keeps_about_the_limit_across_a_boundary_where_a_fixed_one_lets_twice_through,
        a_sliding_estimate_is_exact_for_large_previous_counts,
        concurrent_sliding_hits_admit_exactly_the_limit,
        a_bucket_passes_a_burst_then_one_token_per_interval,
        a_bucket_reports_tokens_in_use_rounded_up,
        a_refused_take_consumes_nothing,
        a_bucket_check_only_read_creates_no_counter_and_consumes_nothing,
        a_bucket_takes_several_tokens_at_once_or_none,
        a_bucket_refund_gives_tokens_back_but_never_beyond_capacity,
        a_zero_bucket_interval_is_read_as_one_microsecond,
        concurrent_takes_admit_exactly_the_capacity,
        an_idle_counter_counts_reads_refunds_and_caps_like_a_window,
        concurrent_idle_charges_admit_exactly_the_cap,
    ],
);

fn idle(key: &str, hits: u64, idle_secs: u64) -> CounterUpdate {
    CounterUpdate::idle(key, hits, idle_secs)
}

async fn an_idle_counter_counts_reads_refunds_and_caps_like_a_window<S: CounterStore + Clone>(
    mut h: Harness<S>,
) {
    let key = h.key("session");
    // A read creates nothing; a charge the cap refuses creates nothing either.
    assert_eq!(h.one(idle(&key, 0, 60)).await, 0);
    assert_eq!(h.one(idle(&key, 3, 60).capped(2)).await, 0);
    assert_eq!(
        h.counters_held().await,
        0,
        "a read or a refused charge created a counter"
    );
    assert_eq!(h.one(idle(&key, 1, 60)).await, 0);
    assert_eq!(h.one(idle(&key, 2, 60)).await, 1);
    assert_eq!(h.one(idle(&key, 0, 60)).await, 3);
    // Capped: hits past the cap are not counted; the value before is reported.
    assert_eq!(h.one(idle(&key, 3, 60).capped(5)).await, 3);
    assert_eq!(h.one(idle(&key, 2, 60).capped(5)).await, 3);
    assert_eq!(h.value(&key).await, 5);
    // A refund gives back, never below zero.
    assert_eq!(h.one(idle(&key, 4, 60).refunding()).await, 5);
    assert_eq!(h.one(idle(&key, 9, 60).refunding()).await, 1);
    assert_eq!(h.one(idle(&key, 0, 60)).await, 0);
}

async fn concurrent_idle_charges_admit_exactly_the_cap<S: CounterStore + Clone>(h: Harness<S>) {
    let key = h.key("race");
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let store = h.store.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            store
                .apply(&[idle(&key, 1, 60).capped(5)])
                .await
                .expect("store call")[0]
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        if admits(task.await.unwrap(), 1, 5) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
    assert_eq!(h.value(&key).await, 5);
}

async fn a_counter_counts_from_zero<S: CounterStore + Clone>(h: Harness<S>) {
    let key = h.key("a");
    assert_eq!(h.one(add(&key, 1, 60)).await, 0);
    assert_eq!(h.one(add(&key, 1, 60)).await, 1);
    assert_eq!(h.one(add(&key, 1, 60)).await, 2);
    assert_eq!(h.value(&key).await, 3);
}

async fn several_hits_are_added_at_once<S: CounterStore + Clone>(h: Harness<S>) {
    let key = h.key("tokens");
    assert_eq!(h.one(add(&key, 500, 60)).await, 0);
    assert_eq!(h.one(add(&key, 250, 60)).await, 500);
    assert_eq!(h.value(&key).await, 750);
}

async fn a_check_only_read_creates_no_counter<S: CounterStore + Clone>(mut h: Harness<S>) {
    let key = h.key("never-hit");
    assert_eq!(h.value(&key).await, 0);
    assert_eq!(h.value(&key).await, 0);
    assert_eq!(h.counters_held().await, 0, "a read created a counter");

    let existing = h.key("hit");
    h.one(add(&existing, 4, 60)).await;
    assert_eq!(h.value(&existing).await, 4);
    assert_eq!(h.value(&existing).await, 4, "a read changed the counter");
    assert_eq!(h.counters_held().await, 1);
}

async fn a_refund_never_takes_a_counter_below_zero<S: CounterStore + Clone>(h: Harness<S>) {
    let key = h.key("refunded");
    h.one(add(&key, 3, 60)).await;
    assert_eq!(h.one(refund(&key, 2)).await, 3);
    assert_eq!(h.value(&key).await, 1);
    assert_eq!(h.one(refund(&key, 5)).await, 1);
    assert_eq!(h.value(&key).await, 0);
    assert_eq!(h.one(refund(&key, 5)).await, 0);
    assert_eq!(h.value(&key).await, 0);

    let missing = h.key("refunded-before-use");
    assert_eq!(h.one(refund(&missing, 7)).await, 0);
    assert_eq!(h.value(&missing).await, 0);
    assert_eq!(
        h.one(add(&missing, 2, 60)).await,
        0,
        "a refund left a debt behind"
    );
}

async fn a_cap_leaves_the_counter_unchanged_and_reports_the_value_before<
    S: CounterStore + Clone,
>(
    h: Harness<S>,
) {
    let key = h.key("capped");
    assert_eq!(h.one(add_capped(&key, 8, 10)).await, 0);
    // 8 + 3 > 10: refused, unchanged, and the caller learns the value it was refused at.
    assert_eq!(h.one(add_capped(&key, 3, 10)).await, 8);
    assert_eq!(h.value(&key).await, 8);
    // Exactly reaching the cap is allowed.
    assert_eq!(h.one(add_capped(&key, 2, 10)).await, 8);
    assert_eq!(h.value(&key).await, 10);
    assert_eq!(h.one(add_capped(&key, 1, 10)).await, 10);
    assert_eq!(h.value(&key).await, 10);
    // Without a cap the same counter keeps counting past it.
    assert_eq!(h.one(add(&key, 1, 60)).await, 10);
    assert_eq!(h.value(&key).await, 11);

    let fresh = h.key("over-cap-at-once");
    assert_eq!(h.one(add_capped(&fresh, 11, 10)).await, 0);
    assert_eq!(h.value(&fresh).await, 0);
}

async fn a_batch_returns_each_value_before_its_update_in_order<S: CounterStore + Clone>(
    h: Harness<S>,
) {
    let (a, b, c, d) = (h.key("a"), h.key("b"), h.key("c"), h.key("d"));
    h.one(add(&a, 1, 60)).await;
    h.one(add(&b, 2, 60)).await;
    h.one(add(&c, 3, 60)).await;

    let values = h
        .apply(&[
            add(&a, 1, 60),
            read(&b),
            add_capped(&c, 5, 4),
            add(&d, 1, 60),
            refund(&b, 1),
        ])
        .await;
    assert_eq!(values, vec![1, 2, 3, 0, 2]);
    let after = h.apply(&[read(&a), read(&b), read(&c), read(&d)]).await;
    assert_eq!(after, vec![2, 1, 3, 1]);

    // A key listed twice sees its own earlier update.
    assert_eq!(h.apply(&[add(&a, 1, 60), add(&a, 1, 60)]).await, vec![2, 3]);
    assert_eq!(h.apply(&[]).await, Vec::<u64>::new());
}

async fn counters_do_not_interfere<S: CounterStore + Clone>(h: Harness<S>) {
    let a = h.key("a");
    let b = h.key("b");
    let a_next_window = counter_key(
        &h.prefix,
        "contract",
        [("name", "a"), ("model", "m1")],
        "",
        Some(60),
    );
    let a_other_prefix = counter_key(
        &unique_prefix(),
        "contract",
        [("name", "a"), ("model", "m1")],
        "",
        Some(0),
    );
    for _ in 0..3 {
        h.one(add(&a, 1, 60)).await;
    }
    h.one(add(&b, 1, 60)).await;
    assert_eq!(h.value(&a).await, 3);
    assert_eq!(h.value(&b).await, 1);
    assert_eq!(h.value(&a_next_window).await, 0);
    assert_eq!(h.value(&a_other_prefix).await, 0);
    h.one(refund(&b, 1)).await;
    assert_eq!(h.value(&a).await, 3);
}

async fn a_counter_expires_after_its_ttl_and_starts_again_from_zero<S: CounterStore + Clone>(
    h: Harness<S>,
) {
    let key = h.key("short-lived");
    h.one(add(&key, 3, 1)).await;
    assert_eq!(h.value(&key).await, 3);
    h.outlive(&key, 1).await;

    // A new life with a new expiry.
    assert_eq!(h.one(add(&key, 2, 1)).await, 0);
    assert_eq!(h.value(&key).await, 2);
    h.outlive(&key, 1).await;
}

async fn a_count_given_back_to_zero_and_charged_again_still_expires<S: CounterStore + Clone>(
    h: Harness<S>,
) {
    let key = h.key("back-to-zero");
    h.one(add(&key, 2, 1)).await;
    h.one(refund(&key, 2)).await;
    assert_eq!(h.value(&key).await, 0);
    assert_eq!(h.one(add(&key, 1, 1)).await, 0, "charged from zero");
    assert_eq!(h.value(&key).await, 1);
    h.outlive(&key, 1).await;
}

async fn concurrent_increments_are_never_lost_and_the_cap_holds_exactly<S: CounterStore + Clone>(
    h: Harness<S>,
) {
    const TASKS: u64 = 64;
    const EACH: u64 = 20;
    const CAP: u64 = 500;
    let capped = h.key("contended-capped");
    let open = h.key("contended-open");

    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = h.store.clone();
        let (capped, open) = (capped.clone(), open.clone());
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0u64;
            let mut befores = Vec::new();
            for _ in 0..EACH {
                let values = store
                    .apply(&[add_capped(&capped, 1, CAP), add(&open, 1, 60)])
                    .await
                    .expect("store call");
                if values[0] < CAP {
                    admitted += 1;
                }
                befores.push(values[1]);
            }
            (admitted, befores)
        }));
    }
    let mut admitted = 0;
    let mut befores = Vec::new();
    for task in tasks {
        let (a, b) = task.await.expect("task");
        admitted += a;
        befores.extend(b);
    }
    assert_eq!(admitted, CAP, "increments admitted under the cap");
    assert_eq!(h.value(&capped).await, CAP);
    assert_eq!(h.value(&open).await, TASKS * EACH);
    // Every increment saw a distinct value before it: none was lost or doubled.
    befores.sort_unstable();
    assert_eq!(befores, (0..TASKS * EACH).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// Sliding window: this window's count plus the previous window's, weighted.
// ---------------------------------------------------------------------------------------

/// Keys of three consecutive one-minute windows of `name`: before last, last, this one.
fn three_windows<S: CounterStore + Clone>(h: &Harness<S>, name: &str) -> (String, String, String) {
    (
        h.key_at(name, Some(0)),
        h.key_at(name, Some(60)),
        h.key_at(name, Some(120)),
    )
}

/// The share of the previous window a sliding window still covers `elapsed_us` into the
/// current one, in millionths (as the limiter computes it).
fn weight_at(elapsed_us: u64, window_us: u64) -> u64 {
    (window_us - elapsed_us) * 1_000_000 / window_us
}

async fn a_sliding_estimate_adds_the_previous_window_weighted_and_rounded_down<
    S: CounterStore + Clone,
>(
    h: Harness<S>,
) {
    let (older, previous, current) = three_windows(&h, "s");
    // The previous window filled as a current one does (its own previous empty).
    assert_eq!(h.one(slide(&previous, &older, 0, 7, 100)).await, 0);
    // Half the previous window still covered: 7 * 0.5 = 3.5, rounded down.
    assert_eq!(h.one(slide(&current, &previous, 500_000, 0, 100)).await, 3);
    assert_eq!(h.one(slide(&current, &previous, 500_000, 2, 100)).await, 3);
    assert_eq!(h.one(slide(&current, &previous, 500_000, 0, 100)).await, 5);
    // 7 * 0.142857 = 0.999999 counts nothing; 7 * 0.142858 = 1.000006 counts one.
    assert_eq!(h.one(slide(&current, &previous, 142_857, 0, 100)).await, 2);
    assert_eq!(h.one(slide(&current, &previous, 142_858, 0, 100)).await, 3);
    // All of the previous window, and none of it.
    assert_eq!(
        h.one(slide(&current, &previous, 1_000_000, 0, 100)).await,
        9
    );
    assert_eq!(h.one(slide(&current, &previous, 0, 0, 100)).await, 2);
    // The counts themselves stay plain: the weight only enters the estimate.
    assert_eq!(h.value(&previous).await, 7);
    assert_eq!(h.value(&current).await, 2);
}

async fn a_sliding_window_counts_hits_only_while_the_estimate_stays_within_the_limit<
    S: CounterStore + Clone,
>(
    mut h: Harness<S>,
) {
    let (older, previous, current) = three_windows(&h, "s");
    h.one(slide(&previous, &older, 0, 10, 10)).await;
    // 40% of the previous window still covered: estimate 4, so exactly 6 more fit.
    assert_eq!(h.one(slide(&current, &previous, 400_000, 6, 10)).await, 4);
    assert_eq!(h.one(slide(&current, &previous, 400_000, 1, 10)).await, 10);
    assert_eq!(h.value(&current).await, 6, "a refused hit was counted");
    // Later in the window less of the previous one counts (10 * 0.2 = 2): two more fit,
    // but three at once are refused whole, not in part.
    assert_eq!(h.one(slide(&current, &previous, 200_000, 3, 10)).await, 8);
    assert_eq!(h.value(&current).await, 6);
    assert_eq!(h.one(slide(&current, &previous, 200_000, 2, 10)).await, 8);
    assert_eq!(h.value(&current).await, 8);
    // A flood of refused hits leaves only what was admitted: with the previous window
    // out of reach the estimate is exactly the admitted count, so it does not lock out
    // the next window.
    for _ in 0..20 {
        assert_eq!(h.one(slide(&current, &previous, 200_000, 1, 10)).await, 10);
    }
    assert_eq!(h.one(slide(&current, &previous, 0, 0, 10)).await, 8);

    // Over the limit at once on a window never hit: refused, and nothing is created.
    let fresh = h.key_at("fresh", Some(120));
    assert_eq!(h.one(slide(&fresh, &older, 0, 11, 10)).await, 0);
    assert_eq!(h.value(&fresh).await, 0);
    assert_eq!(
        h.counters_held().await,
        2,
        "a refused hit created a counter"
    );
}

async fn a_sliding_check_only_read_creates_no_counter<S: CounterStore + Clone>(mut h: Harness<S>) {
    let (older, previous, current) = three_windows(&h, "s");
    assert_eq!(h.one(slide(&current, &previous, 500_000, 0, 10)).await, 0);
    assert_eq!(h.counters_held().await, 0, "a read created a counter");

    h.one(slide(&previous, &older, 0, 4, 10)).await;
    for _ in 0..3 {
        assert_eq!(h.one(slide(&current, &previous, 500_000, 0, 10)).await, 2);
    }
    assert_eq!(
        h.counters_held().await,
        1,
        "a read created this window's counter"
    );

    // Reads at and over the limit change nothing either.
    assert_eq!(h.one(slide(&current, &previous, 500_000, 8, 10)).await, 2);
    assert_eq!(h.one(slide(&current, &previous, 500_000, 0, 10)).await, 10);
    assert_eq!(
        h.one(slide(&current, &previous, 1_000_000, 0, 10)).await,
        12
    );
    assert_eq!(h.value(&current).await, 8);
    assert_eq!(h.value(&previous).await, 4);
    assert_eq!(h.counters_held().await, 2);
}

async fn a_sliding_refund_never_takes_the_current_window_below_zero<S: CounterStore + Clone>(
    mut h: Harness<S>,
) {
    let (older, previous, current) = three_windows(&h, "s");
    h.one(slide(&previous, &older, 0, 6, 100)).await;
    assert_eq!(h.one(slide(&current, &previous, 500_000, 3, 100)).await, 3);
    // A refund answers with the estimate before it and gives back to this window only.
    let give_back = |hits| slide(&current, &previous, 500_000, hits, 100).refunding();
    assert_eq!(h.one(give_back(2)).await, 6);
    assert_eq!(h.value(&current).await, 1);
    assert_eq!(h.value(&previous).await, 6);
    assert_eq!(h.one(give_back(5)).await, 4);
    assert_eq!(h.value(&current).await, 0);
    assert_eq!(h.one(give_back(5)).await, 3);
    assert_eq!(
        h.one(slide(&current, &previous, 500_000, 0, 100)).await,
        3,
        "a refund left a debt behind or took from the previous window"
    );
    // Refunds are not limited: one while the estimate is over the limit still counts.
    h.one(slide(&current, &previous, 0, 4, 4)).await;
    assert_eq!(
        h.one(slide(&current, &previous, 1_000_000, 1, 4).refunding())
            .await,
        10
    );
    assert_eq!(h.value(&current).await, 3);

    // A refund to a window never hit creates nothing.
    let untouched = h.key_at("s", Some(180));
    assert_eq!(
        h.one(slide(&untouched, &current, 0, 4, 100).refunding())
            .await,
        0
    );
    assert_eq!(h.value(&untouched).await, 0);
    assert_eq!(h.counters_held().await, 2, "a refund created a counter");
}

async fn a_sliding_counter_keeps_the_ttl_it_was_created_with<S: CounterStore + Clone>(
    h: Harness<S>,
) {
    let (_, previous, current) = three_windows(&h, "short-lived");
    let update = |hits, ttl_secs| CounterUpdate {
        key: current.clone(),
        hits,
        refund: false,
        kind: CounterKind::Sliding {
            previous_key: previous.clone(),
            previous_weight_ppm: 500_000,
            ttl_secs,
            limit: 5,
        },
    };
    assert_eq!(h.one(update(2, 1)).await, 0);
    // Admitted, refused, refunded and read: none of these may move the expiry.
    assert_eq!(h.one(update(1, 1000)).await, 2);
    assert_eq!(h.one(update(10, 1000)).await, 3);
    assert_eq!(h.one(update(1, 1000).refunding()).await, 3);
    assert_eq!(h.one(update(0, 1000)).await, 2);
    h.outlive(&current, 1).await;

    // A new life, with the full limit again.
    assert_eq!(h.one(update(5, 1)).await, 0);
    assert_eq!(h.value(&current).await, 5);
    h.outlive(&current, 1).await;
}

async fn a_sliding_window_keeps_about_the_limit_across_a_boundary_where_a_fixed_one_lets_twice_through<
    S: CounterStore + Clone,
>(
    h: Harness<S>,
) {
    const LIMIT: u64 = 10;
    const WINDOW_US: u64 = 60_000_000;
    const ATTEMPTS: u64 = LIMIT + 5;

    // A burst in the last tenth of a second of one window, another 6 s (10%) into the
    // next: a fixed window starts from zero at the boundary and lets both through.
    let (fixed_then, fixed_now) = (h.key_at("fixed", Some(60)), h.key_at("fixed", Some(120)));
    let mut fixed_passed = 0;
    for key in [&fixed_then, &fixed_now] {
        for _ in 0..ATTEMPTS {
            if admits(h.one(add_capped(key, 1, LIMIT)).await, 1, LIMIT) {
                fixed_passed += 1;
            }
        }
    }
    assert_eq!(fixed_passed, 2 * LIMIT);

    // The sliding window still sees 90% of the earlier burst, so only one more passes.
    let (older, previous, current) = three_windows(&h, "sliding");
    let mut sliding_passed = 0;
    let at_end = weight_at(WINDOW_US - 100_000, WINDOW_US);
    for _ in 0..ATTEMPTS {
        if admits(
            h.one(slide(&previous, &older, at_end, 1, LIMIT)).await,
            1,
            LIMIT,
        ) {
            sliding_passed += 1;
        }
    }
    let tenth_in = weight_at(WINDOW_US / 10, WINDOW_US);
    assert_eq!(tenth_in, 900_000);
    for _ in 0..ATTEMPTS {
        if admits(
            h.one(slide(&current, &previous, tenth_in, 1, LIMIT)).await,
            1,
            LIMIT,
        ) {
            sliding_passed += 1;
        }
    }
    assert_eq!(sliding_passed, LIMIT + 1);

    // Half-way through, half of the earlier burst has slid out: 10 - (5 + 1) = 4 pass.
    let halfway = weight_at(WINDOW_US / 2, WINDOW_US);
    let mut later = 0;
    for _ in 0..ATTEMPTS {
        if admits(
            h.one(slide(&current, &previous, halfway, 1, LIMIT)).await,
            1,
            LIMIT,
        ) {
            later += 1;
        }
    }
    assert_eq!(later, 4);
}

async fn a_sliding_estimate_is_exact_for_large_previous_counts<S: CounterStore + Clone>(
    h: Harness<S>,
) {
    // Token counts in the tens of billions: previous * weight passes 2^53, beyond which
    // a double (Lua's number) no longer holds every integer.
    for (i, (previous_count, weight, estimate)) in [
        (75_129_523_367u64, 721_188u64, 54_182_510_697u64),
        (842_042_092_387, 424_248, 357_234_673_610),
        (705_666_238_986, 990_217, 698_762_706_169),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            u128::from(previous_count) * u128::from(weight) / 1_000_000,
            u128::from(estimate)
        );
        let (older, previous, current) = three_windows(&h, &format!("big-{i}"));
        let limit = estimate + 1;
        h.one(slide(&previous, &older, 0, previous_count, u64::MAX / 2))
            .await;
        assert_eq!(
            h.one(slide(&current, &previous, weight, 0, limit)).await,
            estimate
        );
        // Exactly one more fits.
        assert_eq!(
            h.one(slide(&current, &previous, weight, 1, limit)).await,
            estimate
        );
        assert_eq!(
            h.one(slide(&current, &previous, weight, 1, limit)).await,
            limit
        );
        assert_eq!(h.value(&current).await, 1);
    }
}

async fn concurrent_sliding_hits_admit_exactly_the_limit<S: CounterStore + Clone>(h: Harness<S>) {
    const TASKS: u64 = 64;
    const EACH: u64 = 4;
    const LIMIT: u64 = 40;
    let (older, previous, current) = three_windows(&h, "contended-sliding");
    // Half of 20 from the previous window: 30 of the 256 attempts fit.
    h.one(slide(&previous, &older, 0, 20, LIMIT)).await;

    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = h.store.clone();
        let update = slide(&current, &previous, 500_000, 1, LIMIT);
        tasks.push(tokio::spawn(async move {
            let mut admitted = Vec::new();
            for _ in 0..EACH {
                let before = store
                    .apply(std::slice::from_ref(&update))
                    .await
                    .expect("store call")[0];
                if admits(before, 1, LIMIT) {
                    admitted.push(before);
                }
            }
            admitted
        }));
    }
    let mut admitted = Vec::new();
    for task in tasks {
        admitted.extend(task.await.expect("task"));
    }
    // Each admitted hit saw a distinct estimate: none was lost, doubled or let past.
    admitted.sort_unstable();
    assert_eq!(admitted, (10..LIMIT).collect::<Vec<_>>());
    assert_eq!(h.value(&current).await, LIMIT - 10);
}

// ---------------------------------------------------------------------------------------
// Token bucket (GCRA): the key holds the theoretical arrival time; `now_us` is given.
// ---------------------------------------------------------------------------------------

/// Ten seconds between tokens: Redis forgets a bucket by its own clock a second after it
/// is full again *by the given time*, so intervals long next to the test's real duration
/// keep Redis from forgetting a bucket the scenario still uses.
const INTERVAL_US: u64 = 10_000_000;

async fn a_bucket_passes_a_burst_then_one_token_per_interval<S: CounterStore + Clone>(
    h: Harness<S>,
) {
    const CAPACITY: u64 = 5;
    let key = h.key_at("bucket", None);
    let at = |t: u64| take(&key, 1, T0_US + t, INTERVAL_US, CAPACITY);

    // The whole capacity at once, and not one more.
    for in_use in 0..CAPACITY {
        assert_eq!(h.one(at(0)).await, in_use);
    }
    assert_eq!(h.one(at(0)).await, CAPACITY, "the burst went past capacity");
    assert_eq!(
        h.one(at(INTERVAL_US - 1)).await,
        CAPACITY,
        "a token came back early"
    );
    // One interval later exactly one more.
    assert_eq!(h.one(at(INTERVAL_US)).await, CAPACITY - 1);
    assert_eq!(h.one(at(INTERVAL_US)).await, CAPACITY);
    // k intervals later, k more.
    let k = 3;
    let t = INTERVAL_US + k * INTERVAL_US;
    for n in 0..k {
        assert_eq!(h.one(at(t)).await, CAPACITY - k + n);
    }
    assert_eq!(h.one(at(t)).await, CAPACITY);
    // After a long idle the bucket is full again, and holds no more than its capacity.
    let t = t + 100 * INTERVAL_US;
    for in_use in 0..CAPACITY {
        assert_eq!(h.one(at(t)).await, in_use);
    }
    assert_eq!(h.one(at(t)).await, CAPACITY);
}

async fn a_bucket_reports_tokens_in_use_rounded_up<S: CounterStore + Clone>(h: Harness<S>) {
    const INTERVAL: u64 = 3_000_000;
    let key = h.key_at("rounded", None);
    let read_at = |t: u64| take(&key, 0, T0_US + t, INTERVAL, 10);
    assert_eq!(h.one(take(&key, 4, T0_US, INTERVAL, 10)).await, 0);
    // In use: ceil((tat - now) / interval), with tat = T0 + 4 intervals.
    for (t, in_use) in [
        (0, 4),
        (1, 4),
        (INTERVAL - 1, 4),
        (INTERVAL, 3),
        (INTERVAL + 1, 3),
        (3 * INTERVAL + 1, 1),
        (4 * INTERVAL - 1, 1),
        (4 * INTERVAL, 0),
        (40 * INTERVAL, 0),
    ] {
        assert_eq!(h.one(read_at(t)).await, in_use, "{t} us after the take");
    }

    // An interval that is not a whole number of seconds.
    const ODD: u64 = 3_333_333;
    let odd = h.key_at("odd-interval", None);
    let odd_at = |hits, t: u64| take(&odd, hits, T0_US + t, ODD, 10);
    assert_eq!(h.one(odd_at(2, 0)).await, 0);
    assert_eq!(h.one(odd_at(0, ODD - 1)).await, 2);
    assert_eq!(h.one(odd_at(0, ODD)).await, 1);
    assert_eq!(h.one(odd_at(0, 2 * ODD - 1)).await, 1);
    assert_eq!(h.one(odd_at(0, 2 * ODD)).await, 0);
}

async fn a_refused_take_consumes_nothing<S: CounterStore + Clone>(h: Harness<S>) {
    const CAPACITY: u64 = 3;
    let key = h.key_at("bucket", None);
    let at = |hits, t: u64| take(&key, hits, T0_US + t, INTERVAL_US, CAPACITY);
    assert_eq!(h.one(at(CAPACITY, 0)).await, 0);
    for _ in 0..10 {
        assert_eq!(h.one(at(1, INTERVAL_US / 2)).await, CAPACITY);
    }
    // Had the refused takes consumed anything, no token would be back by now.
    assert_eq!(
        h.one(at(2, INTERVAL_US)).await,
        CAPACITY - 1,
        "refused: 2 + 2 > 3"
    );
    assert_eq!(h.one(at(1, INTERVAL_US)).await, CAPACITY - 1);
    assert_eq!(h.one(at(1, INTERVAL_US)).await, CAPACITY);
}

async fn a_bucket_check_only_read_creates_no_counter_and_consumes_nothing<
    S: CounterStore + Clone,
>(
    mut h: Harness<S>,
) {
    const CAPACITY: u64 = 5;
    let key = h.key_at("bucket", None);
    let at = |hits, t: u64| take(&key, hits, T0_US + t, INTERVAL_US, CAPACITY);
    assert_eq!(h.one(at(0, 0)).await, 0);
    assert_eq!(h.one(at(0, INTERVAL_US)).await, 0);
    assert_eq!(h.counters_held().await, 0, "a read created a counter");

    assert_eq!(h.one(at(2, 0)).await, 0);
    for _ in 0..10 {
        assert_eq!(h.one(at(0, 0)).await, 2);
    }
    assert_eq!(h.one(at(3, 0)).await, 2, "a read consumed a token");
    // Reading a full bucket does not push its tokens further out either.
    assert_eq!(h.one(at(0, 0)).await, CAPACITY);
    assert_eq!(h.one(at(1, INTERVAL_US)).await, CAPACITY - 1);
    assert_eq!(h.counters_held().await, 1);
}

async fn a_bucket_takes_several_tokens_at_once_or_none<S: CounterStore + Clone>(mut h: Harness<S>) {
    const CAPACITY: u64 = 10;
    let key = h.key_at("bucket", None);
    let at = |hits, t: u64| take(&key, hits, T0_US + t, INTERVAL_US, CAPACITY);
    assert_eq!(h.one(at(4, 0)).await, 0);
    assert_eq!(h.one(at(7, 0)).await, 4, "refused: 4 + 7 > 10");
    assert_eq!(
        h.one(at(0, 0)).await,
        4,
        "a refused take consumed part of its tokens"
    );
    assert_eq!(h.one(at(6, 0)).await, 4);
    assert_eq!(h.one(at(0, 0)).await, CAPACITY);
    // Three tokens back after three intervals: three at once fit, four do not.
    assert_eq!(h.one(at(4, 3 * INTERVAL_US)).await, CAPACITY - 3);
    assert_eq!(h.one(at(3, 3 * INTERVAL_US)).await, CAPACITY - 3);
    assert_eq!(h.one(at(0, 3 * INTERVAL_US)).await, CAPACITY);

    // More than the capacity never fits, not even in a fresh bucket, which stays absent.
    let fresh = h.key_at("fresh-bucket", None);
    assert_eq!(
        h.one(take(&fresh, CAPACITY + 1, T0_US, INTERVAL_US, CAPACITY))
            .await,
        0
    );
    assert_eq!(
        h.one(take(&fresh, 0, T0_US, INTERVAL_US, CAPACITY)).await,
        0
    );
    assert_eq!(
        h.counters_held().await,
        1,
        "a refused take created a counter"
    );
}

async fn a_bucket_refund_gives_tokens_back_but_never_beyond_capacity<S: CounterStore + Clone>(
    mut h: Harness<S>,
) {
    const CAPACITY: u64 = 5;
    let key = h.key_at("bucket", None);
    let at = |hits, t: u64| take(&key, hits, T0_US + t, INTERVAL_US, CAPACITY);
    assert_eq!(h.one(at(CAPACITY, 0)).await, 0);
    assert_eq!(h.one(at(2, 0).refunding()).await, CAPACITY);
    assert_eq!(h.one(at(0, 0)).await, 3);
    assert_eq!(h.one(at(10, 0).refunding()).await, 3);
    assert_eq!(
        h.one(at(0, 0)).await,
        0,
        "a refund left tokens in use below zero"
    );
    // The refunds banked nothing beyond a full bucket.
    for in_use in 0..CAPACITY {
        assert_eq!(h.one(at(1, 0)).await, in_use);
    }
    assert_eq!(h.one(at(1, 0)).await, CAPACITY);

    // Nor does a refund to a bucket that has refilled by itself.
    let later = 100 * INTERVAL_US;
    assert_eq!(h.one(at(3, later).refunding()).await, 0);
    for in_use in 0..CAPACITY {
        assert_eq!(h.one(at(1, later)).await, in_use);
    }
    assert_eq!(h.one(at(1, later)).await, CAPACITY);

    // A refund to a bucket never used creates nothing.
    let unused = h.key_at("unused-bucket", None);
    assert_eq!(
        h.one(take(&unused, 3, T0_US, INTERVAL_US, CAPACITY).refunding())
            .await,
        0
    );
    assert_eq!(h.counters_held().await, 1, "a refund created a counter");
}

async fn a_zero_bucket_interval_is_read_as_one_microsecond<S: CounterStore + Clone>(h: Harness<S>) {
    // Not something the limiter sends (its interval is at least 1 us), but both stores
    // must read the same update alike rather than let a zero interval mean "no limit".
    let key = h.key_at("zero-interval", None);
    let at = |t: u64| take(&key, 1, T0_US + t, 0, 3);
    for in_use in 0..3 {
        assert_eq!(h.one(at(0)).await, in_use);
    }
    assert_eq!(h.one(at(0)).await, 3);
    assert_eq!(h.one(at(1)).await, 2);
    assert_eq!(h.one(at(1)).await, 3);
}

async fn concurrent_takes_admit_exactly_the_capacity<S: CounterStore + Clone>(h: Harness<S>) {
    const TASKS: u64 = 64;
    const EACH: u64 = 2;
    const CAPACITY: u64 = 50;
    let key = h.key_at("contended-bucket", None);

    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = h.store.clone();
        // Time frozen: no token comes back while they race.
        let update = take(&key, 1, T0_US, 1_000_000, CAPACITY);
        tasks.push(tokio::spawn(async move {
            let mut admitted = Vec::new();
            for _ in 0..EACH {
                let before = store
                    .apply(std::slice::from_ref(&update))
                    .await
                    .expect("store call")[0];
                if admits(before, 1, CAPACITY) {
                    admitted.push(before);
                }
            }
            admitted
        }));
    }
    let mut admitted = Vec::new();
    for task in tasks {
        admitted.extend(task.await.expect("task"));
    }
    admitted.sort_unstable();
    assert_eq!(admitted, (0..CAPACITY).collect::<Vec<_>>());
    assert_eq!(
        h.one(take(&key, 0, T0_US, 1_000_000, CAPACITY)).await,
        CAPACITY
    );
}

// ---------------------------------------------------------------------------------------
// Expiry details the memory store shows through its clock.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn memory_check_only_read_does_not_extend_a_counters_life() {
    let h = memory();
    let Backing::Memory(_, clock) = &h.backing else {
        unreachable!()
    };
    let key = h.key("read-late");
    h.one(add(&key, 1, 10)).await;
    clock.advance(Duration::from_secs(9));
    assert_eq!(h.value(&key).await, 1);
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.value(&key).await, 0, "the read kept the counter alive");
}

#[tokio::test]
async fn memory_ttl_is_set_only_when_the_counter_is_new() {
    let h = memory();
    let Backing::Memory(_, clock) = &h.backing else {
        unreachable!()
    };
    let key = h.key("ttl");
    h.one(add(&key, 1, 10)).await;
    clock.advance(Duration::from_secs(5));
    h.one(add(&key, 1, 100)).await;
    h.one(refund(&key, 1)).await;
    clock.advance(Duration::from_secs(5));
    assert_eq!(
        h.value(&key).await,
        0,
        "a later update extended the counter's life"
    );
}

#[tokio::test]
async fn memory_an_idle_counter_lives_while_it_is_charged_and_expires_once_idle() {
    let h = memory();
    let Backing::Memory(store, clock) = &h.backing else {
        unreachable!()
    };
    let key = h.key("session");
    h.one(idle(&key, 1, 10)).await;
    // Each charge moves the expiry: 9 s, charge, 9 s, charge, ... never expires.
    for _ in 0..3 {
        clock.advance(Duration::from_secs(9));
        h.one(idle(&key, 1, 10)).await;
    }
    // A charge the cap refuses still counts as use.
    clock.advance(Duration::from_secs(9));
    assert_eq!(h.one(idle(&key, 1, 10).capped(4)).await, 4);
    // Reads and refunds do not.
    clock.advance(Duration::from_secs(5));
    assert_eq!(h.value(&key).await, 4);
    h.one(idle(&key, 1, 10).refunding()).await;
    clock.advance(Duration::from_secs(4));
    assert_eq!(h.value(&key).await, 3);
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        h.value(&key).await,
        0,
        "a read or a refund kept the idle counter alive"
    );
    store.sweep();
    assert_eq!(store.len(), 0);
    // A new life from zero.
    assert_eq!(h.one(idle(&key, 1, 10)).await, 0);
}

#[tokio::test]
async fn memory_a_bucket_is_forgotten_once_full_again_by_its_clock() {
    let h = memory();
    let Backing::Memory(store, clock) = &h.backing else {
        unreachable!()
    };
    let key = h.key_at("bucket", None);
    // Two tokens in use, one every second: full again at T0 + 2 s.
    h.one(take(&key, 2, T0_US, 1_000_000, 5)).await;
    clock.advance(Duration::from_secs(2));
    store.sweep();
    assert_eq!(store.len(), 1, "forgotten before it was full again");
    clock.advance(Duration::from_secs(1));
    store.sweep();
    assert_eq!(store.len(), 0, "a full bucket was kept");
}

// ---------------------------------------------------------------------------------------
// Redis only: what the script does to keys, and how the store copes with Redis going away.
// ---------------------------------------------------------------------------------------

async fn ttl_of(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("TTL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("TTL")
}

async fn exists(conn: &mut MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(conn)
        .await
        .expect("EXISTS")
        == 1
}

#[tokio::test]
async fn redis_check_only_read_creates_no_key_and_leaves_the_ttl_alone() {
    let h = redis().await;
    let mut conn = direct(&redis_url()).await;
    let missing = h.key("missing");
    assert_eq!(h.value(&missing).await, 0);
    assert!(!exists(&mut conn, &missing).await, "a read created the key");

    let key = h.key("counted");
    h.one(add(&key, 1, 100)).await;
    let _: () = redis::cmd("EXPIRE")
        .arg(&key)
        .arg(40)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(h.value(&key).await, 1);
    let ttl = ttl_of(&mut conn, &key).await;
    assert!((1..=40).contains(&ttl), "a read refreshed the TTL to {ttl}");
}

#[tokio::test]
async fn redis_ttl_is_set_only_when_the_key_is_new() {
    let h = redis().await;
    let mut conn = direct(&redis_url()).await;
    let key = h.key("ttl");
    h.one(add(&key, 1, 100)).await;
    let ttl = ttl_of(&mut conn, &key).await;
    assert!(
        (90..=100).contains(&ttl),
        "new key got TTL {ttl}, wanted 100"
    );

    let _: () = redis::cmd("EXPIRE")
        .arg(&key)
        .arg(40)
        .query_async(&mut conn)
        .await
        .unwrap();
    h.one(add(&key, 1, 1000)).await;
    h.one(add_capped(&key, 1, 1000)).await;
    h.one(add_capped(&key, 1000, 5)).await;
    h.one(refund(&key, 1)).await;
    let ttl = ttl_of(&mut conn, &key).await;
    assert!(
        (1..=40).contains(&ttl),
        "a later update moved the TTL to {ttl}"
    );
    assert_eq!(h.value(&key).await, 2);
}

#[tokio::test]
async fn redis_an_idle_counters_ttl_moves_on_every_charge_only() {
    let h = redis().await;
    let mut conn = direct(&redis_url()).await;
    let key = h.key("session");
    h.one(idle(&key, 1, 100)).await;
    let ttl = ttl_of(&mut conn, &key).await;
    assert!(
        (90..=100).contains(&ttl),
        "new key got TTL {ttl}, wanted 100"
    );
    let shorten = |conn: &mut MultiplexedConnection| {
        let key = key.clone();
        let mut conn = conn.clone();
        async move {
            let _: () = redis::cmd("EXPIRE")
                .arg(&key)
                .arg(40)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };
    // A charge sets the TTL again, to the idle time it names.
    shorten(&mut conn).await;
    h.one(idle(&key, 1, 1000)).await;
    let ttl = ttl_of(&mut conn, &key).await;
    assert!(
        (990..=1000).contains(&ttl),
        "a charge left the TTL at {ttl}"
    );
    // So does a charge the cap refuses (the session is in use).
    shorten(&mut conn).await;
    assert_eq!(h.one(idle(&key, 5, 1000).capped(3)).await, 2);
    let ttl = ttl_of(&mut conn, &key).await;
    assert!(
        (990..=1000).contains(&ttl),
        "a refused charge left the TTL at {ttl}"
    );
    // A read and a refund leave it alone.
    shorten(&mut conn).await;
    assert_eq!(h.value(&key).await, 2);
    h.one(idle(&key, 1, 1000).refunding()).await;
    let ttl = ttl_of(&mut conn, &key).await;
    assert!(
        (1..=40).contains(&ttl),
        "a read or a refund moved the TTL to {ttl}"
    );
    assert_eq!(h.value(&key).await, 1);
    // A refused charge on a missing key creates none.
    let fresh = h.key("fresh");
    h.one(idle(&fresh, 5, 1000).capped(3)).await;
    assert!(
        !exists(&mut conn, &fresh).await,
        "a refused charge created the key"
    );
}

#[tokio::test]
async fn redis_refund_and_refused_increment_create_no_key() {
    let h = redis().await;
    let mut conn = direct(&redis_url()).await;
    let refunded = h.key("refund-first");
    let refused = h.key("refused-first");
    assert_eq!(
        h.apply(&[refund(&refunded, 3), add_capped(&refused, 9, 5)])
            .await,
        vec![0, 0]
    );
    assert!(!exists(&mut conn, &refunded).await);
    assert!(!exists(&mut conn, &refused).await);
}

#[tokio::test]
async fn redis_sliding_ttl_is_set_only_when_the_key_is_new_and_a_read_creates_neither_key() {
    let h = redis().await;
    let mut conn = direct(&redis_url()).await;
    let (older, previous, current) = three_windows(&h, "s");
    assert_eq!(h.one(slide(&current, &previous, 500_000, 0, 10)).await, 0);
    assert!(
        !exists(&mut conn, &current).await,
        "a read created this window's key"
    );
    assert!(
        !exists(&mut conn, &previous).await,
        "a read created the previous window's key"
    );

    h.one(slide(&previous, &older, 0, 4, 10)).await;
    let ttl = ttl_of(&mut conn, &previous).await;
    assert!(
        (110..=120).contains(&ttl),
        "new key got TTL {ttl}, wanted 120"
    );

    let with_ttl = |hits, ttl_secs| CounterUpdate {
        key: current.clone(),
        hits,
        refund: false,
        kind: CounterKind::Sliding {
            previous_key: previous.clone(),
            previous_weight_ppm: 500_000,
            ttl_secs,
            limit: 10,
        },
    };
    h.one(with_ttl(1, 100)).await;
    let _: () = redis::cmd("EXPIRE")
        .arg(&current)
        .arg(40)
        .query_async(&mut conn)
        .await
        .unwrap();
    h.one(with_ttl(1, 1000)).await;
    h.one(with_ttl(100, 1000)).await;
    h.one(with_ttl(1, 1000).refunding()).await;
    h.one(with_ttl(0, 1000)).await;
    let ttl = ttl_of(&mut conn, &current).await;
    assert!(
        (1..=40).contains(&ttl),
        "a later update moved the TTL to {ttl}"
    );
    // Reading through a window never touches the previous window's expiry.
    let ttl = ttl_of(&mut conn, &previous).await;
    assert!(
        (110..=120).contains(&ttl),
        "the previous window's TTL moved to {ttl}"
    );
    assert_eq!(h.value(&current).await, 1);
}

#[tokio::test]
async fn redis_a_bucket_is_forgotten_a_second_after_it_is_full_again() {
    let h = redis().await;
    let mut conn = direct(&redis_url()).await;
    let key = h.key_at("bucket", None);
    // Three tokens in use, one every 10 s: full again 30 s from the given time.
    h.one(take(&key, 3, T0_US, 10_000_000, 5)).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (29_000..=31_000).contains(&pttl),
        "PTTL {pttl}, wanted 31000"
    );
    let tat: u64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        tat,
        T0_US + 30_000_000,
        "the key holds the theoretical arrival time"
    );
    // A read leaves both alone.
    let _: () = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(20_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(h.one(take(&key, 0, T0_US, 10_000_000, 5)).await, 3);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (1..=20_000).contains(&pttl),
        "a read moved the PTTL to {pttl}"
    );
}

#[tokio::test]
async fn redis_batch_spanning_two_hash_tags_applies_both() {
    let h = redis().await;
    let mut conn = direct(&redis_url()).await;
    let acme = counter_key(
        &h.prefix,
        "d",
        [("tenant", "acme"), ("model", "m")],
        "",
        Some(0),
    );
    let other = counter_key(
        &h.prefix,
        "d",
        [("tenant", "other"), ("model", "m")],
        "",
        Some(0),
    );
    assert_ne!(hash_tag(&acme), hash_tag(&other));
    assert_eq!(
        h.apply(&[add(&acme, 2, 60), add(&other, 5, 60)]).await,
        vec![0, 0]
    );
    let values: Vec<Option<u64>> = redis::cmd("MGET")
        .arg(&acme)
        .arg(&other)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(values, vec![Some(2), Some(5)]);
}

#[tokio::test]
async fn redis_malformed_urls_are_rejected_naming_the_problem() {
    for (url, problem) in [
        ("127.0.0.1:6379", "no scheme"),
        ("http://127.0.0.1:6379", "unknown scheme `http`"),
        ("redis://127.0.0.1:port", "port `port`"),
        ("redis://127.0.0.1:6379/zero", "database `zero`"),
        ("redis://a:1,b:2", "single-node"),
        ("redis+sentinel://127.0.0.1:26379", "names no master"),
        ("redis+cluster://127.0.0.1:7000/2", "only database 0"),
    ] {
        match RedisStore::connect(url, DEADLINE).await {
            Ok(_) => panic!("{url} was accepted"),
            Err(StoreError::Unavailable(msg)) => {
                assert!(
                    msg.contains(problem),
                    "{url}: `{msg}` does not mention `{problem}`"
                );
                assert!(msg.contains("invalid Redis URL"), "{msg}");
            }
            Err(other) => panic!("{url}: unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn redis_store_with_nothing_listening_constructs_then_fails_calls_and_reports_unhealthy() {
    let port = free_port();
    let store = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), Duration::from_secs(2))
        .await
        .expect("an unreachable Redis still gives a store");
    assert!(!store.is_healthy());
    let result = store.apply(&[add("tollgate-test:nowhere", 1, 60)]).await;
    assert!(
        result.is_err(),
        "a call succeeded with no Redis: {result:?}"
    );
    assert!(!store.is_healthy());
}

#[tokio::test]
async fn redis_store_built_while_redis_is_down_starts_working_once_it_is_up() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let store = RedisStore::connect(&url, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(store.apply(&[add("k", 1, 60)]).await.is_err());

    let dir = tempfile::tempdir().unwrap();
    let _redis = PrivateRedis::start_on(port, dir.path(), &[]).await;
    let store = &store;
    eventually("the store to reach the new Redis", || async move {
        store.apply(&[add("k", 1, 60)]).await.is_ok()
    })
    .await;
    assert!(store.is_healthy());
}

#[tokio::test]
async fn redis_store_reconnects_after_redis_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = PrivateRedis::start(dir.path(), &[]).await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let store = RedisStore::connect(&url, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(store.is_healthy());
    assert_eq!(store.apply(&[add("k", 1, 60)]).await.unwrap(), vec![0]);

    redis.kill();
    let store = &store;
    eventually("calls to fail while Redis is down", || async move {
        store.apply(&[add("k", 1, 60)]).await.is_err()
    })
    .await;
    assert!(store.apply(&[add("k", 1, 60)]).await.is_err());
    assert!(!store.is_healthy());

    let _again = PrivateRedis::start_on(redis.port, dir.path(), &[]).await;
    eventually("the store to reconnect", || async move {
        store.apply(&[add("k", 1, 60)]).await.is_ok()
    })
    .await;
    assert!(store.is_healthy());
}

#[tokio::test]
async fn redis_store_probe_notices_an_outage_without_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = PrivateRedis::start(dir.path(), &[]).await;
    let store = RedisStore::connect(&format!("redis://127.0.0.1:{}", redis.port), DEADLINE)
        .await
        .unwrap();
    assert!(store.is_healthy());
    redis.kill();
    let store = &store;
    eventually("the probe to report Redis down", || async move {
        !store.is_healthy()
    })
    .await;
    let _again = PrivateRedis::start_on(redis.port, dir.path(), &[]).await;
    eventually("the probe to report Redis back", || async move {
        store.is_healthy()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_replaces_a_connection_that_stopped_answering() {
    let dir = tempfile::tempdir().unwrap();
    let redis = PrivateRedis::start(dir.path(), &[]).await;
    let proxy = FreezingProxy::start(redis.port).await;
    let mut options = RedisOptions::new(
        format!("redis://127.0.0.1:{}", proxy.port),
        Duration::from_millis(300),
    );
    options.connect_timeout = Duration::from_millis(500);
    let store = RedisStore::connect_with(options).await.unwrap();
    assert!(store.is_healthy());
    assert_eq!(store.apply(&[add("k", 1, 60)]).await.unwrap(), vec![0]);

    // The socket stays open but nothing comes back: no error ever tells the connection
    // it is dead, so only the probe can notice.
    proxy.freeze_open_connections();
    match store.apply(&[add("k", 1, 60)]).await {
        Err(StoreError::Timeout(_)) => {}
        other => panic!("expected a timeout from a silent Redis, got {other:?}"),
    }
    assert!(!store.is_healthy());
    let store = &store;
    eventually(
        "the store to replace the silent connection",
        || async move { store.apply(&[read("k")]).await.is_ok() },
    )
    .await;
    assert!(store.is_healthy());
}

#[tokio::test]
async fn redis_dropping_the_store_closes_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let redis = PrivateRedis::start(dir.path(), &[]).await;
    let store = RedisStore::connect(&redis.url(), DEADLINE).await.unwrap();
    let copy = store.clone();
    store.apply(&[add("k", 1, 60)]).await.unwrap();
    let watcher = &direct(&redis.url()).await;
    let clients = || async move {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query_async(&mut watcher.clone())
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap()
    };
    assert_eq!(clients().await, 2, "the store and the watcher");
    drop(store);
    // A clone keeps it alive.
    assert_eq!(copy.apply(&[read("k")]).await.unwrap(), vec![1]);
    drop(copy);
    eventually("the store's connection to close", || async move {
        clients().await == 1
    })
    .await;
}

#[tokio::test]
async fn redis_sentinel_store_follows_the_master_through_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let master = PrivateRedis::start(dir.path(), &[]).await;
    let replica_dir = tempfile::tempdir().unwrap();
    let replica_of = format!("127.0.0.1 {}", master.port);
    let replica = PrivateRedis::start(replica_dir.path(), &["--replicaof", &replica_of]).await;
    let sentinel = PrivateSentinel::start(master.port).await;

    let url = format!("redis+sentinel://127.0.0.1:{}/tgmaster", sentinel.port);
    let store = RedisStore::connect(&url, DEADLINE).await.unwrap();
    assert!(store.is_healthy(), "{store:?}");
    let key = format!("{}k", unique_prefix());
    assert_eq!(store.apply(&[add(&key, 1, 60)]).await.unwrap(), vec![0]);
    let mut on_master = direct(&master.url()).await;
    let got: Option<u64> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut on_master)
        .await
        .unwrap();
    assert_eq!(
        got,
        Some(1),
        "the write did not land on the master Sentinel names"
    );

    // Promote the replica. Once the old master has been turned into a replica it refuses
    // writes, so a write that succeeds afterwards went to the new master.
    let on_sentinel = &direct(&sentinel.url()).await;
    eventually("the sentinel to accept a failover", || async move {
        redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg("tgmaster")
            .query_async::<()>(&mut on_sentinel.clone())
            .await
            .is_ok()
    })
    .await;
    let (old, new) = (&master.url(), &replica.url());
    let replica_port = replica.port;
    eventually("the failover to complete", || async move {
        let named: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg("tgmaster")
            .query_async(&mut on_sentinel.clone())
            .await
            .ok()
            .flatten();
        named.is_some_and(|(_, port)| port == replica_port)
            && role(old).await.as_deref() == Some("slave")
            && role(new).await.as_deref() == Some("master")
    })
    .await;

    let marker = &format!("{}after-failover", unique_prefix());
    let store = &store;
    eventually("a write to succeed after the failover", || async move {
        store.apply(&[add(marker, 1, 60)]).await.is_ok()
    })
    .await;
    let mut on_new_master = direct(new).await;
    let got: Option<u64> = redis::cmd("GET")
        .arg(marker)
        .query_async(&mut on_new_master)
        .await
        .unwrap();
    assert_eq!(
        got,
        Some(1),
        "the write after the failover did not reach the new master"
    );
}

/// `master` or `slave`, from `INFO replication`.
async fn role(url: &str) -> Option<String> {
    let mut conn = redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()?;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("role:"))
        .map(|role| role.trim().to_owned())
}

#[tokio::test]
async fn redis_cluster_batch_spanning_two_slots_applies_both_groups_in_order() {
    let cluster = PrivateCluster::start().await;
    let url = cluster.url();
    let store = RedisStore::connect(&url, DEADLINE).await.unwrap();
    let store = &store;
    eventually("the cluster store to answer", || async move {
        store.apply(&[read("{warmup}")]).await.is_ok()
    })
    .await;

    let prefix = unique_prefix();
    let acme = counter_key(
        &prefix,
        "d",
        [("tenant", "acme"), ("model", "m")],
        "",
        Some(0),
    );
    let acme_other_model = counter_key(
        &prefix,
        "d",
        [("tenant", "acme"), ("model", "n")],
        "",
        Some(0),
    );
    let other = counter_key(
        &prefix,
        "d",
        [("tenant", "other"), ("model", "m")],
        "",
        Some(0),
    );
    let node = direct(&format!("redis://127.0.0.1:{}", cluster.ports[0])).await;
    let slot = |key: String| {
        let mut node = node.clone();
        async move {
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async::<u16>(&mut node)
                .await
                .unwrap()
        }
    };
    assert_ne!(slot(acme.clone()).await, slot(other.clone()).await);
    assert_eq!(
        slot(acme.clone()).await,
        slot(acme_other_model.clone()).await
    );

    let batch = [
        add(&acme, 1, 60),
        add(&other, 10, 60),
        add(&acme_other_model, 100, 60),
        read(&other),
    ];
    assert_eq!(store.apply(&batch).await.unwrap(), vec![0, 0, 0, 10]);
    assert_eq!(store.apply(&batch).await.unwrap(), vec![1, 10, 100, 20]);

    let client =
        redis::cluster::ClusterClient::new(vec![format!("redis://127.0.0.1:{}", cluster.ports[0])])
            .unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    for (key, want) in [(&acme, 2), (&other, 20), (&acme_other_model, 200)] {
        let got: Option<u64> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(got, Some(want), "{key}");
    }
    assert!(store.is_healthy());
}

// ---------------------------------------------------------------------------------------
// Private Redis servers (tests/support/private_redis.rs), and what only these tests need.
// ---------------------------------------------------------------------------------------

/// A TCP proxy to a private Redis that can go silent on the connections it holds, the
/// way a dropped NAT entry or a frozen host looks from the client: open, but mute.
struct FreezingProxy {
    port: u16,
    epoch: Arc<AtomicU64>,
    _accept: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    async fn start(target_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let epoch = Arc::new(AtomicU64::new(0));
        let current = epoch.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                else {
                    continue;
                };
                let born = current.load(Ordering::SeqCst);
                let (client_rx, client_tx) = client.into_split();
                let (server_rx, server_tx) = server.into_split();
                tokio::spawn(Self::pump(client_rx, server_tx, born, current.clone()));
                tokio::spawn(Self::pump(server_rx, client_tx, born, current.clone()));
            }
        });
        Self {
            port,
            epoch,
            _accept: accept,
        }
    }

    /// Connections open now stop forwarding (and never close); new ones work.
    fn freeze_open_connections(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        born: u64,
        current: Arc<AtomicU64>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if current.load(Ordering::SeqCst) != born {
                // Hold both sockets open and say nothing, forever.
                std::future::pending::<()>().await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

/// A plain sentinel; its directory (config and state) is removed after the kill.
struct PrivateSentinel {
    _redis: PrivateRedis,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateSentinel {
    /// A sentinel watching the master on `master_port` under the name `tgmaster`.
    async fn start(master_port: u16) -> Self {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor tgmaster 127.0.0.1 {master_port} 1\n\
                     sentinel down-after-milliseconds tgmaster 60000\n\
                     sentinel failover-timeout tgmaster 10000\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            let args = vec![conf.display().to_string(), "--sentinel".to_owned()];
            if let Ok(redis) = PrivateRedis::launch(args, port, Ready::Ping).await {
                return Self {
                    _redis: redis,
                    port,
                    _dir: dir,
                };
            }
        }
        panic!("could not start a private sentinel");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

#[tokio::test]
async fn redis_options_debug_hides_passwords() {
    let mut options = RedisOptions::new("redis://u:hunter2@127.0.0.1:1/0", DEADLINE);
    options.sentinel_password = Some("hunter3".into());
    let shown = format!("{options:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("hunter3"),
        "{shown}"
    );
}
