//! Bearer-token authentication and role checks.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::AdminState;
use super::error::ApiError;
use crate::ledger::tokens::{ApiToken, Role};

/// The authenticated caller of an admin request.
#[derive(Debug, Clone)]
pub struct Caller(pub ApiToken);

impl Caller {
    /// The audit actor for changes this caller makes.
    pub fn actor(&self) -> &str {
        &self.0.id
    }

    /// The caller's role.
    pub fn role(&self) -> Role {
        self.0.role
    }

    /// Passes when the caller has one of `roles` (admins always pass).
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if self.0.role == Role::Admin || roles.contains(&self.0.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "a {} token may not do this",
                self.0.role.as_str()
            )))
        }
    }

    /// The tenant a tenant-scoped caller is limited to; `None` for staff roles.
    pub fn scope(&self) -> Option<&str> {
        match self.0.role {
            Role::Tenant => self.0.tenant_id.as_deref(),
            _ => None,
        }
    }

    /// Passes when the caller may see `tenant`'s data: staff may, a tenant token only its own.
    /// Others' tenants answer 404, so a tenant cannot learn which ids exist.
    pub fn may_see(&self, tenant: &str) -> Result<(), ApiError> {
        match self.scope() {
            Some(own) if own != tenant => Err(ApiError::NotFound(format!("tenant '{tenant}' not found"))),
            _ => Ok(()),
        }
    }
}

impl FromRequestParts<AdminState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, ApiError> {
        let secret = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or(ApiError::Unauthenticated)?;
        match state.ledger.authenticate(secret).await? {
            Some(token) => Ok(Caller(token)),
            None => Err(ApiError::Unauthenticated),
        }
    }
}
