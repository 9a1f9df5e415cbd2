//! The limiter: matches a call's descriptors against the rules, charges the counters,
//! and forms the decision. It knows nothing of gRPC, HTTP or Redis.
//!
//! One call makes at most one store round trip: the counters of all its descriptors go
//! to the store as one batch.

pub mod accounting;
pub mod budget;
pub mod quota;
pub mod request;
pub mod window;

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use self::budget::{Guard, Guarded, SpentSource};
use self::quota::{Charges, Checked, QuotaPeriod, Refusal};
pub use self::request::{
    Code, CurrentLimit, DecideError, Decision, Descriptor, LimitOverride, Request, Status,
};
use self::window::Window;
use crate::alerts::Alerter;
use crate::clock::SharedClock;
use crate::policy::{self, CurrentPolicy};
use crate::rules::tree::{Algorithm, Period};
use crate::rules::watch::CurrentRules;
use crate::rules::{Domain, Limit, Node, Unit};
use crate::store::{CounterKind, CounterUpdate, Store, StoreError, keys};
use crate::telemetry::{Metrics, RuleStat};

/// Names of the optional rate-limit response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNames {
    pub limit: String,
    pub remaining: String,
    pub reset: String,
}

/// How the limiter behaves; filled from the settings.
#[derive(Debug, Clone)]
pub struct LimiterOptions {
    /// Prepended to every counter key.
    pub key_prefix: String,
    /// Fraction of a limit past which hits count as near the limit.
    pub near_limit_ratio: f32,
    /// Force the overall code to OK while statuses still say what would happen.
    pub global_shadow_mode: bool,
    /// Do not count hits that would take a counter past its limit.
    pub stop_incrementing_when_over_limit: bool,
    /// Add `RateLimit-*` headers naming the most constrained limit.
    pub response_headers: Option<HeaderNames>,
    /// Return the domain, descriptors and matched rules' metadata as dynamic metadata.
    pub dynamic_metadata: bool,
    /// Longest wait for the counter store before answering with an error.
    pub store_deadline: Duration,
    /// Keys remembered as over limit for the rest of their window (0 disables).
    pub local_cache_size: usize,
    /// How long a session's lifetime counters outlive its last request.
    pub session_idle_ttl: Duration,
    /// How long an unsettled reservation holds its budgets before it is released.
    pub reservation_ttl: Duration,
    /// How long a settled request id is remembered (a later duplicate is charged again).
    pub settled_ttl: Duration,
}

impl Default for LimiterOptions {
    fn default() -> Self {
        Self {
            key_prefix: String::new(),
            near_limit_ratio: 0.8,
            global_shadow_mode: false,
            stop_incrementing_when_over_limit: false,
            response_headers: None,
            dynamic_metadata: false,
            store_deadline: Duration::from_millis(10),
            local_cache_size: 0,
            session_idle_ttl: quota::DEFAULT_SESSION_IDLE_TTL,
            reservation_ttl: DEFAULT_RESERVATION_TTL,
            settled_ttl: DEFAULT_SETTLED_TTL,
        }
    }
}

/// The policy budget steps see outside quota domains (where they never run).
static NO_POLICY: std::sync::LazyLock<policy::Policy> =
    std::sync::LazyLock::new(policy::Policy::default);

/// Reservation lifetime unless configured: longer than any sane model response.
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(15 * 60);
/// How long settled request ids are remembered unless configured: a week.
pub const DEFAULT_SETTLED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Decides `ShouldRateLimit` calls.
pub struct Limiter {
    rules: CurrentRules,
    store: Store,
    clock: SharedClock,
    metrics: Metrics,
    options: LimiterOptions,
    /// Keys known to be over limit; a key names its window, so stale entries never match.
    over_limit_cache: Option<quick_cache::sync::Cache<String, ()>>,
    /// Tenants and their grants, for domains with a `quota:` block.
    policy: CurrentPolicy,
    /// Raises budget alerts when a settlement crosses a threshold (none: not raised).
    alerter: Option<Alerter>,
    /// Where lost or new budget periods are rebuilt from (none: from zero).
    spent_source: Option<Arc<dyn SpentSource>>,
    /// Signalled after every settlement, so the ledger writer moves it promptly.
    settled: Arc<tokio::sync::Notify>,
    /// Where budget keys live (`store::budget::namespace` of the key prefix).
    budget_namespace: String,
}

/// The limits in force for one descriptor, once matching and `replaces` are done.
enum Applied<'r> {
    /// No limit: nothing matched, a whitelist entry, or every limit replaced.
    Free,
    /// Matched an `unlimited` rule.
    Unlimited,
    Limited(Limited<'r>),
    /// Refused by a quota domain's tenant checks, before any rule.
    Refused(Refusal<'r>),
}

struct Limited<'r> {
    /// The limits in force, in config order.
    limits: Limits<'r>,
    node: Option<&'r Node>,
    /// The entries the counters are keyed by: the descriptor's own, unless
    /// `share_threshold` folds a wildcard's values into its pattern.
    key_entries: Cow<'r, [(&'r str, &'r str)]>,
}

/// A descriptor's limits: borrowed from its node (the common case, nothing copied per
/// call), or a list of their own for a request's override, statistics with request
/// values in their names, or what `replaces` left.
enum Limits<'r> {
    Node(&'r [Arc<Limit>]),
    Owned(Vec<Cow<'r, Limit>>),
}

impl Limits<'_> {
    fn iter(&self) -> impl Iterator<Item = &Limit> {
        let (node, owned): (&[Arc<Limit>], &[Cow<'_, Limit>]) = match self {
            Limits::Node(limits) => (limits, &[]),
            Limits::Owned(limits) => (&[], limits),
        };
        node.iter().map(|l| &**l).chain(owned.iter().map(|l| &**l))
    }

    fn len(&self) -> usize {
        match self {
            Limits::Node(limits) => limits.len(),
            Limits::Owned(limits) => limits.len(),
        }
    }
}

impl<'r> Applied<'r> {
    fn node(&self) -> Option<&'r Node> {
        match self {
            Applied::Limited(l) => l.node,
            _ => None,
        }
    }

    fn refusal(&self) -> Option<&Refusal<'r>> {
        match self {
            Applied::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// The moment a call is decided, read once so every limit sees the same time.
#[derive(Clone, Copy)]
struct Now {
    secs: u64,
    micros: u64,
}

/// Where one limit's count comes from.
enum Source {
    /// The store's answer to update `i` of the batch.
    Store(usize),
    /// The local cache knows the key is over limit for the rest of its window.
    KnownOverLimit,
}

/// One limit of one descriptor, planned before the store call.
struct Plan {
    source: Source,
    /// Seconds to the end of the window (windowed algorithms).
    until_reset: u64,
    /// The start of the window (windowed algorithms), the last part of its counter key.
    window_start: u64,
}

/// One limit's answer.
struct Verdict {
    code: Code,
    remaining: u64,
    until_reset: u64,
    /// The hits past the limit (what shadow mode reports).
    over: u64,
}

impl Limiter {
    /// A limiter over the given rules and store.
    pub fn new(
        rules: CurrentRules,
        store: Store,
        clock: SharedClock,
        metrics: Metrics,
        options: LimiterOptions,
    ) -> Self {
        let budget_namespace = crate::store::budget::namespace(&options.key_prefix);
        let over_limit_cache = (options.local_cache_size > 0)
            .then(|| quick_cache::sync::Cache::new(options.local_cache_size));
        Self {
            rules,
            store,
            clock,
            metrics,
            options,
            over_limit_cache,
            policy: policy::empty(),
            alerter: None,
            spent_source: None,
            settled: Arc::new(tokio::sync::Notify::new()),
            budget_namespace,
        }
    }

    /// Rebuilds budget periods from `source` (the ledger) when their counters are missing.
    pub fn with_spent_source(mut self, source: Arc<dyn SpentSource>) -> Self {
        self.spent_source = Some(source);
        self
    }

    /// Signals `waker` after every settlement (the ledger writer's, so it moves the event
    /// at once).
    pub fn with_settle_waker(mut self, waker: Arc<tokio::sync::Notify>) -> Self {
        self.settled = waker;
        self
    }

    /// Reads tenants from `policy` in quota domains (without it, every tenant is unknown).
    pub fn with_policy(mut self, policy: CurrentPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Raises budget alerts through `alerter` when settlements cross thresholds.
    pub fn with_alerter(mut self, alerter: Alerter) -> Self {
        self.alerter = Some(alerter);
        self
    }

    /// Where budget alerts go, if anywhere.
    pub fn alerter(&self) -> Option<&Alerter> {
        self.alerter.as_ref()
    }

    /// The policy in force (for tests and diagnostics).
    pub fn policy(&self) -> &CurrentPolicy {
        &self.policy
    }

    /// The rules in force (for the config dump and tests).
    pub fn rules(&self) -> &CurrentRules {
        &self.rules
    }

    /// The counter store (for health checks).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Decides one call.
    pub async fn decide(&self, request: &Request<'_>) -> Result<Decision, DecideError> {
        if request.domain.is_empty() {
            return Err(DecideError::EmptyDomain);
        }
        if request.descriptors.is_empty() {
            return Err(DecideError::EmptyDescriptors);
        }
        let rules = self.rules.load_full().ok_or(DecideError::NoRules)?;
        let Some(domain) = rules.domain(request.domain) else {
            let n = request.descriptors.len();
            self.metrics
                .domain_not_found(request.domain)
                .increment(n as u64);
            return Ok(self.finish(request, &[], vec![Status::default(); n]));
        };
        // Quota domains check tenants first; the snapshot is only borrowed while they do.
        // A quota domain holds the snapshot for the whole call: its compiled limits are
        // planned and judged below without copying them.
        let policy = domain
            .quota
            .as_ref()
            .map(|keys| (keys, self.policy.load_full()));
        let mut applied = Vec::with_capacity(request.descriptors.len());
        let mut charges: Vec<Charges<'_, '_>> = Vec::new();
        let mut guards: Vec<Guard<'_, '_>> = Vec::new();
        let mut usage = Vec::new();
        for (index, d) in request.descriptors.iter().enumerate() {
            if let Some((keys, policy)) = &policy {
                match quota::check(keys, policy, d) {
                    Some(Checked::Refused(refusal)) => {
                        refusal.count(&self.metrics.policy);
                        applied.push(Applied::Refused(refusal));
                        continue;
                    }
                    Some(Checked::Admitted(admitted)) => {
                        let c = admitted.charges();
                        if !c.limits.is_empty() {
                            charges.resize_with(request.descriptors.len(), Charges::default);
                            charges[index] = c;
                        }
                        let estimate = match admitted.entries.estimate {
                            Some(value) => Some(value.trim().parse::<u64>().map_err(|_| {
                                DecideError::InvalidEstimate {
                                    index,
                                    value: value.to_owned(),
                                }
                            })?),
                            None => d.hits_addend.filter(|&n| n > 0),
                        };
                        if budget::Scopes::guarded_by(&admitted.entries).is_some() {
                            guards.push(Guard {
                                index,
                                tenant: admitted.tenant,
                                reservation: admitted.entries.request_id.and(estimate),
                                entries: admitted.entries,
                            });
                        }
                    }
                    // Stream-done usage: settled below, never tenant-checked nor
                    // request-counted.
                    Some(Checked::Usage(entries)) => usage.push((entries, hits_of(request, d))),
                    None => {}
                }
            }
            applied.push(self.resolve(domain, d, index)?);
        }
        drop_replaced(&mut applied);

        let nanos = self.clock.now_nanos();
        let now = Now {
            secs: nanos / 1_000_000_000,
            micros: nanos / 1_000,
        };
        // One plan per limit, descriptor after descriptor (each descriptor's plans are the
        // next `limits.len()` of them), and at most one update per plan.
        let planned = applied
            .iter()
            .map(|a| match a {
                Applied::Limited(limited) => limited.limits.len(),
                _ => 0,
            })
            .sum();
        let mut updates = Vec::with_capacity(planned);
        let mut plans = Vec::with_capacity(planned);
        for (descriptor, applied) in request.descriptors.iter().zip(&applied) {
            if let Applied::Limited(limited) = applied {
                for limit in limited.limits.iter() {
                    plans.push(self.plan(request, descriptor, limited, limit, now, &mut updates));
                }
            }
        }
        let quota_plans: Vec<Vec<Plan>> = charges
            .iter()
            .zip(&request.descriptors)
            .map(|(c, descriptor)| {
                let keys = domain
                    .quota
                    .as_ref()
                    .expect("charges only in quota domains");
                c.limits
                    .iter()
                    .map(|limit| {
                        self.plan_quota(request, descriptor, keys, c, limit, now, &mut updates)
                    })
                    .collect()
            })
            .collect();
        let snapshot = policy.as_ref().map_or(&*NO_POLICY, |(_, p)| &**p);
        let now_ms = nanos / 1_000_000;
        let usage = self.price_usage(snapshot, request.domain, usage, now_ms)?;
        // The counters, the budget guards and the settlements are independent: one
        // round trip's worth of waiting for all three.
        let (befores, guarded, settled) = tokio::join!(
            async {
                if updates.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.apply(updates).await
                }
            },
            async {
                if guards.is_empty() {
                    Ok(Vec::new())
                } else {
                    // Boxed: budget calls are the rare path, and their futures are deep.
                    Box::pin(self.guard(snapshot, &guards, now.secs, now_ms)).await
                }
            },
            async {
                if usage.is_empty() {
                    Ok(())
                } else {
                    Box::pin(self.settle(snapshot, usage, now.secs, now_ms)).await
                }
            },
        );
        let befores = befores?;
        let guarded = guarded?;
        settled?;
        let mut standing: Option<budget::Standing> = None;

        // The first refused descriptor's explanation becomes the raw body.
        let mut explanation: Option<(String, bool)> = None;
        let mut next_plans = plans.as_slice();
        let statuses = request
            .descriptors
            .iter()
            .zip(&applied)
            .enumerate()
            .map(|(i, (descriptor, applied))| {
                let status = match applied {
                    Applied::Free => Status::default(),
                    Applied::Refused(refusal) => refusal.status(),
                    Applied::Unlimited => Status {
                        limit_remaining: u32::MAX,
                        ..Status::default()
                    },
                    Applied::Limited(limited) => {
                        let hits = hits_of(request, descriptor);
                        let plans;
                        (plans, next_plans) = next_plans.split_at(limited.limits.len());
                        self.judge(
                            request.domain,
                            descriptor.is_negative_hits,
                            hits,
                            limited,
                            plans,
                            &befores,
                        )
                    }
                };
                if let Some(refusal) = applied.refusal() {
                    explanation.get_or_insert_with(|| (refusal.body(), true));
                }
                let status = match (charges.get(i), quota_plans.get(i)) {
                    (Some(c), Some(plans)) if !c.limits.is_empty() => {
                        let hits = hits_of(request, descriptor);
                        let (status, refused) = judge_quota(status, hits, c, plans, &befores, now);
                        if refused.is_some() {
                            self.metrics.policy.refused_rate_limited.increment(1);
                        }
                        if explanation.is_none() {
                            explanation = refused;
                        }
                        status
                    }
                    _ => status,
                };
                match guarded.iter().find(|(index, _)| *index == i) {
                    Some((_, Guarded::Refused { name, limit, body }))
                        if status.code == Code::Ok =>
                    {
                        explanation.get_or_insert_with(|| (body.clone(), true));
                        Status {
                            code: Code::OverLimit,
                            current_limit: Some(CurrentLimit {
                                requests_per_unit: u32::try_from(*limit).unwrap_or(u32::MAX),
                                unit: None,
                                name: Some(name.clone()),
                            }),
                            limit_remaining: 0,
                            duration_until_reset: None,
                        }
                    }
                    Some((_, Guarded::Within(Some(s)))) => {
                        if standing.as_ref().is_none_or(|t| s.tighter_than(t)) {
                            standing = Some(s.clone());
                        }
                        status
                    }
                    _ => status,
                }
            })
            .collect();
        let nodes: Vec<Option<&Node>> = applied.iter().map(Applied::node).collect();
        let mut decision = self.finish(request, &nodes, statuses);
        if let Some(s) = standing {
            decision.response_headers.extend(s.headers());
        }
        if decision.overall_code == Code::OverLimit
            && let Some((body, json)) = explanation
        {
            decision.raw_body = Some(body);
            if json {
                // Envoy lets this replace the text/plain of its local reply.
                decision
                    .response_headers
                    .push(("content-type".into(), "application/json".into()));
            }
        }
        Ok(decision)
    }

    /// Lays out the store update for one quota limit of an admitted descriptor.
    #[allow(clippy::too_many_arguments)]
    fn plan_quota(
        &self,
        request: &Request<'_>,
        descriptor: &Descriptor<'_>,
        keys: &crate::rules::QuotaKeys,
        charges: &Charges<'_, '_>,
        limit: &quota::QuotaLimit,
        now: Now,
        updates: &mut Vec<CounterUpdate>,
    ) -> Plan {
        let tenant = (keys.tenant.as_str(), charges.tenant);
        let session = charges
            .session
            .filter(|_| limit.per_session)
            .map(|s| (keys.session.as_str(), s));
        let entries = std::iter::once(tenant).chain(session);
        let prefix = &self.options.key_prefix;
        // Soft limits count every hit; hard ones stop at the limit when the option says so.
        let cap =
            (limit.hard && self.options.stop_incrementing_when_over_limit).then_some(limit.limit);
        let (key, kind, until_reset) = match limit.period {
            QuotaPeriod::Window(seconds) => {
                let window = Window::containing(now.secs, seconds);
                let key = keys::counter_key(
                    prefix,
                    request.domain,
                    entries,
                    &limit.tag,
                    Some(window.start),
                );
                (
                    key,
                    CounterKind::Window {
                        ttl_secs: window.until_reset,
                        cap,
                    },
                    window.until_reset,
                )
            }
            QuotaPeriod::Session => {
                let idle_secs = self.options.session_idle_ttl.as_secs().max(1);
                let key = keys::counter_key(prefix, request.domain, entries, &limit.tag, None);
                (key, CounterKind::Idle { idle_secs, cap }, idle_secs)
            }
        };
        updates.push(CounterUpdate {
            key,
            hits: hits_of(request, descriptor),
            refund: false,
            kind,
        });
        Plan {
            source: Source::Store(updates.len() - 1),
            until_reset,
            window_start: 0,
        }
    }

    /// Counts the hits in the statistics and lays out the store update for one limit.
    fn plan(
        &self,
        request: &Request<'_>,
        descriptor: &Descriptor<'_>,
        limited: &Limited<'_>,
        limit: &Limit,
        now: Now,
        updates: &mut Vec<CounterUpdate>,
    ) -> Plan {
        let hits = hits_of(request, descriptor);
        if descriptor.is_negative_hits {
            limit.stats.add(RuleStat::TotalNegativeHits, hits);
        } else {
            // Counted before the store answers, as the reference does.
            limit.stats.add(RuleStat::TotalHits, hits);
        }
        let key_for = |start: Option<u64>| self.counter_key(request.domain, limited, limit, start);
        let window = Window::of(&limit.period, now.secs);
        let rpu = u64::from(limit.requests_per_unit);
        let (key, kind) = match limit.algorithm {
            Algorithm::FixedWindow => {
                let key = key_for(Some(window.start));
                let cached_over = !descriptor.is_negative_hits
                    && self
                        .over_limit_cache
                        .as_ref()
                        .is_some_and(|c| c.get(&key).is_some());
                if cached_over {
                    return Plan {
                        source: Source::KnownOverLimit,
                        until_reset: window.until_reset,
                        window_start: window.start,
                    };
                }
                let cap = self
                    .options
                    .stop_incrementing_when_over_limit
                    .then_some(rpu);
                (
                    key,
                    CounterKind::Window {
                        ttl_secs: window.until_reset,
                        cap,
                    },
                )
            }
            Algorithm::SlidingWindow => {
                let length = limit.fixed_seconds().unwrap_or(1);
                let kind = CounterKind::Sliding {
                    previous_key: key_for(Some(window.start.saturating_sub(length))),
                    previous_weight_ppm: window::previous_weight_ppm(now.micros, &window, length),
                    // The count serves as the previous window through the next one.
                    ttl_secs: window.until_reset + length,
                    limit: rpu,
                };
                (key_for(Some(window.start)), kind)
            }
            Algorithm::TokenBucket { burst } => {
                let kind = CounterKind::Bucket {
                    now_us: now.micros,
                    interval_us: bucket_interval_us(limit),
                    capacity: burst,
                };
                (key_for(None), kind)
            }
        };
        updates.push(CounterUpdate {
            key,
            hits,
            refund: descriptor.is_negative_hits,
            kind,
        });
        Plan {
            source: Source::Store(updates.len() - 1),
            until_reset: window.until_reset,
            window_start: window.start,
        }
    }

    /// The counter key of `limit` of a descriptor for the window starting at
    /// `window_start` (none for a token bucket).
    fn counter_key(
        &self,
        domain: &str,
        limited: &Limited<'_>,
        limit: &Limit,
        window_start: Option<u64>,
    ) -> String {
        keys::counter_key(
            &self.options.key_prefix,
            domain,
            limited.key_entries.iter().copied(),
            &limit.key_tag,
            window_start,
        )
    }

    /// Judges every limit of a descriptor and answers with the most constrained: the
    /// first over limit, else the one with the least remaining.
    fn judge(
        &self,
        domain: &str,
        refund: bool,
        hits: u64,
        limited: &Limited<'_>,
        plans: &[Plan],
        befores: &[u64],
    ) -> Status {
        let shadow = limited.node.is_some_and(|n| n.shadow_mode);
        let mut chosen: Option<(Verdict, &Limit)> = None;
        for (limit, plan) in limited.limits.iter().zip(plans) {
            let mut verdict = self.verdict(domain, refund, hits, limited, limit, plan, befores);
            if shadow {
                if verdict.code == Code::OverLimit {
                    limit.stats.add(RuleStat::ShadowMode, verdict.over);
                }
                verdict.code = Code::Ok;
            }
            let tighter = match &chosen {
                None => true,
                Some((best, _)) => match (verdict.code, best.code) {
                    (Code::OverLimit, Code::Ok) => true,
                    (Code::Ok, Code::Ok) => verdict.remaining < best.remaining,
                    _ => false,
                },
            };
            if tighter {
                chosen = Some((verdict, limit));
            }
        }
        let Some((verdict, limit)) = chosen else {
            return Status::default();
        };
        Status {
            code: verdict.code,
            current_limit: Some(CurrentLimit {
                requests_per_unit: limit.requests_per_unit,
                unit: Some(limit.unit),
                name: limit.name.clone(),
            }),
            limit_remaining: u32::try_from(verdict.remaining).unwrap_or(u32::MAX),
            duration_until_reset: Some(verdict.until_reset),
        }
    }

    /// One limit's answer, with its statistics.
    #[allow(clippy::too_many_arguments)]
    fn verdict(
        &self,
        domain: &str,
        refund: bool,
        hits: u64,
        limited: &Limited<'_>,
        limit: &Limit,
        plan: &Plan,
        befores: &[u64],
    ) -> Verdict {
        let stats = &limit.stats;
        let capacity = match limit.algorithm {
            Algorithm::TokenBucket { burst } => burst,
            _ => u64::from(limit.requests_per_unit),
        };
        let update = match plan.source {
            Source::KnownOverLimit => {
                stats.add(RuleStat::OverLimit, hits);
                stats.add(RuleStat::OverLimitWithLocalCache, hits);
                return Verdict {
                    code: Code::OverLimit,
                    remaining: 0,
                    until_reset: plan.until_reset,
                    over: hits,
                };
            }
            Source::Store(update) => update,
        };
        let before = befores[update];
        let until_reset = |in_use: u64| match limit.algorithm {
            // A bucket "resets" when it is full again.
            Algorithm::TokenBucket { .. } => (u128::from(in_use)
                * u128::from(bucket_interval_us(limit)))
            .div_ceil(1_000_000)
            .max(1) as u64,
            _ => plan.until_reset,
        };
        if refund {
            // A refund always passes; it reports what is left after it.
            let after = before.saturating_sub(hits);
            return Verdict {
                code: Code::Ok,
                remaining: capacity.saturating_sub(after),
                until_reset: until_reset(after),
                over: 0,
            };
        }
        let threshold = accounting::near_limit_threshold(capacity, self.options.near_limit_ratio);
        let charge = accounting::charge(before, hits, capacity, threshold);
        // Only the statistics that change are touched.
        for (stat, n) in [
            (RuleStat::OverLimit, charge.over_limit),
            (RuleStat::NearLimit, charge.near_limit),
            (RuleStat::WithinLimit, charge.within_limit),
        ] {
            if n > 0 {
                stats.add(stat, n);
            }
        }
        if charge.code == Code::OverLimit
            && limit.algorithm == Algorithm::FixedWindow
            && let Some(cache) = &self.over_limit_cache
        {
            // The key is built again: the update went to the store, and answers over the
            // limit are the rare ones.
            cache.insert(
                self.counter_key(domain, limited, limit, Some(plan.window_start)),
                (),
            );
        }
        let in_use = if charge.code == Code::Ok {
            before + hits
        } else {
            before
        };
        Verdict {
            code: charge.code,
            remaining: charge.remaining,
            until_reset: until_reset(in_use),
            over: charge.over_limit,
        }
    }

    /// Hands the updates to the store (nothing is copied on the way to Redis).
    async fn apply(&self, updates: Vec<CounterUpdate>) -> Result<Vec<u64>, DecideError> {
        self.call_store(self.store.apply_owned(updates)).await
    }

    /// Awaits one store call: the memory store's at once (it runs in this process; its
    /// only wait is the fsync of settled usage, which a deadline would turn into an error
    /// for usage already charged), Redis' within the store deadline. Failures count in
    /// the `redis_error` statistic.
    async fn call_store<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, DecideError> {
        let outcome = match &self.store {
            Store::Memory(_) => call.await,
            Store::Redis(_) => tokio::time::timeout(self.options.store_deadline, call)
                .await
                .unwrap_or(Err(StoreError::Timeout(self.options.store_deadline))),
        };
        outcome.map_err(|e| {
            self.metrics.service.redis_error.increment(1);
            DecideError::Store(e)
        })
    }

    /// Finds the limits for one descriptor: the request's override, else the tree's.
    fn resolve<'r>(
        &self,
        domain: &'r Domain,
        descriptor: &'r Descriptor<'r>,
        index: usize,
    ) -> Result<Applied<'r>, DecideError> {
        if let Some(limit) = descriptor.limit {
            let unit = limit
                .unit
                .ok_or(DecideError::UnknownOverrideUnit { index })?;
            let path: Vec<String> = descriptor
                .entries
                .iter()
                .map(|&(k, v)| {
                    if v.is_empty() {
                        k.to_owned()
                    } else {
                        format!("{k}_{v}")
                    }
                })
                .collect();
            let limit = Limit {
                requests_per_unit: limit.requests_per_unit,
                unit,
                period: Period::Fixed(unit.seconds()),
                algorithm: Algorithm::FixedWindow,
                unlimited: false,
                name: None,
                replaces: Vec::new(),
                listed: false,
                key_tag: String::new(),
                stats: self.metrics.runtime_rule_stats(&domain.name, &path, None),
            };
            return Ok(Applied::Limited(Limited {
                limits: Limits::Owned(vec![Cow::Owned(limit)]),
                node: None,
                key_entries: Cow::Borrowed(&descriptor.entries),
            }));
        }
        let Some((node, plain)) = domain.find_last(descriptor.entries.iter().copied()) else {
            return Ok(Applied::Free);
        };
        if node.limits.is_empty() {
            return Ok(Applied::Free);
        }
        if node.limits.iter().any(|l| l.unlimited) {
            return Ok(Applied::Unlimited);
        }
        if plain {
            // Keyed by the request's own entries, statistics under the config's names.
            return Ok(Applied::Limited(Limited {
                limits: Limits::Node(&node.limits),
                node: Some(node),
                key_entries: Cow::Borrowed(&descriptor.entries),
            }));
        }
        let path = domain
            .find(descriptor.entries.iter().copied())
            .expect("the same entries match the same path");
        let key_entries = path
            .iter()
            .zip(&descriptor.entries)
            .map(|(n, &(key, value))| match (&n.value, n.share_threshold) {
                (Some(pattern), true) => (key, pattern.as_str()),
                _ => (key, value),
            })
            .collect();
        let runtime_path = metric_path(&path, &descriptor.entries);
        let limits = node
            .limits
            .iter()
            .map(|limit| match &runtime_path {
                Some(parts) => {
                    let named = limit.listed.then_some(limit.name.as_deref()).flatten();
                    Cow::Owned(Limit {
                        stats: self.metrics.runtime_rule_stats(&domain.name, parts, named),
                        ..Limit::clone(limit)
                    })
                }
                None => Cow::Borrowed(&**limit),
            })
            .collect();
        Ok(Applied::Limited(Limited {
            limits: Limits::Owned(limits),
            node: Some(node),
            key_entries: Cow::Owned(key_entries),
        }))
    }

    /// Overall code, headers and metadata around the statuses.
    fn finish(
        &self,
        request: &Request<'_>,
        nodes: &[Option<&Node>],
        statuses: Vec<Status>,
    ) -> Decision {
        let is_quota = |i: usize| {
            nodes
                .get(i)
                .copied()
                .flatten()
                .is_some_and(|n| n.quota_mode)
        };
        let over = |s: &Status| s.code == Code::OverLimit;
        let normal_over = statuses
            .iter()
            .enumerate()
            .any(|(i, s)| !is_quota(i) && over(s));
        let mut quotas = statuses
            .iter()
            .enumerate()
            .filter(|(i, _)| is_quota(*i))
            .peekable();
        let quota_exhausted = quotas.peek().is_some() && quotas.all(|(_, s)| over(s));
        let mut overall_code = if normal_over || quota_exhausted {
            Code::OverLimit
        } else {
            Code::Ok
        };
        if overall_code == Code::OverLimit && self.options.global_shadow_mode {
            self.metrics.service.global_shadow_mode.increment(1);
            overall_code = Code::Ok;
        }
        let response_headers = self
            .options
            .response_headers
            .as_ref()
            .and_then(|names| headers_for(names, &statuses, &is_quota))
            .unwrap_or_default();
        let dynamic_metadata = self
            .options
            .dynamic_metadata
            .then(|| metadata_for(request, nodes, &statuses));
        Decision {
            overall_code,
            statuses,
            response_headers,
            dynamic_metadata,
            raw_body: None,
        }
    }
}

/// Folds a descriptor's quota limits into the status its rules gave: the first hard
/// limit over refuses (with its explanation); otherwise the status with the least
/// remaining stands. Soft limits never refuse.
fn judge_quota(
    rules: Status,
    hits: u64,
    charges: &Charges<'_, '_>,
    plans: &[Plan],
    befores: &[u64],
    now: Now,
) -> (Status, Option<(String, bool)>) {
    if rules.code == Code::OverLimit {
        return (rules, None);
    }
    let mut best = rules;
    for (limit, plan) in charges.limits.iter().zip(plans) {
        let Source::Store(update) = plan.source else {
            continue;
        };
        let before = befores[update];
        let over = before.saturating_add(hits) > limit.limit;
        let (unit, until_reset, resets_at) = match limit.period {
            QuotaPeriod::Window(seconds) => (
                Unit::ALL.into_iter().find(|u| u.seconds() == seconds),
                Some(plan.until_reset),
                Some(now.secs + plan.until_reset),
            ),
            QuotaPeriod::Session => (None, None, None),
        };
        let current_limit = Some(CurrentLimit {
            requests_per_unit: u32::try_from(limit.limit).unwrap_or(u32::MAX),
            unit,
            name: Some(limit.name.clone()),
        });
        if over && limit.hard {
            let status = Status {
                code: Code::OverLimit,
                current_limit,
                limit_remaining: 0,
                duration_until_reset: until_reset,
            };
            return (status, Some(limit.body(charges.tenant, resets_at)));
        }
        if !limit.hard {
            continue;
        }
        let remaining = u32::try_from(limit.limit.saturating_sub(before.saturating_add(hits)))
            .unwrap_or(u32::MAX);
        if best.current_limit.is_none() || remaining < best.limit_remaining {
            best = Status {
                code: Code::Ok,
                current_limit,
                limit_remaining: remaining,
                duration_until_reset: until_reset,
            };
        }
    }
    (best, None)
}

/// The hits a descriptor charges: its own addend (0 allowed), else the request's, at least 1.
fn hits_of(request: &Request<'_>, descriptor: &Descriptor<'_>) -> u64 {
    descriptor
        .hits_addend
        .unwrap_or_else(|| u64::from(request.hits_addend.max(1)))
}

/// Drops every limit named by another matched limit's `replaces` (unlimited ones are
/// never dropped, as in the reference); a descriptor left without limits is free.
fn drop_replaced(applied: &mut [Applied<'_>]) {
    // Empty (and not allocated) unless a matched limit replaces another.
    let replaced: HashSet<&str> = applied
        .iter()
        .filter_map(Applied::node)
        .flat_map(|n| n.limits.iter())
        .flat_map(|l| l.replaces.iter().map(String::as_str))
        .collect();
    if replaced.is_empty() {
        return;
    }
    let is_replaced = |limit: &Limit| limit.name.as_deref().is_some_and(|n| replaced.contains(n));
    for a in applied.iter_mut() {
        if let Applied::Limited(l) = a {
            if !l.limits.iter().any(is_replaced) {
                continue;
            }
            let kept = match std::mem::replace(&mut l.limits, Limits::Node(&[])) {
                Limits::Node(limits) => limits
                    .iter()
                    .filter(|limit| !is_replaced(limit))
                    .map(|limit| Cow::Borrowed(&**limit))
                    .collect(),
                Limits::Owned(mut limits) => {
                    limits.retain(|limit| !is_replaced(limit));
                    limits
                }
            };
            if kept.is_empty() {
                *a = Applied::Free;
            } else {
                l.limits = Limits::Owned(kept);
            }
        }
    }
}

/// A token bucket's refill interval: one token every window / `requests_per_unit`.
fn bucket_interval_us(limit: &Limit) -> u64 {
    let window_us = limit.fixed_seconds().unwrap_or(1).saturating_mul(1_000_000);
    (window_us / u64::from(limit.requests_per_unit.max(1))).max(1)
}

/// The stat path with request values in it, when `detailed_metric` (every level) or
/// `value_to_metric` (that level) asks for them; `None` keeps the config's path.
/// Levels matched through a shared wildcard always keep their pattern, and a level
/// matched by an exact value already names it.
fn metric_path(path: &[&Node], entries: &[(&str, &str)]) -> Option<Vec<String>> {
    let detailed = path.last().is_some_and(|n| n.detailed_metric);
    if !detailed && !path.iter().any(|n| n.value_to_metric) {
        return None;
    }
    let parts: Vec<String> = path
        .iter()
        .zip(entries)
        .map(|(node, (k, v))| {
            if node.share_threshold || !(detailed || node.value_to_metric) {
                node.composite_key()
            } else {
                format!("{k}_{v}")
            }
        })
        .collect();
    Some(parts)
}

/// `RateLimit-*` headers for the most constrained descriptor: the last over-limit
/// non-quota one, else the one with the least remaining.
fn headers_for(
    names: &HeaderNames,
    statuses: &[Status],
    is_quota: &dyn Fn(usize) -> bool,
) -> Option<Vec<(String, String)>> {
    let mut chosen: Option<&Status> = None;
    let mut least = u32::MAX;
    for (i, status) in statuses.iter().enumerate() {
        if status.current_limit.is_some() && status.limit_remaining < least {
            chosen = Some(status);
            least = status.limit_remaining;
        }
        if status.code == Code::OverLimit && !is_quota(i) {
            chosen = Some(status);
            least = 0;
        }
    }
    let status = chosen?;
    let limit = status.current_limit.as_ref()?;
    Some(vec![
        (names.limit.clone(), limit.requests_per_unit.to_string()),
        (names.remaining.clone(), status.limit_remaining.to_string()),
        (
            names.reset.clone(),
            status.duration_until_reset.unwrap_or(0).to_string(),
        ),
    ])
}

/// The reference's dynamic metadata: the domain, each descriptor's `k=v` entries (with
/// its override and addend when given), the request addend, and the config `metadata`
/// of the descriptors that passed, merged in order with the first value winning.
fn metadata_for(
    request: &Request<'_>,
    nodes: &[Option<&Node>],
    statuses: &[Status],
) -> Map<String, Value> {
    let descriptors: Vec<Value> = request
        .descriptors
        .iter()
        .map(|d| {
            let mut out = Map::new();
            let entries = d
                .entries
                .iter()
                .map(|(k, v)| Value::String(format!("{k}={v}")));
            out.insert("entries".into(), Value::Array(entries.collect()));
            if let Some(limit) = &d.limit {
                let unit = limit.unit.map_or("UNKNOWN", Unit::name);
                let text = format!("requests_per_unit:{} unit:{unit}", limit.requests_per_unit);
                out.insert("limit".into(), Value::String(text));
            }
            if let Some(hits) = d.hits_addend {
                out.insert("hitsAddend".into(), json!(hits));
            }
            Value::Object(out)
        })
        .collect();
    let mut merged = Map::new();
    for (node, status) in nodes.iter().zip(statuses) {
        if status.code == Code::Ok
            && let Some(meta) = node.and_then(|n| n.metadata.as_ref())
        {
            merge_first_wins(&mut merged, meta);
        }
    }
    let mut out = Map::new();
    out.insert("domain".into(), Value::String(request.domain.to_owned()));
    out.insert("descriptors".into(), Value::Array(descriptors));
    if request.hits_addend != 0 {
        out.insert("hitsAddend".into(), json!(request.hits_addend));
    }
    if !merged.is_empty() {
        out.insert("metadata".into(), Value::Object(merged));
    }
    out
}

/// Merges `from` into `into`: existing values win, nested maps merge recursively.
fn merge_first_wins(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(Value::Object(existing)), Value::Object(more)) => {
                merge_first_wins(existing, more)
            }
            (Some(_), _) => {}
            (None, _) => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}
