//! Loading a rules directory: read, parse, validate, merge, compile.
//!
//! All files are checked and every error is reported, each naming its file; one error
//! rejects the whole set, so the caller keeps the previous rules.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::file::{self, DescriptorYaml, RulesFile};
use super::pattern::Pattern;
use super::quota::QuotaKeys;
use super::tree::{Algorithm, Domain, Level, Limit, Node, Period, RuleSet};
use super::unit::Unit;
use crate::telemetry::Metrics;

/// How a directory is turned into rules.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Combine files that declare the same domain instead of rejecting the duplicate.
    pub merge_domains: bool,
}

/// One problem with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

/// Every problem found in a rules set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

/// The rule files of a directory: regular files (symlinks followed) ending in `.yaml` or
/// `.yml`, skipping names that start with a dot. Not recursive: a Kubernetes ConfigMap
/// mount keeps its real files under hidden `..data` directories and links them from here.
pub fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, LoadErrors> {
    let read_error = |e: std::io::Error| {
        LoadErrors(vec![LoadError {
            file: dir.to_owned(),
            message: format!("cannot read rules directory: {e}"),
        }])
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let is_yaml = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        if !name.starts_with('.') && is_yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads and compiles every rule file in `dir`.
pub fn load_dir(
    dir: &Path,
    options: &LoadOptions,
    metrics: &Metrics,
) -> Result<RuleSet, LoadErrors> {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for path in rule_files(dir)? {
        match std::fs::read_to_string(&path) {
            Ok(text) => sources.push((path, text)),
            Err(e) => errors.push(LoadError {
                message: format!("cannot read file: {e}"),
                file: path,
            }),
        }
    }
    match compile(&sources, options, metrics) {
        Ok(rules) if errors.is_empty() => Ok(rules),
        Ok(_) => Err(LoadErrors(errors)),
        Err(LoadErrors(more)) => {
            errors.extend(more);
            Err(LoadErrors(errors))
        }
    }
}

/// Compiles `(file name, YAML text)` pairs into one rule set.
pub fn compile(
    sources: &[(PathBuf, String)],
    options: &LoadOptions,
    metrics: &Metrics,
) -> Result<RuleSet, LoadErrors> {
    let mut errors = Vec::new();
    let mut domains: HashMap<String, (PathBuf, Level)> = HashMap::new();
    // The domains with a `quota:` block, and the file that declared it.
    let mut quotas: HashMap<String, (PathBuf, QuotaKeys)> = HashMap::new();
    for (path, text) in sources {
        let mut report = |message: String| {
            errors.push(LoadError {
                file: path.clone(),
                message,
            })
        };
        let parsed: RulesFile = match file::parse(text) {
            Ok(parsed) => parsed,
            Err(e) => {
                report(e.to_string());
                continue;
            }
        };
        if parsed.domain.is_empty() {
            report("config file cannot have empty domain".to_owned());
            continue;
        }
        let (level, file_errors) = match domains.get_mut(&parsed.domain) {
            Some((first, _)) if !options.merge_domains => {
                report(format!(
                    "duplicate domain '{}' in config file (also in {}; enable domain merging to combine them)",
                    parsed.domain,
                    first.display()
                ));
                continue;
            }
            Some((_, level)) => {
                let mut errs = Vec::new();
                compile_level(
                    &parsed.descriptors,
                    &parsed.domain,
                    &[],
                    level,
                    metrics,
                    &mut errs,
                );
                (None, errs)
            }
            None => {
                let mut level = Level::default();
                let mut errs = Vec::new();
                compile_level(
                    &parsed.descriptors,
                    &parsed.domain,
                    &[],
                    &mut level,
                    metrics,
                    &mut errs,
                );
                (Some(level), errs)
            }
        };
        if let Some(block) = &parsed.quota {
            match QuotaKeys::from_yaml(block) {
                // Reported beside the file's other errors; any error rejects the set.
                Err(e) => report(e),
                Ok(_) if quotas.contains_key(&parsed.domain) => {
                    let first = &quotas[&parsed.domain].0;
                    report(format!(
                        "domain '{}' already has a quota block (in {}); declare it in one file only",
                        parsed.domain,
                        first.display()
                    ));
                }
                Ok(keys) => {
                    quotas.insert(parsed.domain.clone(), (path.clone(), keys));
                }
            }
        }
        let ok = file_errors.is_empty();
        file_errors.into_iter().for_each(&mut report);
        if let (Some(level), true) = (level, ok) {
            domains.insert(parsed.domain, (path.clone(), level));
        }
    }
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }
    Ok(RuleSet::new(
        domains
            .into_iter()
            .map(|(name, (_, root))| {
                let quota = quotas.remove(&name).map(|(_, keys)| keys);
                (name.clone(), Domain { name, root, quota })
            })
            .collect(),
    ))
}

fn compile_level(
    descriptors: &[DescriptorYaml],
    domain: &str,
    parent_path: &[String],
    level: &mut Level,
    metrics: &Metrics,
    errors: &mut Vec<String>,
) {
    for yaml in descriptors {
        if let Some(node) = compile_node(yaml, domain, parent_path, metrics, errors)
            && level.insert(node).is_err()
        {
            let stat_key = stat_key(domain, parent_path, &composite_key(yaml));
            errors.push(format!("duplicate descriptor composite key '{stat_key}'"));
        }
    }
}

/// `key` or `key_value`, as the reference names a node.
fn composite_key(yaml: &DescriptorYaml) -> String {
    match &yaml.value {
        Some(v) => format!("{}_{}", yaml.key, v),
        None => yaml.key.clone(),
    }
}

fn stat_key(domain: &str, parent_path: &[String], composite: &str) -> String {
    let mut key = domain.to_owned();
    for part in parent_path.iter().map(String::as_str).chain([composite]) {
        key.push('.');
        key.push_str(part);
    }
    key
}

/// Checks one node (in the reference's order: key, unit, replaces, share_threshold) and
/// compiles it with its children; `None` when it or a child has an error.
fn compile_node(
    yaml: &DescriptorYaml,
    domain: &str,
    parent_path: &[String],
    metrics: &Metrics,
    errors: &mut Vec<String>,
) -> Option<Node> {
    if yaml.key.is_empty() {
        errors.push("descriptor has empty key".to_owned());
        return None;
    }
    let composite = composite_key(yaml);
    let stat_key = stat_key(domain, parent_path, &composite);
    let mut path = parent_path.to_vec();
    path.push(composite);
    let pattern = yaml.value.as_deref().and_then(Pattern::parse);
    let before = errors.len();
    let limits = compile_limits(yaml, domain, &path, metrics, errors);
    if yaml.share_threshold && pattern.is_none() {
        errors.push(format!(
            "share_threshold can only be used with wildcard values (containing '*'), but found key '{}'",
            path.last().map(String::as_str).unwrap_or_default()
        ));
    }
    let mut children = Level::default();
    compile_level(
        &yaml.descriptors,
        domain,
        &path,
        &mut children,
        metrics,
        errors,
    );
    (errors.len() == before).then(|| Node {
        key: yaml.key.clone(),
        value: yaml.value.clone(),
        pattern,
        stat_key,
        limits,
        children,
        shadow_mode: yaml.shadow_mode,
        quota_mode: yaml.quota_mode,
        detailed_metric: yaml.detailed_metric,
        value_to_metric: yaml.value_to_metric,
        share_threshold: yaml.share_threshold,
        metadata: yaml.metadata.clone(),
    })
}

/// The node's limits: the reference's `rate_limit`, or tollgate's named `rate_limits`.
fn compile_limits(
    yaml: &DescriptorYaml,
    domain: &str,
    path: &[String],
    metrics: &Metrics,
    errors: &mut Vec<String>,
) -> Vec<Arc<Limit>> {
    if yaml.rate_limit.is_some() && !yaml.rate_limits.is_empty() {
        errors.push("use either rate_limit or rate_limits, not both".to_owned());
        return Vec::new();
    }
    if let Some(single) = &yaml.rate_limit {
        return compile_limit(single, false, domain, path, metrics, errors)
            .map(Arc::new)
            .into_iter()
            .collect();
    }
    let mut names = std::collections::HashSet::new();
    let mut limits = Vec::with_capacity(yaml.rate_limits.len());
    for (i, entry) in yaml.rate_limits.iter().enumerate() {
        match entry.name.as_deref().filter(|n| !n.is_empty()) {
            None => errors.push(format!(
                "rate_limits[{i}] needs a name (it tells the limits of one descriptor apart)"
            )),
            Some(name) if !names.insert(name) => {
                errors.push(format!("rate_limits[{i}]: duplicate limit name '{name}'"))
            }
            Some(_) if entry.unlimited => errors.push(format!(
                "rate_limits[{i}]: unlimited is only allowed in rate_limit"
            )),
            Some(_) => limits
                .extend(compile_limit(entry, true, domain, path, metrics, errors).map(Arc::new)),
        }
    }
    limits
}

fn compile_limit(
    yaml: &file::RateLimitYaml,
    in_list: bool,
    domain: &str,
    path: &[String],
    metrics: &Metrics,
    errors: &mut Vec<String>,
) -> Option<Limit> {
    let before = errors.len();
    let window = match yaml.window.as_deref().map(parse_window) {
        None => None,
        Some(Ok(secs)) => Some(secs),
        Some(Err(e)) => {
            errors.push(e);
            None
        }
    };
    let unit = match (&yaml.unit, yaml.unlimited) {
        (Some(unit), true) if unit.parse::<Unit>().is_ok() => {
            errors.push("should not specify rate limit unit when unlimited".to_owned());
            None
        }
        (_, true) => None,
        // A window alone reports the largest unit it is a whole number of.
        (None, false) if window.is_some() => window.map(unit_dividing),
        (unit, false) => {
            let unit = unit.as_deref().unwrap_or_default();
            match unit.parse::<Unit>() {
                Ok(unit) => Some(unit),
                Err(e) => {
                    errors.push(format!(
                        "{e} (expected one of second, minute, hour, day, week, month, year)"
                    ));
                    None
                }
            }
        }
    };
    let mut replaces = Vec::with_capacity(yaml.replaces.len());
    for r in &yaml.replaces {
        if r.name.is_empty() {
            errors.push("should not have an empty replaces entry".to_owned());
        } else if yaml.name.as_deref() == Some(r.name.as_str()) {
            errors.push("replaces should not contain name of same descriptor".to_owned());
        } else {
            replaces.push(r.name.clone());
        }
    }
    let algorithm = match yaml.algorithm.as_deref() {
        None | Some("fixed_window") => Algorithm::FixedWindow,
        Some("sliding_window") => Algorithm::SlidingWindow,
        Some("token_bucket") => Algorithm::TokenBucket {
            burst: yaml.burst.unwrap_or(u64::from(yaml.requests_per_unit)),
        },
        Some(other) => {
            errors.push(format!(
                "unknown algorithm '{other}' (expected fixed_window, sliding_window or token_bucket)"
            ));
            Algorithm::FixedWindow
        }
    };
    if yaml.burst.is_some() && !matches!(algorithm, Algorithm::TokenBucket { .. }) {
        errors.push("burst only applies to algorithm: token_bucket".to_owned());
    }
    let unit_or_second = unit.unwrap_or(Unit::Second);
    let period = if yaml.calendar {
        if window.is_some() {
            errors.push("a calendar limit takes its period from unit; remove window".to_owned());
        }
        if !matches!(
            unit_or_second,
            Unit::Day | Unit::Week | Unit::Month | Unit::Year
        ) {
            errors.push(format!(
                "calendar periods are day, week, month or year, not {}",
                unit_or_second.name().to_lowercase()
            ));
        }
        if algorithm != Algorithm::FixedWindow {
            errors.push("calendar periods only work with the fixed_window algorithm".to_owned());
        }
        let timezone = match yaml.timezone.as_deref() {
            None => jiff::tz::TimeZone::UTC,
            Some(name) => jiff::tz::TimeZone::get(name).unwrap_or_else(|_| {
                errors.push(format!(
                    "unknown timezone '{name}' (expected an IANA name such as Europe/Berlin)"
                ));
                jiff::tz::TimeZone::UTC
            }),
        };
        Period::Calendar {
            unit: unit_or_second,
            timezone,
        }
    } else {
        if yaml.timezone.is_some() {
            errors.push("timezone only applies to calendar: true".to_owned());
        }
        Period::Fixed(window.unwrap_or(unit_or_second.seconds()))
    };
    if errors.len() != before {
        return None;
    }
    let name = yaml.name.clone().filter(|n| !n.is_empty());
    let key_tag = key_tag(
        in_list.then_some(name.as_deref()).flatten(),
        unit_or_second,
        &period,
        algorithm,
    );
    let stats = match name.as_deref().filter(|_| in_list) {
        Some(limit_name) => metrics.named_rule_stats(domain, path, limit_name),
        None => metrics.rule_stats(domain, path),
    };
    Some(Limit {
        requests_per_unit: yaml.requests_per_unit,
        unit: unit_or_second,
        period,
        algorithm,
        unlimited: yaml.unlimited,
        name,
        replaces,
        listed: in_list,
        key_tag,
        stats,
    })
}

/// Parses `window`: a duration such as `30s`, `5m`, `1h 30m` or `2d`, in whole seconds.
fn parse_window(text: &str) -> Result<u64, String> {
    let secs = if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u64>().ok()
    } else {
        humantime::parse_duration(text)
            .ok()
            .filter(|d| d.subsec_nanos() == 0)
            .map(|d| d.as_secs())
    };
    match secs {
        Some(secs) if secs > 0 => Ok(secs),
        _ => Err(format!(
            "invalid window '{text}' (expected a whole number of seconds such as 30s, 5m, 1h or 2d)"
        )),
    }
}

/// The largest unit a window is a whole number of.
fn unit_dividing(window_secs: u64) -> Unit {
    Unit::ALL
        .into_iter()
        .rev()
        .find(|u| window_secs.is_multiple_of(u.seconds()))
        .unwrap_or(Unit::Second)
}

/// Keeps the counters of a node's limits apart, and apart from a limit that changes
/// algorithm or period on reload. A plain reference limit gets no tag.
fn key_tag(list_name: Option<&str>, unit: Unit, period: &Period, algorithm: Algorithm) -> String {
    let period_tag = match period {
        Period::Fixed(secs)
            if *secs == unit.seconds()
                && list_name.is_none()
                && algorithm == Algorithm::FixedWindow =>
        {
            return String::new();
        }
        Period::Fixed(secs) => format!("{secs}"),
        Period::Calendar { unit, timezone } => {
            format!("{}@{}", unit.name(), timezone.iana_name().unwrap_or("UTC"))
        }
    };
    let algorithm_tag = match algorithm {
        Algorithm::FixedWindow => "fw",
        Algorithm::SlidingWindow => "sw",
        Algorithm::TokenBucket { .. } => "tb",
    };
    format!(
        "{}~{algorithm_tag}{period_tag}",
        list_name.unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_one(yaml: &str) -> Result<RuleSet, LoadErrors> {
        compile(
            &[(PathBuf::from("r.yaml"), yaml.to_owned())],
            &LoadOptions::default(),
            &Metrics::new(),
        )
    }

    fn limit_at(rules: &RuleSet, domain: &str, entries: &[(&str, &str)]) -> Option<u32> {
        let path = rules.domain(domain)?.find(entries.iter().copied())?;
        path.last()?.limits.first().map(|l| l.requests_per_unit)
    }

    const TREE: &str = r#"
domain: d
descriptors:
  - key: k
    value: exact
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: k
    value: ex*
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: k
    value: "*act"
    rate_limit: {unit: second, requests_per_unit: 3}
  - key: k
    rate_limit: {unit: second, requests_per_unit: 4}
    descriptors:
      - key: sub
        rate_limit: {unit: second, requests_per_unit: 5}
"#;

    #[test]
    fn exact_beats_wildcards_which_beat_the_default() {
        let rules = compile_one(TREE).unwrap();
        assert_eq!(limit_at(&rules, "d", &[("k", "exact")]), Some(1));
        assert_eq!(limit_at(&rules, "d", &[("k", "extra")]), Some(2));
        assert_eq!(limit_at(&rules, "d", &[("k", "react")]), Some(3));
        assert_eq!(limit_at(&rules, "d", &[("k", "other")]), Some(4));
        assert_eq!(
            limit_at(&rules, "d", &[("k", "other"), ("sub", "x")]),
            Some(5)
        );
    }

    #[test]
    fn wildcards_are_tried_in_config_order() {
        // "exact-act" matches both ex* and *act; ex* comes first.
        let rules = compile_one(TREE).unwrap();
        assert_eq!(limit_at(&rules, "d", &[("k", "exact-act")]), Some(2));
    }

    #[test]
    fn a_dead_end_after_an_exact_match_does_not_backtrack() {
        let rules = compile_one(TREE).unwrap();
        assert!(
            rules
                .domain("d")
                .unwrap()
                .find([("k", "exact"), ("sub", "x")])
                .is_none()
        );
        assert!(rules.domain("d").unwrap().find([("nokey", "x")]).is_none());
    }

    #[test]
    fn thousands_of_exact_siblings_still_match_each_value() {
        let mut yaml = String::from("domain: big\ndescriptors:\n");
        for i in 0..10_000 {
            yaml.push_str(&format!("  - key: user\n    value: u{i}\n    rate_limit: {{unit: minute, requests_per_unit: {i}}}\n"));
        }
        let rules = compile_one(&yaml).unwrap();
        assert_eq!(limit_at(&rules, "big", &[("user", "u0")]), Some(0));
        assert_eq!(limit_at(&rules, "big", &[("user", "u9999")]), Some(9999));
        assert_eq!(limit_at(&rules, "big", &[("user", "u10000")]), None);
    }

    #[test]
    fn scalar_values_of_any_type_read_as_text() {
        let rules = compile_one("domain: d\ndescriptors:\n  - key: code\n    value: 429\n    rate_limit: {unit: second, requests_per_unit: 1}\n").unwrap();
        assert_eq!(limit_at(&rules, "d", &[("code", "429")]), Some(1));
    }

    #[test]
    fn the_dump_lists_limited_nodes_in_the_reference_format() {
        let rules = compile_one(TREE).unwrap();
        let dump = rules.dump();
        assert!(dump.contains("d.k_exact: unit=SECOND requests_per_unit=1, shadow_mode: false, quota_mode: false\n"), "{dump}");
        assert!(
            dump.contains("d.k.sub: unit=SECOND requests_per_unit=5"),
            "{dump}"
        );
        assert_eq!(dump.lines().count(), 5);
    }

    #[test]
    fn a_known_key_in_an_unusual_place_is_ignored_like_the_reference() {
        let rules = compile_one(
            "domain: d\ndescriptors:\n  - key: k\n    unit: second\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
        );
        assert!(rules.is_ok(), "{rules:?}");
    }

    #[test]
    fn metadata_is_free_form() {
        let rules = compile_one(
            "domain: d\ndescriptors:\n  - key: k\n    metadata: {anything: {goes: [1, 2]}}\n",
        );
        assert!(rules.is_ok(), "{rules:?}");
    }

    #[test]
    fn all_errors_of_a_file_are_reported() {
        let errors = compile_one(
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: nope}\n  - key: b\n    rate_limit: {unit: nope2}\n",
        )
        .unwrap_err();
        assert_eq!(errors.0.len(), 2, "{errors}");
        assert!(errors.0.iter().all(|e| e.file == Path::new("r.yaml")));
    }

    #[test]
    fn a_quota_block_is_compiled_with_its_defaults() {
        let rules = compile_one("domain: d\nquota: {model_key: llm}\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n").unwrap();
        let quota = rules.domain("d").unwrap().quota.clone().unwrap();
        assert_eq!(
            (quota.tenant.as_str(), quota.model.as_str()),
            ("tenant_id", "llm")
        );
        assert_eq!(limit_at(&rules, "d", &[("k", "v")]), Some(1));
        let plain = compile_one("domain: d\ndescriptors:\n  - key: k\n").unwrap();
        assert!(plain.domain("d").unwrap().quota.is_none());
    }

    #[test]
    fn a_bad_quota_block_names_the_file_and_field() {
        let errors = compile_one("domain: d\nquota: {tenant_key: ''}\n").unwrap_err();
        assert_eq!(errors.0[0].file, Path::new("r.yaml"));
        assert!(
            errors.0[0]
                .message
                .contains("quota.tenant_key must not be empty"),
            "{errors}"
        );
        let errors = compile_one("domain: d\nquota: {tenant: x}\n").unwrap_err();
        assert!(
            errors.0[0]
                .message
                .contains("quota: unknown field 'tenant'"),
            "{errors}"
        );
        let errors = compile_one("domain: d\nquota:\n").unwrap_err();
        assert!(
            errors.0[0].message.contains("quota must be a mapping"),
            "{errors}"
        );
    }

    #[test]
    fn a_quota_block_inside_a_descriptor_is_rejected() {
        let errors =
            compile_one("domain: d\ndescriptors:\n  - key: k\n    quota: {}\n").unwrap_err();
        assert!(
            errors.0[0]
                .message
                .contains("quota is only allowed at the top level"),
            "{errors}"
        );
    }

    #[test]
    fn merged_files_may_declare_quota_once() {
        let a = (
            PathBuf::from("a.yaml"),
            "domain: d\nquota: {}\ndescriptors:\n  - key: a\n".to_owned(),
        );
        let b = (
            PathBuf::from("b.yaml"),
            "domain: d\ndescriptors:\n  - key: b\n".to_owned(),
        );
        let c = (PathBuf::from("c.yaml"), "domain: d\nquota: {}\n".to_owned());
        let merge = LoadOptions {
            merge_domains: true,
        };
        let rules = compile(&[a.clone(), b], &merge, &Metrics::new()).unwrap();
        assert!(rules.domain("d").unwrap().quota.is_some());
        let errors = compile(&[a, c], &merge, &Metrics::new()).unwrap_err();
        assert_eq!(errors.0[0].file, Path::new("c.yaml"));
        assert!(
            errors.0[0]
                .message
                .contains("already has a quota block (in a.yaml)"),
            "{errors}"
        );
    }

    #[test]
    fn merging_rejects_a_repeated_top_level_key() {
        let a = (
            PathBuf::from("a.yaml"),
            "domain: d\ndescriptors:\n  - key: k\n".to_owned(),
        );
        let b = (
            PathBuf::from("b.yaml"),
            "domain: d\ndescriptors:\n  - key: k\n".to_owned(),
        );
        let merge = LoadOptions {
            merge_domains: true,
        };
        let errors = compile(&[a, b], &merge, &Metrics::new()).unwrap_err();
        assert_eq!(errors.0[0].file, Path::new("b.yaml"));
        assert!(
            errors.0[0]
                .message
                .contains("duplicate descriptor composite key 'd.k'")
        );
    }
}
