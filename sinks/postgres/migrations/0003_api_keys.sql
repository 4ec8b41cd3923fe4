-- The HTTP API's own tables (`hcp api`, docs/api.md). Plain tables on both paths: they are
-- small and keyed, not time series, so they need neither hypertables nor retention.

-- Bearer keys. Only a SHA-256 of the key is stored: keys are 32 random bytes, so a fast
-- hash is as safe as a slow one and keeps the lookup one index probe.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      text        PRIMARY KEY,
    key_hash    text        NOT NULL UNIQUE,
    role        text        NOT NULL CHECK (role IN ('admin', 'customer')),
    customer    text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK (role = 'admin' OR customer IS NOT NULL)
);

-- Who submitted which workload through the API: a customer key sees and cancels only
-- the workloads recorded here under its customer.
CREATE TABLE IF NOT EXISTS api_workloads (
    workload_id  text        PRIMARY KEY,
    customer     text        NOT NULL,
    request      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS api_workloads_customer_idx ON api_workloads (customer, workload_id);

-- Idempotency-Key of POST /api/v1/workloads, per key owner. The row is reserved (with the
-- workload id) before the message is produced and completed with the answer after the
-- broker acknowledged, so a retry after a crash in between produces the same workload id.
CREATE TABLE IF NOT EXISTS api_idempotency (
    owner        text        NOT NULL,
    idem_key     text        NOT NULL,
    body_hash    text        NOT NULL,
    workload_id  text        NOT NULL,
    status       integer,
    answer       jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, idem_key)
);
