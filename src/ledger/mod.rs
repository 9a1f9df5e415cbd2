//! The budget ledger and the admin state: PostgreSQL in production, an embedded SQLite
//! file by default, behind one query layer (sqlx's Any driver) and one portable
//! migration set in `migrations/`.
//!
//! Each area has its own file: [`tenants`], [`tokens`], [`audit`], [`prices`], [`budgets`],
//! [`approvals`]; usage events and corrections in [`usage`], reports derived from them in
//! [`reports`]; [`writer`] moves settled usage events from the counter store's outbox
//! into the ledger, and [`drift`] compares the budget counters with it. Every change runs
//! in a transaction that also writes its audit entry, and announces itself on
//! [`Ledger::changes`] after commit so in-memory policy can reload (PostgreSQL
//! `LISTEN/NOTIFY` reaches every replica; SQLite is one process).

pub mod approvals;
pub mod audit;
pub mod balances;
pub mod budgets;
pub mod drift;
pub mod follow;
pub mod prices;
pub mod reports;
pub mod tenants;
pub mod tokens;
pub mod usage;
pub mod writer;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Transaction};
use tokio::sync::broadcast;

use crate::clock::SharedClock;

/// The channel PostgreSQL notifications travel on.
pub const CHANGES_CHANNEL: &str = "tollgate_policy";

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{entity} '{id}' not found")]
    NotFound { entity: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl LedgerError {
    /// A unique-constraint violation, reported as a conflict with `message`.
    pub fn conflict_on_unique(error: sqlx::Error, message: impl FnOnce() -> String) -> LedgerError {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                LedgerError::Conflict(message())
            }
            _ => LedgerError::Database(error),
        }
    }
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A connection pool to the ledger database.
#[derive(Clone)]
pub struct Ledger {
    pool: AnyPool,
    backend: Backend,
    url: String,
    clock: SharedClock,
    changes: broadcast::Sender<()>,
    /// Read-your-writes for this process's policy (see [`follow`]).
    follow: std::sync::Arc<follow::Tracker>,
}

impl Ledger {
    /// Connects to `url` (`postgres://…`, or `sqlite://path` which is created if missing).
    pub async fn connect(url: &str, clock: SharedClock) -> Result<Ledger, LedgerError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let mut url = url.to_owned();
        if backend == Backend::Sqlite && !url.contains("mode=") {
            url.push_str(if url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        let options = AnyConnectOptions::from_str(&url)?;
        let mut pool_options = AnyPoolOptions::new()
            // SQLite allows one writer at a time; a single connection avoids busy errors.
            .max_connections(if backend == Backend::Sqlite { 1 } else { 10 })
            .acquire_timeout(Duration::from_secs(5));
        if backend == Backend::Sqlite {
            // Per connection, so a connection the pool opens to replace one has them too.
            pool_options = pool_options.after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        // SQLite leaves foreign keys unenforced unless asked, per connection.
                        "PRAGMA foreign_keys = ON",
                        // A commit appends to the write-ahead log and syncs it once, instead
                        // of syncing a rollback journal and then the database file.
                        "PRAGMA journal_mode = WAL",
                        // Sync the log at every commit: a committed transaction survives a
                        // power loss (NORMAL could lose the last ones).
                        "PRAGMA synchronous = FULL",
                        // A batch insert's statement journal (and any temporary table)
                        // stays in memory: on disk it was a temp file created, written
                        // and deleted per transaction.
                        "PRAGMA temp_store = MEMORY",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = pool_options.connect_with(options).await?;
        let (changes, _) = broadcast::channel(64);
        Ok(Ledger {
            pool,
            backend,
            url,
            clock,
            changes,
            follow: follow::Tracker::new(),
        })
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The pool, for queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Now, in milliseconds since the epoch, from the injected clock.
    pub fn now_ms(&self) -> i64 {
        (self.clock.now_nanos() / 1_000_000) as i64
    }

    /// Starts a transaction.
    pub async fn begin(&self) -> Result<Transaction<'static, Any>, LedgerError> {
        Ok(self.pool.begin().await?)
    }

    /// Commits a change and announces it to every replica's policy. Returns once this
    /// process's policy has applied it (bounded by [`follow::APPLY_WAIT`]).
    pub async fn commit_change(
        &self,
        mut tx: Transaction<'static, Any>,
    ) -> Result<(), LedgerError> {
        if self.backend == Backend::Postgres {
            // Delivered by PostgreSQL at commit, to every listening replica.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANGES_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        // Announced here too, so this replica does not depend on its listener for its own writes.
        let seq = self.follow.record();
        let _ = self.changes.send(());
        self.follow.wait_applied(seq).await;
        Ok(())
    }

    /// Registers the in-memory policy as following this ledger's changes, so that
    /// [`Ledger::commit_change`] returns only once its change is applied.
    pub fn follow(&self) -> follow::ChangeFollower {
        follow::ChangeFollower::new(self.follow.clone())
    }

    /// Announcements of committed changes. With PostgreSQL they come from every replica;
    /// call [`Ledger::listen`] once to start receiving them.
    pub fn changes(&self) -> broadcast::Receiver<()> {
        self.changes.subscribe()
    }

    /// Forwards PostgreSQL notifications to [`Ledger::changes`] until the task is aborted,
    /// reconnecting after errors. Nothing to do for SQLite.
    pub fn listen(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.backend != Backend::Postgres {
            return None;
        }
        let url = self.url.clone();
        let changes = self.changes.clone();
        Some(tokio::spawn(async move {
            loop {
                match sqlx::postgres::PgListener::connect(&url).await {
                    Ok(mut listener) => {
                        if listener.listen(CHANGES_CHANNEL).await.is_ok() {
                            // A (re)connection may have missed notifications: resync.
                            let _ = changes.send(());
                            while listener.recv().await.is_ok() {
                                let _ = changes.send(());
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen for ledger changes; retrying")
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }
}

/// A new time-ordered identifier.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
