//! The `tollgate` binary: parse the command line, load settings, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate::app::{App, open_ledger, open_reconciler, shutdown_signal};
use tollgate::clock::SystemClock;
use tollgate::ledger::tokens::{NewToken, Role};
use tollgate::ledger::{Ledger, drift};
use tollgate::rules::load;
use tollgate::settings::{LogFormat, Settings};
use tollgate::telemetry::{self, Metrics};

// mimalloc rather than the system allocator: with a million live counters glibc's malloc
// spent a fifth of the server's time consolidating and searching its bins (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A global rate-limit and quota service for Envoy.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Settings file (TOML); `TOLLGATE_*` environment variables override it.
    #[arg(long, global = true, env = "TOLLGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Validate a rules directory offline; prints each error with its file name.
    CheckConfig {
        /// The directory of YAML rule files.
        dir: PathBuf,
        /// Check as if domain merging were on.
        #[arg(long)]
        merge_domains: bool,
    },
    /// Apply pending migrations to the ledger database.
    Migrate,
    /// Manage admin API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Compare the budget counters with the ledger: one row per budget; exits 0 when
    /// nothing drifts, 1 when a budget drifts, 2 on an error.
    Reconcile {
        /// Print the rows as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print its secret (shown only this once).
    Create {
        /// admin, approver, finance or tenant.
        #[arg(long)]
        role: String,
        /// A name to recognise the token by.
        #[arg(long, default_value = "cli")]
        name: String,
        /// The tenant a tenant-role token is scoped to.
        #[arg(long)]
        tenant: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Version => {
            println!("tollgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { dir, merge_domains } => check_config(&dir, merge_domains),
        Command::Serve => serve(cli.config),
        Command::Reconcile { json } => reconcile(cli.config, json),
        Command::Migrate => with_ledger(cli.config, |ledger| async move {
            ledger.migrate().await?;
            println!("migrations applied");
            Ok(())
        }),
        Command::Token(TokenCommand::Create { role, name, tenant }) => {
            with_ledger(cli.config, |ledger| async move {
                let role = Role::parse(&role).ok_or_else(|| {
                    anyhow::anyhow!("--role must be admin, approver, finance or tenant")
                })?;
                let new = NewToken {
                    name,
                    role,
                    tenant_id: tenant,
                };
                new.validate()
                    .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
                let created = ledger.create_token("cli", &new, None).await?;
                println!("{}", created.secret);
                eprintln!(
                    "token {} ({}) created; the secret above is shown only once",
                    created.token.id,
                    role.as_str()
                );
                Ok(())
            })
        }
    }
}

/// Runs `work` against the configured ledger (migrated first when settings ask for it).
fn with_ledger<F, Fut>(config: Option<PathBuf>, work: F) -> ExitCode
where
    F: FnOnce(Ledger) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let outcome = Settings::load(config.as_deref())
        .map_err(anyhow::Error::from)
        .and_then(|settings| {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let ledger = open_ledger(&settings, std::sync::Arc::new(SystemClock)).await?;
                work(ledger).await
            })
        });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tollgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the drift of every budget; the exit code says whether any drifts.
fn reconcile(config: Option<PathBuf>, json: bool) -> ExitCode {
    let outcome = Settings::load(config.as_deref())
        .map_err(anyhow::Error::from)
        .and_then(|settings| {
            // Every counter would read 0 here, so every budget with spending would "drift":
            // a cron job would alert on a healthy service. Cannot tell is exit 2.
            if settings.store == "memory" {
                anyhow::bail!(
                    "the memory store's counters live in the serving process, so this command \
                     cannot read them: use GET /v1/reports/drift on the service"
                );
            }
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let (ledger, counters) =
                    open_reconciler(&settings, std::sync::Arc::new(SystemClock)).await?;
                Ok(counters.drift(&ledger, None, ledger.now_ms()).await?)
            })
        });
    match outcome {
        Ok(rows) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).expect("rows serialize")
                );
            } else {
                print!("{}", drift::table(&rows));
            }
            let drifting = rows.iter().filter(|r| r.drifts()).count();
            if drifting == 0 {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "tollgate: {drifting} of {} budgets drift from the ledger",
                    rows.len()
                );
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("tollgate: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn check_config(dir: &std::path::Path, merge_domains: bool) -> ExitCode {
    let options = load::LoadOptions { merge_domains };
    match load::load_dir(dir, &options, &Metrics::new()) {
        Ok(rules) => {
            println!(
                "{}: ok ({} domains)",
                dir.display(),
                rules.domain_names().len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{error}");
            }
            eprintln!("{}: {} error(s)", dir.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    let settings = match Settings::load(config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("tollgate: {error}");
            return ExitCode::FAILURE;
        }
    };
    telemetry::init_tracing(settings.log_format == LogFormat::Json);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let outcome = runtime.block_on(async {
        let app = App::build(settings).await?;
        tracing::info!(grpc = %app.grpc_addr(), http = %app.http_addr(), "tollgate serving");
        app.run(shutdown_signal()).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("tollgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}
