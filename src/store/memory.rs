//! The embedded counter store: counters in this process only.
//!
//! Accuracy: exact for this replica; replicas do not share counts (use Redis for a
//! global limit). Each counter is updated under its map shard's lock, so concurrent
//! requests never lose an increment. A counter expires when its window has passed;
//! [`MemoryStore::sweep`] drops expired counters, and a background task started by
//! [`MemoryStore::spawn_sweeper`] calls it so memory stays bounded by the live windows.
//!
//! Counters are found by a [`Digest`] of their key rather than by the key itself: 16
//! bytes held in the map's own table instead of a string on the heap that every lookup
//! follows and compares. That made a counter less than half as large (about 100 bytes
//! instead of 239) and the lookup cheaper (the string compare was 40 % of the map's
//! time). Two keys share a counter only if their digests collide, which for a keyed
//! 128-bit SipHash is about n^2 / 2^129 for n live counters (10^-20 for a billion) and
//! cannot be steered by a caller who does not know the process's random key.

use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use siphasher::sip128::{Hasher128, SipHasher13};

use super::budget::{BudgetCall, BudgetOp, BudgetReply, OutboxEntry};
use super::budget_book::{BudgetBook, Outbox, outbox_error};
use super::outbox::FileOutbox;
use super::{
    CounterKind, CounterStore, CounterUpdate, StoreError, bucket_in_use, sliding_estimate,
};
use crate::clock::SharedClock;

#[derive(Debug, Clone, Copy)]
struct Slot {
    count: u64,
    /// First second (since the epoch) at which the counter no longer exists.
    expires_at: u64,
}

/// When a written counter expires.
#[derive(Debug, Clone, Copy)]
enum Expiry {
    /// At this second if the write creates the counter; an existing one keeps its own.
    IfNew(u64),
    /// At this second, always (a token bucket lives until it is full again).
    At(u64),
}

/// A counter key's identity in the map: SipHash-1-3, 128 bits, under the store's key.
type Digest = u128;

/// Digests counter keys under a key of the store's own, drawn at random.
#[derive(Clone, Copy)]
struct KeyDigest(SipHasher13);

impl KeyDigest {
    fn random() -> Self {
        Self(SipHasher13::new_with_keys(rand::random(), rand::random()))
    }

    fn of(&self, key: &str) -> Digest {
        let mut hasher = self.0;
        hasher.write(key.as_bytes());
        hasher.finish128().as_u128()
    }
}

/// Hashes a digest for the map: its low 64 bits, already uniform (SipHash a second time
/// would add nothing but time).
#[derive(Default)]
struct DigestBits(u64);

impl Hasher for DigestBits {
    fn finish(&self) -> u64 {
        self.0
    }

    // Digests arrive through `write_u128`; this only keeps any other input well-defined.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, digest: u128) {
        self.0 = digest as u64;
    }
}

type Slots = DashMap<Digest, Slot, BuildHasherDefault<DigestBits>>;

/// Counters in a concurrent map, expiring by the injected clock.
#[derive(Clone)]
pub struct MemoryStore {
    slots: Arc<Slots>,
    digest: KeyDigest,
    /// Budget counters, reservations and the usage outbox, under one lock.
    budgets: Arc<Mutex<BudgetBook>>,
    clock: SharedClock,
}

impl MemoryStore {
    /// An empty store reading time from `clock`, whose usage outbox is kept in memory
    /// only (lost with the process: for tests that do not need the ledger path).
    pub fn new(clock: SharedClock) -> Self {
        let outbox = Outbox::Memory {
            next: 0,
            queue: Default::default(),
        };
        Self::with(clock, outbox)
    }

    /// An empty store whose usage outbox is the file at `path` (created if absent; events
    /// left there by an earlier run are pending again).
    pub fn with_outbox_file(clock: SharedClock, path: &Path) -> std::io::Result<Self> {
        Ok(Self::with(clock, Outbox::File(FileOutbox::open(path)?)))
    }

    fn with(clock: SharedClock, outbox: Outbox) -> Self {
        Self {
            slots: Arc::new(Slots::default()),
            digest: KeyDigest::random(),
            budgets: Arc::new(Mutex::new(BudgetBook::new(outbox))),
            clock,
        }
    }

    /// Forgets every counter, budget counter, marker and reservation, as a Redis flush
    /// would, but keeps the outbox (for tests of the rebuild).
    pub fn forget_counters(&self) {
        self.slots.clear();
        self.book().forget_counters();
    }

    fn book(&self) -> std::sync::MutexGuard<'_, BudgetBook> {
        self.budgets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the budget book on a blocking thread.
    async fn with_book_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut BudgetBook) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let budgets = Arc::clone(&self.budgets);
        tokio::task::spawn_blocking(move || {
            f(&mut budgets.lock().unwrap_or_else(|e| e.into_inner()))
        })
        .await
        .map_err(outbox_error)?
    }

    /// Drops every expired counter, budget counter, marker and settled request id.
    pub fn sweep(&self) {
        let now = self.clock.now_secs();
        self.slots.retain(|_, slot| slot.expires_at > now);
        self.book()
            .forget_expired(self.clock.now_nanos() / 1_000_000);
    }

    /// Number of counters held, expired or not (for tests and the memory report).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Sweeps every `every` until the store is dropped, on a blocking thread: a sweep
    /// walks every counter (a million take milliseconds), and the runtime's workers keep
    /// serving meanwhile (a request whose counter's map shard is being swept still waits
    /// for that shard).
    pub fn spawn_sweeper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let (slots, budgets) = (Arc::downgrade(&self.slots), Arc::downgrade(&self.budgets));
        let (clock, digest) = (self.clock.clone(), self.digest);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Holds the store only while sweeping, so dropping it ends the task.
                let (Some(slots), Some(budgets)) = (slots.upgrade(), budgets.upgrade()) else {
                    return;
                };
                let store = MemoryStore {
                    slots,
                    digest,
                    budgets,
                    clock: clock.clone(),
                };
                if tokio::task::spawn_blocking(move || store.sweep())
                    .await
                    .is_err()
                {
                    tracing::error!("the memory store's sweep panicked");
                }
            }
        })
    }

    /// Applies `updates` in order.
    pub fn apply_all(&self, updates: &[CounterUpdate]) -> Vec<u64> {
        let now = self.clock.now_secs();
        updates.iter().map(|u| self.apply_one(u, now)).collect()
    }

    fn apply_one(&self, update: &CounterUpdate, now_secs: u64) -> u64 {
        let hits = update.hits;
        let refund = update.refund;
        match &update.kind {
            CounterKind::Window { ttl_secs, cap } => self.update(&update.key, now_secs, |count| {
                let before = count.unwrap_or(0);
                let after = if hits == 0 {
                    None
                } else if refund {
                    count.map(|c| c.saturating_sub(hits))
                } else if cap.is_none_or(|cap| before.saturating_add(hits) <= cap) {
                    Some(before.saturating_add(hits))
                } else {
                    None
                };
                (
                    before,
                    after.map(|a| (a, Expiry::IfNew(now_secs + ttl_secs.max(&1)))),
                )
            }),
            CounterKind::Idle { idle_secs, cap } => self.update(&update.key, now_secs, |count| {
                let before = count.unwrap_or(0);
                let refreshed = Expiry::At(now_secs + idle_secs.max(&1));
                let write = if hits == 0 {
                    None
                } else if refund {
                    // An existing counter keeps its expiry (`IfNew` on a live slot).
                    count.map(|c| (c.saturating_sub(hits), Expiry::IfNew(now_secs)))
                } else if cap.is_none_or(|cap| before.saturating_add(hits) <= cap) {
                    Some((before.saturating_add(hits), refreshed))
                } else {
                    // Not counted, but the session is in use: only the expiry moves.
                    count.map(|c| (c, refreshed))
                };
                (before, write)
            }),
            CounterKind::Sliding {
                previous_key,
                previous_weight_ppm,
                ttl_secs,
                limit,
            } => {
                // The previous window is closed, so reading it apart from the update is safe.
                let previous = self.read(previous_key, now_secs).unwrap_or(0);
                self.update(&update.key, now_secs, |count| {
                    let current = count.unwrap_or(0);
                    let before = sliding_estimate(current, previous, *previous_weight_ppm);
                    let after = if hits == 0 {
                        None
                    } else if refund {
                        count.map(|c| c.saturating_sub(hits))
                    } else if before.saturating_add(hits) <= *limit {
                        Some(current.saturating_add(hits))
                    } else {
                        None
                    };
                    (
                        before,
                        after.map(|a| (a, Expiry::IfNew(now_secs + ttl_secs.max(&1)))),
                    )
                })
            }
            CounterKind::Bucket {
                now_us,
                interval_us,
                capacity,
            } => self.update(&update.key, now_secs, |stored| {
                // A zero interval reads as 1 us, as in `bucket_in_use` and the Redis script;
                // taken as zero it would make every take free.
                let interval = (*interval_us).max(1);
                let tat = stored.unwrap_or(*now_us).max(*now_us);
                let in_use = bucket_in_use(tat, *now_us, interval);
                let cost = hits.saturating_mul(interval);
                let new_tat = if hits == 0 {
                    None
                } else if refund {
                    stored.map(|_| tat.saturating_sub(cost).max(*now_us))
                } else if in_use.saturating_add(hits) <= *capacity {
                    Some(tat.saturating_add(cost))
                } else {
                    None
                };
                // The bucket is full again (and forgettable) once the clock reaches its TAT.
                (
                    in_use,
                    new_tat.map(|t| (t, Expiry::At(t.div_ceil(1_000_000) + 1))),
                )
            }),
        }
    }

    /// The live value of `key`, if any.
    fn read(&self, key: &str, now_secs: u64) -> Option<u64> {
        self.slots
            .get(&self.digest.of(key))
            .filter(|slot| slot.expires_at > now_secs)
            .map(|slot| slot.count)
    }

    /// Runs `f` on the live value of `key` (`None` when absent or expired) under the
    /// key's lock, and stores the new value and expiry `f` returns, if any. One lookup.
    fn update<R>(
        &self,
        key: &str,
        now_secs: u64,
        f: impl FnOnce(Option<u64>) -> (R, Option<(u64, Expiry)>),
    ) -> R {
        match self.slots.entry(self.digest.of(key)) {
            // Live, or expired and not yet swept.
            Entry::Occupied(mut e) => {
                let live = (e.get().expires_at > now_secs).then_some(e.get().count);
                let (out, write) = f(live);
                match write {
                    Some((count, expiry)) => {
                        let expires_at = match (expiry, live) {
                            (Expiry::IfNew(_), Some(_)) => e.get().expires_at,
                            (Expiry::IfNew(at) | Expiry::At(at), _) => at,
                        };
                        *e.get_mut() = Slot { count, expires_at };
                    }
                    None if live.is_none() => {
                        e.remove();
                    }
                    None => {}
                }
                out
            }
            Entry::Vacant(e) => {
                let (out, write) = f(None);
                if let Some((count, Expiry::IfNew(expires_at) | Expiry::At(expires_at))) = write {
                    e.insert(Slot { count, expires_at });
                }
                out
            }
        }
    }
}

impl CounterStore for MemoryStore {
    async fn apply(&self, updates: &[CounterUpdate]) -> Result<Vec<u64>, StoreError> {
        Ok(self.apply_all(updates))
    }

    async fn budget(&self, call: &BudgetCall) -> Result<BudgetReply, StoreError> {
        let (reply, durable) = {
            let mut book = self.book();
            let reply = book.call(call)?;
            let settles = matches!(call.op, BudgetOp::Settle { .. });
            (reply, settles.then(|| book.durable_end()).flatten())
        };
        // A settlement, new or repeated, is answered only once its event is on disk;
        // concurrent ones share the fsync.
        if let Some((durability, end)) = durable {
            durability.wait(end).await.map_err(outbox_error)?;
        }
        Ok(reply)
    }

    // The outbox's file work runs on a blocking thread (an acknowledgement fsyncs), so
    // the runtime serves other requests meanwhile.
    async fn outbox_pending(&self, max: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.with_book_blocking(move |book| book.pending(max)).await
    }

    async fn outbox_ack(&self, ids: &[String]) -> Result<(), StoreError> {
        match ids.last() {
            Some(last) => {
                let last = last.clone();
                self.with_book_blocking(move |book| book.ack(&last)).await
            }
            None => Ok(()),
        }
    }

    fn is_healthy(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_has_one_digest_per_store_and_a_different_one_in_another_store() {
        let (one, other) = (KeyDigest::random(), KeyDigest::random());
        let key = "tollgate:api:api_key_k1:1800000000";
        assert_eq!(one.of(key), one.of(key));
        assert_ne!(one.of(key), one.of("tollgate:api:api_key_k2:1800000000"));
        // Keyed per store: a caller cannot compute which keys would collide.
        assert_ne!(one.of(key), other.of(key));
    }
}
