//! Bearer-token authentication and role checks.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::AdminState;
use super::error::ApiError;
use crate::ledger::tenants::validate_slug;
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
            Some(own) if own != tenant => {
                Err(ApiError::NotFound(format!("tenant '{tenant}' not found")))
            }
            _ => Ok(()),
        }
    }
}

impl Caller {
    /// The tenant a list or report is limited to: a tenant token's own whatever it asks
    /// (asking for another answers 404), else the `tenant_id` asked for, if any.
    pub fn tenant_filter(&self, asked: Option<&str>) -> Result<Option<String>, ApiError> {
        if let Some(tenant) = asked {
            validate_slug("tenant_id", tenant)?;
            self.may_see(tenant)?;
        }
        if self.role() == Role::Tenant {
            // A tenant token without a tenant would otherwise see every tenant's data.
            let own = self
                .scope()
                .ok_or_else(|| ApiError::Forbidden("this tenant token has no tenant".to_owned()))?;
            return Ok(Some(own.to_owned()));
        }
        Ok(asked.map(str::to_owned))
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
