//! Read-your-writes for the in-memory policy: a change committed through this process's
//! ledger is in force in this process's decisions before [`Ledger::commit_change`]
//! returns, so an admin call that answered is already enforced here (other replicas
//! follow through notifications, within the propagation target).
//!
//! The ledger numbers the changes it commits; the policy loader reads that number before
//! it reads the ledger and, once the new snapshot is in force, reports it as applied.
//! `commit_change` waits (bounded) for its change's number to be applied, but only while
//! a loader follows; a ledger without one never waits.
//!
//! [`Ledger::commit_change`]: super::Ledger::commit_change

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// Longest a committed change waits to be applied locally; past it the writer goes on
/// (the change still propagates, as any other would).
pub const APPLY_WAIT: Duration = Duration::from_secs(1);

/// Shared by a ledger and its clones.
pub(super) struct Tracker {
    committed: AtomicU64,
    applied: watch::Sender<u64>,
    followers: AtomicUsize,
}

impl Tracker {
    pub(super) fn new() -> Arc<Tracker> {
        Arc::new(Tracker {
            committed: AtomicU64::new(0),
            applied: watch::Sender::new(0),
            followers: AtomicUsize::new(0),
        })
    }

    /// Counts a committed change; its number.
    pub(super) fn record(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Waits until a follower applied change `seq`, at most [`APPLY_WAIT`]; at once when
    /// nothing follows.
    pub(super) async fn wait_applied(&self, seq: u64) {
        if self.followers.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut applied = self.applied.subscribe();
        if tokio::time::timeout(APPLY_WAIT, applied.wait_for(|a| *a >= seq))
            .await
            .is_err()
        {
            tracing::warn!(
                change = seq,
                "a committed change was not applied to the local policy in time"
            );
        }
    }
}

/// Held by whoever keeps the in-memory policy (one per process): reports which
/// committed changes are in force. Dropping it stops writers from waiting.
pub struct ChangeFollower {
    tracker: Arc<Tracker>,
}

impl ChangeFollower {
    pub(super) fn new(tracker: Arc<Tracker>) -> ChangeFollower {
        tracker.followers.fetch_add(1, Ordering::SeqCst);
        ChangeFollower { tracker }
    }

    /// How many changes this process has committed; read it before reading the ledger.
    pub fn committed(&self) -> u64 {
        self.tracker.committed.load(Ordering::SeqCst)
    }

    /// Every change up to `seq` is now in force.
    pub fn applied(&self, seq: u64) {
        self.tracker.applied.send_if_modified(|a| {
            let newer = seq > *a;
            if newer {
                *a = seq;
            }
            newer
        });
    }
}

impl Drop for ChangeFollower {
    fn drop(&mut self) {
        self.tracker.followers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_writer_without_a_follower_never_waits() {
        let tracker = Tracker::new();
        let seq = tracker.record();
        tokio::time::timeout(Duration::from_millis(50), tracker.wait_applied(seq))
            .await
            .expect("no wait");
    }

    #[tokio::test]
    async fn a_writer_waits_until_its_change_is_applied() {
        let tracker = Tracker::new();
        let follower = ChangeFollower::new(tracker.clone());
        let seq = tracker.record();
        let waiting = tokio::spawn({
            let tracker = tracker.clone();
            async move { tracker.wait_applied(seq).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(follower.committed(), seq);
        follower.applied(seq);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
    }
}
