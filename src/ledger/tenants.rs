//! Tenants: who may use the gateway, with their plan limits and approved models.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use utoipa::ToSchema;

use super::{Ledger, LedgerError, audit};
use crate::money::Currency;

/// A tenant's lifecycle: new tenants wait for approval, and are denied until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Pending,
    Active,
    Suspended,
}

impl TenantStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Pending => "pending",
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }

    fn parse(s: &str) -> TenantStatus {
        match s {
            "active" => TenantStatus::Active,
            "suspended" => TenantStatus::Suspended,
            _ => TenantStatus::Pending,
        }
    }
}

/// A request limit of a tenant's plan: `limit` requests per `window_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestLimit {
    pub window_seconds: u64,
    pub limit: u64,
}

/// A token limit of a tenant's plan: `limit` tokens of `token_type` (all types when
/// absent) per `window_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenLimit {
    #[serde(default)]
    pub token_type: Option<String>,
    pub window_seconds: u64,
    pub limit: u64,
}

/// A tenant's plan limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(default)]
    pub requests: Vec<RequestLimit>,
    #[serde(default)]
    pub tokens: Vec<TokenLimit>,
}

/// A tenant as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Tenant {
    /// The slug Envoy sends as the tenant descriptor value.
    pub id: String,
    pub name: String,
    pub status: TenantStatus,
    pub cost_centre: Option<String>,
    /// ISO 4217 code of the tenant's prices and money budgets.
    pub currency: String,
    /// IANA timezone of the tenant's calendar periods.
    pub timezone: String,
    pub plan: Plan,
    /// Models the tenant may call.
    pub models: Vec<String>,
    /// Milliseconds since the epoch, UTC.
    pub created_at: i64,
    pub updated_at: i64,
}

/// A new tenant; it starts pending.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub cost_centre: Option<String>,
    pub currency: String,
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default)]
    pub plan: Plan,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// Changes to a tenant; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantUpdate {
    pub name: Option<String>,
    /// `null` clears it.
    #[serde(default, with = "serde_with_none")]
    pub cost_centre: Option<Option<String>>,
    pub currency: Option<String>,
    pub timezone: Option<String>,
    pub plan: Option<Plan>,
}

/// Distinguishes an absent field from an explicit `null`.
mod serde_with_none {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// A field that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Most plan entries of one kind.
const MAX_PLAN_ENTRIES: usize = 16;
/// Longest plan window: a year.
const MAX_WINDOW_SECONDS: u64 = 366 * 86_400;
/// Largest plan limit.
const MAX_LIMIT: u64 = 1_000_000_000_000;

/// Checks a tenant slug.
pub fn validate_slug(field: &str, id: &str) -> Result<(), Invalid> {
    let ok = (1..=63).contains(&id.len())
        && id
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            "must be 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
        ))
    }
}

/// Checks a free-text field's length.
pub fn validate_text(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.trim().is_empty() || value.chars().count() > max {
        Err(Invalid::new(field, format!("must be 1-{max} characters")))
    } else {
        validate_no_nul(field, value)
    }
}

/// Refuses NUL characters, which PostgreSQL text cannot hold.
pub fn validate_no_nul(field: &str, value: &str) -> Result<(), Invalid> {
    if value.contains('\0') {
        Err(Invalid::new(field, "must not contain a NUL character"))
    } else {
        Ok(())
    }
}

/// Checks an ISO 4217 code.
pub fn validate_currency(field: &str, value: &str) -> Result<(), Invalid> {
    value
        .parse::<Currency>()
        .map(|_| ())
        .map_err(|e| Invalid::new(field, e))
}

/// Checks an IANA timezone name.
pub fn validate_timezone(field: &str, value: &str) -> Result<(), Invalid> {
    jiff::tz::TimeZone::get(value).map(|_| ()).map_err(|_| {
        Invalid::new(
            field,
            format!("'{value}' is not an IANA timezone (e.g. Europe/Berlin)"),
        )
    })
}

impl Plan {
    /// Checks bounds on every entry.
    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        if self.requests.len() > MAX_PLAN_ENTRIES || self.tokens.len() > MAX_PLAN_ENTRIES {
            return Err(Invalid::new(
                field,
                format!("at most {MAX_PLAN_ENTRIES} request and {MAX_PLAN_ENTRIES} token limits"),
            ));
        }
        let check = |path: String, window: u64, limit: u64| {
            if !(1..=MAX_WINDOW_SECONDS).contains(&window) {
                return Err(Invalid::new(
                    format!("{path}.window_seconds"),
                    format!("must be 1-{MAX_WINDOW_SECONDS}"),
                ));
            }
            if limit > MAX_LIMIT {
                return Err(Invalid::new(
                    format!("{path}.limit"),
                    format!("must be at most {MAX_LIMIT}"),
                ));
            }
            Ok(())
        };
        for (i, r) in self.requests.iter().enumerate() {
            check(format!("{field}.requests[{i}]"), r.window_seconds, r.limit)?;
        }
        for (i, t) in self.tokens.iter().enumerate() {
            check(format!("{field}.tokens[{i}]"), t.window_seconds, t.limit)?;
            if let Some(token_type) = &t.token_type {
                validate_slug(&format!("{field}.tokens[{i}].token_type"), token_type)?;
            }
        }
        Ok(())
    }
}

impl NewTenant {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        validate_slug("id", &self.id)?;
        validate_text("name", &self.name, 200)?;
        if let Some(cc) = &self.cost_centre {
            validate_text("cost_centre", cc, 100)?;
        }
        validate_currency("currency", &self.currency)?;
        validate_timezone("timezone", &self.timezone)?;
        self.plan.validate("plan")
    }
}

impl TenantUpdate {
    /// Checks every given field.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(name) = &self.name {
            validate_text("name", name, 200)?;
        }
        if let Some(Some(cc)) = &self.cost_centre {
            validate_text("cost_centre", cc, 100)?;
        }
        if let Some(c) = &self.currency {
            validate_currency("currency", c)?;
        }
        if let Some(tz) = &self.timezone {
            validate_timezone("timezone", tz)?;
        }
        if let Some(plan) = &self.plan {
            plan.validate("plan")?;
        }
        Ok(())
    }
}

/// Which tenants to list.
#[derive(Debug, Clone, Default)]
pub struct TenantFilter {
    pub status: Option<TenantStatus>,
    pub cost_centre: Option<String>,
    /// Only this tenant (tenant-scoped callers).
    pub only: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

const TENANT_COLUMNS: &str =
    "id, name, status, cost_centre, currency, timezone, plan, created_at, updated_at";

fn tenant_from_row(row: &AnyRow, models: Vec<String>) -> Result<Tenant, LedgerError> {
    let plan: String = row.try_get("plan")?;
    Ok(Tenant {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        status: TenantStatus::parse(&row.try_get::<String, _>("status")?),
        cost_centre: row.try_get("cost_centre")?,
        currency: row.try_get("currency")?,
        timezone: row.try_get("timezone")?,
        plan: serde_json::from_str(&plan).unwrap_or_default(),
        models,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Ledger {
    /// Creates a pending tenant.
    pub async fn create_tenant(&self, actor: &str, new: &NewTenant) -> Result<Tenant, LedgerError> {
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO tenants (id, name, status, cost_centre, currency, timezone, plan, created_at, updated_at) \
             VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $7)",
        )
        .bind(&new.id)
        .bind(&new.name)
        .bind(new.cost_centre.clone())
        .bind(&new.currency)
        .bind(&new.timezone)
        .bind(serde_json::to_string(&new.plan).expect("a plan serializes"))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| LedgerError::conflict_on_unique(e, || format!("tenant '{}' already exists", new.id)))?;
        let tenant = tenant_in(&mut tx, &new.id).await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "tenant.create",
            ("tenant", &new.id),
            None::<&Tenant>,
            Some(&tenant),
        )
        .await?;
        self.commit_change(tx).await?;
        Ok(tenant)
    }

    /// One tenant.
    pub async fn tenant(&self, id: &str) -> Result<Tenant, LedgerError> {
        let mut tx = self.begin().await?;
        let tenant = tenant_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(tenant)
    }

    /// Tenants matching `filter`, by id.
    pub async fn tenants(&self, filter: &TenantFilter) -> Result<Vec<Tenant>, LedgerError> {
        // One query: the page of tenants joined with their models, grouped here.
        let rows = sqlx::query(&format!(
            "SELECT t.*, m.model FROM (SELECT {TENANT_COLUMNS} FROM tenants WHERE ($1 IS NULL OR status = $1) \
             AND ($2 IS NULL OR cost_centre = $2) AND ($3 IS NULL OR id = $3) ORDER BY id LIMIT $4 OFFSET $5) t \
             LEFT JOIN model_access m ON m.tenant_id = t.id ORDER BY t.id, m.model"
        ))
        .bind(filter.status.map(|s| s.as_str().to_owned()))
        .bind(filter.cost_centre.clone())
        .bind(filter.only.clone())
        .bind(filter.limit)
        .bind(filter.offset)
        .fetch_all(self.pool())
        .await?;
        let mut tenants: Vec<Tenant> = Vec::new();
        for row in &rows {
            let id: String = row.try_get("id")?;
            let model: Option<String> = row.try_get("model")?;
            if tenants.last().is_none_or(|t| t.id != id) {
                tenants.push(tenant_from_row(row, Vec::new())?);
            }
            if let (Some(model), Some(tenant)) = (model, tenants.last_mut()) {
                tenant.models.push(model);
            }
        }
        Ok(tenants)
    }

    /// Every tenant (for the in-memory policy).
    pub async fn all_tenants(&self) -> Result<Vec<Tenant>, LedgerError> {
        self.tenants(&TenantFilter {
            limit: i64::MAX,
            ..TenantFilter::default()
        })
        .await
    }

    /// Applies `update` to a tenant.
    pub async fn update_tenant(
        &self,
        actor: &str,
        id: &str,
        update: &TenantUpdate,
    ) -> Result<Tenant, LedgerError> {
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        let before = tenant_in(&mut tx, id).await?;
        let cost_centre = match &update.cost_centre {
            Some(cc) => cc.clone(),
            None => before.cost_centre.clone(),
        };
        let plan = update.plan.as_ref().unwrap_or(&before.plan);
        sqlx::query(
            "UPDATE tenants SET name = $1, cost_centre = $2, currency = $3, timezone = $4, plan = $5, updated_at = $6 \
             WHERE id = $7",
        )
        .bind(update.name.as_ref().unwrap_or(&before.name))
        .bind(cost_centre)
        .bind(update.currency.as_ref().unwrap_or(&before.currency))
        .bind(update.timezone.as_ref().unwrap_or(&before.timezone))
        .bind(serde_json::to_string(plan).expect("a plan serializes"))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let after = tenant_in(&mut tx, id).await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "tenant.update",
            ("tenant", id),
            Some(&before),
            Some(&after),
        )
        .await?;
        self.commit_change(tx).await?;
        Ok(after)
    }

    /// Moves a tenant from one of `from` to `to`; a conflict when it is in another state.
    pub async fn set_tenant_status(
        &self,
        actor: &str,
        id: &str,
        from: &[TenantStatus],
        to: TenantStatus,
    ) -> Result<Tenant, LedgerError> {
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        let tenant = set_status_in(&mut tx, now, actor, id, from, to).await?;
        self.commit_change(tx).await?;
        Ok(tenant)
    }
}

/// Reads a tenant inside a transaction.
pub async fn tenant_in(
    tx: &mut Transaction<'static, Any>,
    id: &str,
) -> Result<Tenant, LedgerError> {
    let row = sqlx::query(&format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| LedgerError::NotFound {
        entity: "tenant",
        id: id.to_owned(),
    })?;
    let models =
        sqlx::query_scalar("SELECT model FROM model_access WHERE tenant_id = $1 ORDER BY model")
            .bind(id)
            .fetch_all(&mut **tx)
            .await?;
    tenant_from_row(&row, models)
}

/// Changes a tenant's status inside a transaction, with its audit entry.
pub async fn set_status_in(
    tx: &mut Transaction<'static, Any>,
    now: i64,
    actor: &str,
    id: &str,
    from: &[TenantStatus],
    to: TenantStatus,
) -> Result<Tenant, LedgerError> {
    let before = tenant_in(tx, id).await?;
    if !from.contains(&before.status) {
        return Err(LedgerError::Conflict(format!(
            "tenant '{id}' is {}; this needs it to be {}",
            before.status.as_str(),
            from.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    sqlx::query("UPDATE tenants SET status = $1, updated_at = $2 WHERE id = $3")
        .bind(to.as_str())
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    let after = tenant_in(tx, id).await?;
    audit::record(
        tx,
        now,
        actor,
        &format!("tenant.{}", to.as_str()),
        ("tenant", id),
        Some(&before),
        Some(&after),
    )
    .await?;
    Ok(after)
}

/// Grants a model to a tenant inside a transaction (idempotent), with its audit entry.
pub async fn grant_model_in(
    tx: &mut Transaction<'static, Any>,
    now: i64,
    actor: &str,
    tenant: &str,
    model: &str,
) -> Result<(), LedgerError> {
    let before = tenant_in(tx, tenant).await?;
    if before.models.iter().any(|m| m == model) {
        return Ok(());
    }
    sqlx::query("INSERT INTO model_access (tenant_id, model, granted_at, granted_by) VALUES ($1, $2, $3, $4)")
        .bind(tenant)
        .bind(model)
        .bind(now)
        .bind(actor)
        .execute(&mut **tx)
        .await?;
    let after = tenant_in(tx, tenant).await?;
    audit::record(
        tx,
        now,
        actor,
        "tenant.grant_model",
        ("tenant", tenant),
        Some(&before),
        Some(&after),
    )
    .await?;
    Ok(())
}
