-- Reports over all tenants select usage by time alone; (tenant_id, occurred_at) serves
-- only reports of one tenant. Portable between PostgreSQL and SQLite.
CREATE INDEX ledger_entries_time ON ledger_entries (occurred_at);
