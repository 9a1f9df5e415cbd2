//! The price book: the price of a million tokens per model, token type and currency, in
//! versions that each take effect at a time. Versions are only ever added, so usage keeps
//! the price that was in force when it happened; the version in force at `t` is the one
//! with the greatest `effective_from <= t`.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use utoipa::ToSchema;

use super::tenants::{Invalid, validate_currency, validate_slug};
use super::{Ledger, LedgerError, audit, new_id};
use crate::money::{format_micros, parse_micros};

/// The latest time accepted anywhere: 9999-12-31T23:59:59.999Z, in milliseconds.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// One price version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Price {
    pub id: String,
    pub model: String,
    /// `input`, `output`, `cached_input`, ...
    pub token_type: String,
    /// ISO 4217 code.
    pub currency: String,
    /// The price of one million tokens, as an exact decimal (`"3.000000"`).
    pub price_per_million: String,
    /// In force from this time on (milliseconds since the epoch, UTC) until a later version.
    pub effective_from: i64,
    pub created_at: i64,
    /// The token id that added the version.
    pub created_by: String,
    /// The price in micro-units, for pricing usage.
    #[serde(skip)]
    pub micros_per_million: i64,
}

/// A new price version.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPrice {
    pub model: String,
    pub token_type: String,
    pub currency: String,
    /// A non-negative decimal string with at most 6 decimal places (`"3.00"`); never a JSON number.
    pub price_per_million: String,
    /// Milliseconds since the epoch, UTC; now when absent.
    #[serde(default)]
    pub effective_from: Option<i64>,
}

/// Checks a model name: 1-128 characters of ASCII letters, digits and `- _ . : / @`
/// (`claude-sonnet`, `gpt-4o`, `meta/llama-3.1:70b`).
pub fn validate_model(field: &str, model: &str) -> Result<(), Invalid> {
    let ok = (1..=128).contains(&model.len())
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            "must be 1-128 characters of letters, digits and '-', '_', '.', ':', '/', '@'",
        ))
    }
}

/// Checks a time in milliseconds since the epoch.
pub fn validate_time(field: &str, ms: i64) -> Result<(), Invalid> {
    if (0..=MAX_TIME_MS).contains(&ms) {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!("must be milliseconds since the epoch, 0-{MAX_TIME_MS}"),
        ))
    }
}

impl NewPrice {
    /// Checks every field; the price in micro-units.
    pub fn validate(&self) -> Result<i64, Invalid> {
        validate_model("model", &self.model)?;
        validate_slug("token_type", &self.token_type)?;
        validate_currency("currency", &self.currency)?;
        let micros = parse_micros(&self.price_per_million)
            .map_err(|e| Invalid::new("price_per_million", e))?;
        if let Some(at) = self.effective_from {
            validate_time("effective_from", at)?;
        }
        Ok(micros)
    }
}

/// Which prices to list.
#[derive(Debug, Clone, Default)]
pub struct PriceFilter {
    pub model: Option<String>,
    pub token_type: Option<String>,
    pub currency: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

const PRICE_COLUMNS: &str =
    "id, model, token_type, currency, micros_per_million, effective_from, created_at, created_by";

fn price_from_row(row: &AnyRow) -> Result<Price, LedgerError> {
    let micros: i64 = row.try_get("micros_per_million")?;
    Ok(Price {
        id: row.try_get("id")?,
        model: row.try_get("model")?,
        token_type: row.try_get("token_type")?,
        currency: row.try_get("currency")?,
        price_per_million: format_micros(micros),
        effective_from: row.try_get("effective_from")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        micros_per_million: micros,
    })
}

impl Ledger {
    /// Adds a price version (`micros` from [`NewPrice::validate`]); a second version of the
    /// same model, token type and currency at the same time is a conflict.
    pub async fn add_price(
        &self,
        actor: &str,
        new: &NewPrice,
        micros: i64,
    ) -> Result<Price, LedgerError> {
        let now = self.now_ms();
        let id = new_id();
        let effective_from = new.effective_from.unwrap_or(now);
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO prices (id, model, token_type, currency, micros_per_million, effective_from, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(&new.model)
        .bind(&new.token_type)
        .bind(&new.currency)
        .bind(micros)
        .bind(effective_from)
        .bind(now)
        .bind(actor)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            LedgerError::conflict_on_unique(e, || {
                format!(
                    "a price of {} {} tokens in {} effective from {effective_from} already exists; add a version with another effective_from",
                    new.model, new.token_type, new.currency
                )
            })
        })?;
        let row = sqlx::query(&format!("SELECT {PRICE_COLUMNS} FROM prices WHERE id = $1"))
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        let price = price_from_row(&row)?;
        audit::record(
            &mut tx,
            now,
            actor,
            "price.create",
            ("price", &id),
            None::<&Price>,
            Some(&price),
        )
        .await?;
        // Prices decide what usage costs, so every replica reloads them.
        self.commit_change(tx).await?;
        Ok(price)
    }

    /// Price versions matching `filter`, by model, token type, currency and time.
    pub async fn prices(&self, filter: &PriceFilter) -> Result<Vec<Price>, LedgerError> {
        let rows = sqlx::query(&format!(
            "SELECT {PRICE_COLUMNS} FROM prices WHERE ($1 IS NULL OR model = $1) AND ($2 IS NULL OR token_type = $2) \
             AND ($3 IS NULL OR currency = $3) ORDER BY model, token_type, currency, effective_from, id LIMIT $4 OFFSET $5"
        ))
        .bind(filter.model.clone())
        .bind(filter.token_type.clone())
        .bind(filter.currency.clone())
        .bind(filter.limit)
        .bind(filter.offset)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(price_from_row).collect()
    }

    /// The price version in force at `at`, if any.
    pub async fn price_at(
        &self,
        model: &str,
        token_type: &str,
        currency: &str,
        at: i64,
    ) -> Result<Option<Price>, LedgerError> {
        let mut tx = self.begin().await?;
        let price = price_at_in(&mut tx, model, token_type, currency, at).await?;
        tx.commit().await?;
        Ok(price)
    }
}

/// The price version in force at `at`, inside a transaction (for pricing usage).
pub async fn price_at_in(
    tx: &mut Transaction<'static, Any>,
    model: &str,
    token_type: &str,
    currency: &str,
    at: i64,
) -> Result<Option<Price>, LedgerError> {
    let row = sqlx::query(&format!(
        "SELECT {PRICE_COLUMNS} FROM prices WHERE model = $1 AND token_type = $2 AND currency = $3 \
         AND effective_from <= $4 ORDER BY effective_from DESC LIMIT 1"
    ))
    .bind(model)
    .bind(token_type)
    .bind(currency)
    .bind(at)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(price_from_row).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_allow_the_usual_provider_spellings() {
        for ok in [
            "claude-sonnet",
            "gpt-4o",
            "meta/llama-3.1:70b",
            "Claude_3@2024",
        ] {
            assert!(validate_model("model", ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "semi;colon", &"x".repeat(129)] {
            assert!(validate_model("model", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_price_must_be_a_decimal_string_within_bounds() {
        let new = |price: &str, at: Option<i64>| NewPrice {
            model: "m".into(),
            token_type: "input".into(),
            currency: "USD".into(),
            price_per_million: price.into(),
            effective_from: at,
        };
        assert_eq!(new("3.00", None).validate(), Ok(3_000_000));
        assert_eq!(
            new("-1", None).validate().unwrap_err().field,
            "price_per_million"
        );
        assert_eq!(
            new("1000000000001", None).validate().unwrap_err().field,
            "price_per_million"
        );
        assert_eq!(
            new("1", Some(-1)).validate().unwrap_err().field,
            "effective_from"
        );
    }
}
