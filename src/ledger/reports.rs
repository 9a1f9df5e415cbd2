//! Reports derived from the ledger: spend and tokens grouped by any of tenant, cost
//! centre, model, token type, session and a calendar day/week/month; and budget status.
//!
//! Everything is integers: tokens and micro-units are summed exactly (checked, never
//! through floating point), so every total is the exact sum of its rows. Currency is
//! always a grouping key, so no row mixes currencies.
//!
//! Calendar buckets are computed here in Rust with jiff, not in SQL, so they are the same
//! on PostgreSQL and SQLite and follow the report's timezone (DST days last 23 or 25
//! hours; weeks are ISO weeks from Monday). The database only pre-sums usage into time
//! slots short enough never to straddle a bucket boundary (see [`Buckets::slot_ms`]).
//!
//! What is counted: usage lines (tokens and their cost) and corrections (grants and
//! adjustments: cost only, with no token type). An entry's cost equals the sum of its lines,
//! so grouping by token type or not gives the same spend. Cost centre is the tenant's
//! current one: the ledger records tenants, not their cost centres at the time.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use super::budgets::{
    Amount, Budget, BudgetFilter, CalendarUnit, Enforcement, Measure, Period, Scope,
};
use super::{Ledger, LedgerError};
use crate::limiter::budget::{SpentQuery, local_time};
use crate::limiter::window::Window;
use crate::rules::Unit;

/// A grouping dimension other than time, in the fixed order columns and sorting use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dimension {
    Tenant,
    CostCentre,
    Model,
    TokenType,
    Session,
}

impl Dimension {
    /// Every dimension, in column order.
    pub const ALL: [Dimension; 5] = [
        Dimension::Tenant,
        Dimension::CostCentre,
        Dimension::Model,
        Dimension::TokenType,
        Dimension::Session,
    ];

    /// The name in `group_by` and the column name.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Tenant => "tenant",
            Dimension::CostCentre => "cost_centre",
            Dimension::Model => "model",
            Dimension::TokenType => "token_type",
            Dimension::Session => "session",
        }
    }

    /// The SQL expression (a fixed string; user input never reaches the query text).
    fn column(self) -> &'static str {
        match self {
            Dimension::Tenant => "e.tenant_id",
            Dimension::CostCentre => "t.cost_centre",
            Dimension::Model => "e.model",
            Dimension::TokenType => "l.token_type",
            Dimension::Session => "e.session_id",
        }
    }
}

/// A calendar bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Day,
    /// ISO weeks, Monday to Sunday.
    Week,
    Month,
}

impl Granularity {
    /// The name in `group_by` and the column name.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Day => "day",
            Granularity::Week => "week",
            Granularity::Month => "month",
        }
    }
}

/// What to report on: usage in `[from_ms, to_ms)`.
#[derive(Debug, Clone)]
pub struct SpendQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    /// The timezone of calendar buckets.
    pub timezone: TimeZone,
    /// Grouping dimensions; order does not matter (columns use [`Dimension::ALL`]'s).
    pub dimensions: Vec<Dimension>,
    pub granularity: Option<Granularity>,
    /// Only this tenant.
    pub tenant_id: Option<String>,
    /// Only this model.
    pub model: Option<String>,
}

/// One group: its keys, currency and sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendRow {
    /// The first day of the bucket (its Monday for weeks), when grouped by time.
    pub period: Option<Date>,
    /// One key per grouped dimension, in [`SpendReport::dimensions`] order; `None` where
    /// the ledger has no value (no session, no cost centre, a correction's token type).
    pub keys: Vec<Option<String>>,
    pub currency: String,
    pub tokens: i64,
    pub cost_micros: i64,
}

/// The sums of one currency over every row of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendTotal {
    pub currency: String,
    pub tokens: i64,
    pub cost_micros: i64,
}

/// A spend report: rows sorted by period, then the keys in column order, then currency
/// (absent keys first), and totals per currency that equal the sums of the rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendReport {
    /// The grouped dimensions, in column order.
    pub dimensions: Vec<Dimension>,
    pub granularity: Option<Granularity>,
    pub rows: Vec<SpendRow>,
    /// By currency.
    pub totals: Vec<SpendTotal>,
}

/// The calendar buckets covering a range, computed once; each usage slot is then placed
/// by a binary search.
#[derive(Debug, Clone)]
pub struct Buckets {
    /// Start of each bucket, milliseconds since the epoch, ascending; the first is at or
    /// before the range's start.
    starts: Vec<i64>,
    /// The local date each bucket starts on.
    dates: Vec<Date>,
}

/// Slot lengths tried, longest first: a day, an hour, a quarter hour, a minute, a second.
const SLOT_CANDIDATES_MS: [i64; 5] = [86_400_000, 3_600_000, 900_000, 60_000, 1_000];

impl Buckets {
    /// The buckets of `granularity` in `timezone` that cover `[from_ms, to_ms)`.
    pub fn new(
        granularity: Granularity,
        timezone: &TimeZone,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Buckets, jiff::Error> {
        let from = Zoned::new(Timestamp::from_millisecond(from_ms)?, timezone.clone());
        let today = from.start_of_day()?;
        let mut start = match granularity {
            Granularity::Day => today,
            Granularity::Week => {
                let back = i64::from(from.weekday().to_monday_zero_offset());
                today.checked_sub(back.days())?.start_of_day()?
            }
            Granularity::Month => from.first_of_month()?.start_of_day()?,
        };
        let mut buckets = Buckets {
            starts: Vec::new(),
            dates: Vec::new(),
        };
        while start.timestamp().as_millisecond() < to_ms {
            buckets.starts.push(start.timestamp().as_millisecond());
            buckets.dates.push(start.date());
            // Step in civil time from the bucket's date, then find that day's start, so a
            // DST change or a missing midnight does not shift later buckets.
            let next_date = match granularity {
                Granularity::Day => start.date().tomorrow()?,
                Granularity::Week => start.date().checked_add(1.week())?,
                Granularity::Month => start.date().checked_add(1.month())?,
            };
            start = next_date.to_zoned(timezone.clone())?.start_of_day()?;
        }
        Ok(buckets)
    }

    /// The longest slot length (of a day, hour, quarter hour, minute, second) that divides
    /// every bucket start, so no slot straddles a boundary: the database may pre-sum usage
    /// by `occurred_at / slot_ms` without changing which bucket anything lands in. Every
    /// timezone offset is a whole number of seconds, so a second always qualifies.
    pub fn slot_ms(&self) -> i64 {
        SLOT_CANDIDATES_MS
            .into_iter()
            .find(|len| self.starts.iter().all(|s| s % len == 0))
            .unwrap_or(1)
    }

    /// The bucket's first day for a time in the covered range.
    pub fn date_of(&self, at_ms: i64) -> Option<Date> {
        let i = self.starts.partition_point(|s| *s <= at_ms);
        i.checked_sub(1).map(|i| self.dates[i])
    }
}

fn overflow() -> LedgerError {
    LedgerError::Database(sqlx::Error::Decode("a report sum exceeds 64 bits".into()))
}

fn bad_time(error: jiff::Error) -> LedgerError {
    LedgerError::Database(sqlx::Error::Decode(
        format!("report time out of range: {error}").into(),
    ))
}

type GroupKey = (Option<Date>, Vec<Option<String>>, String);

impl Ledger {
    /// Spend and tokens of `query`, grouped and sorted, with totals per currency.
    pub async fn spend_report(&self, query: &SpendQuery) -> Result<SpendReport, LedgerError> {
        let dimensions: Vec<Dimension> = Dimension::ALL
            .into_iter()
            .filter(|d| query.dimensions.contains(d))
            .collect();
        let buckets = query
            .granularity
            .map(|g| Buckets::new(g, &query.timezone, query.from_ms, query.to_ms))
            .transpose()
            .map_err(bad_time)?;

        let mut select: Vec<String> = dimensions.iter().map(|d| d.column().to_owned()).collect();
        select.push("e.currency".to_owned());
        if let Some(buckets) = &buckets {
            // A literal from code, not a parameter, so GROUP BY matches it on both databases.
            select.push(format!("e.occurred_at / {}", buckets.slot_ms()));
        }
        let group_by = (1..=select.len())
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        // Usage contributes its lines; a correction has no lines and contributes its own
        // cost. CAST: PostgreSQL sums BIGINT into NUMERIC.
        let sql = format!(
            "SELECT {}, CAST(SUM(COALESCE(l.tokens, 0)) AS BIGINT) AS tokens, \
             CAST(SUM(COALESCE(l.cost_micros, e.cost_micros)) AS BIGINT) AS cost \
             FROM ledger_entries e \
             LEFT JOIN ledger_lines l ON l.entry_id = e.id \
             LEFT JOIN tenants t ON t.id = e.tenant_id \
             WHERE e.occurred_at >= $1 AND e.occurred_at < $2 \
             AND ($3 IS NULL OR e.tenant_id = $3) AND ($4 IS NULL OR e.model = $4) \
             GROUP BY {group_by}",
            select.join(", ")
        );
        let mut groups: BTreeMap<GroupKey, (i64, i64)> = BTreeMap::new();
        let mut rows = sqlx::query(&sql)
            .bind(query.from_ms)
            .bind(query.to_ms)
            .bind(query.tenant_id.clone())
            .bind(query.model.clone())
            .fetch(self.pool());
        while let Some(row) = rows.try_next().await? {
            let mut keys = Vec::with_capacity(dimensions.len());
            for i in 0..dimensions.len() {
                keys.push(row.try_get::<Option<String>, _>(i)?);
            }
            let currency: String = row.try_get(dimensions.len())?;
            let period = match &buckets {
                Some(buckets) => {
                    let slot: i64 = row.try_get(dimensions.len() + 1)?;
                    // A slot that starts before `from` still lies in the first bucket.
                    buckets.date_of((slot * buckets.slot_ms()).max(query.from_ms))
                }
                None => None,
            };
            let tokens: i64 = row.try_get("tokens")?;
            let cost: i64 = row.try_get("cost")?;
            let sums = groups.entry((period, keys, currency)).or_insert((0, 0));
            sums.0 = sums.0.checked_add(tokens).ok_or_else(overflow)?;
            sums.1 = sums.1.checked_add(cost).ok_or_else(overflow)?;
        }
        drop(rows);

        let mut totals: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut report_rows = Vec::with_capacity(groups.len());
        for ((period, keys, currency), (tokens, cost)) in groups {
            let total = totals.entry(currency.clone()).or_insert((0, 0));
            total.0 = total.0.checked_add(tokens).ok_or_else(overflow)?;
            total.1 = total.1.checked_add(cost).ok_or_else(overflow)?;
            report_rows.push(SpendRow {
                period,
                keys,
                currency,
                tokens,
                cost_micros: cost,
            });
        }
        Ok(SpendReport {
            dimensions,
            granularity: query.granularity,
            rows: report_rows,
            totals: totals
                .into_iter()
                .map(|(currency, (tokens, cost_micros))| SpendTotal {
                    currency,
                    tokens,
                    cost_micros,
                })
                .collect(),
        })
    }

    /// The status of every live tenant and tenant-model budget (of `tenant`, or of all
    /// tenants), by tenant, name and id, in the period containing now.
    ///
    /// Session budgets are per session and global ones belong to no tenant: neither is
    /// listed. `spent` is what the ledger has recorded; `reserved` is 0 here, as
    /// reservations live in the counter store: [`BudgetStatus::hold`] fills it in
    /// (the admin API does, from [`super::drift::Counters::reserved`]).
    pub async fn budget_status(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<BudgetStatus>, LedgerError> {
        let now_ms = self.now_ms();
        let budgets = self
            .budgets(&BudgetFilter {
                tenant_id: tenant.map(str::to_owned),
                limit: i64::MAX,
                ..BudgetFilter::default()
            })
            .await?;
        let mut timezones: BTreeMap<String, TimeZone> = BTreeMap::new();
        let mut statuses = Vec::new();
        for budget in budgets {
            let Some(tenant_id) = budget.tenant_id.clone() else {
                continue;
            };
            if !matches!(budget.scope, Scope::Tenant | Scope::TenantModel) {
                continue;
            }
            if !timezones.contains_key(&tenant_id) {
                let tenant = self.tenant(&tenant_id).await?;
                let tz = TimeZone::get(&tenant.timezone).unwrap_or(TimeZone::UTC);
                timezones.insert(tenant_id.clone(), tz);
            }
            let tz = &timezones[&tenant_id];
            let Some((start_ms, end_ms)) = period_bounds(budget.period, now_ms, tz) else {
                continue;
            };
            let spent = self.spent(&budget, &tenant_id, start_ms, end_ms).await?;
            statuses.push(BudgetStatus::new(
                budget,
                tenant_id,
                spent,
                (start_ms, end_ms),
                tz,
            ));
        }
        Ok(statuses)
    }

    /// What the ledger holds against `budget` in `[start_ms, end_ms)`, in its units.
    async fn spent(
        &self,
        budget: &Budget,
        tenant: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<i64, LedgerError> {
        self.spent_for(&SpentQuery {
            tenant: Some(tenant.to_owned()),
            model: (budget.scope == Scope::TenantModel)
                .then(|| budget.model.clone())
                .flatten(),
            session: None,
            measure: budget.measure,
            token_type: budget.token_type.clone(),
            currency: Some(budget.currency.clone().unwrap_or_default()),
            start_ms,
            end_ms,
        })
        .await
    }

    /// What the ledger holds for `query`, in the measure's units: micro-units of cost
    /// (grants and adjustments included), tokens, or usage events. A query without a
    /// tenant sums every tenant (global budgets).
    pub async fn spent_for(&self, query: &SpentQuery) -> Result<i64, LedgerError> {
        const FILTERS: &str = "($1 IS NULL OR e.tenant_id = $1) AND ($2 IS NULL OR e.model = $2) \
             AND ($3 IS NULL OR e.session_id = $3) AND e.occurred_at >= $4 AND e.occurred_at < $5";
        let sql = match query.measure {
            Measure::Cost => format!(
                "SELECT CAST(COALESCE(SUM(e.cost_micros), 0) AS BIGINT) FROM ledger_entries e \
                 WHERE {FILTERS} AND ($6 IS NULL OR e.currency = $6)"
            ),
            Measure::Tokens => format!(
                "SELECT CAST(COALESCE(SUM(l.tokens), 0) AS BIGINT) FROM ledger_entries e \
                 JOIN ledger_lines l ON l.entry_id = e.id WHERE {FILTERS} AND ($6 IS NULL OR l.token_type = $6)"
            ),
            Measure::Requests => format!(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM ledger_entries e \
                 WHERE e.kind = 'usage' AND {FILTERS}"
            ),
        };
        let mut select = sqlx::query_scalar(&sql)
            .bind(query.tenant.clone())
            .bind(query.model.clone())
            .bind(query.session.clone())
            .bind(query.start_ms)
            .bind(query.end_ms);
        select = match query.measure {
            Measure::Cost => select.bind(query.currency.clone()),
            Measure::Tokens => select.bind(query.token_type.clone()),
            Measure::Requests => select,
        };
        let spent: i64 = select.fetch_one(self.pool()).await?;
        Ok(spent)
    }
}

/// The period of `period` containing `now_ms`, in milliseconds: windows aligned to the
/// epoch and calendar periods in `tz`, exactly as the limiter counts them. `None` for the
/// session lifetime, which has no tenant-wide period.
pub fn period_bounds(period: Period, now_ms: i64, tz: &TimeZone) -> Option<(i64, i64)> {
    let now_secs = (now_ms / 1_000).max(0) as u64;
    let (window, length) = match period {
        Period::Window { window_seconds } => (
            Window::containing(now_secs, window_seconds),
            window_seconds.max(1),
        ),
        Period::Calendar { calendar } => {
            let unit = match calendar {
                CalendarUnit::Day => Unit::Day,
                CalendarUnit::Week => Unit::Week,
                CalendarUnit::Month => Unit::Month,
            };
            let window = Window::calendar(now_secs, unit, tz);
            (window, now_secs + window.until_reset - window.start)
        }
        Period::Session(_) => return None,
    };
    let start = window.start as i64 * 1_000;
    Some((start, start + length as i64 * 1_000))
}

/// A budget's standing in its current period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BudgetStatus {
    pub tenant_id: String,
    pub budget_id: String,
    pub name: String,
    pub scope: Scope,
    pub model: Option<String>,
    pub measure: Measure,
    pub token_type: Option<String>,
    pub enforcement: Enforcement,
    /// The currency of a cost budget.
    pub currency: Option<String>,
    /// The limit in force now (overrides included): a count, or a decimal string for cost.
    pub limit: Amount,
    pub spent: Amount,
    /// Held by reservations of requests in flight (from the counter store).
    pub reserved: Amount,
    /// `limit - spent - reserved`, never below zero.
    pub remaining: Amount,
    /// The current period, RFC 3339 in the tenant's timezone.
    pub period_start: String,
    /// When the period ends and the budget starts again from zero.
    pub period_end: String,
    /// The same figures in storage units (counts or micro-units), for CSV and sums.
    #[serde(skip)]
    pub units: StatusUnits,
}

/// A budget status's figures in storage units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusUnits {
    pub limit: i64,
    pub spent: i64,
    pub reserved: i64,
    pub remaining: i64,
}

impl BudgetStatus {
    /// Sets what reservations hold in the period (storage units), and `remaining` with it.
    pub fn hold(&mut self, reserved: u64) {
        let reserved = i64::try_from(reserved).unwrap_or(i64::MAX);
        let u = &mut self.units;
        u.reserved = reserved;
        u.remaining = u
            .limit
            .saturating_sub(u.spent)
            .saturating_sub(reserved)
            .max(0);
        self.reserved = Amount::from_units(self.measure, u.reserved);
        self.remaining = Amount::from_units(self.measure, u.remaining);
    }

    fn new(
        budget: Budget,
        tenant_id: String,
        spent: i64,
        (start_ms, end_ms): (i64, i64),
        tz: &TimeZone,
    ) -> BudgetStatus {
        let limit = budget.effective_units();
        let show = |units| Amount::from_units(budget.measure, units);
        let time = |ms: i64| {
            u64::try_from(ms / 1_000)
                .ok()
                .and_then(|secs| local_time(tz, secs))
                .unwrap_or_default()
        };
        let mut status = BudgetStatus {
            tenant_id,
            budget_id: budget.id.clone(),
            name: budget.name.clone(),
            scope: budget.scope,
            model: budget.model.clone(),
            measure: budget.measure,
            token_type: budget.token_type.clone(),
            enforcement: budget.enforcement,
            currency: budget.currency.clone(),
            limit: show(limit),
            spent: show(spent),
            reserved: show(0),
            remaining: show(0),
            period_start: time(start_ms),
            period_end: time(end_ms),
            units: StatusUnits {
                limit,
                spent,
                ..StatusUnits::default()
            },
        };
        // Nothing reserved until the counters say otherwise.
        status.hold(0);
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn date(text: &str) -> Date {
        text.parse().unwrap()
    }

    #[test]
    fn utc_days_are_whole_days_so_the_database_may_sum_by_day() {
        let b = Buckets::new(
            Granularity::Day,
            &TimeZone::UTC,
            ms("2026-11-01T00:00:00Z"),
            ms("2026-11-04T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(
            b.dates,
            vec![date("2026-11-01"), date("2026-11-02"), date("2026-11-03")]
        );
        assert_eq!(b.slot_ms(), 86_400_000);
        assert_eq!(
            b.date_of(ms("2026-11-02T23:59:59.999Z")),
            Some(date("2026-11-02"))
        );
    }

    #[test]
    fn a_berlin_day_across_the_dst_change_lasts_25_hours() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let b = Buckets::new(
            Granularity::Day,
            &berlin,
            ms("2026-10-24T22:00:00Z"),
            ms("2026-10-26T23:00:00Z"),
        )
        .unwrap();
        assert_eq!(
            b.starts,
            vec![ms("2026-10-24T22:00:00Z"), ms("2026-10-25T23:00:00Z")]
        );
        assert_eq!(b.starts[1] - b.starts[0], 25 * 3_600_000);
        // Local midnights are whole hours in UTC: hourly slots never straddle them.
        assert_eq!(b.slot_ms(), 3_600_000);
        assert_eq!(
            b.date_of(ms("2026-10-25T22:59:59Z")),
            Some(date("2026-10-25"))
        );
        assert_eq!(
            b.date_of(ms("2026-10-25T23:00:00Z")),
            Some(date("2026-10-26"))
        );
    }

    #[test]
    fn half_hour_offsets_get_quarter_hour_slots() {
        let kolkata = TimeZone::get("Asia/Kolkata").unwrap();
        let b = Buckets::new(
            Granularity::Day,
            &kolkata,
            ms("2026-11-01T00:00:00Z"),
            ms("2026-11-03T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(b.slot_ms(), 900_000);
        assert_eq!(
            b.date_of(ms("2026-11-01T18:29:59Z")),
            Some(date("2026-11-01"))
        );
        assert_eq!(
            b.date_of(ms("2026-11-01T18:30:00Z")),
            Some(date("2026-11-02"))
        );
    }

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first() {
        // 2026-11-22 is a Sunday.
        let w = Buckets::new(
            Granularity::Week,
            &TimeZone::UTC,
            ms("2026-11-22T12:00:00Z"),
            ms("2026-11-24T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(w.dates, vec![date("2026-11-16"), date("2026-11-23")]);
        let m = Buckets::new(
            Granularity::Month,
            &TimeZone::UTC,
            ms("2026-11-15T00:00:00Z"),
            ms("2027-01-01T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(m.dates, vec![date("2026-11-01"), date("2026-12-01")]);
    }

    #[test]
    fn a_calendar_month_budget_ends_at_local_midnight() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let period = Period::Calendar {
            calendar: CalendarUnit::Month,
        };
        let (start, end) = period_bounds(period, ms("2026-11-22T00:00:00Z"), &berlin).unwrap();
        assert_eq!(start, ms("2026-10-31T23:00:00Z"));
        assert_eq!(end, ms("2026-11-30T23:00:00Z"));
        let window = Period::Window {
            window_seconds: 3_600,
        };
        assert_eq!(
            period_bounds(window, ms("2026-11-22T00:30:00Z"), &berlin),
            Some((ms("2026-11-22T00:00:00Z"), ms("2026-11-22T01:00:00Z")))
        );
    }
}
