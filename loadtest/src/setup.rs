//! What tollgate's ledger must hold before the `token-budget` scenario can pass, set up
//! the way an operator would: through the admin REST API, with an admin token.
//!
//! - An approver token: nobody decides an approval they filed, so the admin files and the
//!   approver decides.
//! - Every tenant of the scenario ([`scenario::TENANTS`]) created (it starts pending), its
//!   activation filed and approved, and access to every model filed and approved.
//! - Input and output prices for every model, in force since the epoch.
//! - Per tenant, a hard token budget and a hard cost budget for the calendar month, far
//!   beyond what any run uses: every request-path call is guarded (check-only) by both,
//!   every stream-done call charges both, and none is refused.
//!
//! Then every tenant and model is checked over gRPC: the check-only call must pass and
//! report the remaining budget, which it does only when the budgets are in force.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::google::protobuf::UInt64Value;
use serde_json::{Value, json};

use crate::driver;
use crate::scenario::{self, Scenario};

/// The header a guarded call reports its tightest remaining budget in.
const BUDGET_REMAINING_HEADER: &str = "x-tollgate-budget-remaining";
/// Tokens per tenant and month: a run at 100,000 req/s for an hour uses about 10^11.
const TOKEN_BUDGET: u64 = 1_000_000_000_000_000;
/// Money per tenant and month (USD).
const COST_BUDGET: &str = "1000000000000.00";

/// The admin API at `http` (`http://host:port`), called with `token`.
struct Admin {
    client: reqwest::Client,
    base: String,
}

impl Admin {
    /// Sends `body` to `path` as `token` and returns the JSON answer; any status but
    /// `expect` fails with the answer's text.
    async fn post(
        &self,
        path: &str,
        token: &str,
        body: Value,
        expect: u16,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/v1{path}", self.base);
        let response = self
            .client
            .post(&url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        if status != expect {
            bail!("POST {url} answered {status}, not {expect}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("POST {url}: not JSON: {text}"))
    }

    /// Files the approval request `body` as the admin and approves it as `approver`.
    async fn approved(&self, admin: &str, approver: &str, body: Value) -> anyhow::Result<()> {
        let tenant = body["tenant_id"].clone();
        let filed = self.post("/approvals", admin, body, 201).await?;
        let id = filed["id"].as_str().context("an approval without an id")?;
        let decided = self
            .post(
                &format!("/approvals/{id}/approve"),
                approver,
                json!({"note": "load test"}),
                200,
            )
            .await?;
        if decided["status"] != "approved" {
            bail!("approval {id} for {tenant} ended {}", decided["status"]);
        }
        Ok(())
    }
}

/// Sets up the `token-budget` scenario on the tollgate whose admin API is at `http` and
/// whose gRPC service is at `grpc`, with the admin token `token` (the bootstrap token).
/// Fails if anything is refused, or if the budgets are not in force within `timeout`.
pub async fn token_budget(
    http: &str,
    grpc: &str,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let admin = Admin {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        base: http.trim_end_matches('/').to_owned(),
    };
    let approver = admin
        .post(
            "/tokens",
            token,
            json!({"name": "load-test approver", "role": "approver"}),
            201,
        )
        .await?;
    let approver = approver["secret"]
        .as_str()
        .context("a token without its secret")?
        .to_owned();
    let models: Vec<String> = (0..scenario::MODELS).map(scenario::model_name).collect();
    for model in &models {
        for (token_type, price) in [("input", "3.00"), ("output", "15.00")] {
            let body = json!({"model": model, "token_type": token_type, "currency": "USD",
                "price_per_million": price, "effective_from": 0});
            admin.post("/prices", token, body, 201).await?;
        }
    }
    for i in 0..scenario::TENANTS {
        let tenant = scenario::tenant_id(i);
        let body = json!({"id": tenant, "name": format!("Load test {tenant}"), "currency": "USD"});
        admin.post("/tenants", token, body, 201).await?;
        let activation =
            json!({"tenant_id": tenant, "kind": "tenant_activation", "reason": "load test"});
        admin.approved(token, &approver, activation).await?;
        for model in &models {
            let access = json!({"tenant_id": tenant, "kind": "model_access",
                "reason": "load test", "payload": {"model": model}});
            admin.approved(token, &approver, access).await?;
        }
        for (name, measure, amount) in [
            ("monthly-tokens", "tokens", json!(TOKEN_BUDGET)),
            ("monthly-cost", "cost", json!(COST_BUDGET)),
        ] {
            let body = json!({"name": name, "scope": "tenant", "tenant_id": tenant,
                "measure": measure, "period": {"calendar": "month"}, "amount": amount,
                "enforcement": "hard"});
            admin.post("/budgets", token, body, 201).await?;
        }
    }
    in_force(grpc, &models, timeout).await
}

/// Waits until every tenant's check-only call for every model passes with a remaining
/// budget reported.
async fn in_force(grpc: &str, models: &[String], timeout: Duration) -> anyhow::Result<()> {
    let mut clients = driver::connect(grpc, 1).await?;
    let client = &mut clients[0];
    let started = Instant::now();
    for i in 0..scenario::TENANTS {
        let tenant = scenario::tenant_id(i);
        for model in models {
            let request = RateLimitRequest {
                domain: Scenario::TokenBudget.domain().to_owned(),
                descriptors: vec![RateLimitDescriptor {
                    entries: [("tenant_id", tenant.as_str()), ("model", model)]
                        .into_iter()
                        .map(|(key, value)| Entry {
                            key: key.to_owned(),
                            value: value.to_owned(),
                        })
                        .collect(),
                    hits_addend: Some(UInt64Value { value: 0 }),
                    ..RateLimitDescriptor::default()
                }],
                hits_addend: 0,
            };
            loop {
                let answer = client
                    .should_rate_limit(request.clone())
                    .await?
                    .into_inner();
                let guarded = answer
                    .response_headers_to_add
                    .iter()
                    .any(|h| h.key == BUDGET_REMAINING_HEADER);
                if answer.overall_code == Code::Ok as i32 && guarded {
                    break;
                }
                if started.elapsed() > timeout {
                    bail!(
                        "{tenant} / {model}: not in force after {timeout:?}: {answer:?} ({})",
                        String::from_utf8_lossy(&answer.raw_body)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(())
}
