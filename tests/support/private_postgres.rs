//! A PostgreSQL server owned by one test, so the test may stop and restart it (the shared
//! server the other tests make their databases on must stay up for them).
//!
//! `initdb` into a temporary directory, then `pg_ctl start` on a free loopback port with the
//! socket in the same directory. PostgreSQL refuses to run as root, so when the tests run
//! as root (CI does) every command runs as the `postgres` user (`runuser`, else `su`) on a
//! directory handed to that user. The binaries are the newest under
//! `/usr/lib/postgresql/*/bin` (Debian's layout), else `pg_config --bindir`'s, else `PATH`'s.
//! The server is stopped when the value is dropped.
//!
//! Self-contained (std and `tempfile` only): a test crate includes it with
//! `#[path = "support/private_postgres.rs"] mod private_postgres;` (from
//! `tests/admin/main.rs`, `#[path = "../support/private_postgres.rs"]`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};

use tempfile::TempDir;

/// A running (or stopped, and restartable) private PostgreSQL server.
pub struct PrivatePostgres {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    /// Commands run as the `postgres` user (we are root).
    as_postgres: bool,
    running: AtomicBool,
}

impl PrivatePostgres {
    /// Creates a cluster and starts it; panics with the server's log when it cannot.
    pub fn start() -> PrivatePostgres {
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("tollgate-pg-")
            .tempdir()
            .expect("a temporary directory");
        if as_postgres {
            run_checked(Command::new("chown").arg("postgres").arg(dir.path()));
        }
        let mut server = PrivatePostgres {
            bin: bin_dir(),
            port: 0,
            as_postgres,
            running: AtomicBool::new(false),
            dir,
        };
        let data = server.data_dir();
        let initdb = server.command(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        server.checked(initdb, "initdb");
        // Another process may take the free port before the server binds it: try a few.
        for attempt in 1..=3 {
            server.port = free_port();
            match server.try_start() {
                Ok(()) => return server,
                Err(log) if attempt == 3 => panic!("cannot start a private PostgreSQL:\n{log}"),
                Err(_) => {}
            }
        }
        unreachable!()
    }

    /// A URL of its `postgres` database (trusted, no password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (`pg_ctl stop -m fast`: clients are disconnected at once).
    pub fn stop(&self) {
        let stop = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]);
        self.checked(stop, "pg_ctl stop");
        self.running.store(false, Ordering::SeqCst);
    }

    /// Starts the stopped server again, on the same port.
    pub fn restart(&self) {
        if let Err(log) = self.try_start() {
            panic!("cannot restart the private PostgreSQL:\n{log}");
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let start = self.pg_ctl(&[
            "-l",
            &log.display().to_string(),
            "-o",
            &options,
            "start",
            "-w",
            "-t",
            "60",
        ]);
        let output = run(start);
        if output.status.success() {
            self.running.store(true, Ordering::SeqCst);
            Ok(())
        } else {
            Err(format!(
                "{}\n--- server log:\n{}",
                describe(&output),
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let data = self.data_dir().display().to_string();
        let mut all = vec!["-D", &data];
        all.extend_from_slice(args);
        self.command("pg_ctl", &all)
    }

    /// `program` from the PostgreSQL binaries, as the right user.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        if !self.as_postgres {
            let mut command = Command::new(program);
            command.args(args);
            return command;
        }
        if Path::new("/usr/sbin/runuser").exists() || Path::new("/sbin/runuser").exists() {
            let mut command = Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(program)
                .args(args);
            command
        } else {
            let line = std::iter::once(program.display().to_string())
                .chain(args.iter().map(|a| (*a).to_owned()))
                .map(|word| format!("'{}'", word.replace('\'', r"'\''")))
                .collect::<Vec<_>>()
                .join(" ");
            let mut command = Command::new("su");
            command.args(["postgres", "-s", "/bin/sh", "-c", &line]);
            command
        }
    }

    fn checked(&self, command: Command, what: &str) {
        let output = run(command);
        assert!(
            output.status.success(),
            "{what} failed for the private PostgreSQL in {}: {}",
            self.dir.path().display(),
            describe(&output)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running.swap(false, Ordering::SeqCst) {
            let _ = run(self.pg_ctl(&["stop", "-m", "immediate", "-w"]));
        }
    }
}

fn run(mut command: Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn run_checked(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        describe(&output)
    );
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The directory holding `initdb` and `pg_ctl`.
fn bin_dir() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max();
    if let Some((_, bin)) = newest {
        return bin;
    }
    Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|bin| bin.join("initdb").is_file())
        // Else `PATH`'s (an empty directory joins to the bare program name).
        .unwrap_or_default()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
