//! Redis servers owned by one test: `redis-server` on a free loopback port, no persistence,
//! killed (and reaped) when dropped. Tests that stop, restart, flush, fail over or break
//! Redis do it to these, never to the shared Redis on 6379.
//!
//! Each test crate that needs one includes this file:
//! `#[path = "support/private_redis.rs"] mod private_redis;` (from `tests/admin/main.rs`,
//! `#[path = "../support/private_redis.rs"]`). A crate uses only part of it, hence the
//! `dead_code` allowance.
//!
//! - [`PrivateRedis::start`]: a plain server in a directory the test owns (so it can be
//!   killed and started again on the same port with [`PrivateRedis::start_on`]);
//! - [`PrivateRedis::launch`]: any `redis-server` command line (TLS-only servers,
//!   sentinels), ready when it answers `PING` or when its log says so;
//! - [`PrivateCluster`]: three plain masters with every slot assigned.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for a server to start (or a cluster to form); generous because the machine
/// is shared with builds.
pub const STARTUP: Duration = Duration::from_secs(20);

/// Free ports tried before giving up: another process may take the one chosen before the
/// server binds it.
const ATTEMPTS: usize = 5;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port whose cluster bus port (+10000) is free too.
pub fn free_cluster_port() -> u16 {
    const ATTEMPTS: usize = 1_000;
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    (0..ATTEMPTS)
        .map(|_| 20_000 + (free_port() % 20_000))
        .find(|&port| free(port) && free(port + 10_000))
        .unwrap_or_else(|| {
            panic!("no free pair of ports (N, N + 10000) in 20000-49999 after {ATTEMPTS} tries")
        })
}

/// The options every private server starts with: loopback only, no persistence, its files
/// in `dir`. The port options are the caller's (a TLS-only server has no plain port).
pub fn base_args(dir: &Path) -> Vec<String> {
    [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .map(str::to_owned)
    .into()
}

/// `extra` options as separate arguments: each is split at whitespace, so an option and
/// its values may come as one string (`"--replicaof 127.0.0.1 6380"`,
/// `"--user alice on >pw ~* +@all"`).
pub fn split_args(extra: &[&str]) -> impl Iterator<Item = String> {
    extra
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(str::to_owned)
}

/// How [`PrivateRedis::launch`] knows the server is ready.
#[derive(Clone, Copy)]
pub enum Ready<'a> {
    /// It answers `PING` on `redis://127.0.0.1:<port>`.
    Ping,
    /// Its log file `log` (new for this server) has a line containing `text`: for servers a
    /// plain `PING` cannot reach (TLS only), or that log no "Ready to accept connections"
    /// (a sentinel).
    Logged { log: &'a Path, text: &'a str },
}

/// A private `redis-server` process.
pub struct PrivateRedis {
    /// `None` once killed.
    child: Option<Child>,
    /// The port it listens on (its TLS port when it speaks TLS only).
    pub port: u16,
}

impl PrivateRedis {
    /// Starts a plain server on a free port in `dir`, with `extra` options (see
    /// [`split_args`]), and waits until it answers `PING`.
    pub async fn start(dir: &Path, extra: &[&str]) -> Self {
        for _ in 0..ATTEMPTS {
            if let Some(redis) = Self::try_start(free_port(), dir, extra).await {
                return redis;
            }
        }
        panic!("could not start a private redis-server");
    }

    /// Starts a plain server on `port`, which must be free (a restart on the port of a
    /// killed one).
    pub async fn start_on(port: u16, dir: &Path, extra: &[&str]) -> Self {
        Self::try_start(port, dir, extra)
            .await
            .unwrap_or_else(|| panic!("could not start a private redis-server on {port}"))
    }

    /// Starts a plain server on `port`; `None` when it does not come up (the port was
    /// taken meanwhile).
    pub async fn try_start(port: u16, dir: &Path, extra: &[&str]) -> Option<Self> {
        let mut args = base_args(dir);
        args.extend(["--port".to_owned(), port.to_string()]);
        args.extend(split_args(extra));
        Self::launch(args, port, Ready::Ping).await.ok()
    }

    /// Runs `redis-server args`, listening on `port`, and waits until it is `ready`. On
    /// failure (it exited, or was not ready within [`STARTUP`]) it is killed, and the error
    /// says why, with its log when it has one.
    pub async fn launch(args: Vec<String>, port: u16, ready: Ready<'_>) -> Result<Self, String> {
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH for these tests");
        // Dropped (and killed) if it never gets ready.
        let mut redis = Self {
            child: Some(child),
            port,
        };
        let log = || match ready {
            Ready::Ping => String::new(),
            Ready::Logged { log, .. } => std::fs::read_to_string(log).unwrap_or_default(),
        };
        let started = Instant::now();
        loop {
            let exited = redis.child.as_mut().and_then(|c| c.try_wait().unwrap());
            if let Some(status) = exited {
                // Typically: lost the port to someone else.
                redis.child = None;
                return Err(format!("redis-server exited ({status})\n{}", log()));
            }
            let is_ready = match ready {
                Ready::Ping => answers_ping(&redis.url()).await,
                Ready::Logged { text, .. } => log().contains(text),
            };
            if is_ready {
                return Ok(redis);
            }
            if started.elapsed() > STARTUP {
                return Err(format!("not ready after {STARTUP:?}:\n{}", log()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its plain URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Empties it, as a restart without persistence would.
    pub async fn flush_all(&self) {
        let mut conn = redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("the private Redis answers");
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }

    /// Stops it now (a crash: no shutdown, nothing saved); its port is free again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a plain server at `url` answers `PING` (connecting within a second).
pub async fn answers_ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(Ok(mut conn)) = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .is_ok()
}

/// Three plain masters, no replicas, all slots assigned; each node in its own directory.
pub struct PrivateCluster {
    _nodes: Vec<PrivateRedis>,
    /// The nodes' ports.
    pub ports: Vec<u16>,
    /// Removed after the nodes are killed (declared after them).
    _dirs: Vec<tempfile::TempDir>,
}

impl PrivateCluster {
    /// Starts the nodes, joins them with `redis-cli --cluster create`, and waits until
    /// each reports `cluster_state:ok`; panics after 3 x [`ATTEMPTS`] ports that failed.
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        let mut attempts = 0;
        while nodes.len() < 3 {
            attempts += 1;
            assert!(
                attempts <= 3 * ATTEMPTS,
                "could not start the 3 nodes of a private Redis Cluster: {} started in {} \
                 attempts (is redis-server on PATH and able to enable cluster mode?)",
                nodes.len(),
                3 * ATTEMPTS
            );
            let dir = tempfile::tempdir().unwrap();
            // The cluster config file is relative to the node's `--dir`.
            let extra = ["--cluster-enabled yes", "--cluster-config-file nodes.conf"];
            if let Some(node) =
                PrivateRedis::try_start(free_cluster_port(), dir.path(), &extra).await
            {
                nodes.push(node);
                dirs.push(dir);
            }
        }
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli must be on PATH for these tests");
        assert!(status.success(), "redis-cli --cluster create failed");
        for node in &nodes {
            let started = Instant::now();
            while !cluster_ok(&node.url()).await {
                assert!(started.elapsed() < STARTUP, "the cluster never formed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Self {
            _nodes: nodes,
            ports,
            _dirs: dirs,
        }
    }

    /// Its `redis+cluster://` URL, naming every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

/// Whether the node at `url` reports `cluster_state:ok`.
async fn cluster_ok(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async::<String>(&mut conn)
        .await
        .is_ok_and(|info| info.contains("cluster_state:ok"))
}
