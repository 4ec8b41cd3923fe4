-- Fleet command results (issue 23): what `hcp agent` did with each command the job sent,
-- stored by the job from hcp.fleet.command_results, so a compliance report can say why a
-- device is out of step (its command failed, was skipped in a dry run, or never arrived).
-- One row per result message; the natural key makes a replay of the topic a no-op. A few
-- rows per device a day at most: a plain table on both paths, no hypertable.
CREATE TABLE IF NOT EXISTS command_results (
    device_id         text        NOT NULL,
    device_type       text        NOT NULL,
    site              text        NOT NULL,
    action            text        NOT NULL,
    status            text        NOT NULL,
    reason            text,
    command_ts        timestamptz NOT NULL,
    command_position  text        NOT NULL,
    dry_run           boolean     NOT NULL,
    ts                timestamptz NOT NULL,
    PRIMARY KEY (device_id, command_position, ts)
);
CREATE INDEX IF NOT EXISTS command_results_ts ON command_results (ts);
