//! Budget alerts: when a settlement takes a budget's counter past one of its alert
//! thresholds, the limiter raises an [`Alert`] through the [`Alerter`].
//!
//! Flow: a settlement is one atomic store step, so the limiter knows each budget counter's
//! value before and after the charge, and exactly one settlement crosses a given threshold
//! in a given period. [`crossed`] turns (before, after, limit, thresholds) into the
//! thresholds crossed; the limiter builds one [`Alert`] per threshold and calls
//! [`Alerter::raise`], which counts it (`tollgate_budget_alerts_total{budget,threshold}`),
//! logs one structured warning (target `tollgate::alerts`) and, when `alert_webhook_url` is
//! set, POSTs the alert's JSON to it from a spawned task.
//!
//! Raising never blocks or fails the caller: the request path only counts, logs and spawns.
//! A delivery that fails (connection error, timeout or a non-2xx answer) is retried once
//! after a short delay, then given up with an error log and
//! `tollgate_budget_alert_webhook_failures_total`. At most [`AlerterOptions::max_in_flight`]
//! deliveries run at once; past that an alert is not delivered (logged and counted in
//! `tollgate_budget_alert_webhook_dropped_total`) rather than queued without bound. Alerts
//! are at most once: a delivery in flight at shutdown is lost; the log line and the metric
//! remain.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::CONTENT_TYPE;
use serde::{Serialize, Serializer};
use tokio::sync::Semaphore;

use crate::ledger::budgets::{Measure, Scope};
use crate::money::format_micros;
use crate::telemetry::{AlertStats, Metrics};

/// Delivery attempts per alert: the first and one retry.
const ATTEMPTS: u32 = 2;

/// The thresholds (percentages of `limit`) that a charge taking a counter from `before` to
/// `after` crosses: those whose mark, `ceil(limit × t / 100)` in storage units, satisfies
/// `before < mark <= after`. The mark is at least 1, so a limit of 0 crosses every
/// threshold on the first positive charge. Integer math throughout; thresholds above 100
/// work. Thresholds are yielded in the given order (the ledger keeps them ascending and
/// without repeats).
pub fn crossed(
    before: u64,
    after: u64,
    limit: u64,
    thresholds: &[u32],
) -> impl Iterator<Item = u32> + '_ {
    thresholds.iter().copied().filter(move |&percent| {
        let mark = threshold_mark(limit, percent);
        u128::from(before) < mark && mark <= u128::from(after)
    })
}

/// The counter value at which `percent` of `limit` is reached: `ceil(limit × percent /
/// 100)`, at least 1 (nothing is reached before anything is spent).
pub fn threshold_mark(limit: u64, percent: u32) -> u128 {
    (u128::from(limit) * u128::from(percent))
        .div_ceil(100)
        .max(1)
}

/// One budget threshold crossed by one settlement. Serialized (the webhook body) with
/// `limit` and `spent` as exact decimal strings for cost budgets (`"100.000000"`) and as
/// integers for counts; absent optional fields are `null`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The budget's tenant (`None` for a global budget).
    pub tenant: Option<String>,
    /// The ledger's id of the budget (stable across renames).
    pub budget_id: String,
    /// The budget's name (unique among a tenant's live budgets).
    pub budget_name: String,
    pub scope: Scope,
    pub measure: Measure,
    /// The token type a token budget counts (`None`: all types, or not a token budget).
    pub token_type: Option<String>,
    /// The model a tenant+model budget covers.
    pub model: Option<String>,
    /// The threshold crossed, as a percentage of `limit`.
    pub threshold_percent: u32,
    /// The budget's limit in storage units: a count, or micro-units for cost.
    pub limit: u64,
    /// The budget's counter after the settlement, in the same units.
    pub spent: u64,
    /// The currency of a cost budget.
    pub currency: Option<String>,
    /// The start of the budget's current period (RFC 3339).
    pub period_start: String,
    /// The end of the budget's current period (RFC 3339).
    pub period_end: String,
    /// The request whose settlement crossed the threshold.
    pub request_id: String,
}

/// An amount as the alert shows it: a count, or money as an exact decimal.
#[derive(Serialize)]
#[serde(untagged)]
enum Quantity {
    Count(u64),
    Money(String),
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quantity::Count(n) => write!(f, "{n}"),
            Quantity::Money(text) => f.write_str(text),
        }
    }
}

/// The alert's JSON shape.
#[derive(Serialize)]
struct Wire<'a> {
    tenant: Option<&'a str>,
    budget_id: &'a str,
    budget_name: &'a str,
    scope: Scope,
    measure: Measure,
    token_type: Option<&'a str>,
    model: Option<&'a str>,
    threshold_percent: u32,
    limit: Quantity,
    spent: Quantity,
    currency: Option<&'a str>,
    period_start: &'a str,
    period_end: &'a str,
    request_id: &'a str,
}

impl Alert {
    /// `units` of this budget's measure as shown to people.
    fn quantity(&self, units: u64) -> Quantity {
        if self.measure != Measure::Cost {
            return Quantity::Count(units);
        }
        Quantity::Money(match i64::try_from(units) {
            Ok(micros) => format_micros(micros),
            // Past i64 (beyond any amount the ledger accepts), still exact.
            Err(_) => format!("{}.{:06}", units / 1_000_000, units % 1_000_000),
        })
    }
}

impl Serialize for Alert {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire {
            tenant: self.tenant.as_deref(),
            budget_id: &self.budget_id,
            budget_name: &self.budget_name,
            scope: self.scope,
            measure: self.measure,
            token_type: self.token_type.as_deref(),
            model: self.model.as_deref(),
            threshold_percent: self.threshold_percent,
            limit: self.quantity(self.limit),
            spent: self.quantity(self.spent),
            currency: self.currency.as_deref(),
            period_start: &self.period_start,
            period_end: &self.period_end,
            request_id: &self.request_id,
        }
        .serialize(serializer)
    }
}

/// How alerts are delivered; filled from the settings (`Settings::alerter_options`).
#[derive(Clone)]
pub struct AlerterOptions {
    /// Where alerts are POSTed (none: only counted and logged). May hold a secret.
    pub webhook_url: Option<String>,
    /// Longest wait for one delivery attempt, connecting included.
    pub webhook_timeout: Duration,
    /// Wait before the one retry of a failed delivery.
    pub retry_delay: Duration,
    /// Most deliveries in flight at once; further alerts are not delivered.
    pub max_in_flight: usize,
}

impl Default for AlerterOptions {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_timeout: Duration::from_secs(5),
            retry_delay: Duration::from_secs(1),
            max_in_flight: 16,
        }
    }
}

impl fmt::Debug for AlerterOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlerterOptions")
            .field("webhook_url", &self.webhook_url.as_ref().map(|_| "***"))
            .field("webhook_timeout", &self.webhook_timeout)
            .field("retry_delay", &self.retry_delay)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

/// The alerter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("alert_webhook_url {0}")]
    WebhookUrl(String),
    #[error("cannot build the alert webhook client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Checks that `url` is an absolute `http://` or `https://` URL with a host. The problem
/// never repeats the URL, which may carry a secret.
pub fn check_webhook_url(url: &str) -> Result<Url, String> {
    let parsed =
        Url::parse(url).map_err(|e| format!("must be an http:// or https:// URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http:// or https:// URL, not {}://",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(parsed)
}

/// Raises budget alerts. Cheap to clone; clones share the webhook client and its limit on
/// deliveries in flight.
#[derive(Clone)]
pub struct Alerter {
    inner: Arc<Inner>,
}

struct Inner {
    metrics: Metrics,
    webhook: Option<Webhook>,
}

/// Where and how alerts are POSTed.
struct Webhook {
    client: reqwest::Client,
    url: Url,
    /// Host and port only, for logs: the path and query may hold a secret.
    host: String,
    retry_delay: Duration,
    slots: Arc<Semaphore>,
    max_in_flight: usize,
}

impl Alerter {
    /// An alerter counting into `metrics`, delivering to the webhook in `options` if any.
    pub fn new(options: AlerterOptions, metrics: Metrics) -> Result<Alerter, AlertError> {
        let webhook = match &options.webhook_url {
            None => None,
            Some(url) => Some(Webhook::new(url, &options)?),
        };
        Ok(Alerter {
            inner: Arc::new(Inner { metrics, webhook }),
        })
    }

    /// Counts, logs and (with a webhook) sends `alert`. Never blocks and never fails: a
    /// delivery runs on its own task, and without a tokio runtime it is counted as failed.
    pub fn raise(&self, alert: Alert) {
        let Inner { metrics, webhook } = &*self.inner;
        metrics
            .budget_alert(&alert.budget_id, alert.threshold_percent)
            .increment(1);
        tracing::warn!(
            target: "tollgate::alerts",
            tenant = alert.tenant.as_deref(),
            budget_id = %alert.budget_id,
            budget_name = %alert.budget_name,
            scope = name_of(&alert.scope),
            measure = name_of(&alert.measure),
            token_type = alert.token_type.as_deref(),
            model = alert.model.as_deref(),
            threshold_percent = alert.threshold_percent,
            limit = %alert.quantity(alert.limit),
            spent = %alert.quantity(alert.spent),
            currency = alert.currency.as_deref(),
            period_start = %alert.period_start,
            period_end = %alert.period_end,
            request_id = %alert.request_id,
            "budget alert threshold crossed"
        );
        if let Some(webhook) = webhook {
            webhook.send(&alert, &metrics.alerts);
        }
    }

    /// Webhook deliveries running now, retries included (tests wait for 0).
    pub fn deliveries_in_flight(&self) -> usize {
        self.inner
            .webhook
            .as_ref()
            .map_or(0, |w| w.max_in_flight - w.slots.available_permits())
    }

    /// Whether alerts are also POSTed to a webhook.
    pub fn has_webhook(&self) -> bool {
        self.inner.webhook.is_some()
    }
}

impl fmt::Debug for Alerter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alerter")
            .field(
                "webhook_host",
                &self.inner.webhook.as_ref().map(|w| &w.host),
            )
            .finish_non_exhaustive()
    }
}

/// A unit enum's serde name (`tenant_model`, `cost`), so logs and JSON agree.
fn name_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

impl Webhook {
    fn new(url: &str, options: &AlerterOptions) -> Result<Webhook, AlertError> {
        let url = check_webhook_url(url).map_err(AlertError::WebhookUrl)?;
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (host, None) => host.unwrap_or_default().to_owned(),
            (None, Some(_)) => String::new(),
        };
        let client = reqwest::Client::builder()
            .timeout(options.webhook_timeout)
            .connect_timeout(options.webhook_timeout)
            // A redirected POST would turn into a GET; a 3xx counts as a failed delivery.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(AlertError::Client)?;
        let max_in_flight = options.max_in_flight.max(1);
        Ok(Webhook {
            client,
            url,
            host,
            retry_delay: options.retry_delay,
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        })
    }

    /// Starts delivering `alert` on its own task, if a slot is free.
    fn send(&self, alert: &Alert, stats: &AlertStats) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            tracing::warn!(
                target: "tollgate::alerts",
                budget_id = %alert.budget_id,
                threshold_percent = alert.threshold_percent,
                max_in_flight = self.max_in_flight,
                "alert webhook busy: alert not delivered"
            );
            stats.webhook_dropped.increment(1);
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                target: "tollgate::alerts",
                budget_id = %alert.budget_id,
                threshold_percent = alert.threshold_percent,
                "no async runtime: alert not delivered"
            );
            stats.webhook_failures.increment(1);
            return;
        };
        let body = match serde_json::to_vec(alert) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(target: "tollgate::alerts", %error, "alert not serializable");
                stats.webhook_failures.increment(1);
                return;
            }
        };
        let delivery = Delivery {
            client: self.client.clone(),
            url: self.url.clone(),
            host: self.host.clone(),
            retry_delay: self.retry_delay,
            failures: stats.webhook_failures.clone(),
            budget_id: alert.budget_id.clone(),
            threshold_percent: alert.threshold_percent,
            body,
        };
        runtime.spawn(async move {
            delivery.run().await;
            drop(slot);
        });
    }
}

/// One alert on its way to the webhook.
struct Delivery {
    client: reqwest::Client,
    url: Url,
    host: String,
    retry_delay: Duration,
    failures: metrics::Counter,
    budget_id: String,
    threshold_percent: u32,
    body: Vec<u8>,
}

impl Delivery {
    /// Attempts, retries once after the delay, and gives up with a log and a count.
    async fn run(self) {
        for attempt in 1..=ATTEMPTS {
            let problem = match self.attempt().await {
                Ok(()) => {
                    tracing::debug!(
                        target: "tollgate::alerts",
                        webhook_host = %self.host,
                        budget_id = %self.budget_id,
                        threshold_percent = self.threshold_percent,
                        attempt,
                        "alert delivered"
                    );
                    return;
                }
                Err(problem) => problem,
            };
            if attempt < ATTEMPTS {
                tracing::warn!(
                    target: "tollgate::alerts",
                    webhook_host = %self.host,
                    budget_id = %self.budget_id,
                    threshold_percent = self.threshold_percent,
                    attempt,
                    %problem,
                    retry_in = ?self.retry_delay,
                    "alert delivery failed; retrying"
                );
                tokio::time::sleep(self.retry_delay).await;
            } else {
                tracing::error!(
                    target: "tollgate::alerts",
                    webhook_host = %self.host,
                    budget_id = %self.budget_id,
                    threshold_percent = self.threshold_percent,
                    attempts = ATTEMPTS,
                    %problem,
                    "alert delivery failed; giving up"
                );
                self.failures.increment(1);
            }
        }
    }

    /// One POST: `Ok` on a 2xx answer.
    async fn attempt(&self) -> Result<(), String> {
        let response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(self.body.clone())
            .send()
            .await
            .map_err(describe)?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

/// A request error with its causes, without the URL (it may hold a secret).
fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".into();
    }
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use super::*;

    fn crossings(before: u64, after: u64, limit: u64, thresholds: &[u32]) -> Vec<u32> {
        crossed(before, after, limit, thresholds).collect()
    }

    #[test]
    fn reaching_a_threshold_exactly_crosses_it() {
        assert_eq!(crossings(79, 80, 100, &[80, 100]), [80]);
        assert_eq!(crossings(0, 79, 100, &[80, 100]), [] as [u32; 0]);
    }

    #[test]
    fn a_threshold_already_reached_is_not_crossed_again() {
        assert_eq!(crossings(80, 99, 100, &[80, 100]), [] as [u32; 0]);
        assert_eq!(crossings(100, 150, 100, &[80, 100]), [] as [u32; 0]);
    }

    #[test]
    fn one_charge_can_cross_several_thresholds() {
        assert_eq!(crossings(10, 100, 100, &[50, 80, 100]), [50, 80, 100]);
        assert_eq!(
            crossings(10, 5_000, 100, &[50, 80, 100, 120]),
            [50, 80, 100, 120]
        );
    }

    #[test]
    fn one_hundred_percent_is_the_limit_itself() {
        assert_eq!(
            crossings(99_999_999, 100_000_000, 100_000_000, &[100]),
            [100]
        );
        assert_eq!(
            crossings(99_999_998, 99_999_999, 100_000_000, &[100]),
            [] as [u32; 0]
        );
    }

    #[test]
    fn thresholds_over_one_hundred_percent_are_past_the_limit() {
        assert_eq!(crossings(100, 119, 100, &[120]), [] as [u32; 0]);
        assert_eq!(crossings(119, 120, 100, &[100, 120]), [120]);
    }

    #[test]
    fn marks_round_up_so_a_fraction_of_a_unit_is_not_yet_reached() {
        // 80 % of 7 is 5.6: the threshold is reached at 6, not 5.
        assert_eq!(threshold_mark(7, 80), 6);
        assert_eq!(crossings(4, 5, 7, &[80]), [] as [u32; 0]);
        assert_eq!(crossings(5, 6, 7, &[80]), [80]);
    }

    #[test]
    fn a_zero_limit_crosses_every_threshold_on_the_first_positive_charge() {
        assert_eq!(crossings(0, 1, 0, &[80, 100]), [80, 100]);
        assert_eq!(crossings(0, 0, 0, &[80, 100]), [] as [u32; 0]);
        assert_eq!(crossings(1, 2, 0, &[80, 100]), [] as [u32; 0]);
    }

    #[test]
    fn huge_limits_do_not_overflow() {
        assert_eq!(threshold_mark(u64::MAX, 100), u128::from(u64::MAX));
        assert_eq!(crossings(0, u64::MAX, u64::MAX, &[100, 200]), [100]);
        assert_eq!(crossings(u64::MAX - 1, u64::MAX, u64::MAX, &[100]), [100]);
    }

    pub(crate) fn cost_alert() -> Alert {
        Alert {
            tenant: Some("acme".into()),
            budget_id: "b-1".into(),
            budget_name: "monthly-cost".into(),
            scope: Scope::Tenant,
            measure: Measure::Cost,
            token_type: None,
            model: None,
            threshold_percent: 80,
            limit: 100_000_000,
            spent: 80_008_850,
            currency: Some("USD".into()),
            period_start: "2026-11-01T00:00:00+01:00".into(),
            period_end: "2026-12-01T00:00:00+01:00".into(),
            request_id: "r-9".into(),
        }
    }

    #[test]
    fn money_is_an_exact_decimal_in_the_json() {
        let json = serde_json::to_value(cost_alert()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "tenant": "acme",
                "budget_id": "b-1",
                "budget_name": "monthly-cost",
                "scope": "tenant",
                "measure": "cost",
                "token_type": null,
                "model": null,
                "threshold_percent": 80,
                "limit": "100.000000",
                "spent": "80.008850",
                "currency": "USD",
                "period_start": "2026-11-01T00:00:00+01:00",
                "period_end": "2026-12-01T00:00:00+01:00",
                "request_id": "r-9",
            })
        );
    }

    #[test]
    fn counts_are_integers_in_the_json() {
        let alert = Alert {
            scope: Scope::TenantModel,
            measure: Measure::Tokens,
            token_type: Some("output".into()),
            model: Some("claude-sonnet".into()),
            limit: 1_000_000,
            spent: 1_000_350,
            threshold_percent: 100,
            currency: None,
            ..cost_alert()
        };
        let json = serde_json::to_value(alert).unwrap();
        assert_eq!(json["limit"], 1_000_000);
        assert_eq!(json["spent"], 1_000_350);
        assert_eq!(json["scope"], "tenant_model");
        assert_eq!(json["token_type"], "output");
        assert_eq!(json["currency"], serde_json::Value::Null);
    }

    #[test]
    fn money_past_i64_is_still_exact() {
        let alert = Alert {
            spent: u64::MAX,
            ..cost_alert()
        };
        let json = serde_json::to_value(alert).unwrap();
        assert_eq!(json["spent"], "18446744073709.551615");
    }

    /// A log sink for one test's subscriber.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn captured_logs(work: impl FnOnce()) -> Vec<serde_json::Value> {
        let sink = Captured::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, work);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn raising_without_a_webhook_counts_and_logs_one_structured_line() {
        let metrics = Metrics::new();
        let alerter = Alerter::new(AlerterOptions::default(), metrics.clone()).unwrap();
        assert!(!alerter.has_webhook());
        let logs = captured_logs(|| alerter.raise(cost_alert()));
        assert_eq!(logs.len(), 1, "{logs:?}");
        let line = &logs[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], "tollgate::alerts");
        let fields = &line["fields"];
        assert_eq!(fields["tenant"], "acme");
        assert_eq!(fields["budget_id"], "b-1");
        assert_eq!(fields["budget_name"], "monthly-cost");
        assert_eq!(fields["scope"], "tenant");
        assert_eq!(fields["measure"], "cost");
        assert_eq!(fields["threshold_percent"], 80);
        assert_eq!(fields["limit"], "100.000000");
        assert_eq!(fields["spent"], "80.008850");
        assert_eq!(fields["currency"], "USD");
        assert_eq!(fields["request_id"], "r-9");
        assert!(fields.get("model").is_none(), "absent fields are left out");
        let rendered = metrics.render();
        assert!(
            rendered.contains(r#"tollgate_budget_alerts_total{budget="b-1",threshold="80"} 1"#),
            "{rendered}"
        );
        assert_eq!(alerter.deliveries_in_flight(), 0);
    }

    #[test]
    fn a_webhook_without_a_runtime_is_a_counted_failure_not_a_panic() {
        let metrics = Metrics::new();
        let options = AlerterOptions {
            webhook_url: Some("http://127.0.0.1:9/alerts".into()),
            ..AlerterOptions::default()
        };
        let alerter = Alerter::new(options, metrics.clone()).unwrap();
        alerter.raise(cost_alert());
        assert!(
            metrics
                .render()
                .contains("tollgate_budget_alert_webhook_failures_total 1")
        );
        assert_eq!(alerter.deliveries_in_flight(), 0);
    }

    #[test]
    fn webhook_urls_must_be_http_and_are_never_echoed() {
        assert!(check_webhook_url("https://hooks.example.com/T0/secret").is_ok());
        assert!(check_webhook_url("http://[::1]:8080/").is_ok());
        for bad in [
            "ftp://x/secret",
            "mailto:secret@x",
            "secret",
            "http://:80/secret",
        ] {
            let problem = check_webhook_url(bad).unwrap_err();
            assert!(!problem.contains("secret"), "{bad}: {problem}");
        }
        let options = AlerterOptions {
            webhook_url: Some("https://hooks.example.com/T0/secret".into()),
            ..AlerterOptions::default()
        };
        assert!(!format!("{options:?}").contains("secret"));
        let alerter = Alerter::new(options, Metrics::new()).unwrap();
        assert!(!format!("{alerter:?}").contains("secret"));
    }
}
