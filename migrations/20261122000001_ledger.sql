-- The budget ledger and its admin state. One portable set for PostgreSQL and SQLite:
-- identifiers are application-made text (UUIDv7 or slugs), times are BIGINT milliseconds
-- since the Unix epoch in UTC, money is BIGINT micro-units (1e-6 of the currency unit)
-- with an ISO 4217 code beside it, and structured values are JSON text. Integers are
-- all BIGINT so both databases hand back the same 64-bit type.

CREATE TABLE tenants (
    id              TEXT PRIMARY KEY,           -- the slug Envoy sends as the tenant descriptor value
    name            TEXT NOT NULL,
    status          TEXT NOT NULL,              -- pending | active | suspended
    cost_centre     TEXT,
    currency        TEXT NOT NULL,
    timezone        TEXT NOT NULL,
    plan            TEXT NOT NULL,              -- JSON: request and token limits per window
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX tenants_status ON tenants (status);

-- Models a tenant may call; a row exists once access is granted (by approval or admin).
CREATE TABLE model_access (
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    model           TEXT NOT NULL,
    granted_at      BIGINT NOT NULL,
    granted_by      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, model)
);

-- Bearer tokens for the admin API. Only a SHA-256 of the token is kept: tokens are 256
-- random bits, so a fast hash is as safe as a slow one and keeps authentication cheap.
CREATE TABLE api_tokens (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    role            TEXT NOT NULL,              -- admin | approver | finance | tenant
    tenant_id       TEXT REFERENCES tenants (id),
    token_hash      TEXT NOT NULL UNIQUE,
    created_at      BIGINT NOT NULL,
    created_by      TEXT NOT NULL,
    revoked_at      BIGINT
);

-- The price book: a new row per price version; past usage keeps the price in force then.
CREATE TABLE prices (
    id                  TEXT PRIMARY KEY,
    model               TEXT NOT NULL,
    token_type          TEXT NOT NULL,
    currency            TEXT NOT NULL,
    micros_per_million  BIGINT NOT NULL,        -- price of one million tokens, in micro-units
    effective_from      BIGINT NOT NULL,
    created_at          BIGINT NOT NULL,
    created_by          TEXT NOT NULL,
    UNIQUE (model, token_type, currency, effective_from)
);

CREATE TABLE budgets (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    scope               TEXT NOT NULL,          -- tenant | tenant_model | session | global
    tenant_id           TEXT REFERENCES tenants (id),
    model               TEXT,
    measure             TEXT NOT NULL,          -- requests | tokens | cost
    token_type          TEXT,                   -- for tokens: one type, or NULL for all
    period              TEXT NOT NULL,          -- window:<seconds> | calendar:<day|week|month> | session
    amount              BIGINT NOT NULL,        -- a count, or micro-units for cost
    currency            TEXT,                   -- for cost
    enforcement         TEXT NOT NULL,          -- hard | soft
    alert_thresholds    TEXT NOT NULL,          -- JSON list of percentages
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    deleted_at          BIGINT                  -- budgets are retired, never forgotten
);
CREATE INDEX budgets_tenant ON budgets (tenant_id);

-- Temporary raises of a budget, granted by approval; each expires on its own.
CREATE TABLE budget_overrides (
    id              TEXT PRIMARY KEY,
    budget_id       TEXT NOT NULL REFERENCES budgets (id),
    amount          BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    approval_id     TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);

CREATE TABLE approvals (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,              -- tenant_activation | model_access | budget_increase | temporary_override
    tenant_id       TEXT REFERENCES tenants (id),
    payload         TEXT NOT NULL,              -- JSON, per kind
    reason          TEXT NOT NULL,
    requested_by    TEXT NOT NULL,
    status          TEXT NOT NULL,              -- pending | approved | rejected | cancelled | expired
    decided_by      TEXT,
    note            TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    decided_at      BIGINT
);
CREATE INDEX approvals_status ON approvals (status);

-- The ledger: append-only. Corrections are new entries, never updates. A usage event is
-- unique by request id, so a retried settlement is recorded once.
CREATE TABLE ledger_entries (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,              -- usage | grant | adjustment
    request_id      TEXT UNIQUE,
    tenant_id       TEXT NOT NULL,
    session_id      TEXT,
    model           TEXT,
    domain          TEXT,
    cost_micros     BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    occurred_at     BIGINT NOT NULL,
    recorded_at     BIGINT NOT NULL,
    note            TEXT
);
CREATE INDEX ledger_entries_tenant_time ON ledger_entries (tenant_id, occurred_at);

-- One line per token type of a usage event, with its cost at the price in force.
CREATE TABLE ledger_lines (
    entry_id        TEXT NOT NULL REFERENCES ledger_entries (id),
    token_type      TEXT NOT NULL,
    tokens          BIGINT NOT NULL,
    cost_micros     BIGINT NOT NULL,
    PRIMARY KEY (entry_id, token_type)
);

CREATE TABLE audit_log (
    id              TEXT PRIMARY KEY,
    at              BIGINT NOT NULL,
    actor           TEXT NOT NULL,              -- the token id, or "system"
    action          TEXT NOT NULL,
    entity_type     TEXT NOT NULL,
    entity_id       TEXT NOT NULL,
    before          TEXT,                       -- JSON
    after           TEXT                        -- JSON
);
CREATE INDEX audit_log_entity ON audit_log (entity_type, entity_id);
CREATE INDEX audit_log_at ON audit_log (at);
