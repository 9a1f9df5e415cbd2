//! The admin REST API under `/v1`: tenants, tokens, audit, prices, budgets, approvals,
//! reports and ledger adjustments. Every route authenticates a bearer token
//! ([`auth::Caller`]); each area owns its `router()`; errors share one body
//! ([`error::ErrorBody`]); the OpenAPI document is generated from the handlers.

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod budgets;
pub mod error;
pub mod extract;
pub mod prices;
pub mod reports;
pub mod tenants;
pub mod tokens;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use self::error::ApiError;
use self::extract::{MAX_BODY_BYTES, Page};
use crate::ledger::Ledger;
use crate::ledger::drift::Counters;

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub ledger: Ledger,
    /// The budget counters, for the drift report and reservations in the budget report.
    pub counters: Counters,
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T> {
    pub items: Vec<T>,
    /// The `offset` of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<i64>,
}

impl<T> List<T> {
    /// A page from `items` fetched with one extra row to learn whether more follow.
    pub fn page(mut items: Vec<T>, page: Page) -> List<T> {
        let more = items.len() as i64 > page.limit;
        items.truncate(page.limit as usize);
        List {
            items,
            next_offset: more.then_some(page.offset + page.limit),
        }
    }
}

/// The `/v1` routes.
pub fn router(state: AdminState) -> Router {
    let v1 = Router::new()
        .merge(tenants::router())
        .merge(tokens::router())
        .merge(audit::router())
        .merge(prices::router())
        .merge(budgets::router())
        .merge(approvals::router())
        .merge(reports::router())
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found);
    Router::new()
        .nest("/v1", v1)
        // Bodies are bounded before any handler reads them.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

/// The OpenAPI document of the admin API.
#[derive(OpenApi)]
#[openapi(
    info(title = "tollgate admin API", description = "Tenants, budgets, prices, approvals, tokens, audit and reports."),
    paths(
        tenants::create_tenant, tenants::get_tenant, tenants::list_tenants, tenants::update_tenant,
        tenants::suspend_tenant, tenants::reactivate_tenant,
        tokens::create_token, tokens::list_tokens, tokens::revoke_token,
        audit::list_audit,
        prices::create_price, prices::list_prices, prices::lookup_price,
        budgets::create_budget, budgets::list_budgets, budgets::get_budget, budgets::update_budget,
        budgets::retire_budget,
        approvals::file_approval, approvals::list_approvals, approvals::get_approval,
        approvals::approve_approval, approvals::reject_approval, approvals::cancel_approval,
        reports::spend_report, reports::budget_report, reports::drift_report, reports::create_adjustment,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Served without authentication: the API's shape is not a secret.
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
