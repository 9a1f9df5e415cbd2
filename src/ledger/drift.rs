//! Drift: the budget counters in the counter store against the ledger, per budget, in the
//! current period. The ledger is the source of truth; the counters are what the limiter
//! decides on. `GET /v1/reports/drift` and `tollgate reconcile` show the difference.
//!
//! What is compared: every live budget the limiter charges with settled usage
//! ([`BudgetPolicy::measures_spend`]: tokens, cost, and request budgets but a session's)
//! with a windowed or calendar period, of the tenant, tenant-model and global scopes, in
//! the current policy snapshot. Session budgets (and session-long periods) count each
//! session apart and are not rebuilt from the ledger, so they are skipped.
//!
//! How: the keys come from [`plan_budget`], the limiter's own layout. One
//! [`BudgetOp::Check`] call per tenant (and one for the global budgets) reads every
//! counter with `markers` left empty, so a lost period reads 0 and is not rebuilt (the
//! limiter rebuilds it before its next decision there). Then the outbox is drained into
//! the ledger ([`LedgerWriter::drain`], as a rebuild does) and the ledger's figure is read
//! with the query a rebuild would use ([`SpentQuery::of`]). `drift = counter - ledger`:
//! positive when the counters hold more than the ledger (the limiter is stricter than the
//! books), negative when less (a correction recorded since the period was built, or lost
//! counters not yet rebuilt). The ledger's figure is signed: grants can take it below 0.
//!
//! Not a snapshot: a settlement between the read of a tenant's counters and the read of
//! its ledger figures shows as drift for that one run. An alert should ask twice.
//!
//! Global budgets are counted across every tenant and reported once, without a tenant;
//! their periods are in UTC, as the limiter counts them. Their keys do not depend on a
//! tenant, but a planned line borrows one: with no tenant in the policy they are skipped
//! (nothing can have charged them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use serde::Serialize;
use utoipa::ToSchema;

use super::budgets::{Measure, Scope};
use super::writer::{LedgerWriter, WriterError};
use super::{Ledger, LedgerError};
use crate::limiter::budget::{
    Layout, Planned, SpentQuery, counts_per_session, display_amount, local_time, plan_budget,
};
use crate::policy::{BudgetPolicy, CurrentPolicy, Policy, TenantPolicy};
use crate::store::budget::{BudgetCall, BudgetOp, BudgetReply, namespace};
use crate::store::{CounterStore, Store, StoreError};

/// Longest wait for one read of the counter store (an admin request, not a decision).
pub const STORE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What reading the counters needs beside the ledger: the store and key namespace the
/// limiter uses, the policy it follows, and the writer that completes the ledger.
#[derive(Clone)]
pub struct Counters {
    pub store: Store,
    pub policy: CurrentPolicy,
    pub writer: Arc<LedgerWriter>,
    /// The budget key namespace, from the limiter's key prefix.
    namespace: String,
}

/// Why a drift report or a counter read failed.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Writer(#[from] WriterError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// One budget's counters against the ledger in its current period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BudgetDrift {
    /// Absent for a global budget.
    pub tenant_id: Option<String>,
    pub budget_id: String,
    pub name: String,
    pub scope: Scope,
    pub model: Option<String>,
    pub measure: Measure,
    pub token_type: Option<String>,
    /// The currency of a cost budget.
    pub currency: Option<String>,
    /// The current period, RFC 3339 in the tenant's timezone (UTC for a global budget).
    pub period_start: String,
    pub period_end: String,
    /// Settled usage the counter store holds for the period: a count, or an exact
    /// decimal of money.
    pub counter: String,
    /// What reservations of requests in flight hold in the period.
    pub reserved: String,
    /// Settled usage the ledger holds for the period (corrections included).
    pub ledger: String,
    /// `counter - ledger`, signed.
    pub drift: String,
    /// The same four figures in storage units (counts or micro-units).
    pub units: DriftUnits,
}

/// A drift row's figures in storage units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct DriftUnits {
    pub counter: i64,
    pub reserved: i64,
    pub ledger: i64,
    pub drift: i64,
}

impl BudgetDrift {
    /// Whether the counter and the ledger disagree.
    pub fn drifts(&self) -> bool {
        self.units.drift != 0
    }
}

/// One Check call's lines: a tenant's budgets, or the global ones (`tenant: None`).
struct Group<'p> {
    tenant: Option<&'p TenantPolicy>,
    planned: Vec<Planned<'p>>,
}

/// Lays out the current period of every compared budget of every tenant (of `only` if
/// given), one group per tenant, then with `global` the global group.
fn groups<'p>(
    policy: &'p Policy,
    ns: &str,
    only: Option<&str>,
    global: bool,
    now_secs: u64,
) -> Vec<Group<'p>> {
    let layout = Layout {
        ns,
        now_secs,
        session_idle_secs: 0,
    };
    let compared = |b: &&BudgetPolicy| !counts_per_session(b);
    let mut groups = Vec::new();
    let tenants = policy
        .tenants()
        .filter(|t| only.is_none_or(|id| t.id == id));
    for tenant in tenants {
        let planned = tenant
            .spend_budgets()
            .iter()
            .filter(compared)
            .map(|b| plan_budget(&layout, b, tenant, &tenant.timezone, None, 0))
            .collect();
        groups.push(Group {
            tenant: Some(tenant),
            planned,
        });
    }
    // Global lines borrow a tenant: any will do, their keys do not depend on it.
    if global && let Some(anchor) = policy.tenants().next() {
        let planned = policy
            .global_spend_budgets()
            .iter()
            .filter(compared)
            .map(|b| plan_budget(&layout, b, anchor, &TimeZone::UTC, None, 0))
            .collect();
        groups.push(Group {
            tenant: None,
            planned,
        });
    }
    groups.retain(|g| !g.planned.is_empty());
    groups
}

impl Counters {
    /// The counters as the limiter keys them: in `store` under `key_prefix` (setting
    /// `key_prefix`), for the budgets of `policy`; `writer` completes the ledger.
    pub fn new(
        store: Store,
        policy: CurrentPolicy,
        writer: Arc<LedgerWriter>,
        key_prefix: &str,
    ) -> Counters {
        Counters {
            store,
            policy,
            writer,
            namespace: namespace(key_prefix),
        }
    }

    /// Reads a group's counters: one Check, no markers, so nothing is rebuilt.
    async fn check(&self, group: &Group<'_>, now_ms: i64) -> Result<BudgetReply, StoreError> {
        let call = BudgetCall {
            namespace: self.namespace.clone(),
            markers: Vec::new(),
            lines: group.planned.iter().map(|p| p.line.clone()).collect(),
            op: BudgetOp::Check,
            now_ms: u64::try_from(now_ms).unwrap_or(0),
        };
        tokio::time::timeout(STORE_READ_TIMEOUT, self.store.budget(&call))
            .await
            .unwrap_or(Err(StoreError::Timeout(STORE_READ_TIMEOUT)))
    }

    /// What reservations hold now on every compared tenant and tenant-model budget (of
    /// `tenant` if given), by budget id. Global budgets are not read.
    pub async fn reserved(
        &self,
        tenant: Option<&str>,
        now_ms: i64,
    ) -> Result<HashMap<String, u64>, DriftError> {
        let policy = self.policy.load_full();
        let mut held = HashMap::new();
        for group in groups(&policy, &self.namespace, tenant, false, now_secs(now_ms)) {
            let reply = self.check(&group, now_ms).await?;
            held.extend(
                group
                    .planned
                    .iter()
                    .zip(&reply.reserved)
                    .map(|(p, r)| (p.budget.id.clone(), *r)),
            );
        }
        Ok(held)
    }

    /// The drift of every compared budget (of `tenant` if given) in its period containing
    /// `now_ms`: by tenant, name and id, global budgets last.
    pub async fn drift(
        &self,
        ledger: &Ledger,
        tenant: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<BudgetDrift>, DriftError> {
        let policy = self.policy.load_full();
        let now_secs = now_secs(now_ms);
        let mut rows = Vec::new();
        // A tenant-scoped reader sees no global budget.
        let global = tenant.is_none();
        for group in groups(&policy, &self.namespace, tenant, global, now_secs) {
            let reply = self.check(&group, now_ms).await?;
            // Settled events still in the outbox are in the counters: into the ledger first.
            self.writer.drain().await?;
            for (i, p) in group.planned.iter().enumerate() {
                let Some(query) = SpentQuery::of(p, None) else {
                    continue;
                };
                let spent = ledger.spent_for(&query).await?;
                rows.push(row(
                    p,
                    group.tenant,
                    reply.used[i],
                    reply.reserved[i],
                    spent,
                    now_secs,
                ));
            }
        }
        rows.sort_by(|a, b| {
            (a.tenant_id.is_none(), &a.tenant_id, &a.name, &a.budget_id).cmp(&(
                b.tenant_id.is_none(),
                &b.tenant_id,
                &b.name,
                &b.budget_id,
            ))
        });
        Ok(rows)
    }
}

fn now_secs(now_ms: i64) -> u64 {
    u64::try_from(now_ms / 1_000).unwrap_or(0)
}

fn row(
    p: &Planned<'_>,
    tenant: Option<&TenantPolicy>,
    used: u64,
    reserved: u64,
    ledger: i64,
    now_secs: u64,
) -> BudgetDrift {
    let b = p.budget;
    let units = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let counter = units(used);
    let drift = counter.saturating_sub(ledger);
    let show = |n: i64| display_amount(b.measure, n);
    let tz = tenant.map_or(TimeZone::UTC, |t| t.timezone.clone());
    let time = |secs: u64| local_time(&tz, secs).unwrap_or_default();
    let (start, end) = p
        .window
        .map_or((0, 0), |w| (w.start, now_secs + w.until_reset));
    BudgetDrift {
        tenant_id: tenant.map(|t| t.id.clone()),
        budget_id: b.id.clone(),
        name: b.name.clone(),
        scope: b.scope,
        model: b.model.clone(),
        measure: b.measure,
        token_type: b.token_type.clone(),
        currency: b.currency.clone(),
        period_start: time(start),
        period_end: time(end),
        counter: show(counter),
        reserved: show(units(reserved)),
        ledger: show(ledger),
        drift: show(drift),
        units: DriftUnits {
            counter,
            reserved: units(reserved),
            ledger,
            drift,
        },
    }
}

/// The drift rows as a plain-text table, one line per budget after a header (for
/// `tollgate reconcile`); amounts as exact decimals, money followed by its currency.
pub fn table(rows: &[BudgetDrift]) -> String {
    const HEADER: [&str; 9] = [
        "TENANT",
        "BUDGET",
        "SCOPE",
        "MEASURE",
        "PERIOD_START",
        "COUNTER",
        "RESERVED",
        "LEDGER",
        "DRIFT",
    ];
    let mut lines: Vec<[String; 9]> = vec![HEADER.map(str::to_owned)];
    for r in rows {
        let money = |amount: &str| match &r.currency {
            Some(c) if r.measure == Measure::Cost => format!("{amount} {c}"),
            _ => amount.to_owned(),
        };
        lines.push([
            r.tenant_id.clone().unwrap_or_else(|| "(global)".to_owned()),
            r.name.clone(),
            r.scope.as_str().to_owned(),
            match &r.token_type {
                Some(t) => format!("{}:{t}", r.measure.as_str()),
                None => r.measure.as_str().to_owned(),
            },
            r.period_start.clone(),
            money(&r.counter),
            money(&r.reserved),
            money(&r.ledger),
            money(&r.drift),
        ]);
    }
    let mut widths = [0; 9];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(widths)
            .enumerate()
            // Text left-aligned, figures right-aligned.
            .map(|(i, (cell, w))| {
                if i < 5 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drift_row(
        tenant: Option<&str>,
        name: &str,
        measure: Measure,
        counter: i64,
        ledger: i64,
    ) -> BudgetDrift {
        let show = |n: i64| display_amount(measure, n);
        BudgetDrift {
            tenant_id: tenant.map(str::to_owned),
            budget_id: format!("b-{name}"),
            name: name.to_owned(),
            scope: if tenant.is_some() {
                Scope::Tenant
            } else {
                Scope::Global
            },
            model: None,
            measure,
            token_type: (measure == Measure::Tokens).then(|| "output".to_owned()),
            currency: (measure == Measure::Cost).then(|| "USD".to_owned()),
            period_start: "2026-11-01T00:00:00+01:00".to_owned(),
            period_end: "2026-12-01T00:00:00+01:00".to_owned(),
            counter: show(counter),
            reserved: show(0),
            ledger: show(ledger),
            drift: show(counter - ledger),
            units: DriftUnits {
                counter,
                reserved: 0,
                ledger,
                drift: counter - ledger,
            },
        }
    }

    #[test]
    fn the_table_has_a_header_and_one_aligned_line_per_budget() {
        let rows = [
            drift_row(
                Some("acme"),
                "monthly-cost",
                Measure::Cost,
                8_850,
                1_008_850,
            ),
            drift_row(None, "platform", Measure::Tokens, 1_550, 1_550),
        ];
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("TENANT    BUDGET        SCOPE   MEASURE"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("acme      monthly-cost  tenant  cost "),
            "{text}"
        );
        assert!(lines[1].ends_with("-1.000000 USD"), "{text}");
        assert!(
            lines[2].starts_with("(global)  platform      global  tokens:output"),
            "{text}"
        );
        assert!(lines[2].ends_with(" 0"), "{text}");
        assert!(rows[0].drifts() && !rows[1].drifts());
    }
}
