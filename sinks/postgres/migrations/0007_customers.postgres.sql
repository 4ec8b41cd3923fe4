-- Customers (issue 24), plain PostgreSQL path: metered usage, quotas and the audit trail.
-- The tables are the same on both paths; only usage_minutes' time layout differs (a BRIN
-- index here, a hypertable on the TimescaleDB path). No retention: these are billing records.

-- One row per workload and minute (flows/metering.py); the job upserts on the key, so a
-- replay rewrites a row and never bills it twice.
CREATE TABLE IF NOT EXISTS usage_minutes (
    workload_id      text             NOT NULL,
    minute           timestamptz      NOT NULL,
    customer         text             NOT NULL,
    site             text             NOT NULL,
    gpu_model        text             NOT NULL,
    gpus             bigint           NOT NULL,
    gpu_seconds      double precision NOT NULL,
    energy_wh        double precision NOT NULL,
    energy_cost_usd  double precision NOT NULL,
    spot_usd_hr      double precision,
    rate_usd_hr      double precision,
    charge_usd       double precision NOT NULL,
    samples          bigint           NOT NULL,
    PRIMARY KEY (workload_id, minute)
);
CREATE INDEX IF NOT EXISTS usage_minutes_customer_idx ON usage_minutes (customer, minute);
CREATE INDEX IF NOT EXISTS usage_minutes_minute_brin ON usage_minutes USING brin (minute);

-- Per customer: at most max_gpus GPUs at once and monthly_gpu_hours GPU-hours a month
-- (null: no limit). Set with `hcp api customers set`.
CREATE TABLE IF NOT EXISTS customer_quotas (
    customer           text             PRIMARY KEY,
    max_gpus           bigint           CHECK (max_gpus IS NULL OR max_gpus >= 0),
    monthly_gpu_hours  double precision CHECK (monthly_gpu_hours IS NULL OR monthly_gpu_hours >= 0),
    updated_at         timestamptz      NOT NULL DEFAULT now()
);

-- Every API write and every fleet command the job sends: who, when, what, request id.
-- Append-only: a trigger refuses UPDATE and DELETE (TRUNCATE too), whoever asks.
CREATE TABLE IF NOT EXISTS audit_log (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    action      text        NOT NULL,
    target      text        NOT NULL DEFAULT '',
    request_id  text        NOT NULL DEFAULT '',
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    UNIQUE (action, request_id, target)
);
CREATE INDEX IF NOT EXISTS audit_log_at_idx ON audit_log (at);
CREATE OR REPLACE FUNCTION hcp_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP; END $$;
DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log FOR EACH ROW EXECUTE FUNCTION hcp_audit_append_only();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION hcp_audit_append_only();
