//! The decision path: `Limiter::decide` on the memory store with a hand-held clock, for
//! one descriptor (hot key and a million keys), five descriptors, 10,000 rules and the
//! token-budget request path (a check-only descriptor among three).
//!
//! `cargo bench --bench decide`

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::clock::ManualClock;
use tollgate::limiter::{Descriptor, Limiter, LimiterOptions, Request};
use tollgate::rules::load::{LoadOptions, compile};
use tollgate::rules::watch::CurrentRules;
use tollgate::store::{MemoryStore, Store};
use tollgate::telemetry::Metrics;

/// A whole hour (1,800,000,000 is one), so every iteration stays in one window.
const NOW: u64 = 1_800_000_000;
/// Generous, so every decision is OK and the bench measures the common path.
const LIMIT: &str = "{unit: hour, requests_per_unit: 4000000000}";

fn limiter(yaml: &str) -> Limiter {
    let metrics = Metrics::new();
    let rules = compile(
        &[(PathBuf::from("bench.yaml"), yaml.to_owned())],
        &LoadOptions::default(),
        &metrics,
    )
    .expect("bench rules compile");
    let rules: CurrentRules = Arc::new(ArcSwapOption::from_pointee(rules));
    let clock = Arc::new(ManualClock::at_secs(NOW));
    let store = Store::Memory(MemoryStore::new(clock.clone()));
    Limiter::new(rules, store, clock, metrics, LimiterOptions::default())
}

fn descriptor<'a>(entries: &[(&'a str, &'a str)], hits: Option<u64>) -> Descriptor<'a> {
    Descriptor {
        entries: entries.to_vec(),
        hits_addend: hits,
        ..Descriptor::default()
    }
}

fn request<'a>(domain: &'a str, descriptors: Vec<Descriptor<'a>>) -> Request<'a> {
    Request {
        domain,
        descriptors,
        hits_addend: 0,
    }
}

fn decide(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("decide/memory");

    let one = limiter(&format!(
        "domain: d\ndescriptors:\n  - key: api_key\n    rate_limit: {LIMIT}\n"
    ));
    let hot = request("d", vec![descriptor(&[("api_key", "key-1")], None)]);
    group.bench_function("one_descriptor", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(one.decide(black_box(&hot)).await.unwrap()) })
    });

    let users: Vec<String> = (0..1_000_000).map(|i| format!("u{i}")).collect();
    let mut next = 0;
    group.bench_function("one_descriptor_1m_keys", |b| {
        b.to_async(&runtime).iter(|| {
            next = (next + 7919) % users.len();
            let request = request(
                "d",
                vec![descriptor(&[("api_key", users[next].as_str())], None)],
            );
            let one = &one;
            async move { black_box(one.decide(&request).await.unwrap()) }
        })
    });

    let five = limiter(&format!(
        "domain: d\ndescriptors:\n\
         \x20 - key: remote_address\n    rate_limit: {LIMIT}\n\
         \x20 - key: api_key\n    rate_limit: {LIMIT}\n    descriptors:\n\
         \x20     - key: path\n        value: /v1/chat/completions\n        rate_limit: {LIMIT}\n\
         \x20 - key: tenant_id\n    descriptors:\n      - key: model\n        rate_limit: {LIMIT}\n\
         \x20 - key: user_agent\n    rate_limit: {LIMIT}\n"
    ));
    let five_request = request(
        "d",
        vec![
            descriptor(&[("remote_address", "10.0.0.1")], None),
            descriptor(&[("api_key", "key-1")], None),
            descriptor(
                &[("api_key", "key-1"), ("path", "/v1/chat/completions")],
                None,
            ),
            descriptor(&[("tenant_id", "t1"), ("model", "m1")], None),
            descriptor(&[("user_agent", "client/1")], None),
        ],
    );
    group.bench_function("five_descriptors", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(five.decide(black_box(&five_request)).await.unwrap()) })
    });

    let mut many = String::from("domain: d\ndescriptors:\n");
    for i in 0..10_000 {
        many.push_str(&format!(
            "  - key: route\n    value: r{i}\n    rate_limit: {LIMIT}\n"
        ));
    }
    let rules_10k = limiter(&many);
    let routes: Vec<String> = (0..10_000).map(|i| format!("r{i}")).collect();
    let mut next = 0;
    group.bench_function("rules_10k", |b| {
        b.to_async(&runtime).iter(|| {
            next = (next + 7919) % routes.len();
            let request = request(
                "d",
                vec![descriptor(&[("route", routes[next].as_str())], None)],
            );
            let rules_10k = &rules_10k;
            async move { black_box(rules_10k.decide(&request).await.unwrap()) }
        })
    });

    let budget = limiter(&format!(
        "domain: ai-gateway\ndescriptors:\n\
         \x20 - key: tenant_id\n    rate_limit: {LIMIT}\n    descriptors:\n\
         \x20     - key: model\n        rate_limit: {LIMIT}\n\
         \x20     - key: session_id\n        rate_limit: {LIMIT}\n"
    ));
    let request_path = request(
        "ai-gateway",
        vec![
            descriptor(&[("tenant_id", "acme")], None),
            descriptor(
                &[("tenant_id", "acme"), ("model", "claude-sonnet")],
                Some(0),
            ),
            descriptor(&[("tenant_id", "acme"), ("session_id", "s-123")], None),
        ],
    );
    group.bench_function("token_budget_request_path", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(budget.decide(black_box(&request_path)).await.unwrap()) })
    });
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
