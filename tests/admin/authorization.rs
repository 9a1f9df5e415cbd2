//! The authorization matrix: every admin route against every kind of caller, on both
//! databases, with one app per database and a few hundred requests.
//!
//! The routes come from three places that must agree: the router's source
//! (`src/admin/*.rs`), the OpenAPI document at `/v1/openapi.json`, and the matrix below. A
//! new route without a row fails the test.
//!
//! The callers: admin, approver, finance, a tenant token of tenant A (`alpha`), one of
//! tenant B (`bravo`), no token, a revoked (admin) token and a garbage token. Every
//! resource a row touches belongs to tenant A, so tenant B's token is "the other tenant".
//!
//! What each caller must get:
//! - no, garbage or revoked token: 401 everywhere but the public OpenAPI document;
//! - a role that may not use the route: 403, whatever the resource and whatever the input
//!   (authorization is decided before the input is read, so a 422 proves it passed);
//! - a tenant token on another tenant's resource: 404, as for an unknown id;
//! - otherwise success (2xx), or the 409/422 the row names.
//!
//! Denied and failed requests change nothing (no audit entry, no ledger entry). No
//! answer to a tenant token (lists, reports as JSON and CSV, errors) holds another
//! tenant's id or anything else of another tenant's, unless the caller sent it itself.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use reqwest::Method;
use serde_json::{Value, json};
use tollgate::ledger::tenants::TenantStatus;
use tollgate::ledger::usage::{UsageEvent, UsageLine};

use crate::helpers::*;
use crate::on_both_databases;

/// Tenant A: every resource the rows touch is its.
const ALPHA: &str = "alpha";
/// Tenant B: the other tenant.
const BRAVO: &str = "bravo";
/// Tenants made for single rows (created, suspended, reactivated) all start with this;
/// no tenant token may ever see one.
const ZULU: &str = "zulu-";
/// The owner of the global budget: no tenant's.
const GLOBAL: &str = "global";

const NOW: i64 = START_SECS as i64 * 1_000;
const DAY: i64 = 86_400_000;
/// 2026-11-01 00:00 UTC.
const NOV_1: i64 = NOW - 21 * DAY;
/// The month of the usage, for spend reports.
const RANGE: &str = "from=2026-11-01&to=2026-12-01";

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Admin,
    Approver,
    Finance,
    TenantA,
    TenantB,
    NoToken,
    Revoked,
    Garbage,
}

impl Who {
    /// The order the matrix runs in: the callers that must change nothing first, admin last.
    const ALL: [Who; 8] = [
        Who::NoToken,
        Who::Garbage,
        Who::Revoked,
        Who::TenantB,
        Who::TenantA,
        Who::Finance,
        Who::Approver,
        Who::Admin,
    ];

    fn name(self) -> &'static str {
        match self {
            Who::Admin => "admin",
            Who::Approver => "approver",
            Who::Finance => "finance",
            Who::TenantA => "tenant-a",
            Who::TenantB => "tenant-b",
            Who::NoToken => "no-token",
            Who::Revoked => "revoked",
            Who::Garbage => "garbage",
        }
    }

    /// The column of a row's expectations; `None` for callers without a valid token.
    fn column(self) -> Option<usize> {
        match self {
            Who::Admin => Some(0),
            Who::Approver => Some(1),
            Who::Finance => Some(2),
            Who::TenantA => Some(3),
            Who::TenantB => Some(4),
            Who::NoToken | Who::Revoked | Who::Garbage => None,
        }
    }

    /// The tenant a tenant token is scoped to.
    fn tenant(self) -> Option<&'static str> {
        match self {
            Who::TenantA => Some(ALPHA),
            Who::TenantB => Some(BRAVO),
            _ => None,
        }
    }

    fn is_staff(self) -> bool {
        matches!(self, Who::Admin | Who::Approver | Who::Finance)
    }
}

/// A resource made afresh for every caller of a row, so that each caller meets the same
/// state whatever the callers before it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fresh {
    None,
    /// A pending model-access request of tenant A, filed by tenant A's token.
    ApprovalOfA,
    /// A finance token.
    Token,
    /// An active tenant (not A or B).
    ActiveTenant,
    /// A suspended tenant (not A or B).
    SuspendedTenant,
    /// A live budget of tenant A.
    BudgetOfA,
}

/// One row: a request and what each caller must get.
struct Row {
    method: Method,
    /// The route as the OpenAPI document names it.
    route: &'static str,
    /// The request path under `/v1`; `{fresh}` stands for the row's fresh resource.
    path: String,
    body: Option<Box<dyn Fn(Who) -> Value>>,
    fresh: Fresh,
    /// Expectations of admin, approver, finance, tenant A, tenant B: `ok` (any 2xx) or a
    /// status, alternatives joined by `|`.
    want: [&'static str; 5],
    /// Served to everyone, without a token.
    public: bool,
    /// A successful answer names the tenants the caller may see: its own for a tenant
    /// token, both A and B for staff (proof the list is not just empty).
    shows_tenants: bool,
}

/// A row; `want` is five expectations separated by spaces (see [`Row::want`]).
fn row(method: Method, route: &'static str, path: impl Into<String>, want: &'static str) -> Row {
    let want: Vec<&'static str> = want.split_whitespace().collect();
    Row {
        method,
        route,
        path: path.into(),
        body: None,
        fresh: Fresh::None,
        want: want
            .try_into()
            .expect("five expectations: admin approver finance tenant-a tenant-b"),
        public: false,
        shows_tenants: false,
    }
}

impl Row {
    fn body(mut self, body: impl Fn(Who) -> Value + 'static) -> Row {
        self.body = Some(Box::new(body));
        self
    }

    fn fresh(mut self, fresh: Fresh) -> Row {
        self.fresh = fresh;
        self
    }

    fn shows_tenants(mut self) -> Row {
        self.shows_tenants = true;
        self
    }

    fn public(mut self) -> Row {
        self.public = true;
        self
    }

    /// What `who` must get: a list of alternatives.
    fn expected(&self, who: Who) -> &'static str {
        match who.column() {
            _ if self.public => "ok",
            None => "401",
            Some(column) => self.want[column],
        }
    }
}

/// Whether `status` is one of the `|`-separated alternatives of `want`.
fn accepts(want: &str, status: u16) -> bool {
    want.split('|').any(|w| {
        if w == "ok" {
            (200..300).contains(&status)
        } else {
            w.parse() == Ok(status)
        }
    })
}

/// Tokens of every caller and the seeded resources' ids.
struct Seed {
    admin: String,
    approver: String,
    finance: String,
    tenant_a: String,
    tenant_b: String,
    revoked: String,
    budget_a: String,
    budget_global: String,
    approval_a: String,
    /// `(owner, text)`: text of the owner's (a tenant, [`GLOBAL`] or the zulu tenants)
    /// that no other tenant's token may see.
    owned: Vec<(String, String)>,
}

impl Seed {
    fn secret(&self, who: Who) -> Option<&str> {
        match who {
            Who::Admin => Some(&self.admin),
            Who::Approver => Some(&self.approver),
            Who::Finance => Some(&self.finance),
            Who::TenantA => Some(&self.tenant_a),
            Who::TenantB => Some(&self.tenant_b),
            Who::Revoked => Some(&self.revoked),
            Who::Garbage => {
                Some("tg_0000000000000000000000000000000000000000000000000000000000000000")
            }
            Who::NoToken => None,
        }
    }

    fn own(&mut self, owner: &str, text: &str) {
        self.owned.push((owner.to_owned(), text.to_owned()));
    }
}

/// A token's secret and id.
async fn token(app: &AdminApp, role: &str, tenant: Option<&str>) -> (String, String) {
    let mut body = json!({"name": format!("matrix {role}"), "role": role});
    if let Some(tenant) = tenant {
        body["tenant_id"] = tenant.into();
    }
    let created = app.post("/tokens", ADMIN, body).await.expect(201);
    (
        created.body["secret"].as_str().unwrap().to_owned(),
        created.body["id"].as_str().unwrap().to_owned(),
    )
}

fn id_of(answer: &Answer) -> String {
    answer.body["id"].as_str().expect("an id").to_owned()
}

fn monthly_cost(tenant: &str, name: &str) -> Value {
    json!({"name": name, "scope": "tenant", "tenant_id": tenant, "measure": "cost", "period": {"calendar": "month"},
        "amount": "100.00", "enforcement": "hard", "alert_thresholds": [80, 100]})
}

fn event(
    request_id: &str,
    tenant: &str,
    session: &str,
    model: &str,
    lines: &[(&str, u64, i64)],
) -> UsageEvent {
    UsageEvent {
        request_id: request_id.into(),
        tenant_id: tenant.into(),
        session_id: Some(session.into()),
        model: Some(model.into()),
        domain: Some(DOMAIN.into()),
        occurred_at: NOW - DAY,
        currency: "USD".into(),
        lines: lines
            .iter()
            .map(|(token_type, tokens, cost_micros)| UsageLine {
                token_type: (*token_type).into(),
                tokens: *tokens,
                cost_micros: *cost_micros,
            })
            .collect(),
    }
}

/// Two active tenants with a budget, a pending request and usage each; a price; a global
/// budget; a token of every role and a revoked admin token.
async fn seed(app: &AdminApp) -> Seed {
    for tenant in [ALPHA, BRAVO] {
        app.active_tenant(tenant, &[]).await;
    }
    for (token_type, amount) in [("input", "3.00"), ("output", "15.00")] {
        let price = json!({"model": "claude-sonnet", "token_type": token_type, "currency": "USD", "price_per_million": amount, "effective_from": NOV_1});
        app.post("/prices", ADMIN, price).await.expect(201);
    }
    let (approver, _) = token(app, "approver", None).await;
    let (finance, _) = token(app, "finance", None).await;
    let (tenant_a, tenant_a_id) = token(app, "tenant", Some(ALPHA)).await;
    let (tenant_b, tenant_b_id) = token(app, "tenant", Some(BRAVO)).await;
    let (revoked, revoked_id) = token(app, "admin", None).await;
    app.delete(&format!("/tokens/{revoked_id}"), ADMIN)
        .await
        .expect(200);

    let budget_a = id_of(
        &app.post("/budgets", ADMIN, monthly_cost(ALPHA, "alpha-monthly"))
            .await
            .expect(201),
    );
    let budget_b = id_of(
        &app.post("/budgets", ADMIN, monthly_cost(BRAVO, "bravo-monthly"))
            .await
            .expect(201),
    );
    let global = json!({"name": "platform-global", "scope": "global", "measure": "cost", "currency": "USD",
        "period": {"calendar": "month"}, "amount": "1000.00", "enforcement": "soft"});
    let budget_global = id_of(&app.post("/budgets", ADMIN, global).await.expect(201));

    let ask = |model: &str| json!({"kind": "model_access", "reason": format!("{model} please"), "payload": {"model": model}});
    let approval_a = id_of(
        &app.post("/approvals", &tenant_a, ask("alpha-model"))
            .await
            .expect(201),
    );
    let approval_b = id_of(
        &app.post("/approvals", &tenant_b, ask("bravo-model"))
            .await
            .expect(201),
    );

    let usage = [
        event(
            "alpha-r1",
            ALPHA,
            "alpha-session",
            "claude-sonnet",
            &[("input", 1_000, 3_000), ("output", 100, 1_500)],
        ),
        event(
            "bravo-r1",
            BRAVO,
            "bravo-session",
            "bravo-model",
            &[("input", 500, 777)],
        ),
    ];
    app.ledger.record_usage(&usage).await.unwrap();
    let adjustment =
        json!({"tenant_id": BRAVO, "kind": "grant", "amount": "-1.25", "note": "bravo goodwill"});
    let adjustment_b = id_of(
        &app.post("/adjustments", ADMIN, adjustment)
            .await
            .expect(201),
    );

    let mut seed = Seed {
        admin: ADMIN.to_owned(),
        approver,
        finance,
        tenant_a,
        tenant_b,
        revoked,
        budget_a: budget_a.clone(),
        budget_global: budget_global.clone(),
        approval_a: approval_a.clone(),
        owned: Vec::new(),
    };
    // Every name of a tenant's holds its id; the ids of its records are listed too.
    for text in [
        ALPHA,
        tenant_a_id.as_str(),
        budget_a.as_str(),
        approval_a.as_str(),
    ] {
        seed.own(ALPHA, text);
    }
    for text in [
        BRAVO,
        tenant_b_id.as_str(),
        budget_b.as_str(),
        approval_b.as_str(),
        adjustment_b.as_str(),
    ] {
        seed.own(BRAVO, text);
    }
    seed.own(GLOBAL, "platform-global");
    seed.own(GLOBAL, &budget_global);
    seed.own(ZULU, ZULU);
    seed
}

/// Makes the resource a row needs for one caller; its id.
async fn make_fresh(app: &AdminApp, seed: &mut Seed, fresh: Fresh, n: usize) -> Option<String> {
    let zulu_tenant = async |status: TenantStatus| {
        let id = format!("{ZULU}{n}");
        app.active_tenant(&id, &[]).await;
        if status == TenantStatus::Suspended {
            app.post(&format!("/tenants/{id}/suspend"), ADMIN, json!({}))
                .await
                .expect(200);
        }
        id
    };
    let id = match fresh {
        Fresh::None => return None,
        Fresh::ApprovalOfA => {
            let body = json!({"kind": "model_access", "reason": "fresh", "payload": {"model": format!("alpha-fresh-{n}")}});
            id_of(
                &app.post("/approvals", &seed.tenant_a, body)
                    .await
                    .expect(201),
            )
        }
        Fresh::Token => token(app, "finance", None).await.1,
        Fresh::ActiveTenant => zulu_tenant(TenantStatus::Active).await,
        Fresh::SuspendedTenant => zulu_tenant(TenantStatus::Suspended).await,
        Fresh::BudgetOfA => {
            let body = monthly_cost(ALPHA, &format!("alpha-fresh-{n}"));
            id_of(&app.post("/budgets", ADMIN, body).await.expect(201))
        }
    };
    if fresh == Fresh::ApprovalOfA || fresh == Fresh::BudgetOfA {
        seed.own(ALPHA, &id);
    }
    Some(id)
}

/// The matrix. Columns: admin, approver, finance, tenant A, tenant B.
fn matrix(seed: &Seed) -> Vec<Row> {
    use Method as M;
    let (budget_a, budget_global, approval_a) = (
        seed.budget_a.clone(),
        seed.budget_global.clone(),
        seed.approval_a.clone(),
    );
    // Above the budget's amount (100 for A's, 1000 for the global one).
    let increase = |budget: &str, above: usize| {
        let budget = budget.to_owned();
        move |who: Who| {
            // A distinct amount per caller: each is a request of its own.
            let amount = format!("{}.00", above + 1 + who.column().unwrap_or(9));
            json!({"kind": "budget_increase", "reason": "more", "payload": {"budget_id": budget, "amount": amount}})
        }
    };
    vec![
        // The API's shape is public.
        row(M::GET, "/v1/openapi.json", "/openapi.json", "ok ok ok ok ok").public(),
        // Tenants: admins write; staff read all; a tenant reads only itself.
        row(M::POST, "/v1/tenants", "/tenants", "ok 403 403 403 403")
            .body(|who| json!({"id": format!("{ZULU}new-{}", who.name()), "name": "New", "currency": "USD"})),
        row(M::POST, "/v1/tenants", "/tenants", "422 403 403 403 403").body(|_| json!({})),
        row(M::GET, "/v1/tenants", "/tenants", "ok ok ok ok ok").shows_tenants(),
        row(M::GET, "/v1/tenants", "/tenants?status=active&cost_centre=R%26D-42&limit=500", "ok ok ok ok ok").shows_tenants(),
        row(M::GET, "/v1/tenants/{id}", "/tenants/alpha", "ok ok ok ok 404"),
        row(M::PATCH, "/v1/tenants/{id}", "/tenants/alpha", "ok 403 403 403 403").body(|_| json!({"name": "alpha Inc. (renamed)"})),
        row(M::PATCH, "/v1/tenants/{id}", "/tenants/alpha", "422 403 403 403 403").body(|_| json!({"colour": "red"})),
        row(M::POST, "/v1/tenants/{id}/suspend", "/tenants/{fresh}/suspend", "ok 403 403 403 403").fresh(Fresh::ActiveTenant),
        row(M::POST, "/v1/tenants/{id}/reactivate", "/tenants/{fresh}/reactivate", "ok 403 403 403 403").fresh(Fresh::SuspendedTenant),
        // Not suspended: a conflict, but only for those who may reactivate.
        row(M::POST, "/v1/tenants/{id}/reactivate", "/tenants/alpha/reactivate", "409 403 403 403 403"),
        // Tokens: admins only, a tenant may not even mint its own.
        row(M::POST, "/v1/tokens", "/tokens", "ok 403 403 403 403").body(|who| json!({"name": format!("by {}", who.name()), "role": "finance"})),
        row(M::POST, "/v1/tokens", "/tokens", "ok 403 403 403 403")
            .body(|who| json!({"name": format!("by {}", who.name()), "role": "tenant", "tenant_id": ALPHA})),
        row(M::POST, "/v1/tokens", "/tokens", "422 403 403 403 403").body(|_| json!({"name": "x", "role": "root"})),
        row(M::GET, "/v1/tokens", "/tokens", "ok 403 403 403 403"),
        row(M::DELETE, "/v1/tokens/{id}", "/tokens/{fresh}", "ok 403 403 403 403").fresh(Fresh::Token),
        // Audit: admins and finance.
        row(M::GET, "/v1/audit", "/audit", "ok 403 ok 403 403"),
        row(M::GET, "/v1/audit", "/audit?entity_type=tenant&entity_id=alpha", "ok 403 ok 403 403"),
        row(M::GET, "/v1/audit", "/audit?colour=red", "422 403 422 403 403"),
        // Prices: admins write; everyone reads (prices are not a tenant's secret).
        row(M::POST, "/v1/prices", "/prices", "ok 403 403 403 403").body(|who| {
            json!({"model": format!("matrix-{}", who.name()), "token_type": "input", "currency": "USD", "price_per_million": "1.00", "effective_from": NOV_1})
        }),
        row(M::POST, "/v1/prices", "/prices", "422 403 403 403 403")
            .body(|_| json!({"model": "m", "token_type": "input", "currency": "USD", "price_per_million": "-1.00"})),
        row(M::GET, "/v1/prices", "/prices", "ok ok ok ok ok"),
        row(M::GET, "/v1/prices/lookup", "/prices/lookup?model=claude-sonnet&token_type=input&currency=USD", "ok ok ok ok ok"),
        // Budgets: admins write; staff read all; a tenant reads its own (not global ones).
        row(M::POST, "/v1/budgets", "/budgets", "ok 403 403 403 403").body(|who| monthly_cost(ALPHA, &format!("alpha-by-{}", who.name()))),
        row(M::POST, "/v1/budgets", "/budgets", "422 403 403 403 403").body(|_| json!({"name": "x", "scope": "galaxy"})),
        row(M::GET, "/v1/budgets", "/budgets", "ok ok ok ok ok").shows_tenants(),
        row(M::GET, "/v1/budgets", "/budgets?include_retired=true&limit=500", "ok ok ok ok ok").shows_tenants(),
        row(M::GET, "/v1/budgets", "/budgets?scope=global", "ok ok ok ok ok"),
        row(M::GET, "/v1/budgets", "/budgets?tenant_id=alpha", "ok ok ok ok 404"),
        row(M::GET, "/v1/budgets/{id}", format!("/budgets/{budget_a}"), "ok ok ok ok 404"),
        row(M::GET, "/v1/budgets/{id}", format!("/budgets/{budget_global}"), "ok ok ok 404 404"),
        row(M::PATCH, "/v1/budgets/{id}", format!("/budgets/{budget_a}"), "ok 403 403 403 403").body(|_| json!({"alert_thresholds": [50, 90]})),
        row(M::PATCH, "/v1/budgets/{id}", format!("/budgets/{budget_a}"), "422 403 403 403 403").body(|_| json!({"amount": "-5.00"})),
        row(M::DELETE, "/v1/budgets/{id}", "/budgets/{fresh}", "ok 403 403 403 403").fresh(Fresh::BudgetOfA),
        // Approvals: admins and tenants (for themselves) file; staff read all, tenants their own.
        row(M::POST, "/v1/approvals", "/approvals", "ok 403 403 ok 404").body(|who| {
            json!({"kind": "model_access", "tenant_id": ALPHA, "reason": "r", "payload": {"model": format!("alpha-asked-by-{}", who.name())}})
        }),
        row(M::POST, "/v1/approvals", "/approvals", "ok 403 403 ok 404").body(increase(&budget_a, 100)),
        row(M::POST, "/v1/approvals", "/approvals", "ok 403 403 404 404").body(increase(&budget_global, 1000)),
        row(M::POST, "/v1/approvals", "/approvals", "422 403 403 422 422").body(|_| json!({"kind": "world_peace", "reason": "r"})),
        row(M::GET, "/v1/approvals", "/approvals", "ok ok ok ok ok").shows_tenants(),
        row(M::GET, "/v1/approvals", "/approvals?status=pending&kind=model_access&limit=500", "ok ok ok ok ok").shows_tenants(),
        row(M::GET, "/v1/approvals", "/approvals?tenant_id=alpha", "ok ok ok ok 404"),
        row(M::GET, "/v1/approvals/{id}", format!("/approvals/{approval_a}"), "ok ok ok ok 404"),
        // Approvers and admins decide (never their own); tenants and finance may not.
        row(M::POST, "/v1/approvals/{id}/approve", "/approvals/{fresh}/approve", "ok ok 403 403 403").fresh(Fresh::ApprovalOfA),
        row(M::POST, "/v1/approvals/{id}/approve", "/approvals/{fresh}/approve", "422 422 403 403 403")
            .fresh(Fresh::ApprovalOfA)
            .body(|_| json!({"verdict": "yes"})),
        row(M::POST, "/v1/approvals/{id}/reject", "/approvals/{fresh}/reject", "ok ok 403 403 403").fresh(Fresh::ApprovalOfA),
        row(M::POST, "/v1/approvals/{id}/reject", "/approvals/{fresh}/reject", "422 422 403 403 403")
            .fresh(Fresh::ApprovalOfA)
            .body(|_| json!({"note": ""})),
        // The requester (tenant A's token here) or an admin cancels.
        row(M::POST, "/v1/approvals/{id}/cancel", "/approvals/{fresh}/cancel", "ok 403 403 ok 404").fresh(Fresh::ApprovalOfA),
        // Reports: admins, finance, and tenants for themselves; approvers may not.
        row(M::GET, "/v1/reports/spend", format!("/reports/spend?{RANGE}&group_by=tenant,model,session"), "ok 403 ok ok ok").shows_tenants(),
        row(M::GET, "/v1/reports/spend", format!("/reports/spend?{RANGE}&group_by=tenant,session,day&format=csv"), "ok 403 ok ok ok")
            .shows_tenants(),
        row(M::GET, "/v1/reports/spend", format!("/reports/spend?{RANGE}&tenant_id=alpha&group_by=tenant"), "ok 403 ok ok 404"),
        row(M::GET, "/v1/reports/spend", "/reports/spend?group_by=tenant", "422 403 422 422 422"),
        row(M::GET, "/v1/reports/budgets", "/reports/budgets", "ok 403 ok ok ok").shows_tenants(),
        row(M::GET, "/v1/reports/budgets", "/reports/budgets?format=csv", "ok 403 ok ok ok").shows_tenants(),
        row(M::GET, "/v1/reports/budgets", "/reports/budgets?tenant_id=alpha", "ok 403 ok ok 404"),
        // Drift of the budget counters from the ledger: the same readers; global budgets
        // only for staff without a tenant filter.
        row(M::GET, "/v1/reports/drift", "/reports/drift", "ok 403 ok ok ok").shows_tenants(),
        row(M::GET, "/v1/reports/drift", "/reports/drift?format=csv", "ok 403 ok ok ok").shows_tenants(),
        row(M::GET, "/v1/reports/drift", "/reports/drift?tenant_id=alpha", "ok 403 ok ok 404"),
        row(M::GET, "/v1/reports/drift", "/reports/drift?format=csv&limit=5", "422 403 422 422 422"),
        // Corrections to the ledger: admins only.
        row(M::POST, "/v1/adjustments", "/adjustments", "ok 403 403 403 403")
            .body(|who| json!({"tenant_id": ALPHA, "kind": "adjustment", "amount": "1.00", "note": format!("alpha fix by {}", who.name())})),
        row(M::POST, "/v1/adjustments", "/adjustments", "422 403 403 403 403")
            .body(|_| json!({"tenant_id": ALPHA, "kind": "grant", "amount": "5.00", "note": "a grant must be negative"})),
    ]
}

/// Changes on record: audit entries and ledger entries.
async fn changes(app: &AdminApp) -> (i64, i64) {
    let count = async |table: &str| -> i64 {
        sqlx::query_scalar(&format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {table}"))
            .fetch_one(app.ledger.pool())
            .await
            .unwrap()
    };
    (count("audit_log").await, count("ledger_entries").await)
}

/// Runs every row for every caller; the mismatches, one line each.
async fn run_matrix(app: &AdminApp, seed: &mut Seed, rows: &[Row]) -> (Vec<String>, usize) {
    let mut failures = Vec::new();
    let mut requests = 0;
    for row in rows {
        for who in Who::ALL {
            let fresh = make_fresh(app, seed, row.fresh, requests).await;
            let path = row
                .path
                .replace("{fresh}", fresh.as_deref().unwrap_or_default());
            let body = row.body.as_ref().map(|body| body(who));
            let before = changes(app).await;
            let answer = app
                .send(row.method.clone(), &path, seed.secret(who), body.as_ref())
                .await;
            requests += 1;
            let status = answer.status.as_u16();
            let want = row.expected(who);
            let label = format!("{} {path} as {}", row.method, who.name());
            let mut fail = |why: String| {
                failures.push(format!(
                    "{label}: {why}; body: {}",
                    answer.text.chars().take(300).collect::<String>()
                ))
            };
            if !accepts(want, status) {
                fail(format!("expected {want}, got {status}"));
                continue;
            }
            let code = match status {
                401 => Some("unauthenticated"),
                403 => Some("forbidden"),
                404 => Some("not_found"),
                409 => Some("conflict"),
                422 => Some("invalid"),
                _ => None,
            };
            if let Some(code) = code
                && answer.code() != code
            {
                fail(format!(
                    "a {status} with error code '{}', not '{code}'",
                    answer.code()
                ));
            }
            if answer.text.contains("no such route") {
                fail("the matrix names a path the router does not have".into());
            }
            if !answer.status.is_success() && changes(app).await != before {
                fail(format!("a {status} changed the ledger or the audit log"));
            }
            let request = format!(
                "{path} {}",
                body.as_ref().map(Value::to_string).unwrap_or_default()
            );
            if let Some(own) = who.tenant() {
                for (owner, text) in &seed.owned {
                    if owner != own
                        && !request.contains(text.as_str())
                        && answer.text.contains(text.as_str())
                    {
                        fail(format!(
                            "a tenant token of '{own}' sees '{text}' of '{owner}'"
                        ));
                    }
                }
                if row.shows_tenants && answer.status.is_success() && !answer.text.contains(own) {
                    fail(format!("tenant '{own}' does not see its own data"));
                }
            }
            if who.is_staff()
                && row.shows_tenants
                && answer.status.is_success()
                && !(answer.text.contains(ALPHA) && answer.text.contains(BRAVO))
            {
                fail("staff do not see both tenants".into());
            }
        }
    }
    (failures, requests)
}

/// `(METHOD, /v1/path)` of every route the admin router's source declares: each
/// `.route("path", get(..).post(..))` in `src/admin/*.rs`, under `/v1`.
fn source_routes() -> BTreeSet<(String, String)> {
    const METHODS: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/admin");
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().path();
        if file.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&file).unwrap();
        let mut rest = source.as_str();
        while let Some(at) = rest.find(".route(") {
            // The call's text, up to its closing parenthesis.
            let call = &rest[at + ".route".len()..];
            let mut depth = 0;
            let end = call
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or_else(|| panic!("{}: an unclosed .route(", file.display()));
            let call = &call[..end];
            rest = &rest[at + 1..];
            let path = call.split('"').nth(1).unwrap_or_else(|| {
                panic!("{}: a route without a literal path: {call}", file.display())
            });
            let handlers = &call[call.find(path).unwrap() + path.len() + 1..];
            let mut found = false;
            for method in METHODS {
                let calls = handlers.match_indices(&format!("{method}(")).any(|(i, _)| {
                    handlers[..i]
                        .chars()
                        .next_back()
                        .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
                });
                if calls {
                    routes.insert((method.to_uppercase(), format!("/v1{path}")));
                    found = true;
                }
            }
            assert!(found, "{}: no method in {call}", file.display());
        }
    }
    routes
}

/// `(METHOD, path)` of every operation in the OpenAPI document.
fn openapi_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete", "head", "options"]
                .contains(&method.as_str())
            {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

/// Whether a concrete `/v1`-relative path (with query) fits a route template.
fn fits(route: &str, path: &str) -> bool {
    let path = format!("/v1{}", path.split('?').next().unwrap());
    let (route, path): (Vec<&str>, Vec<&str>) =
        (route.split('/').collect(), path.split('/').collect());
    route.len() == path.len()
        && route
            .iter()
            .zip(&path)
            .all(|(r, p)| r == p || (r.starts_with('{') && !p.is_empty()))
}

fn differences(
    what: &str,
    left: &BTreeSet<(String, String)>,
    right: &BTreeSet<(String, String)>,
    out: &mut String,
) {
    for route in left.difference(right) {
        writeln!(out, "{} {} {what}", route.0, route.1).unwrap();
    }
}

on_both_databases! {
    async fn every_route_against_every_caller(db: Db) {
        let app = spawn(db).await;
        let mut seed = seed(&app).await;
        let rows = matrix(&seed);

        // Every route has rows, and every row names a route that exists.
        let doc = app.send(Method::GET, "/openapi.json", None, None).await.expect(200);
        let documented = openapi_routes(&doc.body);
        let declared = source_routes();
        let covered: BTreeSet<(String, String)> = rows.iter().map(|r| (r.method.to_string(), r.route.to_owned())).collect();
        let mut documented_and_served = documented.clone();
        documented_and_served.insert(("GET".into(), "/v1/openapi.json".into()));
        let mut gaps = String::new();
        differences("is declared in src/admin but has no matrix row", &declared, &covered, &mut gaps);
        differences("is in the OpenAPI document but has no matrix row", &documented, &covered, &mut gaps);
        differences("has a matrix row but is not declared in src/admin", &covered, &declared, &mut gaps);
        differences("is declared in src/admin but not in the OpenAPI document", &declared, &documented_and_served, &mut gaps);
        for row in &rows {
            if !fits(row.route, &row.path) {
                writeln!(gaps, "row {} {} is labelled {}", row.method, row.path, row.route).unwrap();
            }
        }
        assert!(gaps.is_empty(), "routes and matrix disagree:\n{gaps}");
        assert!(declared.len() >= 28, "the source parser found only {} routes: {declared:?}", declared.len());

        let started = std::time::Instant::now();
        let (failures, requests) = run_matrix(&app, &mut seed, &rows).await;
        assert!(failures.is_empty(), "{} of {requests} requests went wrong:\n{}", failures.len(), failures.join("\n"));
        eprintln!("{db:?}: {} rows x {} callers = {requests} requests in {:?}", rows.len(), Who::ALL.len(), started.elapsed());
    }
}
