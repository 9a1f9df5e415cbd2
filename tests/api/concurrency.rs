//! Many concurrent clients racing for one counter: exactly the limit passes.

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use tollgate::settings::Settings;

use crate::helpers::*;

const LIMIT: usize = 50;
const CLIENTS: usize = 32;
const CALLS_PER_CLIENT: usize = 8;

async fn race(tweak: impl FnOnce(&mut Settings)) -> usize {
    let rules = format!(
        "domain: race\ndescriptors:\n  - key: k\n    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}\n"
    );
    let app = spawn_with(&[("r.yaml", &rules)], tweak).await;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            // Each client its own connection, so calls really run in parallel.
            let http2 = app.grpc.clone();
            tokio::spawn(async move {
                let mut allowed = 0;
                for _ in 0..CALLS_PER_CLIENT {
                    let r = http2.clone().should_rate_limit(request("race", &[&[("k", "hot")]])).await.unwrap();
                    if r.into_inner().overall_code == Code::Ok as i32 {
                        allowed += 1;
                    }
                }
                allowed
            })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        allowed += t.await.unwrap();
    }
    allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_limit_passes_on_the_memory_store() {
    assert_eq!(race(|_| {}).await, LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_limit_passes_on_redis() {
    let allowed = race(|s| {
        s.store = redis_url();
        s.key_prefix = unique_prefix();
    })
    .await;
    assert_eq!(allowed, LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_limit_passes_on_redis_when_stopping_increments() {
    let allowed = race(|s| {
        s.store = redis_url();
        s.key_prefix = unique_prefix();
        s.stop_incrementing_when_over_limit = true;
    })
    .await;
    assert_eq!(allowed, LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_redis_share_the_limit() {
    let prefix = unique_prefix();
    let rules = format!(
        "domain: race\ndescriptors:\n  - key: k\n    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}\n"
    );
    let configure = |s: &mut Settings| {
        s.store = redis_url();
        s.key_prefix = prefix.clone();
    };
    let a = spawn_with(&[("r.yaml", &rules)], configure).await;
    let b = spawn_with(&[("r.yaml", &rules)], configure).await;
    let mut tasks = Vec::new();
    for replica in [&a, &b] {
        for _ in 0..CLIENTS / 2 {
            let client = replica.grpc.clone();
            tasks.push(tokio::spawn(async move {
                let mut allowed = 0;
                for _ in 0..CALLS_PER_CLIENT {
                    let r = client.clone().should_rate_limit(request("race", &[&[("k", "hot")]])).await.unwrap();
                    allowed += usize::from(r.into_inner().overall_code == Code::Ok as i32);
                }
                allowed
            }));
        }
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += t.await.unwrap();
    }
    assert_eq!(allowed, LIMIT);
}
