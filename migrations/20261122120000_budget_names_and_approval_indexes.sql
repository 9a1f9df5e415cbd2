-- Budgets, overrides and approvals: the constraints and indexes their admin API relies on.
-- Portable between PostgreSQL and SQLite (both have partial and expression indexes).

-- A budget's name is what a denial names, so it is unique among the live budgets of one
-- tenant (global budgets, with no tenant, share the '' bucket). Retired budgets keep their
-- names and do not block reuse.
CREATE UNIQUE INDEX budgets_live_name ON budgets (COALESCE(tenant_id, ''), name) WHERE deleted_at IS NULL;

-- The overrides in force for a budget: by budget, then expiry.
CREATE INDEX budget_overrides_budget ON budget_overrides (budget_id, expires_at);

-- A tenant's requests, newest first; and the overdue pending ones, found on every read.
CREATE INDEX approvals_tenant ON approvals (tenant_id, created_at);
CREATE INDEX approvals_pending_expiry ON approvals (status, expires_at);
