-- TimescaleDB path (the extension exists; the migrator created it before this file runs).
-- Needs TimescaleDB >= 2.13 for the by_range() form of create_hypertable.
-- Every statement is idempotent so a half-configured database can be re-run, and each
-- policy is removed before it is added so the interval in this file is the one in force
-- (add_*_policy with if_not_exists keeps an older interval and only warns).

-- Raw rows: 1-day chunks, compressed after 7 days, dropped after 30 days.
SELECT create_hypertable('gpu_metrics', by_range('ts', INTERVAL '1 day'), if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('asic_metrics', by_range('ts', INTERVAL '1 day'), if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('market_prices', by_range('ts', INTERVAL '1 day'), if_not_exists => TRUE, migrate_data => TRUE);

-- Aggregates and decisions: 1-day chunks, compressed after 7 days, dropped after 90 days.
SELECT create_hypertable('device_windows', by_range('window_start', INTERVAL '1 day'), if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('recommendations', by_range('window_end', INTERVAL '1 day'), if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('workload_events', by_range('ts', INTERVAL '1 day'), if_not_exists => TRUE, migrate_data => TRUE);

-- Segment by the device (or key): history queries ask about one device or site over time.
-- segmentby + orderby cover each primary key, so compressed chunks can still enforce it.
ALTER TABLE gpu_metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'gpu_id', timescaledb.compress_orderby = 'ts DESC');
ALTER TABLE asic_metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'asic_id', timescaledb.compress_orderby = 'ts DESC');
ALTER TABLE market_prices SET (timescaledb.compress, timescaledb.compress_segmentby = 'key', timescaledb.compress_orderby = 'ts DESC');
ALTER TABLE device_windows SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id', timescaledb.compress_orderby = 'window_start DESC');
ALTER TABLE recommendations SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id', timescaledb.compress_orderby = 'window_end DESC');
ALTER TABLE workload_events SET (timescaledb.compress, timescaledb.compress_segmentby = 'workload_id', timescaledb.compress_orderby = 'ts DESC, to_state');

SELECT remove_compression_policy('gpu_metrics', if_exists => TRUE);
SELECT add_compression_policy('gpu_metrics', compress_after => INTERVAL '7 days');
SELECT remove_compression_policy('asic_metrics', if_exists => TRUE);
SELECT add_compression_policy('asic_metrics', compress_after => INTERVAL '7 days');
SELECT remove_compression_policy('market_prices', if_exists => TRUE);
SELECT add_compression_policy('market_prices', compress_after => INTERVAL '7 days');
SELECT remove_compression_policy('device_windows', if_exists => TRUE);
SELECT add_compression_policy('device_windows', compress_after => INTERVAL '7 days');
SELECT remove_compression_policy('recommendations', if_exists => TRUE);
SELECT add_compression_policy('recommendations', compress_after => INTERVAL '7 days');
SELECT remove_compression_policy('workload_events', if_exists => TRUE);
SELECT add_compression_policy('workload_events', compress_after => INTERVAL '7 days');

SELECT remove_retention_policy('gpu_metrics', if_exists => TRUE);
SELECT add_retention_policy('gpu_metrics', drop_after => INTERVAL '30 days');
SELECT remove_retention_policy('asic_metrics', if_exists => TRUE);
SELECT add_retention_policy('asic_metrics', drop_after => INTERVAL '30 days');
SELECT remove_retention_policy('market_prices', if_exists => TRUE);
SELECT add_retention_policy('market_prices', drop_after => INTERVAL '30 days');
SELECT remove_retention_policy('device_windows', if_exists => TRUE);
SELECT add_retention_policy('device_windows', drop_after => INTERVAL '90 days');
SELECT remove_retention_policy('recommendations', if_exists => TRUE);
SELECT add_retention_policy('recommendations', drop_after => INTERVAL '90 days');
SELECT remove_retention_policy('workload_events', if_exists => TRUE);
SELECT add_retention_policy('workload_events', drop_after => INTERVAL '90 days');

-- Hourly profitability per site as a continuous aggregate with the same columns as the
-- plain path's view. It must bucket on the hypertable's time column, window_end.
-- WITH NO DATA lets this run inside the migration's transaction (WITH DATA cannot); the
-- refresh policy materializes it, and materialized_only = false adds not-yet-materialized
-- recent rows at query time, so readers never see a gap.
CREATE MATERIALIZED VIEW IF NOT EXISTS site_hourly_profit
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT
    time_bucket(INTERVAL '1 hour', window_end) AS bucket,
    site,
    count(*) AS windows,
    sum(EXTRACT(EPOCH FROM (window_end - window_start))::double precision / 3600.0) AS device_hours,
    sum(revenue_usd_hr * (EXTRACT(EPOCH FROM (window_end - window_start))::double precision / 3600.0)) AS revenue_usd,
    sum(cost_usd_hr * (EXTRACT(EPOCH FROM (window_end - window_start))::double precision / 3600.0)) AS cost_usd,
    sum(net_usd_hr * (EXTRACT(EPOCH FROM (window_end - window_start))::double precision / 3600.0)) AS net_usd
FROM recommendations
GROUP BY time_bucket(INTERVAL '1 hour', window_end), site
WITH NO DATA;

SELECT remove_continuous_aggregate_policy('site_hourly_profit', if_exists => TRUE);
SELECT add_continuous_aggregate_policy('site_hourly_profit', start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes');
SELECT remove_retention_policy('site_hourly_profit', if_exists => TRUE);
SELECT add_retention_policy('site_hourly_profit', drop_after => INTERVAL '90 days');
