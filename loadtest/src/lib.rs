//! Measuring tollgate: a load generator for Envoy's RateLimitService and a no-op server
//! to compare it against in the same run.
//!
//! - [`scenario`]: the rules each scenario's server loads and the requests its client
//!   sends, generated from one description so they always agree.
//! - [`connection`]: the generator's HTTP/2 connections, without tonic's buffer task.
//! - [`driver`]: closed-loop and fixed-rate open-loop load over many HTTP/2 connections.
//! - [`summary`]: latency histograms, percentiles and the JSON result of one run.
//! - [`report`]: medians over alternating rounds and ratios to the baseline, as markdown.
//! - [`noop`]: the baseline server (same tonic stack, answers OK at once).
//! - [`setup`]: the tenants, grants, prices and budgets the `token-budget` scenario needs,
//!   made through tollgate's admin API.
//!
//! The binaries `tollgate-load` and `noop-rls` are thin wrappers; `loadtest/run.sh`
//! runs whole comparisons.

pub mod connection;
pub mod driver;
pub mod noop;
pub mod report;
pub mod scenario;
pub mod setup;
pub mod summary;
