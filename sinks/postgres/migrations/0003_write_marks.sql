-- The newest window each per-window history table holds, written in the same transaction
-- as the rows. A batch whose windows all start after it cannot collide with a stored row,
-- so the sink inserts it with a plain COPY instead of the staging-table upsert; anything
-- else (a replay, a crash between the Redis and PostgreSQL writes) takes the upsert.
CREATE TABLE IF NOT EXISTS hcp_write_marks (
    table_name  text   PRIMARY KEY,
    high_ms     bigint NOT NULL
);
