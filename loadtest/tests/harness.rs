//! The harness against the real thing: generated rules load in tollgate, every generated
//! request matches a limited rule there, and the driver runs against both servers. No
//! timing is asserted: these check that the measurement measures the right thing.

use std::time::Duration;

use loadtest::driver::{self, RunConfig};
use loadtest::noop::NoopRls;
use loadtest::scenario::{self, Generator, Params, Scenario, Unit};
use loadtest::setup;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tollgate::rules::load::{LoadOptions, load_dir};
use tollgate::telemetry::Metrics;

/// The admin token the token-budget app starts with.
const TOKEN: &str = "load-test-bootstrap-token-0123456789abcdef";

fn small() -> Params {
    Params {
        keys: 1000,
        ..Params::default()
    }
}

#[test]
fn every_scenario_writes_rules_that_tollgate_loads() {
    for scenario in Scenario::ALL {
        let dir = tempfile::tempdir().unwrap();
        scenario::write_rules(dir.path(), scenario, &small()).unwrap();
        let rules = load_dir(dir.path(), &LoadOptions::default(), &Metrics::new())
            .unwrap_or_else(|e| panic!("{}: {e}", scenario.name()));
        assert_eq!(
            rules.domain_names(),
            [scenario.domain()],
            "{}",
            scenario.name()
        );
        // Only token-budget's domain is a quota domain (tenant checks and budgets).
        let quota = rules.domain(scenario.domain()).unwrap().quota.is_some();
        assert_eq!(
            quota,
            scenario == Scenario::TokenBudget,
            "{}",
            scenario.name()
        );
    }
}

#[test]
fn rules_10k_has_the_requested_number_of_rules() {
    let dir = tempfile::tempdir().unwrap();
    scenario::write_rules(dir.path(), Scenario::Rules10k, &Params::default()).unwrap();
    let rules = load_dir(dir.path(), &LoadOptions::default(), &Metrics::new()).unwrap();
    assert_eq!(rules.dump().lines().count(), 10_000);
}

#[test]
fn every_generated_descriptor_matches_a_limited_rule() {
    for scenario in Scenario::ALL {
        let dir = tempfile::tempdir().unwrap();
        scenario::write_rules(dir.path(), scenario, &small()).unwrap();
        let rules = load_dir(dir.path(), &LoadOptions::default(), &Metrics::new()).unwrap();
        let domain = rules.domain(scenario.domain()).unwrap();
        let mut generator = Generator::new(scenario, small(), 7);
        for _ in 0..200 {
            let request = generator.next_request();
            assert_eq!(request.domain, scenario.domain());
            for descriptor in &request.descriptors {
                // Stream-done usage is settled against the budgets, not counted by rules.
                let usage = descriptor.entries.iter().any(|e| e.key == "token_type");
                if scenario == Scenario::TokenBudget && usage {
                    continue;
                }
                let entries = descriptor
                    .entries
                    .iter()
                    .map(|e| (e.key.as_str(), e.value.as_str()));
                let path = domain.find(entries).unwrap_or_else(|| {
                    panic!("{}: {descriptor:?} matches no rule", scenario.name())
                });
                let limits = &path.last().unwrap().limits;
                assert!(
                    limits.iter().any(|l| !l.unlimited),
                    "{}: {descriptor:?} matches a rule without a limit",
                    scenario.name()
                );
            }
        }
    }
}

#[test]
fn the_unit_is_the_window_of_every_rule_tollgate_loads() {
    for (unit, want) in [(Unit::Minute, 60), (Unit::Day, 86_400)] {
        let dir = tempfile::tempdir().unwrap();
        let params = Params { unit, ..small() };
        scenario::write_rules(dir.path(), Scenario::HighCardinality, &params).unwrap();
        let rules = load_dir(dir.path(), &LoadOptions::default(), &Metrics::new()).unwrap();
        let domain = rules.domain(Scenario::HighCardinality.domain()).unwrap();
        let mut generator = Generator::new(Scenario::HighCardinality, params, 0);
        let request = generator.next_request();
        let entries = request.descriptors[0]
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()));
        let path = domain.find(entries).unwrap();
        let limits = &path.last().unwrap().limits;
        assert!(!limits.is_empty());
        for limit in limits {
            assert_eq!(limit.unit.seconds(), want, "{unit:?}");
        }
    }
}

#[test]
fn writing_rules_replaces_the_previous_scenario() {
    let dir = tempfile::tempdir().unwrap();
    scenario::write_rules(dir.path(), Scenario::One, &small()).unwrap();
    scenario::write_rules(dir.path(), Scenario::Five, &small()).unwrap();
    let rules = load_dir(dir.path(), &LoadOptions::default(), &Metrics::new()).unwrap();
    assert_eq!(rules.domain_names(), [Scenario::Five.domain()]);
}

fn config(target: String, scenario: Scenario) -> RunConfig {
    RunConfig {
        target,
        scenario,
        params: small(),
        connections: 2,
        concurrency: 4,
        warmup: Duration::from_millis(50),
        duration: Duration::from_millis(300),
        progress: false,
        label: "test".into(),
        round: 1,
        // The servers run in this process.
        server_pid: Some(std::process::id()),
        variant: None,
    }
}

#[tokio::test]
async fn the_driver_measures_the_noop_server_in_both_loops() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NoopRls::service())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let config = config(target, Scenario::Five);
    let clients = driver::connect(&config.target, config.connections)
        .await
        .unwrap();

    let closed = driver::run_closed(&config, &clients).await;
    assert!(closed.requests > 0, "{closed:?}");
    assert_eq!((closed.errors, closed.over_limit), (0, 0), "{closed:?}");
    assert!(closed.latency.p50_us > 0.0 && closed.latency.p50_us <= closed.latency.p999_us);
    if cfg!(target_os = "linux") {
        assert!(
            closed.client_cpu.is_some() && closed.server_cpu.is_some(),
            "{closed:?}"
        );
        assert!(closed.server_rss_mib.is_some_and(|m| m > 0.0), "{closed:?}");
    }

    let open = driver::run_open(&config, &clients, 200.0).await;
    assert!(open.requests > 0, "{open:?}");
    assert_eq!(open.errors, 0, "{open:?}");
    assert_eq!(open.rate, Some(200.0));
    // Never more answers than were due in the measured window (the pacer is not early).
    assert!(open.requests <= 61, "{open:?}");
    server.abort();
}

/// The token-budget flow against real budgets: the setup makes tenants, grants, prices and
/// budgets through the admin API, then every call of a closed-loop run passes, and the
/// usage it settled reaches the ledger.
#[tokio::test]
async fn tollgate_answers_every_token_budget_call_ok_under_the_generated_rules() {
    let rules = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    scenario::write_rules(rules.path(), Scenario::TokenBudget, &small()).unwrap();
    let settings = tollgate::settings::Settings {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        rules_dir: rules.path().to_owned(),
        watch_rules: false,
        store_deadline_ms: 2_000,
        shutdown_grace_secs: 1,
        database_url: format!("sqlite://{}", data.path().join("ledger.db").display()),
        outbox_path: data.path().join("outbox.jsonl"),
        bootstrap_token: Some(TOKEN.to_owned()),
        ..tollgate::settings::Settings::default()
    };
    let app = tollgate::app::App::build(settings).await.unwrap();
    let target = format!("http://{}", app.grpc_addr());
    let http = format!("http://{}", app.http_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    setup::token_budget(&http, &target, TOKEN, Duration::from_secs(10))
        .await
        .unwrap();
    let config = config(target, Scenario::TokenBudget);
    let clients = driver::connect(&config.target, config.connections)
        .await
        .unwrap();
    let result = driver::run_closed(&config, &clients).await;
    assert!(result.requests > 0, "{result:?}");
    assert_eq!((result.errors, result.over_limit), (0, 0), "{result:?}");
    // The ledger writer moves the settled usage from the outbox into the ledger, where the
    // budget report reads what was spent.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let spent_tokens = loop {
        let report: serde_json::Value = reqwest::Client::new()
            .get(format!("{http}/v1/reports/budgets?limit=500"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let spent: u64 = report["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["measure"] == "tokens")
            .map(|b| b["spent"].as_u64().unwrap())
            .sum();
        if spent > 0 || std::time::Instant::now() > deadline {
            break spent;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(spent_tokens > 0, "settled usage reaches the ledger");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn connecting_to_a_bad_or_silent_target_fails_naming_it() {
    let err = driver::connect("not a url", 1).await.err().unwrap();
    assert!(
        format!("{err:#}").contains("bad target not a url"),
        "{err:#}"
    );
    let err = driver::connect("/no/authority", 1).await.err().unwrap();
    assert!(format!("{err:#}").contains("no host:port"), "{err:#}");

    // A port nothing listens on: bound, then released.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("http://127.0.0.1:{port}");
    let err = driver::connect(&target, 1).await.err().unwrap();
    assert!(
        format!("{err:#}").contains(&format!("cannot connect to {target}")),
        "{err:#}"
    );
}
