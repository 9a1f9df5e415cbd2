//! Matching: `Domain::find` on a small config and on 10,000 rules, for exact values, the
//! default node, nested keys, wildcards (first and last of 20 siblings) and a miss.
//!
//! `cargo bench --bench matching`

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::rules::RuleSet;
use tollgate::rules::load::{LoadOptions, compile};
use tollgate::telemetry::Metrics;

const SMALL: &str = r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: api_key
    rate_limit: {unit: minute, requests_per_unit: 100}
    descriptors:
      - key: path
        value: /v1/expensive
        rate_limit: {unit: minute, requests_per_unit: 5}
  - key: caller
    value: internal
  - key: user_agent
    value: crawler*
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 1000}
"#;

fn compiled(yaml: &str) -> RuleSet {
    compile(
        &[(PathBuf::from("bench.yaml"), yaml.to_owned())],
        &LoadOptions::default(),
        &Metrics::new(),
    )
    .expect("bench rules compile")
}

/// `n` exact-value rules under one key, plus a default node for the same key.
fn many_rules(n: u32) -> String {
    let mut y = String::from(
        "domain: many\ndescriptors:\n  - key: route\n    rate_limit: {unit: minute, requests_per_unit: 1}\n",
    );
    for i in 0..n {
        y.push_str(&format!("  - key: route\n    value: r{i}\n    rate_limit: {{unit: minute, requests_per_unit: 100}}\n"));
    }
    y
}

/// 20 wildcard siblings `/svc00/*` .. `/svc19/*`.
fn wildcards() -> String {
    let mut y = String::from("domain: wild\ndescriptors:\n");
    for i in 0..20 {
        y.push_str(&format!("  - key: path\n    value: /svc{i:02}/*\n    rate_limit: {{unit: minute, requests_per_unit: 100}}\n"));
    }
    y
}

fn matching(c: &mut Criterion) {
    let small = compiled(SMALL);
    let edge = small.domain("edge").unwrap();
    let mut group = c.benchmark_group("find/small");
    group.bench_function("default_value", |b| {
        b.iter(|| black_box(edge.find(black_box([("remote_address", "10.0.0.1")]))))
    });
    group.bench_function("nested_exact", |b| {
        b.iter(|| black_box(edge.find(black_box([("api_key", "k-1"), ("path", "/v1/expensive")]))))
    });
    group.bench_function("wildcard", |b| {
        b.iter(|| black_box(edge.find(black_box([("user_agent", "crawler-bot/2.1")]))))
    });
    group.bench_function("miss", |b| {
        b.iter(|| black_box(edge.find(black_box([("unknown", "v")]))))
    });
    group.finish();

    let mut group = c.benchmark_group("find/rules");
    for n in [10, 1_000, 10_000] {
        let rules = compiled(&many_rules(n));
        let domain = rules.domain("many").unwrap();
        let values: Vec<String> = (0..n).map(|i| format!("r{}", (i * 7919) % n)).collect();
        let mut next = 0;
        group.bench_function(format!("exact_of_{n}"), |b| {
            b.iter(|| {
                next = (next + 1) % values.len();
                black_box(domain.find([("route", values[next].as_str())]))
            })
        });
    }
    group.finish();

    let wild = compiled(&wildcards());
    let domain = wild.domain("wild").unwrap();
    let mut group = c.benchmark_group("find/wildcard_siblings");
    group.bench_function("first_of_20", |b| {
        b.iter(|| black_box(domain.find(black_box([("path", "/svc00/items/42")]))))
    });
    group.bench_function("last_of_20", |b| {
        b.iter(|| black_box(domain.find(black_box([("path", "/svc19/items/42")]))))
    });
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
