//! The audit log: who changed what, when, and the entity before and after.

use serde::Serialize;
use serde_json::Value;
use sqlx::{Any, Row, Transaction};

use super::{Ledger, LedgerError, new_id};

/// One audit entry.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: String,
    /// Milliseconds since the epoch, UTC.
    pub at: i64,
    /// The token id that made the change, or `system`.
    pub actor: String,
    pub action: String,
    pub entity_type: String,
    pub entity_id: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// What to look for in the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub limit: i64,
    pub offset: i64,
}

/// Writes an audit entry inside the change's own transaction.
pub async fn record(
    tx: &mut Transaction<'static, Any>,
    at: i64,
    actor: &str,
    action: &str,
    entity: (&str, &str),
    before: Option<&impl Serialize>,
    after: Option<&impl Serialize>,
) -> Result<(), LedgerError> {
    let before = before.map(|v| serde_json::to_string(v).expect("entities serialize"));
    let after = after.map(|v| serde_json::to_string(v).expect("entities serialize"));
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, action, entity_type, entity_id, before, after) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(new_id())
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(entity.0)
    .bind(entity.1)
    .bind(before)
    .bind(after)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Ledger {
    /// Audit entries matching `query`, oldest first.
    pub async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, LedgerError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, entity_type, entity_id, before, after FROM audit_log \
             WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR entity_type = $2) \
             AND ($3 IS NULL OR entity_id = $3) AND ($4 IS NULL OR at >= $4) AND ($5 IS NULL OR at < $5) \
             ORDER BY at, id LIMIT $6 OFFSET $7",
        )
        .bind(query.actor.clone())
        .bind(query.entity_type.clone())
        .bind(query.entity_id.clone())
        .bind(query.from_ms)
        .bind(query.to_ms)
        .bind(query.limit)
        .bind(query.offset)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let json = |col: &str| -> Result<Option<Value>, LedgerError> {
                    let text: Option<String> = row.try_get(col)?;
                    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
                };
                Ok(AuditEntry {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    entity_type: row.try_get("entity_type")?,
                    entity_id: row.try_get("entity_id")?,
                    before: json("before")?,
                    after: json("after")?,
                })
            })
            .collect()
    }
}
