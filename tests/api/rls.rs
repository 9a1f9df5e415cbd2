//! The reference service's documented behaviours, over gRPC.

use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;

use crate::helpers::*;

const BASIC: &str = r#"
domain: basic
descriptors:
  - key: key1
    rate_limit:
      unit: minute
      requests_per_unit: 3
  - key: key1
    value: special
    rate_limit:
      name: special-limit
      unit: hour
      requests_per_unit: 1
  - key: key2
    descriptors:
      - key: subkey
        rate_limit:
          unit: second
          requests_per_unit: 2
  - key: internal
    value: "yes"
"#;

#[tokio::test]
async fn counts_to_the_limit_then_says_over_limit() {
    let app = spawn(BASIC).await;
    for remaining in [2, 1, 0] {
        let r = app.call(request("basic", &[&[("key1", "a")]])).await;
        assert_eq!(overall(&r), Code::Ok);
        let s = &r.statuses[0];
        assert_eq!(code(s), Code::Ok);
        assert_eq!(s.limit_remaining, remaining);
        let limit = s.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (3, Unit::Minute as i32)
        );
        assert_eq!(s.duration_until_reset.as_ref().unwrap().seconds, 60);
    }
    let r = app.call(request("basic", &[&[("key1", "a")]])).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(code(&r.statuses[0]), Code::OverLimit);
    assert_eq!(r.statuses[0].limit_remaining, 0);
}

#[tokio::test]
async fn a_new_window_starts_a_new_count() {
    let app = spawn(BASIC).await;
    for _ in 0..4 {
        app.call(request("basic", &[&[("key1", "a")]])).await;
    }
    app.clock.advance(Duration::from_secs(59));
    let r = app.call(request("basic", &[&[("key1", "a")]])).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(
        r.statuses[0].duration_until_reset.as_ref().unwrap().seconds,
        1
    );
    app.clock.advance(Duration::from_secs(1));
    let r = app.call(request("basic", &[&[("key1", "a")]])).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses[0].limit_remaining, 2);
}

#[tokio::test]
async fn a_specific_value_beats_the_default_and_keeps_its_own_counter() {
    let app = spawn(BASIC).await;
    let r = app.call(request("basic", &[&[("key1", "special")]])).await;
    let s = &r.statuses[0];
    assert_eq!(s.current_limit.as_ref().unwrap().name, "special-limit");
    assert_eq!(s.current_limit.as_ref().unwrap().requests_per_unit, 1);
    assert_eq!(code(s), Code::Ok);
    let r = app.call(request("basic", &[&[("key1", "special")]])).await;
    assert_eq!(code(&r.statuses[0]), Code::OverLimit);
    // Default-matched values count separately per value.
    let r = app.call(request("basic", &[&[("key1", "other")]])).await;
    assert_eq!(
        (code(&r.statuses[0]), r.statuses[0].limit_remaining),
        (Code::Ok, 2)
    );
    let r = app.call(request("basic", &[&[("key1", "third")]])).await;
    assert_eq!(r.statuses[0].limit_remaining, 2);
}

#[tokio::test]
async fn several_descriptors_get_one_status_each_in_order() {
    let app = spawn(BASIC).await;
    let req = request(
        "basic",
        &[
            &[("key1", "special")],
            &[("nomatch", "x")],
            &[("key2", "v"), ("subkey", "s")],
            &[("internal", "yes")],
        ],
    );
    let r = app.call(req.clone()).await;
    assert_eq!(r.statuses.len(), 4);
    assert_eq!(codes(&r), vec![Code::Ok; 4]);
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        1
    );
    assert!(r.statuses[1].current_limit.is_none(), "no rule, no limit");
    assert_eq!(
        r.statuses[2]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        2
    );
    assert!(
        r.statuses[3].current_limit.is_none(),
        "a whitelist entry carries no limit"
    );
    let r = app.call(req).await;
    assert_eq!(
        overall(&r),
        Code::OverLimit,
        "one descriptor over makes the call over"
    );
    assert_eq!(
        codes(&r),
        vec![Code::OverLimit, Code::Ok, Code::Ok, Code::Ok]
    );
}

#[tokio::test]
async fn limits_apply_only_at_the_exact_depth() {
    let app = spawn(BASIC).await;
    // key2 has no limit of its own; a parent's limit is never inherited.
    let r = app.call(request("basic", &[&[("key2", "v")]])).await;
    assert!(r.statuses[0].current_limit.is_none());
    // Deeper than the config: no limit.
    let r = app
        .call(request(
            "basic",
            &[&[("key2", "v"), ("subkey", "s"), ("extra", "e")]],
        ))
        .await;
    assert!(r.statuses[0].current_limit.is_none());
    let r = app
        .call(request("basic", &[&[("key1", "a"), ("extra", "e")]]))
        .await;
    assert!(r.statuses[0].current_limit.is_none());
}

#[tokio::test]
async fn an_exact_match_that_dead_ends_does_not_fall_back_to_the_default() {
    let app = spawn(
        r#"
domain: d
descriptors:
  - key: k
    value: exact
    descriptors:
      - key: sub
        value: only
        rate_limit: {unit: minute, requests_per_unit: 1}
  - key: k
    descriptors:
      - key: sub
        rate_limit: {unit: minute, requests_per_unit: 7}
"#,
    )
    .await;
    let r = app
        .call(request("d", &[&[("k", "exact"), ("sub", "other")]]))
        .await;
    assert!(
        r.statuses[0].current_limit.is_none(),
        "no backtracking to the default k"
    );
    let r = app
        .call(request("d", &[&[("k", "else"), ("sub", "other")]]))
        .await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        7
    );
}

const WILD: &str = r#"
domain: wild
descriptors:
  - key: path
    value: /api/*
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: path
    value: /api/special
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: path
    value: "*/admin/*"
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: path
    value: /shared/*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: path
    rate_limit: {unit: minute, requests_per_unit: 100}
"#;

#[tokio::test]
async fn wildcards_match_in_config_order_after_exact_values() {
    let app = spawn(WILD).await;
    let limit_of = |r: &envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse| {
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit
    };
    assert_eq!(
        limit_of(
            &app.call(request("wild", &[&[("path", "/api/special")]]))
                .await
        ),
        10
    );
    assert_eq!(
        limit_of(&app.call(request("wild", &[&[("path", "/api/x")]])).await),
        2
    );
    // Both patterns match; the first in config order wins.
    assert_eq!(
        limit_of(
            &app.call(request("wild", &[&[("path", "/api/admin/x")]]))
                .await
        ),
        2
    );
    assert_eq!(
        limit_of(
            &app.call(request("wild", &[&[("path", "/v1/admin/users")]]))
                .await
        ),
        5
    );
    assert_eq!(
        limit_of(&app.call(request("wild", &[&[("path", "/other")]])).await),
        100
    );
}

#[tokio::test]
async fn wildcard_values_count_separately_unless_they_share_the_threshold() {
    let app = spawn(WILD).await;
    for _ in 0..2 {
        app.call(request("wild", &[&[("path", "/api/a")]])).await;
    }
    let r = app.call(request("wild", &[&[("path", "/api/b")]])).await;
    assert_eq!(
        code(&r.statuses[0]),
        Code::Ok,
        "a different value has its own counter"
    );
    app.call(request("wild", &[&[("path", "/shared/a")]])).await;
    app.call(request("wild", &[&[("path", "/shared/b")]])).await;
    let r = app.call(request("wild", &[&[("path", "/shared/c")]])).await;
    assert_eq!(
        code(&r.statuses[0]),
        Code::OverLimit,
        "shared values use one counter"
    );
}

#[tokio::test]
async fn a_request_override_replaces_the_config_limit() {
    let app = spawn(BASIC).await;
    let req = RateLimitRequest {
        domain: "basic".into(),
        descriptors: vec![descriptor_with_limit(
            &[("key1", "a")],
            1,
            Unit::Hour as i32,
        )],
        hits_addend: 0,
    };
    let r = app.call(req.clone()).await;
    let limit = r.statuses[0].current_limit.clone().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (1, Unit::Hour as i32)
    );
    assert_eq!(
        r.statuses[0].duration_until_reset.as_ref().unwrap().seconds,
        3600
    );
    assert_eq!(overall(&app.call(req).await), Code::OverLimit);
    // Even for a descriptor with no rule at all.
    let req = RateLimitRequest {
        domain: "basic".into(),
        descriptors: vec![descriptor_with_limit(
            &[("unconfigured", "x")],
            5,
            Unit::Second as i32,
        )],
        hits_addend: 0,
    };
    assert_eq!(app.call(req).await.statuses[0].limit_remaining, 4);
}

#[tokio::test]
async fn an_override_with_an_unknown_unit_is_rejected_cleanly() {
    let app = spawn(BASIC).await;
    let req = RateLimitRequest {
        domain: "basic".into(),
        descriptors: vec![descriptor_with_limit(&[("key1", "a")], 5, 0)],
        hits_addend: 0,
    };
    let err = app.try_call(req).await.unwrap_err();
    assert!(err.message().contains("unknown unit"), "{}", err.message());
}

#[tokio::test]
async fn unlimited_rules_pass_with_the_maximum_remaining() {
    let app = spawn(
        r#"
domain: d
descriptors:
  - key: vip
    rate_limit: {unlimited: true}
"#,
    )
    .await;
    for _ in 0..5 {
        let r = app.call(request("d", &[&[("vip", "x")]])).await;
        assert_eq!(code(&r.statuses[0]), Code::Ok);
        assert_eq!(r.statuses[0].limit_remaining, u32::MAX);
        assert!(r.statuses[0].current_limit.is_none());
    }
}

#[tokio::test]
async fn a_replacing_limit_drops_the_limit_it_names() {
    let app = spawn(
        r#"
domain: d
descriptors:
  - key: user
    rate_limit:
      name: per-user
      unit: minute
      requests_per_unit: 1
  - key: plan
    value: premium
    rate_limit:
      unit: minute
      requests_per_unit: 3
      replaces:
        - name: per-user
"#,
    )
    .await;
    let both = request("d", &[&[("user", "u")], &[("plan", "premium")]]);
    for i in 0..3 {
        let r = app.call(both.clone()).await;
        assert_eq!(overall(&r), Code::Ok, "call {i}");
        assert!(
            r.statuses[0].current_limit.is_none(),
            "the replaced limit is dropped"
        );
        assert_eq!(r.statuses[0].limit_remaining, 0);
    }
    assert_eq!(overall(&app.call(both).await), Code::OverLimit);
    // Untouched: the per-user counter was never charged while replaced.
    let r = app.call(request("d", &[&[("user", "u")]])).await;
    assert_eq!(
        (code(&r.statuses[0]), r.statuses[0].limit_remaining),
        (Code::Ok, 0)
    );
}

#[tokio::test]
async fn shadow_mode_counts_but_always_answers_ok() {
    let app = spawn(
        r#"
domain: d
descriptors:
  - key: k
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
"#,
    )
    .await;
    app.call(request("d", &[&[("k", "v")]])).await;
    let r = app.call(request("d", &[&[("k", "v")]])).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(code(&r.statuses[0]), Code::Ok);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    assert_eq!(
        app.metric(r#"ratelimit_service_rate_limit_shadow_mode{domain="d",key1="k"}"#)
            .await,
        1
    );
    assert_eq!(
        app.metric(r#"ratelimit_service_rate_limit_over_limit{domain="d",key1="k"}"#)
            .await,
        1
    );
}

#[tokio::test]
async fn global_shadow_mode_only_forces_the_overall_code() {
    let app = spawn_with(&[("r.yaml", BASIC)], |s| s.shadow_mode = true).await;
    app.call(request("basic", &[&[("key1", "special")]])).await;
    let r = app.call(request("basic", &[&[("key1", "special")]])).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(
        code(&r.statuses[0]),
        Code::OverLimit,
        "statuses still tell the truth"
    );
    assert_eq!(app.metric("ratelimit_service_global_shadow_mode").await, 1);
}

const QUOTA: &str = r#"
domain: q
descriptors:
  - key: regular
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: quota1
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: quota2
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
"#;

#[tokio::test]
async fn quota_mode_denies_only_when_every_quota_descriptor_is_over() {
    let app = spawn(QUOTA).await;
    // Exhaust quota1 only.
    app.call(request("q", &[&[("quota1", "a")]])).await;
    let r = app
        .call(request("q", &[&[("quota1", "a")], &[("quota2", "a")]]))
        .await;
    assert_eq!(codes(&r), vec![Code::OverLimit, Code::Ok]);
    assert_eq!(overall(&r), Code::Ok, "another quota still has room");
    let r = app
        .call(request("q", &[&[("quota1", "a")], &[("quota2", "a")]]))
        .await;
    assert_eq!(codes(&r), vec![Code::OverLimit, Code::OverLimit]);
    assert_eq!(overall(&r), Code::OverLimit, "all quotas exhausted");
    // A regular descriptor over limit denies regardless of quotas.
    app.call(request("q", &[&[("regular", "r")]])).await;
    let r = app
        .call(request("q", &[&[("regular", "r")], &[("quota1", "fresh")]]))
        .await;
    assert_eq!(overall(&r), Code::OverLimit);
}

#[tokio::test]
async fn hits_addend_charges_several_hits_and_zero_only_checks() {
    let app = spawn(
        r#"
domain: d
descriptors:
  - key: tokens
    rate_limit: {unit: minute, requests_per_unit: 10}
"#,
    )
    .await;
    let mut req = request("d", &[&[("tokens", "t")]]);
    req.hits_addend = 4;
    assert_eq!(app.call(req.clone()).await.statuses[0].limit_remaining, 6);
    // A per-descriptor addend wins over the request's.
    let per_descriptor = RateLimitRequest {
        descriptors: vec![descriptor_with_hits(&[("tokens", "t")], 6)],
        ..req.clone()
    };
    let r = app.call(per_descriptor).await;
    assert_eq!(
        (code(&r.statuses[0]), r.statuses[0].limit_remaining),
        (Code::Ok, 0)
    );
    // Check-only at exactly the limit: still OK, nothing charged.
    let check = RateLimitRequest {
        descriptors: vec![descriptor_with_hits(&[("tokens", "t")], 0)],
        ..req.clone()
    };
    for _ in 0..3 {
        let r = app.call(check.clone()).await;
        assert_eq!(
            (code(&r.statuses[0]), r.statuses[0].limit_remaining),
            (Code::Ok, 0)
        );
    }
    // One more real hit goes over; then the check says over too.
    app.call(request("d", &[&[("tokens", "t")]])).await;
    assert_eq!(code(&app.call(check).await.statuses[0]), Code::OverLimit);
}

#[tokio::test]
async fn near_limit_statistics_split_hits_like_the_reference() {
    let app = spawn(
        r#"
domain: d
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 10}
"#,
    )
    .await;
    // Threshold floor(10 * 0.8) = 8. 7 hits within; then 5 hits: 8..12 -> near 2 (9, 10), over 2.
    let mut req = request("d", &[&[("k", "v")]]);
    req.hits_addend = 7;
    app.call(req.clone()).await;
    req.hits_addend = 5;
    assert_eq!(overall(&app.call(req).await), Code::OverLimit);
    let series =
        |stat: &str| format!(r#"ratelimit_service_rate_limit_{stat}{{domain="d",key1="k"}}"#);
    assert_eq!(app.metric(&series("total_hits")).await, 12);
    assert_eq!(app.metric(&series("within_limit")).await, 7);
    assert_eq!(app.metric(&series("near_limit")).await, 2);
    assert_eq!(app.metric(&series("over_limit")).await, 2);
}

#[tokio::test]
async fn response_headers_describe_the_most_constrained_limit() {
    let app = spawn_with(&[("r.yaml", BASIC)], |s| s.response_headers = true).await;
    let r = app
        .call(request(
            "basic",
            &[&[("key1", "a")], &[("key1", "special")]],
        ))
        .await;
    let headers: Vec<(String, String)> = r
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    assert_eq!(
        headers,
        vec![
            ("RateLimit-Limit".into(), "1".into()),
            ("RateLimit-Remaining".into(), "0".into()),
            ("RateLimit-Reset".into(), "3600".into()),
        ]
    );
    let plain = spawn(BASIC).await;
    assert!(
        plain
            .call(request("basic", &[&[("key1", "a")]]))
            .await
            .response_headers_to_add
            .is_empty()
    );
}

#[tokio::test]
async fn dynamic_metadata_names_the_domain_and_descriptors() {
    let app = spawn_with(
        &[(
            "r.yaml",
            r#"
domain: d
descriptors:
  - key: k
    metadata: {team: core, tier: {level: 1}}
    rate_limit: {unit: minute, requests_per_unit: 5}
"#,
        )],
        |s| s.dynamic_metadata = true,
    )
    .await;
    let r = app.call(request("d", &[&[("k", "v")]])).await;
    let meta = r.dynamic_metadata.expect("metadata is returned");
    let text = format!("{meta:?}");
    for expected in [
        "\"domain\"",
        "\"d\"",
        "k=v",
        "\"team\"",
        "\"core\"",
        "\"level\"",
    ] {
        assert!(text.contains(expected), "{expected} missing from {text}");
    }
}

#[tokio::test]
async fn an_unknown_domain_passes_every_descriptor() {
    let app = spawn(BASIC).await;
    let r = app
        .call(request("nope", &[&[("key1", "a")], &[("key2", "b")]]))
        .await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses.len(), 2);
    assert!(r.statuses.iter().all(|s| s.current_limit.is_none()));
    assert_eq!(
        app.metric(r#"ratelimit_service_rate_limit_domain_not_found{domain="nope"}"#)
            .await,
        2
    );
}

#[tokio::test]
async fn an_empty_domain_or_descriptor_list_is_an_error() {
    let app = spawn(BASIC).await;
    let err = app
        .try_call(request("", &[&[("key1", "a")]]))
        .await
        .unwrap_err();
    assert_eq!(err.message(), "rate limit domain must not be empty");
    assert_eq!(err.code(), tonic::Code::Unknown);
    let err = app.try_call(request("basic", &[])).await.unwrap_err();
    assert_eq!(
        err.message(),
        "rate limit descriptor list must not be empty"
    );
    assert_eq!(
        app.metric(r#"ratelimit_service_should_rate_limit_error{err_type="service_error"}"#)
            .await,
        2
    );
}

#[tokio::test]
async fn stop_incrementing_keeps_an_over_limit_counter_from_growing() {
    let app = spawn_with(&[("r.yaml", BASIC)], |s| {
        s.stop_incrementing_when_over_limit = true
    })
    .await;
    for _ in 0..5 {
        app.call(request("basic", &[&[("key1", "a")]])).await;
    }
    // Three were counted; the rejected calls did not add, so a check sees exactly the limit.
    let check = RateLimitRequest {
        domain: "basic".into(),
        descriptors: vec![descriptor_with_hits(&[("key1", "a")], 0)],
        hits_addend: 0,
    };
    let r = app.call(check).await;
    assert_eq!(
        (code(&r.statuses[0]), r.statuses[0].limit_remaining),
        (Code::Ok, 0)
    );
}

#[tokio::test]
async fn the_local_cache_answers_over_limit_keys_without_the_store() {
    let app = spawn_with(&[("r.yaml", BASIC)], |s| s.local_cache_size = 100).await;
    for _ in 0..3 {
        app.call(request("basic", &[&[("key1", "special")]])).await;
    }
    assert_eq!(
        app.metric(r#"ratelimit_service_rate_limit_over_limit_with_local_cache{domain="basic",key1="key1_special"}"#)
            .await,
        1,
        "the second call went over and was cached; the third was answered from the cache"
    );
}

#[tokio::test]
async fn negative_hits_give_back_to_the_limit() {
    let app = spawn(BASIC).await;
    for _ in 0..3 {
        app.call(request("basic", &[&[("key1", "a")]])).await;
    }
    let mut refund = descriptor_with_hits(&[("key1", "a")], 2);
    refund.is_negative_hits = true;
    let r = app
        .call(RateLimitRequest {
            domain: "basic".into(),
            descriptors: vec![refund.clone()],
            hits_addend: 0,
        })
        .await;
    assert_eq!(
        (code(&r.statuses[0]), r.statuses[0].limit_remaining),
        (Code::Ok, 2)
    );
    // Never below zero.
    refund.hits_addend = Some(envoy_types::pb::google::protobuf::UInt64Value { value: 50 });
    let r = app
        .call(RateLimitRequest {
            domain: "basic".into(),
            descriptors: vec![refund],
            hits_addend: 0,
        })
        .await;
    assert_eq!(r.statuses[0].limit_remaining, 3);
}

#[tokio::test]
async fn detailed_metrics_carry_the_request_values() {
    let app = spawn(
        r#"
domain: d
descriptors:
  - key: user
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 5}
"#,
    )
    .await;
    app.call(request("d", &[&[("user", "alice")]])).await;
    assert_eq!(
        app.metric(r#"ratelimit_service_rate_limit_total_hits{domain="d",key1="user_alice"}"#)
            .await,
        1
    );
}
