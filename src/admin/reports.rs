//! `/v1/reports`: spend and budget status for finance tooling, and the drift of the
//! budget counters from the ledger for operators, as JSON or RFC 4180 CSV; and
//! `/v1/adjustments`: corrections to the ledger (admins).
//!
//! Readers: admin and finance see everything; a tenant token sees only its own tenant
//! (the filter is forced, another tenant answers 404); approvers may not read reports.
//!
//! Amounts are exact decimal strings with six places (`"0.008850"`), tokens are integers;
//! nothing passes through floating point. JSON carries the totals per currency (over all
//! rows, not just the page); CSV carries data rows only, never a totals row, so every line
//! after the header is a group and a spreadsheet sum of a column is the total. CSV is not
//! paginated: it holds every row.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, Page, Query, default_limit};
use super::{AdminState, List};
use crate::ledger::drift::BudgetDrift;
use crate::ledger::prices::{MAX_TIME_MS, validate_model};
use crate::ledger::reports::{BudgetStatus, Dimension, Granularity, SpendQuery, SpendReport};
use crate::ledger::tenants::{Invalid, validate_timezone};
use crate::ledger::tokens::Role;
use crate::ledger::usage::{Adjustment, NewAdjustment};
use crate::money::format_micros;

/// Who may read reports (admins always may).
const READERS: &[Role] = &[Role::Finance, Role::Tenant];

/// The longest range of one spend report.
pub const MAX_RANGE_DAYS: i64 = 400;

/// Most `group_by` dimensions: the five keys and one calendar granularity.
pub const MAX_DIMENSIONS: usize = 6;

/// The report and adjustment routes.
pub fn router() -> Router<AdminState> {
    Router::new()
        .route("/reports/spend", get(spend_report))
        .route("/reports/budgets", get(budget_report))
        .route("/reports/drift", get(drift_report))
        .route("/adjustments", post(create_adjustment))
}

/// How a report is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Csv,
}

/// Parameters of the spend report.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SpendParams {
    /// Start, inclusive: an ISO date (`2026-11-01`, midnight in `timezone`) or an RFC 3339
    /// timestamp (`2026-11-01T00:00:00Z`; write `+` in an offset as `%2B`). Required.
    pub from: Option<String>,
    /// End, exclusive, in the same forms; at most 400 days after `from`. Required.
    pub to: Option<String>,
    /// Comma-separated: any of `tenant`, `cost_centre`, `model`, `token_type`, `session`,
    /// and at most one of `day`, `week` (ISO, from Monday), `month`. Rows are always also
    /// grouped by currency. None: one row per currency.
    pub group_by: Option<String>,
    /// Only this tenant (a tenant token is always limited to its own).
    pub tenant_id: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// IANA timezone of dates and day/week/month buckets (default UTC).
    pub timezone: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<Format>,
    /// JSON rows per page, 1-500 (default 50). Not with CSV, which holds every row.
    pub limit: Option<i64>,
    /// JSON rows to skip.
    pub offset: Option<i64>,
}

/// The sums of one currency over every row of the report.
#[derive(Debug, Serialize, ToSchema)]
pub struct SpendTotalBody {
    pub currency: String,
    pub tokens: i64,
    /// Exact decimal, six places.
    pub spend: String,
}

/// A spend report page.
#[derive(Debug, Serialize, ToSchema)]
pub struct SpendReportBody {
    /// The range, as RFC 3339 UTC timestamps: `[from, to)`.
    pub from: String,
    pub to: String,
    pub timezone: String,
    /// The grouping, in column order.
    pub group_by: Vec<String>,
    /// The keys of each item, in order: the granularity (`day`/`week`/`month`, an ISO date
    /// of the bucket's first day) if any, the grouped dimensions, then `currency`, `tokens`
    /// (integer) and `spend` (exact decimal string). A key the ledger has no value for
    /// (no session, no cost centre, a correction's token type) is `null`.
    pub columns: Vec<String>,
    /// Rows sorted by the columns in order (nulls first).
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Map<String, Value>>,
    /// Per currency, over every row (all pages); equal to the sums of the rows.
    pub totals: Vec<SpendTotalBody>,
    /// Rows in the whole report.
    pub row_count: usize,
    /// The `offset` of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<i64>,
}

/// Spend (exact decimals) and tokens over `[from, to)`, grouped by any of tenant, cost
/// centre, model, token type, session and a calendar day/week/month, always by currency.
/// JSON is paginated and carries totals; CSV (RFC 4180, header row, stable column order)
/// carries every data row and no totals row.
#[utoipa::path(get, path = "/v1/reports/spend", tag = "reports", params(SpendParams),
    responses(
        (status = 200, body = SpendReportBody, description = "JSON, or text/csv with `format=csv`"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn spend_report(
    State(state): State<AdminState>,
    caller: Caller,
    params: Result<Query<SpendParams>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(READERS)?;
    let Query(params) = params?;
    let tenant_id = caller.tenant_filter(params.tenant_id.as_deref())?;
    let timezone_name = params.timezone.clone().unwrap_or_else(|| "UTC".to_owned());
    validate_timezone("timezone", &timezone_name)?;
    let timezone = TimeZone::get(&timezone_name)
        .map_err(|_| Invalid::new("timezone", "is not an IANA timezone"))?;
    let from = parse_instant("from", params.from.as_deref(), &timezone)?;
    let to = parse_instant("to", params.to.as_deref(), &timezone)?;
    if to <= from {
        return Err(Invalid::new("to", "must be after from").into());
    }
    if to - from > MAX_RANGE_DAYS * 86_400_000 {
        return Err(Invalid::new(
            "to",
            format!("the range may span at most {MAX_RANGE_DAYS} days"),
        )
        .into());
    }
    let (dimensions, granularity) = parse_group_by(params.group_by.as_deref())?;
    if let Some(model) = &params.model {
        validate_model("model", model)?;
    }
    let page = page_param(params.format, params.limit, params.offset)?;
    let query = SpendQuery {
        from_ms: from,
        to_ms: to,
        timezone,
        dimensions,
        granularity,
        tenant_id,
        model: params.model,
    };
    let report = state.ledger.spend_report(&query).await?;
    Ok(match page {
        None => csv_response("spend.csv", spend_csv(&report)?),
        Some(page) => Json(spend_json(&report, from, to, timezone_name, page)).into_response(),
    })
}

/// The JSON page a report asks for; `None` for CSV, which holds every row and so takes no
/// limit or offset.
fn page_param(
    format: Option<Format>,
    limit: Option<i64>,
    offset: Option<i64>,
) -> Result<Option<Page>, ApiError> {
    if format.unwrap_or_default() == Format::Json {
        let page = Page {
            limit: limit.unwrap_or_else(default_limit),
            offset: offset.unwrap_or(0),
        };
        return Ok(Some(page.validate()?));
    }
    let field = match (limit, offset) {
        (None, None) => return Ok(None),
        (Some(_), _) => "limit",
        (None, Some(_)) => "offset",
    };
    Err(Invalid::new(
        field,
        "a CSV report holds every row; limit and offset are for JSON",
    )
    .into())
}

/// One JSON page of `rows` (every row of the report).
fn json_page<T: Serialize>(rows: Vec<T>, page: Page) -> Response {
    let items = rows
        .into_iter()
        .skip(page.offset as usize)
        .take(page.limit as usize + 1)
        .collect();
    Json(List::page(items, page)).into_response()
}

/// Parses `from`/`to`: an ISO date is midnight in `timezone`; a timestamp needs an offset.
fn parse_instant(field: &str, text: Option<&str>, timezone: &TimeZone) -> Result<i64, Invalid> {
    let text = text.ok_or_else(|| {
        Invalid::new(
            field,
            "is required (an ISO date like 2026-11-01 or an RFC 3339 timestamp)",
        )
    })?;
    // Only a bare date is a date: jiff would also read a datetime without offset as one.
    let date = (text.len() == 10)
        .then(|| text.parse::<Date>().ok())
        .flatten();
    let ms = if let Some(date) = date {
        date.to_zoned(timezone.clone())
            .and_then(|z| z.start_of_day())
            .map(|z| z.timestamp().as_millisecond())
            .map_err(|e| {
                Invalid::new(
                    field,
                    format!("'{text}' has no midnight in the timezone: {e}"),
                )
            })?
    } else {
        match text.parse::<Timestamp>() {
            Ok(at) => at.as_millisecond(),
            Err(_) => {
                let hint = if text.contains(' ') {
                    " (write '+' in an offset as %2B)"
                } else {
                    ""
                };
                return Err(Invalid::new(
                    field,
                    format!(
                        "'{text}' is not an ISO date (2026-11-01) or an RFC 3339 timestamp (2026-11-01T00:00:00Z){hint}"
                    ),
                ));
            }
        }
    };
    if !(0..=MAX_TIME_MS).contains(&ms) {
        return Err(Invalid::new(
            field,
            "must be between 1970-01-01 and 9999-12-31",
        ));
    }
    Ok(ms)
}

/// Parses `group_by`: distinct dimensions and at most one granularity.
fn parse_group_by(text: Option<&str>) -> Result<(Vec<Dimension>, Option<Granularity>), Invalid> {
    let field = "group_by";
    let Some(text) = text else {
        return Ok((Vec::new(), None));
    };
    let items: Vec<&str> = text.split(',').collect();
    if items.len() > MAX_DIMENSIONS {
        return Err(Invalid::new(
            field,
            format!("at most {MAX_DIMENSIONS} dimensions"),
        ));
    }
    let mut dimensions = Vec::new();
    let mut granularity = None;
    for item in items {
        let known = ["day", "week", "month"].iter().position(|g| *g == item);
        if let Some(i) = known {
            if granularity.is_some() {
                return Err(Invalid::new(field, "at most one of day, week and month"));
            }
            granularity = Some([Granularity::Day, Granularity::Week, Granularity::Month][i]);
            continue;
        }
        let Some(dimension) = Dimension::ALL.into_iter().find(|d| d.as_str() == item) else {
            return Err(Invalid::new(
                field,
                format!(
                    "unknown dimension '{item}'; use tenant, cost_centre, model, token_type, session, day, week or month"
                ),
            ));
        };
        if dimensions.contains(&dimension) {
            return Err(Invalid::new(field, format!("'{item}' is given twice")));
        }
        dimensions.push(dimension);
    }
    Ok((dimensions, granularity))
}

/// The report's columns, in order.
fn spend_columns(report: &SpendReport) -> Vec<&'static str> {
    let mut columns: Vec<&'static str> = report.granularity.iter().map(|g| g.as_str()).collect();
    columns.extend(report.dimensions.iter().map(|d| d.as_str()));
    columns.extend(["currency", "tokens", "spend"]);
    columns
}

fn rfc3339(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn spend_json(
    report: &SpendReport,
    from: i64,
    to: i64,
    timezone: String,
    page: Page,
) -> SpendReportBody {
    let columns = spend_columns(report);
    let mut items = Vec::new();
    for row in report
        .rows
        .iter()
        .skip(page.offset as usize)
        .take(page.limit as usize)
    {
        let mut item = Map::new();
        if let (Some(granularity), Some(period)) = (report.granularity, row.period) {
            item.insert(
                granularity.as_str().to_owned(),
                Value::String(period.to_string()),
            );
        }
        for (dimension, key) in report.dimensions.iter().zip(&row.keys) {
            item.insert(
                dimension.as_str().to_owned(),
                key.clone().map_or(Value::Null, Value::String),
            );
        }
        item.insert("currency".to_owned(), Value::String(row.currency.clone()));
        item.insert("tokens".to_owned(), Value::from(row.tokens));
        item.insert(
            "spend".to_owned(),
            Value::String(format_micros(row.cost_micros)),
        );
        items.push(item);
    }
    let shown_to = page.offset.saturating_add(page.limit);
    SpendReportBody {
        from: rfc3339(from),
        to: rfc3339(to),
        timezone,
        group_by: columns[..columns.len() - 3]
            .iter()
            .map(|c| (*c).to_owned())
            .collect(),
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        items,
        totals: report
            .totals
            .iter()
            .map(|t| SpendTotalBody {
                currency: t.currency.clone(),
                tokens: t.tokens,
                spend: format_micros(t.cost_micros),
            })
            .collect(),
        row_count: report.rows.len(),
        next_offset: ((report.rows.len() as i64) > shown_to).then_some(shown_to),
    }
}

fn spend_csv(report: &SpendReport) -> Result<Vec<u8>, ApiError> {
    let records = report.rows.iter().map(|row| {
        let mut record: Vec<String> = row.period.iter().map(|d| d.to_string()).collect();
        record.extend(
            row.keys
                .iter()
                .map(|k| k.as_deref().map(neutralize).unwrap_or_default()),
        );
        record.push(row.currency.clone());
        record.push(row.tokens.to_string());
        record.push(format_micros(row.cost_micros));
        record
    });
    csv_bytes(&spend_columns(report), records)
}

/// Text a spreadsheet would run as a formula (session ids and token types come from the
/// caller's requests) is written with a leading `'`, as OWASP advises. Numbers and amounts
/// are ours and written as they are.
fn neutralize(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

/// `header` and `records` as RFC 4180: CRLF line ends, fields quoted only when they need it.
fn csv_bytes<R>(header: &[&str], records: impl IntoIterator<Item = R>) -> Result<Vec<u8>, ApiError>
where
    R: IntoIterator,
    R::Item: AsRef<[u8]>,
{
    fn failed(error: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(format!("cannot write CSV: {error}"))
    }
    let mut out = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    out.write_record(header).map_err(failed)?;
    for record in records {
        out.write_record(record).map_err(failed)?;
    }
    out.into_inner().map_err(failed)
}

fn csv_response(filename: &str, body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// Parameters of the budget report.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BudgetParams {
    /// Only this tenant (a tenant token is always limited to its own).
    pub tenant_id: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<Format>,
    /// JSON items per page, 1-500 (default 50). Not with CSV, which holds every row.
    pub limit: Option<i64>,
    /// JSON items to skip.
    pub offset: Option<i64>,
}

/// The CSV columns of the budget report, in order.
const BUDGET_COLUMNS: [&str; 15] = [
    "tenant_id",
    "budget_id",
    "name",
    "scope",
    "model",
    "measure",
    "token_type",
    "enforcement",
    "currency",
    "limit",
    "spent",
    "reserved",
    "remaining",
    "period_start",
    "period_end",
];

/// The status of each live tenant and tenant-model budget in its current period: limit
/// (overrides included), spent (from the ledger), reserved (by requests in flight, from
/// the counter store), remaining (`limit - spent - reserved`, never below zero) and when
/// the period ends; by tenant, name and id.
#[utoipa::path(get, path = "/v1/reports/budgets", tag = "reports", params(BudgetParams),
    responses(
        (status = 200, body = List<BudgetStatus>, description = "JSON, or text/csv with `format=csv`"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn budget_report(
    State(state): State<AdminState>,
    caller: Caller,
    params: Result<Query<BudgetParams>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(READERS)?;
    let Query(params) = params?;
    let tenant_id = caller.tenant_filter(params.tenant_id.as_deref())?;
    let page = page_param(params.format, params.limit, params.offset)?;
    let mut statuses = state.ledger.budget_status(tenant_id.as_deref()).await?;
    let held = state
        .counters
        .reserved(tenant_id.as_deref(), state.ledger.now_ms())
        .await?;
    for status in &mut statuses {
        if let Some(&reserved) = held.get(&status.budget_id) {
            status.hold(reserved);
        }
    }
    Ok(match page {
        None => csv_response("budgets.csv", budget_csv(&statuses)?),
        Some(page) => json_page(statuses, page),
    })
}

fn budget_csv(statuses: &[BudgetStatus]) -> Result<Vec<u8>, ApiError> {
    let records = statuses.iter().map(|s| {
        [
            s.tenant_id.clone(),
            s.budget_id.clone(),
            s.name.clone(),
            s.scope.as_str().to_owned(),
            s.model.clone().unwrap_or_default(),
            s.measure.as_str().to_owned(),
            s.token_type.as_deref().map(neutralize).unwrap_or_default(),
            s.enforcement.as_str().to_owned(),
            s.currency.clone().unwrap_or_default(),
            s.limit.to_string(),
            s.spent.to_string(),
            s.reserved.to_string(),
            s.remaining.to_string(),
            s.period_start.clone(),
            s.period_end.clone(),
        ]
    });
    csv_bytes(&BUDGET_COLUMNS, records)
}

/// The CSV columns of the drift report, in order.
const DRIFT_COLUMNS: [&str; 14] = [
    "tenant_id",
    "budget_id",
    "name",
    "scope",
    "model",
    "measure",
    "token_type",
    "currency",
    "period_start",
    "period_end",
    "counter",
    "reserved",
    "ledger",
    "drift",
];

/// The budget counters against the ledger: for each live budget charged with settled
/// usage (tokens, cost, and requests but a session's) with a windowed or calendar period
/// (tenant, tenant-model and global scopes; global ones only without a tenant filter), in
/// its current period: the counter (settled usage the
/// counter store holds), reserved, the ledger's figure (after moving the usage outbox into
/// the ledger) and `drift = counter - ledger`, signed; as exact decimals or counts, and in
/// storage units under `units`. Zero everywhere when the counters agree with the ledger.
/// Nothing is rebuilt: a period whose counters were lost reads 0 until its next decision.
#[utoipa::path(get, path = "/v1/reports/drift", tag = "reports", params(BudgetParams),
    responses(
        (status = 200, body = List<BudgetDrift>, description = "JSON, or text/csv with `format=csv`"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn drift_report(
    State(state): State<AdminState>,
    caller: Caller,
    params: Result<Query<BudgetParams>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(READERS)?;
    let Query(params) = params?;
    let tenant_id = caller.tenant_filter(params.tenant_id.as_deref())?;
    let page = page_param(params.format, params.limit, params.offset)?;
    let rows = state
        .counters
        .drift(&state.ledger, tenant_id.as_deref(), state.ledger.now_ms())
        .await?;
    Ok(match page {
        None => csv_response("drift.csv", drift_csv(&rows)?),
        Some(page) => json_page(rows, page),
    })
}

fn drift_csv(rows: &[BudgetDrift]) -> Result<Vec<u8>, ApiError> {
    let records = rows.iter().map(|r| {
        [
            r.tenant_id.clone().unwrap_or_default(),
            r.budget_id.clone(),
            r.name.clone(),
            r.scope.as_str().to_owned(),
            r.model.clone().unwrap_or_default(),
            r.measure.as_str().to_owned(),
            r.token_type.as_deref().map(neutralize).unwrap_or_default(),
            r.currency.clone().unwrap_or_default(),
            r.period_start.clone(),
            r.period_end.clone(),
            r.counter.clone(),
            r.reserved.clone(),
            r.ledger.clone(),
            r.drift.clone(),
        ]
    });
    csv_bytes(&DRIFT_COLUMNS, records)
}

/// Records a correction: a `grant` (a credit, negative amount) or an `adjustment` (either
/// sign) in the tenant's currency, as a new ledger entry with its audit entry. The ledger
/// is append-only: this is the only way to change what a tenant has spent.
#[utoipa::path(post, path = "/v1/adjustments", tag = "reports", request_body = NewAdjustment,
    responses((status = 201, body = Adjustment), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_adjustment(
    State(state): State<AdminState>,
    caller: Caller,
    new: Result<Body<NewAdjustment>, ApiError>,
) -> Result<(StatusCode, Json<Adjustment>), ApiError> {
    caller.require(&[])?;
    let Body(new) = new?;
    let micros = new.validate()?;
    Ok((
        StatusCode::CREATED,
        Json(
            state
                .ledger
                .record_adjustment(caller.actor(), &new, micros)
                .await?,
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_by_takes_known_distinct_dimensions_and_one_granularity() {
        let (dims, g) = parse_group_by(Some("model,tenant,week")).unwrap();
        assert_eq!(dims, vec![Dimension::Model, Dimension::Tenant]);
        assert_eq!(g, Some(Granularity::Week));
        for bad in [
            "",
            "tenant,",
            "planet",
            "tenant,tenant",
            "day,month",
            "tenant,cost_centre,model,token_type,session,day,week",
        ] {
            assert_eq!(
                parse_group_by(Some(bad)).unwrap_err().field,
                "group_by",
                "{bad}"
            );
        }
    }

    #[test]
    fn dates_are_local_midnights_and_timestamps_need_an_offset() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let utc = TimeZone::UTC;
        assert_eq!(
            parse_instant("from", Some("2026-11-01"), &utc),
            Ok(1_793_491_200_000)
        );
        assert_eq!(
            parse_instant("from", Some("2026-11-01"), &berlin),
            Ok(1_793_491_200_000 - 3_600_000)
        );
        assert_eq!(
            parse_instant("to", Some("2026-11-01T01:00:00+01:00"), &utc),
            Ok(1_793_491_200_000)
        );
        for bad in [
            None,
            Some("2026-11-31"),
            Some("2026-11-01T00:00:00"),
            Some("yesterday"),
            Some("1700-01-01"),
        ] {
            assert_eq!(
                parse_instant("to", bad, &utc).unwrap_err().field,
                "to",
                "{bad:?}"
            );
        }
        assert!(
            parse_instant("to", Some("2026-11-01T01:00:00 01:00"), &utc)
                .unwrap_err()
                .message
                .contains("%2B")
        );
    }

    #[test]
    fn formula_like_text_is_neutralized_for_spreadsheets() {
        assert_eq!(neutralize("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(neutralize("s-123"), "s-123");
        assert_eq!(neutralize("-s"), "'-s");
    }
}
