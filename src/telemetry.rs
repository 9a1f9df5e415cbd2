//! Logs and metrics, set up in one place.
//!
//! Metric names follow the reference's statsd names as its default Prometheus mapping
//! exposes them (see the README's metrics table): `ratelimit.service.rate_limit.<domain>.
//! <k1>.<k2>.<stat>` is `ratelimit_service_rate_limit_<stat>{domain,key1,key2}`, one
//! `keyN` label per descriptor level, so dashboards built for the reference keep working.
//! Each app owns its own recorder, so apps started side by side in tests never mix counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// The reference's per-rule statistics.
#[derive(Clone)]
pub struct RuleStats {
    pub total_hits: Counter,
    pub over_limit: Counter,
    pub near_limit: Counter,
    pub within_limit: Counter,
    pub over_limit_with_local_cache: Counter,
    pub shadow_mode: Counter,
    pub total_negative_hits: Counter,
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
        self.rule_stats_with(domain, path, None)
    }

    /// Statistics for one of a node's several named limits (`rate_limits`): the rule's
    /// labels plus `limit="<name>"`.
    pub fn named_rule_stats<S: AsRef<str>>(
        &self,
        domain: &str,
        path: &[S],
        limit: &str,
    ) -> RuleStats {
        self.rule_stats_with(domain, path, Some(limit))
    }

    /// Statistics for a path built from request values; bounded by [`MAX_RUNTIME_SERIES`].
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
        let stat = |name: &'static str| self.counter(name, labels.clone());
        RuleStats {
            total_hits: stat("ratelimit_service_rate_limit_total_hits"),
            over_limit: stat("ratelimit_service_rate_limit_over_limit"),
            near_limit: stat("ratelimit_service_rate_limit_near_limit"),
            within_limit: stat("ratelimit_service_rate_limit_within_limit"),
            over_limit_with_local_cache: stat(
                "ratelimit_service_rate_limit_over_limit_with_local_cache",
            ),
            shadow_mode: stat("ratelimit_service_rate_limit_shadow_mode"),
            total_negative_hits: stat("ratelimit_service_rate_limit_total_negative_hits"),
        }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }
}

static METADATA: Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
