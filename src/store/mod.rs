//! Counter stores: where the limiter's counters live.
//!
//! The limiter owns the [`CounterStore`] contract; [`memory`] (embedded, the default) and
//! [`redis`] (shared by replicas) implement it, and `tests/store_contract.rs` runs the same
//! scenarios against both so they cannot drift. Keys are built in [`keys`] only.

pub mod budget;
mod budget_book;
mod coalesce;
pub mod keys;
pub mod memory;
pub mod outbox;
pub mod redis;
mod redis_budget;

use std::future::Future;

use self::budget::{BudgetCall, BudgetReply, OutboxEntry};
pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

/// One change to one counter, as part of a request's batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterUpdate {
    /// The counter's full key, from [`keys::counter_key`].
    pub key: String,
    /// How much to add (or, with `refund`, to give back). Zero only reads the counter: it
    /// never creates a key, refreshes its expiry or consumes anything.
    pub hits: u64,
    /// Give `hits` back instead of consuming them; nothing goes below empty.
    pub refund: bool,
    /// How the counter counts.
    pub kind: CounterKind,
}

/// The counting algorithm of one counter. Every kind reports the same quantity: how much
/// of its capacity was in use *before* the update, so the limiter judges them all alike
/// (over limit when that plus the hits exceeds the capacity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterKind {
    /// A fixed-window count that lives `ttl_secs` from creation (set only when the key is
    /// new). With a `cap`, hits that would take it above the cap are not counted (the
    /// reference's stop-incrementing-when-over-limit mode); without, every hit counts.
    Window { ttl_secs: u64, cap: Option<u64> },
    /// A count that lives while it is used: like [`CounterKind::Window`] (same `cap`), but
    /// every charge (hits above zero, not a refund) sets its expiry to `idle_secs` from
    /// now, whether or not the cap let the hits count; a read or a refund leaves the
    /// expiry alone, and a charge the cap refuses creates no counter. The only kind whose
    /// expiry moves: a session's lifetime quota, forgotten once the session is idle.
    Idle { idle_secs: u64, cap: Option<u64> },
    /// A sliding window, estimated from two fixed windows: this window's count plus the
    /// previous window's (`previous_key`) weighted by the share of it the sliding window
    /// still covers, in millionths. Hits are counted only while the estimate stays
    /// within `limit`, so a flood does not lock the key for longer than a window.
    Sliding {
        previous_key: String,
        previous_weight_ppm: u64,
        ttl_secs: u64,
        limit: u64,
    },
    /// A token bucket as GCRA: the key holds the theoretical arrival time in microseconds.
    /// One token returns every `interval_us`; at most `capacity` are held. Tokens are
    /// taken only when all `hits` are available. `now_us` is the limiter's clock, so
    /// replicas and tests agree on time.
    Bucket {
        now_us: u64,
        interval_us: u64,
        capacity: u64,
    },
}

impl CounterUpdate {
    /// Adds `hits` to a fixed-window counter living `ttl_secs`.
    pub fn window(key: impl Into<String>, hits: u64, ttl_secs: u64) -> Self {
        Self {
            key: key.into(),
            hits,
            refund: false,
            kind: CounterKind::Window {
                ttl_secs,
                cap: None,
            },
        }
    }

    /// Gives the hits back instead.
    pub fn refunding(mut self) -> Self {
        self.refund = true;
        self
    }

    /// Adds `hits` to a counter that expires `idle_secs` after its last charge.
    pub fn idle(key: impl Into<String>, hits: u64, idle_secs: u64) -> Self {
        Self {
            key: key.into(),
            hits,
            refund: false,
            kind: CounterKind::Idle {
                idle_secs,
                cap: None,
            },
        }
    }

    /// Leaves a fixed-window or idle counter unchanged when the hits would take it above `cap`.
    pub fn capped(mut self, cap: u64) -> Self {
        if let CounterKind::Window { cap: c, .. } | CounterKind::Idle { cap: c, .. } =
            &mut self.kind
        {
            *c = Some(cap);
        }
        self
    }
}

/// GCRA: the tokens in use at `now_us` for a bucket whose theoretical arrival time is
/// `tat_us` (rounded up: a partly returned token is still in use).
pub fn bucket_in_use(tat_us: u64, now_us: u64, interval_us: u64) -> u64 {
    tat_us.saturating_sub(now_us).div_ceil(interval_us.max(1))
}

/// A sliding window's estimate: the current count plus the weighted previous count.
pub fn sliding_estimate(current: u64, previous: u64, previous_weight_ppm: u64) -> u64 {
    current.saturating_add(((previous as u128 * previous_weight_ppm as u128) / 1_000_000) as u64)
}

/// Why a store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend refused or dropped the call.
    #[error("counter store unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer inside the configured deadline.
    #[error("counter store did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// A place to keep counters. Each update in a batch is atomic on its own counter.
pub trait CounterStore: Send + Sync + 'static {
    /// Applies the updates and returns each counter's value *before* its update, in order.
    fn apply(
        &self,
        updates: &[CounterUpdate],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// Runs one atomic budget step (see [`budget`]).
    fn budget(
        &self,
        call: &BudgetCall,
    ) -> impl Future<Output = Result<BudgetReply, StoreError>> + Send;

    /// Up to `max` usage events settled but not yet acknowledged by the ledger writer,
    /// oldest first. Events read but never acknowledged are read again.
    fn outbox_pending(
        &self,
        max: usize,
    ) -> impl Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send;

    /// Acknowledges events the ledger has committed (ids from [`Self::outbox_pending`],
    /// in the order read): they are never read again.
    fn outbox_ack(&self, ids: &[String]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the last contact with the backend succeeded (health checks report this).
    fn is_healthy(&self) -> bool;
}

/// The configured store. An enum rather than a trait object: the hot path stays
/// statically dispatched and free of boxed futures.
#[derive(Clone)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    /// A short name for logs and the config dump.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }
}

impl Store {
    /// [`CounterStore::apply`] for updates the caller no longer needs: the Redis store
    /// queues them for its batcher as they are instead of copying them.
    pub async fn apply_owned(&self, updates: Vec<CounterUpdate>) -> Result<Vec<u64>, StoreError> {
        match self {
            Store::Memory(s) => Ok(s.apply_all(&updates)),
            Store::Redis(s) => s.apply_owned(updates).await,
        }
    }
}

impl CounterStore for Store {
    async fn apply(&self, updates: &[CounterUpdate]) -> Result<Vec<u64>, StoreError> {
        match self {
            Store::Memory(s) => s.apply(updates).await,
            Store::Redis(s) => s.apply(updates).await,
        }
    }

    async fn budget(&self, call: &BudgetCall) -> Result<BudgetReply, StoreError> {
        match self {
            Store::Memory(s) => s.budget(call).await,
            Store::Redis(s) => s.budget(call).await,
        }
    }

    async fn outbox_pending(&self, max: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        match self {
            Store::Memory(s) => s.outbox_pending(max).await,
            Store::Redis(s) => s.outbox_pending(max).await,
        }
    }

    async fn outbox_ack(&self, ids: &[String]) -> Result<(), StoreError> {
        match self {
            Store::Memory(s) => s.outbox_ack(ids).await,
            Store::Redis(s) => s.outbox_ack(ids).await,
        }
    }

    fn is_healthy(&self) -> bool {
        match self {
            Store::Memory(s) => s.is_healthy(),
            Store::Redis(s) => s.is_healthy(),
        }
    }
}
