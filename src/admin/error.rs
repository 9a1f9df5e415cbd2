//! One error body for the whole admin API:
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ledger::LedgerError;
use crate::ledger::drift::DriftError;
use crate::ledger::tenants::Invalid;

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code.
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
    /// The offending field, as a path into the request body (validation errors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An admin API failure.
#[derive(Debug)]
pub enum ApiError {
    /// No or unknown bearer token (401).
    Unauthenticated,
    /// The token may not do this (403).
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// The request clashes with the current state (409).
    Conflict(String),
    /// A field is invalid (422).
    Invalid(Invalid),
    /// The body is not JSON, or too large, or the wrong media type (400/413/415).
    BadRequest(StatusCode, String),
    /// A backend the answer needs is down (503): the counter store for reports that read
    /// counters. Worth retrying, unlike a 500.
    Unavailable(String),
    /// Anything unexpected (500); the cause is logged, not shown.
    Internal(String),
}

impl From<LedgerError> for ApiError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::NotFound { .. } => ApiError::NotFound(error.to_string()),
            LedgerError::Conflict(message) => ApiError::Conflict(message),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<DriftError> for ApiError {
    fn from(error: DriftError) -> Self {
        match error {
            DriftError::Ledger(e) => e.into(),
            DriftError::Store(e) => ApiError::Unavailable(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::Invalid(invalid)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, field) = match self {
            ApiError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "a valid bearer token is required (Authorization: Bearer <token>)".to_owned(),
                None,
            ),
            ApiError::Forbidden(message) => (StatusCode::FORBIDDEN, "forbidden", message, None),
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, "not_found", message, None),
            ApiError::Conflict(message) => (StatusCode::CONFLICT, "conflict", message, None),
            ApiError::Invalid(invalid) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!("{}: {}", invalid.field, invalid.message),
                Some(invalid.field),
            ),
            ApiError::BadRequest(status, message) => (status, "bad_request", message, None),
            ApiError::Unavailable(cause) => {
                tracing::warn!(%cause, "admin API answer needs a backend that is down");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("{cause}; try again later"),
                    None,
                )
            }
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "admin API internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_owned(),
                    None,
                )
            }
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message,
                field,
            },
        };
        (status, Json(body)).into_response()
    }
}
