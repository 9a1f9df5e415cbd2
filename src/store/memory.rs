//! The embedded counter store: counters in this process only.
//!
//! Accuracy: exact for this replica; replicas do not share counts (use Redis for a
//! global limit). Each counter is updated under its map shard's lock, so concurrent
//! requests never lose an increment. A counter expires when its window has passed;
//! [`MemoryStore::sweep`] drops expired counters, and a background task started by
//! [`MemoryStore::spawn_sweeper`] calls it so memory stays bounded by the live windows.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::{CounterStore, CounterUpdate, StoreError};
use crate::clock::SharedClock;

#[derive(Debug, Clone, Copy)]
struct Slot {
    count: u64,
    /// First second (since the epoch) at which the counter no longer exists.
    expires_at: u64,
}

/// Counters in a concurrent map, expiring by the injected clock.
#[derive(Clone)]
pub struct MemoryStore {
    slots: Arc<DashMap<String, Slot>>,
    clock: SharedClock,
}

impl MemoryStore {
    /// An empty store reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            slots: Arc::new(DashMap::new()),
            clock,
        }
    }

    /// Drops every expired counter.
    pub fn sweep(&self) {
        let now = self.clock.now_secs();
        self.slots.retain(|_, slot| slot.expires_at > now);
    }

    /// Number of counters held, expired or not (for tests and the memory report).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Sweeps every `every` until the store is dropped.
    pub fn spawn_sweeper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let slots = Arc::downgrade(&self.slots);
        let clock = self.clock.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(slots) = slots.upgrade() else { return };
                let now = clock.now_secs();
                slots.retain(|_, slot| slot.expires_at > now);
            }
        })
    }

    fn apply_one(&self, update: &CounterUpdate, now: u64) -> u64 {
        if update.hits == 0 {
            // A check-only read: never creates a counter nor extends its life.
            return match self.slots.get(&update.key) {
                Some(slot) if slot.expires_at > now => slot.count,
                _ => 0,
            };
        }
        let fresh = Slot {
            count: 0,
            expires_at: now + update.ttl_secs.max(1),
        };
        let mut slot = match self.slots.entry(update.key.clone()) {
            Entry::Occupied(mut e) => {
                if e.get().expires_at <= now {
                    e.insert(fresh);
                }
                e.into_ref()
            }
            Entry::Vacant(e) => e.insert(fresh),
        };
        let before = slot.count;
        if update.refund {
            slot.count = before.saturating_sub(update.hits);
        } else if update.cap.is_none_or(|cap| before.saturating_add(update.hits) <= cap) {
            slot.count = before.saturating_add(update.hits);
        }
        before
    }
}

impl CounterStore for MemoryStore {
    async fn apply(&self, updates: &[CounterUpdate]) -> Result<Vec<u64>, StoreError> {
        let now = self.clock.now_secs();
        Ok(updates.iter().map(|u| self.apply_one(u, now)).collect())
    }

    fn is_healthy(&self) -> bool {
        true
    }
}
