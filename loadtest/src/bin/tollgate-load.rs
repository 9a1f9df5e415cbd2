//! `tollgate-load`: load for Envoy's RateLimitService, and the helpers `loadtest/run.sh`
//! needs (rule files per scenario, a bounded readiness wait, a free port, the report).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use loadtest::driver::{self, RunConfig};
use loadtest::report;
use loadtest::scenario::{self, Params, Scenario, Unit};
use loadtest::setup;
use loadtest::summary::{Mode, RunResult};

// The same allocator as the servers: a generator that needs less CPU per request is a
// higher ceiling for every server it drives.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator for Envoy's RateLimitService (tollgate, envoyproxy/ratelimit, or any other).
///
/// Without a subcommand it runs load, as `run` does.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Send load and report latency and throughput (the default).
    Run(RunArgs),
    /// Write the rule files a scenario needs into a directory, for the server to load.
    Rules(RulesArgs),
    /// Wait until the target answers ShouldRateLimit, for at most --timeout seconds.
    Wait(WaitArgs),
    /// Print a TCP port that is free on 127.0.0.1 right now.
    FreePort,
    /// Combine JSON results of alternating rounds into markdown tables (medians, ratios).
    Report(ReportArgs),
    /// Charge --keys distinct high-cardinality counters once each (to measure the
    /// server's memory per active key), then print how long it took.
    Fill(FillArgs),
    /// Make what the token-budget scenario needs in tollgate's ledger through its admin
    /// API (tenants, approvals, prices, budgets), then wait until it is in force.
    Setup(SetupArgs),
}

#[derive(Args, Clone, Copy)]
struct ParamsArgs {
    /// Distinct keys in the high-cardinality scenario.
    #[arg(long, default_value_t = Params::default().keys)]
    keys: u64,
    /// Rules in the rules-10k scenario.
    #[arg(long, default_value_t = Params::default().rules)]
    rules: u32,
    /// Requests per window (`rules --unit`, a minute by default) per counter in the
    /// generated rules; lower it to exercise rejections (the default keeps almost every
    /// answer OK).
    #[arg(long, default_value_t = Params::default().limit)]
    limit: u32,
}

impl From<ParamsArgs> for Params {
    fn from(a: ParamsArgs) -> Self {
        Params {
            keys: a.keys.max(1),
            rules: a.rules.max(1),
            limit: a.limit,
            unit: Unit::default(),
        }
    }
}

#[derive(Args, Clone)]
struct RunArgs {
    /// The RateLimitService, as http://host:port.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    target: String,
    #[arg(long, value_enum, default_value_t = Scenario::One)]
    scenario: Scenario,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent streams per connection (in open loop: the cap on requests in flight
    /// per connection).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Open loop: send this many requests per second in total; latency counts from each
    /// request's intended send time. Without it the loop is closed.
    #[arg(long, conflicts_with = "find_max")]
    rate: Option<f64>,
    /// Find the closed-loop maximum, then measure latency open-loop at --fraction of it.
    #[arg(long)]
    find_max: bool,
    /// The share of the maximum that --find-max measures latency at.
    #[arg(long, default_value_t = 0.5)]
    fraction: f64,
    /// Seconds measured (per phase with --find-max).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts (per phase with --find-max).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Write the result as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Names the server in the result (`noop`, `memory`, `redis`, ...).
    #[arg(long, default_value = "target")]
    label: String,
    /// The round number, for alternating series.
    #[arg(long, default_value_t = 1)]
    round: u32,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// The server's process id, to report the CPU it used over the measured window.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Names this run's variant of the scenario in results (`1000 rules`): reports show
    /// it as a scenario of its own.
    #[arg(long)]
    variant: Option<String>,
    #[command(flatten)]
    params: ParamsArgs,
}

#[derive(Args)]
struct RulesArgs {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// The directory to write into (created if missing; other rule files there are removed).
    #[arg(long)]
    out: PathBuf,
    /// The window of every rule: counters outlive a run only with hour or day (the memory
    /// measurement uses day, so nothing it fills expires before it is read).
    #[arg(long, value_enum, default_value_t = Unit::Minute)]
    unit: Unit,
    #[command(flatten)]
    params: ParamsArgs,
}

#[derive(Args)]
struct WaitArgs {
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    target: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

#[derive(Args)]
struct FillArgs {
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    target: String,
    /// Distinct keys (`user_id` values u<from>, u<from + 1>, ...).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// The first key: past the keys an earlier fill charged, so every key is a new counter.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Descriptors per request.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Concurrent streams (over 2 connections).
    #[arg(long, default_value_t = 8)]
    streams: usize,
}

#[derive(Args)]
struct SetupArgs {
    /// tollgate's HTTP listener (admin API), as http://host:port.
    #[arg(long)]
    http: String,
    /// tollgate's gRPC listener, to check that the setup is in force.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    target: String,
    /// An admin token (the bootstrap token). Pass it in the environment rather than as
    /// --token, which the process list shows (not a `TOLLGATE_` variable: tollgate refuses
    /// unknown ones).
    #[arg(long, env = "LOADTEST_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Give up if the setup is not in force after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

#[derive(Args)]
struct ReportArgs {
    /// The label of the baseline server that ratios are taken against.
    #[arg(long, default_value = "noop")]
    baseline: String,
    /// Where to write the markdown tables (`-` for stdout).
    #[arg(long, default_value = "-")]
    out: PathBuf,
    /// Also write every result and the aggregated rows as one JSON document here.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// JSON result files written by `run --json`.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => run(cli.run).await,
        Some(Command::Run(args)) => run(args).await,
        Some(Command::Rules(args)) => {
            let params = Params {
                unit: args.unit,
                ..Params::from(args.params)
            };
            for path in scenario::write_rules(&args.out, args.scenario, &params)
                .with_context(|| format!("cannot write rules into {}", args.out.display()))?
            {
                println!("{}", path.display());
            }
            Ok(())
        }
        Some(Command::Wait(args)) => {
            wait(&args.target, Duration::from_secs_f64(args.timeout.max(0.0))).await
        }
        Some(Command::FreePort) => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", listener.local_addr()?.port());
            Ok(())
        }
        Some(Command::Report(args)) => write_report(&args),
        Some(Command::Fill(args)) => {
            if args.from.checked_add(args.keys).is_none() {
                bail!("--from + --keys must fit in 64 bits");
            }
            let clients = driver::connect(&args.target, 2).await?;
            let filled =
                driver::fill(&clients, args.from, args.keys, args.batch, args.streams).await;
            eprintln!(
                "filled {} keys from u{} in {:.1} s ({} requests, {} errors)",
                args.keys, args.from, filled.seconds, filled.requests, filled.errors
            );
            if let Some(first) = filled.first_error {
                bail!("{} fill requests failed; the first: {first}", filled.errors);
            }
            Ok(())
        }
        Some(Command::Setup(args)) => {
            let timeout = Duration::from_secs_f64(args.timeout.max(0.0));
            let started = Instant::now();
            setup::token_budget(&args.http, &args.target, &args.token, timeout).await?;
            eprintln!(
                "token-budget set up in {:.1} s: {} active tenants, {} models granted to each, \
                 a hard token and a hard cost budget each",
                started.elapsed().as_secs_f64(),
                scenario::TENANTS,
                scenario::MODELS,
            );
            Ok(())
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    let non_negative = |x: f64| x.is_finite() && x >= 0.0;
    if !positive(args.duration) || !non_negative(args.warmup) {
        bail!("--duration must be positive and --warmup not negative");
    }
    if args.rate.is_some_and(|r| !positive(r)) || !positive(args.fraction) {
        bail!("--rate and --fraction must be positive");
    }
    let config = RunConfig {
        target: args.target.clone(),
        scenario: args.scenario,
        params: args.params.into(),
        connections: args.connections.max(1),
        concurrency: args.concurrency.max(1),
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        progress: !args.quiet,
        label: args.label.clone(),
        round: args.round,
        server_pid: args.server_pid,
        variant: args.variant.clone(),
    };
    let clients = driver::connect(&config.target, config.connections).await?;
    let result = match (args.rate, args.find_max) {
        (Some(rate), _) => driver::run_open(&config, &clients, rate).await,
        (None, true) => driver::run_half_max(&config, &clients, args.fraction).await,
        (None, false) => driver::run_closed(&config, &clients).await,
    };
    eprintln!("{}", describe(&result));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&result)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

/// A one-line human summary of a run.
fn describe(r: &RunResult) -> String {
    let ms = |us: f64| us / 1000.0;
    let head = match r.mode {
        Mode::Closed => format!("closed loop, {}x{} streams", r.connections, r.concurrency),
        Mode::Open => format!("open loop at {:.0} req/s", r.rate.unwrap_or(0.0)),
        Mode::HalfMax => format!(
            "max {:.0} req/s, latency at {:.0} req/s",
            r.max_throughput_rps.unwrap_or(0.0),
            r.rate.unwrap_or(0.0)
        ),
    };
    let cores = |c: Option<f64>| c.map_or_else(|| "?".to_owned(), |c| format!("{c:.2}"));
    let load_cpu = cores(r.client_cpu);
    format!(
        "{} [{}] {head}: {:.0} req/s  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  \
         cpu load/server {}/{}  server rss {} MiB  ({} answers, {} over limit, {} errors, {} dropped)",
        r.scenario,
        r.label,
        r.throughput_rps,
        ms(r.latency.p50_us),
        ms(r.latency.p90_us),
        ms(r.latency.p99_us),
        ms(r.latency.p999_us),
        ms(r.latency.max_us),
        load_cpu,
        cores(r.server_cpu),
        r.server_rss_mib
            .map_or_else(|| "?".to_owned(), |m| format!("{m:.0}")),
        r.requests,
        r.over_limit,
        r.errors,
        r.dropped,
    )
}

/// Polls ShouldRateLimit until it answers (any answer counts) or `timeout` passes.
async fn wait(target: &str, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let probe = scenario::Generator::new(Scenario::One, Params::default(), 0).next_request();
    let mut last_error = String::from("no attempt");
    while started.elapsed() < timeout {
        let attempt = tokio::time::timeout(Duration::from_secs(1), async {
            let mut clients = driver::connect(target, 1).await?;
            clients[0].should_rate_limit(probe.clone()).await?;
            anyhow::Ok(())
        })
        .await;
        match attempt {
            Ok(Ok(())) => {
                eprintln!(
                    "{target} answers (after {:.1} s)",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            Ok(Err(e)) => last_error = format!("{e:#}"),
            Err(_) => last_error = "no answer within 1 s".into(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{target} did not answer within {timeout:?}: {last_error}")
}

fn write_report(args: &ReportArgs) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for file in &args.files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let result: RunResult = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a run result", file.display()))?;
        results.push(result);
    }
    let rows = report::aggregate(&results, &args.baseline);
    let tables = report::markdown(&rows);
    if args.out.as_os_str() == "-" {
        std::io::stdout().write_all(tables.as_bytes())?;
    } else {
        std::fs::write(&args.out, &tables)
            .with_context(|| format!("cannot write {}", args.out.display()))?;
    }
    if let Some(path) = &args.json_out {
        let doc = serde_json::json!({ "baseline": args.baseline, "rows": rows, "runs": results });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
