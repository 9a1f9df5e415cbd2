//! Tenant checks for domains with a `quota:` block, made before a descriptor's ordinary
//! rules. Descriptors without the tenant key, and domains without the block, never come
//! here.
//!
//! For a descriptor carrying the tenant key, in order:
//! 1. the tenant is in the policy and active, else it is refused as
//!    [`TENANT_NOT_ACTIVE`] (the body's `status` says `unknown`, `pending` or `suspended`);
//! 2. when it also carries the model key, the model is granted to the tenant, else it is
//!    refused as [`MODEL_NOT_APPROVED`].
//!
//! A refused descriptor answers OVER_LIMIT with `current_limit.name` set to the reason
//! (and a limit of 0 with no unit), charges no counter, and makes the whole call
//! OVER_LIMIT; the first refusal's JSON explanation becomes the response's `raw_body`. An
//! admitted one goes on to the rules its entries match, as in any domain.
//!
//! An admitted descriptor is then charged by what it carries ([`Admitted::charges`]):
//! - the tenant key and no other quota key: every plan request limit (`Plan.requests`), a
//!   fixed window aligned to the epoch per tenant and window length (counter tag
//!   `plan~<seconds>`), refused as `plan-requests-<seconds>s` ([`plan_limit_name`]) with a
//!   JSON body `{"error":"rate_limited","tenant":..,"limit":..,"window_seconds":..,
//!   "resets_at":<RFC 3339 in the tenant's timezone>}`;
//! - the tenant and session keys (no model): every session-scope request budget of the
//!   tenant, per session: a lifetime budget (`period: "session"`) counts in a counter that
//!   is forgotten once the session has been idle for the session idle TTL
//!   (`LimiterOptions::session_idle_ttl`, 30 minutes by default; tag `budget~<id>~session`),
//!   a windowed one in fixed windows (tag `budget~<id>~<seconds>`). A hard budget refuses
//!   with `current_limit.name` = the budget's name and the body [`SESSION_QUOTA_BODY`];
//!   a soft one only counts.
//!
//! Descriptors carrying the token type key are stream-done usage ([`Checked::Usage`]):
//! never tenant-checked nor request-counted (a tenant suspended mid-stream is still
//! charged); [`super::budget`] settles them. Token and cost budgets guard admitted
//! descriptors naming a model or a session, also in [`super::budget`].
//!
//! Extension point: a check that can refuse from the policy alone adds a [`Refusal`]
//! variant here; one that needs counters adds a [`QuotaLimit`] in [`Admitted::charges`],
//! which the limiter plans into the same store batch as the rules' limits.

use std::time::Duration;

use super::Code;
use super::request::{CurrentLimit, Descriptor, Status};
use crate::ledger::tenants::TenantStatus;
pub use crate::policy::{Explain, QuotaLimit, QuotaPeriod, plan_limit_name};
use crate::policy::{Policy, TenantPolicy};
use crate::rules::QuotaKeys;
use crate::telemetry::PolicyStats;

/// `current_limit.name` of a descriptor whose tenant is unknown, pending or suspended.
pub const TENANT_NOT_ACTIVE: &str = "tenant_not_active";
/// `current_limit.name` of a descriptor naming a model not granted to its tenant.
pub const MODEL_NOT_APPROVED: &str = "model_not_approved";

/// The `raw_body` of a refusal by a session request budget (the MCP session quota).
pub const SESSION_QUOTA_BODY: &str = "Too Many Requests for this MCP session.";
/// `raw_body` error code of a plan request limit's refusal.
pub const RATE_LIMITED: &str = "rate_limited";
/// How long an idle session's lifetime counters live when nothing says otherwise.
pub const DEFAULT_SESSION_IDLE_TTL: Duration = Duration::from_secs(30 * 60);

/// The quota entries one descriptor carries, by meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaEntries<'a> {
    pub tenant: &'a str,
    pub session: Option<&'a str>,
    pub model: Option<&'a str>,
    pub token_type: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub estimate: Option<&'a str>,
}

impl<'a> QuotaEntries<'a> {
    /// Reads the entries `keys` names; `None` without a tenant entry. The first entry of
    /// each key counts.
    pub fn of(keys: &QuotaKeys, descriptor: &Descriptor<'a>) -> Option<QuotaEntries<'a>> {
        let find = |key: &str| {
            descriptor
                .entries
                .iter()
                .find(|(k, _)| *k == key)
                .map(|&(_, v)| v)
        };
        Some(QuotaEntries {
            tenant: find(&keys.tenant)?,
            session: find(&keys.session),
            model: find(&keys.model),
            token_type: find(&keys.token_type),
            request_id: find(&keys.request_id),
            estimate: find(&keys.estimate),
        })
    }
}

/// A descriptor that passed the tenant checks.
#[derive(Debug, Clone, Copy)]
pub struct Admitted<'a, 'p> {
    pub tenant: &'p TenantPolicy,
    pub entries: QuotaEntries<'a>,
}

/// What the tenant checks made of one descriptor of a quota domain.
#[derive(Debug, Clone, Copy)]
pub enum Checked<'a, 'p> {
    Admitted(Admitted<'a, 'p>),
    Refused(Refusal<'a>),
    /// Stream-done usage (it carries the token type key): no tenant check, no request
    /// counting, so a tenant suspended mid-stream is still charged for what it used
    /// (settled by [`super::budget`]).
    Usage(QuotaEntries<'a>),
}

impl QuotaLimit {
    /// The refusal's `raw_body` and whether it is JSON; `resets_at` is the end of the
    /// window in seconds since the epoch (windowed limits).
    pub fn body(&self, tenant: &str, resets_at: Option<u64>) -> (String, bool) {
        match &self.explain {
            Explain::Session => (SESSION_QUOTA_BODY.to_owned(), false),
            Explain::Plan { timezone } => {
                let window = match self.period {
                    QuotaPeriod::Window(seconds) => seconds,
                    QuotaPeriod::Session => 0,
                };
                let resets_at = resets_at
                    .and_then(|secs| jiff::Timestamp::from_second(i64::try_from(secs).ok()?).ok())
                    .map(|ts| {
                        ts.to_zoned(timezone.clone())
                            .strftime("%Y-%m-%dT%H:%M:%S%:z")
                            .to_string()
                    })
                    .unwrap_or_default();
                let body = format!(
                    r#"{{"error":"{RATE_LIMITED}","tenant":{},"limit":{},"window_seconds":{window},"resets_at":"{resets_at}"}}"#,
                    serde_json::Value::from(tenant),
                    self.limit,
                );
                (body, true)
            }
        }
    }
}

/// The counted limits of one admitted descriptor, with the entries their keys use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Charges<'a, 'p> {
    pub tenant: &'a str,
    pub session: Option<&'a str>,
    /// Compiled with the policy: planning them allocates nothing.
    pub limits: &'p [QuotaLimit],
}

impl<'a, 'p> Admitted<'a, 'p> {
    /// The limits this descriptor is charged against, by the keys it carries (see the
    /// module doc). Other shapes charge nothing here yet.
    pub fn charges(&self) -> Charges<'a, 'p> {
        let e = &self.entries;
        let only_tenant = e.session.is_none()
            && e.model.is_none()
            && e.request_id.is_none()
            && e.estimate.is_none();
        let (session, limits) = match (e.session, e.model) {
            _ if only_tenant => (None, self.tenant.plan_limits()),
            // Token and cost budgets are guarded apart, in one budget step per call.
            (Some(session), None) => (Some(session), self.tenant.session_limits()),
            _ => (None, &[][..]),
        };
        Charges {
            tenant: e.tenant,
            session,
            limits,
        }
    }
}

/// Why a descriptor is refused before its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal<'a> {
    /// Not in the policy (`None`), or pending or suspended.
    TenantNotActive {
        tenant: &'a str,
        status: Option<TenantStatus>,
    },
    /// The model is not granted to the (active) tenant.
    ModelNotApproved { tenant: &'a str, model: &'a str },
}

/// Checks one descriptor of a quota domain: `None` when it carries no tenant entry (its
/// rules apply as usual), usage when it carries the token type key, else whether it may
/// go on to its rules.
pub fn check<'a, 'p>(
    keys: &QuotaKeys,
    policy: &'p Policy,
    descriptor: &Descriptor<'a>,
) -> Option<Checked<'a, 'p>> {
    let entries = QuotaEntries::of(keys, descriptor)?;
    if entries.token_type.is_some() {
        return Some(Checked::Usage(entries));
    }
    Some(match admit_entries(policy, entries) {
        Ok(admitted) => Checked::Admitted(admitted),
        Err(refusal) => Checked::Refused(refusal),
    })
}

/// The tenant checks alone, whatever the descriptor carries: `None` without a tenant
/// entry, else whether it may go on to its rules.
pub fn admit<'a, 'p>(
    keys: &QuotaKeys,
    policy: &'p Policy,
    descriptor: &Descriptor<'a>,
) -> Option<Result<Admitted<'a, 'p>, Refusal<'a>>> {
    Some(admit_entries(policy, QuotaEntries::of(keys, descriptor)?))
}

fn admit_entries<'a, 'p>(
    policy: &'p Policy,
    entries: QuotaEntries<'a>,
) -> Result<Admitted<'a, 'p>, Refusal<'a>> {
    let tenant = match policy.tenant(entries.tenant) {
        Some(tenant) if tenant.is_active() => tenant,
        other => {
            return Err(Refusal::TenantNotActive {
                tenant: entries.tenant,
                status: other.map(|t| t.status),
            });
        }
    };
    if let Some(model) = entries.model
        && !tenant.may_use(model)
    {
        return Err(Refusal::ModelNotApproved {
            tenant: entries.tenant,
            model,
        });
    }
    Ok(Admitted { tenant, entries })
}

impl Refusal<'_> {
    /// The reason, as `current_limit.name` and the body's `error`.
    pub fn name(&self) -> &'static str {
        match self {
            Refusal::TenantNotActive { .. } => TENANT_NOT_ACTIVE,
            Refusal::ModelNotApproved { .. } => MODEL_NOT_APPROVED,
        }
    }

    /// The descriptor's answer: OVER_LIMIT against a named limit of 0.
    pub fn status(&self) -> Status {
        Status {
            code: Code::OverLimit,
            current_limit: Some(CurrentLimit {
                requests_per_unit: 0,
                unit: None,
                name: Some(self.name().to_owned()),
            }),
            limit_remaining: 0,
            duration_until_reset: None,
        }
    }

    /// The JSON explanation Envoy sends to the client as the 429's body; fields in a fixed
    /// order (`error` first), whatever serde_json's map ordering.
    pub fn body(&self) -> String {
        let text = |s: &str| serde_json::Value::from(s).to_string();
        match *self {
            Refusal::TenantNotActive { tenant, status } => format!(
                r#"{{"error":"{TENANT_NOT_ACTIVE}","tenant":{},"status":"{}"}}"#,
                text(tenant),
                status.map_or("unknown", TenantStatus::as_str)
            ),
            Refusal::ModelNotApproved { tenant, model } => {
                format!(
                    r#"{{"error":"{MODEL_NOT_APPROVED}","tenant":{},"model":{}}}"#,
                    text(tenant),
                    text(model)
                )
            }
        }
    }

    /// Counts the refusal by reason.
    pub fn count(&self, stats: &PolicyStats) {
        match self {
            Refusal::TenantNotActive { .. } => stats.refused_tenant_not_active.increment(1),
            Refusal::ModelNotApproved { .. } => stats.refused_model_not_approved.increment(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::tests::{policy_of, tenant};

    fn descriptor<'a>(entries: &[(&'a str, &'a str)]) -> Descriptor<'a> {
        Descriptor {
            entries: entries.to_vec(),
            ..Descriptor::default()
        }
    }

    fn policy() -> Policy {
        policy_of(vec![
            tenant("acme", TenantStatus::Active, &["claude-sonnet"]),
            tenant("newco", TenantStatus::Pending, &["claude-sonnet"]),
            tenant("gone", TenantStatus::Suspended, &[]),
        ])
    }

    fn check<'a>(entries: &[(&'a str, &'a str)]) -> Option<Result<&'static str, Refusal<'a>>> {
        let policy = policy();
        admit(&QuotaKeys::default(), &policy, &descriptor(entries)).map(|r| r.map(|_| "admitted"))
    }

    #[test]
    fn a_descriptor_without_the_tenant_key_is_not_checked() {
        assert_eq!(check(&[("model", "claude-sonnet")]), None);
        assert_eq!(check(&[("generic", "x")]), None);
    }

    #[test]
    fn an_active_tenant_with_a_granted_model_is_admitted() {
        assert_eq!(check(&[("tenant_id", "acme")]), Some(Ok("admitted")));
        assert_eq!(
            check(&[("tenant_id", "acme"), ("model", "claude-sonnet")]),
            Some(Ok("admitted"))
        );
        assert_eq!(
            check(&[("tenant_id", "acme"), ("session_id", "s-1")]),
            Some(Ok("admitted"))
        );
    }

    #[test]
    fn unknown_pending_and_suspended_tenants_are_refused_with_their_status() {
        for (id, status) in [
            ("nobody", None),
            ("newco", Some(TenantStatus::Pending)),
            ("gone", Some(TenantStatus::Suspended)),
        ] {
            assert_eq!(
                check(&[("tenant_id", id), ("model", "claude-sonnet")]),
                Some(Err(Refusal::TenantNotActive { tenant: id, status }))
            );
        }
    }

    #[test]
    fn a_model_not_granted_is_refused() {
        assert_eq!(
            check(&[("tenant_id", "acme"), ("model", "claude-opus")]),
            Some(Err(Refusal::ModelNotApproved {
                tenant: "acme",
                model: "claude-opus"
            }))
        );
    }

    #[test]
    fn the_keys_come_from_the_domain_configuration() {
        let keys = QuotaKeys {
            tenant: "org".into(),
            model: "llm".into(),
            ..QuotaKeys::default()
        };
        let policy = policy();
        let entries = [("org", "acme"), ("llm", "gpt"), ("model", "claude-sonnet")];
        let refused = admit(&keys, &policy, &descriptor(&entries))
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.name(), MODEL_NOT_APPROVED);
        assert!(admit(&keys, &policy, &descriptor(&[("tenant_id", "nobody")])).is_none());
    }

    #[test]
    fn every_quota_entry_is_read_by_meaning() {
        let entries = [
            ("request_id", "r-9"),
            ("tenant_id", "acme"),
            ("model", "m"),
            ("session_id", "s"),
            ("token_type", "input"),
            ("estimate", "1200"),
        ];
        let read = QuotaEntries::of(&QuotaKeys::default(), &descriptor(&entries)).unwrap();
        assert_eq!(
            read,
            QuotaEntries {
                tenant: "acme",
                session: Some("s"),
                model: Some("m"),
                token_type: Some("input"),
                request_id: Some("r-9"),
                estimate: Some("1200"),
            }
        );
    }

    #[test]
    fn refusals_explain_themselves_in_json() {
        let unknown = Refusal::TenantNotActive {
            tenant: "x\"y",
            status: None,
        };
        let body: serde_json::Value = serde_json::from_str(&unknown.body()).unwrap();
        assert_eq!(
            body,
            json!({"error": "tenant_not_active", "tenant": "x\"y", "status": "unknown"})
        );
        let pending = Refusal::TenantNotActive {
            tenant: "acme",
            status: Some(TenantStatus::Pending),
        };
        assert_eq!(
            pending.body(),
            r#"{"error":"tenant_not_active","tenant":"acme","status":"pending"}"#
        );
        let model = Refusal::ModelNotApproved {
            tenant: "acme",
            model: "m",
        };
        let body: serde_json::Value = serde_json::from_str(&model.body()).unwrap();
        assert_eq!(
            body,
            json!({"error": "model_not_approved", "tenant": "acme", "model": "m"})
        );
        let status = model.status();
        assert_eq!(status.code, Code::OverLimit);
        assert_eq!(
            status.current_limit.unwrap().name.as_deref(),
            Some(MODEL_NOT_APPROVED)
        );
    }
}

/// The whole decision path of a quota domain, on the memory store.
#[cfg(test)]
mod decide_tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use arc_swap::{ArcSwap, ArcSwapOption};

    use super::*;
    use crate::clock::ManualClock;
    use crate::limiter::{Decision, Limiter, LimiterOptions, Request};
    use crate::policy::tests::{policy_of, tenant};
    use crate::rules::load::{LoadOptions, compile};
    use crate::store::{MemoryStore, Store};
    use crate::telemetry::Metrics;

    const RULES: &str = "
domain: ai-gateway
quota: {}
descriptors:
  - key: tenant_id
    rate_limit: {unit: minute, requests_per_unit: 1, name: tenant-rpm}
  - key: generic
    rate_limit: {unit: minute, requests_per_unit: 1}
---
";

    fn limiter_with(yaml: &str, options: LimiterOptions, policy: Policy) -> Limiter {
        let metrics = Metrics::new();
        let files: Vec<(PathBuf, String)> = yaml
            .split("---\n")
            .filter(|t| !t.trim().is_empty())
            .enumerate()
            .map(|(i, t)| (PathBuf::from(format!("{i}.yaml")), t.to_owned()))
            .collect();
        let rules = compile(&files, &LoadOptions::default(), &metrics).unwrap();
        let clock = Arc::new(ManualClock::at_secs(1_800_000_000));
        let store = Store::Memory(MemoryStore::new(clock.clone()));
        Limiter::new(
            Arc::new(ArcSwapOption::from_pointee(rules)),
            store,
            clock,
            metrics,
            options,
        )
        .with_policy(Arc::new(ArcSwap::from_pointee(policy)))
    }

    fn limiter(policy: Policy) -> Limiter {
        limiter_with(RULES, LimiterOptions::default(), policy)
    }

    fn acme(status: TenantStatus) -> Policy {
        policy_of(vec![tenant("acme", status, &["claude-sonnet"])])
    }

    async fn decide(limiter: &Limiter, domain: &str, descriptors: &[&[(&str, &str)]]) -> Decision {
        let request = Request {
            domain,
            descriptors: descriptors
                .iter()
                .map(|entries| Descriptor {
                    entries: entries.to_vec(),
                    ..Descriptor::default()
                })
                .collect(),
            hits_addend: 0,
        };
        limiter.decide(&request).await.unwrap()
    }

    fn name(decision: &Decision, i: usize) -> Option<&str> {
        decision.statuses[i].current_limit.as_ref()?.name.as_deref()
    }

    #[tokio::test]
    async fn a_pending_tenant_is_refused_with_a_json_body_and_charges_nothing() {
        let limiter = limiter(acme(TenantStatus::Pending));
        let refused = decide(
            &limiter,
            "ai-gateway",
            &[&[("tenant_id", "acme")], &[("generic", "g")]],
        )
        .await;
        assert_eq!(refused.overall_code, Code::OverLimit);
        assert_eq!(refused.statuses[0].code, Code::OverLimit);
        assert_eq!(name(&refused, 0), Some(TENANT_NOT_ACTIVE));
        assert_eq!(
            refused.statuses[0].current_limit.as_ref().unwrap().unit,
            None
        );
        assert_eq!(
            refused.statuses[1].code,
            Code::Ok,
            "ordinary rules still apply beside it"
        );
        assert_eq!(
            refused.raw_body.as_deref(),
            Some(r#"{"error":"tenant_not_active","tenant":"acme","status":"pending"}"#)
        );
        assert!(
            refused
                .response_headers
                .contains(&("content-type".into(), "application/json".into()))
        );
        // Activated, the tenant's first call of the minute is its first counted one.
        limiter.policy().store(Arc::new(acme(TenantStatus::Active)));
        let admitted = decide(&limiter, "ai-gateway", &[&[("tenant_id", "acme")]]).await;
        assert_eq!(admitted.overall_code, Code::Ok);
        assert_eq!(admitted.raw_body, None);
        assert!(admitted.response_headers.is_empty());
        // Its rules apply as usual: the second call is over the tenant's own limit.
        let limited = decide(&limiter, "ai-gateway", &[&[("tenant_id", "acme")]]).await;
        assert_eq!(limited.overall_code, Code::OverLimit);
        assert_eq!(name(&limited, 0), Some("tenant-rpm"));
        assert_eq!(limited.raw_body, None);
    }

    #[tokio::test]
    async fn unknown_and_suspended_tenants_and_ungranted_models_are_refused() {
        let limiter = limiter(policy_of(vec![
            tenant("acme", TenantStatus::Active, &["claude-sonnet"]),
            tenant("gone", TenantStatus::Suspended, &["claude-sonnet"]),
        ]));
        let unknown = decide(&limiter, "ai-gateway", &[&[("tenant_id", "nobody")]]).await;
        assert_eq!(
            unknown.raw_body.as_deref(),
            Some(r#"{"error":"tenant_not_active","tenant":"nobody","status":"unknown"}"#)
        );
        let gone = decide(
            &limiter,
            "ai-gateway",
            &[&[("tenant_id", "gone"), ("model", "claude-sonnet")]],
        )
        .await;
        assert_eq!(
            gone.raw_body.as_deref(),
            Some(r#"{"error":"tenant_not_active","tenant":"gone","status":"suspended"}"#)
        );
        let model = decide(
            &limiter,
            "ai-gateway",
            &[&[("tenant_id", "acme"), ("model", "claude-opus")]],
        )
        .await;
        assert_eq!(model.overall_code, Code::OverLimit);
        assert_eq!(name(&model, 0), Some(MODEL_NOT_APPROVED));
        assert_eq!(
            model.raw_body.as_deref(),
            Some(r#"{"error":"model_not_approved","tenant":"acme","model":"claude-opus"}"#)
        );
        let granted = decide(
            &limiter,
            "ai-gateway",
            &[&[("tenant_id", "acme"), ("model", "claude-sonnet")]],
        )
        .await;
        assert_eq!(granted.overall_code, Code::Ok);
        let text = limiter.metrics.render();
        assert!(
            text.contains(r#"tollgate_quota_refused{reason="tenant_not_active"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tollgate_quota_refused{reason="model_not_approved"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_first_refusal_in_request_order_gives_the_body() {
        let limiter = limiter(acme(TenantStatus::Active));
        let decision = decide(
            &limiter,
            "ai-gateway",
            &[
                &[("tenant_id", "acme"), ("model", "gpt")],
                &[("tenant_id", "nobody")],
            ],
        )
        .await;
        assert_eq!(name(&decision, 0), Some(MODEL_NOT_APPROVED));
        assert_eq!(name(&decision, 1), Some(TENANT_NOT_ACTIVE));
        assert!(decision.raw_body.unwrap().contains(MODEL_NOT_APPROVED));
    }

    #[tokio::test]
    async fn domains_without_quota_and_descriptors_without_a_tenant_are_untouched() {
        let rules = format!(
            "{RULES}domain: plain\ndescriptors:\n  - key: tenant_id\n    rate_limit: {{unit: minute, requests_per_unit: 1}}\n"
        );
        let limiter = limiter_with(&rules, LimiterOptions::default(), Policy::default());
        let plain = decide(&limiter, "plain", &[&[("tenant_id", "nobody")]]).await;
        assert_eq!(plain.overall_code, Code::Ok);
        assert_eq!(plain.raw_body, None);
        let no_tenant = decide(
            &limiter,
            "ai-gateway",
            &[&[("generic", "g")], &[("model", "anything")]],
        )
        .await;
        assert_eq!(no_tenant.overall_code, Code::Ok);
    }

    #[tokio::test]
    async fn global_shadow_mode_passes_the_call_and_sends_no_body() {
        let options = LimiterOptions {
            global_shadow_mode: true,
            ..LimiterOptions::default()
        };
        let limiter = limiter_with(RULES, options, Policy::default());
        let decision = decide(&limiter, "ai-gateway", &[&[("tenant_id", "nobody")]]).await;
        assert_eq!(decision.overall_code, Code::Ok);
        assert_eq!(
            decision.statuses[0].code,
            Code::OverLimit,
            "the status still says what would happen"
        );
        assert_eq!(decision.raw_body, None);
    }
}
