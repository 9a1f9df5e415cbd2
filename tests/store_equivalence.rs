//! The memory and Redis stores answer alike: random sequences of counter updates (every
//! kind, hits of zero, refunds, batches) and clock steps are applied to both in lockstep,
//! and every value either returns must equal the other's.
//!
//! `tests/store_contract.rs` states what the stores must do; this test looks for what it
//! did not think of. It needs the Redis that the contract suite uses (`redis://127.0.0.1:6379`
//! unless `TOLLGATE_TEST_REDIS_URL` says otherwise); each case works under its own key
//! prefix. `PROPTEST_CASES` raises the case count for a deeper run.
//!
//! # Two clocks
//!
//! The memory store expires counters by its injected `ManualClock`, which the sequence
//! moves by minutes in a blink; Redis expires them by its own clock, in real seconds. So
//! the sequences are built the way the limiter builds its updates, where expiry cannot
//! show, and with margins that keep it so:
//! - Window and sliding counters carry their window's start in the key, so a counter is
//!   only addressed during its own window (and, as a sliding window's previous window,
//!   the next one). Their TTL is the limiter's (long enough for that, by the manual
//!   clock) plus an hour, so Redis keeps every counter for the whole (seconds-long) case.
//! - A token bucket has no window, and both stores forget it only once it is full again:
//!   the memory store when its clock passes the theoretical arrival time (TAT), at which
//!   point it reads as empty anyway; Redis a second of real time plus (TAT - now) after
//!   the last write. For Redis not to forget a bucket still in use, the clock moves in
//!   steps of whole [`STEP_US`] from a random offset and token intervals are multiples
//!   of it, so a bucket in use is at least [`STEP_US`] from full and Redis keeps it at
//!   least six real seconds past its last write.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tollgate::clock::{Clock, ManualClock};
use tollgate::store::keys::counter_key;
use tollgate::store::{CounterKind, CounterStore, CounterUpdate, MemoryStore, RedisStore};

/// Where the memory store's clock starts (plus a random sub-step offset per case).
const T0_SECS: u64 = 1_700_000_000;

/// The clock's step, and the unit of token intervals: five seconds.
const STEP_US: u64 = 5_000_000;

/// Added to every window TTL so that Redis, counting real seconds, keeps counters for
/// the whole case; it changes nothing the memory store shows, as windows are in the keys.
const TTL_MARGIN_SECS: u64 = 3_600;

/// A limit large enough for token-sized hits to add up past nine billion, where
/// `previous * weight` in the sliding estimate passes 2^53. The rounding that once split
/// the stores there shows about once in 10^5 reads, too rarely for a few dozen cases:
/// `a_sliding_estimate_is_exact_for_large_previous_counts` in the contract pins it.
const BIG_LIMIT: u64 = 1_000_000_000_000;

fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// How one counter in a case counts.
#[derive(Debug, Clone)]
enum Spec {
    Window { length_secs: u64, cap: Option<u64> },
    Sliding { length_secs: u64, limit: u64 },
    Bucket { interval_us: u64, capacity: u64 },
}

/// One update of a batch: which counter, how many hits, and whether given back.
#[derive(Debug, Clone)]
struct Hit {
    counter: prop::sample::Index,
    hits: u64,
    refund: bool,
}

#[derive(Debug, Clone)]
enum Op {
    /// One store call with these updates, at the current time.
    Apply(Vec<Hit>),
    /// Moves the clock forward by this many microseconds.
    Advance(u64),
}

#[derive(Debug, Clone)]
struct Case {
    counters: Vec<Spec>,
    /// Where in its first step the clock starts, in microseconds.
    offset_us: u64,
    ops: Vec<Op>,
}

fn spec() -> impl Strategy<Value = Spec> {
    // Lengths that divide a minute and some that do not, so boundaries fall everywhere.
    let length = || prop::sample::select(vec![7u64, 10, 30, 45, 60]);
    prop_oneof![
        length().prop_map(|length_secs| Spec::Window {
            length_secs,
            cap: None
        }),
        (length(), 1..=12u64).prop_map(|(length_secs, cap)| Spec::Window {
            length_secs,
            cap: Some(cap)
        }),
        (length(), 1..=12u64).prop_map(|(length_secs, limit)| Spec::Sliding { length_secs, limit }),
        length().prop_map(|length_secs| Spec::Sliding {
            length_secs,
            limit: BIG_LIMIT
        }),
        (1..=6u64, 1..=8u64).prop_map(|(steps, capacity)| Spec::Bucket {
            interval_us: steps * STEP_US,
            capacity
        }),
    ]
}

fn hit() -> impl Strategy<Value = Hit> {
    let hits = prop_oneof![
        3 => Just(0u64),
        4 => 1..=3u64,
        2 => 4..=13u64,
        1 => 1_000_000_000..=100_000_000_000u64,
    ];
    (
        any::<prop::sample::Index>(),
        hits,
        prop::bool::weighted(0.2),
    )
        .prop_map(|(counter, hits, refund)| Hit {
            counter,
            hits,
            refund,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => prop::collection::vec(hit(), 1..=3).prop_map(Op::Apply),
        // Mostly short steps inside a window, sometimes past several boundaries at once.
        2 => (1..=4u64).prop_map(|n| Op::Advance(n * STEP_US)),
        1 => (5..=40u64).prop_map(|n| Op::Advance(n * STEP_US)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(spec(), 1..=4),
        0..STEP_US,
        prop::collection::vec(op(), 1..=40),
    )
        .prop_map(|(counters, offset_us, ops)| Case {
            counters,
            offset_us,
            ops,
        })
}

/// The update the limiter would send for `hits` on counter `index` at `now_us`.
fn update(
    prefix: &str,
    counters: &[Spec],
    index: usize,
    hits: u64,
    refund: bool,
    now_us: u64,
) -> CounterUpdate {
    let name = index.to_string();
    let key = |window_start: Option<u64>| {
        counter_key(
            prefix,
            "equivalence",
            [("counter", name.as_str())],
            "",
            window_start,
        )
    };
    let now_secs = now_us / 1_000_000;
    let window = |length_secs: u64| {
        let start = now_secs - now_secs % length_secs;
        (start, start + length_secs - now_secs)
    };
    let (key, kind) = match counters[index] {
        Spec::Window { length_secs, cap } => {
            let (start, until_reset) = window(length_secs);
            let ttl_secs = until_reset + TTL_MARGIN_SECS;
            (key(Some(start)), CounterKind::Window { ttl_secs, cap })
        }
        Spec::Sliding { length_secs, limit } => {
            let (start, until_reset) = window(length_secs);
            let length_us = length_secs * 1_000_000;
            let elapsed_us = now_us - start * 1_000_000;
            let kind = CounterKind::Sliding {
                previous_key: key(Some(start - length_secs)),
                previous_weight_ppm: (length_us - elapsed_us) * 1_000_000 / length_us,
                ttl_secs: until_reset + length_secs + TTL_MARGIN_SECS,
                limit,
            };
            (key(Some(start)), kind)
        }
        Spec::Bucket {
            interval_us,
            capacity,
        } => (
            key(None),
            CounterKind::Bucket {
                now_us,
                interval_us,
                capacity,
            },
        ),
    };
    CounterUpdate {
        key,
        hits,
        refund,
        kind,
    }
}

/// A key prefix no other case, test or earlier run uses.
fn unique_prefix(case: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "tollgate-test:{}:{nanos:x}:equivalence-{case}:",
        std::process::id()
    )
}

async fn run_case(redis: &RedisStore, prefix: &str, case: &Case) -> Result<(), TestCaseError> {
    let clock = ManualClock::at_secs(T0_SECS);
    clock.advance(Duration::from_micros(case.offset_us));
    let memory = MemoryStore::new(Arc::new(clock.clone()));
    let now_us = || clock.now_nanos() / 1_000;

    let apply = async |updates: &[CounterUpdate], what: &str| -> Result<(), TestCaseError> {
        let from_memory = memory.apply(updates).await.expect("memory store call");
        let from_redis = redis
            .apply(updates)
            .await
            .map_err(|e| TestCaseError::fail(format!("Redis store call: {e}")))?;
        prop_assert_eq!(
            &from_memory,
            &from_redis,
            "{} at {} us: memory (left) and Redis (right) differ on {:#?}",
            what,
            now_us(),
            updates
        );
        Ok(())
    };

    for (i, op) in case.ops.iter().enumerate() {
        match op {
            Op::Apply(hits) => {
                let updates: Vec<_> = hits
                    .iter()
                    .map(|h| {
                        let index = h.counter.index(case.counters.len());
                        update(prefix, &case.counters, index, h.hits, h.refund, now_us())
                    })
                    .collect();
                apply(&updates, &format!("op {i}")).await?;
            }
            Op::Advance(by_us) => clock.advance(Duration::from_micros(*by_us)),
        }
    }
    // Both end in the same state: every counter reads alike.
    let reads: Vec<_> = (0..case.counters.len())
        .map(|index| update(prefix, &case.counters, index, 0, false, now_us()))
        .collect();
    apply(&reads, "final reads").await
}

#[test]
fn memory_and_redis_stores_return_the_same_values_for_any_sequence() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = redis_url();
    let redis = runtime.block_on(async {
        RedisStore::connect(&url, Duration::from_secs(5))
            .await
            .expect("valid test URL")
    });
    assert!(
        redis.is_healthy(),
        "no Redis at {url}: start one or point TOLLGATE_TEST_REDIS_URL at one"
    );

    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let mut runner = TestRunner::new(Config {
        cases,
        // Failures print the whole minimal case, which is what a contract scenario needs.
        failure_persistence: None,
        ..Config::default()
    });
    let next_case = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&case(), |case| {
        let prefix = unique_prefix(next_case.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        runtime.block_on(run_case(&redis, &prefix, &case))
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
