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
}

impl PolicySources {
    /// Reads every source from the ledger.
    pub async fn read(ledger: &Ledger) -> Result<PolicySources, LedgerError> {
        Ok(PolicySources { tenants: ledger.all_tenants().await? })
    }
}

/// One immutable snapshot of the policy.
#[derive(Debug, Default)]
pub struct Policy {
    tenants: HashMap<String, TenantPolicy>,
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
    /// Plan limits, as stored (enforcement is a later step; see `limiter::quota`).
    pub plan: Plan,
    /// Granted models, sorted.
    models: Box<[String]>,
}

impl TenantPolicy {
    /// Whether the tenant may send traffic at all.
    pub fn is_active(&self) -> bool {
        self.status == TenantStatus::Active
    }

    /// Whether `model` is granted to the tenant.
    pub fn may_use(&self, model: &str) -> bool {
        self.models.binary_search_by(|m| m.as_str().cmp(model)).is_ok()
    }

    /// The granted models, sorted.
    pub fn models(&self) -> &[String] {
        &self.models
    }
}

impl Policy {
    /// Compiles `sources` into snapshot number `generation`. A record the snapshot cannot
    /// use (a currency or timezone that no longer parses) leaves its tenant out, so the
    /// tenant is refused as unknown rather than served with a guess; it is logged.
    pub fn compile(sources: PolicySources, generation: u64) -> Policy {
        let mut tenants = HashMap::with_capacity(sources.tenants.len());
        for tenant in sources.tenants {
            match TenantPolicy::compile(tenant) {
                Ok(compiled) => {
                    tenants.insert(compiled.id.clone(), compiled);
                }
                Err((id, problem)) => tracing::error!(tenant = %id, %problem, "tenant left out of the policy"),
            }
        }
        Policy { tenants, generation }
    }

    /// The tenant with slug `id`. A hash lookup: no lock, no allocation.
    pub fn tenant(&self, id: &str) -> Option<&TenantPolicy> {
        self.tenants.get(id)
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
    fn compile(tenant: Tenant) -> Result<TenantPolicy, (String, String)> {
        let currency = tenant.currency.parse::<Currency>().map_err(|e| (tenant.id.clone(), e))?;
        let timezone = jiff::tz::TimeZone::get(&tenant.timezone)
            .map_err(|e| (tenant.id.clone(), format!("timezone '{}': {e}", tenant.timezone)))?;
        let mut models = tenant.models;
        models.sort_unstable();
        models.dedup();
        Ok(TenantPolicy {
            id: tenant.id,
            status: tenant.status,
            currency,
            timezone,
            cost_centre: tenant.cost_centre,
            plan: tenant.plan,
            models: models.into_boxed_slice(),
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
        Policy::compile(PolicySources { tenants }, 1)
    }

    #[test]
    fn tenants_are_found_by_slug_with_their_status_and_settings() {
        let policy =
            policy_of(vec![tenant("acme", TenantStatus::Active, &[]), tenant("beta", TenantStatus::Pending, &[])]);
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
        let policy =
            policy_of(vec![tenant("acme", TenantStatus::Active, &["gpt-x", "claude-sonnet", "claude-sonnet"])]);
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
