//! Token and money budgets on both calls of an LLM request.
//!
//! Which budgets: every budget measuring tokens or cost, and every request budget but a
//! session's (those count requests as they arrive, in [`super::quota`]); a settled request
//! counts as one request.
//!
//! **Request path.** A descriptor carrying the tenant and model keys (not the token type)
//! is *guarded* by every hard budget of those that its request falls under: the tenant's, the tenant's for that model, the global ones (for every model or
//! that one), and, when it also carries the session key, the session's. A descriptor
//! carrying the tenant and session keys but no model is guarded by the session's budgets
//! only. Without a reservation the guard is check-only: a budget whose settled usage plus
//! reservations has reached its limit refuses (`current_limit.name` = the budget's name,
//! `raw_body` = [`exhausted_body`]). With a request id and an estimate (the `estimate`
//! entry, or the descriptor's `hits_addend`), the estimate is **reserved** on every line
//! at once: all budgets have room for it, or nothing is reserved and the first budget
//! without room refuses. The estimate is in tokens; a cost budget reserves what those
//! tokens would cost at the model's highest price, an upper bound.
//!
//! **Stream done.** Descriptors carrying the token type key are usage: they are grouped by
//! request id into one usage event ([`Settlement`]), priced with the policy's price book
//! at the settlement time (the one rounding point, [`crate::money::cost_micros`]), and
//! settled in one store step that charges every budget the usage falls under (soft ones
//! too), releases the reservation, and queues the event for the ledger. A second
//! settlement of the same request id changes nothing.
//!
//! **Periods and keys.** A budget counts per period: epoch-aligned windows, calendar
//! periods in the tenant's timezone (UTC for global budgets), or a session's lifetime
//! (forgotten after the session idle TTL). Each windowed period has a marker; a period
//! whose marker is missing (its first use, or counters lost to a Redis flush or a memory
//! store restart) is rebuilt from the ledger before anything is decided on it.
//! Session-lifetime counters are not rebuilt: a lost one starts again from zero.

use super::{DecideError, Limiter};
use crate::ledger::budgets::{CalendarUnit, Measure, Period, Scope};
use crate::ledger::usage::{UsageEvent, price_lines};
use crate::policy::{BudgetPolicy, Policy, TenantPolicy};
use crate::rules::Unit;
use crate::store::budget::{BudgetCall, BudgetLine, BudgetOp, BudgetOutcome, BudgetReply};
use crate::store::{CounterStore, StoreError};

use super::quota::QuotaEntries;
use super::window::Window;

/// `raw_body` error code of a refusal by an exhausted budget.
pub const BUDGET_EXHAUSTED: &str = "budget_exhausted";

/// How long a counter outlives its period, so the last period's figures stay readable
/// (drift reports) a little after it ends.
const PERIOD_GRACE_SECS: u64 = 3600;

/// The budget counter of one budget for one request: which period, and its keys.
#[derive(Debug, Clone)]
pub struct Planned<'p> {
    pub budget: &'p BudgetPolicy,
    /// The tenant whose request it is (global budgets are explained in its terms too).
    pub tenant: &'p TenantPolicy,
    /// The period's window (`None` for a session's lifetime).
    pub window: Option<Window>,
    /// The marker of the period (windowed periods only).
    pub marker: Option<String>,
    pub line: BudgetLine,
}

/// Which budgets one request falls under.
#[derive(Debug, Clone, Copy)]
pub struct Scopes<'a> {
    /// Tenant-wide, tenant-model and global budgets (a descriptor naming a model).
    pub tenant_wide: bool,
    pub model: Option<&'a str>,
    /// The session's budgets (a descriptor naming a session).
    pub session: Option<&'a str>,
}

impl<'a> Scopes<'a> {
    /// The scopes a request-path descriptor guards: with a model, the tenant-wide ones
    /// (and the session's if named); with only a session, the session's.
    pub fn guarded_by(entries: &QuotaEntries<'a>) -> Option<Scopes<'a>> {
        match (entries.model, entries.session) {
            (Some(model), session) => Some(Scopes {
                tenant_wide: true,
                model: Some(model),
                session,
            }),
            (None, Some(session)) => Some(Scopes {
                tenant_wide: false,
                model: None,
                session: Some(session),
            }),
            (None, None) => None,
        }
    }

    fn covers(&self, budget: &BudgetPolicy) -> bool {
        match budget.scope {
            Scope::Tenant => self.tenant_wide,
            Scope::TenantModel => {
                self.tenant_wide && budget.model.is_some() && budget.model.as_deref() == self.model
            }
            Scope::Global => {
                self.tenant_wide
                    && (budget.model.is_none() || budget.model.as_deref() == self.model)
            }
            Scope::Session => self.session.is_some(),
        }
    }
}

/// Where and when budget counters are laid out.
#[derive(Debug, Clone, Copy)]
pub struct Layout<'a> {
    /// The key namespace, from [`crate::store::budget::namespace`].
    pub ns: &'a str,
    /// The periods are those containing this second.
    pub now_secs: u64,
    /// How long a session-long counter outlives its last change.
    pub session_idle_secs: u64,
}

/// Lays out the counters of every budget of `tenant` (and global budget) that `scopes`
/// covers (hard ones only with `hard_only`); `amount` gives each line's amount (`None`
/// leaves the budget out, e.g. a cost budget in another currency).
pub fn plan<'p>(
    layout: &Layout<'_>,
    policy: &'p Policy,
    tenant: &'p TenantPolicy,
    scopes: Scopes<'_>,
    hard_only: bool,
    mut amount: impl FnMut(&BudgetPolicy) -> Option<u64>,
) -> Vec<Planned<'p>> {
    let utc = jiff::tz::TimeZone::UTC;
    tenant
        .spend_budgets()
        .iter()
        .map(|b| (b, &tenant.timezone))
        .chain(policy.global_spend_budgets().iter().map(|b| (b, &utc)))
        .filter(|(b, _)| scopes.covers(b) && (b.hard || !hard_only))
        .filter_map(|(budget, tz)| {
            let amount = amount(budget)?;
            let session = if counts_per_session(budget) {
                Some(scopes.session?)
            } else {
                None
            };
            Some(plan_budget(layout, budget, tenant, tz, session, amount))
        })
        .collect()
}

/// Whether `budget` counts each session apart (a session budget, or a session-long period).
pub fn counts_per_session(budget: &BudgetPolicy) -> bool {
    budget.scope == Scope::Session || matches!(budget.period, Period::Session(_))
}

/// Lays out one budget's counter as `layout` says: in `tz` (the tenant's; UTC for a
/// global budget), of `session` for a budget counted per session. The one place budget
/// keys are built, for the limiter and for reconciling the counters with the ledger
/// (`crate::ledger::drift`).
pub fn plan_budget<'p>(
    layout: &Layout<'_>,
    budget: &'p BudgetPolicy,
    tenant: &'p TenantPolicy,
    tz: &jiff::tz::TimeZone,
    session: Option<&str>,
    amount: u64,
) -> Planned<'p> {
    let (ns, now_secs) = (layout.ns, layout.now_secs);
    let window = match budget.period {
        Period::Window { window_seconds } => Some(Window::containing(now_secs, window_seconds)),
        Period::Calendar { calendar } => {
            Some(Window::calendar(now_secs, calendar_unit(calendar), tz))
        }
        Period::Session(_) => None,
    };
    let mut id = budget.id.clone();
    if let Some(session) = session {
        id.push_str(":s:");
        id.push_str(session);
    }
    if let Some(w) = &window {
        id.push(':');
        id.push_str(&w.start.to_string());
    }
    let (ttl_secs, idle) = match &window {
        Some(w) => (w.until_reset + PERIOD_GRACE_SECS, false),
        None => (layout.session_idle_secs.max(1), true),
    };
    Planned {
        budget,
        tenant,
        marker: window.map(|_| format!("{ns}m:{id}")),
        window,
        line: BudgetLine {
            used_key: format!("{ns}u:{id}"),
            reserved_key: format!("{ns}r:{id}"),
            ttl_secs,
            idle,
            limit: budget.hard.then_some(budget.limit),
            amount,
        },
    }
}

fn calendar_unit(unit: CalendarUnit) -> Unit {
    match unit {
        CalendarUnit::Day => Unit::Day,
        CalendarUnit::Week => Unit::Week,
        CalendarUnit::Month => Unit::Month,
    }
}

/// What an estimate of `tokens` holds on `budget`: the tokens themselves, or their cost at
/// the model's highest price now (`None`: a cost budget in another currency, or no price).
pub fn estimate_amount(
    policy: &Policy,
    tenant: &TenantPolicy,
    model: Option<&str>,
    budget: &BudgetPolicy,
    tokens: u64,
    now_ms: i64,
) -> Option<u64> {
    match budget.measure {
        Measure::Tokens => Some(tokens),
        Measure::Cost => {
            let currency = tenant.currency.as_str();
            if budget.currency.as_deref().is_some_and(|c| c != currency) {
                return None;
            }
            let price = policy.prices().highest_at(model?, currency, now_ms)?;
            u64::try_from(crate::money::cost_micros(tokens, price)).ok()
        }
        Measure::Requests => Some(1),
    }
}

/// One request's usage, gathered from the stream-done descriptors carrying its request id.
#[derive(Debug, Clone)]
pub struct Settlement<'a> {
    pub tenant: &'a str,
    pub session: Option<&'a str>,
    pub model: Option<&'a str>,
    /// `None` when Envoy sent none: the event gets a fresh id and cannot be deduplicated.
    pub request_id: Option<&'a str>,
    /// Tokens by type, in order of first appearance.
    pub tokens: Vec<(&'a str, u64)>,
}

/// One request's usage, priced and checked ([`Limiter::price_usage`]), ready to settle.
pub(super) struct Priced<'r, 'p> {
    settlement: Settlement<'r>,
    tenant: &'p TenantPolicy,
    request_id: String,
    event: UsageEvent,
}

/// Groups usage descriptors (their quota entries and tokens) by tenant and request id.
pub fn group_usage<'a>(
    usage: impl IntoIterator<Item = (QuotaEntries<'a>, u64)>,
) -> Vec<Settlement<'a>> {
    let mut settlements: Vec<Settlement<'a>> = Vec::new();
    for (entries, tokens) in usage {
        let Some(token_type) = entries.token_type else {
            continue;
        };
        let same =
            |s: &Settlement<'a>| s.tenant == entries.tenant && s.request_id == entries.request_id;
        let index = match settlements.iter().position(same) {
            Some(i) => i,
            None => {
                settlements.push(Settlement {
                    tenant: entries.tenant,
                    session: entries.session,
                    model: entries.model,
                    request_id: entries.request_id,
                    tokens: Vec::new(),
                });
                settlements.len() - 1
            }
        };
        let s = &mut settlements[index];
        s.session = s.session.or(entries.session);
        s.model = s.model.or(entries.model);
        match s.tokens.iter_mut().find(|(t, _)| *t == token_type) {
            Some((_, n)) => *n = n.saturating_add(tokens),
            None => s.tokens.push((token_type, tokens)),
        }
    }
    settlements
}

impl Settlement<'_> {
    /// The usage event, priced at `now_ms` in the tenant's currency (token types without a
    /// price cost 0 and are logged by the caller from `unpriced`).
    pub fn event(
        &self,
        policy: &Policy,
        tenant: &TenantPolicy,
        domain: &str,
        request_id: &str,
        now_ms: i64,
    ) -> (UsageEvent, Vec<String>) {
        let currency = tenant.currency.as_str();
        let tokens: Vec<(String, u64)> = self
            .tokens
            .iter()
            .map(|&(t, n)| (t.to_owned(), n))
            .collect();
        let priced = price_lines(&tokens, |token_type| {
            policy
                .prices()
                .at(self.model?, token_type, currency, now_ms)
        });
        let event = UsageEvent {
            request_id: request_id.to_owned(),
            tenant_id: self.tenant.to_owned(),
            session_id: self.session.map(str::to_owned),
            model: self.model.map(str::to_owned),
            domain: Some(domain.to_owned()),
            occurred_at: now_ms,
            currency: currency.to_owned(),
            lines: priced.lines,
        };
        (event, priced.unpriced)
    }
}

/// What a settled event charges `budget` (`None`: nothing, e.g. another currency).
pub fn charge_amount(budget: &BudgetPolicy, event: &UsageEvent) -> Option<u64> {
    match budget.measure {
        Measure::Tokens => Some(
            event
                .lines
                .iter()
                .filter(|l| {
                    budget
                        .token_type
                        .as_ref()
                        .is_none_or(|t| *t == l.token_type)
                })
                .map(|l| l.tokens)
                .sum(),
        ),
        Measure::Cost => {
            if budget
                .currency
                .as_ref()
                .is_some_and(|c| *c != event.currency)
            {
                return None;
            }
            u64::try_from(event.cost_micros()).ok()
        }
        // One usage event is one request.
        Measure::Requests => Some(1),
    }
}

/// The amount left under a hard line, from the store's reply.
pub fn remaining(limit: u64, used: u64, reserved: u64) -> u64 {
    limit.saturating_sub(used.saturating_add(reserved))
}

/// A figure of `measure` as shown to people, signed: a count, or an exact decimal of money.
pub fn display_amount(measure: Measure, units: i64) -> String {
    match measure {
        Measure::Cost => crate::money::format_micros(units),
        _ => units.to_string(),
    }
}

/// RFC 3339 in `tz`, seconds precision (budget periods and reset times).
pub fn local_time(tz: &jiff::tz::TimeZone, secs: u64) -> Option<String> {
    let ts = jiff::Timestamp::from_second(i64::try_from(secs).ok()?).ok()?;
    Some(
        ts.to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    )
}

/// The refusal's JSON explanation: error, tenant, budget, remaining, currency (cost
/// budgets), reset time (windowed budgets), in a fixed order.
pub fn exhausted_body(planned: &Planned<'_>, remaining_units: u64, now_secs: u64) -> String {
    let text = |s: &str| serde_json::Value::from(s).to_string();
    let budget = planned.budget;
    let mut body = format!(
        r#"{{"error":"{BUDGET_EXHAUSTED}","tenant":{},"budget":{},"remaining":{}"#,
        text(&planned.tenant.id),
        text(&budget.name),
        text(&display_amount(
            budget.measure,
            i64::try_from(remaining_units).unwrap_or(i64::MAX)
        )),
    );
    if budget.measure == Measure::Cost {
        body.push_str(&format!(
            r#","currency":{}"#,
            text(planned.tenant.currency.as_str())
        ));
    }
    if let Some(resets_at) = planned
        .window
        .and_then(|w| local_time(&planned.tenant.timezone, now_secs + w.until_reset))
    {
        body.push_str(&format!(r#","resets_at":{}"#, text(&resets_at)));
    }
    body.push('}');
    body
}

/// The settled usage of each line's period by the ledger's reckoning, for rebuilding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpentQuery {
    /// `None` for a global budget (every tenant).
    pub tenant: Option<String>,
    pub model: Option<String>,
    pub session: Option<String>,
    pub measure: Measure,
    pub token_type: Option<String>,
    /// A cost budget counts entries in this currency only.
    pub currency: Option<String>,
    pub start_ms: i64,
    pub end_ms: i64,
}

impl SpentQuery {
    /// The query that rebuilds `planned`'s period (windowed lines only).
    pub fn of(planned: &Planned<'_>, session: Option<&str>) -> Option<SpentQuery> {
        let window = planned.window?;
        let b = planned.budget;
        let tenant = (b.scope != Scope::Global).then(|| planned.tenant.id.clone());
        let currency = match b.measure {
            Measure::Cost => Some(
                b.currency
                    .clone()
                    .unwrap_or_else(|| planned.tenant.currency.as_str().to_owned()),
            ),
            _ => None,
        };
        let start_ms = i64::try_from(window.start).ok()? * 1000;
        Some(SpentQuery {
            tenant,
            model: b.model.clone(),
            session: (b.scope == Scope::Session)
                .then(|| session.map(str::to_owned))
                .flatten(),
            measure: b.measure,
            token_type: b.token_type.clone(),
            currency,
            start_ms,
            // Through the end of time: a rebuild happens inside the period, and nothing
            // later than now is in the ledger.
            end_ms: i64::MAX,
        })
    }
}

/// Where rebuilds read settled usage: the ledger, once the outbox has been drained into
/// it (see `crate::app`).
pub trait SpentSource: Send + Sync + 'static {
    fn spent(&self, query: SpentQuery) -> futures::future::BoxFuture<'_, Result<u64, String>>;
}

/// A request-path descriptor guarded by budgets (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Guard<'a, 'p> {
    /// The descriptor's index in the request.
    pub index: usize,
    pub tenant: &'p TenantPolicy,
    pub entries: QuotaEntries<'a>,
    /// The tokens to reserve when the descriptor names a request id: its `estimate`
    /// entry, else its addend if positive.
    pub reservation: Option<u64>,
}

/// A guarded descriptor's answer.
#[derive(Debug, Clone)]
pub enum Guarded {
    /// Within every budget; the tightest hard budget's standing, for the response headers.
    Within(Option<Standing>),
    /// A budget is spent (or has no room for the reservation).
    Refused {
        name: String,
        limit: u64,
        body: String,
    },
}

/// A hard budget's standing after a guard: what the remaining-budget headers show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub name: String,
    /// Remaining, as shown to people (a count, or a decimal amount and currency).
    pub remaining: String,
    /// RFC 3339 in the tenant's timezone (windowed budgets).
    pub resets_at: Option<String>,
    /// Remaining as a share of the limit, in millionths (picks the tightest).
    share_ppm: u64,
}

/// Names of the remaining-budget response headers.
pub const BUDGET_HEADER: &str = "x-tollgate-budget";
pub const BUDGET_REMAINING_HEADER: &str = "x-tollgate-budget-remaining";
pub const BUDGET_RESET_HEADER: &str = "x-tollgate-budget-reset";

impl Standing {
    /// Whether `self` has less left, as a share of its limit, than `other`.
    pub fn tighter_than(&self, other: &Standing) -> bool {
        self.share_ppm < other.share_ppm
    }

    /// The remaining-budget response headers: the budget's name, what is left, and when
    /// it resets.
    pub fn headers(self) -> impl Iterator<Item = (String, String)> {
        [
            Some((BUDGET_HEADER.to_owned(), self.name)),
            Some((BUDGET_REMAINING_HEADER.to_owned(), self.remaining)),
            self.resets_at.map(|r| (BUDGET_RESET_HEADER.to_owned(), r)),
        ]
        .into_iter()
        .flatten()
    }
}

/// A request-path budget call for one tenant's descriptors, and what each line answers to.
struct GuardCall<'p> {
    planned: Vec<Planned<'p>>,
    /// The request descriptor each line's refusal goes to.
    owner: Vec<usize>,
    reservation: Option<(String, u64)>,
    session: Option<String>,
}

impl Limiter {
    /// Answers the guarded descriptors of one call: one budget step per tenant (normally
    /// one), check-only or a reservation of every line together.
    pub(super) async fn guard(
        &self,
        policy: &Policy,
        guards: &[Guard<'_, '_>],
        now_secs: u64,
        now_ms: u64,
    ) -> Result<Vec<(usize, Guarded)>, DecideError> {
        let mut answers = Vec::new();
        let mut done = vec![false; guards.len()];
        for first in 0..guards.len() {
            if done[first] {
                continue;
            }
            let tenant = guards[first].tenant;
            let mut group: Vec<&Guard<'_, '_>> = Vec::new();
            for (i, g) in guards.iter().enumerate() {
                if !done[i] && std::ptr::eq(g.tenant, tenant) {
                    done[i] = true;
                    group.push(g);
                }
            }
            let call = self.guard_call(policy, tenant, &group, now_secs, now_ms);
            if call.planned.is_empty() {
                answers.extend(group.iter().map(|g| (g.index, Guarded::Within(None))));
                continue;
            }
            let op = match &call.reservation {
                Some((request_id, _)) => BudgetOp::Reserve {
                    request_id: request_id.clone(),
                    expires_at_ms: now_ms
                        .saturating_add(self.options.reservation_ttl.as_millis() as u64),
                },
                None => BudgetOp::Check,
            };
            let reply = self
                .budget_step(&call.planned, call.session.as_deref(), op, now_ms)
                .await?;
            let refused_line = match reply.outcome {
                BudgetOutcome::Refused { line } => Some(line),
                BudgetOutcome::Done if call.reservation.is_none() => {
                    (0..call.planned.len()).find(|&i| {
                        call.planned[i].line.limit.is_some_and(|limit| {
                            remaining(limit, reply.used[i], reply.reserved[i]) == 0
                        })
                    })
                }
                _ => None,
            };
            if call.reservation.is_some() && reply.outcome == BudgetOutcome::Done {
                self.metrics.budgets.reserved.increment(1);
            }
            for g in &group {
                let answer = match refused_line {
                    Some(line) if call.owner[line] == g.index => {
                        let planned = &call.planned[line];
                        let left =
                            remaining(planned.budget.limit, reply.used[line], reply.reserved[line]);
                        self.metrics.policy.refused_budget_exhausted.increment(1);
                        Guarded::Refused {
                            name: planned.budget.name.clone(),
                            limit: planned.budget.limit,
                            body: exhausted_body(planned, left, now_secs),
                        }
                    }
                    _ => Guarded::Within(tightest(&call, &reply, g.index, now_secs)),
                };
                answers.push((g.index, answer));
            }
        }
        Ok(answers)
    }

    fn guard_call<'p>(
        &self,
        policy: &'p Policy,
        tenant: &'p TenantPolicy,
        group: &[&Guard<'_, '_>],
        now_secs: u64,
        now_ms: u64,
    ) -> GuardCall<'p> {
        // Every scope the request names, across its descriptors: a reservation holds the
        // estimate on all of them together.
        let with_model = group.iter().find(|g| g.entries.model.is_some());
        let session = group.iter().find_map(|g| g.entries.session);
        let scopes = Scopes {
            tenant_wide: with_model.is_some(),
            model: with_model.and_then(|g| g.entries.model),
            session,
        };
        let reservation = group
            .iter()
            .find_map(|g| Some((g.entries.request_id?.to_owned(), g.reservation?)));
        let model = scopes.model;
        let planned =
            plan(
                &self.layout(now_secs),
                policy,
                tenant,
                scopes,
                true,
                |b| match &reservation {
                    Some((_, tokens)) => {
                        estimate_amount(policy, tenant, model, b, *tokens, now_ms as i64)
                    }
                    None => Some(0),
                },
            );
        // A session's budgets answer to the descriptor naming only the session, when there
        // is one; everything else to the descriptor naming the model.
        let session_owner = group
            .iter()
            .find(|g| g.entries.model.is_none())
            .or(with_model)
            .map(|g| g.index);
        let model_owner = with_model.or(group.first()).map(|g| g.index);
        let owner = planned
            .iter()
            .map(|p| {
                let owner = if p.budget.scope == Scope::Session {
                    session_owner
                } else {
                    model_owner
                };
                owner.unwrap_or_default()
            })
            .collect();
        GuardCall {
            planned,
            owner,
            reservation,
            session: session.map(str::to_owned),
        }
    }

    /// Prices the usage descriptors of one call, one event per request id, and checks that
    /// the ledger can record each. No I/O: the limiter runs it before any store call, so a
    /// call carrying usage the ledger could never record is refused before anything of it
    /// is charged (counters charged without a ledger entry would drift from it for good).
    pub(super) fn price_usage<'r, 'p>(
        &self,
        policy: &'p Policy,
        domain: &str,
        usage: Vec<(QuotaEntries<'r>, u64)>,
        now_ms: u64,
    ) -> Result<Vec<Priced<'r, 'p>>, DecideError> {
        let mut priced = Vec::new();
        for settlement in group_usage(usage) {
            let Some(tenant) = policy.tenant(settlement.tenant) else {
                self.metrics.budgets.unknown_tenant_usage.increment(1);
                tracing::warn!(
                    tenant = settlement.tenant,
                    request_id = settlement.request_id,
                    "usage of a tenant the policy does not know was not charged"
                );
                continue;
            };
            let request_id = settlement
                .request_id
                .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
            let (event, unpriced) =
                settlement.event(policy, tenant, domain, &request_id, now_ms as i64);
            event
                .validate()
                .map_err(|invalid| DecideError::InvalidUsage {
                    request_id: request_id.chars().take(64).collect(),
                    field: invalid.field,
                    message: invalid.message,
                })?;
            if !unpriced.is_empty() {
                self.metrics
                    .budgets
                    .unpriced
                    .increment(unpriced.len() as u64);
                tracing::warn!(
                    tenant = settlement.tenant,
                    model = settlement.model,
                    token_types = ?unpriced,
                    %request_id,
                    "no price in force: these tokens are charged at 0"
                );
            }
            priced.push(Priced {
                settlement,
                tenant,
                request_id,
                event,
            });
        }
        Ok(priced)
    }

    /// Settles the priced usage of one call: one store step per request id.
    pub(super) async fn settle(
        &self,
        policy: &Policy,
        usage: Vec<Priced<'_, '_>>,
        now_secs: u64,
        now_ms: u64,
    ) -> Result<(), DecideError> {
        for Priced {
            settlement,
            tenant,
            request_id,
            event,
        } in usage
        {
            let scopes = Scopes {
                tenant_wide: true,
                model: settlement.model,
                session: settlement.session,
            };
            let planned = plan(&self.layout(now_secs), policy, tenant, scopes, false, |b| {
                charge_amount(b, &event)
            });
            let op = BudgetOp::Settle {
                request_id: request_id.clone(),
                event: serde_json::to_string(&event).expect("usage events serialize"),
                settled_ttl_secs: self.options.settled_ttl.as_secs(),
            };
            let reply = self
                .budget_step(&planned, settlement.session, op, now_ms)
                .await?;
            match reply.outcome {
                BudgetOutcome::Done => {
                    self.metrics.budgets.settled.increment(1);
                    self.settled.notify_one();
                    self.raise_alerts(&planned, &reply, &request_id, now_secs);
                }
                BudgetOutcome::Duplicate => {
                    self.metrics.budgets.duplicate_settlements.increment(1);
                }
                BudgetOutcome::Refused { .. } | BudgetOutcome::Unbuilt { .. } => {}
            }
        }
        Ok(())
    }

    fn layout(&self, now_secs: u64) -> Layout<'_> {
        Layout {
            ns: &self.budget_namespace,
            now_secs,
            session_idle_secs: self.options.session_idle_ttl.as_secs(),
        }
    }

    /// Runs one budget step, rebuilding from the ledger every period it finds unbuilt
    /// (at most once per line), then retrying.
    async fn budget_step(
        &self,
        planned: &[Planned<'_>],
        session: Option<&str>,
        op: BudgetOp,
        now_ms: u64,
    ) -> Result<BudgetReply, DecideError> {
        let markers: Vec<(usize, String)> = planned
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.marker.clone()?)))
            .collect();
        let call = BudgetCall {
            namespace: self.budget_namespace.clone(),
            markers: markers.iter().map(|(_, m)| m.clone()).collect(),
            lines: planned.iter().map(|p| p.line.clone()).collect(),
            op,
            now_ms,
        };
        for _ in 0..=markers.len() {
            let reply = self.store_budget(&call).await?;
            self.metrics
                .budgets
                .reservations_expired
                .increment(reply.expired);
            let BudgetOutcome::Unbuilt { marker } = reply.outcome else {
                return Ok(reply);
            };
            let (line, marker) = &markers[marker];
            let p = &planned[*line];
            let spent = match (&self.spent_source, SpentQuery::of(p, session)) {
                (Some(source), Some(query)) => source.spent(query).await.map_err(|e| {
                    DecideError::Store(StoreError::Unavailable(format!(
                        "cannot rebuild budget '{}' from the ledger: {e}",
                        p.budget.name
                    )))
                })?,
                // No ledger (tests of the counting alone): nothing was spent before.
                _ => 0,
            };
            let rebuild = BudgetCall {
                namespace: self.budget_namespace.clone(),
                markers: vec![marker.clone()],
                lines: vec![BudgetLine {
                    amount: spent,
                    ..p.line.clone()
                }],
                op: BudgetOp::Rebuild,
                now_ms,
            };
            self.store_budget(&rebuild).await?;
            self.metrics.budgets.rebuilt.increment(1);
            tracing::info!(budget = %p.budget.name, spent, "budget period rebuilt from the ledger");
        }
        Err(DecideError::Store(StoreError::Unavailable(
            "budget counters were lost again while being rebuilt".into(),
        )))
    }

    async fn store_budget(&self, call: &BudgetCall) -> Result<BudgetReply, DecideError> {
        self.call_store(self.store.budget(call)).await
    }

    fn raise_alerts(
        &self,
        planned: &[Planned<'_>],
        reply: &BudgetReply,
        request_id: &str,
        now_secs: u64,
    ) {
        let Some(alerter) = &self.alerter else { return };
        for (i, p) in planned.iter().enumerate() {
            let b = p.budget;
            let after = reply.used[i];
            let before = after.saturating_sub(p.line.amount);
            for threshold in crate::alerts::crossed(before, after, b.limit, &b.alert_thresholds) {
                let (period_start, period_end) = match p.window {
                    Some(w) => (
                        local_time(&p.tenant.timezone, w.start),
                        local_time(&p.tenant.timezone, now_secs + w.until_reset),
                    ),
                    None => (None, None),
                };
                alerter.raise(crate::alerts::Alert {
                    tenant: (b.scope != Scope::Global).then(|| p.tenant.id.clone()),
                    budget_id: b.id.clone(),
                    budget_name: b.name.clone(),
                    scope: b.scope,
                    measure: b.measure,
                    token_type: b.token_type.clone(),
                    model: b.model.clone(),
                    threshold_percent: threshold,
                    limit: b.limit,
                    spent: after,
                    currency: (b.measure == Measure::Cost)
                        .then(|| p.tenant.currency.as_str().to_owned()),
                    period_start: period_start.unwrap_or_default(),
                    period_end: period_end.unwrap_or_default(),
                    request_id: request_id.to_owned(),
                });
            }
        }
    }
}

/// The tightest hard line owned by descriptor `index`, for the remaining-budget headers.
fn tightest(
    call: &GuardCall<'_>,
    reply: &BudgetReply,
    index: usize,
    now_secs: u64,
) -> Option<Standing> {
    call.planned
        .iter()
        .enumerate()
        .filter(|(i, p)| call.owner[*i] == index && p.line.limit.is_some())
        .map(|(i, p)| {
            let left = remaining(p.budget.limit, reply.used[i], reply.reserved[i]);
            let share_ppm =
                (u128::from(left) * 1_000_000 / u128::from(p.budget.limit.max(1))) as u64;
            let mut shown =
                display_amount(p.budget.measure, i64::try_from(left).unwrap_or(i64::MAX));
            if p.budget.measure == Measure::Cost {
                shown.push(' ');
                shown.push_str(p.tenant.currency.as_str());
            }
            Standing {
                name: p.budget.name.clone(),
                remaining: shown,
                resets_at: p
                    .window
                    .and_then(|w| local_time(&p.tenant.timezone, now_secs + w.until_reset)),
                share_ppm,
            }
        })
        .min_by_key(|s| s.share_ppm)
}

/// The whole budget path on the memory store: guards, reservations, settlements.
#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use arc_swap::{ArcSwap, ArcSwapOption};

    use super::*;
    use crate::clock::ManualClock;
    use crate::ledger::budgets::{Budget, Enforcement};
    use crate::ledger::prices::Price;
    use crate::ledger::tenants::TenantStatus;
    use crate::limiter::{Code, Decision, Descriptor, LimiterOptions, Request};
    use crate::policy::PolicySources;
    use crate::policy::tests::{budget, tenant};
    use crate::rules::load::{LoadOptions, compile};
    use crate::store::{MemoryStore, Store};
    use crate::telemetry::Metrics;

    const RULES: &str = "domain: ai-gateway\nquota: {}\ndescriptors: []\n";
    /// 2026-11-21T12:00:00Z (Berlin is UTC+1 in November).
    const NOW: u64 = 1_795_262_400;

    fn price(token_type: &str, per_million: i64, from: i64) -> Price {
        Price {
            id: format!("p-{token_type}-{from}"),
            model: "claude-sonnet".into(),
            token_type: token_type.into(),
            currency: "USD".into(),
            price_per_million: String::new(),
            effective_from: from,
            created_at: 0,
            created_by: "t".into(),
            micros_per_million: per_million,
        }
    }

    fn cost_budget(name: &str, micros: u64) -> Budget {
        let mut b = budget(
            Some("acme"),
            name,
            Scope::Tenant,
            Measure::Cost,
            Period::Calendar {
                calendar: CalendarUnit::Month,
            },
            micros,
        );
        b.currency = Some("USD".into());
        b
    }

    fn tokens_budget(name: &str, scope: Scope, tokens: u64) -> Budget {
        let mut b = budget(
            Some("acme"),
            name,
            scope,
            Measure::Tokens,
            Period::Window {
                window_seconds: 3600,
            },
            tokens,
        );
        if scope == Scope::TenantModel {
            b.model = Some("claude-sonnet".into());
        }
        b
    }

    struct Fixture {
        limiter: Limiter,
        clock: Arc<ManualClock>,
        store: MemoryStore,
    }

    fn fixture(budgets: Vec<Budget>) -> Fixture {
        let metrics = Metrics::new();
        let files = vec![(PathBuf::from("ai.yaml"), RULES.to_owned())];
        let rules = compile(&files, &LoadOptions::default(), &metrics).unwrap();
        let clock = Arc::new(ManualClock::at_secs(NOW));
        let store = MemoryStore::new(clock.clone());
        let policy = Policy::compile(
            PolicySources {
                tenants: vec![tenant("acme", TenantStatus::Active, &["claude-sonnet"])],
                budgets,
                prices: vec![price("input", 3_000_000, 0), price("output", 15_000_000, 0)],
            },
            1,
        );
        let limiter = Limiter::new(
            Arc::new(ArcSwapOption::from_pointee(rules)),
            Store::Memory(store.clone()),
            clock.clone(),
            metrics,
            LimiterOptions::default(),
        )
        .with_policy(Arc::new(ArcSwap::from_pointee(policy)));
        Fixture {
            limiter,
            clock,
            store,
        }
    }

    /// A descriptor's entries and its own `hits_addend`.
    type WithAddend<'a> = (&'a [(&'a str, &'a str)], Option<u64>);

    async fn call(limiter: &Limiter, descriptors: &[WithAddend<'_>]) -> Decision {
        let request = Request {
            domain: "ai-gateway",
            descriptors: descriptors
                .iter()
                .map(|(entries, addend)| Descriptor {
                    entries: entries.to_vec(),
                    hits_addend: *addend,
                    ..Descriptor::default()
                })
                .collect(),
            hits_addend: 0,
        };
        limiter.decide(&request).await.unwrap()
    }

    /// The request path of the worked example: check-only budgets.
    async fn check(limiter: &Limiter) -> Decision {
        call(
            limiter,
            &[(
                &[("tenant_id", "acme"), ("model", "claude-sonnet")],
                Some(0),
            )],
        )
        .await
    }

    /// Stream done: 1200 input and 350 output tokens (0.008850 USD) for `request_id`.
    async fn settle(limiter: &Limiter, request_id: &str, input: &str, output: &str) -> Decision {
        let base = [
            ("tenant_id", "acme"),
            ("model", "claude-sonnet"),
            ("request_id", request_id),
        ];
        let with = |t: &'static str| {
            let mut e = base.to_vec();
            e.push(("token_type", t));
            e
        };
        let (i, o) = (with("input"), with("output"));
        call(
            limiter,
            &[
                (&i, Some(input.parse().unwrap())),
                (&o, Some(output.parse().unwrap())),
            ],
        )
        .await
    }

    fn header<'d>(decision: &'d Decision, name: &str) -> Option<&'d str> {
        decision
            .response_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn outbox(store: &MemoryStore) -> Vec<UsageEvent> {
        futures::executor::block_on(store.outbox_pending(100))
            .unwrap()
            .into_iter()
            .map(|e| serde_json::from_str(&e.event).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_spent_cost_budget_refuses_the_next_request_with_a_json_explanation() {
        let f = fixture(vec![cost_budget("monthly-cost", 20_000)]);
        let first = check(&f.limiter).await;
        assert_eq!(first.overall_code, Code::Ok);
        assert_eq!(header(&first, BUDGET_HEADER), Some("monthly-cost"));
        assert_eq!(
            header(&first, BUDGET_REMAINING_HEADER),
            Some("0.020000 USD")
        );
        assert_eq!(
            header(&first, BUDGET_RESET_HEADER),
            Some("2026-12-01T00:00:00+01:00")
        );

        settle(&f.limiter, "r-1", "1200", "350").await;
        settle(&f.limiter, "r-2", "1200", "350").await;
        let second = check(&f.limiter).await;
        assert_eq!(second.overall_code, Code::Ok, "0.017700 of 0.020000 spent");
        assert_eq!(
            header(&second, BUDGET_REMAINING_HEADER),
            Some("0.002300 USD")
        );

        // Check-only lets one more through: its usage was not known in advance.
        settle(&f.limiter, "r-3", "1200", "350").await;
        let refused = check(&f.limiter).await;
        assert_eq!(refused.overall_code, Code::OverLimit);
        let limit = refused.statuses[0].current_limit.as_ref().unwrap();
        assert_eq!(limit.name.as_deref(), Some("monthly-cost"));
        assert_eq!(
            refused.raw_body.as_deref(),
            Some(
                r#"{"error":"budget_exhausted","tenant":"acme","budget":"monthly-cost","remaining":"0.000000","currency":"USD","resets_at":"2026-12-01T00:00:00+01:00"}"#
            )
        );
        let events = outbox(&f.store);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].cost_micros(), 8_850, "the worked example");
        assert_eq!(events[0].currency, "USD");
        let text = f.limiter.metrics.render();
        assert!(
            text.contains(r#"tollgate_quota_refused{reason="budget_exhausted"} 1"#),
            "{text}"
        );

        // The next calendar month in Berlin starts from zero.
        f.clock.set_secs(1_796_079_600); // 2026-12-01T00:00:00+01:00
        assert_eq!(check(&f.limiter).await.overall_code, Code::Ok);
    }

    #[tokio::test]
    async fn a_settlement_sent_twice_is_charged_once() {
        let f = fixture(vec![tokens_budget("hourly", Scope::Tenant, 10_000)]);
        settle(&f.limiter, "r-1", "1200", "350").await;
        settle(&f.limiter, "r-1", "1200", "350").await;
        let after = check(&f.limiter).await;
        assert_eq!(header(&after, BUDGET_REMAINING_HEADER), Some("8450"));
        assert_eq!(outbox(&f.store).len(), 1);
        let text = f.limiter.metrics.render();
        assert!(
            text.contains("tollgate_usage_duplicate_settlements_total 1"),
            "{text}"
        );
        assert!(text.contains("tollgate_usage_settled_total 1"), "{text}");
    }

    #[tokio::test]
    async fn a_reservation_holds_every_budget_or_none() {
        let f = fixture(vec![
            tokens_budget("tenant-hourly", Scope::Tenant, 1_000),
            tokens_budget("model-hourly", Scope::TenantModel, 5_000),
        ]);
        let reserve = |id: &'static str, estimate: &'static str| {
            let limiter = &f.limiter;
            async move {
                call(
                    limiter,
                    &[(
                        &[
                            ("tenant_id", "acme"),
                            ("model", "claude-sonnet"),
                            ("request_id", id),
                            ("estimate", estimate),
                        ],
                        Some(0),
                    )],
                )
                .await
            }
        };
        assert_eq!(reserve("r-1", "400").await.overall_code, Code::Ok);
        assert_eq!(reserve("r-2", "400").await.overall_code, Code::Ok);
        let refused = reserve("r-3", "400").await;
        assert_eq!(refused.overall_code, Code::OverLimit);
        assert_eq!(
            refused.statuses[0]
                .current_limit
                .as_ref()
                .unwrap()
                .name
                .as_deref(),
            Some("tenant-hourly")
        );
        // Nothing of the refused reservation was held on the model budget either.
        let standing = check(&f.limiter).await;
        assert_eq!(header(&standing, BUDGET_HEADER), Some("tenant-hourly"));
        assert_eq!(header(&standing, BUDGET_REMAINING_HEADER), Some("200"));

        // Settling r-1 with its actual 100 tokens gives back the rest of its 400.
        settle(&f.limiter, "r-1", "60", "40").await;
        let after = check(&f.limiter).await;
        assert_eq!(header(&after, BUDGET_REMAINING_HEADER), Some("500"));
        assert_eq!(reserve("r-3", "400").await.overall_code, Code::Ok);

        // Unsettled reservations are released once their deadline passes, and counted.
        f.clock
            .advance(LimiterOptions::default().reservation_ttl + Duration::from_secs(1));
        let released = check(&f.limiter).await;
        assert_eq!(header(&released, BUDGET_REMAINING_HEADER), Some("900"));
        let text = f.limiter.metrics.render();
        assert!(
            text.contains("tollgate_reservations_expired_total 2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_estimate_that_is_no_number_is_an_error_naming_the_descriptor() {
        let f = fixture(vec![tokens_budget("hourly", Scope::Tenant, 1_000)]);
        let entries = [
            ("tenant_id", "acme"),
            ("model", "claude-sonnet"),
            ("request_id", "r-1"),
            ("estimate", "lots"),
        ];
        let request = Request {
            domain: "ai-gateway",
            descriptors: vec![
                Descriptor::default(),
                Descriptor {
                    entries: entries.to_vec(),
                    ..Descriptor::default()
                },
            ],
            hits_addend: 0,
        };
        let error = f.limiter.decide(&request).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "descriptor 1: the estimate 'lots' is not a whole number of tokens"
        );
    }

    #[tokio::test]
    async fn a_cost_budget_reserves_at_the_highest_price_of_the_model() {
        let f = fixture(vec![cost_budget("monthly-cost", 20_000)]);
        // 1000 tokens at the output price (15.00 per million) hold 0.015000 USD.
        let reserved = call(
            &f.limiter,
            &[(
                &[
                    ("tenant_id", "acme"),
                    ("model", "claude-sonnet"),
                    ("request_id", "r-1"),
                ],
                Some(1000),
            )],
        )
        .await;
        assert_eq!(reserved.overall_code, Code::Ok);
        assert_eq!(
            header(&reserved, BUDGET_REMAINING_HEADER),
            Some("0.005000 USD")
        );
    }

    #[tokio::test]
    async fn lost_counters_are_rebuilt_before_the_next_decision() {
        let f = fixture(vec![tokens_budget("hourly", Scope::Tenant, 10_000)]);
        settle(&f.limiter, "r-1", "1200", "350").await;
        f.store.forget_counters();
        // Without a ledger to read, the rebuild starts from zero (the service always has
        // one; tests/admin covers the rebuild from it).
        let after = check(&f.limiter).await;
        assert_eq!(header(&after, BUDGET_REMAINING_HEADER), Some("10000"));
        let text = f.limiter.metrics.render();
        assert!(
            text.contains("tollgate_budget_periods_rebuilt_total 2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_session_token_budget_guards_its_session_only() {
        let session_tokens = budget(
            Some("acme"),
            "session-tokens",
            Scope::Session,
            Measure::Tokens,
            Period::Session(crate::ledger::budgets::SessionPeriod::Session),
            50_000,
        );
        let f = fixture(vec![session_tokens]);
        let usage = |request_id: &'static str, tokens: u64| {
            let limiter = &f.limiter;
            async move {
                let entries = [
                    ("tenant_id", "acme"),
                    ("model", "claude-sonnet"),
                    ("session_id", "s-1"),
                    ("request_id", request_id),
                    ("token_type", "output"),
                ];
                call(limiter, &[(&entries, Some(tokens))]).await
            }
        };
        let session = |id: &'static str| {
            let limiter = &f.limiter;
            async move {
                call(
                    limiter,
                    &[(&[("tenant_id", "acme"), ("session_id", id)], None)],
                )
                .await
            }
        };
        usage("r-1", 30_000).await;
        let within = session("s-1").await;
        assert_eq!(header(&within, BUDGET_REMAINING_HEADER), Some("20000"));
        assert_eq!(
            header(&within, BUDGET_RESET_HEADER),
            None,
            "a session has no reset time"
        );
        usage("r-2", 25_000).await;
        let refused = session("s-1").await;
        assert_eq!(refused.overall_code, Code::OverLimit);
        assert_eq!(
            refused.raw_body.as_deref(),
            Some(
                r#"{"error":"budget_exhausted","tenant":"acme","budget":"session-tokens","remaining":"0"}"#
            )
        );
        assert_eq!(
            session("s-2").await.overall_code,
            Code::Ok,
            "another session is fresh"
        );
        // Forgotten once the session has been idle for the idle TTL.
        f.clock
            .advance(LimiterOptions::default().session_idle_ttl + Duration::from_secs(1));
        assert_eq!(session("s-1").await.overall_code, Code::Ok);
    }

    #[tokio::test]
    async fn a_tenant_request_budget_counts_settled_requests() {
        let daily = budget(
            Some("acme"),
            "daily-requests",
            Scope::Tenant,
            Measure::Requests,
            Period::Calendar {
                calendar: CalendarUnit::Day,
            },
            2,
        );
        let f = fixture(vec![daily]);
        settle(&f.limiter, "r-1", "10", "10").await;
        assert_eq!(
            header(&check(&f.limiter).await, BUDGET_REMAINING_HEADER),
            Some("1")
        );
        settle(&f.limiter, "r-2", "10", "10").await;
        let refused = check(&f.limiter).await;
        assert_eq!(refused.overall_code, Code::OverLimit);
        assert!(
            refused
                .raw_body
                .unwrap()
                .contains(r#""budget":"daily-requests","remaining":"0""#)
        );
    }

    #[tokio::test]
    async fn each_threshold_alerts_once_per_period_when_a_settlement_crosses_it() {
        let mut budget = tokens_budget("hourly", Scope::Tenant, 10_000);
        budget.alert_thresholds = vec![50, 80, 100];
        let mut f = fixture(vec![budget]);
        let alerter =
            crate::alerts::Alerter::new(Default::default(), f.limiter.metrics.clone()).unwrap();
        f.limiter = f.limiter.with_alerter(alerter);
        let alerts = |f: &Fixture, threshold: u32| {
            let text = f.limiter.metrics.render();
            let series = format!(
                r#"tollgate_budget_alerts_total{{budget="b-hourly",threshold="{threshold}"}} "#
            );
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .map_or(0, |n| n.parse::<u64>().unwrap())
        };
        settle(&f.limiter, "r-1", "2000", "2000").await; // 4,000: none
        assert_eq!(alerts(&f, 50), 0);
        settle(&f.limiter, "r-2", "2000", "2000").await; // 8,000: 50 % and 80 % at once
        assert_eq!((alerts(&f, 50), alerts(&f, 80), alerts(&f, 100)), (1, 1, 0));
        settle(&f.limiter, "r-3", "500", "500").await; // 9,000: nothing new
        settle(&f.limiter, "r-3", "5000", "5000").await; // a duplicate: not charged, no alert
        assert_eq!((alerts(&f, 50), alerts(&f, 80), alerts(&f, 100)), (1, 1, 0));
        settle(&f.limiter, "r-4", "500", "500").await; // 10,000: 100 %
        settle(&f.limiter, "r-5", "500", "500").await; // past it: no second alert
        assert_eq!((alerts(&f, 50), alerts(&f, 80), alerts(&f, 100)), (1, 1, 1));
        // The next hour is a new period: its thresholds alert again.
        f.clock.advance(Duration::from_secs(3600));
        settle(&f.limiter, "r-6", "3000", "3000").await;
        assert_eq!((alerts(&f, 50), alerts(&f, 80)), (2, 1));
    }

    #[tokio::test]
    async fn soft_budgets_count_but_never_refuse_and_unknown_tenants_are_not_charged() {
        let mut soft = tokens_budget("soft", Scope::Tenant, 100);
        soft.enforcement = Enforcement::Soft;
        let f = fixture(vec![soft]);
        settle(&f.limiter, "r-1", "1200", "350").await;
        assert_eq!(check(&f.limiter).await.overall_code, Code::Ok);
        let usage = [
            ("tenant_id", "nobody"),
            ("request_id", "r-2"),
            ("token_type", "input"),
        ];
        let decision = call(&f.limiter, &[(&usage, Some(10))]).await;
        assert_eq!(decision.overall_code, Code::Ok);
        assert_eq!(outbox(&f.store).len(), 1);
        let text = f.limiter.metrics.render();
        assert!(
            text.contains("tollgate_usage_unknown_tenant_total 1"),
            "{text}"
        );
    }
}
