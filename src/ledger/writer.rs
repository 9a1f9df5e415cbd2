//! The ledger writer: moves settled usage events from the counter store's outbox into the
//! ledger, so that usage counted in the store always reaches the ledger ("nothing lost").
//!
//! Settling a request charges its counters and appends its usage event to the store's
//! outbox in one atomic step (see [`crate::store::budget`]); that step never touches the
//! ledger database, so settlements go on while PostgreSQL is down. The writer then, batch
//! by batch, reads the oldest pending events, records the valid ones in one transaction
//! ([`Ledger::record_usage`], idempotent by request id) and acknowledges the batch only
//! after that commit. A crash or an error between commit and acknowledgement makes the
//! batch pending again, and the idempotent insert records each event once: delivery is
//! at least once, recording exactly once.
//!
//! An event that cannot be parsed or validated can never be recorded, so it must not block
//! the events behind it: it is logged at error with its raw text, counted
//! (`tollgate_ledger_writer_invalid_total`) and acknowledged with its batch.
//!
//! [`LedgerWriter::spawn`] drains on an interval and whenever [`LedgerWriter::notify`]
//! wakes it (after each settlement), starting at most every [`MIN_GAP`]; on errors it
//! backs off exponentially and logs once per outage (then at most every
//! [`WARN_EVERY`]). [`LedgerWriter::drain`] can also be called directly, e.g. to make
//! the ledger complete before rebuilding counters from it; drains are serialised, so
//! both never interleave.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::usage::UsageEvent;
use super::{Ledger, LedgerError};
use crate::store::budget::OutboxEntry;
use crate::store::{CounterStore, Store, StoreError};
use crate::telemetry::LedgerWriterStats;

/// Most events read, recorded and acknowledged together.
pub const BATCH: usize = 256;
/// Drains woken by settlements start at most this often. Under load the events of this
/// gap then share a few full batches (a commit, an fsync and each index page written once
/// per batch) instead of a transaction per handful of events, which cost the SQLite
/// ledger 40 % of the server's CPU at 8,000 settlements a second (100 ms measured about
/// 10 % more token-budget throughput than 20 ms; larger batches added nothing). It only
/// delays the ledger; settlements never wait for the writer.
pub const MIN_GAP: Duration = Duration::from_millis(100);
/// The first retry delay after a failed drain; it doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest retry delay while the store or the ledger keeps failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// While drains keep failing, how often the outage is logged again.
pub const WARN_EVERY: Duration = Duration::from_secs(60);
/// Longest raw event text logged for an invalid event (the rest is elided).
const MAX_LOGGED_EVENT: usize = 4_096;

/// Why a drain stopped. The events it had not acknowledged stay in the outbox.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("cannot read or acknowledge the usage outbox: {0}")]
    Outbox(#[from] StoreError),
    #[error("cannot record usage in the ledger: {0}")]
    Ledger(#[from] LedgerError),
}

/// Moves usage events from a store's outbox into a ledger.
pub struct LedgerWriter {
    store: Store,
    ledger: Ledger,
    stats: LedgerWriterStats,
    batch: usize,
    /// One drain at a time: the loop's and any direct caller's.
    draining: Mutex<()>,
    wake: Arc<Notify>,
}

impl LedgerWriter {
    /// A writer from `store`'s outbox into `ledger`, counting into `stats`.
    pub fn new(store: Store, ledger: Ledger, stats: LedgerWriterStats) -> LedgerWriter {
        LedgerWriter {
            store,
            ledger,
            stats,
            batch: BATCH,
            draining: Mutex::new(()),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Reads at most `max` events per batch instead of [`BATCH`] (at least 1).
    pub fn with_batch(mut self, max: usize) -> LedgerWriter {
        self.batch = max.max(1);
        self
    }

    /// Wakes the background loop to drain now (call after a settlement). A wake while a
    /// drain runs is kept, so an event appended after that drain's last read is not left
    /// waiting for the next tick.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// The loop's wake-up, for a caller that should not depend on the ledger module
    /// (the limiter): `notify_one()` on it is [`LedgerWriter::notify`].
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Moves every event pending when called into the ledger, batch by batch, until a
    /// read returns less than a full batch (by then it has read them all; what arrives
    /// later waits for the next drain, so that under load a trickle of new events is not
    /// written one small transaction after another); how many events were inserted
    /// (duplicates and invalid events not counted). On an error, what was committed is
    /// kept and the rest stays pending.
    pub async fn drain(&self) -> Result<usize, WriterError> {
        let _one_at_a_time = self.draining.lock().await;
        let mut inserted = 0;
        loop {
            let entries = self.store.outbox_pending(self.batch).await?;
            self.stats.backlog.set(entries.len() as f64);
            if entries.is_empty() {
                return Ok(inserted);
            }
            inserted += self.write_batch(&entries).await?;
            if entries.len() < self.batch {
                self.stats.backlog.set(0.0);
                return Ok(inserted);
            }
        }
    }

    /// Records one batch's valid events, then acknowledges the whole batch.
    async fn write_batch(&self, entries: &[OutboxEntry]) -> Result<usize, WriterError> {
        let mut events = Vec::with_capacity(entries.len());
        let mut invalid = 0u64;
        for entry in entries {
            match parse_event(&entry.event) {
                Ok(event) => events.push(event),
                Err(problem) => {
                    invalid += 1;
                    tracing::error!(
                        outbox_id = %entry.id,
                        %problem,
                        event = %elide(&entry.event, MAX_LOGGED_EVENT),
                        "a usage event in the outbox can never be recorded: skipped and acknowledged"
                    );
                }
            }
        }
        let outcome = if events.is_empty() {
            Default::default()
        } else {
            self.ledger.record_usage(&events).await?
        };
        // Only now that the ledger has committed them may the events leave the outbox.
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        self.store.outbox_ack(&ids).await?;
        self.stats.events.increment(outcome.inserted as u64);
        self.stats.duplicates.increment(outcome.duplicates as u64);
        self.stats.invalid.increment(invalid);
        if outcome.duplicates > 0 {
            tracing::debug!(
                request_ids = ?outcome.duplicate_request_ids,
                "usage events already in the ledger"
            );
        }
        Ok(outcome.inserted)
    }

    /// Drains every `every` and whenever woken (a woken drain no sooner than [`MIN_GAP`]
    /// after the previous one began), until `stop` is cancelled; then drains one last time
    /// (an attempt in flight when `stop` comes is abandoned first: its batch is
    /// acknowledged only after a commit, so it is simply read again).
    pub fn spawn(
        self: Arc<Self>,
        every: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut outage = Outage::default();
            loop {
                let started = tokio::time::Instant::now();
                let attempt = tokio::select! {
                    () = stop.cancelled() => break,
                    attempt = self.drain() => attempt,
                };
                match attempt {
                    Ok(_) => {
                        outage.recovered();
                        let woken = tokio::select! {
                            () = stop.cancelled() => break,
                            () = self.wake.notified() => true,
                            () = tokio::time::sleep(every) => false,
                        };
                        if woken {
                            tokio::select! {
                                () = stop.cancelled() => break,
                                () = tokio::time::sleep_until(started + MIN_GAP) => {}
                            }
                        }
                    }
                    Err(error) => {
                        self.stats.errors.increment(1);
                        // Wakes are ignored while failing: a burst of settlements must not
                        // turn the backoff into a hot loop against a database that is down.
                        let delay = outage.failed(&error, Instant::now());
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
            match self.drain().await {
                Ok(inserted) => {
                    tracing::info!(inserted, "ledger writer stopped; the outbox is drained")
                }
                Err(error) => {
                    self.stats.errors.increment(1);
                    tracing::warn!(
                        %error,
                        "ledger writer stopped; usage events left in the outbox are written after the next start"
                    );
                }
            }
        })
    }
}

/// The background loop's view of consecutive failures: the retry delay and when to log.
#[derive(Debug, Default)]
struct Outage {
    /// When the current outage began and how many attempts failed since.
    since: Option<(Instant, u64)>,
    last_warned: Option<Instant>,
    backoff: Duration,
}

impl Outage {
    /// Counts a failed attempt at `now` (logging it when due); how long to wait.
    fn failed(&mut self, error: &WriterError, now: Instant) -> Duration {
        let (began, attempts) = self.since.get_or_insert((now, 0));
        *attempts += 1;
        let (began, attempts) = (*began, *attempts);
        if attempts == 1 {
            tracing::warn!(
                %error,
                "ledger writer cannot move usage events into the ledger; they stay in the outbox and are retried"
            );
            self.last_warned = Some(now);
        } else if self
            .last_warned
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            tracing::warn!(
                %error,
                attempts,
                failing_for = ?now.duration_since(began),
                "ledger writer still cannot move usage events into the ledger"
            );
            self.last_warned = Some(now);
        }
        self.backoff = next_backoff(self.backoff);
        self.backoff
    }

    /// A drain succeeded: ends the outage (logging it if there was one).
    fn recovered(&mut self) {
        if let Some((began, attempts)) = self.since.take() {
            tracing::info!(
                failed_attempts = attempts,
                failing_for = ?began.elapsed(),
                "ledger writer recovered; pending usage events are written"
            );
        }
        self.last_warned = None;
        self.backoff = Duration::ZERO;
    }
}

/// The delay after `current`: [`MIN_BACKOFF`] first, then doubling up to [`MAX_BACKOFF`].
fn next_backoff(current: Duration) -> Duration {
    if current.is_zero() {
        MIN_BACKOFF
    } else {
        (current * 2).min(MAX_BACKOFF)
    }
}

/// An outbox entry's event, or why it can never be recorded.
pub fn parse_event(text: &str) -> Result<UsageEvent, String> {
    let event: UsageEvent =
        serde_json::from_str(text).map_err(|e| format!("not a usage event: {e}"))?;
    event
        .validate()
        .map_err(|invalid| format!("invalid {}: {}", invalid.field, invalid.message))?;
    Ok(event)
}

/// `text`, cut at a character boundary after at most `max` bytes.
fn elide(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::usage::UsageLine;

    fn event() -> UsageEvent {
        UsageEvent {
            request_id: "r-9".into(),
            tenant_id: "acme".into(),
            session_id: Some("s-123".into()),
            model: Some("claude-sonnet".into()),
            domain: Some("ai-gateway".into()),
            occurred_at: 1_795_305_600_000,
            currency: "USD".into(),
            lines: vec![UsageLine {
                token_type: "input".into(),
                tokens: 1_200,
                cost_micros: 3_600,
            }],
        }
    }

    #[test]
    fn a_valid_event_parses_back_to_itself() {
        let text = serde_json::to_string(&event()).unwrap();
        assert_eq!(parse_event(&text), Ok(event()));
    }

    #[test]
    fn unparsable_invalid_and_unstorable_events_say_why() {
        assert!(
            parse_event("not json")
                .unwrap_err()
                .starts_with("not a usage event")
        );
        let mut bad = event();
        bad.currency = "usd".into();
        let text = serde_json::to_string(&bad).unwrap();
        assert!(parse_event(&text).unwrap_err().contains("currency"));
        let mut nul = event();
        nul.session_id = Some("s\u{0}1".into());
        let text = serde_json::to_string(&nul).unwrap();
        assert!(parse_event(&text).unwrap_err().contains("NUL"));
    }

    #[test]
    fn the_backoff_doubles_from_its_minimum_up_to_its_cap() {
        let mut delay = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..8 {
            delay = next_backoff(delay);
            seen.push(delay.as_millis());
        }
        assert_eq!(seen, [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000]);
    }

    #[test]
    fn an_outage_warns_once_then_at_most_every_interval_and_resets_on_recovery() {
        let error = || WriterError::Outbox(StoreError::Unavailable("down".into()));
        let start = Instant::now();
        let mut outage = Outage::default();
        assert_eq!(outage.failed(&error(), start), MIN_BACKOFF);
        assert_eq!(outage.last_warned, Some(start));
        outage.failed(&error(), start + Duration::from_secs(1));
        assert_eq!(outage.last_warned, Some(start), "not warned again so soon");
        let later = start + WARN_EVERY + Duration::from_secs(1);
        outage.failed(&error(), later);
        assert_eq!(outage.last_warned, Some(later));
        assert_eq!(outage.since, Some((start, 3)));
        outage.recovered();
        assert_eq!(outage.since, None);
        assert_eq!(
            outage.failed(&error(), later),
            MIN_BACKOFF,
            "backoff starts over"
        );
    }

    #[test]
    fn long_events_are_elided_at_a_character_boundary() {
        assert_eq!(elide("short", 10), "short");
        assert_eq!(elide("ééé", 3), "é... (6 bytes)");
    }
}
