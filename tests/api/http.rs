//! The HTTP side: health check, `/json`, config dump, metrics, and health on shutdown.

use serde_json::{Value, json};

use crate::helpers::*;

const RULES: &str = r#"
domain: web
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 1, name: per-user}
"#;

async fn post_json(app: &TestApp, body: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{}/json", app.http))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn healthcheck_answers_ok() {
    let app = spawn(RULES).await;
    let r = reqwest::get(format!("{}/healthcheck", app.http))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "OK");
}

#[tokio::test]
async fn json_answers_200_then_429_in_proto3_json() {
    let app = spawn(RULES).await;
    let body = r#"{"domain":"web","descriptors":[{"entries":[{"key":"user","value":"u1"}]}]}"#;
    let (status, text) = post_json(&app, body).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        json!({"overallCode":"OK","statuses":[{"code":"OK","currentLimit":{"name":"per-user","requestsPerUnit":1,"unit":"MINUTE"},"durationUntilReset":"60s"}]})
    );
    let (status, text) = post_json(&app, body).await;
    assert_eq!(status, 429);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["overallCode"],
        "OVER_LIMIT"
    );
}

#[tokio::test]
async fn json_rejects_bad_input_with_400_and_says_why() {
    let app = spawn(RULES).await;
    let (status, text) = post_json(&app, "{not json").await;
    assert_eq!(status, 400);
    assert!(text.starts_with("Bad Request"), "{text}");
    let (status, text) = post_json(&app, r#"{"domain":"web","descriptors":[],"extra":1}"#).await;
    assert_eq!(status, 400);
    assert!(text.contains("extra"), "{text}");
    let (status, text) = post_json(
        &app,
        r#"{"domain":"","descriptors":[{"entries":[{"key":"a"}]}]}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.contains("domain must not be empty"), "{text}");
}

#[tokio::test]
async fn rlconfig_dumps_the_loaded_rules() {
    let app = spawn(RULES).await;
    let text = reqwest::get(format!("{}/rlconfig", app.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        text,
        "web.user: unit=MINUTE requests_per_unit=1, shadow_mode: false, quota_mode: false, name: per-user\n"
    );
}

#[tokio::test]
async fn metrics_count_config_loads_and_calls() {
    let app = spawn(RULES).await;
    app.call(request("web", &[&[("user", "u")]])).await;
    assert_eq!(app.metric("ratelimit_service_config_load_success").await, 1);
    assert_eq!(
        app.metric(r#"ratelimit_service_total_requests{grpc_method="ShouldRateLimit"}"#)
            .await,
        1
    );
    assert_eq!(
        app.metric(r#"ratelimit_service_rate_limit_within_limit{domain="web",key1="user"}"#)
            .await,
        1
    );
}

#[tokio::test]
async fn response_time_is_a_histogram_with_the_reference_buckets() {
    let app = spawn(RULES).await;
    for _ in 0..3 {
        app.call(request("web", &[&[("user", "u")]])).await;
    }
    let text = app.metrics().await;
    assert!(
        text.contains("# TYPE ratelimit_service_response_time_seconds histogram"),
        "{text}"
    );
    let series = |suffix: &str| format!(r#"ratelimit_service_response_time_seconds{suffix}"#);
    // Every call answered well within the largest bucket.
    for le in ["0.005", "0.25", "10", "+Inf"] {
        let bucket = series(&format!(
            r#"_bucket{{grpc_method="ShouldRateLimit",le="{le}"}}"#
        ));
        assert!(
            text.lines().any(|l| l.starts_with(&bucket)),
            "no {bucket} in {text}"
        );
    }
    assert_eq!(
        app.metric(&series(r#"_bucket{grpc_method="ShouldRateLimit",le="10"}"#))
            .await,
        3
    );
    assert_eq!(
        app.metric(&series(r#"_count{grpc_method="ShouldRateLimit"}"#))
            .await,
        3
    );
}

#[tokio::test]
async fn the_store_being_down_fails_fast_and_turns_health_red() {
    // Nothing listens on port 1: every call fails inside the deadline.
    let app = spawn_with(&[("r.yaml", RULES)], |s| {
        s.store = "redis://127.0.0.1:1".into();
        s.store_deadline_ms = 50;
    })
    .await;
    let err = app
        .try_call(request("web", &[&[("user", "u")]]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let r = reqwest::get(format!("{}/healthcheck", app.http))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 500);
    assert_eq!(
        app.metric(r#"ratelimit_service_should_rate_limit_error{err_type="redis_error"}"#)
            .await,
        1
    );
    let (status, _) = post_json(
        &app,
        r#"{"domain":"web","descriptors":[{"entries":[{"key":"user","value":"u"}]}]}"#,
    )
    .await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn grpc_health_serves_then_turns_not_serving_before_draining() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    // A shutdown delay keeps the listeners open after health flips, as for a load balancer.
    let app = spawn_with(&[("r.yaml", RULES)], |s| s.shutdown_delay_secs = 5).await;
    let channel = tonic::transport::Endpoint::from_shared(app.grpc_addr_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = |name: &str| HealthCheckRequest {
        service: name.into(),
    };
    for name in ["", "ratelimit"] {
        let r = health.check(status(name)).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "service {name:?}");
    }
    let stopping = tokio::spawn(app.stop());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(4);
    loop {
        let both = [
            health
                .check(status(""))
                .await
                .unwrap()
                .into_inner()
                .status(),
            health
                .check(status("ratelimit"))
                .await
                .unwrap()
                .into_inner()
                .status(),
        ];
        if both == [ServingStatus::NotServing; 2] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never turned NOT_SERVING: {both:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stopping.await.unwrap();
}
