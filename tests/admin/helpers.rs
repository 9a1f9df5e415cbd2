//! A whole tollgate per test, on a fresh ledger database (tests/support/test_db.rs): a new
//! PostgreSQL database on the shared server (dropped afterwards) or a new SQLite file, with
//! an admin token.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tollgate::app::App;
use tollgate::clock::ManualClock;
use tollgate::ledger::Ledger;
use tollgate::ledger::tenants::{self, TenantStatus};
use tollgate::settings::Settings;
use tonic::transport::Channel;

pub use crate::test_db::{Db, TestDb};

/// The domain of the test rules: a quota domain (`quota: {}`) with one ordinary rule.
pub const DOMAIN: &str = "ai-gateway";

/// Test time: 2026-11-22 00:00:00 UTC.
pub const START_SECS: u64 = 1_795_305_600;

/// The admin secret every test app starts with.
pub const ADMIN: &str = "tg_test_admin_secret_0123456789abcdef0123456789";

/// The model [`llm_tenant`] grants and prices.
pub const MODEL: &str = "claude-sonnet";

/// A descriptor's entries and its own `hits_addend`, when it has one.
pub type WithAddend<'a> = (&'a [(&'a str, &'a str)], Option<u64>);

/// A running app with an admin client.
pub struct AdminApp {
    pub base: String,
    pub clock: ManualClock,
    pub db: Db,
    pub rules: TempDir,
    /// The app's own ledger handle: a change committed through it is in force in this
    /// app's decisions when the commit returns.
    pub ledger: Ledger,
    http: reqwest::Client,
    rls: RateLimitServiceClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    // Declared last: the app stops before its database is dropped.
    pub database: Arc<TestDb>,
}

impl Drop for AdminApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An app on a fresh database of kind `db`.
pub async fn spawn(db: Db) -> AdminApp {
    let database = Arc::new(TestDb::create(db).await);
    spawn_on(db, database, |_| {}).await
}

/// An app on an existing test database (a second replica shares the first's).
pub async fn spawn_on(
    db: Db,
    database: Arc<TestDb>,
    tweak: impl FnOnce(&mut Settings),
) -> AdminApp {
    let rules = TempDir::new().unwrap();
    std::fs::write(
        rules.path().join("rules.yaml"),
        "domain: ai-gateway\nquota: {}\ndescriptors:\n  - key: generic\n    rate_limit: {unit: second, requests_per_unit: 100}\n",
    )
    .unwrap();
    let mut settings = Settings {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        rules_dir: rules.path().to_owned(),
        watch_rules: false,
        store_deadline_ms: 2_000,
        shutdown_grace_secs: 1,
        database_url: database.url.clone(),
        bootstrap_token: Some(ADMIN.into()),
        // The app's own usage outbox (only `.yaml` files in the directory are rules).
        outbox_path: rules.path().join("outbox.jsonl"),
        ..Settings::default()
    };
    tweak(&mut settings);
    let clock = ManualClock::at_secs(START_SECS);
    let app = App::build_with_clock(settings, Arc::new(clock.clone()))
        .await
        .expect("the app builds");
    let base = format!("http://{}/v1", app.http_addr());
    let grpc = format!("http://{}", app.grpc_addr());
    let ledger = app.ledger().clone();
    let rls = RateLimitServiceClient::new(Channel::from_shared(grpc).unwrap().connect_lazy());
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    AdminApp {
        base,
        clock,
        db,
        rules,
        ledger,
        http: reqwest::Client::new(),
        rls,
        stop: Some(stop),
        database,
    }
}

/// An HTTP answer: status and parsed JSON body (`Value::Null` when not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
}

impl Answer {
    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Answer {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    /// The offending field of a validation error.
    pub fn field(&self) -> &str {
        self.body["error"]["field"].as_str().unwrap_or_default()
    }
}

impl AdminApp {
    /// Sends a request with `token` (if any) and an optional JSON body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, body, text }
    }

    /// Sends raw bytes with a content type (for malformed-input tests).
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Answer {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, body, text }
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(Method::POST, path, Some(token), Some(&body))
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(Method::PATCH, path, Some(token), Some(&body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Answer {
        self.send(Method::DELETE, path, Some(token), None).await
    }

    /// Creates a token of `role` (scoped to `tenant` for the tenant role); its secret.
    pub async fn token(&self, role: &str, tenant: Option<&str>) -> String {
        let mut body = serde_json::json!({"name": format!("{role} token"), "role": role});
        if let Some(tenant) = tenant {
            body["tenant_id"] = tenant.into();
        }
        let created = self.post("/tokens", ADMIN, body).await.expect(201);
        created.body["secret"].as_str().unwrap().to_owned()
    }

    /// Calls `ShouldRateLimit` in [`DOMAIN`] with one descriptor per entry list.
    pub async fn decide(&self, descriptors: &[&[(&str, &str)]]) -> RateLimitResponse {
        let plain: Vec<WithAddend<'_>> =
            descriptors.iter().map(|entries| (*entries, None)).collect();
        self.decide_with(&plain).await
    }

    /// Calls `ShouldRateLimit` in [`DOMAIN`] with one descriptor per entry list, each with
    /// its own `hits_addend` when given (0 checks only; usage carries its token count).
    pub async fn decide_with(&self, descriptors: &[WithAddend<'_>]) -> RateLimitResponse {
        self.try_decide_with(descriptors)
            .await
            .expect("ShouldRateLimit answers")
    }

    /// [`AdminApp::decide_with`], with the gRPC error when the call fails.
    pub async fn try_decide_with(
        &self,
        descriptors: &[WithAddend<'_>],
    ) -> Result<RateLimitResponse, tonic::Status> {
        let request = RateLimitRequest {
            domain: DOMAIN.into(),
            descriptors: descriptors
                .iter()
                .map(|(entries, addend)| RateLimitDescriptor {
                    entries: entries
                        .iter()
                        .map(|(k, v)| Entry {
                            key: (*k).into(),
                            value: (*v).into(),
                        })
                        .collect(),
                    hits_addend: addend
                        .map(|value| envoy_types::pb::google::protobuf::UInt64Value { value }),
                    ..RateLimitDescriptor::default()
                })
                .collect(),
            hits_addend: 0,
        };
        self.rls
            .clone()
            .should_rate_limit(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Creates a pending tenant with defaults.
    pub async fn tenant(&self, id: &str) -> Value {
        let body = serde_json::json!({"id": id, "name": format!("{id} Inc."), "currency": "USD", "timezone": "Europe/Berlin", "cost_centre": "R&D-42"});
        self.post("/tenants", ADMIN, body).await.expect(201).body
    }

    /// Creates tenant `id` with defaults, activates it and grants it `models` in this
    /// app's ledger, as approved requests would.
    pub async fn active_tenant(&self, id: &str, models: &[&str]) {
        self.tenant(id).await;
        activate(&self.ledger, id).await;
        for model in models {
            grant(&self.ledger, id, model).await;
        }
    }
}

/// Active tenant `acme` (USD, Europe/Berlin) with [`MODEL`] granted and the worked
/// example's prices (3.00 input, 15.00 output per million tokens) in force since the epoch.
pub async fn llm_tenant(app: &AdminApp) {
    app.active_tenant("acme", &[MODEL]).await;
    for (token_type, price) in [("input", "3.00"), ("output", "15.00")] {
        price_from(app, token_type, price, 0).await;
    }
}

/// [`MODEL`]'s price per million `token_type` tokens, in force from `from_ms`.
pub async fn price_from(app: &AdminApp, token_type: &str, price: &str, from_ms: i64) {
    let body = json!({"model": MODEL, "token_type": token_type, "currency": "USD",
        "price_per_million": price, "effective_from": from_ms});
    app.post("/prices", ADMIN, body).await.expect(201);
}

/// Stream done: `input` and `output` tokens of [`MODEL`] used by acme's `request_id`.
/// The answer must be OK: Envoy ignores it, but it must not fail.
pub async fn settle(app: &AdminApp, request_id: &str, input: u64, output: u64) {
    let base = [
        ("tenant_id", "acme"),
        ("model", MODEL),
        ("request_id", request_id),
    ];
    let input_entries = [base.as_slice(), &[("token_type", "input")]].concat();
    let output_entries = [base.as_slice(), &[("token_type", "output")]].concat();
    let answer = app
        .decide_with(&[
            (&input_entries, Some(input)),
            (&output_entries, Some(output)),
        ])
        .await;
    assert!(
        ok(&answer),
        "Envoy ignores it, but it must not fail: {answer:?}"
    );
}

/// Whether `ShouldRateLimit` answered OK.
pub fn ok(response: &RateLimitResponse) -> bool {
    response.overall_code == Code::Ok as i32
}

/// Activates the pending tenant `id` in `ledger`, as an approved request would.
pub async fn activate(ledger: &Ledger, id: &str) {
    ledger
        .set_tenant_status("test", id, &[TenantStatus::Pending], TenantStatus::Active)
        .await
        .unwrap();
}

/// Grants tenant `id` the use of `model` in `ledger`, as an approved request would.
pub async fn grant(ledger: &Ledger, id: &str, model: &str) {
    let mut tx = ledger.begin().await.unwrap();
    tenants::grant_model_in(&mut tx, ledger.now_ms(), "test", id, model)
        .await
        .unwrap();
    ledger.commit_change(tx).await.unwrap();
}

/// Runs an async test body once per ledger backend.
#[macro_export]
macro_rules! on_both_databases {
    ($(async fn $name:ident($db:ident: Db) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                async fn run($db: $crate::helpers::Db) $body
                #[tokio::test]
                async fn postgres() {
                    run($crate::helpers::Db::Postgres).await
                }
                #[tokio::test]
                async fn sqlite() {
                    run($crate::helpers::Db::Sqlite).await
                }
            }
        )*
    };
}
