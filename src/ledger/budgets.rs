//! Budgets: how much a scope may use (requests, tokens or money) per period, hard or soft,
//! with alert thresholds; and temporary overrides granted by approval.
//!
//! Combinations allowed:
//! - `scope`: `tenant` and `tenant_model` (which also names a `model`) belong to a tenant;
//!   `session` is a tenant's default for each of its sessions; `global` covers everything.
//! - `measure`: `requests`, `tokens` (of one `token_type`, or all types when absent), or
//!   `cost` (money, in the tenant's currency; a global cost budget names its `currency`).
//! - `period`: a window of any length, a calendar day/week/month in the tenant's timezone
//!   (UTC for global budgets), or the session's lifetime (session scope only; sessions take
//!   a window or their lifetime, not a calendar period).
//!
//! Amounts are counts for requests and tokens (JSON integers) and exact decimal strings for
//! money, stored as micro-units. A temporary override is a limit in force until it expires;
//! a budget's effective limit is the greatest of its amount and its live overrides. Budgets
//! are retired (`deleted_at`), never deleted: the ledger and audit log keep naming them.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use utoipa::ToSchema;

use super::prices::validate_model;
use super::tenants::{Invalid, tenant_in, validate_currency, validate_slug};
use super::{Ledger, LedgerError, audit, new_id};
use crate::money::{format_micros, parse_micros};

/// Largest request or token count of a budget.
pub const MAX_COUNT: u64 = 1_000_000_000_000_000;
/// Longest budget window: a year.
pub const MAX_WINDOW_SECONDS: u64 = 366 * 86_400;
/// Most alert thresholds per budget.
pub const MAX_THRESHOLDS: usize = 10;

/// What a budget covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// All of one tenant's traffic.
    Tenant,
    /// One tenant's traffic to one model.
    TenantModel,
    /// Each session of one tenant (the tenant's session defaults).
    Session,
    /// All traffic.
    Global,
}

impl Scope {
    /// The name the API, the ledger and CSV use.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Tenant => "tenant",
            Scope::TenantModel => "tenant_model",
            Scope::Session => "session",
            Scope::Global => "global",
        }
    }
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    Requests,
    Tokens,
    Cost,
}

impl Measure {
    /// The name the API, the ledger and CSV use.
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Requests => "requests",
            Measure::Tokens => "tokens",
            Measure::Cost => "cost",
        }
    }
}

/// A calendar period, in the tenant's timezone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CalendarUnit {
    Day,
    /// ISO weeks, starting on Monday.
    Week,
    Month,
}

/// The word `"session"`: a session's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionPeriod {
    Session,
}

/// When a budget's use starts again from zero: `{"window_seconds": N}`,
/// `{"calendar": "day"|"week"|"month"}` or `"session"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Period {
    Window { window_seconds: u64 },
    Calendar { calendar: CalendarUnit },
    Session(SessionPeriod),
}

const PERIOD_SHAPE: &str =
    r#"must be {"window_seconds": N}, {"calendar": "day"|"week"|"month"} or "session""#;

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through a JSON value, so every wrong shape gets the same clear message.
        let value = Value::deserialize(d)?;
        match &value {
            Value::String(s) if s == "session" => Ok(Period::Session(SessionPeriod::Session)),
            Value::Object(map) if map.len() == 1 => {
                if let Some(seconds) = map.get("window_seconds") {
                    let seconds = seconds.as_u64().ok_or_else(|| {
                        de::Error::custom("window_seconds must be a whole number of seconds")
                    })?;
                    Ok(Period::Window {
                        window_seconds: seconds,
                    })
                } else if let Some(unit) = map.get("calendar") {
                    let unit = CalendarUnit::deserialize(unit).map_err(|_| {
                        de::Error::custom(r#"calendar must be "day", "week" or "month""#)
                    })?;
                    Ok(Period::Calendar { calendar: unit })
                } else {
                    Err(de::Error::custom(PERIOD_SHAPE))
                }
            }
            _ => Err(de::Error::custom(PERIOD_SHAPE)),
        }
    }
}

impl Period {
    /// The stored form: `window:<seconds>`, `calendar:<unit>` or `session`.
    pub fn to_stored(self) -> String {
        match self {
            Period::Window { window_seconds } => format!("window:{window_seconds}"),
            Period::Calendar { calendar } => format!("calendar:{}", calendar_name(calendar)),
            Period::Session(_) => "session".to_owned(),
        }
    }

    fn from_stored(s: &str) -> Option<Period> {
        match s.split_once(':') {
            Some(("window", n)) => n
                .parse()
                .ok()
                .map(|window_seconds| Period::Window { window_seconds }),
            Some(("calendar", "day")) => Some(Period::Calendar {
                calendar: CalendarUnit::Day,
            }),
            Some(("calendar", "week")) => Some(Period::Calendar {
                calendar: CalendarUnit::Week,
            }),
            Some(("calendar", "month")) => Some(Period::Calendar {
                calendar: CalendarUnit::Month,
            }),
            None if s == "session" => Some(Period::Session(SessionPeriod::Session)),
            _ => None,
        }
    }
}

fn calendar_name(unit: CalendarUnit) -> &'static str {
    match unit {
        CalendarUnit::Day => "day",
        CalendarUnit::Week => "week",
        CalendarUnit::Month => "month",
    }
}

/// Hard budgets deny once spent; soft budgets only alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    Hard,
    Soft,
}

impl Enforcement {
    /// The name the API, the ledger and CSV use.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Hard => "hard",
            Enforcement::Soft => "soft",
        }
    }
}

/// An amount as written in the API: a whole count of requests or tokens (a JSON integer),
/// or money as an exact decimal string (`"100.00"`). Fractional JSON numbers are refused,
/// so money never passes through floating point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Amount {
    Count(u64),
    Decimal(String),
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AmountVisitor;
        impl Visitor<'_> for AmountVisitor {
            type Value = Amount;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a whole number (requests, tokens) or a decimal string (money, e.g. "100.00")"#)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
                Ok(Amount::Count(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
                u64::try_from(v)
                    .map(Amount::Count)
                    .map_err(|_| E::custom("must not be negative"))
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Amount, E> {
                Err(E::custom(
                    r#"must be a whole number (requests, tokens) or a decimal string for money (e.g. "100.00"); fractional or huge JSON numbers are not accepted"#,
                ))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
                Ok(Amount::Decimal(v.to_owned()))
            }
        }
        d.deserialize_any(AmountVisitor)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Decimal(d) => f.write_str(d),
        }
    }
}

impl Amount {
    /// The amount in storage units for `measure` (a count, or micro-units for cost).
    pub fn to_units(&self, measure: Measure, field: &str) -> Result<i64, Invalid> {
        match (measure, self) {
            (Measure::Cost, Amount::Decimal(text)) => {
                parse_micros(text).map_err(|e| Invalid::new(field, e))
            }
            (Measure::Cost, Amount::Count(_)) => Err(Invalid::new(
                field,
                r#"a cost amount is a decimal string in the currency (e.g. "100.00"), not a JSON number"#,
            )),
            (_, Amount::Count(n)) if *n <= MAX_COUNT => Ok(*n as i64),
            (_, Amount::Count(_)) => {
                Err(Invalid::new(field, format!("must be at most {MAX_COUNT}")))
            }
            (_, Amount::Decimal(_)) => Err(Invalid::new(
                field,
                "a request or token amount is a whole number (a JSON integer)",
            )),
        }
    }

    /// Storage units shown the way the API writes them for `measure`.
    pub fn from_units(measure: Measure, units: i64) -> Amount {
        match measure {
            Measure::Cost => Amount::Decimal(format_micros(units)),
            _ => Amount::Count(units.max(0) as u64),
        }
    }
}

/// A temporary limit granted by approval, in force until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BudgetOverride {
    pub id: String,
    /// The budget's limit while the override is in force.
    pub amount: Amount,
    pub expires_at: i64,
    /// The approval request that granted it.
    pub approval_id: String,
    pub created_at: i64,
    /// The limit in storage units.
    #[serde(skip)]
    pub units: i64,
}

/// A budget as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Budget {
    pub id: String,
    /// A slug, unique among the live budgets of a tenant (or the global ones); decisions
    /// name the budget that denied.
    pub name: String,
    pub scope: Scope,
    pub tenant_id: Option<String>,
    /// The model of a `tenant_model` budget.
    pub model: Option<String>,
    pub measure: Measure,
    /// The token type a `tokens` budget counts; all types when absent.
    pub token_type: Option<String>,
    pub period: Period,
    /// A count for requests and tokens; an exact decimal string for cost.
    pub amount: Amount,
    /// The currency of a cost budget.
    pub currency: Option<String>,
    pub enforcement: Enforcement,
    /// Percentages of the amount at which alerts fire, ascending.
    pub alert_thresholds: Vec<u32>,
    /// Overrides in force now.
    pub overrides: Vec<BudgetOverride>,
    /// The limit in force now: the greatest of `amount` and the overrides in force.
    pub effective_amount: Amount,
    pub created_at: i64,
    pub updated_at: i64,
    /// When the budget was retired; it no longer counts from then on.
    pub deleted_at: Option<i64>,
    /// The amount in storage units (a count, or micro-units).
    #[serde(skip)]
    pub amount_units: i64,
}

impl Budget {
    /// The limit in force now, in storage units.
    pub fn effective_units(&self) -> i64 {
        self.overrides
            .iter()
            .map(|o| o.units)
            .fold(self.amount_units, i64::max)
    }
}

/// A new budget.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBudget {
    pub name: String,
    pub scope: Scope,
    /// Required for the tenant, tenant_model and session scopes; absent for global.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Required for (and only allowed with) the tenant_model scope.
    #[serde(default)]
    pub model: Option<String>,
    pub measure: Measure,
    /// Only with the tokens measure; all token types when absent.
    #[serde(default)]
    pub token_type: Option<String>,
    pub period: Period,
    /// A JSON integer for requests and tokens; a decimal string for cost (`"100.00"`).
    pub amount: Amount,
    /// Only for global cost budgets: tenant budgets are in the tenant's currency.
    #[serde(default)]
    pub currency: Option<String>,
    pub enforcement: Enforcement,
    /// Percentages 1-100, ascending, without repeats, at most 10.
    #[serde(default)]
    pub alert_thresholds: Vec<u32>,
}

/// Changes to a budget; absent fields stay as they are. What a budget covers (scope,
/// tenant, model, measure, token type, currency) cannot change: retire it and create another.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetUpdate {
    pub name: Option<String>,
    pub period: Option<Period>,
    pub amount: Option<Amount>,
    pub enforcement: Option<Enforcement>,
    pub alert_thresholds: Option<Vec<u32>>,
    /// Cannot change.
    #[schema(value_type = Option<Object>)]
    pub scope: Option<Value>,
    /// Cannot change.
    #[schema(value_type = Option<Object>)]
    pub tenant_id: Option<Value>,
    /// Cannot change.
    #[schema(value_type = Option<Object>)]
    pub model: Option<Value>,
    /// Cannot change.
    #[schema(value_type = Option<Object>)]
    pub measure: Option<Value>,
    /// Cannot change.
    #[schema(value_type = Option<Object>)]
    pub token_type: Option<Value>,
    /// Cannot change.
    #[schema(value_type = Option<Object>)]
    pub currency: Option<Value>,
}

/// A budget's definition, checked, in storage units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetDef {
    pub name: String,
    pub scope: Scope,
    pub tenant_id: Option<String>,
    pub model: Option<String>,
    pub measure: Measure,
    pub token_type: Option<String>,
    pub period: Period,
    pub amount_units: i64,
    /// For global cost budgets; tenant cost budgets take the tenant's currency when stored.
    pub currency: Option<String>,
    pub enforcement: Enforcement,
    pub alert_thresholds: Vec<u32>,
}

fn validate_thresholds(thresholds: &[u32]) -> Result<(), Invalid> {
    if thresholds.len() > MAX_THRESHOLDS {
        return Err(Invalid::new(
            "alert_thresholds",
            format!("at most {MAX_THRESHOLDS} thresholds"),
        ));
    }
    for (i, t) in thresholds.iter().enumerate() {
        if !(1..=100).contains(t) {
            return Err(Invalid::new(
                format!("alert_thresholds[{i}]"),
                "must be a percentage 1-100",
            ));
        }
        if i > 0 && thresholds[i - 1] >= *t {
            return Err(Invalid::new(
                format!("alert_thresholds[{i}]"),
                "thresholds must be ascending without repeats",
            ));
        }
    }
    Ok(())
}

fn validate_period(scope: Scope, period: Period) -> Result<(), Invalid> {
    match (scope, period) {
        (_, Period::Window { window_seconds })
            if !(1..=MAX_WINDOW_SECONDS).contains(&window_seconds) =>
        {
            Err(Invalid::new(
                "period.window_seconds",
                format!("must be 1-{MAX_WINDOW_SECONDS}"),
            ))
        }
        (Scope::Session, Period::Calendar { .. }) => Err(Invalid::new(
            "period",
            r#"a session budget counts per session: use {"window_seconds": N} or "session""#,
        )),
        (Scope::Session, _) | (_, Period::Window { .. } | Period::Calendar { .. }) => Ok(()),
        (_, Period::Session(_)) => Err(Invalid::new(
            "period",
            r#""session" is only for the session scope"#,
        )),
    }
}

impl NewBudget {
    /// Checks every field and every combination.
    pub fn validate(&self) -> Result<BudgetDef, Invalid> {
        validate_slug("name", &self.name)?;
        match (self.scope, &self.tenant_id) {
            (Scope::Global, Some(_)) => {
                return Err(Invalid::new(
                    "tenant_id",
                    "a global budget belongs to no tenant",
                ));
            }
            (Scope::Global, None) => {}
            (_, Some(tenant)) => validate_slug("tenant_id", tenant)?,
            (_, None) => {
                return Err(Invalid::new(
                    "tenant_id",
                    "is required for the tenant, tenant_model and session scopes",
                ));
            }
        }
        match (self.scope, &self.model) {
            (Scope::TenantModel, Some(model)) => validate_model("model", model)?,
            (Scope::TenantModel, None) => {
                return Err(Invalid::new(
                    "model",
                    "is required for the tenant_model scope",
                ));
            }
            (_, Some(_)) => {
                return Err(Invalid::new(
                    "model",
                    "is only allowed for the tenant_model scope",
                ));
            }
            (_, None) => {}
        }
        match (self.measure, &self.token_type) {
            (Measure::Tokens, Some(token_type)) => validate_slug("token_type", token_type)?,
            (_, Some(_)) => {
                return Err(Invalid::new(
                    "token_type",
                    "is only allowed with the tokens measure",
                ));
            }
            (_, None) => {}
        }
        validate_period(self.scope, self.period)?;
        let amount_units = self.amount.to_units(self.measure, "amount")?;
        match (self.scope, self.measure, &self.currency) {
            (Scope::Global, Measure::Cost, Some(currency)) => {
                validate_currency("currency", currency)?
            }
            (Scope::Global, Measure::Cost, None) => {
                return Err(Invalid::new(
                    "currency",
                    "is required for a global cost budget",
                ));
            }
            (Scope::Global, _, Some(_)) => {
                return Err(Invalid::new(
                    "currency",
                    "is only allowed with the cost measure",
                ));
            }
            (_, _, Some(_)) => {
                return Err(Invalid::new(
                    "currency",
                    "a tenant's budgets are in the tenant's currency; leave it out",
                ));
            }
            (_, _, None) => {}
        }
        validate_thresholds(&self.alert_thresholds)?;
        Ok(BudgetDef {
            name: self.name.clone(),
            scope: self.scope,
            tenant_id: self.tenant_id.clone(),
            model: self.model.clone(),
            measure: self.measure,
            token_type: self.token_type.clone(),
            period: self.period,
            amount_units,
            currency: self.currency.clone(),
            enforcement: self.enforcement,
            alert_thresholds: self.alert_thresholds.clone(),
        })
    }
}

impl BudgetUpdate {
    /// Checks the given fields against `budget` and returns its new definition.
    pub fn apply_to(&self, budget: &Budget) -> Result<BudgetDef, Invalid> {
        let fixed = [
            ("scope", &self.scope),
            ("tenant_id", &self.tenant_id),
            ("model", &self.model),
            ("measure", &self.measure),
            ("token_type", &self.token_type),
            ("currency", &self.currency),
        ];
        if let Some((field, _)) = fixed.iter().find(|(_, v)| v.is_some()) {
            return Err(Invalid::new(
                *field,
                "cannot change; retire the budget and create another",
            ));
        }
        if let Some(name) = &self.name {
            validate_slug("name", name)?;
        }
        let period = self.period.unwrap_or(budget.period);
        validate_period(budget.scope, period)?;
        let amount_units = match &self.amount {
            Some(amount) => amount.to_units(budget.measure, "amount")?,
            None => budget.amount_units,
        };
        let alert_thresholds = self
            .alert_thresholds
            .clone()
            .unwrap_or_else(|| budget.alert_thresholds.clone());
        validate_thresholds(&alert_thresholds)?;
        Ok(BudgetDef {
            name: self.name.clone().unwrap_or_else(|| budget.name.clone()),
            scope: budget.scope,
            tenant_id: budget.tenant_id.clone(),
            model: budget.model.clone(),
            measure: budget.measure,
            token_type: budget.token_type.clone(),
            period,
            amount_units,
            currency: budget.currency.clone(),
            enforcement: self.enforcement.unwrap_or(budget.enforcement),
            alert_thresholds,
        })
    }
}

/// Which budgets to list.
#[derive(Debug, Clone, Default)]
pub struct BudgetFilter {
    pub tenant_id: Option<String>,
    pub scope: Option<Scope>,
    /// Also retired budgets.
    pub include_retired: bool,
    pub limit: i64,
    pub offset: i64,
}

/// Parses a stored enum name through its serde name.
fn parse_stored<T: for<'de> Deserialize<'de>>(column: &str, s: &str) -> Result<T, LedgerError> {
    T::deserialize(Value::String(s.to_owned())).map_err(|_| {
        LedgerError::Database(sqlx::Error::Decode(
            format!("unexpected {column} '{s}'").into(),
        ))
    })
}

const BUDGET_COLUMNS: &str = "id, name, scope, tenant_id, model, measure, token_type, period, amount, currency, \
     enforcement, alert_thresholds, created_at, updated_at, deleted_at";

fn row_measure(row: &AnyRow) -> Result<Measure, LedgerError> {
    parse_stored("measure", &row.try_get::<String, _>("measure")?)
}

fn budget_from_row(row: &AnyRow, overrides: Vec<BudgetOverride>) -> Result<Budget, LedgerError> {
    let measure = row_measure(row)?;
    let period: String = row.try_get("period")?;
    let thresholds: String = row.try_get("alert_thresholds")?;
    let amount_units: i64 = row.try_get("amount")?;
    let effective_units = overrides
        .iter()
        .map(|o| o.units)
        .fold(amount_units, i64::max);
    Ok(Budget {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        scope: parse_stored("scope", &row.try_get::<String, _>("scope")?)?,
        tenant_id: row.try_get("tenant_id")?,
        model: row.try_get("model")?,
        measure,
        token_type: row.try_get("token_type")?,
        period: Period::from_stored(&period).ok_or_else(|| {
            LedgerError::Database(sqlx::Error::Decode(
                format!("unexpected period '{period}'").into(),
            ))
        })?,
        amount: Amount::from_units(measure, amount_units),
        currency: row.try_get("currency")?,
        enforcement: parse_stored("enforcement", &row.try_get::<String, _>("enforcement")?)?,
        alert_thresholds: serde_json::from_str(&thresholds).unwrap_or_default(),
        overrides,
        effective_amount: Amount::from_units(measure, effective_units),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        deleted_at: row.try_get("deleted_at")?,
        amount_units,
    })
}

fn not_found(id: &str) -> LedgerError {
    LedgerError::NotFound {
        entity: "budget",
        id: id.to_owned(),
    }
}

fn name_taken(def: &BudgetDef) -> impl FnOnce() -> String + '_ {
    move || match &def.tenant_id {
        Some(tenant) => format!(
            "tenant '{tenant}' already has a live budget named '{}'",
            def.name
        ),
        None => format!("a live global budget named '{}' already exists", def.name),
    }
}

impl Ledger {
    /// Creates a budget; the tenant must exist, and a tenant's cost budget takes its currency.
    pub async fn create_budget(&self, actor: &str, def: &BudgetDef) -> Result<Budget, LedgerError> {
        let now = self.now_ms();
        let id = new_id();
        let mut tx = self.begin().await?;
        let mut currency = def.currency.clone();
        if let Some(tenant) = &def.tenant_id {
            let tenant = tenant_in(&mut tx, tenant).await?;
            if def.measure == Measure::Cost {
                currency = Some(tenant.currency);
            }
        }
        sqlx::query(
            "INSERT INTO budgets (id, name, scope, tenant_id, model, measure, token_type, period, amount, currency, \
             enforcement, alert_thresholds, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)",
        )
        .bind(&id)
        .bind(&def.name)
        .bind(def.scope.as_str())
        .bind(def.tenant_id.clone())
        .bind(def.model.clone())
        .bind(def.measure.as_str())
        .bind(def.token_type.clone())
        .bind(def.period.to_stored())
        .bind(def.amount_units)
        .bind(currency)
        .bind(def.enforcement.as_str())
        .bind(serde_json::to_string(&def.alert_thresholds).expect("thresholds serialize"))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| LedgerError::conflict_on_unique(e, name_taken(def)))?;
        let budget = budget_in(&mut tx, &id, now).await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "budget.create",
            ("budget", &id),
            None::<&Budget>,
            Some(&budget),
        )
        .await?;
        self.commit_change(tx).await?;
        Ok(budget)
    }

    /// One budget, retired or not, with the overrides in force now.
    pub async fn budget(&self, id: &str) -> Result<Budget, LedgerError> {
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        let budget = budget_in(&mut tx, id, now).await?;
        tx.commit().await?;
        Ok(budget)
    }

    /// Budgets matching `filter`, by tenant (global ones first), name and id.
    pub async fn budgets(&self, filter: &BudgetFilter) -> Result<Vec<Budget>, LedgerError> {
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {BUDGET_COLUMNS} FROM budgets WHERE ($1 IS NULL OR tenant_id = $1) AND ($2 IS NULL OR scope = $2) \
             AND ($3 = 1 OR deleted_at IS NULL) ORDER BY COALESCE(tenant_id, ''), name, id LIMIT $4 OFFSET $5"
        ))
        .bind(filter.tenant_id.clone())
        .bind(filter.scope.map(|s| s.as_str().to_owned()))
        .bind(i64::from(filter.include_retired))
        .bind(filter.limit)
        .bind(filter.offset)
        .fetch_all(&mut *tx)
        .await?;
        // Overrides are temporary and few: the ones in force, in one query, shared out.
        let mut live = overrides_in(&mut tx, None, now).await?;
        let mut budgets = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("id")?;
            let measure = row_measure(row)?;
            let overrides = live
                .remove(&id)
                .unwrap_or_default()
                .into_iter()
                .map(|o| o.show(measure))
                .collect();
            budgets.push(budget_from_row(row, overrides)?);
        }
        tx.commit().await?;
        Ok(budgets)
    }

    /// Every live budget (for the in-memory policy).
    pub async fn all_budgets(&self) -> Result<Vec<Budget>, LedgerError> {
        self.budgets(&BudgetFilter {
            limit: i64::MAX,
            ..BudgetFilter::default()
        })
        .await
    }

    /// Replaces a live budget's definition (from [`BudgetUpdate::apply_to`]).
    pub async fn update_budget(
        &self,
        actor: &str,
        id: &str,
        def: &BudgetDef,
    ) -> Result<Budget, LedgerError> {
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        let before = live_budget_in(&mut tx, id, now).await?;
        sqlx::query(
            "UPDATE budgets SET name = $1, period = $2, amount = $3, enforcement = $4, alert_thresholds = $5, updated_at = $6 \
             WHERE id = $7",
        )
        .bind(&def.name)
        .bind(def.period.to_stored())
        .bind(def.amount_units)
        .bind(def.enforcement.as_str())
        .bind(serde_json::to_string(&def.alert_thresholds).expect("thresholds serialize"))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| LedgerError::conflict_on_unique(e, name_taken(def)))?;
        let after = budget_in(&mut tx, id, now).await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "budget.update",
            ("budget", id),
            Some(&before),
            Some(&after),
        )
        .await?;
        self.commit_change(tx).await?;
        Ok(after)
    }

    /// Retires a budget: it stops counting but stays on record. Retiring twice is a conflict.
    pub async fn retire_budget(&self, actor: &str, id: &str) -> Result<Budget, LedgerError> {
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        let before = live_budget_in(&mut tx, id, now).await?;
        sqlx::query("UPDATE budgets SET deleted_at = $1, updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let after = budget_in(&mut tx, id, now).await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "budget.retire",
            ("budget", id),
            Some(&before),
            Some(&after),
        )
        .await?;
        self.commit_change(tx).await?;
        Ok(after)
    }
}

/// Reads a budget inside a transaction, with the overrides in force at `now`.
pub async fn budget_in(
    tx: &mut Transaction<'static, Any>,
    id: &str,
    now: i64,
) -> Result<Budget, LedgerError> {
    let row = sqlx::query(&format!(
        "SELECT {BUDGET_COLUMNS} FROM budgets WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| not_found(id))?;
    let measure = row_measure(&row)?;
    let overrides = overrides_in(tx, Some(id), now)
        .await?
        .remove(id)
        .unwrap_or_default();
    budget_from_row(
        &row,
        overrides.into_iter().map(|o| o.show(measure)).collect(),
    )
}

/// Reads a budget that is not retired; a retired one is a conflict.
pub async fn live_budget_in(
    tx: &mut Transaction<'static, Any>,
    id: &str,
    now: i64,
) -> Result<Budget, LedgerError> {
    let budget = budget_in(tx, id, now).await?;
    if budget.deleted_at.is_some() {
        return Err(LedgerError::Conflict(format!("budget '{id}' is retired")));
    }
    Ok(budget)
}

/// An override row, before its budget's measure says how to show its amount.
struct OverrideRow {
    id: String,
    units: i64,
    expires_at: i64,
    approval_id: String,
    created_at: i64,
}

impl OverrideRow {
    fn show(self, measure: Measure) -> BudgetOverride {
        BudgetOverride {
            id: self.id,
            amount: Amount::from_units(measure, self.units),
            expires_at: self.expires_at,
            approval_id: self.approval_id,
            created_at: self.created_at,
            units: self.units,
        }
    }
}

/// The overrides in force at `now` (of one budget, or of all), by budget, soonest to expire first.
async fn overrides_in(
    tx: &mut Transaction<'static, Any>,
    budget: Option<&str>,
    now: i64,
) -> Result<HashMap<String, Vec<OverrideRow>>, LedgerError> {
    let rows = sqlx::query(
        "SELECT id, budget_id, amount, expires_at, approval_id, created_at FROM budget_overrides \
         WHERE ($1 IS NULL OR budget_id = $1) AND expires_at > $2 ORDER BY expires_at, id",
    )
    .bind(budget.map(str::to_owned))
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let mut by_budget: HashMap<String, Vec<OverrideRow>> = HashMap::new();
    for row in &rows {
        by_budget
            .entry(row.try_get("budget_id")?)
            .or_default()
            .push(OverrideRow {
                id: row.try_get("id")?,
                units: row.try_get("amount")?,
                expires_at: row.try_get("expires_at")?,
                approval_id: row.try_get("approval_id")?,
                created_at: row.try_get("created_at")?,
            });
    }
    Ok(by_budget)
}

/// Raises a live budget's amount to `units` inside a transaction, with its audit entry.
/// Lowering it this way is a conflict: an approval only ever raises.
pub async fn raise_amount_in(
    tx: &mut Transaction<'static, Any>,
    now: i64,
    actor: &str,
    id: &str,
    units: i64,
) -> Result<Budget, LedgerError> {
    let before = live_budget_in(tx, id, now).await?;
    if units <= before.amount_units {
        return Err(LedgerError::Conflict(format!(
            "budget '{id}' is already at {}; the increase to {} would not raise it",
            before.amount,
            Amount::from_units(before.measure, units)
        )));
    }
    sqlx::query("UPDATE budgets SET amount = $1, updated_at = $2 WHERE id = $3")
        .bind(units)
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    let after = budget_in(tx, id, now).await?;
    audit::record(
        tx,
        now,
        actor,
        "budget.increase",
        ("budget", id),
        Some(&before),
        Some(&after),
    )
    .await?;
    Ok(after)
}

/// Adds a temporary override to a live budget inside a transaction, with its audit entry.
pub async fn add_override_in(
    tx: &mut Transaction<'static, Any>,
    now: i64,
    actor: &str,
    id: &str,
    units: i64,
    expires_at: i64,
    approval_id: &str,
) -> Result<Budget, LedgerError> {
    let before = live_budget_in(tx, id, now).await?;
    if expires_at <= now {
        return Err(LedgerError::Conflict(format!(
            "the override of budget '{id}' would already have expired at {expires_at}"
        )));
    }
    sqlx::query(
        "INSERT INTO budget_overrides (id, budget_id, amount, expires_at, approval_id, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(new_id())
    .bind(id)
    .bind(units)
    .bind(expires_at)
    .bind(approval_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let after = budget_in(tx, id, now).await?;
    audit::record(
        tx,
        now,
        actor,
        "budget.override",
        ("budget", id),
        Some(&before),
        Some(&after),
    )
    .await?;
    Ok(after)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn new(body: Value) -> Result<BudgetDef, String> {
        let budget: NewBudget = serde_json::from_value(body).map_err(|e| e.to_string())?;
        budget.validate().map_err(|e| e.field)
    }

    fn base() -> Value {
        json!({"name": "monthly-cost", "scope": "tenant", "tenant_id": "acme", "measure": "cost",
               "period": {"calendar": "month"}, "amount": "100.00", "enforcement": "hard", "alert_thresholds": [80, 100]})
    }

    fn with(changes: Value) -> Value {
        let mut body = base();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body
    }

    #[test]
    fn the_worked_examples_budgets_are_valid() {
        let monthly = new(base()).unwrap();
        assert_eq!(monthly.amount_units, 100_000_000);
        assert_eq!(
            monthly.period,
            Period::Calendar {
                calendar: CalendarUnit::Month
            }
        );
        let daily = new(with(
            json!({"name": "daily-output", "measure": "tokens", "token_type": "output",
            "period": {"calendar": "day"}, "amount": 1_000_000, "enforcement": "soft"}),
        ))
        .unwrap();
        assert_eq!(daily.amount_units, 1_000_000);
        let session = new(with(
            json!({"name": "session-requests", "scope": "session", "measure": "requests",
            "period": "session", "amount": 5}),
        ))
        .unwrap();
        assert_eq!(session.period, Period::Session(SessionPeriod::Session));
    }

    #[test]
    fn each_wrong_combination_names_its_field() {
        let cases = [
            (json!({"scope": "global"}), "tenant_id"),
            (json!({"tenant_id": null}), "tenant_id"),
            (json!({"scope": "tenant_model"}), "model"),
            (json!({"model": "gpt-4o"}), "model"),
            (json!({"token_type": "input"}), "token_type"),
            (json!({"period": "session"}), "period"),
            (
                json!({"scope": "session", "period": {"calendar": "day"}}),
                "period",
            ),
            (
                json!({"period": {"window_seconds": 0}}),
                "period.window_seconds",
            ),
            (json!({"amount": 100}), "amount"),
            (json!({"measure": "requests", "amount": "100"}), "amount"),
            (
                json!({"measure": "requests", "amount": MAX_COUNT + 1}),
                "amount",
            ),
            (json!({"amount": "1000000000001"}), "amount"),
            (json!({"currency": "USD"}), "currency"),
            (json!({"scope": "global", "tenant_id": null}), "currency"),
            (
                json!({"alert_thresholds": [100, 80]}),
                "alert_thresholds[1]",
            ),
            (json!({"alert_thresholds": [0]}), "alert_thresholds[0]"),
            (json!({"alert_thresholds": [101]}), "alert_thresholds[0]"),
            (
                json!({"alert_thresholds": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]}),
                "alert_thresholds",
            ),
            (json!({"name": "Monthly Cost"}), "name"),
        ];
        for (changes, field) in cases {
            assert_eq!(
                new(with(changes.clone())),
                Err(field.to_owned()),
                "{changes}"
            );
        }
    }

    #[test]
    fn amounts_and_periods_refuse_wrong_shapes() {
        for bad in [json!(-1), json!(1.5), json!(1e30), json!(true)] {
            assert!(
                serde_json::from_value::<Amount>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        for bad in [
            json!("month"),
            json!({"calendar": "year"}),
            json!({"window_seconds": -5}),
            json!({"window_seconds": 60, "calendar": "day"}),
            json!(60),
        ] {
            assert!(
                serde_json::from_value::<Period>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            serde_json::to_value(Period::Session(SessionPeriod::Session)).unwrap(),
            json!("session")
        );
        assert_eq!(
            serde_json::to_value(Period::Window { window_seconds: 60 }).unwrap(),
            json!({"window_seconds": 60})
        );
    }

    #[test]
    fn stored_periods_round_trip() {
        for period in [
            Period::Window {
                window_seconds: 3600,
            },
            Period::Calendar {
                calendar: CalendarUnit::Week,
            },
            Period::Session(SessionPeriod::Session),
        ] {
            assert_eq!(Period::from_stored(&period.to_stored()), Some(period));
        }
    }

    #[test]
    fn enum_names_are_their_serde_names() {
        for scope in [
            Scope::Tenant,
            Scope::TenantModel,
            Scope::Session,
            Scope::Global,
        ] {
            assert_eq!(serde_json::to_value(scope).unwrap(), json!(scope.as_str()));
        }
        for measure in [Measure::Requests, Measure::Tokens, Measure::Cost] {
            assert_eq!(
                serde_json::to_value(measure).unwrap(),
                json!(measure.as_str())
            );
        }
        for enforcement in [Enforcement::Hard, Enforcement::Soft] {
            assert_eq!(
                serde_json::to_value(enforcement).unwrap(),
                json!(enforcement.as_str())
            );
        }
    }
}
