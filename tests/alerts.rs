//! Budget alerts against a real local webhook receiver: retries, give-ups, timeouts, the
//! bound on deliveries in flight, and the app's wiring from settings to the limiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tollgate::alerts::{Alert, Alerter, AlerterOptions};
use tollgate::app::App;
use tollgate::ledger::budgets::{Measure, Scope};
use tollgate::settings::Settings;
use tollgate::telemetry::Metrics;

/// How long any awaited event may take on a busy machine.
const DEADLINE: Duration = Duration::from_secs(10);
/// The retry delay in tests: short, but real.
const RETRY_DELAY: Duration = Duration::from_millis(5);

const ALERTS: &str = "tollgate_budget_alerts_total";
const FAILURES: &str = "tollgate_budget_alert_webhook_failures_total";
const DROPPED: &str = "tollgate_budget_alert_webhook_dropped_total";

/// How the receiver answers its nth request (counting from 1).
#[derive(Clone, Copy)]
enum Script {
    /// 204 to every request.
    Accept,
    /// 500 to the first request, 204 to the rest.
    FailFirst,
    /// 503 to every request.
    AlwaysFail,
    /// Never answers.
    Hang,
}

/// One request the receiver saw.
#[derive(Debug)]
struct Received {
    content_type: Option<String>,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// A webhook receiver on 127.0.0.1:0: its URL and the requests it sees, in order.
async fn receiver(script: Script) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let count = Arc::new(AtomicUsize::new(0));
    let handler = move |headers: HeaderMap, body: Bytes| {
        let seen_tx = seen_tx.clone();
        let count = count.clone();
        async move {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let _ = seen_tx.send(Received { content_type, body });
            match script {
                Script::Accept => StatusCode::NO_CONTENT,
                Script::FailFirst if n == 1 => StatusCode::INTERNAL_SERVER_ERROR,
                Script::FailFirst => StatusCode::NO_CONTENT,
                Script::AlwaysFail => StatusCode::SERVICE_UNAVAILABLE,
                Script::Hang => std::future::pending().await,
            }
        }
    };
    let app = Router::new().route("/hooks/alerts", post(handler));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hooks/alerts"), seen_rx)
}

/// The next request the receiver sees, within the deadline.
async fn next(seen: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(DEADLINE, seen.recv())
        .await
        .expect("a delivery arrives in time")
        .expect("the receiver runs")
}

/// Waits, polling, until `done` holds; panics at the deadline.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The sum of every series of metric `name`.
fn metric(metrics: &Metrics, name: &str) -> u64 {
    metrics
        .render()
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn options(url: Option<String>) -> AlerterOptions {
    AlerterOptions {
        webhook_url: url,
        retry_delay: RETRY_DELAY,
        ..AlerterOptions::default()
    }
}

/// The worked example's monthly cost budget, crossing 80 %.
fn monthly_cost_alert(threshold_percent: u32) -> Alert {
    Alert {
        tenant: Some("acme".into()),
        budget_id: "0193b2c4-monthly".into(),
        budget_name: "monthly-cost".into(),
        scope: Scope::Tenant,
        measure: Measure::Cost,
        token_type: None,
        model: None,
        threshold_percent,
        limit: 100_000_000,
        spent: 80_003_600,
        currency: Some("USD".into()),
        period_start: "2026-11-01T00:00:00+01:00".into(),
        period_end: "2026-12-01T00:00:00+01:00".into(),
        request_id: "r-9".into(),
    }
}

#[tokio::test]
async fn a_failed_delivery_is_retried_once_and_then_delivered() {
    let (url, mut seen) = receiver(Script::FailFirst).await;
    let metrics = Metrics::new();
    let alerter = Alerter::new(options(Some(url)), metrics.clone()).unwrap();

    alerter.raise(monthly_cost_alert(80));

    let first = next(&mut seen).await;
    let second = next(&mut seen).await;
    wait_until("the delivery to finish", || {
        alerter.deliveries_in_flight() == 0
    })
    .await;
    assert!(seen.try_recv().is_err(), "exactly two POSTs");
    let expected = json!({
        "tenant": "acme",
        "budget_id": "0193b2c4-monthly",
        "budget_name": "monthly-cost",
        "scope": "tenant",
        "measure": "cost",
        "token_type": null,
        "model": null,
        "threshold_percent": 80,
        "limit": "100.000000",
        "spent": "80.003600",
        "currency": "USD",
        "period_start": "2026-11-01T00:00:00+01:00",
        "period_end": "2026-12-01T00:00:00+01:00",
        "request_id": "r-9",
    });
    for attempt in [&first, &second] {
        assert_eq!(attempt.content_type.as_deref(), Some("application/json"));
        assert_eq!(attempt.json(), expected);
    }
    assert_eq!(first.body, second.body, "the retry sends the same alert");
    assert_eq!(metric(&metrics, ALERTS), 1);
    assert_eq!(metric(&metrics, FAILURES), 0);
    assert_eq!(metric(&metrics, DROPPED), 0);
}

#[tokio::test]
async fn a_webhook_that_always_fails_gets_two_attempts_then_the_failure_is_counted() {
    let (url, mut seen) = receiver(Script::AlwaysFail).await;
    let metrics = Metrics::new();
    let alerter = Alerter::new(options(Some(url)), metrics.clone()).unwrap();

    alerter.raise(monthly_cost_alert(80));

    wait_until("the give-up", || metric(&metrics, FAILURES) == 1).await;
    next(&mut seen).await;
    next(&mut seen).await;
    assert!(seen.try_recv().is_err(), "exactly two attempts");
    wait_until("the slot to be freed", || {
        alerter.deliveries_in_flight() == 0
    })
    .await;
    assert_eq!(metric(&metrics, ALERTS), 1);
}

#[tokio::test]
async fn without_a_webhook_an_alert_is_counted_and_nothing_else() {
    let metrics = Metrics::new();
    let alerter = Alerter::new(options(None), metrics.clone()).unwrap();
    assert!(!alerter.has_webhook());

    alerter.raise(monthly_cost_alert(80));
    alerter.raise(monthly_cost_alert(100));

    let rendered = metrics.render();
    for line in [
        r#"tollgate_budget_alerts_total{budget="0193b2c4-monthly",threshold="80"} 1"#,
        r#"tollgate_budget_alerts_total{budget="0193b2c4-monthly",threshold="100"} 1"#,
    ] {
        assert!(rendered.contains(line), "{line} in\n{rendered}");
    }
    assert_eq!(alerter.deliveries_in_flight(), 0);
    assert_eq!(metric(&metrics, FAILURES), 0);
    assert_eq!(metric(&metrics, DROPPED), 0);
}

#[tokio::test]
async fn a_silent_webhook_times_out_and_alerts_past_the_bound_are_dropped_not_queued() {
    let (url, mut seen) = receiver(Script::Hang).await;
    let metrics = Metrics::new();
    let options = AlerterOptions {
        webhook_timeout: Duration::from_millis(100),
        max_in_flight: 1,
        ..options(Some(url))
    };
    let alerter = Alerter::new(options, metrics.clone()).unwrap();

    alerter.raise(monthly_cost_alert(80));
    alerter.raise(monthly_cost_alert(100));
    assert_eq!(
        metric(&metrics, DROPPED),
        1,
        "the second alert finds no slot"
    );
    assert_eq!(metric(&metrics, ALERTS), 2, "both alerts are still counted");

    wait_until("the give-up", || metric(&metrics, FAILURES) == 1).await;
    for _ in 0..2 {
        assert_eq!(next(&mut seen).await.json()["threshold_percent"], 80);
    }
    assert!(seen.try_recv().is_err(), "exactly two attempts, one alert");
    wait_until("the slot to be freed", || {
        alerter.deliveries_in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_webhook_is_a_counted_failure() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let metrics = Metrics::new();
    let alerter = Alerter::new(options(Some(format!("http://{addr}/"))), metrics.clone()).unwrap();

    alerter.raise(monthly_cost_alert(80));

    wait_until("the give-up", || metric(&metrics, FAILURES) == 1).await;
    wait_until("the slot to be freed", || {
        alerter.deliveries_in_flight() == 0
    })
    .await;
}

/// Settings for an app on port 0 with its own rules and ledger under `dir`.
fn app_settings(dir: &std::path::Path) -> Settings {
    let rules = dir.join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("rules.yaml"),
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n",
    )
    .unwrap();
    Settings {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        rules_dir: rules,
        watch_rules: false,
        database_url: format!("sqlite://{}", dir.join("ledger.db").display()),
        ..Settings::default()
    }
}

#[tokio::test]
async fn the_app_hands_the_limiter_an_alerter_with_the_configured_webhook() {
    let (url, mut seen) = receiver(Script::Accept).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        alert_webhook_url: Some(url),
        alert_webhook_timeout_ms: 2_000,
        ..app_settings(dir.path())
    };
    let app = App::build(settings).await.expect("the app builds");
    let alerter = app.limiter().alerter().expect("the limiter has an alerter");
    assert!(alerter.has_webhook());

    alerter.raise(monthly_cost_alert(100));

    assert_eq!(next(&mut seen).await.json()["threshold_percent"], 100);
    wait_until("the delivery to finish", || {
        alerter.deliveries_in_flight() == 0
    })
    .await;
    assert!(
        seen.try_recv().is_err(),
        "one POST when the first is accepted"
    );
}

#[tokio::test]
async fn the_app_refuses_a_webhook_that_is_not_http() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        alert_webhook_url: Some("ftp://hooks.example.com/secret".into()),
        ..app_settings(dir.path())
    };
    let error = App::build(settings).await.err().expect("the app refuses");
    let message = format!("{error:#}");
    assert!(message.contains("'alert_webhook_url'"), "{message}");
    assert!(!message.contains("secret"), "{message}");
}
