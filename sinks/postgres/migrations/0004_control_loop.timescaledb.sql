-- Control loop (issue 17), TimescaleDB path: hypertables on window_end, like recommendations.

-- One row per device and judged window: the command in force, whether the device
-- followed it, and realised value from observed figures (docs/control-loop.md).
CREATE TABLE IF NOT EXISTS device_compliance (
    device_id           text             NOT NULL,
    device_type         text             NOT NULL,
    site                text             NOT NULL,
    window_start        timestamptz      NOT NULL,
    window_end          timestamptz      NOT NULL,
    command             text,
    observed_on         boolean,
    compliant           boolean,
    misses              bigint           NOT NULL,
    flagged             boolean          NOT NULL,
    commanded_power_w   double precision,
    observed_power_w    double precision,
    planned_net_usd_hr  double precision,
    actual_net_usd_hr   double precision,
    savings_usd         double precision,
    PRIMARY KEY (device_id, window_end)
);

-- One row per site and window: commanded vs observed power, devices out of step,
-- curtailment savings and planned vs actual net (USD over the window).
CREATE TABLE IF NOT EXISTS site_compliance (
    site             text             NOT NULL,
    window_start     timestamptz      NOT NULL,
    window_end       timestamptz      NOT NULL,
    devices          bigint           NOT NULL,
    commanded_kw     double precision,
    observed_kw      double precision,
    noncompliant     bigint           NOT NULL,
    flagged          bigint           NOT NULL,
    savings_usd      double precision,
    planned_net_usd  double precision,
    actual_net_usd   double precision,
    PRIMARY KEY (site, window_end)
);

SELECT create_hypertable('device_compliance', by_range('window_end', INTERVAL '1 day'), if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('site_compliance', by_range('window_end', INTERVAL '7 days'), if_not_exists => TRUE, migrate_data => TRUE);
ALTER TABLE device_compliance SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id', timescaledb.compress_orderby = 'window_end DESC');
ALTER TABLE site_compliance SET (timescaledb.compress, timescaledb.compress_segmentby = 'site', timescaledb.compress_orderby = 'window_end DESC');
SELECT remove_compression_policy('device_compliance', if_exists => TRUE);
SELECT add_compression_policy('device_compliance', compress_after => INTERVAL '7 days');
SELECT remove_compression_policy('site_compliance', if_exists => TRUE);
SELECT add_compression_policy('site_compliance', compress_after => INTERVAL '7 days');
SELECT remove_retention_policy('device_compliance', if_exists => TRUE);
SELECT add_retention_policy('device_compliance', drop_after => INTERVAL '90 days');
SELECT remove_retention_policy('site_compliance', if_exists => TRUE);
SELECT add_retention_policy('site_compliance', drop_after => INTERVAL '90 days');
