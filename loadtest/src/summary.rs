//! What a run measured: latency histograms, their summary, and the JSON result.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to 60 s, with 3 significant digits.
pub const HIGHEST_US: u64 = 60_000_000;

/// An empty latency histogram (microseconds).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

/// Records one latency, clamped into the histogram's range.
pub fn record(histogram: &mut Histogram<u64>, latency: std::time::Duration) {
    let us = u64::try_from(latency.as_micros())
        .unwrap_or(HIGHEST_US)
        .clamp(1, HIGHEST_US);
    histogram.saturating_record(us);
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

/// The summary of a histogram (all zero when it is empty).
pub fn summarize(histogram: &Histogram<u64>) -> Latency {
    if histogram.is_empty() {
        return Latency::default();
    }
    let q = |quantile: f64| histogram.value_at_quantile(quantile) as f64;
    Latency {
        p50_us: q(0.50),
        p90_us: q(0.90),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: histogram.max() as f64,
        mean_us: histogram.mean(),
    }
}

/// Requests per second.
pub fn throughput(requests: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        requests as f64 / seconds
    } else {
        0.0
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// How the load was offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every stream sends its next request as soon as the previous one is answered.
    Closed,
    /// Requests are sent at a fixed rate; latency counts from each one's intended send time.
    Open,
    /// A closed-loop run finds the maximum throughput, then an open-loop run at a fraction
    /// of it (default half) measures latency; the latency fields are the open-loop run's.
    HalfMax,
}

/// One measured run, as written by `--json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Which server this was (`noop`, `memory`, `redis`, ...), given by `--label`.
    pub label: String,
    /// The round within a series of alternating runs, given by `--round`.
    pub round: u32,
    pub scenario: String,
    pub mode: Mode,
    pub target: String,
    pub connections: usize,
    /// Concurrent streams per connection (in open loop: the cap on requests in flight).
    pub concurrency: usize,
    /// The offered rate in open loop, req/s.
    pub rate: Option<f64>,
    /// In half-max mode: the closed-loop maximum the rate was derived from.
    pub max_throughput_rps: Option<f64>,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Answers (OK or OVER_LIMIT) to requests sent in the measured window.
    pub requests: u64,
    /// Of those, answers whose overall code was OVER_LIMIT.
    pub over_limit: u64,
    /// Calls that failed (gRPC error or transport error).
    pub errors: u64,
    /// Open loop only: requests due that were never sent because every stream was busy
    /// until the end (non-zero means the offered rate was not sustained).
    pub dropped: u64,
    /// Answers per second over the measured window.
    pub throughput_rps: f64,
    pub latency: Latency,
    /// Cores the load generator used on average over the measured window (Linux only).
    /// Near the cores it was given means the generator, not the server, set the pace.
    #[serde(default)]
    pub client_cpu: Option<f64>,
    /// Cores the server used over the measured window, when its pid was given.
    #[serde(default)]
    pub server_cpu: Option<f64>,
    /// The server's resident memory at the end of the measured window, in MiB.
    #[serde(default)]
    pub server_rss_mib: Option<f64>,
    /// Unix seconds when the run started.
    pub started_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn percentiles_of_a_uniform_range_are_where_expected() {
        let mut h = new_histogram();
        for us in 1..=1000 {
            record(&mut h, Duration::from_micros(us));
        }
        let s = summarize(&h);
        // Three significant digits: each value is within 0.1 % of the exact rank.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1.0;
        assert!(close(s.p50_us, 500.0), "{s:?}");
        assert!(close(s.p90_us, 900.0), "{s:?}");
        assert!(close(s.p99_us, 990.0), "{s:?}");
        assert!(close(s.p999_us, 999.0), "{s:?}");
        assert!(close(s.max_us, 1000.0), "{s:?}");
        assert!(close(s.mean_us, 500.5), "{s:?}");
    }

    #[test]
    fn one_slow_request_in_a_thousand_shows_at_p999_not_p99() {
        let mut h = new_histogram();
        for _ in 0..999 {
            record(&mut h, Duration::from_micros(100));
        }
        record(&mut h, Duration::from_millis(50));
        let s = summarize(&h);
        assert!((s.p99_us - 100.0).abs() < 1.0, "{s:?}");
        assert!(s.max_us >= 49_900.0, "{s:?}");
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut h = new_histogram();
        record(&mut h, Duration::from_nanos(10));
        record(&mut h, Duration::from_secs(3600));
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
    }

    #[test]
    fn an_empty_histogram_summarises_to_zero() {
        assert_eq!(summarize(&new_histogram()), Latency::default());
    }

    #[test]
    fn median_takes_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn throughput_is_requests_per_second() {
        assert_eq!(throughput(5000, 2.0), 2500.0);
        assert_eq!(throughput(5, 0.0), 0.0);
    }
}
