//! The limiter: matches a call's descriptors against the rules, charges the counters,
//! and forms the decision. It knows nothing of gRPC, HTTP or Redis.
//!
//! One call makes at most one store round trip: the counters of all its descriptors go
//! to the store as one batch.

pub mod accounting;
pub mod request;
pub mod window;

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Map, Value, json};

pub use self::request::{Code, CurrentLimit, DecideError, Decision, Descriptor, LimitOverride, Request, Status};
use self::window::Window;
use crate::clock::SharedClock;
use crate::rules::watch::CurrentRules;
use crate::rules::{Domain, Node, Unit};
use crate::store::{CounterStore, CounterUpdate, Store, StoreError, keys};
use crate::telemetry::{Metrics, RuleStats};

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
        }
    }
}

/// Decides `ShouldRateLimit` calls.
pub struct Limiter {
    rules: CurrentRules,
    store: Store,
    clock: SharedClock,
    metrics: Metrics,
    options: LimiterOptions,
    /// Keys known to be over limit; a key names its window, so stale entries never match.
    over_limit_cache: Option<quick_cache::sync::Cache<String, ()>>,
}

/// The limit in force for one descriptor, once matching and `replaces` are done.
enum Applied<'r> {
    /// No limit: nothing matched, a whitelist entry, or a replaced limit.
    Free,
    /// Matched an `unlimited` rule.
    Unlimited,
    Limited(Limited<'r>),
}

struct Limited<'r> {
    requests_per_unit: u32,
    unit: Unit,
    name: Option<&'r str>,
    stats: Cow<'r, RuleStats>,
    node: Option<&'r Node>,
    /// The entries the counter is keyed by (wildcard values folded by `share_threshold`).
    key_entries: Vec<(&'r str, &'r str)>,
}

impl<'r> Applied<'r> {
    fn node(&self) -> Option<&'r Node> {
        match self {
            Applied::Limited(l) => l.node,
            _ => None,
        }
    }
}

/// What the store (or the local cache) said about one limited descriptor.
enum Count {
    Stored { update: usize },
    KnownOverLimit,
}

impl Limiter {
    /// A limiter over the given rules and store.
    pub fn new(rules: CurrentRules, store: Store, clock: SharedClock, metrics: Metrics, options: LimiterOptions) -> Self {
        let over_limit_cache =
            (options.local_cache_size > 0).then(|| quick_cache::sync::Cache::new(options.local_cache_size));
        Self {
            rules,
            store,
            clock,
            metrics,
            options,
            over_limit_cache,
        }
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
            self.metrics.domain_not_found(request.domain).increment(n as u64);
            return Ok(self.finish(request, &[], vec![Status::default(); n]));
        };
        let mut applied = request
            .descriptors
            .iter()
            .enumerate()
            .map(|(index, d)| self.resolve(domain, d, index))
            .collect::<Result<Vec<_>, _>>()?;
        drop_replaced(&mut applied);

        let now = self.clock.now_secs();
        let mut updates = Vec::new();
        let mut counts = Vec::with_capacity(applied.len());
        for (descriptor, applied) in request.descriptors.iter().zip(&applied) {
            let Applied::Limited(limit) = applied else {
                counts.push(None);
                continue;
            };
            let hits = hits_of(request, descriptor);
            if descriptor.is_negative_hits {
                limit.stats.total_negative_hits.increment(hits);
            } else {
                // Counted before the store answers, as the reference does.
                limit.stats.total_hits.increment(hits);
            }
            let window = Window::containing(now, limit.unit.seconds());
            let key = keys::counter_key(
                &self.options.key_prefix,
                request.domain,
                limit.key_entries.iter().copied(),
                window.start,
            );
            let cached_over = !descriptor.is_negative_hits
                && self.over_limit_cache.as_ref().is_some_and(|c| c.get(&key).is_some());
            if cached_over {
                counts.push(Some(Count::KnownOverLimit));
                continue;
            }
            counts.push(Some(Count::Stored { update: updates.len() }));
            updates.push(CounterUpdate {
                key,
                hits,
                refund: descriptor.is_negative_hits,
                ttl_secs: window.until_reset,
                cap: self
                    .options
                    .stop_incrementing_when_over_limit
                    .then_some(u64::from(limit.requests_per_unit)),
            });
        }
        let befores = if updates.is_empty() { Vec::new() } else { self.apply(&updates).await? };

        let near_ratio = self.options.near_limit_ratio;
        let mut statuses = Vec::with_capacity(applied.len());
        for ((descriptor, applied), count) in request.descriptors.iter().zip(&applied).zip(&counts) {
            let limit = match applied {
                Applied::Free => {
                    statuses.push(Status::default());
                    continue;
                }
                Applied::Unlimited => {
                    statuses.push(Status {
                        limit_remaining: u32::MAX,
                        ..Status::default()
                    });
                    continue;
                }
                Applied::Limited(limit) => limit,
            };
            let hits = hits_of(request, descriptor);
            let rpu = u64::from(limit.requests_per_unit);
            let stats = &limit.stats;
            // `over` is the part of the hits past the limit, which shadow mode reports.
            let (mut code, remaining, over) = match count {
                Some(Count::KnownOverLimit) => {
                    stats.over_limit.increment(hits);
                    stats.over_limit_with_local_cache.increment(hits);
                    (Code::OverLimit, 0, hits)
                }
                Some(Count::Stored { update }) if descriptor.is_negative_hits => {
                    // A refund always passes; it reports what is left after it.
                    let after = befores[*update].saturating_sub(hits);
                    (Code::Ok, rpu.saturating_sub(after), 0)
                }
                Some(Count::Stored { update }) => {
                    let threshold = accounting::near_limit_threshold(rpu, near_ratio);
                    let charge = accounting::charge(befores[*update], hits, rpu, threshold);
                    stats.over_limit.increment(charge.over_limit);
                    stats.near_limit.increment(charge.near_limit);
                    stats.within_limit.increment(charge.within_limit);
                    if charge.code == Code::OverLimit {
                        if let Some(cache) = &self.over_limit_cache {
                            cache.insert(updates[*update].key.clone(), ());
                        }
                    }
                    (charge.code, charge.remaining, charge.over_limit)
                }
                None => unreachable!("every limited descriptor has a count"),
            };
            if limit.node.is_some_and(|n| n.shadow_mode) {
                if code == Code::OverLimit {
                    stats.shadow_mode.increment(over);
                }
                code = Code::Ok;
            }
            let window = Window::containing(now, limit.unit.seconds());
            statuses.push(Status {
                code,
                current_limit: Some(CurrentLimit {
                    requests_per_unit: limit.requests_per_unit,
                    unit: limit.unit,
                    name: limit.name.map(str::to_owned),
                }),
                limit_remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                duration_until_reset: Some(window.until_reset),
            });
        }
        let nodes: Vec<Option<&Node>> = applied.iter().map(Applied::node).collect();
        Ok(self.finish(request, &nodes, statuses))
    }

    async fn apply(&self, updates: &[CounterUpdate]) -> Result<Vec<u64>, DecideError> {
        let outcome = match tokio::time::timeout(self.options.store_deadline, self.store.apply(updates)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(StoreError::Timeout(self.options.store_deadline)),
        };
        outcome.map_err(|e| {
            self.metrics.service.redis_error.increment(1);
            DecideError::Store(e)
        })
    }

    /// Finds the limit for one descriptor: the request's override, else the tree's.
    fn resolve<'r>(&self, domain: &'r Domain, descriptor: &Descriptor<'r>, index: usize) -> Result<Applied<'r>, DecideError> {
        if let Some(limit) = descriptor.limit {
            let unit = limit.unit.ok_or(DecideError::UnknownOverrideUnit { index })?;
            let path: Vec<String> = descriptor
                .entries
                .iter()
                .map(|&(k, v)| if v.is_empty() { k.to_owned() } else { format!("{k}_{v}") })
                .collect();
            return Ok(Applied::Limited(Limited {
                requests_per_unit: limit.requests_per_unit,
                unit,
                name: None,
                stats: Cow::Owned(self.metrics.runtime_rule_stats(&domain.name, &path)),
                node: None,
                key_entries: descriptor.entries.clone(),
            }));
        }
        let Some(path) = domain.find(descriptor.entries.iter().copied()) else {
            return Ok(Applied::Free);
        };
        let node = *path.last().expect("find returns a non-empty path");
        let Some(limit) = &node.limit else {
            return Ok(Applied::Free);
        };
        if limit.unlimited {
            return Ok(Applied::Unlimited);
        }
        let key_entries = path
            .iter()
            .zip(&descriptor.entries)
            .map(|(n, &(key, value))| match (&n.value, n.share_threshold) {
                (Some(pattern), true) => (key, pattern.as_str()),
                _ => (key, value),
            })
            .collect();
        let stats = match metric_path(&path, &descriptor.entries) {
            Some(parts) => Cow::Owned(self.metrics.runtime_rule_stats(&domain.name, &parts)),
            None => Cow::Borrowed(&limit.stats),
        };
        Ok(Applied::Limited(Limited {
            requests_per_unit: limit.requests_per_unit,
            unit: limit.unit,
            name: limit.name.as_deref(),
            stats,
            node: Some(node),
            key_entries,
        }))
    }

    /// Overall code, headers and metadata around the statuses.
    fn finish(&self, request: &Request<'_>, nodes: &[Option<&Node>], statuses: Vec<Status>) -> Decision {
        let is_quota = |i: usize| nodes.get(i).copied().flatten().is_some_and(|n| n.quota_mode);
        let over = |s: &Status| s.code == Code::OverLimit;
        let normal_over = statuses.iter().enumerate().any(|(i, s)| !is_quota(i) && over(s));
        let quota: Vec<&Status> = statuses.iter().enumerate().filter(|(i, _)| is_quota(*i)).map(|(_, s)| s).collect();
        let quota_exhausted = !quota.is_empty() && quota.iter().all(|s| over(s));
        let mut overall_code = if normal_over || quota_exhausted { Code::OverLimit } else { Code::Ok };
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
        let dynamic_metadata = self.options.dynamic_metadata.then(|| metadata_for(request, nodes, &statuses));
        Decision {
            overall_code,
            statuses,
            response_headers,
            dynamic_metadata,
        }
    }
}

/// The hits a descriptor charges: its own addend (0 allowed), else the request's, at least 1.
fn hits_of(request: &Request<'_>, descriptor: &Descriptor<'_>) -> u64 {
    descriptor
        .hits_addend
        .unwrap_or_else(|| u64::from(request.hits_addend.max(1)))
}

/// Drops every limited descriptor whose limit is named by another matched limit's
/// `replaces` (unlimited ones stay, as in the reference).
fn drop_replaced(applied: &mut [Applied<'_>]) {
    let replaced: HashSet<&str> = applied
        .iter()
        .filter_map(Applied::node)
        .filter_map(|n| n.limit.as_ref())
        .flat_map(|l| l.replaces.iter().map(String::as_str))
        .collect();
    if replaced.is_empty() {
        return;
    }
    for a in applied.iter_mut() {
        if let Applied::Limited(l) = a {
            if l.name.is_some_and(|n| replaced.contains(n)) {
                *a = Applied::Free;
            }
        }
    }
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
fn headers_for(names: &HeaderNames, statuses: &[Status], is_quota: &dyn Fn(usize) -> bool) -> Option<Vec<(String, String)>> {
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
        (names.reset.clone(), status.duration_until_reset.unwrap_or(0).to_string()),
    ])
}

/// The reference's dynamic metadata: the domain, each descriptor's `k=v` entries (with
/// its override and addend when given), the request addend, and the config `metadata`
/// of the descriptors that passed, merged in order with the first value winning.
fn metadata_for(request: &Request<'_>, nodes: &[Option<&Node>], statuses: &[Status]) -> Map<String, Value> {
    let descriptors: Vec<Value> = request
        .descriptors
        .iter()
        .map(|d| {
            let mut out = Map::new();
            let entries = d.entries.iter().map(|(k, v)| Value::String(format!("{k}={v}")));
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
        if status.code == Code::Ok {
            if let Some(meta) = node.and_then(|n| n.metadata.as_ref()) {
                merge_first_wins(&mut merged, meta);
            }
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
            (Some(Value::Object(existing)), Value::Object(more)) => merge_first_wins(existing, more),
            (Some(_), _) => {}
            (None, _) => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}
