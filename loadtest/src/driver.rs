//! Drives load at a RateLimitService: many HTTP/2 connections, many streams on each.
//!
//! Closed loop: `connections x concurrency` workers, each sending its next request when the
//! previous one is answered; latency is each call's own time.
//!
//! Open loop: requests are due at a fixed rate. A pacer thread sleeps until the next
//! request is due and releases one permit per due request; workers take the permits in
//! order, and each request's latency counts from the time it was *due*, not from when a
//! worker got round to it. So a server that stalls is charged for the queue it causes (no
//! coordinated omission), and so is the pacer's own lateness (the kernel wakes a sleeping
//! thread some tens of microseconds late). Requests still queued when the run ends are
//! reported as `dropped`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use crate::connection::Client;
pub use crate::connection::connect;
use crate::scenario::{Generator, Params, Scenario};
use crate::summary::{self, Mode, RunResult};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `http://host:port` of the RateLimitService.
    pub target: String,
    pub scenario: Scenario,
    pub params: Params,
    pub connections: usize,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Print a progress line on stderr once a second.
    pub progress: bool,
    pub label: String,
    pub round: u32,
    /// The server's process id, to report its CPU use over the measured window (Linux).
    pub server_pid: Option<u32>,
    /// Told apart from other runs of the scenario in reports (`1000 rules`, `1 keys`):
    /// results name the scenario `<scenario> <variant>`.
    pub variant: Option<String>,
}

impl RunConfig {
    /// The scenario's name in results and reports, with the variant if any.
    pub fn scenario_label(&self) -> String {
        match &self.variant {
            Some(variant) => format!("{} {variant}", self.scenario.name()),
            None => self.scenario.name().to_owned(),
        }
    }
}

/// A number no other run uses (its start in nanoseconds since the epoch), so request ids
/// never repeat across runs against one server.
fn run_nonce() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Counters every worker bumps, read by the progress line.
#[derive(Default)]
struct Live {
    answered: AtomicU64,
    over_limit: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
}

/// One worker's share of the measured window.
struct Tally {
    histogram: Histogram<u64>,
    requests: u64,
    over_limit: u64,
    errors: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            histogram: summary::new_histogram(),
            requests: 0,
            over_limit: 0,
            errors: 0,
        }
    }
}

/// The phases of one run, as instants.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

impl Clock {
    fn new(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now();
        Self {
            start,
            measure_from: start + warmup,
            end: start + warmup + duration,
        }
    }
}

/// Sends one request and accounts for it; `since` is when latency starts counting.
async fn call(
    client: &mut Client,
    generator: &mut Generator,
    since: Instant,
    measured: bool,
    live: &Live,
    tally: &mut Tally,
) {
    let request = generator.next_request();
    live.in_flight.fetch_add(1, Ordering::Relaxed);
    let outcome = client.should_rate_limit(request).await;
    let latency = since.elapsed();
    live.in_flight.fetch_sub(1, Ordering::Relaxed);
    match outcome {
        Ok(response) => {
            let over = response.get_ref().overall_code == Code::OverLimit as i32;
            live.answered.fetch_add(1, Ordering::Relaxed);
            if over {
                live.over_limit.fetch_add(1, Ordering::Relaxed);
            }
            if measured {
                tally.requests += 1;
                tally.over_limit += u64::from(over);
                summary::record(&mut tally.histogram, latency);
            }
        }
        Err(_) => {
            live.errors.fetch_add(1, Ordering::Relaxed);
            if measured {
                tally.errors += 1;
            }
        }
    }
}

/// Prints a progress line on stderr once a second; the caller aborts it when done.
fn spawn_progress(live: Arc<Live>, clock: Clock, what: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        let mut last = 0;
        let mut last_at = Instant::now();
        loop {
            ticker.tick().await;
            let now = Instant::now();
            let answered = live.answered.load(Ordering::Relaxed);
            let rate = (answered - last) as f64 / now.duration_since(last_at).as_secs_f64();
            (last, last_at) = (answered, now);
            let phase = if now < clock.measure_from {
                "warmup "
            } else {
                "measure"
            };
            eprintln!(
                "[{:5.1}s] {what} {phase} {rate:>9.0} req/s  answered {answered}  over-limit {}  errors {}  in-flight {}",
                now.duration_since(clock.start).as_secs_f64(),
                live.over_limit.load(Ordering::Relaxed),
                live.errors.load(Ordering::Relaxed),
                live.in_flight.load(Ordering::Relaxed),
            );
        }
    })
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces:
    // state is field 3, utime and stime are fields 14 and 15, in USER_HZ (100 on Linux).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// A process's resident memory in MiB, from `/proc/<pid>/status`.
fn rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// What the sampler saw of the processes over the measured window.
#[derive(Default)]
struct Usage {
    /// Cores used on average by the load generator and by the server.
    client_cpu: Option<f64>,
    server_cpu: Option<f64>,
    /// The server's resident memory at the end of the window.
    server_rss_mib: Option<f64>,
}

/// Samples this process's and the server's CPU time at the start and the end of the
/// measured window, and the server's memory at the end.
fn spawn_sampler(clock: Clock, server_pid: Option<u32>) -> tokio::task::JoinHandle<Usage> {
    tokio::spawn(async move {
        let server = server_pid.map(|p| p.to_string());
        let sample = || (cpu_time("self"), server.as_deref().and_then(cpu_time));
        tokio::time::sleep_until(clock.measure_from.into()).await;
        let (client0, server0) = sample();
        let from = Instant::now();
        tokio::time::sleep_until(clock.end.into()).await;
        let (client1, server1) = sample();
        let seconds = from.elapsed().as_secs_f64();
        let cores = |a: Option<Duration>, b: Option<Duration>| {
            Some(b?.checked_sub(a?)?.as_secs_f64() / seconds).filter(|_| seconds > 0.0)
        };
        Usage {
            client_cpu: cores(client0, client1),
            server_cpu: cores(server0, server1),
            server_rss_mib: server.as_deref().and_then(rss_mib),
        }
    })
}

fn merge(tallies: Vec<Tally>) -> Tally {
    let mut total = Tally::new();
    for t in tallies {
        total
            .histogram
            .add(&t.histogram)
            .expect("histograms share their bounds");
        total.requests += t.requests;
        total.over_limit += t.over_limit;
        total.errors += t.errors;
    }
    total
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn result(
    config: &RunConfig,
    mode: Mode,
    rate: Option<f64>,
    total: &Tally,
    dropped: u64,
    started_at: u64,
) -> RunResult {
    let seconds = config.duration.as_secs_f64();
    RunResult {
        label: config.label.clone(),
        round: config.round,
        scenario: config.scenario_label(),
        mode,
        target: config.target.clone(),
        connections: config.connections,
        concurrency: config.concurrency,
        rate,
        max_throughput_rps: None,
        warmup_s: config.warmup.as_secs_f64(),
        duration_s: seconds,
        requests: total.requests,
        over_limit: total.over_limit,
        errors: total.errors,
        dropped,
        throughput_rps: summary::throughput(total.requests, seconds),
        latency: summary::summarize(&total.histogram),
        client_cpu: None,
        server_cpu: None,
        server_rss_mib: None,
        started_at,
    }
}

impl RunResult {
    fn set_usage(&mut self, usage: Usage) {
        self.client_cpu = usage.client_cpu;
        self.server_cpu = usage.server_cpu;
        self.server_rss_mib = usage.server_rss_mib;
    }
}

/// Closed loop: every stream sends as soon as its previous call is answered.
pub async fn run_closed(config: &RunConfig, clients: &[Client]) -> RunResult {
    let started_at = unix_now();
    let run = run_nonce();
    let clock = Clock::new(config.warmup, config.duration);
    let live = Arc::new(Live::default());
    let progress = config.progress.then(|| {
        spawn_progress(
            live.clone(),
            clock,
            format!("{} closed", config.scenario.name()),
        )
    });
    let usage = spawn_sampler(clock, config.server_pid);
    let mut workers = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for s in 0..config.concurrency.max(1) {
            let mut client = client.clone();
            let live = live.clone();
            let worker = (c * config.concurrency + s) as u64;
            let mut generator = Generator::new(config.scenario, config.params, worker).in_run(run);
            workers.push(tokio::spawn(async move {
                let mut tally = Tally::new();
                loop {
                    let sent = Instant::now();
                    if sent >= clock.end {
                        break;
                    }
                    let measured = sent >= clock.measure_from;
                    call(
                        &mut client,
                        &mut generator,
                        sent,
                        measured,
                        &live,
                        &mut tally,
                    )
                    .await;
                }
                tally
            }));
        }
    }
    let mut tallies = Vec::with_capacity(workers.len());
    for worker in workers {
        tallies.push(worker.await.expect("a load worker does not panic"));
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let mut run = result(config, Mode::Closed, None, &merge(tallies), 0, started_at);
    run.set_usage(usage.await.unwrap_or_default());
    run
}

/// The open-loop pacer's shortest sleep. Waking the pacer costs two context switches
/// (about 10 us on a 2-core VM), so waking it per request at 50,000 requests a second
/// saturated the generator's core; releasing every 100 us wakes it 10,000 times a second
/// and delays no request by more than that (which its latency includes).
const PACE: Duration = Duration::from_micros(100);

/// When each request of an open-loop run is due: request `k` (from 0) at `k / rate`
/// seconds. The pacer and the workers both use it, so a request's latency counts from
/// exactly the instant the pacer released it for (a rounded per-request interval, summed,
/// drifts: 0.5 ns a request is 125 us after 250,000 requests, and latencies shrink by it).
#[derive(Debug, Clone, Copy)]
struct Schedule {
    rate: f64,
}

impl Schedule {
    fn new(rate: f64) -> Self {
        Self { rate }
    }

    /// The offset from the start at which request `k` is due.
    fn due_at(self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// How many requests are due by `elapsed` (requests `0..n`, `due_at(k) <= elapsed`).
    fn due_by(self, elapsed: Duration) -> u64 {
        (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1
    }
}

/// Open loop at `rate` requests per second, at most `connections x concurrency` in flight.
pub async fn run_open(config: &RunConfig, clients: &[Client], rate: f64) -> RunResult {
    let started_at = unix_now();
    let run = run_nonce();
    let schedule = Schedule::new(rate.max(1.0));
    let clock = Clock::new(config.warmup, config.duration);
    let total_due = schedule.due_by(config.warmup + config.duration);
    let permits = Arc::new(Semaphore::new(0));
    let next_ticket = Arc::new(AtomicU64::new(0));
    let released = Arc::new(AtomicU64::new(0));

    // The pacer: a thread that sleeps until the next request is due (at least PACE), then
    // releases every request due by then. It sleeps rather than spins, so the generator's
    // core goes idle between requests and the kernel's network work (softirqs) runs at
    // once: a spinning pacer kept the core busy, pushed that work to ksoftirqd, and every
    // server, the no-op one included, showed multi-millisecond stalls in its p99.
    let pacer = {
        let permits = permits.clone();
        let released = released.clone();
        std::thread::spawn(move || {
            let mut sent: u64 = 0;
            while sent < total_due {
                let now = Instant::now();
                if now >= clock.end {
                    break;
                }
                let due = schedule.due_by(now - clock.start).min(total_due);
                if due > sent {
                    permits.add_permits((due - sent) as usize);
                    sent = due;
                    released.store(sent, Ordering::Relaxed);
                }
                let next = clock.start + schedule.due_at(sent);
                std::thread::sleep(next.saturating_duration_since(Instant::now()).max(PACE));
            }
            // Whatever is still queued when the run ends will not be sent: waiting
            // workers stop.
            std::thread::sleep(clock.end.saturating_duration_since(Instant::now()));
            permits.close();
        })
    };

    let live = Arc::new(Live::default());
    let progress = config.progress.then(|| {
        spawn_progress(
            live.clone(),
            clock,
            format!("{} open@{rate:.0}", config.scenario.name()),
        )
    });
    let usage = spawn_sampler(clock, config.server_pid);
    let mut workers = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for s in 0..config.concurrency.max(1) {
            let mut client = client.clone();
            let live = live.clone();
            let permits = permits.clone();
            let next_ticket = next_ticket.clone();
            let worker = (c * config.concurrency + s) as u64;
            let mut generator = Generator::new(config.scenario, config.params, worker).in_run(run);
            workers.push(tokio::spawn(async move {
                let mut tally = Tally::new();
                while let Ok(permit) = permits.acquire().await {
                    permit.forget();
                    let ticket = next_ticket.fetch_add(1, Ordering::Relaxed);
                    let due = clock.start + schedule.due_at(ticket);
                    let measured = due >= clock.measure_from;
                    call(
                        &mut client,
                        &mut generator,
                        due,
                        measured,
                        &live,
                        &mut tally,
                    )
                    .await;
                }
                tally
            }));
        }
    }
    let mut tallies = Vec::with_capacity(workers.len());
    for worker in workers {
        tallies.push(worker.await.expect("a load worker does not panic"));
    }
    let pacer = tokio::task::spawn_blocking(move || pacer.join());
    pacer
        .await
        .expect("the pacer's join runs")
        .expect("the pacer does not panic");
    if let Some(progress) = progress {
        progress.abort();
    }
    let dropped = released
        .load(Ordering::Relaxed)
        .saturating_sub(next_ticket.load(Ordering::Relaxed).min(total_due));
    let mut run = result(
        config,
        Mode::Open,
        Some(rate),
        &merge(tallies),
        dropped,
        started_at,
    );
    run.set_usage(usage.await.unwrap_or_default());
    run
}

/// What a fill did.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    pub requests: u64,
    pub errors: u64,
    /// The first failed request's gRPC status, to say why a fill failed.
    pub first_error: Option<String>,
    pub seconds: f64,
}

/// Charges each of the `keys` distinct `high-cardinality` counters `from..from + keys`
/// (`user_id` u<from>, ...) once, in requests of `batch` descriptors over `streams`
/// concurrent streams of `clients`. When `from` is past every key charged before, the
/// server holds exactly `keys` more counters (for the memory per key).
pub async fn fill(clients: &[Client], from: u64, keys: u64, batch: u64, streams: usize) -> Filled {
    let started = Instant::now();
    let batch = batch.max(1);
    let end = from.saturating_add(keys);
    let next = Arc::new(AtomicU64::new(from));
    let mut workers = Vec::new();
    for s in 0..streams.max(1) {
        let mut client = clients[s % clients.len()].clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let (mut requests, mut errors, mut first_error) = (0, 0, None);
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= end {
                    return (requests, errors, first_error);
                }
                let request =
                    crate::scenario::fill_request(first..first.saturating_add(batch).min(end));
                requests += 1;
                if let Err(status) = client.should_rate_limit(request).await {
                    errors += 1;
                    first_error.get_or_insert_with(|| status.to_string());
                }
            }
        }));
    }
    let (mut requests, mut errors, mut first_error) = (0, 0, None);
    for worker in workers {
        let (r, e, f) = worker.await.expect("a fill worker does not panic");
        requests += r;
        errors += e;
        first_error = first_error.or(f);
    }
    Filled {
        requests,
        errors,
        first_error,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Finds the closed-loop maximum, then measures latency open-loop at `fraction` of it.
pub async fn run_half_max(config: &RunConfig, clients: &[Client], fraction: f64) -> RunResult {
    let max = run_closed(config, clients).await;
    let rate = (max.throughput_rps * fraction).max(1.0);
    if config.progress {
        eprintln!(
            "max {:.0} req/s; measuring latency at {rate:.0} req/s ({:.0} %)",
            max.throughput_rps,
            fraction * 100.0
        );
    }
    let mut at = run_open(config, clients, rate).await;
    at.mode = Mode::HalfMax;
    at.max_throughput_rps = Some(max.throughput_rps);
    at.errors += max.errors;
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_released_within_a_nanosecond_of_when_it_is_due() {
        // A rate whose interval is not a whole number of nanoseconds.
        let schedule = Schedule::new(50_303.0);
        let ns = Duration::from_nanos;
        for k in [1, 2, 3, 1_000, 250_000, 1_000_000] {
            let due = schedule.due_at(k);
            assert_eq!(schedule.due_by(due + ns(1)), k + 1, "request {k} is late");
            assert_eq!(schedule.due_by(due - ns(2)), k, "request {k} is early");
        }
        assert_eq!(
            schedule.due_by(Duration::ZERO),
            1,
            "the first is due at once"
        );
    }

    #[test]
    fn due_times_do_not_drift_from_the_rate() {
        let schedule = Schedule::new(50_303.0);
        let exact = 250_000.0 / 50_303.0;
        let due = schedule.due_at(250_000).as_secs_f64();
        assert!((due - exact).abs() < 1e-9, "{due} vs {exact}");
    }
}
