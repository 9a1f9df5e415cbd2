//! Request extractors that answer in the admin API's error shape: a JSON body that names
//! the offending field, and query strings.
//!
//! Handlers take these as `Result<Body<T>, ApiError>` / `Result<Query<T>, ApiError>` and
//! unwrap them only after the caller's role check: a caller that may not use a route gets
//! 403 whatever it sends, and a 422 always means authorization passed.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::ledger::tenants::Invalid;

/// Largest admin request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON body: 415 without a JSON content type, 413 when too large, 400 when not JSON,
/// 422 naming the field when a field is missing, unknown or of the wrong type.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::BadRequest(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON (Content-Type: application/json)".to_owned(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|_| {
            ApiError::BadRequest(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            )
        })?;
        // Syntax first, so broken JSON is a 400 and only well-formed bodies get field errors.
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return Err(ApiError::BadRequest(
                StatusCode::BAD_REQUEST,
                format!("malformed JSON: {e}"),
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de).map(Body).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "body".to_owned() } else { path };
            ApiError::Invalid(Invalid::new(field, e.into_inner().to_string()))
        })
    }
}

/// A query string; 422 naming the parameter when one is invalid.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." {
                    "query".to_owned()
                } else {
                    path
                };
                ApiError::Invalid(Invalid::new(field, e.into_inner().to_string()))
            })
    }
}

/// Pagination shared by every list; each list's query struct carries `limit` (1-500,
/// default [`default_limit`]) and `offset` (default 0) and builds one of these.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

/// Items per page when the query does not say.
pub fn default_limit() -> i64 {
    50
}

impl Page {
    /// Checks the bounds.
    pub fn validate(self) -> Result<Page, ApiError> {
        if !(1..=500).contains(&self.limit) {
            return Err(Invalid::new("limit", "must be 1-500").into());
        }
        if self.offset < 0 {
            return Err(Invalid::new("offset", "must not be negative").into());
        }
        Ok(self)
    }
}
