//! Hot reload, the last good config on errors, and `check-config`.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::helpers::*;

/// Polls the config dump until `accept` holds; fails after 10 s.
async fn dump_until(app: &TestApp, accept: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(format!("{}/rlconfig", app.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if accept(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dump never changed; last: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn rules(rpu: u32) -> String {
    format!(
        "domain: hot\ndescriptors:\n  - key: k\n    rate_limit: {{unit: minute, requests_per_unit: {rpu}}}\n"
    )
}

#[tokio::test]
async fn an_edited_file_is_reloaded() {
    let app = spawn(&rules(1)).await;
    write_rules(app.rules.path(), &[("rules.yaml", &rules(7))]);
    dump_until(&app, |t| t.contains("requests_per_unit=7")).await;
    let r = app.call(request("hot", &[&[("k", "v")]])).await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        7
    );
}

#[tokio::test]
async fn a_bad_reload_keeps_the_last_good_rules_and_counts_an_error() {
    let app = spawn(&rules(1)).await;
    write_rules(
        app.rules.path(),
        &[(
            "rules.yaml",
            "domain: hot\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight}\n",
        )],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.metric("ratelimit_service_config_load_error").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bad file was never loaded"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let r = app.call(request("hot", &[&[("k", "v")]])).await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        1,
        "old rules still apply"
    );
    // Fixing the file loads it.
    write_rules(app.rules.path(), &[("rules.yaml", &rules(4))]);
    dump_until(&app, |t| t.contains("requests_per_unit=4")).await;
}

#[tokio::test]
async fn a_deleted_file_takes_its_domain_away() {
    let app = spawn_with(&[("a.yaml", &rules(2)), ("b.yaml", "domain: other\ndescriptors:\n  - key: x\n    rate_limit: {unit: second, requests_per_unit: 9}\n")], |_| {}).await;
    dump_until(&app, |t| t.contains("other.x")).await;
    std::fs::remove_file(app.rules.path().join("b.yaml")).unwrap();
    dump_until(&app, |t| !t.contains("other.x") && t.contains("hot.k")).await;
}

/// Lays out a Kubernetes ConfigMap mount: the real file in a timestamped hidden
/// directory, `..data` pointing at it, and the visible name linking through `..data`.
fn configmap_version(dir: &Path, version: &str, text: &str) {
    let real = dir.join(version);
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("rules.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("rules.yaml").exists() {
        symlink("..data/rules.yaml", dir.join("rules.yaml")).unwrap();
    }
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_reloaded() {
    let app = spawn_with(&[], |_| {}).await;
    configmap_version(app.rules.path(), "..2026_11_22_a", &rules(3));
    dump_until(&app, |t| t.contains("requests_per_unit=3")).await;
    configmap_version(app.rules.path(), "..2026_11_22_b", &rules(5));
    std::fs::remove_dir_all(app.rules.path().join("..2026_11_22_a")).unwrap();
    dump_until(&app, |t| t.contains("requests_per_unit=5")).await;
}

fn check_config(files: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::TempDir::new().unwrap();
    write_rules(dir.path(), files);
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check-config")
        .arg(dir.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_the_example_rules() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml"))
            .unwrap();
    let (ok, stderr) = check_config(&[("example.yaml", &example)]);
    assert!(ok, "{stderr}");
}

#[test]
fn check_config_rejects_each_invalid_case_naming_the_file() {
    let cases = [
        (
            "unknown key",
            "domain: d\ndescriptors:\n  - key: k\n    ratelimit: {unit: second}\n",
            "config error, unknown key 'ratelimit'",
        ),
        (
            "empty domain",
            "domain: \"\"\ndescriptors: []\n",
            "config file cannot have empty domain",
        ),
        (
            "empty key",
            "domain: d\ndescriptors:\n  - value: v\n",
            "descriptor has empty key",
        ),
        (
            "duplicate key",
            "domain: d\ndescriptors:\n  - key: k\n  - key: k\n",
            "duplicate descriptor composite key 'd.k'",
        ),
        (
            "duplicate key_value",
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n",
            "duplicate descriptor composite key 'd.k_v'",
        ),
        (
            "bad unit",
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
            "invalid rate limit unit 'fortnight'",
        ),
        (
            "missing unit",
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {requests_per_unit: 1}\n",
            "invalid rate limit unit ''",
        ),
        (
            "unlimited with unit",
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: second}\n",
            "should not specify rate limit unit when unlimited",
        ),
        (
            "replaces itself",
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {name: a, unit: second, requests_per_unit: 1, replaces: [{name: a}]}\n",
            "replaces should not contain name of same descriptor",
        ),
        (
            "empty replaces",
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {name: a, unit: second, requests_per_unit: 1, replaces: [{name: \"\"}]}\n",
            "should not have an empty replaces entry",
        ),
        (
            "share_threshold without wildcard",
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
            "share_threshold can only be used with wildcard values",
        ),
        (
            "list of scalars",
            "domain: d\ndescriptors:\n  - a\n",
            "config error, yaml file contains list of type other than map: a",
        ),
        ("empty file", "", "config file cannot have empty domain"),
        (
            "yaml syntax",
            "domain: d\ndescriptors:\n  - key: [unclosed\n",
            "error loading config file",
        ),
        (
            "wrong type",
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: lots}\n",
            "error loading config file",
        ),
    ];
    for (case, yaml, expected) in cases {
        let (ok, stderr) = check_config(&[("bad.yaml", yaml)]);
        assert!(!ok, "{case}: accepted");
        assert!(
            stderr.contains("bad.yaml: "),
            "{case}: the file is not named in {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{case}: expected {expected:?} in {stderr}"
        );
    }
}

#[test]
fn check_config_rejects_a_duplicate_domain_unless_merging() {
    let a = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1}\n";
    let b = "domain: d\ndescriptors:\n  - key: b\n    rate_limit: {unit: second, requests_per_unit: 1}\n";
    let (ok, stderr) = check_config(&[("a.yaml", a), ("b.yaml", b)]);
    assert!(!ok);
    assert!(stderr.contains("b.yaml: duplicate domain 'd'"), "{stderr}");

    let dir = tempfile::TempDir::new().unwrap();
    write_rules(dir.path(), &[("a.yaml", a), ("b.yaml", b)]);
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check-config", "--merge-domains"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_reports_errors_from_every_file() {
    let (ok, stderr) = check_config(&[
        ("one.yaml", "domain: \"\"\n"),
        ("two.yaml", "domain: d\ndescriptors:\n  - value: v\n"),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("one.yaml: config file cannot have empty domain"),
        "{stderr}"
    );
    assert!(
        stderr.contains("two.yaml: descriptor has empty key"),
        "{stderr}"
    );
}

#[tokio::test]
async fn merged_domains_combine_their_descriptors() {
    let a = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1}\n";
    let b = "domain: d\ndescriptors:\n  - key: b\n    rate_limit: {unit: second, requests_per_unit: 2}\n";
    let app = spawn_with(&[("a.yaml", a), ("b.yaml", b)], |s| s.merge_domains = true).await;
    let r = app
        .call(request("d", &[&[("a", "x")], &[("b", "y")]]))
        .await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        1
    );
    assert_eq!(
        r.statuses[1]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        2
    );
}
