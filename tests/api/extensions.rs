//! tollgate's opt-in extensions of the rules format: several limits per descriptor, any
//! window, sliding windows, token buckets, calendar periods, check-only reads.

use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use tollgate::settings::Settings;

use crate::helpers::*;

fn call_with_hits(domain: &str, entries: &[(&str, &str)], hits: u64) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: vec![descriptor_with_hits(entries, hits)],
        hits_addend: 0,
    }
}

const SEVERAL: &str = r#"
domain: multi
descriptors:
  - key: user
    rate_limits:
      - name: per-second
        unit: second
        requests_per_unit: 2
      - name: per-day
        unit: day
        requests_per_unit: 5
"#;

#[tokio::test]
async fn the_most_constrained_of_several_limits_answers() {
    let app = spawn(SEVERAL).await;
    let ask = || app.call(request("multi", &[&[("user", "u")]]));
    let r = ask().await;
    let s = &r.statuses[0];
    // per-second has 1 left, per-day 4: the least remaining wins.
    assert_eq!((code(s), s.limit_remaining), (Code::Ok, 1));
    assert_eq!(s.current_limit.as_ref().unwrap().name, "per-second");
    ask().await;
    let r = ask().await;
    assert_eq!(code(&r.statuses[0]), Code::OverLimit);
    assert_eq!(
        r.statuses[0].current_limit.as_ref().unwrap().name,
        "per-second"
    );
    // A second later the per-second window is new. Per-day has counted all four calls
    // (a fixed window counts refused hits too, as the reference does): a tie at 1 left,
    // and the first limit in config order answers.
    app.clock.advance(Duration::from_secs(1));
    let r = ask().await;
    let s = &r.statuses[0];
    assert_eq!((code(s), s.limit_remaining), (Code::Ok, 1));
    assert_eq!(s.current_limit.as_ref().unwrap().name, "per-second");
    app.clock.advance(Duration::from_secs(1));
    let r = ask().await;
    let s = &r.statuses[0];
    assert_eq!((code(s), s.limit_remaining), (Code::Ok, 0));
    assert_eq!(s.current_limit.as_ref().unwrap().name, "per-day");
    let r = ask().await;
    assert_eq!(code(&r.statuses[0]), Code::OverLimit);
    assert_eq!(
        r.statuses[0].current_limit.as_ref().unwrap().name,
        "per-day"
    );
    assert_eq!(
        app.metric(
            r#"ratelimit_service_rate_limit_over_limit{domain="multi",key1="user",limit="per-day"}"#
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_window_of_any_length_stays_aligned() {
    let app = spawn(
        "domain: w\ndescriptors:\n  - key: k\n    rate_limit: {window: 5m, requests_per_unit: 2}\n",
    )
    .await;
    app.clock.advance(Duration::from_secs(100));
    let r = app.call(request("w", &[&[("k", "v")]])).await;
    let s = &r.statuses[0];
    assert_eq!(
        s.duration_until_reset.as_ref().unwrap().seconds,
        200,
        "windows start at multiples of 300 s"
    );
    assert_eq!(
        s.current_limit.as_ref().unwrap().unit,
        2,
        "reported as minutes"
    );
    app.call(request("w", &[&[("k", "v")]])).await;
    assert_eq!(
        overall(&app.call(request("w", &[&[("k", "v")]])).await),
        Code::OverLimit
    );
    app.clock.advance(Duration::from_secs(200));
    assert_eq!(
        overall(&app.call(request("w", &[&[("k", "v")]])).await),
        Code::Ok
    );
}

#[tokio::test]
async fn a_sliding_window_does_not_allow_a_double_burst_across_the_boundary() {
    let rules = |algorithm: &str| {
        format!(
            "domain: s\ndescriptors:\n  - key: k\n    rate_limit: {{unit: minute, requests_per_unit: 10, algorithm: {algorithm}}}\n"
        )
    };
    let passed = |app: &TestApp| {
        let app_grpc = app.grpc.clone();
        async move {
            let mut n = 0;
            for _ in 0..10 {
                let r = app_grpc
                    .clone()
                    .should_rate_limit(request("s", &[&[("k", "v")]]))
                    .await
                    .unwrap();
                n += usize::from(r.into_inner().overall_code == Code::Ok as i32);
            }
            n
        }
    };
    for (algorithm, second_burst) in [("fixed_window", 10), ("sliding_window", 1)] {
        let app = spawn(&rules(algorithm)).await;
        // Ten calls at the end of one window, ten more just after the boundary.
        app.clock.advance(Duration::from_secs(59));
        assert_eq!(passed(&app).await, 10, "{algorithm}: first burst");
        app.clock.advance(Duration::from_secs(7));
        // Six seconds into the new window the previous one still weighs 90%: 9 of 10.
        assert_eq!(
            passed(&app).await,
            second_burst,
            "{algorithm}: second burst"
        );
    }
}

#[tokio::test]
async fn a_token_bucket_allows_a_burst_then_the_steady_rate() {
    let app = spawn(
        "domain: tb\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 2, algorithm: token_bucket, burst: 5}\n",
    )
    .await;
    let ask = || app.call(request("tb", &[&[("k", "v")]]));
    for remaining in (0..5).rev() {
        let r = ask().await;
        assert_eq!(
            (code(&r.statuses[0]), r.statuses[0].limit_remaining),
            (Code::Ok, remaining)
        );
    }
    assert_eq!(code(&ask().await.statuses[0]), Code::OverLimit);
    // Two tokens a second: one every 500 ms.
    app.clock.advance(Duration::from_millis(500));
    assert_eq!(code(&ask().await.statuses[0]), Code::Ok);
    assert_eq!(code(&ask().await.statuses[0]), Code::OverLimit);
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(code(&ask().await.statuses[0]), Code::Ok);
    assert_eq!(code(&ask().await.statuses[0]), Code::Ok);
    assert_eq!(code(&ask().await.statuses[0]), Code::OverLimit);
}

#[tokio::test]
async fn check_only_reads_consume_nothing_for_every_algorithm() {
    let app = spawn(
        r#"
domain: c
descriptors:
  - key: fixed
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: sliding
    rate_limit: {unit: minute, requests_per_unit: 2, algorithm: sliding_window}
  - key: bucket
    rate_limit: {unit: minute, requests_per_unit: 2, algorithm: token_bucket}
  - key: calendar
    rate_limit: {unit: month, requests_per_unit: 2, calendar: true, timezone: Europe/Berlin}
"#,
    )
    .await;
    for key in ["fixed", "sliding", "bucket", "calendar"] {
        for _ in 0..5 {
            let r = app.call(call_with_hits("c", &[(key, "v")], 0)).await;
            assert_eq!(
                (code(&r.statuses[0]), r.statuses[0].limit_remaining),
                (Code::Ok, 2),
                "{key}"
            );
        }
        app.call(call_with_hits("c", &[(key, "v")], 2)).await;
        let r = app.call(call_with_hits("c", &[(key, "v")], 0)).await;
        assert_eq!(
            (code(&r.statuses[0]), r.statuses[0].limit_remaining),
            (Code::Ok, 0),
            "{key}: full is still OK"
        );
        let r = app.call(call_with_hits("c", &[(key, "v")], 1)).await;
        assert_eq!(code(&r.statuses[0]), Code::OverLimit, "{key}");
    }
}

#[tokio::test]
async fn a_calendar_month_resets_at_local_midnight_in_its_timezone() {
    let app = spawn(
        "domain: cal\ndescriptors:\n  - key: k\n    rate_limit: {unit: month, requests_per_unit: 1, calendar: true, timezone: Europe/Berlin}\n",
    )
    .await;
    // 2026-11-30 22:30 UTC is 23:30 in Berlin: half an hour of November left there.
    let nov_30_2230_utc = 1_796_077_800;
    app.clock.set_secs(nov_30_2230_utc);
    let r = app.call(request("cal", &[&[("k", "v")]])).await;
    assert_eq!(
        r.statuses[0].duration_until_reset.as_ref().unwrap().seconds,
        1800
    );
    assert_eq!(
        overall(&app.call(request("cal", &[&[("k", "v")]])).await),
        Code::OverLimit
    );
    // Midnight in Berlin: December, a new period, although UTC is still in November.
    app.clock.set_secs(nov_30_2230_utc + 1800);
    let r = app.call(request("cal", &[&[("k", "v")]])).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(
        r.statuses[0].duration_until_reset.as_ref().unwrap().seconds,
        31 * 86_400
    );
}

#[tokio::test]
async fn a_calendar_day_across_the_dst_change_lasts_twenty_five_hours() {
    let app = spawn(
        "domain: cal\ndescriptors:\n  - key: k\n    rate_limit: {unit: day, requests_per_unit: 1, calendar: true, timezone: Europe/Berlin}\n",
    )
    .await;
    // 2026-10-24 22:00 UTC is midnight in Berlin on the day clocks go back.
    app.clock.set_secs(1_792_879_200);
    let r = app.call(request("cal", &[&[("k", "v")]])).await;
    assert_eq!(
        r.statuses[0].duration_until_reset.as_ref().unwrap().seconds,
        25 * 3600
    );
}

#[tokio::test]
async fn the_dump_and_check_config_show_the_extensions() {
    let app = spawn(SEVERAL).await;
    let dump = reqwest::get(format!("{}/rlconfig", app.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(dump.contains("multi.user: unit=SECOND requests_per_unit=2, shadow_mode: false, quota_mode: false, name: per-second"), "{dump}");
    assert!(dump.contains("name: per-day"), "{dump}");
    let sliding = spawn("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {window: 90s, requests_per_unit: 3, algorithm: sliding_window}\n").await;
    let dump = reqwest::get(format!("{}/rlconfig", sliding.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        dump.contains("unit=SECOND requests_per_unit=3")
            && dump.contains("window: 90s")
            && dump.contains("algorithm: sliding_window"),
        "{dump}"
    );
}

#[test]
fn check_config_rejects_bad_extension_fields() {
    let cases = [
        (
            "bad window",
            "rate_limit: {window: soon, requests_per_unit: 1}",
            "invalid window 'soon'",
        ),
        (
            "zero window",
            "rate_limit: {window: 0s, requests_per_unit: 1}",
            "invalid window '0s'",
        ),
        (
            "bad algorithm",
            "rate_limit: {unit: second, requests_per_unit: 1, algorithm: leaky}",
            "unknown algorithm 'leaky'",
        ),
        (
            "burst without bucket",
            "rate_limit: {unit: second, requests_per_unit: 1, burst: 3}",
            "burst only applies to algorithm: token_bucket",
        ),
        (
            "calendar hour",
            "rate_limit: {unit: hour, requests_per_unit: 1, calendar: true}",
            "calendar periods are day, week, month or year",
        ),
        (
            "calendar window",
            "rate_limit: {unit: day, window: 2d, requests_per_unit: 1, calendar: true}",
            "remove window",
        ),
        (
            "calendar sliding",
            "rate_limit: {unit: day, requests_per_unit: 1, calendar: true, algorithm: sliding_window}",
            "only work with the fixed_window algorithm",
        ),
        (
            "bad timezone",
            "rate_limit: {unit: day, requests_per_unit: 1, calendar: true, timezone: Mars/Olympus}",
            "unknown timezone 'Mars/Olympus'",
        ),
        (
            "timezone alone",
            "rate_limit: {unit: day, requests_per_unit: 1, timezone: UTC}",
            "timezone only applies to calendar: true",
        ),
        (
            "both forms",
            "rate_limit: {unit: day, requests_per_unit: 1}\n    rate_limits: [{name: a, unit: day, requests_per_unit: 1}]",
            "use either rate_limit or rate_limits",
        ),
        (
            "unnamed list entry",
            "rate_limits: [{unit: day, requests_per_unit: 1}]",
            "rate_limits[0] needs a name",
        ),
        (
            "duplicate names",
            "rate_limits: [{name: a, unit: day, requests_per_unit: 1}, {name: a, unit: second, requests_per_unit: 1}]",
            "duplicate limit name 'a'",
        ),
    ];
    for (case, node, expected) in cases {
        let dir = tempfile::TempDir::new().unwrap();
        write_rules(
            dir.path(),
            &[(
                "ext.yaml",
                &format!("domain: d\ndescriptors:\n  - key: k\n    {node}\n"),
            )],
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("check-config")
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: accepted");
        assert!(
            stderr.contains("ext.yaml: ") && stderr.contains(expected),
            "{case}: expected {expected:?} in {stderr}"
        );
    }
}

async fn race_for(rules: &str, tweak: impl FnOnce(&mut Settings)) -> usize {
    let app = spawn_with(&[("r.yaml", rules)], tweak).await;
    race(&[&app], request("race", &[&[("k", "hot")]]), 24, 6).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_algorithm_holds_its_limit_exactly_under_concurrency() {
    let algorithms = [
        ("fixed", "{unit: hour, requests_per_unit: 40}"),
        (
            "sliding",
            "{unit: hour, requests_per_unit: 40, algorithm: sliding_window}",
        ),
        // The clock stands still, so no token returns during the race.
        (
            "bucket",
            "{unit: hour, requests_per_unit: 1, algorithm: token_bucket, burst: 40}",
        ),
        (
            "calendar",
            "{unit: month, requests_per_unit: 40, calendar: true, timezone: America/New_York}",
        ),
        (
            "several",
            "[{name: a, unit: hour, requests_per_unit: 40}, {name: b, unit: day, requests_per_unit: 100}]",
        ),
    ];
    for (name, limit) in algorithms {
        let field = if limit.starts_with('[') {
            "rate_limits"
        } else {
            "rate_limit"
        };
        let rules = format!("domain: race\ndescriptors:\n  - key: k\n    {field}: {limit}\n");
        assert_eq!(race_for(&rules, |_| {}).await, 40, "{name} on memory");
        let on_redis = race_for(&rules, |s| {
            s.store = redis_url();
            s.key_prefix = unique_prefix();
        })
        .await;
        assert_eq!(on_redis, 40, "{name} on redis");
    }
}
