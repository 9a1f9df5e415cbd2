//! Approval requests: tenant activation, model access, budget increase and temporary
//! override. A request is filed (pending), then approved, rejected or cancelled, or it
//! expires. Approving applies the effect, changes the request's status and writes every
//! audit entry in one transaction: all of it happens, or none of it.
//!
//! Expiry is lazy: a pending request whose `expires_at` has passed is marked `expired`
//! (with an audit entry by `system`) the next time it is read, listed or decided, so it is
//! never reported as pending and can no longer be decided.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use utoipa::ToSchema;

use super::budgets::{Amount, add_override_in, live_budget_in, raise_amount_in};
use super::tenants::{Invalid, TenantStatus, grant_model_in, tenant_in, validate_text};
use super::{Backend, Ledger, LedgerError, audit, new_id};

/// How long a request stays pending before it expires: 7 days.
pub const PENDING_TTL_MS: i64 = 7 * 86_400_000;
/// The furthest ahead a temporary override may expire: 366 days.
pub const MAX_OVERRIDE_MS: i64 = 366 * 86_400_000;
/// Longest reason and note.
pub const MAX_TEXT: usize = 2_000;

/// The audit actor of changes nobody asked for (expiry).
pub const SYSTEM: &str = "system";

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    /// A pending tenant becomes active. No payload.
    TenantActivation,
    /// The tenant may call a model. Payload: `model`.
    ModelAccess,
    /// A budget's amount is raised for good. Payload: `budget_id`, `amount` (the new amount).
    BudgetIncrease,
    /// A budget's limit is raised until a time. Payload: `budget_id`, `amount` (the limit
    /// while in force), `expires_at`.
    TemporaryOverride,
}

impl ApprovalKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalKind::TenantActivation => "tenant_activation",
            ApprovalKind::ModelAccess => "model_access",
            ApprovalKind::BudgetIncrease => "budget_increase",
            ApprovalKind::TemporaryOverride => "temporary_override",
        }
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    Cancelled,
    Expired,
}

impl ApprovalStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Rejected => "rejected",
            ApprovalStatus::Cancelled => "cancelled",
            ApprovalStatus::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Result<ApprovalStatus, LedgerError> {
        ApprovalStatus::deserialize(serde_json::Value::String(s.to_owned())).map_err(|_| {
            LedgerError::Database(sqlx::Error::Decode(
                format!("unexpected approval status '{s}'").into(),
            ))
        })
    }
}

/// The kind-specific part of a request; which fields are required depends on the kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPayload {
    /// model_access: the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// budget_increase, temporary_override: the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_id: Option<String>,
    /// budget_increase: the new amount; temporary_override: the limit while in force. A
    /// JSON integer for request and token budgets, a decimal string for cost budgets; it
    /// must be above the budget's current amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Amount>,
    /// temporary_override: when the override ends (milliseconds since the epoch, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// An approval request as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Approval {
    pub id: String,
    pub kind: ApprovalKind,
    /// The tenant concerned; absent for a global budget's requests.
    pub tenant_id: Option<String>,
    pub payload: ApprovalPayload,
    pub reason: String,
    /// The token id that filed it.
    pub requested_by: String,
    pub status: ApprovalStatus,
    /// The token id that approved, rejected or cancelled it.
    pub decided_by: Option<String>,
    pub note: Option<String>,
    pub created_at: i64,
    /// A pending request expires at this time.
    pub expires_at: i64,
    pub decided_at: Option<i64>,
}

/// A request to file.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApproval {
    pub kind: ApprovalKind,
    /// The tenant concerned. A tenant token's own tenant when absent; for budget requests it
    /// is the budget's tenant and may be left out.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Why: 1-2000 characters.
    pub reason: String,
    #[serde(default)]
    pub payload: ApprovalPayload,
}

impl NewApproval {
    /// Checks what can be checked without the database: the reason, and that the payload
    /// has exactly the fields its kind needs.
    pub fn validate(&self, now: i64) -> Result<(), Invalid> {
        if let Some(tenant) = &self.tenant_id {
            super::tenants::validate_slug("tenant_id", tenant)?;
        }
        validate_text("reason", &self.reason, MAX_TEXT)?;
        let p = &self.payload;
        let (needs_model, needs_budget, needs_expiry) = match self.kind {
            ApprovalKind::TenantActivation => (false, false, false),
            ApprovalKind::ModelAccess => (true, false, false),
            ApprovalKind::BudgetIncrease => (false, true, false),
            ApprovalKind::TemporaryOverride => (false, true, true),
        };
        let kind = self.kind.as_str();
        let presence = [
            ("payload.model", p.model.is_some(), needs_model),
            ("payload.budget_id", p.budget_id.is_some(), needs_budget),
            ("payload.amount", p.amount.is_some(), needs_budget),
            ("payload.expires_at", p.expires_at.is_some(), needs_expiry),
        ];
        for (field, present, needed) in presence {
            match (present, needed) {
                (false, true) => {
                    return Err(Invalid::new(
                        field,
                        format!("is required for a {kind} request"),
                    ));
                }
                (true, false) => {
                    return Err(Invalid::new(
                        field,
                        format!("is not part of a {kind} request"),
                    ));
                }
                _ => {}
            }
        }
        if let Some(model) = &p.model {
            super::prices::validate_model("payload.model", model)?;
        }
        if let Some(budget) = &p.budget_id
            && (budget.is_empty() || budget.len() > 64)
        {
            return Err(Invalid::new("payload.budget_id", "must be a budget id"));
        }
        if let Some(expires_at) = p.expires_at
            && !(now + 1..=now + MAX_OVERRIDE_MS).contains(&expires_at)
        {
            return Err(Invalid::new(
                "payload.expires_at",
                format!("must be in the future and at most 366 days ahead (now is {now})"),
            ));
        }
        Ok(())
    }
}

/// A request checked against the database, ready to store.
#[derive(Debug, Clone)]
pub struct ApprovalFiling {
    pub kind: ApprovalKind,
    pub tenant_id: Option<String>,
    pub reason: String,
    /// With `amount` written the budget's way ([`Amount::from_units`]).
    pub payload: ApprovalPayload,
}

/// Which requests to list.
#[derive(Debug, Clone, Default)]
pub struct ApprovalFilter {
    pub status: Option<ApprovalStatus>,
    pub kind: Option<ApprovalKind>,
    pub tenant_id: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

/// Approve or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

const APPROVAL_COLUMNS: &str = "id, kind, tenant_id, payload, reason, requested_by, status, decided_by, note, created_at, expires_at, decided_at";

fn approval_from_row(row: &AnyRow) -> Result<Approval, LedgerError> {
    let kind: String = row.try_get("kind")?;
    let payload: String = row.try_get("payload")?;
    Ok(Approval {
        id: row.try_get("id")?,
        kind: ApprovalKind::deserialize(serde_json::Value::String(kind.clone())).map_err(|_| {
            LedgerError::Database(sqlx::Error::Decode(
                format!("unexpected approval kind '{kind}'").into(),
            ))
        })?,
        tenant_id: row.try_get("tenant_id")?,
        payload: serde_json::from_str(&payload).unwrap_or_default(),
        reason: row.try_get("reason")?,
        requested_by: row.try_get("requested_by")?,
        status: ApprovalStatus::parse(&row.try_get::<String, _>("status")?)?,
        decided_by: row.try_get("decided_by")?,
        note: row.try_get("note")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        decided_at: row.try_get("decided_at")?,
    })
}

fn not_found(id: &str) -> LedgerError {
    LedgerError::NotFound {
        entity: "approval",
        id: id.to_owned(),
    }
}

impl Ledger {
    /// Files a pending request. The tenant must exist; a tenant activation needs a pending
    /// tenant, model access a model not yet granted, and neither may duplicate a pending
    /// request for the same effect, even when the two are filed at the same moment.
    pub async fn file_approval(
        &self,
        actor: &str,
        filing: &ApprovalFiling,
    ) -> Result<Approval, LedgerError> {
        let now = self.now_ms();
        let id = new_id();
        let mut tx = self.begin().await?;
        expire_in(&mut tx, now, None).await?;
        if let Some(tenant_id) = &filing.tenant_id {
            if self.backend == Backend::Postgres {
                // Filings for one tenant take turns, so two identical ones cannot both
                // find no duplicate pending (SQLite lets one writer in at a time anyway).
                sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR UPDATE")
                    .bind(tenant_id)
                    .execute(&mut *tx)
                    .await?;
            }
            let tenant = tenant_in(&mut tx, tenant_id).await?;
            match filing.kind {
                ApprovalKind::TenantActivation if tenant.status != TenantStatus::Pending => {
                    return Err(LedgerError::Conflict(format!(
                        "tenant '{tenant_id}' is {}; only a pending tenant can be activated",
                        tenant.status.as_str()
                    )));
                }
                ApprovalKind::ModelAccess => {
                    let model = filing.payload.model.as_deref().unwrap_or_default();
                    if tenant.models.iter().any(|m| m == model) {
                        return Err(LedgerError::Conflict(format!(
                            "tenant '{tenant_id}' already has access to '{model}'"
                        )));
                    }
                }
                _ => {}
            }
        }
        let payload = serde_json::to_string(&filing.payload).expect("a payload serializes");
        if matches!(
            filing.kind,
            ApprovalKind::TenantActivation | ApprovalKind::ModelAccess
        ) {
            let duplicate: Option<String> = sqlx::query_scalar(
                "SELECT id FROM approvals WHERE status = 'pending' AND kind = $1 AND tenant_id = $2 AND payload = $3",
            )
            .bind(filing.kind.as_str())
            .bind(filing.tenant_id.clone())
            .bind(&payload)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(other) = duplicate {
                return Err(LedgerError::Conflict(format!(
                    "the same request is already pending as '{other}'"
                )));
            }
        }
        sqlx::query(
            "INSERT INTO approvals (id, kind, tenant_id, payload, reason, requested_by, status, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)",
        )
        .bind(&id)
        .bind(filing.kind.as_str())
        .bind(filing.tenant_id.clone())
        .bind(&payload)
        .bind(&filing.reason)
        .bind(actor)
        .bind(now)
        .bind(now + PENDING_TTL_MS)
        .execute(&mut *tx)
        .await?;
        let approval = approval_in(&mut tx, &id).await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "approval.file",
            ("approval", &id),
            None::<&Approval>,
            Some(&approval),
        )
        .await?;
        // A pending request changes no decision; no need to wake the replicas.
        tx.commit().await?;
        Ok(approval)
    }

    /// One request (expired first if its time has passed).
    pub async fn approval(&self, id: &str) -> Result<Approval, LedgerError> {
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        expire_in(&mut tx, now, Some(id)).await?;
        let approval = approval_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(approval)
    }

    /// Requests matching `filter`, newest first (overdue ones expired first).
    pub async fn approvals(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, LedgerError> {
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        expire_in(&mut tx, now, None).await?;
        let rows = sqlx::query(&format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR kind = $2) \
             AND ($3 IS NULL OR tenant_id = $3) ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5"
        ))
        .bind(filter.status.map(|s| s.as_str().to_owned()))
        .bind(filter.kind.map(|k| k.as_str().to_owned()))
        .bind(filter.tenant_id.clone())
        .bind(filter.limit)
        .bind(filter.offset)
        .fetch_all(&mut *tx)
        .await?;
        let approvals = rows
            .iter()
            .map(approval_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        Ok(approvals)
    }

    /// Approves or rejects a pending request as `actor`, who must not be the requester (a
    /// conflict here; the admin API checks it first and answers 403). Approving applies the
    /// effect in the same transaction as the status change and every audit entry. An
    /// overdue request is marked expired (that is kept) and the decision refused.
    pub async fn decide_approval(
        &self,
        actor: &str,
        id: &str,
        decision: Decision,
        note: Option<&str>,
    ) -> Result<Approval, LedgerError> {
        let (status, action) = match decision {
            Decision::Approve => (ApprovalStatus::Approved, "approval.approve"),
            Decision::Reject => (ApprovalStatus::Rejected, "approval.reject"),
        };
        let (mut tx, before, now) = self.open_pending(id).await?;
        if actor == before.requested_by {
            return Err(LedgerError::Conflict(format!(
                "approval '{id}' cannot be decided by its requester"
            )));
        }
        // The status changes first, conditionally: of two deciders racing, the second
        // matches no row and fails, and its whole transaction rolls back.
        set_request_status_in(&mut tx, now, actor, id, status, note).await?;
        if decision == Decision::Approve {
            apply_in(&mut tx, now, actor, &before).await?;
        }
        let after = approval_in(&mut tx, id).await?;
        audit::record(
            &mut tx,
            now,
            actor,
            action,
            ("approval", id),
            Some(&before),
            Some(&after),
        )
        .await?;
        if decision == Decision::Approve {
            self.commit_change(tx).await?;
        } else {
            tx.commit().await?;
        }
        Ok(after)
    }

    /// Cancels a pending request (the caller checks that `actor` is the requester or an admin).
    pub async fn cancel_approval(
        &self,
        actor: &str,
        id: &str,
        note: Option<&str>,
    ) -> Result<Approval, LedgerError> {
        let (mut tx, before, now) = self.open_pending(id).await?;
        set_request_status_in(&mut tx, now, actor, id, ApprovalStatus::Cancelled, note).await?;
        let after = approval_in(&mut tx, id).await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "approval.cancel",
            ("approval", id),
            Some(&before),
            Some(&after),
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// A transaction holding a still pending request, and the time. An overdue request is
    /// marked expired and that committed, then refused; other states are refused as they are.
    async fn open_pending(
        &self,
        id: &str,
    ) -> Result<(Transaction<'static, Any>, Approval, i64), LedgerError> {
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        let approval = approval_in(&mut tx, id).await?;
        if approval.status == ApprovalStatus::Pending && approval.expires_at <= now {
            expire_in(&mut tx, now, Some(id)).await?;
            // Keep the expiry even though the decision is refused.
            tx.commit().await?;
            return Err(LedgerError::Conflict(format!(
                "approval '{id}' expired at {} without a decision; file a new request",
                approval.expires_at
            )));
        }
        if approval.status != ApprovalStatus::Pending {
            return Err(LedgerError::Conflict(format!(
                "approval '{id}' is already {}; only a pending request can change",
                approval.status.as_str()
            )));
        }
        Ok((tx, approval, now))
    }
}

/// Reads a request inside a transaction.
pub async fn approval_in(
    tx: &mut Transaction<'static, Any>,
    id: &str,
) -> Result<Approval, LedgerError> {
    let row = sqlx::query(&format!(
        "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| not_found(id))?;
    approval_from_row(&row)
}

/// Moves a pending request to `status`; a conflict when it is no longer pending.
async fn set_request_status_in(
    tx: &mut Transaction<'static, Any>,
    now: i64,
    actor: &str,
    id: &str,
    status: ApprovalStatus,
    note: Option<&str>,
) -> Result<(), LedgerError> {
    let changed = sqlx::query(
        "UPDATE approvals SET status = $1, decided_by = $2, note = $3, decided_at = $4 WHERE id = $5 AND status = 'pending'",
    )
    .bind(status.as_str())
    .bind(actor)
    .bind(note.map(str::to_owned))
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if changed == 1 {
        Ok(())
    } else {
        Err(LedgerError::Conflict(format!(
            "approval '{id}' was decided meanwhile"
        )))
    }
}

/// Applies an approved request's effect, with the effect's own audit entries.
async fn apply_in(
    tx: &mut Transaction<'static, Any>,
    now: i64,
    actor: &str,
    approval: &Approval,
) -> Result<(), LedgerError> {
    let tenant = approval.tenant_id.as_deref().unwrap_or_default();
    let budget = approval.payload.budget_id.as_deref().unwrap_or_default();
    match approval.kind {
        ApprovalKind::TenantActivation => {
            super::tenants::set_status_in(
                tx,
                now,
                actor,
                tenant,
                &[TenantStatus::Pending],
                TenantStatus::Active,
            )
            .await?;
        }
        ApprovalKind::ModelAccess => {
            let model = approval.payload.model.as_deref().unwrap_or_default();
            grant_model_in(tx, now, actor, tenant, model).await?;
        }
        ApprovalKind::BudgetIncrease => {
            let units = payload_units(tx, now, approval).await?;
            raise_amount_in(tx, now, actor, budget, units).await?;
        }
        ApprovalKind::TemporaryOverride => {
            let expires_at = approval.payload.expires_at.unwrap_or(now);
            let units = payload_units(tx, now, approval).await?;
            add_override_in(tx, now, actor, budget, units, expires_at, &approval.id).await?;
        }
    }
    Ok(())
}

/// A budget request's amount in its budget's storage units. It was stored in the budget's
/// own form at filing, so it reads back with the budget's measure.
async fn payload_units(
    tx: &mut Transaction<'static, Any>,
    now: i64,
    approval: &Approval,
) -> Result<i64, LedgerError> {
    let budget = approval.payload.budget_id.as_deref().unwrap_or_default();
    let measure = live_budget_in(tx, budget, now).await?.measure;
    approval
        .payload
        .amount
        .as_ref()
        .ok_or_else(|| LedgerError::Conflict(format!("approval '{}' has no amount", approval.id)))?
        .to_units(measure, "payload.amount")
        .map_err(|e| {
            LedgerError::Conflict(format!(
                "approval '{}': {}: {}",
                approval.id, e.field, e.message
            ))
        })
}

/// Marks overdue pending requests expired (only `only`, when given), each with an audit
/// entry by [`SYSTEM`]; how many.
pub async fn expire_in(
    tx: &mut Transaction<'static, Any>,
    now: i64,
    only: Option<&str>,
) -> Result<usize, LedgerError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM approvals WHERE status = 'pending' AND expires_at <= $1 AND ($2 IS NULL OR id = $2) ORDER BY id",
    )
    .bind(now)
    .bind(only.map(str::to_owned))
    .fetch_all(&mut **tx)
    .await?;
    let mut expired = 0;
    for id in &ids {
        let before = approval_in(tx, id).await?;
        let changed = sqlx::query("UPDATE approvals SET status = 'expired', decided_at = $1 WHERE id = $2 AND status = 'pending'")
            .bind(now)
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        // Another reader may have expired it first: then it has its audit entry already.
        if changed == 1 {
            let after = approval_in(tx, id).await?;
            audit::record(
                tx,
                now,
                SYSTEM,
                "approval.expire",
                ("approval", id),
                Some(&before),
                Some(&after),
            )
            .await?;
            expired += 1;
        }
    }
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(body: serde_json::Value) -> Result<(), String> {
        let new: NewApproval = serde_json::from_value(body).map_err(|e| e.to_string())?;
        new.validate(1_000).map_err(|e| e.field)
    }

    #[test]
    fn each_kind_takes_exactly_its_payload() {
        assert_eq!(
            check(json!({"kind": "tenant_activation", "tenant_id": "acme", "reason": "go live"})),
            Ok(())
        );
        assert_eq!(
            check(json!({"kind": "model_access", "reason": "r", "payload": {"model": "gpt-4o"}})),
            Ok(())
        );
        assert_eq!(
            check(
                json!({"kind": "temporary_override", "reason": "r", "payload": {"budget_id": "b", "amount": "150.00", "expires_at": 2_000}})
            ),
            Ok(())
        );
        let bad = [
            (
                json!({"kind": "model_access", "reason": "r"}),
                "payload.model",
            ),
            (
                json!({"kind": "tenant_activation", "reason": "r", "payload": {"model": "m"}}),
                "payload.model",
            ),
            (
                json!({"kind": "budget_increase", "reason": "r", "payload": {"budget_id": "b"}}),
                "payload.amount",
            ),
            (
                json!({"kind": "budget_increase", "reason": "r", "payload": {"budget_id": "b", "amount": 5, "expires_at": 2_000}}),
                "payload.expires_at",
            ),
            (
                json!({"kind": "temporary_override", "reason": "r", "payload": {"budget_id": "b", "amount": 5, "expires_at": 999}}),
                "payload.expires_at",
            ),
            (
                json!({"kind": "tenant_activation", "reason": " "}),
                "reason",
            ),
        ];
        for (body, field) in bad {
            assert_eq!(check(body.clone()), Err(field.to_owned()), "{body}");
        }
    }
}
