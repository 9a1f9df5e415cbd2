//! Keeps the current policy in step with the ledger.
//!
//! [`start`] loads the first snapshot (an error if the ledger cannot be read: the service
//! would otherwise refuse every tenant) and spawns a task that reloads it:
//! - on every announced change ([`Ledger::changes`]: this process's commits, and with
//!   PostgreSQL every replica's, through `LISTEN/NOTIFY`). A burst is coalesced: all
//!   announcements queued when a reload starts are covered by that one read, and those
//!   arriving during it cause exactly one more;
//! - every `resync` period, as a backstop for lost notifications (a listener that is
//!   reconnecting, a dropped connection);
//! - after a failure, with a backoff from [`RETRY_MIN`] up to the resync period.
//!
//! A failed reload keeps the previous snapshot in force; it is logged and counted in
//! `tollgate_policy_reload_error`. Each good one is counted in
//! `tollgate_policy_reload_success`, and reported to the ledger as applied so a writer in
//! this process sees its change enforced before its commit returns.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::{Instant, MissedTickBehavior};

use super::{CurrentPolicy, Policy, PolicySources};
use crate::ledger::follow::ChangeFollower;
use crate::ledger::{Ledger, LedgerError};
use crate::telemetry::PolicyStats;

/// The first retry after a failed reload; it doubles up to the resync period.
pub const RETRY_MIN: Duration = Duration::from_millis(250);

/// Longest one reload may take before it counts as failed.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a reload failed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("reading the ledger took longer than {0:?}")]
    Timeout(Duration),
}

/// The running loader: the current policy, and the task that keeps it fresh. Dropping it
/// stops the task.
pub struct PolicyLoader {
    current: CurrentPolicy,
    task: tokio::task::JoinHandle<()>,
}

impl PolicyLoader {
    /// The policy in force, for the limiter.
    pub fn current(&self) -> &CurrentPolicy {
        &self.current
    }
}

impl Drop for PolicyLoader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Loads the policy from `ledger` and keeps it fresh until the loader is dropped.
pub async fn start(
    ledger: Ledger,
    resync: Duration,
    stats: PolicyStats,
) -> Result<PolicyLoader, ReloadError> {
    // Subscribed before the first read, so no change can fall between the two.
    let changes = ledger.changes();
    let follower = ledger.follow();
    let current = super::empty();
    let mut reloader = Reloader {
        ledger,
        follower,
        current: current.clone(),
        stats,
        generation: 0,
    };
    reloader
        .reload()
        .await
        .inspect_err(|_| reloader.stats.reload_error.increment(1))?;
    let task = tokio::spawn(reloader.run(changes, resync.max(Duration::from_millis(1))));
    Ok(PolicyLoader { current, task })
}

struct Reloader {
    ledger: Ledger,
    follower: ChangeFollower,
    current: CurrentPolicy,
    stats: PolicyStats,
    generation: u64,
}

impl Reloader {
    /// Reads the whole policy and swaps it in.
    async fn reload(&mut self) -> Result<(), ReloadError> {
        // Every change counted here was committed before the read below begins.
        let committed = self.follower.committed();
        let sources = tokio::time::timeout(RELOAD_TIMEOUT, PolicySources::read(&self.ledger))
            .await
            .map_err(|_| ReloadError::Timeout(RELOAD_TIMEOUT))??;
        self.generation += 1;
        let policy = Policy::compile(sources, self.generation);
        self.stats.tenants.set(policy.tenant_count() as f64);
        tracing::debug!(
            generation = policy.generation(),
            tenants = policy.tenant_count(),
            "policy loaded"
        );
        self.current.store(Arc::new(policy));
        self.follower.applied(committed);
        self.stats.reload_success.increment(1);
        Ok(())
    }

    async fn run(mut self, mut changes: broadcast::Receiver<()>, resync: Duration) {
        let mut resync_timer = tokio::time::interval_at(Instant::now() + resync, resync);
        resync_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut retry_at: Option<Instant> = None;
        let mut backoff = RETRY_MIN.min(resync);
        let mut listening = true;
        loop {
            let retry_due = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                received = changes.recv(), if listening => {
                    if let Err(RecvError::Closed) = received {
                        // No more announcements can come; the resync keeps the policy fresh.
                        listening = false;
                        continue;
                    }
                    // A lag lost announcements, but one reload covers them all.
                }
                _ = resync_timer.tick() => {}
                () = retry_due => {}
            }
            // Coalesce: everything announced so far is covered by the read below.
            while let Ok(()) | Err(TryRecvError::Lagged(_)) = changes.try_recv() {}
            match self.reload().await {
                Ok(()) => {
                    retry_at = None;
                    backoff = RETRY_MIN.min(resync);
                    resync_timer.reset();
                }
                Err(error) => {
                    self.stats.reload_error.increment(1);
                    tracing::error!(%error, retry_in = ?backoff, "policy reload failed; keeping the previous policy");
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(resync);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::ledger::tenants::{NewTenant, TenantStatus};
    use crate::telemetry::Metrics;

    async fn sqlite_ledger(dir: &tempfile::TempDir) -> Ledger {
        let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
        let ledger = Ledger::connect(&url, Arc::new(SystemClock)).await.unwrap();
        ledger.migrate().await.unwrap();
        ledger
    }

    fn new_tenant(id: &str) -> NewTenant {
        NewTenant {
            id: id.into(),
            name: format!("{id} Inc."),
            cost_centre: None,
            currency: "EUR".into(),
            timezone: "UTC".into(),
            plan: Default::default(),
        }
    }

    fn status_of(loader: &PolicyLoader, id: &str) -> Option<TenantStatus> {
        loader.current().load().tenant(id).map(|t| t.status)
    }

    #[tokio::test]
    async fn the_first_snapshot_holds_the_ledger_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = sqlite_ledger(&dir).await;
        ledger
            .create_tenant("test", &new_tenant("acme"))
            .await
            .unwrap();
        let metrics = Metrics::new();
        let loader = start(ledger, Duration::from_secs(60), metrics.policy.clone())
            .await
            .unwrap();
        assert_eq!(status_of(&loader, "acme"), Some(TenantStatus::Pending));
        assert_eq!(loader.current().load().generation(), 1);
        assert!(
            metrics.render().contains("tollgate_policy_tenants 1"),
            "{}",
            metrics.render()
        );
    }

    #[tokio::test]
    async fn a_committed_change_is_in_force_when_the_commit_returns() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = sqlite_ledger(&dir).await;
        let loader = start(
            ledger.clone(),
            Duration::from_secs(60),
            Metrics::new().policy,
        )
        .await
        .unwrap();
        assert_eq!(status_of(&loader, "acme"), None);
        ledger
            .create_tenant("test", &new_tenant("acme"))
            .await
            .unwrap();
        assert_eq!(status_of(&loader, "acme"), Some(TenantStatus::Pending));
        ledger
            .set_tenant_status(
                "test",
                "acme",
                &[TenantStatus::Pending],
                TenantStatus::Active,
            )
            .await
            .unwrap();
        assert_eq!(status_of(&loader, "acme"), Some(TenantStatus::Active));
    }

    #[tokio::test]
    async fn a_burst_of_changes_is_coalesced_into_one_reload() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = sqlite_ledger(&dir).await;
        // Twenty changes announced while nothing follows (so no commit waits)...
        let changes = ledger.changes();
        for i in 0..20 {
            ledger
                .create_tenant("test", &new_tenant(&format!("t{i}")))
                .await
                .unwrap();
        }
        // ...then a reloader starts with all of them queued.
        let current = crate::policy::empty();
        let reloader = Reloader {
            ledger: ledger.clone(),
            follower: ledger.follow(),
            current: current.clone(),
            stats: Metrics::new().policy,
            generation: 0,
        };
        let _task = AbortOnDrop(tokio::spawn(reloader.run(changes, Duration::from_secs(60))));
        // One more change returns once applied: by then the burst took one reload, this one another.
        ledger
            .create_tenant("test", &new_tenant("last"))
            .await
            .unwrap();
        let policy = current.load();
        assert_eq!(policy.tenant_count(), 21);
        // One read for the burst and one for the last change, or a single read for all of
        // them when the last was committed before the first read began; never one each.
        assert!(
            (1..=2).contains(&policy.generation()),
            "{} reloads",
            policy.generation()
        );
    }

    struct AbortOnDrop(tokio::task::JoinHandle<()>);

    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    #[tokio::test]
    async fn a_failed_reload_keeps_the_last_good_snapshot_and_retries() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = sqlite_ledger(&dir).await;
        ledger
            .create_tenant("test", &new_tenant("acme"))
            .await
            .unwrap();
        let metrics = Metrics::new();
        let loader = start(
            ledger.clone(),
            Duration::from_secs(60),
            metrics.policy.clone(),
        )
        .await
        .unwrap();
        // Break the ledger under the loader, and announce a change.
        sqlx::query("ALTER TABLE tenants RENAME TO tenants_away")
            .execute(ledger.pool())
            .await
            .unwrap();
        let mut tx = ledger.begin().await.unwrap();
        sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
        ledger.commit_change(tx).await.unwrap();
        assert_eq!(
            status_of(&loader, "acme"),
            Some(TenantStatus::Pending),
            "the last good snapshot stays"
        );
        assert!(metric(&metrics, "tollgate_policy_reload_error") >= 1);
        // Repaired, the retry loads again without any further announcement.
        sqlx::query("ALTER TABLE tenants_away RENAME TO tenants")
            .execute(ledger.pool())
            .await
            .unwrap();
        sqlx::query("UPDATE tenants SET status = 'active'")
            .execute(ledger.pool())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while status_of(&loader, "acme") != Some(TenantStatus::Active) {
            assert!(Instant::now() < deadline, "the retry did not reload");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn metric(metrics: &Metrics, name: &str) -> u64 {
        metrics
            .render()
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}
