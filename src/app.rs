//! Wires settings into a running service: rules, store, ledger, policy, limiter, gRPC and
//! HTTP servers.
//!
//! [`App::build`] binds both listeners (port 0 works, for tests) and loads everything;
//! [`App::run`] serves until the shutdown future resolves, then shuts down in order:
//! health turns NOT_SERVING, an optional delay lets load balancers notice, listeners
//! stop accepting, in-flight calls get a grace period to finish, and then the ledger
//! writer drains the usage outbox one last time (so their settlements are written).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::admin::{self, AdminState};
use crate::alerts::Alerter;
use crate::clock::{SharedClock, SystemClock};
use crate::edge::grpc::RateLimitGrpc;
use crate::edge::health::Health;
use crate::edge::http::{self, HttpState};
use crate::edge::rls_server::RateLimitServer;
use crate::ledger::Ledger;
use crate::ledger::balances::LedgerBalances;
use crate::ledger::drift::Counters;
use crate::ledger::tokens::{NewToken, Role};
use crate::ledger::writer::LedgerWriter;
use crate::limiter::Limiter;
use crate::policy::{self, Policy, PolicyLoader, PolicySources};
use crate::rules::watch::{self, CurrentRules, RulesWatcher};
use crate::settings::{Settings, redact_url};
use crate::store::{MemoryStore, RedisStore, Store};
use crate::telemetry::Metrics;

/// How often the memory store drops expired counters.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often gRPC health is re-published (it follows the store's state).
const HEALTH_EVERY: Duration = Duration::from_millis(500);
/// How often recorded latency samples are folded into their summary (see
/// [`Metrics::spawn_upkeep`]); the Prometheus exporter's own default.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A built, not yet running, tollgate.
pub struct App {
    settings: Settings,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    ledger: Ledger,
    limiter: Arc<Limiter>,
    metrics: Metrics,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// Moves settled usage events from the store's outbox into the ledger.
    ledger_writer: Arc<LedgerWriter>,
    _watcher: Option<RulesWatcher>,
    /// Keeps the limiter's tenant policy in step with the ledger; stops when dropped.
    policy: PolicyLoader,
}

impl App {
    /// Builds the app on the system clock.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// Builds the app on the given clock: loads the rules (an invalid set is an error),
    /// connects the store, and binds both listeners.
    pub async fn build_with_clock(settings: Settings, clock: SharedClock) -> anyhow::Result<App> {
        settings.validate()?;
        let metrics = Metrics::new();
        let rules: CurrentRules = Arc::new(ArcSwapOption::empty());
        watch::reload(
            &settings.rules_dir,
            &settings.load_options(),
            &metrics,
            &rules,
        )
        .map_err(|errors| {
            anyhow::anyhow!(
                "invalid rules in {}: {errors}",
                settings.rules_dir.display()
            )
        })?;
        let watcher = if settings.watch_rules {
            let watcher = watch::watch(
                settings.rules_dir.clone(),
                settings.load_options(),
                metrics.clone(),
                rules.clone(),
            )
            .with_context(|| format!("cannot watch {}", settings.rules_dir.display()))?;
            Some(watcher)
        } else {
            None
        };

        let mut background = Vec::new();
        let store = if settings.store == "memory" {
            let store = MemoryStore::with_outbox_file(clock.clone(), &settings.outbox_path)
                .with_context(|| {
                    format!(
                        "cannot open the usage outbox file {} (setting outbox_path)",
                        settings.outbox_path.display()
                    )
                })?;
            background.push(store.spawn_sweeper(SWEEP_EVERY));
            Store::Memory(store)
        } else {
            connect_redis(&settings).await?
        };
        tracing::info!(store = %redact_url(&settings.store), "counter store ready");

        let ledger = open_ledger(&settings, clock.clone()).await?;
        let ledger_writer = Arc::new(LedgerWriter::new(
            store.clone(),
            ledger.clone(),
            metrics.ledger_writer.clone(),
        ));
        let resync = Duration::from_secs(settings.policy_resync_secs);
        let policy = policy::start(ledger.clone(), resync, metrics.policy.clone())
            .await
            .context("cannot load the tenant policy from the ledger")?;
        let alerter = Alerter::new(settings.alerter_options(), metrics.clone())
            .context("cannot set up budget alerts")?;
        let limiter = Limiter::new(
            rules,
            store,
            clock,
            metrics.clone(),
            settings.limiter_options(),
        )
        .with_policy(policy.current().clone())
        .with_alerter(alerter)
        .with_spent_source(Arc::new(LedgerBalances {
            ledger: ledger.clone(),
            writer: ledger_writer.clone(),
        }))
        .with_settle_waker(ledger_writer.waker());
        let limiter = Arc::new(limiter);
        let grpc_listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("cannot listen for gRPC on {}", settings.grpc_addr))?;
        let http_listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", settings.http_addr))?;
        if let Some(listener) = ledger.listen() {
            background.push(listener);
        }
        Ok(App {
            settings,
            grpc_listener,
            http_listener,
            ledger,
            limiter,
            metrics,
            background,
            ledger_writer,
            _watcher: watcher,
            policy,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The ledger (tests seed it).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The limiter (tests inspect its rules and store).
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// The ledger writer (the limiter wakes it after settlements; a rebuild drains it).
    pub fn ledger_writer(&self) -> &Arc<LedgerWriter> {
        &self.ledger_writer
    }

    /// Serves until `shutdown` resolves, then shuts down in order.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let App {
            settings,
            grpc_listener,
            http_listener,
            ledger,
            limiter,
            metrics,
            mut background,
            ledger_writer,
            _watcher,
            policy,
        } = self;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = Health::new(limiter.clone(), reporter, settings.healthy_requires_rules);
        health.publish().await;
        background.push(health.spawn_publisher(HEALTH_EVERY));
        background.push(metrics.spawn_upkeep(METRICS_UPKEEP_EVERY));

        // The writer has its own stop, given only once the servers have stopped, so the
        // settlements of calls still in flight at shutdown reach the ledger. Stopped on any
        // early return too.
        let writer_stop = CancellationToken::new();
        let _writer_stop_on_return = writer_stop.clone().drop_guard();
        let mut writer = ledger_writer
            .clone()
            .spawn(settings.ledger_writer_interval(), writer_stop.clone());

        let stop = CancellationToken::new();
        let grpc = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(RateLimitServer::new(RateLimitGrpc::new(
                limiter.clone(),
                metrics.clone(),
            )))
            .serve_with_incoming_shutdown(
                // Small answers go out at once rather than waiting on Nagle's algorithm.
                TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                stop.clone().cancelled_owned(),
            );
        // The drift report reads the counters exactly as the limiter keys them.
        let counters = Counters::new(
            limiter.store().clone(),
            limiter.policy().clone(),
            ledger_writer.clone(),
            &settings.limiter_options().key_prefix,
        );
        let router = http::router(HttpState {
            limiter,
            health: health.clone(),
            metrics,
        })
        .merge(admin::router(AdminState { ledger, counters }));
        let http = axum::serve(http_listener, router)
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        let mut grpc = tokio::spawn(grpc);
        let mut http = tokio::spawn(async move { http.await });

        tokio::select! {
            () = shutdown => {}
            result = &mut grpc => return Err(anyhow::anyhow!("gRPC server stopped: {result:?}")),
            result = &mut http => return Err(anyhow::anyhow!("HTTP server stopped: {result:?}")),
        }
        tracing::info!("shutting down: health is NOT_SERVING");
        health.start_draining().await;
        tokio::time::sleep(Duration::from_secs(settings.shutdown_delay_secs)).await;
        stop.cancel();
        let grace = Duration::from_secs(settings.shutdown_grace_secs);
        if tokio::time::timeout(grace, async {
            let _ = (&mut grpc).await;
            let _ = (&mut http).await;
        })
        .await
        .is_err()
        {
            tracing::warn!(?grace, "in-flight calls did not finish in time");
        }
        tracing::info!("writing the last settled usage to the ledger");
        writer_stop.cancel();
        if tokio::time::timeout(grace, &mut writer).await.is_err() {
            // Safe to cut short: events leave the outbox only after the ledger commits them.
            writer.abort();
            tracing::warn!(
                ?grace,
                "the ledger writer did not finish in time; the rest stays in the outbox"
            );
        }
        background.iter().for_each(tokio::task::JoinHandle::abort);
        drop(policy);
        tracing::info!("stopped");
        Ok(())
    }
}

/// Connects the Redis store that `settings.store` names.
async fn connect_redis(settings: &Settings) -> anyhow::Result<Store> {
    let store = RedisStore::connect_with(settings.redis_options())
        .await
        .with_context(|| format!("cannot use store {}", redact_url(&settings.store)))?;
    Ok(Store::Redis(store))
}

/// The ledger and the budget counters from the same settings as `serve`, for `tollgate
/// reconcile`: no listeners, no background tasks, the policy read once.
///
/// The memory store lives inside the serving process, so another process cannot read its
/// counters: with it, this opens an empty store (every counter reads 0) and leaves the
/// service's outbox file alone (its owner drains it). Redis is shared: its outbox is
/// drained here as by any replica (the ledger records each event once).
pub async fn open_reconciler(
    settings: &Settings,
    clock: SharedClock,
) -> anyhow::Result<(Ledger, Counters)> {
    settings.validate()?;
    let store = if settings.store == "memory" {
        Store::Memory(MemoryStore::new(clock.clone()))
    } else {
        connect_redis(settings).await?
    };
    let ledger = open_ledger(settings, clock).await?;
    let sources = PolicySources::read(&ledger)
        .await
        .context("cannot read the tenant policy from the ledger")?;
    let writer = LedgerWriter::new(
        store.clone(),
        ledger.clone(),
        Metrics::new().ledger_writer.clone(),
    );
    let counters = Counters::new(
        store,
        Arc::new(ArcSwap::from_pointee(Policy::compile(sources, 1))),
        Arc::new(writer),
        &settings.limiter_options().key_prefix,
    );
    Ok((ledger, counters))
}

/// Connects the ledger, migrates it if asked, and seeds the bootstrap admin token.
pub async fn open_ledger(settings: &Settings, clock: SharedClock) -> anyhow::Result<Ledger> {
    let ledger = Ledger::connect(&settings.database_url, clock)
        .await
        .with_context(|| {
            format!(
                "cannot open the ledger at {}",
                redact_url(&settings.database_url)
            )
        })?;
    if settings.migrate_on_start {
        ledger
            .migrate()
            .await
            .context("cannot migrate the ledger")?;
    }
    if let Some(secret) = &settings.bootstrap_token
        && ledger.token_count().await? == 0
    {
        let bootstrap = NewToken {
            name: "bootstrap".into(),
            role: Role::Admin,
            tenant_id: None,
        };
        ledger
            .create_token("system", &bootstrap, Some(secret))
            .await?;
        tracing::info!("created the bootstrap admin token");
    }
    Ok(ledger)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
