//! Admin API tokens: random bearer secrets, stored only as SHA-256 hashes and shown once.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::tenants::{Invalid, validate_slug, validate_text};
use super::{Ledger, LedgerError, audit, new_id};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Decides approval requests (and reads what it needs to).
    Approver,
    /// Reads reports, budgets and prices.
    Finance,
    /// Sees only its own tenant's data and files approval requests for it.
    Tenant,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Approver => "approver",
            Role::Finance => "finance",
            Role::Tenant => "tenant",
        }
    }

    /// Parses a stored or typed name.
    pub fn parse(s: &str) -> Option<Role> {
        [Role::Admin, Role::Approver, Role::Finance, Role::Tenant]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// A token as listed (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The tenant a `tenant` token is scoped to.
    pub tenant_id: Option<String>,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
}

/// A request for a new token.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    /// Required for (and only allowed with) the `tenant` role.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

impl NewToken {
    /// Checks the fields and that a tenant is named exactly when the role needs one.
    pub fn validate(&self) -> Result<(), Invalid> {
        validate_text("name", &self.name, 100)?;
        match (&self.tenant_id, self.role) {
            (Some(t), Role::Tenant) => validate_slug("tenant_id", t),
            (None, Role::Tenant) => {
                Err(Invalid::new("tenant_id", "is required for the tenant role"))
            }
            (Some(_), _) => Err(Invalid::new(
                "tenant_id",
                "is only allowed for the tenant role",
            )),
            (None, _) => Ok(()),
        }
    }
}

/// A token just created: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: ApiToken,
    /// The bearer secret. Store it now: it cannot be shown again.
    pub secret: String,
}

/// The hash stored for a secret.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new secret: `tg_` and 256 random bits in hex.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "tg_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

const TOKEN_COLUMNS: &str = "id, name, role, tenant_id, created_at, created_by, revoked_at";

fn token_from_row(row: &AnyRow) -> Result<ApiToken, LedgerError> {
    Ok(ApiToken {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: Role::parse(&row.try_get::<String, _>("role")?).unwrap_or(Role::Tenant),
        tenant_id: row.try_get("tenant_id")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Ledger {
    /// Creates a token; `secret` is given only to seed a bootstrap token from settings.
    pub async fn create_token(
        &self,
        actor: &str,
        new: &NewToken,
        secret: Option<&str>,
    ) -> Result<CreatedToken, LedgerError> {
        let now = self.now_ms();
        let secret = secret.map_or_else(new_secret, str::to_owned);
        let id = new_id();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, name, role, tenant_id, token_hash, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(&new.name)
        .bind(new.role.as_str())
        .bind(new.tenant_id.clone())
        .bind(hash_secret(&secret))
        .bind(now)
        .bind(actor)
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => LedgerError::NotFound {
                entity: "tenant",
                id: new.tenant_id.clone().unwrap_or_default(),
            },
            _ => LedgerError::conflict_on_unique(e, || "a token with this secret already exists".to_owned()),
        })?;
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"
        ))
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?;
        let token = token_from_row(&row)?;
        audit::record(
            &mut tx,
            now,
            actor,
            "token.create",
            ("token", &id),
            None::<&ApiToken>,
            Some(&token),
        )
        .await?;
        tx.commit().await?;
        Ok(CreatedToken { token, secret })
    }

    /// The live token whose secret is `secret`.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<ApiToken>, LedgerError> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(hash_secret(secret))
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Every token, newest first.
    pub async fn tokens(&self, limit: i64, offset: i64) -> Result<Vec<ApiToken>, LedgerError> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// How many tokens exist, revoked or not.
    pub async fn token_count(&self) -> Result<i64, LedgerError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens")
            .fetch_one(self.pool())
            .await?)
    }

    /// Revokes a token; revoking twice is a conflict.
    pub async fn revoke_token(&self, actor: &str, id: &str) -> Result<ApiToken, LedgerError> {
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        let query = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1");
        let before = sqlx::query(&query)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(token_from_row)
            .transpose()?
            .ok_or_else(|| LedgerError::NotFound {
                entity: "token",
                id: id.to_owned(),
            })?;
        if before.revoked_at.is_some() {
            return Err(LedgerError::Conflict(format!(
                "token '{id}' is already revoked"
            )));
        }
        sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let after = token_from_row(&sqlx::query(&query).bind(id).fetch_one(&mut *tx).await?)?;
        audit::record(
            &mut tx,
            now,
            actor,
            "token.revoke",
            ("token", id),
            Some(&before),
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }
}
