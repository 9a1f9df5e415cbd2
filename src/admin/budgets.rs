//! `/v1/budgets`: create, list, read, update and retire budgets. Admins write; approvers and
//! finance read all; a tenant token reads only its own tenant's budgets (not global ones).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, Page, Query, default_limit};
use super::{AdminState, List};
use crate::ledger::budgets::{Budget, BudgetFilter, BudgetUpdate, NewBudget, Scope};
use crate::ledger::tokens::Role;

/// Who may read budgets (a tenant token only its own tenant's).
const READERS: &[Role] = &[Role::Approver, Role::Finance, Role::Tenant];

/// The budget routes.
pub fn router() -> Router<AdminState> {
    Router::new()
        .route("/budgets", post(create_budget).get(list_budgets))
        .route(
            "/budgets/{id}",
            get(get_budget).patch(update_budget).delete(retire_budget),
        )
}

/// Creates a budget. Every combination of scope, measure, period and amount is checked;
/// the offending field is named.
#[utoipa::path(post, path = "/v1/budgets", tag = "budgets", request_body = NewBudget,
    responses((status = 201, body = Budget), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_budget(
    State(state): State<AdminState>,
    caller: Caller,
    new: Result<Body<NewBudget>, ApiError>,
) -> Result<(StatusCode, Json<Budget>), ApiError> {
    caller.require(&[])?;
    let Body(new) = new?;
    let def = new.validate()?;
    Ok((
        StatusCode::CREATED,
        Json(state.ledger.create_budget(caller.actor(), &def).await?),
    ))
}

/// A budget the caller may see; others' answer 404 like unknown ones.
async fn visible_budget(state: &AdminState, caller: &Caller, id: &str) -> Result<Budget, ApiError> {
    let budget = state.ledger.budget(id).await?;
    if let Some(own) = caller.scope()
        && budget.tenant_id.as_deref() != Some(own)
    {
        return Err(ApiError::NotFound(format!("budget '{id}' not found")));
    }
    Ok(budget)
}

/// One budget, retired or not, with the overrides in force now.
#[utoipa::path(get, path = "/v1/budgets/{id}", tag = "budgets",
    responses((status = 200, body = Budget), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_budget(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Budget>, ApiError> {
    caller.require(READERS)?;
    Ok(Json(visible_budget(&state, &caller, &id).await?))
}

/// Filters and pagination for the budget list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BudgetQuery {
    /// Only this tenant's budgets.
    pub tenant_id: Option<String>,
    /// Only budgets of this scope.
    pub scope: Option<Scope>,
    /// Also retired budgets (default false).
    #[serde(default)]
    pub include_retired: bool,
    /// Items per page, 1-500 (default 50).
    #[serde(default = "default_limit")]
    pub limit: i64,
    /// Items to skip.
    #[serde(default)]
    pub offset: i64,
}

/// Live budgets (and retired ones when asked), by tenant, name and id; global ones first.
#[utoipa::path(get, path = "/v1/budgets", tag = "budgets", params(BudgetQuery),
    responses((status = 200, body = List<Budget>), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_budgets(
    State(state): State<AdminState>,
    caller: Caller,
    query: Result<Query<BudgetQuery>, ApiError>,
) -> Result<Json<List<Budget>>, ApiError> {
    caller.require(READERS)?;
    let Query(query) = query?;
    let page = Page {
        limit: query.limit,
        offset: query.offset,
    }
    .validate()?;
    let filter = BudgetFilter {
        tenant_id: caller.tenant_filter(query.tenant_id.as_deref())?,
        scope: query.scope,
        include_retired: query.include_retired,
        limit: page.limit + 1,
        offset: page.offset,
    };
    Ok(Json(List::page(state.ledger.budgets(&filter).await?, page)))
}

/// Changes a live budget's name, period, amount, enforcement or alert thresholds.
#[utoipa::path(patch, path = "/v1/budgets/{id}", tag = "budgets", request_body = BudgetUpdate,
    responses((status = 200, body = Budget), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_budget(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    update: Result<Body<BudgetUpdate>, ApiError>,
) -> Result<Json<Budget>, ApiError> {
    caller.require(&[])?;
    let Body(update) = update?;
    // What is checked against here (scope, measure) never changes, so a stale read is safe.
    let budget = state.ledger.budget(&id).await?;
    let def = update.apply_to(&budget)?;
    Ok(Json(
        state
            .ledger
            .update_budget(caller.actor(), &id, &def)
            .await?,
    ))
}

/// Retires a budget: it stops counting from now on, and stays on record. Twice is a conflict.
#[utoipa::path(delete, path = "/v1/budgets/{id}", tag = "budgets",
    responses((status = 200, body = Budget), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn retire_budget(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Budget>, ApiError> {
    caller.require(&[])?;
    Ok(Json(state.ledger.retire_budget(caller.actor(), &id).await?))
}
