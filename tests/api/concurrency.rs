//! Many concurrent clients racing for one counter: exactly the limit passes.

use tollgate::settings::Settings;

use crate::helpers::*;

const LIMIT: usize = 50;
const CLIENTS: usize = 32;
const CALLS_PER_CLIENT: usize = 8;

fn rules() -> String {
    format!(
        "domain: race\ndescriptors:\n  - key: k\n    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}\n"
    )
}

async fn race_one_app(tweak: impl FnOnce(&mut Settings)) -> usize {
    let app = spawn_with(&[("r.yaml", &rules())], tweak).await;
    race(
        &[&app],
        request("race", &[&[("k", "hot")]]),
        CLIENTS,
        CALLS_PER_CLIENT,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_limit_passes_on_the_memory_store() {
    assert_eq!(race_one_app(|_| {}).await, LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_limit_passes_on_redis() {
    let allowed = race_one_app(|s| {
        s.store = redis_url();
        s.key_prefix = unique_prefix();
    })
    .await;
    assert_eq!(allowed, LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_limit_passes_on_redis_when_stopping_increments() {
    let allowed = race_one_app(|s| {
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
    let configure = |s: &mut Settings| {
        s.store = redis_url();
        s.key_prefix = prefix.clone();
    };
    let a = spawn_with(&[("r.yaml", &rules())], configure).await;
    let b = spawn_with(&[("r.yaml", &rules())], configure).await;
    let allowed = race(
        &[&a, &b],
        request("race", &[&[("k", "hot")]]),
        CLIENTS / 2,
        CALLS_PER_CLIENT,
    )
    .await;
    assert_eq!(allowed, LIMIT);
}
