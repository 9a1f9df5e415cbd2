//! Spawns a whole tollgate on port 0 with its own rules directory and a hand-moved
//! clock, and talks to it over gRPC and HTTP.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tollgate::app::App;
use tollgate::clock::ManualClock;
use tollgate::settings::Settings;
use tonic::transport::Channel;

/// Test time starts at the beginning of an hour so minute and hour windows are whole.
pub const START_SECS: u64 = 1_800_000_000;

/// The shared Redis for tests (each test app uses its own key prefix).
pub fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A prefix no other test (or earlier run) uses.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t{}-{}-{}:",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running app, stopped when dropped.
pub struct TestApp {
    pub grpc: RateLimitServiceClient<Channel>,
    pub grpc_addr: std::net::SocketAddr,
    pub http: String,
    pub clock: ManualClock,
    pub rules: TempDir,
    /// Holds the app's SQLite ledger.
    pub _ledger_dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Writes `files` (name, YAML) into `dir`.
pub fn write_rules(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// An app on the memory store with one rules file.
pub async fn spawn(yaml: &str) -> TestApp {
    spawn_with(&[("rules.yaml", yaml)], |_| {}).await
}

/// An app with the given rule files and settings adjusted by `tweak`.
pub async fn spawn_with(files: &[(&str, &str)], tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let rules = TempDir::new().unwrap();
    let data = TempDir::new().unwrap();
    write_rules(rules.path(), files);
    let mut settings = Settings {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        rules_dir: rules.path().to_owned(),
        // Generous: these tests check answers, not deadlines, on a busy machine.
        store_deadline_ms: 2_000,
        shutdown_grace_secs: 1,
        database_url: format!("sqlite://{}", data.path().join("ledger.db").display()),
        outbox_path: data.path().join("outbox.jsonl"),
        ..Settings::default()
    };
    tweak(&mut settings);
    let clock = ManualClock::at_secs(START_SECS);
    let app = App::build_with_clock(settings, Arc::new(clock.clone()))
        .await
        .expect("the app builds");
    let grpc_addr = app.grpc_addr();
    let http = format!("http://{}", app.http_addr());
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let grpc = RateLimitServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .expect("gRPC connects");
    TestApp {
        grpc,
        grpc_addr,
        http,
        clock,
        rules,
        _ledger_dir: data,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestApp {
    /// Calls `ShouldRateLimit`, expecting an answer.
    pub async fn call(&self, request: RateLimitRequest) -> RateLimitResponse {
        self.try_call(request)
            .await
            .expect("ShouldRateLimit answers")
    }

    /// Calls `ShouldRateLimit`.
    pub async fn try_call(
        &self,
        request: RateLimitRequest,
    ) -> Result<RateLimitResponse, tonic::Status> {
        self.grpc
            .clone()
            .should_rate_limit(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// The Prometheus exposition.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one series in the exposition (0 when absent).
    pub async fn metric(&self, series: &str) -> u64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The gRPC endpoint as a URL.
    pub fn grpc_addr_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Stops the app and waits for it to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// A request in `domain` with one descriptor per entry list.
pub fn request(domain: &str, descriptors: &[&[(&str, &str)]]) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: descriptors
            .iter()
            .map(|entries| descriptor(entries))
            .collect(),
        hits_addend: 0,
    }
}

/// One descriptor.
pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

/// A descriptor with its own hits addend.
pub fn descriptor_with_hits(entries: &[(&str, &str)], hits: u64) -> RateLimitDescriptor {
    RateLimitDescriptor {
        hits_addend: Some(UInt64Value { value: hits }),
        ..descriptor(entries)
    }
}

/// A descriptor carrying its own limit.
pub fn descriptor_with_limit(
    entries: &[(&str, &str)],
    requests_per_unit: u32,
    unit: i32,
) -> RateLimitDescriptor {
    RateLimitDescriptor {
        limit: Some(RateLimitOverride {
            requests_per_unit,
            unit,
        }),
        ..descriptor(entries)
    }
}

/// OK or OVER_LIMIT.
pub fn code(status: &DescriptorStatus) -> Code {
    Code::try_from(status.code).unwrap()
}

/// The overall code.
pub fn overall(response: &RateLimitResponse) -> Code {
    Code::try_from(response.overall_code).unwrap()
}

/// The codes of every status, in order.
pub fn codes(response: &RateLimitResponse) -> Vec<Code> {
    response.statuses.iter().map(code).collect()
}

/// Sends `request` `calls` times from each of `clients` concurrent clients per app, all
/// at once; how many calls were allowed overall.
pub async fn race(
    apps: &[&TestApp],
    request: RateLimitRequest,
    clients: usize,
    calls: usize,
) -> usize {
    let mut tasks = Vec::new();
    for app in apps {
        for _ in 0..clients {
            let client = app.grpc.clone();
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let mut allowed = 0;
                for _ in 0..calls {
                    let r = client
                        .clone()
                        .should_rate_limit(request.clone())
                        .await
                        .unwrap()
                        .into_inner();
                    allowed += usize::from(r.overall_code == Code::Ok as i32);
                }
                allowed
            }));
        }
    }
    let mut allowed = 0;
    for task in tasks {
        allowed += task.await.unwrap();
    }
    allowed
}
