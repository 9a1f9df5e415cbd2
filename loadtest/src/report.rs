//! Turns the results of alternating rounds into one table: per scenario and server, the
//! median over rounds, and the median of the per-round ratios to the baseline measured
//! back to back with it. Ratios taken within a round cancel most of the drift of a shared,
//! noisy machine; medians drop the odd disturbed round.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::scenario::Scenario;
use crate::summary::{Mode, RunResult, median};

/// One line of the table: a scenario on one server, over all its rounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub mode: Mode,
    pub scenario: String,
    pub label: String,
    pub rounds: usize,
    /// Median answers per second (in half-max mode: at the offered rate).
    pub throughput_rps: f64,
    /// Half-max mode: median closed-loop maximum.
    pub max_throughput_rps: Option<f64>,
    /// Median over rounds of (this round's throughput / the baseline's in the same round);
    /// in half-max mode, of the maxima. `None` for the baseline itself or without one.
    pub ratio_to_baseline: Option<f64>,
    /// Half-max mode: median offered rate.
    pub rate: Option<f64>,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Median cores used by the load generator and by the server over the measured window.
    pub client_cpu: Option<f64>,
    pub server_cpu: Option<f64>,
    /// The largest server memory seen at the end of a round, in MiB.
    pub server_rss_mib: Option<f64>,
    /// Sums over rounds.
    pub requests: u64,
    pub over_limit: u64,
    pub errors: u64,
    pub dropped: u64,
}

/// Scenarios in report order; variants (`rules-10k 1000 rules`) sort with their scenario.
fn scenario_rank(name: &str) -> usize {
    let base = name.split(' ').next().unwrap_or(name);
    Scenario::ALL
        .iter()
        .position(|s| s.name() == base)
        .unwrap_or(usize::MAX)
}

/// The rows for `results`, ordered by mode, scenario, then the baseline first and the other
/// servers in the order they first appear.
pub fn aggregate(results: &[RunResult], baseline: &str) -> Vec<Row> {
    let mut label_order: Vec<&str> = vec![baseline];
    for r in results {
        if !label_order.contains(&r.label.as_str()) {
            label_order.push(&r.label);
        }
    }
    let rank = |label: &str| {
        label_order
            .iter()
            .position(|l| *l == label)
            .unwrap_or(usize::MAX)
    };
    let mut groups: BTreeMap<(Mode, usize, String, usize, String), Vec<&RunResult>> =
        BTreeMap::new();
    for r in results {
        let key = (
            r.mode,
            scenario_rank(&r.scenario),
            r.scenario.clone(),
            rank(&r.label),
            r.label.clone(),
        );
        groups.entry(key).or_default().push(r);
    }
    let headline = |r: &RunResult| r.max_throughput_rps.unwrap_or(r.throughput_rps);
    let baseline_of = |mode: Mode, scenario: &str, round: u32| {
        results.iter().find(|b| {
            b.label == baseline && b.mode == mode && b.scenario == scenario && b.round == round
        })
    };
    groups
        .into_iter()
        .map(|((mode, _, scenario, _, label), runs)| {
            let med = |f: &dyn Fn(&RunResult) -> f64| {
                median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>()).unwrap_or(0.0)
            };
            let ratios: Vec<f64> = runs
                .iter()
                .filter_map(|r| {
                    let b = baseline_of(mode, &scenario, r.round)?;
                    (headline(b) > 0.0).then(|| headline(r) / headline(b))
                })
                .collect();
            let is_half_max = mode == Mode::HalfMax;
            Row {
                mode,
                rounds: runs.len(),
                throughput_rps: med(&|r| r.throughput_rps),
                max_throughput_rps: is_half_max
                    .then(|| med(&|r| r.max_throughput_rps.unwrap_or(0.0))),
                ratio_to_baseline: if label == baseline {
                    None
                } else {
                    median(&ratios)
                },
                rate: (mode != Mode::Closed).then(|| med(&|r| r.rate.unwrap_or(0.0))),
                p50_us: med(&|r| r.latency.p50_us),
                p90_us: med(&|r| r.latency.p90_us),
                p99_us: med(&|r| r.latency.p99_us),
                p999_us: med(&|r| r.latency.p999_us),
                client_cpu: median(&runs.iter().filter_map(|r| r.client_cpu).collect::<Vec<_>>()),
                server_cpu: median(&runs.iter().filter_map(|r| r.server_cpu).collect::<Vec<_>>()),
                server_rss_mib: runs
                    .iter()
                    .filter_map(|r| r.server_rss_mib)
                    .reduce(f64::max),
                requests: runs.iter().map(|r| r.requests).sum(),
                over_limit: runs.iter().map(|r| r.over_limit).sum(),
                errors: runs.iter().map(|r| r.errors).sum(),
                dropped: runs.iter().map(|r| r.dropped).sum(),
                scenario,
                label,
            }
        })
        .collect()
}

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

fn rps(value: f64) -> String {
    let whole = value.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(row: &Row) -> String {
    match row.ratio_to_baseline {
        Some(r) => format!("{r:.2}"),
        None => "1 (baseline)".to_owned(),
    }
}

/// Cores used as `load / server`, e.g. `0.98 / 0.71`.
fn cpu(row: &Row) -> String {
    let one = |c: Option<f64>| c.map_or_else(|| "?".to_owned(), |c| format!("{c:.2}"));
    format!("{} / {}", one(row.client_cpu), one(row.server_cpu))
}

fn share(part: u64, whole: u64) -> String {
    if part == 0 {
        "0".to_owned()
    } else {
        format!(
            "{part} ({:.1} %)",
            part as f64 * 100.0 / whole.max(1) as f64
        )
    }
}

/// The markdown tables for `rows`: one for closed-loop throughput, one for latency at a
/// fraction of the maximum, one for fixed-rate runs, each present only when it has rows.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    let closed: Vec<&Row> = rows.iter().filter(|r| r.mode == Mode::Closed).collect();
    if !closed.is_empty() {
        out.push_str("| scenario | server | rounds | throughput (req/s) | x baseline | p50 (ms) | p99 (ms) | p99.9 (ms) | CPU load / server | server RSS (MiB) | over limit | errors |\n");
        out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in closed {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.label,
                r.rounds,
                rps(r.throughput_rps),
                ratio(r),
                ms(r.p50_us),
                ms(r.p99_us),
                ms(r.p999_us),
                cpu(r),
                r.server_rss_mib
                    .map_or_else(|| "?".to_owned(), |m| format!("{m:.0}")),
                share(r.over_limit, r.requests),
                r.errors,
            );
        }
    }
    for (mode, title) in [
        (Mode::HalfMax, "Latency at a fraction of the maximum"),
        (Mode::Open, "Fixed rate"),
    ] {
        let open: Vec<&Row> = rows.iter().filter(|r| r.mode == mode).collect();
        if open.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(out, "{title}:\n");
        out.push_str("| scenario | server | rounds | max (req/s) | x baseline | offered (req/s) | p50 (ms) | p90 (ms) | p99 (ms) | p99.9 (ms) | CPU load / server | dropped | errors |\n");
        out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in open {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.label,
                r.rounds,
                r.max_throughput_rps.map_or_else(|| "-".to_owned(), rps),
                if r.max_throughput_rps.is_some() {
                    ratio(r)
                } else {
                    "-".to_owned()
                },
                rps(r.rate.unwrap_or(0.0)),
                ms(r.p50_us),
                ms(r.p90_us),
                ms(r.p99_us),
                ms(r.p999_us),
                cpu(r),
                r.dropped,
                r.errors,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::Latency;

    fn run(label: &str, round: u32, scenario: &str, rps: f64, p99_us: f64) -> RunResult {
        RunResult {
            label: label.into(),
            round,
            scenario: scenario.into(),
            mode: Mode::Closed,
            target: "http://127.0.0.1:1".into(),
            connections: 1,
            concurrency: 1,
            rate: None,
            max_throughput_rps: None,
            warmup_s: 0.0,
            duration_s: 1.0,
            requests: rps as u64,
            over_limit: 0,
            errors: 0,
            dropped: 0,
            throughput_rps: rps,
            latency: Latency {
                p99_us,
                ..Latency::default()
            },
            client_cpu: Some(0.5),
            server_cpu: None,
            server_rss_mib: Some(12.4),
            started_at: 0,
        }
    }

    #[test]
    fn the_ratio_is_the_median_of_per_round_ratios() {
        // Round 2 ran on a disturbed machine: both servers slowed, the ratio held.
        let results = vec![
            run("noop", 1, "one", 1000.0, 100.0),
            run("memory", 1, "one", 900.0, 200.0),
            run("noop", 2, "one", 500.0, 100.0),
            run("memory", 2, "one", 450.0, 900.0),
            run("noop", 3, "one", 1000.0, 100.0),
            run("memory", 3, "one", 800.0, 300.0),
        ];
        let rows = aggregate(&results, "noop");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].label, "noop");
        assert_eq!(rows[0].ratio_to_baseline, None);
        assert_eq!(rows[0].throughput_rps, 1000.0);
        let memory = &rows[1];
        assert_eq!(memory.rounds, 3);
        assert_eq!(memory.throughput_rps, 800.0);
        assert!((memory.ratio_to_baseline.unwrap() - 0.9).abs() < 1e-9);
        assert_eq!(memory.p99_us, 300.0);
    }

    #[test]
    fn rows_follow_scenario_order_with_the_baseline_first() {
        let results = vec![
            run("redis", 1, "five", 1.0, 1.0),
            run("noop", 1, "five", 2.0, 1.0),
            run("redis", 1, "one", 1.0, 1.0),
            run("noop", 1, "one", 2.0, 1.0),
        ];
        let order: Vec<(String, String)> = aggregate(&results, "noop")
            .into_iter()
            .map(|r| (r.scenario, r.label))
            .collect();
        let want = [
            ("one", "noop"),
            ("one", "redis"),
            ("five", "noop"),
            ("five", "redis"),
        ];
        assert_eq!(order, want.map(|(s, l)| (s.to_owned(), l.to_owned())));
    }

    #[test]
    fn the_table_prints_throughput_with_separators_and_latency_in_ms() {
        let rows = aggregate(&[run("noop", 1, "one", 123_456.4, 1_500.0)], "noop");
        let table = markdown(&rows);
        assert!(
            table.contains("| one | noop | 1 | 123,456 | 1 (baseline) |"),
            "{table}"
        );
        assert!(table.contains("| 1.500 |"), "{table}");
        assert!(table.contains("| 0.50 / ? | 12 |"), "{table}");
    }

    #[test]
    fn open_loop_rows_show_both_sides_cpu() {
        let mut latency = run("noop", 1, "one", 500.0, 1_500.0);
        latency.mode = Mode::HalfMax;
        latency.rate = Some(500.0);
        latency.max_throughput_rps = Some(1000.0);
        latency.client_cpu = Some(0.4);
        latency.server_cpu = Some(0.25);
        let table = markdown(&aggregate(&[latency], "noop"));
        assert!(table.contains("| 0.40 / 0.25 | 0 | 0 |"), "{table}");
    }
}
