//! The approval flow end to end, as operators run it: a tenant files, an approver decides,
//! and the effect is in force in the rate-limit decisions of every replica.
//!
//! On PostgreSQL two replicas, A and B, share one database: requests are filed and decided
//! through A's API, and B's gRPC decisions must follow within a second of the approve
//! response. On SQLite one replica plays both parts. Steps:
//! - tenant activation filed by the tenant's token, approved: `tenant_not_active` -> OK;
//! - model access likewise: `model_not_approved` -> OK;
//! - a rejected request changes nothing;
//! - nobody decides a request they filed;
//! - a request left pending for seven days expires and can no longer be approved;
//! - every step is in the audit log, with its actor.
//!
//! "Still refused" is checked after a barrier: a later approval observed on B, so B has
//! reloaded its policy since the step, and a decision it still refuses is not just late.

use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::helpers::*;

/// The propagation bound between replicas.
const SECOND: Duration = Duration::from_secs(1);
/// How long a request stays pending.
const PENDING_TTL: Duration = Duration::from_secs(7 * 86_400);

const ALPHA: &[(&str, &str)] = &[("tenant_id", "alpha")];
const BRAVO: &[(&str, &str)] = &[("tenant_id", "bravo")];

fn alpha_with(model: &str) -> [(&str, &str); 2] {
    [("tenant_id", "alpha"), ("model", model)]
}

/// What a replica answered for one descriptor.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Ok,
    /// OVER_LIMIT: `current_limit.name` and the parsed `raw_body`.
    Refused(String, Value),
}

fn not_active(tenant: &str, status: &str) -> Verdict {
    Verdict::Refused(
        "tenant_not_active".into(),
        json!({"error": "tenant_not_active", "tenant": tenant, "status": status}),
    )
}

fn not_approved(model: &str) -> Verdict {
    Verdict::Refused(
        "model_not_approved".into(),
        json!({"error": "model_not_approved", "tenant": "alpha", "model": model}),
    )
}

/// One gRPC decision with one descriptor.
async fn verdict(app: &AdminApp, entries: &[(&str, &str)]) -> Verdict {
    let response = app.decide(&[entries]).await;
    if response.overall_code == Code::Ok as i32 {
        return Verdict::Ok;
    }
    let name = response.statuses[0]
        .current_limit
        .as_ref()
        .map(|l| l.name.clone())
        .unwrap_or_default();
    Verdict::Refused(
        name,
        serde_json::from_slice(&response.raw_body).unwrap_or(Value::Null),
    )
}

/// Polls `app` until it answers `expected`; how long that took from `since`. Fails once a
/// second has passed since `since`.
async fn within_a_second(
    app: &AdminApp,
    entries: &[(&str, &str)],
    expected: &Verdict,
    since: Instant,
) -> Duration {
    loop {
        let got = verdict(app, entries).await;
        let elapsed = since.elapsed();
        if got == *expected {
            return elapsed;
        }
        assert!(
            elapsed < SECOND,
            "{elapsed:?} after the change the replica still answers {got:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A token's secret and id.
struct Token {
    secret: String,
    id: String,
}

async fn token(app: &AdminApp, role: &str, tenant: Option<&str>) -> Token {
    let mut body = json!({"name": format!("flow {role}"), "role": role});
    if let Some(tenant) = tenant {
        body["tenant_id"] = tenant.into();
    }
    let created = app.post("/tokens", ADMIN, body).await.expect(201);
    Token {
        secret: created.body["secret"].as_str().unwrap().to_owned(),
        id: created.body["id"].as_str().unwrap().to_owned(),
    }
}

fn id_of(answer: &Answer) -> String {
    answer.body["id"].as_str().unwrap().to_owned()
}

fn model_access(model: &str) -> Value {
    json!({"kind": "model_access", "reason": format!("we need {model}"), "payload": {"model": model}})
}

/// `(action, actor)` of every audit entry on one entity, oldest first.
async fn trail(app: &AdminApp, entity_type: &str, id: &str) -> Vec<(String, String)> {
    let audit = app
        .get(
            &format!("/audit?entity_type={entity_type}&entity_id={id}&limit=500"),
            ADMIN,
        )
        .await
        .expect(200);
    audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn entries(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// The replicas and the people using them.
struct Flow<'a> {
    a: &'a AdminApp,
    b: &'a AdminApp,
    approver: Token,
    /// Propagation times to B, measured from the approve response.
    timings: Vec<(String, Duration)>,
    barriers: usize,
}

impl Flow<'_> {
    /// Approves `id` through A as the approver; the moment the response arrived.
    async fn approve(&self, id: &str) -> Instant {
        let approved = self
            .a
            .post(
                &format!("/approvals/{id}/approve"),
                &self.approver.secret,
                json!({"note": "ok"}),
            )
            .await
            .expect(200);
        let at = Instant::now();
        assert_eq!(approved.body["status"], "approved");
        assert_eq!(approved.body["decided_by"], self.approver.id.as_str());
        at
    }

    /// Approves a fresh model for alpha through A and waits until B allows it: from then
    /// on, B's policy holds everything committed before.
    async fn barrier(&mut self) {
        self.barriers += 1;
        let model = format!("barrier-{}", self.barriers);
        let id = id_of(
            &self
                .a
                .post(
                    "/approvals",
                    ADMIN,
                    json!({"tenant_id": "alpha"}).merge(model_access(&model)),
                )
                .await
                .expect(201),
        );
        let at = self.approve(&id).await;
        let took = within_a_second(self.b, &alpha_with(&model), &Verdict::Ok, at).await;
        self.timings.push((model, took));
    }

    /// Moves every replica's clock.
    fn advance(&self, by: Duration) {
        self.a.clock.advance(by);
        if !std::ptr::eq(self.a, self.b) {
            self.b.clock.advance(by);
        }
    }
}

trait Merge {
    fn merge(self, other: Value) -> Value;
}

impl Merge for Value {
    fn merge(mut self, other: Value) -> Value {
        for (k, v) in other.as_object().unwrap() {
            self[k] = v.clone();
        }
        self
    }
}

async fn flow(a: &AdminApp, b: &AdminApp) {
    let started = Instant::now();
    a.tenant("alpha").await;
    a.tenant("bravo").await;
    let alpha = token(a, "tenant", Some("alpha")).await;
    let bravo = token(a, "tenant", Some("bravo")).await;
    let approver = token(a, "approver", None).await;
    let mut flow = Flow {
        a,
        b,
        approver,
        timings: Vec::new(),
        barriers: 0,
    };
    within_a_second(b, ALPHA, &not_active("alpha", "pending"), Instant::now()).await;
    within_a_second(b, BRAVO, &not_active("bravo", "pending"), Instant::now()).await;

    // Tenant activation: filed by the tenant's own token, approved by an approver.
    let filed = a
        .post(
            "/approvals",
            &alpha.secret,
            json!({"kind": "tenant_activation", "reason": "contract signed"}),
        )
        .await
        .expect(201);
    assert_eq!(filed.body["tenant_id"], "alpha");
    assert_eq!(filed.body["requested_by"], alpha.id.as_str());
    let activation = id_of(&filed);
    assert_eq!(
        verdict(b, ALPHA).await,
        not_active("alpha", "pending"),
        "filing alone changes nothing"
    );
    let at = flow.approve(&activation).await;
    let took = within_a_second(b, ALPHA, &Verdict::Ok, at).await;
    flow.timings.push(("tenant_activation".into(), took));
    assert_eq!(
        verdict(a, ALPHA).await,
        Verdict::Ok,
        "the replica that approved has it at once"
    );
    assert_eq!(
        a.get("/tenants/alpha", &alpha.secret)
            .await
            .expect(200)
            .body["status"],
        "active"
    );

    // Model access.
    let sonnet = alpha_with("claude-sonnet");
    assert_eq!(verdict(b, &sonnet).await, not_approved("claude-sonnet"));
    let filed = a
        .post("/approvals", &alpha.secret, model_access("claude-sonnet"))
        .await
        .expect(201);
    assert_eq!(filed.body["tenant_id"], "alpha");
    let sonnet_request = id_of(&filed);
    assert_eq!(
        verdict(b, &sonnet).await,
        not_approved("claude-sonnet"),
        "filing alone changes nothing"
    );
    let at = flow.approve(&sonnet_request).await;
    let took = within_a_second(b, &sonnet, &Verdict::Ok, at).await;
    flow.timings.push(("model_access".into(), took));
    assert_eq!(verdict(a, &sonnet).await, Verdict::Ok);

    // Rejected: nothing changes but the request.
    let opus = alpha_with("claude-opus");
    let opus_request = id_of(
        &a.post("/approvals", &alpha.secret, model_access("claude-opus"))
            .await
            .expect(201),
    );
    let rejected = a
        .post(
            &format!("/approvals/{opus_request}/reject"),
            &flow.approver.secret,
            json!({"note": "not this quarter"}),
        )
        .await
        .expect(200);
    assert_eq!(rejected.body["status"], "rejected");
    assert_eq!(rejected.body["decided_by"], flow.approver.id.as_str());
    a.post(
        &format!("/approvals/{opus_request}/approve"),
        &flow.approver.secret,
        json!({}),
    )
    .await
    .expect(409);
    flow.barrier().await;
    assert_eq!(verdict(b, &opus).await, not_approved("claude-opus"));
    assert_eq!(verdict(a, &opus).await, not_approved("claude-opus"));

    // Nobody decides their own request, on either replica.
    let haiku = alpha_with("claude-haiku");
    let filed = a
        .post(
            "/approvals",
            ADMIN,
            json!({"tenant_id": "alpha"}).merge(model_access("claude-haiku")),
        )
        .await
        .expect(201);
    let admin_id = filed.body["requested_by"].as_str().unwrap().to_owned();
    let haiku_request = id_of(&filed);
    for replica in [a, b] {
        for action in ["approve", "reject"] {
            let refused = replica
                .post(
                    &format!("/approvals/{haiku_request}/{action}"),
                    ADMIN,
                    json!({}),
                )
                .await
                .expect(403);
            assert_eq!(refused.code(), "forbidden");
            assert!(refused.text.contains("requester"), "{}", refused.text);
        }
    }
    assert_eq!(
        a.get(&format!("/approvals/{haiku_request}"), ADMIN)
            .await
            .expect(200)
            .body["status"],
        "pending"
    );
    flow.barrier().await;
    assert_eq!(verdict(b, &haiku).await, not_approved("claude-haiku"));

    // Expiry: bravo's activation and the haiku request, seven days on, are expired and
    // can no longer be approved, on either replica.
    let bravo_request = id_of(
        &a.post(
            "/approvals",
            &bravo.secret,
            json!({"kind": "tenant_activation", "reason": "please"}),
        )
        .await
        .expect(201),
    );
    flow.advance(PENDING_TTL + Duration::from_secs(1));
    let expired = a
        .get(&format!("/approvals/{bravo_request}"), &bravo.secret)
        .await
        .expect(200);
    assert_eq!(expired.body["status"], "expired");
    for (replica, id) in [
        (a, &bravo_request),
        (b, &bravo_request),
        (b, &haiku_request),
        (a, &haiku_request),
    ] {
        let refused = replica
            .post(
                &format!("/approvals/{id}/approve"),
                &flow.approver.secret,
                json!({}),
            )
            .await
            .expect(409);
        assert!(refused.text.contains("expired"), "{}", refused.text);
    }
    assert_eq!(
        a.get(&format!("/approvals/{haiku_request}"), ADMIN)
            .await
            .expect(200)
            .body["status"],
        "expired"
    );
    flow.barrier().await;
    assert_eq!(verdict(b, BRAVO).await, not_active("bravo", "pending"));
    assert_eq!(verdict(b, &haiku).await, not_approved("claude-haiku"));
    assert_eq!(
        a.get("/tenants/bravo", ADMIN).await.expect(200).body["status"],
        "pending"
    );
    let models = a.get("/tenants/alpha", ADMIN).await.expect(200).body["models"].clone();
    assert_eq!(
        models,
        json!(["barrier-1", "barrier-2", "barrier-3", "claude-sonnet"])
    );

    // The audit log: who did what, step by step.
    let approver_id = flow.approver.id.as_str();
    let (alpha_id, bravo_id) = (alpha.id.as_str(), bravo.id.as_str());
    let expectations = [
        (
            &activation,
            entries(&[
                ("approval.file", alpha_id),
                ("approval.approve", approver_id),
            ]),
        ),
        (
            &sonnet_request,
            entries(&[
                ("approval.file", alpha_id),
                ("approval.approve", approver_id),
            ]),
        ),
        (
            &opus_request,
            entries(&[
                ("approval.file", alpha_id),
                ("approval.reject", approver_id),
            ]),
        ),
        (
            &haiku_request,
            entries(&[
                ("approval.file", admin_id.as_str()),
                ("approval.expire", "system"),
            ]),
        ),
        (
            &bravo_request,
            entries(&[("approval.file", bravo_id), ("approval.expire", "system")]),
        ),
    ];
    for (id, expected) in expectations {
        assert_eq!(trail(a, "approval", id).await, expected, "approval {id}");
    }
    // The effects are audited on the tenant, by the approver: activation, then one model
    // grant per approved model request (claude-sonnet and the barriers), nothing else.
    let mut tenant = entries(&[
        ("tenant.create", admin_id.as_str()),
        ("tenant.active", approver_id),
    ]);
    tenant.extend(entries(&[("tenant.grant_model", approver_id); 4]));
    assert_eq!(trail(a, "tenant", "alpha").await, tenant);
    assert_eq!(
        trail(a, "tenant", "bravo").await,
        entries(&[("tenant.create", admin_id.as_str())])
    );
    let by_tenant = a
        .get(&format!("/audit?actor={alpha_id}&limit=500"), ADMIN)
        .await
        .expect(200);
    let actions: Vec<&str> = by_tenant.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec!["approval.file"; 3],
        "the tenant's token only filed requests"
    );
    let grants = a
        .get(
            &format!("/audit?entity_type=tenant&entity_id=alpha&actor={approver_id}"),
            ADMIN,
        )
        .await
        .expect(200);
    assert!(
        grants.text.contains("claude-sonnet")
            && !grants.text.contains("claude-opus")
            && !grants.text.contains("claude-haiku")
    );

    let replicas = if std::ptr::eq(a, b) {
        "one replica"
    } else {
        "A -> B"
    };
    let shown: Vec<String> = flow
        .timings
        .iter()
        .map(|(what, took)| format!("{what} {took:?}"))
        .collect();
    eprintln!(
        "{:?}, {replicas}: approve -> decision OK: {} (whole flow {:?})",
        a.db,
        shown.join(", "),
        started.elapsed()
    );
}

#[tokio::test]
async fn postgres_approvals_reach_a_second_replica_within_a_second() {
    let a = spawn(Db::Postgres).await;
    let b = spawn_on(Db::Postgres, a.database.clone(), |_| {}).await;
    flow(&a, &b).await;
}

#[tokio::test]
async fn sqlite_approvals_take_hold_in_the_next_decision() {
    let app = spawn(Db::Sqlite).await;
    flow(&app, &app).await;
}
