//! The admin API suite: every endpoint on PostgreSQL and on SQLite.

mod approval_flow;
mod approvals;
mod authorization;
mod budget_flow;
mod budgets;
mod drift;
mod helpers;
mod ledger_writer;
mod prices;
#[path = "../support/private_postgres.rs"]
mod private_postgres;
#[path = "../support/private_redis.rs"]
mod private_redis;
mod propagation;
mod quota_requests;
mod reports;
mod tenants;
#[path = "../support/test_db.rs"]
mod test_db;
mod usage;
