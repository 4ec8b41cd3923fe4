-- Control loop (issue 17), TimescaleDB path: the compliance tables become hypertables
-- with compression after 7 days and retention of 90 days, like the other aggregates.

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
