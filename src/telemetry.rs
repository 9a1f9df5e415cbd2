//! Logs and metrics, set up in one place.
//!
//! Metric names follow the reference's statsd names as its default Prometheus mapping
//! exposes them (see the README's metrics table): `ratelimit.service.rate_limit.<domain>.
//! <k1>.<k2>.<stat>` is `ratelimit_service_rate_limit_<stat>{domain,key1,key2}`, one
//! `keyN` label per descriptor level, so dashboards built for the reference keep working.
//! Each app owns its own recorder, so apps started side by side in tests never mix counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Most distinct runtime-valued series (from `detailed_metric`, `value_to_metric` and
/// unknown domains) one process creates; later ones are counted under `key="_overflow_"`.
/// Config-defined keys are always registered: the config bounds them.
pub const MAX_RUNTIME_SERIES: usize = 10_000;

/// `ratelimit_server.ShouldRateLimit.response_time`, exported as the reference's default
/// Prometheus mapping does: a histogram (`observer_type: histogram`) in seconds.
const RESPONSE_TIME: &str = "ratelimit_service_response_time_seconds";

/// The buckets of [`RESPONSE_TIME`]: the statsd exporter's (and Prometheus') defaults,
/// which the reference's mapping uses. A bucket increment per request also costs less
/// than the summary's quantile sketch (2 % of the server's CPU under load).
const RESPONSE_TIME_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The label value that runtime series beyond [`MAX_RUNTIME_SERIES`] are folded into.
pub const OVERFLOW_KEY: &str = "_overflow_";

/// Starts logging to stderr; `RUST_LOG` filters, `json` picks structured lines.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// One of the reference's per-rule statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleStat {
    TotalHits,
    OverLimit,
    NearLimit,
    WithinLimit,
    OverLimitWithLocalCache,
    ShadowMode,
    TotalNegativeHits,
}

impl RuleStat {
    const ALL: [RuleStat; 7] = [
        RuleStat::TotalHits,
        RuleStat::OverLimit,
        RuleStat::NearLimit,
        RuleStat::WithinLimit,
        RuleStat::OverLimitWithLocalCache,
        RuleStat::ShadowMode,
        RuleStat::TotalNegativeHits,
    ];

    fn metric_name(self) -> &'static str {
        match self {
            RuleStat::TotalHits => "ratelimit_service_rate_limit_total_hits",
            RuleStat::OverLimit => "ratelimit_service_rate_limit_over_limit",
            RuleStat::NearLimit => "ratelimit_service_rate_limit_near_limit",
            RuleStat::WithinLimit => "ratelimit_service_rate_limit_within_limit",
            RuleStat::OverLimitWithLocalCache => {
                "ratelimit_service_rate_limit_over_limit_with_local_cache"
            }
            RuleStat::ShadowMode => "ratelimit_service_rate_limit_shadow_mode",
            RuleStat::TotalNegativeHits => "ratelimit_service_rate_limit_total_negative_hits",
        }
    }
}

/// The reference's per-rule statistics of one limit.
///
/// Requests add to plain atomics side by side (one cache line per limit); they reach the
/// Prometheus counters when the exposition is rendered, or when the limit is dropped (a
/// reload). Going through the registry's counters on every request cost a tenth of the
/// server's time with 10,000 rules: each is an allocation of its own, so every hit on a
/// cold rule missed the cache several times.
#[derive(Clone)]
pub struct RuleStats(Arc<RuleTally>);

impl RuleStats {
    /// Counts `n` more of `stat`.
    pub fn add(&self, stat: RuleStat, n: u64) {
        self.0.pending[stat as usize].fetch_add(n, Ordering::Relaxed);
    }
}

struct RuleTally {
    /// Counts not yet added to `sinks`, by [`RuleStat`].
    pending: [AtomicU64; 7],
    sinks: [Counter; 7],
}

impl RuleTally {
    fn flush(&self) {
        for (pending, sink) in self.pending.iter().zip(&self.sinks) {
            let n = pending.swap(0, Ordering::Relaxed);
            if n > 0 {
                sink.increment(n);
            }
        }
    }
}

impl Drop for RuleTally {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Service-wide statistics.
#[derive(Clone)]
pub struct ServiceStats {
    pub config_load_success: Counter,
    pub config_load_error: Counter,
    pub global_shadow_mode: Counter,
    pub redis_error: Counter,
    pub service_error: Counter,
    pub total_requests: Counter,
    pub response_time: Histogram,
}

/// The in-memory policy's reloads and the quota checks' refusals (see `policy`).
#[derive(Clone)]
pub struct PolicyStats {
    /// A policy snapshot was loaded from the ledger and swapped in.
    pub reload_success: Counter,
    /// A reload failed; the previous snapshot stays in force.
    pub reload_error: Counter,
    /// Tenants in the snapshot in force.
    pub tenants: Gauge,
    /// Descriptors refused because the tenant is unknown, pending or suspended.
    pub refused_tenant_not_active: Counter,
    /// Descriptors refused because the model is not granted to the tenant.
    pub refused_model_not_approved: Counter,
    /// Descriptors refused because a hard token or money budget is spent.
    pub refused_budget_exhausted: Counter,
    /// Descriptors refused by a plan request limit or a session request budget.
    pub refused_rate_limited: Counter,
}

/// Statistics of token and money budgets.
#[derive(Clone)]
pub struct BudgetStats {
    /// Usage events settled (charged once and queued for the ledger).
    pub settled: Counter,
    /// Settlements of a request id already settled (changed nothing).
    pub duplicate_settlements: Counter,
    /// Reservations taken on the request path.
    pub reserved: Counter,
    /// Reservations released unsettled because their deadline passed.
    pub reservations_expired: Counter,
    /// Budget periods rebuilt from the ledger (first use, or counters lost).
    pub rebuilt: Counter,
    /// Usage of a tenant the policy does not know: not charged, logged.
    pub unknown_tenant_usage: Counter,
    /// Token types settled without a price in force (charged at 0, logged).
    pub unpriced: Counter,
}

/// Budget alert deliveries (see `alerts`); the alerts themselves are counted per budget
/// and threshold by [`Metrics::budget_alert`].
#[derive(Clone)]
pub struct AlertStats {
    /// Webhook deliveries given up after the retry.
    pub webhook_failures: Counter,
    /// Webhook deliveries not attempted because too many were already in flight.
    pub webhook_dropped: Counter,
}

/// The ledger writer's progress (see `ledger::writer`).
#[derive(Clone)]
pub struct LedgerWriterStats {
    /// Usage events inserted into the ledger.
    pub events: Counter,
    /// Events the ledger already held (a replayed or resent settlement): acknowledged only.
    pub duplicates: Counter,
    /// Events that could not be parsed or validated: logged, skipped and acknowledged.
    pub invalid: Counter,
    /// Drain attempts that failed (store or ledger unreachable); the events stay pending.
    pub errors: Counter,
    /// Events pending at the writer's last read of the outbox, at most one batch; 0 once
    /// it has caught up.
    pub backlog: Gauge,
}

/// This app's metrics registry and its Prometheus rendering.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    runtime_series: Arc<AtomicUsize>,
    /// The statistics of configured limits, flushed before each rendering.
    rule_tallies: Arc<Mutex<Vec<Weak<RuleTally>>>>,
    pub service: ServiceStats,
    pub policy: PolicyStats,
    pub ledger_writer: LedgerWriterStats,
    pub alerts: AlertStats,
    pub budgets: BudgetStats,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh, empty registry.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(RESPONSE_TIME.to_owned()),
                &RESPONSE_TIME_BUCKETS,
            )
            .expect("the response-time buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let plain =
            |name: &'static str| recorder.register_counter(&Key::from_name(name), &METADATA);
        let error = |err_type: &'static str| {
            let labels = vec![Label::new("err_type", err_type)];
            recorder.register_counter(
                &Key::from_parts("ratelimit_service_should_rate_limit_error", labels),
                &METADATA,
            )
        };
        let method = vec![Label::new("grpc_method", "ShouldRateLimit")];
        let service = ServiceStats {
            config_load_success: plain("ratelimit_service_config_load_success"),
            config_load_error: plain("ratelimit_service_config_load_error"),
            global_shadow_mode: plain("ratelimit_service_global_shadow_mode"),
            redis_error: error("redis_error"),
            service_error: error("service_error"),
            total_requests: recorder.register_counter(
                &Key::from_parts("ratelimit_service_total_requests", method.clone()),
                &METADATA,
            ),
            response_time: recorder
                .register_histogram(&Key::from_parts(RESPONSE_TIME, method), &METADATA),
        };
        let refused = |reason: &'static str| {
            let labels = vec![Label::new("reason", reason)];
            recorder.register_counter(
                &Key::from_parts("tollgate_quota_refused", labels),
                &METADATA,
            )
        };
        let policy = PolicyStats {
            reload_success: plain("tollgate_policy_reload_success"),
            reload_error: plain("tollgate_policy_reload_error"),
            tenants: recorder.register_gauge(&Key::from_name("tollgate_policy_tenants"), &METADATA),
            refused_tenant_not_active: refused("tenant_not_active"),
            refused_model_not_approved: refused("model_not_approved"),
            refused_budget_exhausted: refused("budget_exhausted"),
            refused_rate_limited: refused("rate_limited"),
        };
        let budgets = BudgetStats {
            settled: plain("tollgate_usage_settled_total"),
            duplicate_settlements: plain("tollgate_usage_duplicate_settlements_total"),
            reserved: plain("tollgate_reservations_total"),
            reservations_expired: plain("tollgate_reservations_expired_total"),
            rebuilt: plain("tollgate_budget_periods_rebuilt_total"),
            unknown_tenant_usage: plain("tollgate_usage_unknown_tenant_total"),
            unpriced: plain("tollgate_usage_unpriced_total"),
        };
        let alerts = AlertStats {
            webhook_failures: plain("tollgate_budget_alert_webhook_failures_total"),
            webhook_dropped: plain("tollgate_budget_alert_webhook_dropped_total"),
        };
        let ledger_writer = LedgerWriterStats {
            events: plain("tollgate_ledger_writer_events_total"),
            duplicates: plain("tollgate_ledger_writer_duplicates_total"),
            invalid: plain("tollgate_ledger_writer_invalid_total"),
            errors: plain("tollgate_ledger_writer_errors_total"),
            backlog: recorder
                .register_gauge(&Key::from_name("tollgate_ledger_writer_backlog"), &METADATA),
        };
        Self {
            recorder: Arc::new(recorder),
            handle,
            runtime_series: Arc::new(AtomicUsize::new(0)),
            rule_tallies: Arc::default(),
            service,
            policy,
            ledger_writer,
            alerts,
            budgets,
        }
    }

    /// Statistics for a rule defined in the config: its domain and the `key` or
    /// `key_value` of each level of its path.
    pub fn rule_stats<S: AsRef<str>>(&self, domain: &str, path: &[S]) -> RuleStats {
        self.kept(self.rule_stats_with(domain, path, None))
    }

    /// Statistics for one of a node's several named limits (`rate_limits`): the rule's
    /// labels plus `limit="<name>"`.
    pub fn named_rule_stats<S: AsRef<str>>(
        &self,
        domain: &str,
        path: &[S],
        limit: &str,
    ) -> RuleStats {
        self.kept(self.rule_stats_with(domain, path, Some(limit)))
    }

    /// Statistics for a path built from request values; bounded by [`MAX_RUNTIME_SERIES`].
    /// They live as long as the request that made them, and are counted when it ends.
    pub fn runtime_rule_stats<S: AsRef<str>>(
        &self,
        domain: &str,
        path: &[S],
        limit: Option<&str>,
    ) -> RuleStats {
        if self.take_runtime_series() {
            self.rule_stats_with(domain, path, limit)
        } else {
            self.rule_stats_with(domain, &[OVERFLOW_KEY], limit)
        }
    }

    /// `<domain>.domain_not_found`: a descriptor named a domain with no rules.
    pub fn domain_not_found(&self, domain: &str) -> Counter {
        let domain = if self.take_runtime_series() {
            domain
        } else {
            OVERFLOW_KEY
        };
        self.counter(
            "ratelimit_service_rate_limit_domain_not_found",
            vec![Label::new("domain", domain.to_owned())],
        )
    }

    /// `tollgate_budget_alerts_total{budget,threshold}`: alerts raised for a budget (by its
    /// ledger id: names repeat across tenants) at a threshold. Budgets are created by
    /// operators and carry at most ten thresholds, so the series are bounded like config keys.
    pub fn budget_alert(&self, budget_id: &str, threshold_percent: u32) -> Counter {
        self.counter(
            "tollgate_budget_alerts_total",
            vec![
                Label::new("budget", budget_id.to_owned()),
                Label::new("threshold", threshold_percent.to_string()),
            ],
        )
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.rule_tallies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|tally| match tally.upgrade() {
                Some(tally) => {
                    tally.flush();
                    true
                }
                None => false,
            });
        self.handle.render()
    }

    /// Folds the response-time samples recorded since the last fold into their summary
    /// every `every`, as a scrape does. Without it a service nobody scrapes keeps every
    /// sample it ever recorded (24 bytes per request: a leak under load).
    pub fn spawn_upkeep(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    }

    fn take_runtime_series(&self) -> bool {
        self.runtime_series
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_RUNTIME_SERIES).then_some(n + 1)
            })
            .is_ok()
    }

    fn rule_stats_with<S: AsRef<str>>(
        &self,
        domain: &str,
        path: &[S],
        limit: Option<&str>,
    ) -> RuleStats {
        let mut labels = Vec::with_capacity(path.len() + 2);
        labels.push(Label::new("domain", domain.to_owned()));
        for (level, part) in path.iter().enumerate() {
            labels.push(Label::new(
                format!("key{}", level + 1),
                part.as_ref().to_owned(),
            ));
        }
        if let Some(limit) = limit {
            labels.push(Label::new("limit", limit.to_owned()));
        }
        RuleStats(Arc::new(RuleTally {
            pending: Default::default(),
            sinks: RuleStat::ALL.map(|stat| self.counter(stat.metric_name(), labels.clone())),
        }))
    }

    /// Registers `stats` of a configured limit, to be flushed before each rendering. The
    /// registry forgets the statistics of dropped limits (which flushed themselves) when it
    /// would otherwise grow, so reloads do not pile them up.
    fn kept(&self, stats: RuleStats) -> RuleStats {
        let mut tallies = self.rule_tallies.lock().unwrap_or_else(|e| e.into_inner());
        if tallies.len() == tallies.capacity() {
            tallies.retain(|tally| tally.strong_count() > 0);
        }
        tallies.push(Arc::downgrade(&stats.0));
        stats
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }
}

static METADATA: Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

#[cfg(test)]
mod tests {
    use super::*;

    fn value(metrics: &Metrics, series: &str) -> Option<u64> {
        metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    const TOTAL_HITS: &str = r#"ratelimit_service_rate_limit_total_hits{domain="d",key1="k"}"#;

    #[test]
    fn rule_counts_reach_the_exposition_when_it_is_rendered() {
        let metrics = Metrics::new();
        let stats = metrics.rule_stats("d", &["k"]);
        stats.add(RuleStat::TotalHits, 3);
        stats.add(RuleStat::WithinLimit, 2);
        assert_eq!(value(&metrics, TOTAL_HITS), Some(3));
        let within = r#"ratelimit_service_rate_limit_within_limit{domain="d",key1="k"}"#;
        assert_eq!(value(&metrics, within), Some(2));
        stats.add(RuleStat::TotalHits, 1);
        assert_eq!(
            value(&metrics, TOTAL_HITS),
            Some(4),
            "rendering twice counts once"
        );
    }

    #[test]
    fn a_reloaded_rule_keeps_the_counts_of_the_limit_it_replaced() {
        let metrics = Metrics::new();
        let old = metrics.rule_stats("d", &["k"]);
        old.add(RuleStat::TotalHits, 2);
        drop(old);
        let new = metrics.rule_stats("d", &["k"]);
        new.add(RuleStat::TotalHits, 1);
        assert_eq!(value(&metrics, TOTAL_HITS), Some(3));
    }

    #[test]
    fn runtime_counts_are_kept_when_their_request_ends() {
        let metrics = Metrics::new();
        let stats = metrics.runtime_rule_stats("d", &["k"], None);
        stats.add(RuleStat::TotalHits, 5);
        drop(stats);
        assert_eq!(value(&metrics, TOTAL_HITS), Some(5));
    }

    #[test]
    fn the_registry_forgets_dropped_limits_as_it_grows() {
        let metrics = Metrics::new();
        let live = metrics.rule_stats("d", &["live"]);
        for i in 0..1_000 {
            drop(metrics.rule_stats("d", &[format!("k{i}")]));
        }
        let kept = metrics.rule_tallies.lock().unwrap().len();
        assert!(kept < 100, "{kept} entries kept for 1 live limit");
        live.add(RuleStat::TotalHits, 1);
        let series = r#"ratelimit_service_rate_limit_total_hits{domain="d",key1="live"}"#;
        assert_eq!(value(&metrics, series), Some(1));
    }
}
