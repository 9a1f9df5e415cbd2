//! Usage events into the ledger: recorded once per request id however often they are
//! sent, priced at the price in force when they happened, and corrected only by new
//! entries (grants and adjustments), never by updating old ones.
//!
//! Money on this path is integer micro-units. Each line is rounded once, when it is priced
//! ([`crate::money::cost_micros`]); an entry's cost is the exact sum of its lines.

use std::collections::HashSet;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sqlx::{Any, Transaction};
use utoipa::ToSchema;

use super::prices::{MAX_TIME_MS, price_at_in, validate_model, validate_time};
use super::tenants::{
    Invalid, tenant_in, validate_currency, validate_no_nul, validate_slug, validate_text,
};
use super::{Backend, Ledger, LedgerError, audit, new_id};
use crate::money::{MAX_MICROS, cost_micros, format_micros, parse_micros};

/// Longest request id accepted (Envoy's `x-request-id` is a 36-character UUID).
pub const MAX_REQUEST_ID: usize = 200;
/// Longest token type name.
pub const MAX_TOKEN_TYPE: usize = 64;
/// Most token types in one event.
pub const MAX_LINES: usize = 32;

/// One token type of a usage event, with its cost at the price in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageLine {
    /// `input`, `output`, `cached_input`, ...
    pub token_type: String,
    pub tokens: u64,
    /// Micro-units of the event's currency, already rounded (see [`price_lines`]).
    pub cost_micros: i64,
}

/// What one request used: the ledger records it once, keyed by `request_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// The idempotency key (Envoy's `x-request-id`).
    pub request_id: String,
    pub tenant_id: String,
    pub session_id: Option<String>,
    pub model: Option<String>,
    /// The rate-limit domain the usage arrived in.
    pub domain: Option<String>,
    /// When the request happened: milliseconds since the epoch, UTC.
    pub occurred_at: i64,
    /// ISO 4217 code of every line's cost.
    pub currency: String,
    /// One per token type; at most one line per type.
    pub lines: Vec<UsageLine>,
}

impl UsageEvent {
    /// The entry's cost: the exact sum of its lines.
    pub fn cost_micros(&self) -> i64 {
        self.lines.iter().map(|l| l.cost_micros).sum()
    }

    /// Checks what the ledger's integrity needs. Deliberately lenient about names (token
    /// types and sessions come from Envoy descriptors), strict about numbers.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.request_id.is_empty() || self.request_id.len() > MAX_REQUEST_ID {
            return Err(Invalid::new(
                "request_id",
                format!("must be 1-{MAX_REQUEST_ID} bytes"),
            ));
        }
        validate_no_nul("request_id", &self.request_id)?;
        validate_slug("tenant_id", &self.tenant_id)?;
        if let Some(session) = &self.session_id {
            validate_text("session_id", session, MAX_REQUEST_ID)?;
        }
        if let Some(model) = &self.model {
            validate_model("model", model)?;
        }
        if let Some(domain) = &self.domain {
            validate_text("domain", domain, MAX_REQUEST_ID)?;
        }
        validate_time("occurred_at", self.occurred_at)?;
        validate_currency("currency", &self.currency)?;
        if self.lines.len() > MAX_LINES {
            return Err(Invalid::new(
                "lines",
                format!("at most {MAX_LINES} token types"),
            ));
        }
        let mut total: i64 = 0;
        for (i, line) in self.lines.iter().enumerate() {
            if line.token_type.is_empty() || line.token_type.len() > MAX_TOKEN_TYPE {
                return Err(Invalid::new(
                    format!("lines[{i}].token_type"),
                    format!("must be 1-{MAX_TOKEN_TYPE} bytes"),
                ));
            }
            validate_no_nul(&format!("lines[{i}].token_type"), &line.token_type)?;
            if self.lines[..i]
                .iter()
                .any(|l| l.token_type == line.token_type)
            {
                return Err(Invalid::new(
                    format!("lines[{i}].token_type"),
                    "each token type appears once per event",
                ));
            }
            if line.tokens > i64::MAX as u64 {
                return Err(Invalid::new(format!("lines[{i}].tokens"), "is too large"));
            }
            if !(0..=MAX_MICROS).contains(&line.cost_micros) {
                return Err(Invalid::new(
                    format!("lines[{i}].cost_micros"),
                    format!("must be 0-{MAX_MICROS}"),
                ));
            }
            total = total
                .checked_add(line.cost_micros)
                .filter(|t| *t <= MAX_MICROS)
                .ok_or_else(|| {
                    Invalid::new(
                        "lines",
                        "the event's cost is larger than the largest amount accepted",
                    )
                })?;
        }
        Ok(())
    }
}

/// What a batch did: how many events were new and which were already recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecordOutcome {
    /// Events recorded by this call.
    pub inserted: usize,
    /// Events whose request id was already in the ledger (or earlier in the same batch).
    pub duplicates: usize,
    /// Their request ids, in batch order.
    pub duplicate_request_ids: Vec<String>,
}

/// Token counts priced line by line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PricedUsage {
    pub lines: Vec<UsageLine>,
    /// Token types with no price in force: their lines cost 0 (usage is never dropped for
    /// want of a price; correct it later with an adjustment).
    pub unpriced: Vec<String>,
}

/// Prices each `(token_type, tokens)` with `price_of(token_type)` (micro-units per million
/// tokens, `None` when there is no price), rounding each line once.
pub fn price_lines(
    tokens: &[(String, u64)],
    mut price_of: impl FnMut(&str) -> Option<i64>,
) -> PricedUsage {
    let mut priced = PricedUsage::default();
    for (token_type, count) in tokens {
        let cost = match price_of(token_type) {
            Some(micros_per_million) => cost_micros(*count, micros_per_million),
            None => {
                priced.unpriced.push(token_type.clone());
                0
            }
        };
        priced.lines.push(UsageLine {
            token_type: token_type.clone(),
            tokens: *count,
            cost_micros: cost,
        });
    }
    priced
}

/// What a correction is: a `grant` is a credit (a negative amount); an `adjustment`
/// corrects spend either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdjustmentKind {
    Grant,
    Adjustment,
}

impl AdjustmentKind {
    /// The stored `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdjustmentKind::Grant => "grant",
            AdjustmentKind::Adjustment => "adjustment",
        }
    }
}

/// A correction to a tenant's spend.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAdjustment {
    pub tenant_id: String,
    pub kind: AdjustmentKind,
    /// A signed decimal string in the tenant's currency: positive adds spend, negative
    /// takes it away (`"-5.00"`). A grant must be negative. Never a JSON number.
    pub amount: String,
    /// Why; required.
    pub note: String,
    /// The model the correction concerns, if any (so model reports carry it).
    #[serde(default)]
    pub model: Option<String>,
    /// The time it counts at (e.g. inside the period it corrects); now when absent.
    #[serde(default)]
    pub occurred_at: Option<i64>,
}

impl NewAdjustment {
    /// Checks every field; the signed amount in micro-units.
    pub fn validate(&self) -> Result<i64, Invalid> {
        validate_slug("tenant_id", &self.tenant_id)?;
        let micros = parse_signed_micros(&self.amount).map_err(|e| Invalid::new("amount", e))?;
        match self.kind {
            _ if micros == 0 => return Err(Invalid::new("amount", "must not be zero")),
            AdjustmentKind::Grant if micros > 0 => {
                return Err(Invalid::new(
                    "amount",
                    "a grant is a credit: a negative amount (e.g. \"-5.00\")",
                ));
            }
            _ => {}
        }
        validate_text("note", &self.note, 1_000)?;
        if let Some(model) = &self.model {
            validate_model("model", model)?;
        }
        if let Some(at) = self.occurred_at {
            validate_time("occurred_at", at)?;
        }
        Ok(micros)
    }
}

/// A signed decimal amount (`"-5.00"`, `"12.5"`) in micro-units.
pub fn parse_signed_micros(text: &str) -> Result<i64, String> {
    match text.strip_prefix('-') {
        Some(rest) if !rest.starts_with(['-', '+']) => parse_micros(rest).map(|m| -m),
        _ => parse_micros(text),
    }
}

/// A correction as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Adjustment {
    pub id: String,
    pub tenant_id: String,
    pub kind: AdjustmentKind,
    /// The signed amount as an exact decimal (`"-5.000000"`).
    pub amount: String,
    pub currency: String,
    pub model: Option<String>,
    pub note: String,
    pub occurred_at: i64,
    pub recorded_at: i64,
}

impl Ledger {
    /// Records a batch of usage events in one transaction. An event whose request id is
    /// already recorded is skipped, not an error, so retries and replays are safe; its lines
    /// are written only with a new entry. An invalid event fails the whole batch before
    /// anything is written (check with [`UsageEvent::validate`] when enqueueing).
    pub async fn record_usage(&self, events: &[UsageEvent]) -> Result<RecordOutcome, LedgerError> {
        for (i, event) in events.iter().enumerate() {
            event.validate().map_err(|invalid| {
                LedgerError::Conflict(format!(
                    "usage event {i} ('{}') is invalid: {}: {}",
                    event.request_id, invalid.field, invalid.message
                ))
            })?;
        }
        if events.is_empty() {
            return Ok(RecordOutcome::default());
        }
        let now = self.now_ms();
        // The first event of each request id gets an entry id; a repeat later in the batch
        // is a duplicate and never reaches the database.
        let mut seen = HashSet::with_capacity(events.len());
        let ids: Vec<Option<String>> = events
            .iter()
            .map(|event| seen.insert(event.request_id.as_str()).then(new_id))
            .collect();
        let fresh: Vec<(&str, &UsageEvent)> = ids
            .iter()
            .zip(events)
            .filter_map(|(id, event)| Some((id.as_deref()?, event)))
            .collect();

        // A constant number of statements per batch (each one is a round trip to the
        // database, or to sqlx's SQLite worker thread): one multi-row insert for the
        // entries, one for their lines, more only past the bind-parameter limit.
        let mut tx = self.begin().await?;
        let inserted = insert_entries(&mut tx, self.backend(), now, &fresh).await?;
        let lines: Vec<(&str, &UsageLine)> = fresh
            .iter()
            .filter(|(id, _)| inserted.contains(*id))
            .flat_map(|(id, event)| event.lines.iter().map(move |line| (*id, line)))
            .collect();
        insert_lines(&mut tx, self.backend(), &lines).await?;
        tx.commit().await?;

        let mut outcome = RecordOutcome::default();
        for (id, event) in ids.iter().zip(events) {
            if id.as_ref().is_some_and(|id| inserted.contains(id)) {
                outcome.inserted += 1;
            } else {
                outcome.duplicates += 1;
                outcome.duplicate_request_ids.push(event.request_id.clone());
            }
        }
        Ok(outcome)
    }

    /// Prices token counts of `model` in `currency` at the price versions in force at
    /// `occurred_at` (see [`price_lines`] for token types without a price).
    pub async fn price_usage(
        &self,
        model: &str,
        currency: &str,
        occurred_at: i64,
        tokens: &[(String, u64)],
    ) -> Result<PricedUsage, LedgerError> {
        let mut tx = self.begin().await?;
        let mut prices = Vec::with_capacity(tokens.len());
        for (token_type, _) in tokens {
            let price = price_at_in(&mut tx, model, token_type, currency, occurred_at).await?;
            prices.push(price.map(|p| p.micros_per_million));
        }
        tx.commit().await?;
        let mut next = prices.into_iter();
        Ok(price_lines(tokens, |_| next.next().flatten()))
    }

    /// Records a grant or adjustment (`micros` from [`NewAdjustment::validate`]) in the
    /// tenant's currency, with its audit entry.
    pub async fn record_adjustment(
        &self,
        actor: &str,
        new: &NewAdjustment,
        micros: i64,
    ) -> Result<Adjustment, LedgerError> {
        let now = self.now_ms();
        let occurred_at = new.occurred_at.unwrap_or(now).clamp(0, MAX_TIME_MS);
        let mut tx = self.begin().await?;
        let tenant = tenant_in(&mut tx, &new.tenant_id).await?;
        let id = new_id();
        sqlx::query(
            "INSERT INTO ledger_entries (id, kind, request_id, tenant_id, session_id, model, domain, cost_micros, currency, \
             occurred_at, recorded_at, note) VALUES ($1, $2, NULL, $3, NULL, $4, NULL, $5, $6, $7, $8, $9)",
        )
        .bind(&id)
        .bind(new.kind.as_str())
        .bind(&tenant.id)
        .bind(new.model.clone())
        .bind(micros)
        .bind(&tenant.currency)
        .bind(occurred_at)
        .bind(now)
        .bind(&new.note)
        .execute(&mut *tx)
        .await?;
        let adjustment = Adjustment {
            id: id.clone(),
            tenant_id: tenant.id.clone(),
            kind: new.kind,
            amount: format_micros(micros),
            currency: tenant.currency.clone(),
            model: new.model.clone(),
            note: new.note.clone(),
            occurred_at,
            recorded_at: now,
        };
        let action = format!("ledger.{}", new.kind.as_str());
        audit::record(
            &mut tx,
            now,
            actor,
            &action,
            ("ledger_entry", &id),
            None::<&Adjustment>,
            Some(&adjustment),
        )
        .await?;
        tx.commit().await?;
        Ok(adjustment)
    }
}

/// Most bind parameters in one statement: under SQLite's limit (32,766) and PostgreSQL's
/// (65,535).
const MAX_BINDS: usize = 30_000;
/// Bind parameters per `ledger_entries` row in [`insert_entries`].
const ENTRY_BINDS: usize = 11;
/// Bind parameters per `ledger_lines` row in [`insert_lines`].
const LINE_BINDS: usize = 4;

/// Inserts an entry for each `(entry id, event)` whose request id is not recorded yet; the
/// ids of the entries inserted. The request ids must be distinct.
async fn insert_entries(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    now: i64,
    events: &[(&str, &UsageEvent)],
) -> Result<HashSet<String>, LedgerError> {
    let mut inserted = HashSet::with_capacity(events.len());
    for chunk in events.chunks(MAX_BINDS / ENTRY_BINDS) {
        // Both PostgreSQL and SQLite take this form; only the request id's uniqueness is
        // ignored, any other failure still surfaces. A skipped row returns no id.
        let sql = format!(
            "INSERT INTO ledger_entries (id, kind, request_id, tenant_id, session_id, model, domain, cost_micros, \
             currency, occurred_at, recorded_at) VALUES {} ON CONFLICT (request_id) DO NOTHING RETURNING id",
            placeholders(backend, chunk.len(), ENTRY_BINDS)
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for (id, event) in chunk {
            query = query
                .bind(*id)
                .bind("usage")
                .bind(event.request_id.as_str())
                .bind(event.tenant_id.as_str())
                .bind(event.session_id.as_deref())
                .bind(event.model.as_deref())
                .bind(event.domain.as_deref())
                .bind(event.cost_micros())
                .bind(event.currency.as_str())
                .bind(event.occurred_at)
                .bind(now);
        }
        inserted.extend(query.fetch_all(&mut **tx).await?);
    }
    Ok(inserted)
}

/// Inserts `(entry id, line)` rows.
async fn insert_lines(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    lines: &[(&str, &UsageLine)],
) -> Result<(), LedgerError> {
    for chunk in lines.chunks(MAX_BINDS / LINE_BINDS) {
        let sql = format!(
            "INSERT INTO ledger_lines (entry_id, token_type, tokens, cost_micros) VALUES {}",
            placeholders(backend, chunk.len(), LINE_BINDS)
        );
        let mut query = sqlx::query(&sql);
        for (id, line) in chunk {
            query = query
                .bind(*id)
                .bind(line.token_type.as_str())
                .bind(line.tokens as i64)
                .bind(line.cost_micros);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// `rows` tuples of `width` placeholders, bound in order: `($1, $2), ($3, $4)` for
/// PostgreSQL, `(?, ?), (?, ?)` for SQLite.
///
/// SQLite takes `$N` as a parameter *name* and finds each name by a linear search, both
/// when it prepares the statement and when sqlx binds it, which is quadratic in the number
/// of parameters (seconds for a full statement); a bare `?` is simply the next position.
fn placeholders(backend: Backend, rows: usize, width: usize) -> String {
    let mut sql = String::with_capacity(rows * width * 8);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..width {
            if column > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Postgres => {
                    write!(sql, "${}", row * width + column + 1).expect("writing to a String")
                }
                Backend::Sqlite => sql.push('?'),
            }
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(lines: Vec<UsageLine>) -> UsageEvent {
        UsageEvent {
            request_id: "r-9".into(),
            tenant_id: "acme".into(),
            session_id: Some("s-123".into()),
            model: Some("claude-sonnet".into()),
            domain: Some("ai-gateway".into()),
            occurred_at: 1_795_305_600_000,
            currency: "USD".into(),
            lines,
        }
    }

    fn line(token_type: &str, tokens: u64, cost_micros: i64) -> UsageLine {
        UsageLine {
            token_type: token_type.into(),
            tokens,
            cost_micros,
        }
    }

    #[test]
    fn the_worked_example_prices_each_line_once_and_sums_exactly() {
        let tokens = [("input".to_owned(), 1_200), ("output".to_owned(), 350)];
        let priced = price_lines(&tokens, |t| match t {
            "input" => Some(3_000_000),
            "output" => Some(15_000_000),
            _ => None,
        });
        assert!(priced.unpriced.is_empty());
        let event = event(priced.lines);
        assert_eq!(event.lines[0].cost_micros, 3_600);
        assert_eq!(event.lines[1].cost_micros, 5_250);
        assert_eq!(format_micros(event.cost_micros()), "0.008850");
    }

    #[test]
    fn a_token_type_without_a_price_costs_nothing_and_is_reported() {
        let priced = price_lines(&[("reasoning".to_owned(), 10)], |_| None);
        assert_eq!(priced.lines, vec![line("reasoning", 10, 0)]);
        assert_eq!(priced.unpriced, vec!["reasoning".to_owned()]);
    }

    #[test]
    fn an_event_needs_sane_numbers_and_one_line_per_token_type() {
        assert!(
            event(vec![line("input", 1, 1), line("output", 1, 1)])
                .validate()
                .is_ok()
        );
        let twice = event(vec![line("input", 1, 1), line("input", 2, 2)])
            .validate()
            .unwrap_err();
        assert_eq!(twice.field, "lines[1].token_type");
        let negative = event(vec![line("input", 1, -1)]).validate().unwrap_err();
        assert_eq!(negative.field, "lines[0].cost_micros");
        let huge = event(vec![line("input", u64::MAX, 0)])
            .validate()
            .unwrap_err();
        assert_eq!(huge.field, "lines[0].tokens");
        let mut no_id = event(vec![]);
        no_id.request_id.clear();
        assert_eq!(no_id.validate().unwrap_err().field, "request_id");
        // PostgreSQL text cannot hold NUL: refused here, naming the field, not by the ledger.
        let mut nul_id = event(vec![]);
        nul_id.request_id = "r\u{0}9".into();
        assert_eq!(nul_id.validate().unwrap_err().field, "request_id");
        let nul_type = event(vec![line("in\u{0}put", 1, 1)])
            .validate()
            .unwrap_err();
        assert_eq!(nul_type.field, "lines[0].token_type");
        let mut nul_session = event(vec![]);
        nul_session.session_id = Some("s\u{0}1".into());
        assert_eq!(nul_session.validate().unwrap_err().field, "session_id");
    }

    #[test]
    fn placeholders_number_every_row_in_order() {
        assert_eq!(placeholders(Backend::Postgres, 1, 1), "($1)");
        assert_eq!(
            placeholders(Backend::Postgres, 2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(placeholders(Backend::Sqlite, 2, 2), "(?, ?), (?, ?)");
    }

    #[test]
    fn signed_amounts_parse_exactly() {
        assert_eq!(parse_signed_micros("-5.00"), Ok(-5_000_000));
        assert_eq!(parse_signed_micros("0.000001"), Ok(1));
        for bad in ["--1", "-+1", "+1", "-", "1e3", "-1.1234567"] {
            assert!(parse_signed_micros(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_grant_is_a_credit_and_nothing_is_zero() {
        let new = |kind, amount: &str| NewAdjustment {
            tenant_id: "acme".into(),
            kind,
            amount: amount.into(),
            note: "goodwill".into(),
            model: None,
            occurred_at: None,
        };
        assert_eq!(
            new(AdjustmentKind::Grant, "-5.00").validate(),
            Ok(-5_000_000)
        );
        assert_eq!(
            new(AdjustmentKind::Grant, "5.00")
                .validate()
                .unwrap_err()
                .field,
            "amount"
        );
        assert_eq!(
            new(AdjustmentKind::Adjustment, "5.00").validate(),
            Ok(5_000_000)
        );
        assert_eq!(
            new(AdjustmentKind::Adjustment, "0")
                .validate()
                .unwrap_err()
                .field,
            "amount"
        );
    }
}
