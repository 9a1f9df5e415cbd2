//! The memory store's budget state: the [`super::budget`] contract under one lock.
//!
//! Budget calls are few (two per LLM request), so one mutex over all of them is simple
//! and never contended enough to matter; it makes every call atomic, the outbox write
//! included (the fsync that makes the write durable comes after the lock, see
//! [`BudgetBook::durable_end`]). The outbox is a [`FileOutbox`] when the store has one (the service always
//! does), else a queue in memory (tests of the counting alone).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use super::StoreError;
use super::budget::{BudgetCall, BudgetLine, BudgetOp, BudgetOutcome, BudgetReply, OutboxEntry};
use super::outbox::{Durability, FileOutbox};
use crate::store::budget::SWEEP_MAX;

#[derive(Debug, Clone, Copy)]
struct Count {
    value: u64,
    /// Millisecond at which the counter no longer exists.
    expires_at_ms: u64,
}

#[derive(Debug)]
struct Reservation {
    deadline_ms: u64,
    /// Reserved counter and amount, per line.
    holds: Vec<(String, u64)>,
}

/// Where settled usage events wait for the ledger writer.
#[derive(Debug)]
pub enum Outbox {
    File(FileOutbox),
    /// Not durable: for stores in tests that do not need the ledger path.
    Memory {
        next: u64,
        queue: VecDeque<OutboxEntry>,
    },
}

/// Every budget counter, marker, reservation and pending event of a memory store.
#[derive(Debug)]
pub struct BudgetBook {
    counts: HashMap<String, Count>,
    /// Markers and when they expire (ms).
    markers: HashMap<String, u64>,
    /// Settled request ids and when they are forgotten (ms).
    settled: HashMap<String, u64>,
    reservations: HashMap<String, Reservation>,
    deadlines: BTreeSet<(u64, String)>,
    outbox: Outbox,
}

impl BudgetBook {
    pub fn new(outbox: Outbox) -> BudgetBook {
        BudgetBook {
            counts: HashMap::new(),
            markers: HashMap::new(),
            settled: HashMap::new(),
            reservations: HashMap::new(),
            deadlines: BTreeSet::new(),
            outbox,
        }
    }

    /// Runs one call (see [`super::budget`] for the contract).
    pub fn call(&mut self, call: &BudgetCall) -> Result<BudgetReply, StoreError> {
        let now = call.now_ms;
        let expired = self.sweep(now);
        let outcome = self.run(call, now)?;
        let used = call
            .lines
            .iter()
            .map(|l| self.value(&l.used_key, now))
            .collect();
        let reserved = call
            .lines
            .iter()
            .map(|l| self.value(&l.reserved_key, now))
            .collect();
        Ok(BudgetReply {
            outcome,
            used,
            reserved,
            expired,
        })
    }

    fn run(&mut self, call: &BudgetCall, now: u64) -> Result<BudgetOutcome, StoreError> {
        if call.op == BudgetOp::Rebuild {
            let Some(marker) = call.markers.first() else {
                return Ok(BudgetOutcome::Done);
            };
            if !self.has_marker(marker, now) {
                let ttl = call.lines.iter().map(|l| l.ttl_secs).max().unwrap_or(1);
                self.markers
                    .insert(marker.clone(), now.saturating_add(ttl.max(1) * 1000));
                for line in &call.lines {
                    self.set(&line.used_key, line.amount, line.ttl_secs, now);
                    self.counts.remove(&line.reserved_key);
                }
            }
            return Ok(BudgetOutcome::Done);
        }
        if let Some(marker) = call.markers.iter().position(|m| !self.has_marker(m, now)) {
            return Ok(BudgetOutcome::Unbuilt { marker });
        }
        match &call.op {
            BudgetOp::Check | BudgetOp::Rebuild => Ok(BudgetOutcome::Done),
            BudgetOp::Reserve {
                request_id,
                expires_at_ms,
            } => {
                if self.reservations.contains_key(request_id) || self.is_settled(request_id, now) {
                    return Ok(BudgetOutcome::Duplicate);
                }
                let short = call.lines.iter().position(|line| {
                    line.limit.is_some_and(|limit| {
                        self.value(&line.used_key, now)
                            .saturating_add(self.value(&line.reserved_key, now))
                            .saturating_add(line.amount)
                            > limit
                    })
                });
                if let Some(line) = short {
                    return Ok(BudgetOutcome::Refused { line });
                }
                for line in &call.lines {
                    self.add(line, &line.reserved_key, now);
                }
                let holds = call
                    .lines
                    .iter()
                    .map(|l| (l.reserved_key.clone(), l.amount))
                    .collect();
                self.reservations.insert(
                    request_id.clone(),
                    Reservation {
                        deadline_ms: *expires_at_ms,
                        holds,
                    },
                );
                self.deadlines.insert((*expires_at_ms, request_id.clone()));
                Ok(BudgetOutcome::Done)
            }
            BudgetOp::Settle {
                request_id,
                event,
                settled_ttl_secs,
            } => {
                if self.is_settled(request_id, now) {
                    return Ok(BudgetOutcome::Duplicate);
                }
                // The event first: if it cannot be written, nothing is charged. (It is made
                // durable after the lock, by `MemoryStore::budget`.)
                self.append(event)?;
                self.release(request_id, now);
                for line in &call.lines {
                    self.add(line, &line.used_key, now);
                }
                self.settled.insert(
                    request_id.clone(),
                    now.saturating_add(settled_ttl_secs.saturating_mul(1000)),
                );
                Ok(BudgetOutcome::Done)
            }
        }
    }

    /// Where to wait for the events written so far to be on disk: the file outbox's group
    /// commit and its current end (none for the memory queue, which is never durable).
    pub fn durable_end(&self) -> Option<(Arc<Durability>, u64)> {
        match &self.outbox {
            Outbox::File(file) => Some((Arc::clone(file.durability()), file.end())),
            Outbox::Memory { .. } => None,
        }
    }

    /// Up to `max` events waiting for the ledger, oldest first.
    pub fn pending(&self, max: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        match &self.outbox {
            Outbox::File(file) => file.pending(max).map_err(outbox_error),
            Outbox::Memory { queue, .. } => Ok(queue.iter().take(max).cloned().collect()),
        }
    }

    /// Acknowledges the events up to and including `id`.
    pub fn ack(&mut self, id: &str) -> Result<(), StoreError> {
        match &mut self.outbox {
            Outbox::File(file) => file.ack(id).map_err(outbox_error),
            Outbox::Memory { queue, .. } => {
                let id: u64 = id
                    .parse()
                    .map_err(|_| outbox_error(format!("bad id {id}")))?;
                while queue
                    .front()
                    .is_some_and(|e| e.id.parse::<u64>().is_ok_and(|n| n <= id))
                {
                    queue.pop_front();
                }
                Ok(())
            }
        }
    }

    /// Drops expired counters, markers and settled request ids (reservations go with the
    /// sweep of every call), so memory stays bounded by what is live.
    pub fn forget_expired(&mut self, now: u64) {
        self.counts.retain(|_, c| c.expires_at_ms > now);
        self.markers.retain(|_, &mut until| until > now);
        self.settled.retain(|_, &mut until| until > now);
    }

    /// Drops the counters, markers and reservations (what a Redis flush does), keeping the
    /// outbox; for fault tests of the memory store.
    pub fn forget_counters(&mut self) {
        self.counts.clear();
        self.markers.clear();
        self.reservations.clear();
        self.deadlines.clear();
    }

    fn append(&mut self, event: &str) -> Result<(), StoreError> {
        match &mut self.outbox {
            Outbox::File(file) => file.append(event).map(drop).map_err(outbox_error),
            Outbox::Memory { next, queue } => {
                *next += 1;
                queue.push_back(OutboxEntry {
                    id: next.to_string(),
                    event: event.to_owned(),
                });
                Ok(())
            }
        }
    }

    fn has_marker(&self, marker: &str, now: u64) -> bool {
        self.markers.get(marker).is_some_and(|&until| until > now)
    }

    fn is_settled(&mut self, request_id: &str, now: u64) -> bool {
        match self.settled.get(request_id) {
            Some(&until) if until > now => true,
            Some(_) => {
                self.settled.remove(request_id);
                false
            }
            None => false,
        }
    }

    /// Releases reservations past their deadline; returns how many.
    fn sweep(&mut self, now: u64) -> u64 {
        let due: Vec<String> = self
            .deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .take(SWEEP_MAX)
            .map(|(_, id)| id.clone())
            .collect();
        for id in &due {
            self.release(id, now);
        }
        due.len() as u64
    }

    /// Gives a reservation's amounts back.
    fn release(&mut self, request_id: &str, now: u64) {
        let Some(reservation) = self.reservations.remove(request_id) else {
            return;
        };
        self.deadlines
            .remove(&(reservation.deadline_ms, request_id.to_owned()));
        for (key, amount) in reservation.holds {
            if let Some(count) = self.counts.get_mut(&key)
                && count.expires_at_ms > now
            {
                count.value = count.value.saturating_sub(amount);
            }
        }
    }

    fn value(&self, key: &str, now: u64) -> u64 {
        self.counts
            .get(key)
            .filter(|c| c.expires_at_ms > now)
            .map_or(0, |c| c.value)
    }

    /// Adds the line's amount to `key`: a new counter lives `ttl_secs`; an idle line's
    /// expiry moves with every change.
    fn add(&mut self, line: &BudgetLine, key: &str, now: u64) {
        let expires = now.saturating_add(line.ttl_secs.max(1).saturating_mul(1000));
        match self.counts.get_mut(key) {
            Some(count) if count.expires_at_ms > now => {
                count.value = count.value.saturating_add(line.amount);
                if line.idle {
                    count.expires_at_ms = expires;
                }
            }
            _ => {
                self.counts.insert(
                    key.to_owned(),
                    Count {
                        value: line.amount,
                        expires_at_ms: expires,
                    },
                );
            }
        }
    }

    fn set(&mut self, key: &str, value: u64, ttl_secs: u64, now: u64) {
        let expires_at_ms = now.saturating_add(ttl_secs.max(1).saturating_mul(1000));
        self.counts.insert(
            key.to_owned(),
            Count {
                value,
                expires_at_ms,
            },
        );
    }
}

pub(super) fn outbox_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("usage outbox: {e}"))
}
