//! The admin API suite: every endpoint on PostgreSQL and on SQLite.

mod approval_flow;
mod approvals;
mod authorization;
mod budgets;
mod helpers;
mod prices;
mod propagation;
mod quota_requests;
mod reports;
mod tenants;
mod usage;
