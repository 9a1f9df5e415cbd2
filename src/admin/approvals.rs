//! `/v1/approvals`: file, list, read, approve, reject and cancel approval requests.
//!
//! Who may do what:
//! - file: admins, and tenant tokens for their own tenant;
//! - read and list: admins, approvers and finance all; tenant tokens their own tenant's;
//! - approve and reject: approvers and admins, never the requester (403);
//! - cancel: the requester, or an admin.
//!
//! A pending request expires [`PENDING_TTL_MS`](crate::ledger::approvals::PENDING_TTL_MS)
//! (7 days) after it was filed; reading it afterwards shows it `expired`, and deciding it
//! is a conflict (409).

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, Page, Query, default_limit};
use super::{AdminState, List};
use crate::ledger::approvals::{
    Approval, ApprovalFiling, ApprovalFilter, ApprovalKind, ApprovalStatus, Decision, MAX_TEXT,
    NewApproval,
};
use crate::ledger::budgets::Amount;
use crate::ledger::tenants::{Invalid, validate_text};
use crate::ledger::tokens::Role;

/// Who may read requests (a tenant token only its own tenant's).
const READERS: &[Role] = &[Role::Approver, Role::Finance, Role::Tenant];

/// The approval routes.
pub fn router() -> Router<AdminState> {
    Router::new()
        .route("/approvals", post(file_approval).get(list_approvals))
        .route("/approvals/{id}", get(get_approval))
        .route("/approvals/{id}/approve", post(approve_approval))
        .route("/approvals/{id}/reject", post(reject_approval))
        .route("/approvals/{id}/cancel", post(cancel_approval))
}

/// Files a pending request. For budget requests the amount is written the budget's way (an
/// integer for requests and tokens, a decimal string for cost) and must be above the
/// budget's current amount.
#[utoipa::path(post, path = "/v1/approvals", tag = "approvals", request_body = NewApproval,
    responses((status = 201, body = Approval), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn file_approval(
    State(state): State<AdminState>,
    caller: Caller,
    new: Result<Body<NewApproval>, ApiError>,
) -> Result<(StatusCode, Json<Approval>), ApiError> {
    caller.require(&[Role::Tenant])?;
    let Body(new) = new?;
    new.validate(state.ledger.now_ms())?;
    let mut tenant_id = new
        .tenant_id
        .clone()
        .or_else(|| caller.scope().map(str::to_owned));
    let mut payload = new.payload.clone();
    if let Some(budget_id) = &new.payload.budget_id {
        let budget = state.ledger.budget(budget_id).await?;
        if let Some(own) = caller.scope()
            && budget.tenant_id.as_deref() != Some(own)
        {
            return Err(ApiError::NotFound(format!(
                "budget '{budget_id}' not found"
            )));
        }
        if budget.deleted_at.is_some() {
            return Err(ApiError::Conflict(format!(
                "budget '{budget_id}' is retired"
            )));
        }
        if new.tenant_id.is_some() && new.tenant_id != budget.tenant_id {
            let owner = budget
                .tenant_id
                .as_deref()
                .map_or("no tenant (it is global)".to_owned(), |t| {
                    format!("tenant '{t}'")
                });
            return Err(Invalid::new(
                "tenant_id",
                format!("budget '{budget_id}' belongs to {owner}"),
            )
            .into());
        }
        let amount = new
            .payload
            .amount
            .as_ref()
            .expect("validated: budget requests have an amount");
        let units = amount.to_units(budget.measure, "payload.amount")?;
        if units <= budget.amount_units {
            return Err(Invalid::new(
                "payload.amount",
                format!(
                    "must be above the budget's current amount ({})",
                    budget.amount
                ),
            )
            .into());
        }
        tenant_id = budget.tenant_id.clone();
        payload.amount = Some(Amount::from_units(budget.measure, units));
    } else if tenant_id.is_none() {
        return Err(Invalid::new(
            "tenant_id",
            format!("is required for a {} request", new.kind.as_str()),
        )
        .into());
    }
    if let Some(tenant) = &tenant_id {
        caller.may_see(tenant)?;
    }
    let filing = ApprovalFiling {
        kind: new.kind,
        tenant_id,
        reason: new.reason,
        payload,
    };
    Ok((
        StatusCode::CREATED,
        Json(state.ledger.file_approval(caller.actor(), &filing).await?),
    ))
}

/// Filters and pagination for the request list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ApprovalQuery {
    pub status: Option<ApprovalStatus>,
    pub kind: Option<ApprovalKind>,
    pub tenant_id: Option<String>,
    /// Items per page, 1-500 (default 50).
    #[serde(default = "default_limit")]
    pub limit: i64,
    /// Items to skip.
    #[serde(default)]
    pub offset: i64,
}

/// Requests, newest first; overdue pending ones show as expired.
#[utoipa::path(get, path = "/v1/approvals", tag = "approvals", params(ApprovalQuery),
    responses((status = 200, body = List<Approval>), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_approvals(
    State(state): State<AdminState>,
    caller: Caller,
    query: Result<Query<ApprovalQuery>, ApiError>,
) -> Result<Json<List<Approval>>, ApiError> {
    caller.require(READERS)?;
    let Query(query) = query?;
    let page = Page {
        limit: query.limit,
        offset: query.offset,
    }
    .validate()?;
    let filter = ApprovalFilter {
        status: query.status,
        kind: query.kind,
        tenant_id: caller.tenant_filter(query.tenant_id.as_deref())?,
        limit: page.limit + 1,
        offset: page.offset,
    };
    Ok(Json(List::page(
        state.ledger.approvals(&filter).await?,
        page,
    )))
}

/// A request the caller may see; others' answer 404 like unknown ones.
async fn visible_approval(
    state: &AdminState,
    caller: &Caller,
    id: &str,
) -> Result<Approval, ApiError> {
    let approval = state.ledger.approval(id).await?;
    if let Some(own) = caller.scope()
        && approval.tenant_id.as_deref() != Some(own)
    {
        return Err(ApiError::NotFound(format!("approval '{id}' not found")));
    }
    Ok(approval)
}

/// One request.
#[utoipa::path(get, path = "/v1/approvals/{id}", tag = "approvals",
    responses((status = 200, body = Approval), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_approval(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Approval>, ApiError> {
    caller.require(READERS)?;
    Ok(Json(visible_approval(&state, &caller, &id).await?))
}

/// An optional note on a decision or cancellation.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionNote {
    /// 1-2000 characters.
    #[serde(default)]
    pub note: Option<String>,
}

impl DecisionNote {
    fn validate(&self) -> Result<Option<&str>, Invalid> {
        if let Some(note) = &self.note {
            validate_text("note", note, MAX_TEXT)?;
        }
        Ok(self.note.as_deref())
    }
}

/// A JSON body that may also be left out entirely (no body, no content type).
pub struct OptionalBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if req.headers().contains_key(header::CONTENT_TYPE) {
            return Body::<T>::from_request(req, state)
                .await
                .map(|Body(t)| OptionalBody(t));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|_| {
            ApiError::BadRequest(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is too large".to_owned(),
            )
        })?;
        if bytes.is_empty() {
            Ok(OptionalBody(T::default()))
        } else {
            Err(ApiError::BadRequest(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON (Content-Type: application/json)".to_owned(),
            ))
        }
    }
}

async fn decide(
    state: AdminState,
    caller: Caller,
    id: String,
    decision: Decision,
    note: Result<OptionalBody<DecisionNote>, ApiError>,
) -> Result<Json<Approval>, ApiError> {
    caller.require(&[Role::Approver])?;
    let OptionalBody(note) = note?;
    let note = note.validate()?;
    let approval = visible_approval(&state, &caller, &id).await?;
    if approval.requested_by == caller.actor() {
        return Err(ApiError::Forbidden(format!(
            "approval '{id}' was filed with this token; the requester may not decide it (another approver or admin must)"
        )));
    }
    Ok(Json(
        state
            .ledger
            .decide_approval(caller.actor(), &id, decision, note)
            .await?,
    ))
}

/// Approves a pending request and applies its effect, all in one transaction. The requester
/// may not approve (403); an expired or already decided request is a conflict (409).
#[utoipa::path(post, path = "/v1/approvals/{id}/approve", tag = "approvals", request_body(content = DecisionNote, description = "optional"),
    responses((status = 200, body = Approval), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn approve_approval(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    note: Result<OptionalBody<DecisionNote>, ApiError>,
) -> Result<Json<Approval>, ApiError> {
    decide(state, caller, id, Decision::Approve, note).await
}

/// Rejects a pending request. The requester may not reject (403; it may cancel instead).
#[utoipa::path(post, path = "/v1/approvals/{id}/reject", tag = "approvals", request_body(content = DecisionNote, description = "optional"),
    responses((status = 200, body = Approval), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn reject_approval(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    note: Result<OptionalBody<DecisionNote>, ApiError>,
) -> Result<Json<Approval>, ApiError> {
    decide(state, caller, id, Decision::Reject, note).await
}

/// Withdraws a pending request: the requester or an admin.
#[utoipa::path(post, path = "/v1/approvals/{id}/cancel", tag = "approvals", request_body(content = DecisionNote, description = "optional"),
    responses((status = 200, body = Approval), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_approval(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<String>,
    note: Result<OptionalBody<DecisionNote>, ApiError>,
) -> Result<Json<Approval>, ApiError> {
    caller.require(READERS)?;
    let OptionalBody(note) = note?;
    let note = note.validate()?;
    let approval = visible_approval(&state, &caller, &id).await?;
    if caller.role() != Role::Admin && approval.requested_by != caller.actor() {
        return Err(ApiError::Forbidden(
            "only the requester or an admin may cancel a request".to_owned(),
        ));
    }
    Ok(Json(
        state
            .ledger
            .cancel_approval(caller.actor(), &id, note)
            .await?,
    ))
}
