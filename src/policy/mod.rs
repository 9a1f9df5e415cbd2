//! The in-memory policy: what the ledger says about tenants, compiled into an immutable
//! snapshot that the decision path reads without locks, I/O or allocation.
//!
//! Flow: the ledger ([`crate::ledger`]) is the source of truth. [`loader`] reads it in full
//! ([`PolicySources::read`]), compiles a [`Policy`] ([`Policy::compile`]) and swaps it into
//! the [`CurrentPolicy`] (an `ArcSwap`) at startup, after every announced change (bursts
//! coalesced) and on a periodic resync. The limiter reads the current snapshot on each
//! decision in a domain with a `quota:` block ([`crate::limiter::quota`]).
//!
//! Adding a kind of policy (budgets, prices, session defaults): read it in
//! [`PolicySources::read`], add a field for it to [`PolicySources`], and compile it in
//! [`Policy::compile`] into a hot-path shape (indexed by tenant in [`TenantPolicy`], or a
//! map on [`Policy`] for global entries). Nothing else changes: the loader reloads
//! whatever the sources hold, and every change that goes through
//! `Ledger::commit_change` already triggers a reload on every replica.

pub mod loader;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use self::loader::{PolicyLoader, start};
use crate::ledger::budgets::{Budget, Enforcement, Measure, Period, Scope};
use crate::ledger::prices::{Price, PriceFilter};
use crate::ledger::tenants::{Plan, Tenant, TenantStatus};
use crate::ledger::{Ledger, LedgerError};
use crate::money::Currency;

/// The policy in force, swapped whole; readers never see a half-loaded snapshot.
pub type CurrentPolicy = Arc<ArcSwap<Policy>>;

/// A current policy holding an empty snapshot (every tenant unknown).
pub fn empty() -> CurrentPolicy {
    Arc::new(ArcSwap::from_pointee(Policy::default()))
}

/// Everything a snapshot is compiled from, read from the ledger in one pass.
#[derive(Debug, Default)]
pub struct PolicySources {
    pub tenants: Vec<Tenant>,
    /// Every live budget, global ones included.
    pub budgets: Vec<Budget>,
    /// Every price version.
    pub prices: Vec<Price>,
}

impl PolicySources {
    /// Reads every source from the ledger.
    pub async fn read(ledger: &Ledger) -> Result<PolicySources, LedgerError> {
        Ok(PolicySources {
            tenants: ledger.all_tenants().await?,
            budgets: ledger.all_budgets().await?,
            prices: ledger
                .prices(&PriceFilter {
                    limit: i64::MAX,
                    ..PriceFilter::default()
                })
                .await?,
        })
    }
}

/// One immutable snapshot of the policy.
#[derive(Debug, Default)]
pub struct Policy {
    tenants: HashMap<String, TenantPolicy>,
    /// Live budgets of the global scope, by name.
    global_budgets: Box<[BudgetPolicy]>,
    /// The global budgets that measure tokens or cost (settled usage).
    global_spend: Box<[BudgetPolicy]>,
    /// Price versions by model, token type and currency, oldest first.
    prices: PriceBook,
    /// Counts the snapshots a loader has swapped in (0: never loaded).
    generation: u64,
}

/// What the decision path knows about one tenant.
#[derive(Debug)]
pub struct TenantPolicy {
    pub id: String,
    pub status: TenantStatus,
    /// The currency of the tenant's prices and money budgets.
    pub currency: Currency,
    /// The timezone of the tenant's calendar periods.
    pub timezone: jiff::tz::TimeZone,
    pub cost_centre: Option<String>,
    /// Plan limits, as stored; `plan.requests` is enforced on tenant-only descriptors
    /// (see `limiter::quota`).
    pub plan: Plan,
    /// Granted models, sorted.
    models: Box<[String]>,
    /// Every live budget of the tenant (all scopes and measures), by name.
    budgets: Box<[BudgetPolicy]>,
    /// Budgets of scope `session` measuring requests: each session's request limits.
    session_requests: Box<[BudgetPolicy]>,
    /// `plan.requests` as counted limits of a tenant-only descriptor.
    plan_limits: Box<[QuotaLimit]>,
    /// `session_requests` as counted limits of a tenant + session descriptor.
    session_limits: Box<[QuotaLimit]>,
    /// Budgets charged with settled usage (see [`BudgetPolicy::measures_spend`]).
    spend: Box<[BudgetPolicy]>,
}

/// Price versions, looked up by model, token type and currency at a time.
#[derive(Debug, Default)]
pub struct PriceBook {
    /// `(micros per million, effective from)` by `(model, token type, currency)`, by time.
    versions: HashMap<(String, String, String), Vec<(i64, i64)>>,
}

impl PriceBook {
    fn compile(prices: Vec<Price>) -> PriceBook {
        let mut versions: HashMap<(String, String, String), Vec<(i64, i64)>> = HashMap::new();
        for p in prices {
            versions
                .entry((p.model, p.token_type, p.currency))
                .or_default()
                .push((p.micros_per_million, p.effective_from));
        }
        for list in versions.values_mut() {
            list.sort_by_key(|&(_, from)| from);
        }
        PriceBook { versions }
    }

    /// The price in force at `at_ms` (micro-units per million tokens), if any: the latest
    /// version effective at or before it, as the ledger's `price_at` answers.
    pub fn at(&self, model: &str, token_type: &str, currency: &str, at_ms: i64) -> Option<i64> {
        // A borrowed key would need a custom Borrow impl; the copy is off the hot path
        // (settlements only).
        let list =
            self.versions
                .get(&(model.to_owned(), token_type.to_owned(), currency.to_owned()))?;
        let in_force = list.partition_point(|&(_, from)| from <= at_ms);
        in_force.checked_sub(1).map(|i| list[i].0)
    }

    /// The highest price of any token type of `model` at `at_ms`: prices an estimate that
    /// does not say which tokens it will be, as an upper bound.
    pub fn highest_at(&self, model: &str, currency: &str, at_ms: i64) -> Option<i64> {
        self.versions
            .iter()
            .filter(|((m, _, c), _)| m == model && c == currency)
            .filter_map(|((m, t, c), _)| self.at(m, t, c, at_ms))
            .max()
    }
}

/// `current_limit.name` of a plan request limit of `window_seconds`: `plan-requests-60s`.
pub fn plan_limit_name(window_seconds: u64) -> String {
    format!("plan-requests-{window_seconds}s")
}

/// How long a quota counter lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPeriod {
    /// Fixed windows of this many seconds, aligned to the epoch.
    Window(u64),
    /// The session's lifetime: until the session has been idle for the idle TTL.
    Session,
}

/// How a refusal explains itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Explain {
    /// A plan request limit: JSON naming the tenant, limit, window and reset time.
    Plan { timezone: jiff::tz::TimeZone },
    /// A session request budget: the MCP session quota message.
    Session,
}

/// One counted limit of a tenant, compiled with the snapshot so the decision path plans it
/// into the store batch without building names or tags (`crate::limiter::quota`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaLimit {
    /// `current_limit.name` when it refuses.
    pub name: String,
    pub limit: u64,
    /// Soft limits count but never refuse.
    pub hard: bool,
    /// The counter key's tag, after the tenant (and session) entries.
    pub tag: String,
    /// Whether the counter is per session (keyed by the session entry too).
    pub per_session: bool,
    pub period: QuotaPeriod,
    pub explain: Explain,
}

/// One live budget, compiled for the decision path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetPolicy {
    /// The ledger's id: stable across renames, so counters are keyed by it.
    pub id: String,
    /// The slug decisions name (`current_limit.name`).
    pub name: String,
    pub scope: Scope,
    pub model: Option<String>,
    pub measure: Measure,
    pub token_type: Option<String>,
    pub period: Period,
    /// The limit in force when the snapshot was compiled (amount or a live override), in
    /// storage units: a count, or micro-units for cost.
    pub limit: u64,
    /// Hard budgets refuse once spent; soft ones only count.
    pub hard: bool,
    pub alert_thresholds: Box<[u32]>,
    /// A cost budget's currency.
    pub currency: Option<String>,
}

impl BudgetPolicy {
    fn compile(budget: Budget) -> BudgetPolicy {
        BudgetPolicy {
            limit: u64::try_from(budget.effective_units()).unwrap_or(0),
            id: budget.id,
            name: budget.name,
            scope: budget.scope,
            model: budget.model,
            measure: budget.measure,
            token_type: budget.token_type,
            period: budget.period,
            hard: budget.enforcement == Enforcement::Hard,
            alert_thresholds: budget.alert_thresholds.into_boxed_slice(),
            currency: budget.currency,
        }
    }

    /// Whether settled usage charges it: token and cost budgets, and request budgets other
    /// than a session's (those count each request as it arrives, so that the MCP session
    /// quota refuses the call itself). A settled request counts as one request.
    pub fn measures_spend(&self) -> bool {
        match self.measure {
            Measure::Tokens | Measure::Cost => true,
            Measure::Requests => self.scope != Scope::Session,
        }
    }
}

impl TenantPolicy {
    /// Whether the tenant may send traffic at all.
    pub fn is_active(&self) -> bool {
        self.status == TenantStatus::Active
    }

    /// Whether `model` is granted to the tenant.
    pub fn may_use(&self, model: &str) -> bool {
        self.models
            .binary_search_by(|m| m.as_str().cmp(model))
            .is_ok()
    }

    /// The granted models, sorted.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Every live budget of the tenant, by name.
    pub fn budgets(&self) -> &[BudgetPolicy] {
        &self.budgets
    }

    /// The session-scope request budgets: the limits of each of the tenant's sessions.
    pub fn session_request_budgets(&self) -> &[BudgetPolicy] {
        &self.session_requests
    }

    /// The plan request limits, as counted limits.
    pub fn plan_limits(&self) -> &[QuotaLimit] {
        &self.plan_limits
    }

    /// The session request budgets, as counted limits of each session.
    pub fn session_limits(&self) -> &[QuotaLimit] {
        &self.session_limits
    }

    /// The budgets settled usage charges (tokens or cost), of every scope.
    pub fn spend_budgets(&self) -> &[BudgetPolicy] {
        &self.spend
    }
}

impl Policy {
    /// Compiles `sources` into snapshot number `generation`. A record the snapshot cannot
    /// use (a currency or timezone that no longer parses) leaves its tenant out, so the
    /// tenant is refused as unknown rather than served with a guess; it is logged.
    pub fn compile(sources: PolicySources, generation: u64) -> Policy {
        let mut by_tenant: HashMap<String, Vec<BudgetPolicy>> = HashMap::new();
        let mut global = Vec::new();
        for budget in sources.budgets {
            if budget.deleted_at.is_some() {
                continue;
            }
            match budget.tenant_id.clone() {
                Some(tenant) => by_tenant
                    .entry(tenant)
                    .or_default()
                    .push(BudgetPolicy::compile(budget)),
                None => global.push(BudgetPolicy::compile(budget)),
            }
        }
        global.sort_by(|a, b| a.name.cmp(&b.name));
        let global_spend = global
            .iter()
            .filter(|b| b.measures_spend())
            .cloned()
            .collect();
        let mut tenants = HashMap::with_capacity(sources.tenants.len());
        for tenant in sources.tenants {
            let budgets = by_tenant.remove(&tenant.id).unwrap_or_default();
            match TenantPolicy::compile(tenant, budgets) {
                Ok(compiled) => {
                    tenants.insert(compiled.id.clone(), compiled);
                }
                Err((id, problem)) => {
                    tracing::error!(tenant = %id, %problem, "tenant left out of the policy")
                }
            }
        }
        Policy {
            tenants,
            global_budgets: global.into_boxed_slice(),
            global_spend,
            prices: PriceBook::compile(sources.prices),
            generation,
        }
    }

    /// The live global budgets, by name.
    pub fn global_budgets(&self) -> &[BudgetPolicy] {
        &self.global_budgets
    }

    /// The global budgets settled usage charges (tokens or cost).
    pub fn global_spend_budgets(&self) -> &[BudgetPolicy] {
        &self.global_spend
    }

    /// The price book.
    pub fn prices(&self) -> &PriceBook {
        &self.prices
    }

    /// The tenant with slug `id`. A hash lookup: no lock, no allocation.
    pub fn tenant(&self, id: &str) -> Option<&TenantPolicy> {
        self.tenants.get(id)
    }

    /// Every tenant of the snapshot, in no particular order.
    pub fn tenants(&self) -> impl Iterator<Item = &TenantPolicy> {
        self.tenants.values()
    }

    /// How many tenants the snapshot holds.
    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// Which snapshot this is: 0 before the first load, then one more per reload.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl TenantPolicy {
    fn compile(
        tenant: Tenant,
        mut budgets: Vec<BudgetPolicy>,
    ) -> Result<TenantPolicy, (String, String)> {
        let currency = tenant
            .currency
            .parse::<Currency>()
            .map_err(|e| (tenant.id.clone(), e))?;
        let timezone = jiff::tz::TimeZone::get(&tenant.timezone).map_err(|e| {
            (
                tenant.id.clone(),
                format!("timezone '{}': {e}", tenant.timezone),
            )
        })?;
        let mut models = tenant.models;
        models.sort_unstable();
        models.dedup();
        budgets.sort_by(|a, b| a.name.cmp(&b.name));
        let of = |scope: Scope, measure: Measure| -> Box<[BudgetPolicy]> {
            budgets
                .iter()
                .filter(|b| b.scope == scope && b.measure == measure)
                .cloned()
                .collect()
        };
        let session_requests = of(Scope::Session, Measure::Requests);
        let spend = budgets
            .iter()
            .filter(|b| b.measures_spend())
            .cloned()
            .collect();
        let plan_limits = tenant
            .plan
            .requests
            .iter()
            .filter(|r| r.window_seconds > 0)
            .map(|r| QuotaLimit {
                name: plan_limit_name(r.window_seconds),
                limit: r.limit,
                hard: true,
                tag: format!("plan~{}", r.window_seconds),
                per_session: false,
                period: QuotaPeriod::Window(r.window_seconds),
                explain: Explain::Plan {
                    timezone: timezone.clone(),
                },
            })
            .collect();
        let session_limits = session_requests
            .iter()
            .filter_map(|b| {
                let (period, tag) = match b.period {
                    Period::Session(_) => {
                        (QuotaPeriod::Session, format!("budget~{}~session", b.id))
                    }
                    Period::Window { window_seconds } if window_seconds > 0 => (
                        QuotaPeriod::Window(window_seconds),
                        format!("budget~{}~{window_seconds}", b.id),
                    ),
                    _ => return None,
                };
                Some(QuotaLimit {
                    name: b.name.clone(),
                    limit: b.limit,
                    hard: b.hard,
                    tag,
                    per_session: true,
                    period,
                    explain: Explain::Session,
                })
            })
            .collect();
        Ok(TenantPolicy {
            id: tenant.id,
            status: tenant.status,
            currency,
            timezone,
            cost_centre: tenant.cost_centre,
            plan: tenant.plan,
            models: models.into_boxed_slice(),
            budgets: budgets.into_boxed_slice(),
            session_requests,
            plan_limits,
            session_limits,
            spend,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A stored tenant as the ledger returns it.
    pub(crate) fn tenant(id: &str, status: TenantStatus, models: &[&str]) -> Tenant {
        Tenant {
            id: id.to_owned(),
            name: format!("{id} Inc."),
            status,
            cost_centre: Some("R&D-42".into()),
            currency: "USD".into(),
            timezone: "Europe/Berlin".into(),
            plan: Plan::default(),
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            created_at: 0,
            updated_at: 0,
        }
    }

    /// A snapshot of `tenants`.
    pub(crate) fn policy_of(tenants: Vec<Tenant>) -> Policy {
        Policy::compile(
            PolicySources {
                tenants,
                ..PolicySources::default()
            },
            1,
        )
    }

    /// A stored budget of `tenant` (global when `None`), as the ledger returns it.
    pub(crate) fn budget(
        tenant: Option<&str>,
        name: &str,
        scope: Scope,
        measure: Measure,
        period: Period,
        amount: u64,
    ) -> Budget {
        use crate::ledger::budgets::Amount;
        Budget {
            id: format!("b-{name}"),
            name: name.to_owned(),
            scope,
            tenant_id: tenant.map(str::to_owned),
            model: None,
            measure,
            token_type: None,
            period,
            amount: Amount::Count(amount),
            currency: None,
            enforcement: Enforcement::Hard,
            alert_thresholds: Vec::new(),
            overrides: Vec::new(),
            effective_amount: Amount::Count(amount),
            created_at: 0,
            updated_at: 0,
            deleted_at: None,
            amount_units: amount as i64,
        }
    }

    /// A snapshot of `tenants` and `budgets`.
    pub(crate) fn policy_with(tenants: Vec<Tenant>, budgets: Vec<Budget>) -> Policy {
        Policy::compile(
            PolicySources {
                tenants,
                budgets,
                ..PolicySources::default()
            },
            1,
        )
    }

    #[test]
    fn budgets_are_compiled_per_tenant_and_indexed_by_scope_and_measure() {
        use crate::ledger::budgets::{BudgetOverride, SessionPeriod};
        let lifetime = Period::Session(SessionPeriod::Session);
        let minute = Period::Window { window_seconds: 60 };
        let mut raised = budget(
            Some("acme"),
            "per-session",
            Scope::Session,
            Measure::Requests,
            lifetime,
            5,
        );
        raised.overrides.push(BudgetOverride {
            id: "o".into(),
            amount: crate::ledger::budgets::Amount::Count(8),
            expires_at: i64::MAX,
            approval_id: "a".into(),
            created_at: 0,
            units: 8,
        });
        let mut soft = budget(
            Some("acme"),
            "session-rpm",
            Scope::Session,
            Measure::Requests,
            minute,
            10,
        );
        soft.enforcement = Enforcement::Soft;
        let mut retired = budget(
            Some("acme"),
            "old",
            Scope::Session,
            Measure::Requests,
            minute,
            1,
        );
        retired.deleted_at = Some(1);
        let policy = policy_with(
            vec![
                tenant("acme", TenantStatus::Active, &[]),
                tenant("beta", TenantStatus::Active, &[]),
            ],
            vec![
                raised,
                soft,
                retired,
                budget(
                    Some("acme"),
                    "tenant-daily",
                    Scope::Tenant,
                    Measure::Requests,
                    minute,
                    100,
                ),
                budget(
                    Some("acme"),
                    "session-tokens",
                    Scope::Session,
                    Measure::Tokens,
                    lifetime,
                    50_000,
                ),
                budget(
                    Some("gone"),
                    "orphan",
                    Scope::Tenant,
                    Measure::Requests,
                    minute,
                    1,
                ),
                budget(
                    None,
                    "everyone",
                    Scope::Global,
                    Measure::Requests,
                    minute,
                    1_000,
                ),
            ],
        );
        let acme = policy.tenant("acme").unwrap();
        let names =
            |budgets: &[BudgetPolicy]| budgets.iter().map(|b| b.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(acme.budgets()),
            [
                "per-session",
                "session-rpm",
                "session-tokens",
                "tenant-daily"
            ]
        );
        assert_eq!(
            names(acme.session_request_budgets()),
            ["per-session", "session-rpm"]
        );
        // Tenant request budgets and token budgets are settled with usage; session request
        // budgets count on the request path.
        assert_eq!(
            names(acme.spend_budgets()),
            ["session-tokens", "tenant-daily"]
        );
        let per_session = &acme.session_request_budgets()[0];
        assert_eq!(
            (per_session.limit, per_session.hard, per_session.period),
            (8, true, lifetime),
            "the override is in force"
        );
        assert!(!acme.session_request_budgets()[1].hard);
        assert!(policy.tenant("beta").unwrap().budgets().is_empty());
        assert_eq!(names(policy.global_budgets()), ["everyone"]);
    }

    #[test]
    fn tenants_are_found_by_slug_with_their_status_and_settings() {
        let policy = policy_of(vec![
            tenant("acme", TenantStatus::Active, &[]),
            tenant("beta", TenantStatus::Pending, &[]),
        ]);
        let acme = policy.tenant("acme").unwrap();
        assert!(acme.is_active());
        assert_eq!(acme.currency.as_str(), "USD");
        assert_eq!(acme.timezone.iana_name(), Some("Europe/Berlin"));
        assert_eq!(acme.cost_centre.as_deref(), Some("R&D-42"));
        assert!(!policy.tenant("beta").unwrap().is_active());
        assert!(policy.tenant("nobody").is_none());
        assert_eq!(policy.tenant_count(), 2);
        assert_eq!(policy.generation(), 1);
    }

    #[test]
    fn only_granted_models_may_be_used() {
        let policy = policy_of(vec![tenant(
            "acme",
            TenantStatus::Active,
            &["gpt-x", "claude-sonnet", "claude-sonnet"],
        )]);
        let acme = policy.tenant("acme").unwrap();
        assert!(acme.may_use("claude-sonnet"));
        assert!(acme.may_use("gpt-x"));
        assert!(!acme.may_use("claude-opus"));
        assert!(!acme.may_use(""));
        assert_eq!(acme.models(), ["claude-sonnet", "gpt-x"]);
    }

    #[test]
    fn a_tenant_with_an_unusable_record_is_left_out() {
        let mut broken = tenant("broken", TenantStatus::Active, &[]);
        broken.timezone = "Mars/Olympus".into();
        let mut odd = tenant("odd", TenantStatus::Active, &[]);
        odd.currency = "dollars".into();
        let policy = policy_of(vec![broken, odd, tenant("fine", TenantStatus::Active, &[])]);
        assert!(policy.tenant("broken").is_none());
        assert!(policy.tenant("odd").is_none());
        assert!(policy.tenant("fine").is_some());
    }

    #[test]
    fn the_empty_policy_knows_no_tenant() {
        let current = empty();
        assert!(current.load().tenant("acme").is_none());
        assert_eq!(current.load().generation(), 0);
    }
}
