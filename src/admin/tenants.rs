//! `/v1/tenants`: create (pending), read, list, update, suspend and reactivate.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, Page, Query, default_limit};
use super::{AdminState, List};
use crate::ledger::tenants::{
    NewTenant, Tenant, TenantFilter, TenantStatus, TenantUpdate, validate_text,
};
use crate::ledger::tokens::Role;

/// The tenant routes.
pub fn router() -> Router<AdminState> {
    Router::new()
        .route("/tenants", post(create_tenant).get(list_tenants))
        .route("/tenants/{id}", get(get_tenant).patch(update_tenant))
        .route("/tenants/{id}/suspend", post(suspend_tenant))
        .route("/tenants/{id}/reactivate", post(reactivate_tenant))
}

/// Creates a tenant. It starts `pending` and is denied until a tenant-activation approval.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = NewTenant,
    responses((status = 201, body = Tenant), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_tenant(
    State(state): State<AdminState>,
    caller: Caller,
    new: Result<Body<NewTenant>, ApiError>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    caller.require(&[])?;
    let Body(new) = new?;
    new.validate()?;
    let tenant = state.ledger.create_tenant(caller.actor(), &new).await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// One tenant.
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants",
    responses((status = 200, body = Tenant), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_tenant(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    caller.require(&[Role::Approver, Role::Finance, Role::Tenant])?;
    caller.may_see(&id)?;
    Ok(Json(state.ledger.tenant(&id).await?))
}

/// Filters and pagination for the tenant list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    /// Only tenants in this state.
    pub status: Option<TenantStatus>,
    /// Only tenants of this cost centre.
    pub cost_centre: Option<String>,
    /// Items per page, 1-500 (default 50).
    #[serde(default = "default_limit")]
    pub limit: i64,
    /// Items to skip.
    #[serde(default)]
    pub offset: i64,
}

/// Tenants, by id; a tenant token sees only its own.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", params(TenantQuery),
    responses((status = 200, body = List<Tenant>)), security(("bearer" = [])))]
pub async fn list_tenants(
    State(state): State<AdminState>,
    caller: Caller,
    query: Result<Query<TenantQuery>, ApiError>,
) -> Result<Json<List<Tenant>>, ApiError> {
    caller.require(&[Role::Approver, Role::Finance, Role::Tenant])?;
    let Query(query) = query?;
    let page = Page {
        limit: query.limit,
        offset: query.offset,
    }
    .validate()?;
    if let Some(cc) = &query.cost_centre {
        validate_text("cost_centre", cc, 100)?;
    }
    let filter = TenantFilter {
        status: query.status,
        cost_centre: query.cost_centre,
        only: caller.scope().map(str::to_owned),
        limit: page.limit + 1,
        offset: page.offset,
    };
    Ok(Json(List::page(state.ledger.tenants(&filter).await?, page)))
}

/// Changes a tenant's name, cost centre, currency, timezone or plan.
#[utoipa::path(patch, path = "/v1/tenants/{id}", tag = "tenants", request_body = TenantUpdate,
    responses((status = 200, body = Tenant), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_tenant(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    update: Result<Body<TenantUpdate>, ApiError>,
) -> Result<Json<Tenant>, ApiError> {
    caller.require(&[])?;
    let Body(update) = update?;
    update.validate()?;
    Ok(Json(
        state
            .ledger
            .update_tenant(caller.actor(), &id, &update)
            .await?,
    ))
}

/// Suspends an active tenant: its requests are denied from the next decision on.
#[utoipa::path(post, path = "/v1/tenants/{id}/suspend", tag = "tenants",
    responses((status = 200, body = Tenant), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn suspend_tenant(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    caller.require(&[])?;
    let tenant = state
        .ledger
        .set_tenant_status(
            caller.actor(),
            &id,
            &[TenantStatus::Active],
            TenantStatus::Suspended,
        )
        .await?;
    Ok(Json(tenant))
}

/// Reactivates a suspended tenant (a pending one needs a tenant-activation approval).
#[utoipa::path(post, path = "/v1/tenants/{id}/reactivate", tag = "tenants",
    responses((status = 200, body = Tenant), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn reactivate_tenant(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    caller.require(&[])?;
    let tenant = state
        .ledger
        .set_tenant_status(
            caller.actor(),
            &id,
            &[TenantStatus::Suspended],
            TenantStatus::Active,
        )
        .await?;
    Ok(Json(tenant))
}
