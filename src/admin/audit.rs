//! `/v1/audit`: the audit log, by actor, entity and time range. Admins and finance.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{Page, Query, default_limit};
use super::{AdminState, List};
use crate::ledger::audit::{AuditEntry, AuditQuery};
use crate::ledger::tokens::Role;

/// The audit routes.
pub fn router() -> Router<AdminState> {
    Router::new().route("/audit", get(list_audit))
}

/// Filters for the audit log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// The token id that made the changes.
    pub actor: Option<String>,
    /// `tenant`, `token`, `price`, `budget`, `approval`, ...
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    /// From this time (milliseconds since the epoch, inclusive).
    pub from: Option<i64>,
    /// Until this time (milliseconds since the epoch, exclusive).
    pub to: Option<i64>,
    /// Items per page, 1-500 (default 50).
    #[serde(default = "default_limit")]
    pub limit: i64,
    /// Items to skip.
    #[serde(default)]
    pub offset: i64,
}

/// Audit entries, oldest first.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = List<AuditEntry>)), security(("bearer" = [])))]
pub async fn list_audit(
    State(state): State<AdminState>,
    caller: Caller,
    params: Result<Query<AuditParams>, ApiError>,
) -> Result<Json<List<AuditEntry>>, ApiError> {
    caller.require(&[Role::Finance])?;
    let Query(params) = params?;
    let page = Page {
        limit: params.limit,
        offset: params.offset,
    }
    .validate()?;
    for (field, value) in [
        ("actor", &params.actor),
        ("entity_type", &params.entity_type),
        ("entity_id", &params.entity_id),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > 200) {
            return Err(crate::ledger::tenants::Invalid::new(
                field,
                "must be at most 200 characters",
            )
            .into());
        }
    }
    let query = AuditQuery {
        actor: params.actor,
        entity_type: params.entity_type,
        entity_id: params.entity_id,
        from_ms: params.from,
        to_ms: params.to,
        limit: page.limit + 1,
        offset: page.offset,
    };
    Ok(Json(List::page(state.ledger.audit(&query).await?, page)))
}
