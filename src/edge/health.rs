//! Health: one answer for `/healthcheck` and `grpc.health.v1`.
//!
//! Healthy while not draining, the counter store answers, and (when asked for) a rules
//! set with at least one domain is loaded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::limiter::Limiter;
use crate::store::CounterStore;

/// The gRPC service names whose status follows tollgate's health.
pub const SERVICE_NAMES: [&str; 2] = ["", "ratelimit"];

/// Shared health state.
#[derive(Clone)]
pub struct Health {
    draining: Arc<AtomicBool>,
    requires_rules: bool,
    limiter: Arc<Limiter>,
    reporter: HealthReporter,
}

impl Health {
    /// Health over `limiter`'s store and rules, published through `reporter`.
    pub fn new(limiter: Arc<Limiter>, reporter: HealthReporter, requires_rules: bool) -> Self {
        Self {
            draining: Arc::new(AtomicBool::new(false)),
            requires_rules,
            limiter,
            reporter,
        }
    }

    /// Whether tollgate should receive traffic now.
    pub fn is_healthy(&self) -> bool {
        let rules_ok = !self.requires_rules
            || self
                .limiter
                .rules()
                .load()
                .as_ref()
                .is_some_and(|r| !r.domain_names().is_empty());
        !self.draining.load(Ordering::SeqCst) && rules_ok && self.limiter.store().is_healthy()
    }

    /// Publishes the current state to gRPC health watchers.
    pub async fn publish(&self) {
        let status = if self.is_healthy() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in SERVICE_NAMES {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Marks the service as draining: NOT_SERVING from now on.
    pub async fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.publish().await;
    }

    /// Re-publishes the state every `every` until the task is aborted, so gRPC health
    /// follows the store going down and coming back.
    pub fn spawn_publisher(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let health = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                health.publish().await;
            }
        })
    }
}
