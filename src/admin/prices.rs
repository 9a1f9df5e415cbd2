//! `/v1/prices`: add a price version (admins), list versions and look up the price in force
//! at a time (admins, approvers, finance and tenant tokens: prices are not a tenant's secret).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, Page, Query, default_limit};
use super::{AdminState, List};
use crate::ledger::prices::{NewPrice, Price, PriceFilter, validate_model, validate_time};
use crate::ledger::tenants::{validate_currency, validate_slug};
use crate::ledger::tokens::Role;

/// Who may read prices.
const READERS: &[Role] = &[Role::Approver, Role::Finance, Role::Tenant];

/// The price routes.
pub fn router() -> Router<AdminState> {
    Router::new()
        .route("/prices", post(create_price).get(list_prices))
        .route("/prices/lookup", get(lookup_price))
}

/// Adds a price version: from `effective_from` on (now when absent), usage of `model`'s
/// `token_type` tokens in `currency` costs `price_per_million` per million tokens.
#[utoipa::path(post, path = "/v1/prices", tag = "prices", request_body = NewPrice,
    responses((status = 201, body = Price), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_price(
    State(state): State<AdminState>,
    caller: Caller,
    new: Result<Body<NewPrice>, ApiError>,
) -> Result<(StatusCode, Json<Price>), ApiError> {
    caller.require(&[])?;
    let Body(new) = new?;
    let micros = new.validate()?;
    Ok((
        StatusCode::CREATED,
        Json(state.ledger.add_price(caller.actor(), &new, micros).await?),
    ))
}

/// Filters and pagination for the price list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PriceQuery {
    pub model: Option<String>,
    pub token_type: Option<String>,
    pub currency: Option<String>,
    /// Items per page, 1-500 (default 50).
    #[serde(default = "default_limit")]
    pub limit: i64,
    /// Items to skip.
    #[serde(default)]
    pub offset: i64,
}

/// Price versions, by model, token type, currency and effective time.
#[utoipa::path(get, path = "/v1/prices", tag = "prices", params(PriceQuery),
    responses((status = 200, body = List<Price>), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_prices(
    State(state): State<AdminState>,
    caller: Caller,
    query: Result<Query<PriceQuery>, ApiError>,
) -> Result<Json<List<Price>>, ApiError> {
    caller.require(READERS)?;
    let Query(query) = query?;
    let page = Page {
        limit: query.limit,
        offset: query.offset,
    }
    .validate()?;
    if let Some(model) = &query.model {
        validate_model("model", model)?;
    }
    if let Some(token_type) = &query.token_type {
        validate_slug("token_type", token_type)?;
    }
    if let Some(currency) = &query.currency {
        validate_currency("currency", currency)?;
    }
    let filter = PriceFilter {
        model: query.model,
        token_type: query.token_type,
        currency: query.currency,
        limit: page.limit + 1,
        offset: page.offset,
    };
    Ok(Json(List::page(state.ledger.prices(&filter).await?, page)))
}

/// What to look up.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    pub model: String,
    pub token_type: String,
    pub currency: String,
    /// The time (milliseconds since the epoch, UTC); now when absent.
    pub at: Option<i64>,
}

/// The price version in force at `at`: the one with the greatest `effective_from <= at`.
#[utoipa::path(get, path = "/v1/prices/lookup", tag = "prices", params(LookupQuery),
    responses((status = 200, body = Price), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn lookup_price(
    State(state): State<AdminState>,
    caller: Caller,
    query: Result<Query<LookupQuery>, ApiError>,
) -> Result<Json<Price>, ApiError> {
    caller.require(READERS)?;
    let Query(query) = query?;
    validate_model("model", &query.model)?;
    validate_slug("token_type", &query.token_type)?;
    validate_currency("currency", &query.currency)?;
    let at = query.at.unwrap_or_else(|| state.ledger.now_ms());
    validate_time("at", at)?;
    match state
        .ledger
        .price_at(&query.model, &query.token_type, &query.currency, at)
        .await?
    {
        Some(price) => Ok(Json(price)),
        None => Err(ApiError::NotFound(format!(
            "no price of {} {} tokens in {} is in force at {at}",
            query.model, query.token_type, query.currency
        ))),
    }
}
