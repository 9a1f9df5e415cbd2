//! Counter stores: where the limiter's counters live.
//!
//! The limiter owns the [`CounterStore`] contract; [`memory`] (embedded, the default) and
//! [`redis`] (shared by replicas) implement it, and `tests/store_contract.rs` runs the same
//! scenarios against both so they cannot drift. Keys are built in [`keys`] only.

pub mod keys;
pub mod memory;
pub mod redis;

use std::future::Future;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

/// One change to one counter, as part of a request's batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterUpdate {
    /// The counter's full key, from [`keys::counter_key`].
    pub key: String,
    /// How much to add (or, with `refund`, to give back). Zero only reads the counter: it
    /// never creates a key nor refreshes its expiry.
    pub hits: u64,
    /// Give `hits` back instead of consuming them; the counter never goes below zero.
    pub refund: bool,
    /// Seconds the counter lives once created; set only when the key is new.
    pub ttl_secs: u64,
    /// Leave the counter unchanged when adding `hits` would take it above this value
    /// (the reference's stop-incrementing-when-over-limit mode).
    pub cap: Option<u64>,
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

impl CounterStore for Store {
    async fn apply(&self, updates: &[CounterUpdate]) -> Result<Vec<u64>, StoreError> {
        match self {
            Store::Memory(s) => s.apply(updates).await,
            Store::Redis(s) => s.apply(updates).await,
        }
    }

    fn is_healthy(&self) -> bool {
        match self {
            Store::Memory(s) => s.is_healthy(),
            Store::Redis(s) => s.is_healthy(),
        }
    }
}
