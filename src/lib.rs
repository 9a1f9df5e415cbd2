//! Tollgate: a global rate-limit and quota service for Envoy.
//!
//! Module map (the decide flow, in the order a request travels):
//! - [`edge`]: the gRPC service Envoy calls and the HTTP side; converts wire types.
//! - [`rules`]: the YAML rule files, compiled into a matching tree and hot-reloaded.
//! - [`limiter`]: matches descriptors, charges counters, forms the decision. Transport-free.
//!   In a domain with a `quota:` block it first checks tenants against the [`policy`].
//! - [`store`]: where counters live: embedded memory or Redis.
//! - [`policy`]: the ledger's tenants compiled into an in-memory snapshot, reloaded on
//!   every ledger change (all replicas) and periodically.
//!
//! Around them: [`settings`] (layered configuration), [`telemetry`] (logs and metrics),
//! [`clock`] (injectable time) and [`app`] (wires everything and runs it).
//!
//! [`alerts`]: when a settlement takes a budget past one of its alert thresholds, the
//! limiter raises an alert: counted, logged, and POSTed to an optional webhook.

pub mod admin;
pub mod alerts;
pub mod app;
pub mod clock;
pub mod edge;
pub mod ledger;
pub mod limiter;
pub mod money;
pub mod policy;
pub mod rules;
pub mod settings;
pub mod store;
pub mod telemetry;
