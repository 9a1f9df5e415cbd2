//! `/v1/tokens`: create (the secret is shown once), list, revoke. Admins only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, Page, Query, default_limit};
use super::{AdminState, List};
use crate::ledger::tokens::{ApiToken, CreatedToken, NewToken};

/// The token routes.
pub fn router() -> Router<AdminState> {
    Router::new()
        .route("/tokens", post(create_token).get(list_tokens))
        .route("/tokens/{id}", delete(revoke_token))
}

/// Creates a token and shows its secret, once.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<AdminState>,
    caller: Caller,
    new: Result<Body<NewToken>, ApiError>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    caller.require(&[])?;
    let Body(new) = new?;
    new.validate()?;
    if let Some(tenant) = &new.tenant_id {
        state.ledger.tenant(tenant).await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(
            state
                .ledger
                .create_token(caller.actor(), &new, None)
                .await?,
        ),
    ))
}

/// Pagination for the token list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    /// Items per page, 1-500 (default 50).
    #[serde(default = "default_limit")]
    pub limit: i64,
    /// Items to skip.
    #[serde(default)]
    pub offset: i64,
}

/// Every token, newest first, without secrets.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(TokenQuery),
    responses((status = 200, body = List<ApiToken>)), security(("bearer" = [])))]
pub async fn list_tokens(
    State(state): State<AdminState>,
    caller: Caller,
    query: Result<Query<TokenQuery>, ApiError>,
) -> Result<Json<List<ApiToken>>, ApiError> {
    caller.require(&[])?;
    let Query(query) = query?;
    let page = Page {
        limit: query.limit,
        offset: query.offset,
    }
    .validate()?;
    Ok(Json(List::page(
        state.ledger.tokens(page.limit + 1, page.offset).await?,
        page,
    )))
}

/// Revokes a token: it stops working at once.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    responses((status = 200, body = ApiToken), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ApiToken>, ApiError> {
    caller.require(&[])?;
    Ok(Json(state.ledger.revoke_token(caller.actor(), &id).await?))
}
