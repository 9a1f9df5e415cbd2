//! A ledger database that exists for one test: a new PostgreSQL database on the shared
//! test server (dropped afterwards), or a new SQLite file in a temporary directory.
//!
//! The server is the one `TOLLGATE_TEST_POSTGRES_URL` names (its maintenance database),
//! else `postgres://postgres@127.0.0.1:5432/postgres`. A test crate includes this file with
//! `#[path = "support/test_db.rs"] mod test_db;` (from `tests/admin/main.rs`,
//! `#[path = "../support/test_db.rs"]`).

use tempfile::TempDir;

/// Which ledger database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Postgres,
    Sqlite,
}

/// The shared PostgreSQL server's maintenance database.
fn postgres_admin_url() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database that exists for one test.
pub struct TestDb {
    /// Its URL, for the app's `database_url`.
    pub url: String,
    /// The PostgreSQL database's name.
    name: Option<String>,
    _dir: TempDir,
}

impl TestDb {
    /// Creates a database of kind `db`.
    pub async fn create(db: Db) -> TestDb {
        let dir = TempDir::new().expect("a temporary directory");
        match db {
            Db::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.path().join("ledger.db").display()),
                name: None,
                _dir: dir,
            },
            Db::Postgres => {
                let name = format!("tollgate_t_{}", uuid::Uuid::now_v7().simple());
                let admin = postgres_admin_url();
                sqlx::any::install_default_drivers();
                let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .expect("the test PostgreSQL server is reachable");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("a test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b).expect("a URL path");
                TestDb {
                    url: format!("{base}/{name}"),
                    name: Some(name),
                    _dir: dir,
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else { return };
        // Best effort, off the test's runtime: the name is unique, so a leftover is harmless.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                if let Ok(mut conn) =
                    <sqlx::AnyConnection as sqlx::Connection>::connect(&postgres_admin_url()).await
                {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join()
        .ok();
    }
}
