-- Plain PostgreSQL path (no timescaledb extension): the tables stay ordinary heaps.
-- Rows arrive roughly in time order, so BRIN indexes on the time columns make range scans
-- cheap at a tiny fraction of a B-tree's size. Retention and compression are left to the
-- operator on this path (see docs/history.md).

CREATE INDEX IF NOT EXISTS gpu_metrics_ts_brin ON gpu_metrics USING brin (ts);
CREATE INDEX IF NOT EXISTS asic_metrics_ts_brin ON asic_metrics USING brin (ts);
CREATE INDEX IF NOT EXISTS market_prices_ts_brin ON market_prices USING brin (ts);
CREATE INDEX IF NOT EXISTS device_windows_window_start_brin ON device_windows USING brin (window_start);
CREATE INDEX IF NOT EXISTS recommendations_window_end_brin ON recommendations USING brin (window_end);
CREATE INDEX IF NOT EXISTS workload_events_ts_brin ON workload_events USING brin (ts);

-- Hourly profitability per site. A plain view, not a materialized one: it is always exact
-- (no refresh job to schedule or forget) and the same columns as the TimescaleDB continuous
-- aggregate of the same name. A window counts in the hour its window_end falls in, because
-- the continuous aggregate must bucket on the hypertable's time column (window_end).
-- USD amounts are USD/h rates times the window length in hours.
CREATE OR REPLACE VIEW site_hourly_profit AS
SELECT
    date_bin(INTERVAL '1 hour', window_end, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
    site,
    count(*) AS windows,
    sum(EXTRACT(EPOCH FROM (window_end - window_start))::double precision / 3600.0) AS device_hours,
    sum(revenue_usd_hr * (EXTRACT(EPOCH FROM (window_end - window_start))::double precision / 3600.0)) AS revenue_usd,
    sum(cost_usd_hr * (EXTRACT(EPOCH FROM (window_end - window_start))::double precision / 3600.0)) AS cost_usd,
    sum(net_usd_hr * (EXTRACT(EPOCH FROM (window_end - window_start))::double precision / 3600.0)) AS net_usd
FROM recommendations
GROUP BY 1, 2;
