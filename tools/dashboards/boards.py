"""The five dashboards: Executive, Operations, GPU Metrics, ASIC Metrics, Economic Optimization.

USD/h figures summed over a window's devices are the fleet's rate during that window (every
device has one recommendation per window); USD amounts are those rates times the window
length, as in ``site_hourly_profit`` (docs/history.md).
"""

from __future__ import annotations

from collections.abc import Callable

from grafanalib.core import Dashboard

from tools.dashboards.panels import Grid, board, prom, sql, sql_stat, stat, table

__all__ = ["BOARDS"]

RATE = "$__rate_interval"
HOURS = "EXTRACT(EPOCH FROM (window_end - window_start)) / 3600.0"
# Hashprice: USD earned per TH/s per day at the prices a window used (SPEC section 2).
HASHPRICE = "btc_usd * block_reward_btc * 86400 * 1e12 / (difficulty * 4294967296.0)"
LATEST = (
    "window_end = (SELECT max(window_end) FROM recommendations WHERE $__timeFilter(window_end))"
)


def _top(device_type: str, order: str) -> str:
    return f"""
        SELECT device_id, site, model, count(*) AS windows,
               sum(revenue_usd_hr * {HOURS}) AS revenue_usd,
               sum(cost_usd_hr * {HOURS}) AS cost_usd,
               sum(net_usd_hr * {HOURS}) AS net_usd
        FROM recommendations
        WHERE device_type = '{device_type}' AND $__timeFilter(window_end)
        GROUP BY device_id, site, model
        ORDER BY net_usd {order} NULLS LAST, device_id
        LIMIT 10"""


def executive() -> Dashboard:
    g = Grid()
    g.add(sql_stat("Fleet revenue (USD/h, latest window)",
                   f"SELECT sum(revenue_usd_hr) AS revenue FROM recommendations WHERE {LATEST}",
                   "currencyUSD"), w=6, h=5)
    g.add(sql_stat("Fleet cost (USD/h, latest window)",
                   f"SELECT sum(cost_usd_hr) AS cost FROM recommendations WHERE {LATEST}",
                   "currencyUSD"), w=6, h=5)
    g.add(sql_stat("Fleet net (USD/h, latest window)",
                   f"SELECT sum(net_usd_hr) AS net FROM recommendations WHERE {LATEST}",
                   "currencyUSD"), w=6, h=5)
    g.add(stat("Hashprice now (USD per TH/s per day)",
               "hcp_btc_usd * hcp_block_reward_btc * 86400 * 1e12"
               " / (hcp_difficulty * 4294967296)", "currencyUSD"), w=6, h=5)
    g.add(sql("Fleet revenue, cost and net (USD/h)", """
        SELECT window_end AS time, sum(revenue_usd_hr) AS revenue, sum(cost_usd_hr) AS cost,
               sum(net_usd_hr) AS net
        FROM recommendations WHERE $__timeFilter(window_end)
        GROUP BY 1 ORDER BY 1""", "currencyUSD"))
    g.add(sql("Net per site (USD/h)", """
        SELECT window_end AS time, site AS metric, sum(net_usd_hr) AS value
        FROM recommendations WHERE $__timeFilter(window_end)
        GROUP BY 1, 2 ORDER BY 1""", "currencyUSD"))
    g.add(table("Revenue, cost and net per site and day (USD)", """
        SELECT date_trunc('day', bucket) AS day, site, sum(revenue_usd) AS revenue_usd,
               sum(cost_usd) AS cost_usd, sum(net_usd) AS net_usd
        FROM site_hourly_profit WHERE $__timeFilter(bucket)
        GROUP BY 1, 2 ORDER BY 1 DESC, 2"""), w=24)
    g.add(prom("ASICs: mine / curtail", {
        "{{action}}": 'sum by (action) (hcp_site_devices{device_type="asic"})'}))
    g.add(prom("GPUs: serve / offer / power down", {
        "{{action}}": 'sum by (action) (hcp_site_devices{device_type="gpu"})'}))
    g.add(sql("Hashprice (USD per TH/s per day, prices each window used)", f"""
        SELECT window_end AS time, avg({HASHPRICE}) AS hashprice
        FROM recommendations
        WHERE device_type = 'asic' AND difficulty > 0 AND $__timeFilter(window_end)
        GROUP BY 1 ORDER BY 1""", "currencyUSD"))
    g.add(prom("Net per site, latest window (USD/h)", {
        "{{site}}": "sum by (site) (hcp_site_net_usd_per_hour)"}, "currencyUSD"))
    return board("hcp-executive", "HCP / Executive",
                 "What the fleet earns and spends, per site, and how it is split.", g)


def operations() -> Dashboard:
    g = Grid()
    g.add(stat("Job up", 'min(up{job="hcp-job"})'), w=6, h=5)
    g.add(stat("Consumer lag (messages)", "sum(hcp_consumer_lag)"), w=6, h=5)
    g.add(stat("Snapshot age", "time() - max(hcp_snapshot_timestamp_seconds)", "s",
               "Needs --recovery-dir: no snapshots without recovery."), w=6, h=5)
    g.add(stat("Sinks down", "sum(hcp_sink_down)"), w=6, h=5)
    g.add(prom("Events in per topic (/s)", {
        "{{topic}}": f"sum by (topic) (rate(hcp_events_in_total[{RATE}]))"}, "ops"))
    g.add(prom("Consumer lag per topic (messages)", {
        "{{topic}}": "sum by (topic) (hcp_consumer_lag)"}))
    g.add(prom("Late events per kind (/s)", {
        "{{kind}}": f"sum by (kind) (rate(hcp_late_events_total[{RATE}]))"}, "ops"))
    g.add(prom("Bad input per topic and reason (/s)", {
        "{{topic}} {{reason}}":
            f"sum by (topic, reason) (rate(hcp_bad_input_total[{RATE}]))"}, "ops"))
    g.add(prom("Dead letters written (/s)", {
        "dlq": f"sum(rate(hcp_dlq_written_total[{RATE}]))"}, "ops"))
    g.add(prom("Sink write latency p95", {
        "{{sink}}": "histogram_quantile(0.95, sum by (sink, le) "
                    f"(rate(hcp_sink_write_seconds_bucket[{RATE}])))"}, "s"))
    g.add(prom("Sink errors and outages", {
        "errors {{sink}}": f"sum by (sink) (increase(hcp_sink_errors_total[{RATE}]))",
        "outages {{sink}}": f"sum by (sink) (increase(hcp_sink_outages_total[{RATE}]))",
        "down {{sink}}": "sum by (sink) (hcp_sink_down)"}))
    g.add(prom("Sink rows written (/s)", {
        "{{sink}} {{table}}": f"sum by (sink, table) (rate(hcp_sink_rows_total[{RATE}]))"},
        "ops"))
    g.add(prom("Window close delay", {
        "close delay": "max(hcp_window_close_delay_seconds)",
        "watermark behind now": "time() - min(hcp_watermark_seconds)"}, "s",
        "Wall clock at each window's decision minus its end (event time)."))
    g.add(prom("Batch and decode latency p95", {
        "fold {{kind}}": "histogram_quantile(0.95, sum by (kind, le) "
                         f"(rate(hcp_batch_seconds_bucket[{RATE}])))",
        "decode {{kind}}": "histogram_quantile(0.95, sum by (kind, le) "
                           f"(rate(hcp_decode_seconds_bucket[{RATE}])))"}, "s"))
    g.add(prom("Windows closed (/s)", {
        "{{device_type}}":
            f"sum by (device_type) (rate(hcp_windows_closed_total[{RATE}]))"}, "ops"))
    g.add(prom("Kafka errors seen by the source (/s)", {
        "{{topic}}": f"sum by (topic) (rate(hcp_source_errors_total[{RATE}]))"}, "ops"))
    return board("hcp-operations", "HCP / Operations",
                 "Is the job keeping up, is input clean, are the sinks writing.", g, "now-3h")


def _device_board(device_type: str) -> Grid:
    g = Grid()
    if device_type == "gpu":
        g.add(sql("GPU utilisation (%)", """
            SELECT window_end AS time, avg(util_pct) AS mean, min(util_pct) AS min,
                   avg(busy_fraction) * 100 AS busy
            FROM device_windows WHERE device_type = 'gpu' AND $__timeFilter(window_end)
            GROUP BY 1 ORDER BY 1""", "percent"))
    else:
        g.add(sql("Hashrate per site (TH/s)", """
            SELECT window_end AS time, site AS metric, sum(hashrate_ths) AS value
            FROM device_windows WHERE device_type = 'asic' AND $__timeFilter(window_end)
            GROUP BY 1, 2 ORDER BY 1"""))
    g.add(sql("Power per site (W)", f"""
        SELECT window_end AS time, site AS metric, sum(power_w) AS value
        FROM device_windows WHERE device_type = '{device_type}' AND $__timeFilter(window_end)
        GROUP BY 1, 2 ORDER BY 1""", "watt"))
    g.add(sql("Temperature (°C)", f"""
        SELECT window_end AS time, avg(temp_c) AS mean, max(temp_c) AS max
        FROM device_windows WHERE device_type = '{device_type}' AND $__timeFilter(window_end)
        GROUP BY 1 ORDER BY 1""", "celsius"))
    raw = f"{device_type}_metrics"
    g.add(sql("Device states (telemetry, devices per minute)", f"""
        SELECT $__timeGroupAlias(ts, '1m'), state AS metric,
               count(DISTINCT {device_type}_id) AS value
        FROM {raw} WHERE $__timeFilter(ts)
        GROUP BY 1, 2 ORDER BY 1""", desc="From the raw rows (off with --no-raw)."))
    g.add(prom("Decisions per site", {
        "{{site}} {{action}}":
            f'sum by (site, action) (hcp_site_devices{{device_type="{device_type}"}})'}))
    if device_type == "gpu":
        g.add(prom("GPU spot rate (USD per GPU-hour)", {
            "{{model}}": "max by (model) (hcp_gpu_spot_usd_per_hour)"}, "currencyUSD"))
    else:
        g.add(sql("Efficiency (J/TH) and reject rate (%)", """
            SELECT window_end AS time,
                   sum(power_w) / NULLIF(sum(hashrate_ths), 0) AS j_per_th,
                   100.0 * sum(shares_rejected)
                     / NULLIF(sum(shares_accepted + shares_rejected), 0) AS reject_pct
            FROM device_windows WHERE device_type = 'asic' AND $__timeFilter(window_end)
            GROUP BY 1 ORDER BY 1"""))
        g.add(sql("Hardware errors per window", """
            SELECT window_end AS time, sum(hw_errors) AS hw_errors
            FROM device_windows WHERE device_type = 'asic' AND $__timeFilter(window_end)
            GROUP BY 1 ORDER BY 1"""))
        g.add(prom("Bitcoin: price and difficulty", {
            "BTC (USD)": "hcp_btc_usd", "difficulty (T)": "hcp_difficulty / 1e12"}))
    g.add(table("Top 10 devices by net (USD over the range)", _top(device_type, "DESC")))
    g.add(table("Bottom 10 devices by net (USD over the range)", _top(device_type, "ASC")))
    return g


def gpu_metrics() -> Dashboard:
    return board("hcp-gpu", "HCP / GPU Metrics",
                 "How the GPUs run: utilisation, power, heat, states, best and worst earners.",
                 _device_board("gpu"))


def asic_metrics() -> Dashboard:
    return board("hcp-asic", "HCP / ASIC Metrics",
                 "How the miners run: hashrate, power, heat, J/TH, rejects, best and worst.",
                 _device_board("asic"))


def economic_optimization() -> Dashboard:
    g = Grid()
    g.add(sql("Decisions over time, with reasons (devices)", """
        SELECT window_end AS time, action || ' / ' || reason AS metric, count(*) AS value
        FROM recommendations WHERE $__timeFilter(window_end)
        GROUP BY 1, 2 ORDER BY 1"""), w=24)
    g.add(prom("Power used vs cap per site", {
        "measured {{site}}": "max by (site) (hcp_site_power_watts)",
        "planned {{site}}": "max by (site) (hcp_site_planned_power_watts)",
        "cap {{site}}": "max by (site) (hcp_site_power_cap_watts)"}, "watt"))
    g.add(sql("Planned power vs cap per window (W)", """
        SELECT window_end AS time, site || ' planned' AS metric,
               sum(CASE WHEN action IN ('mine', 'serve', 'offer')
                        THEN expected_power_w ELSE 0 END) AS value
        FROM recommendations WHERE $__timeFilter(window_end) GROUP BY 1, 2
        UNION ALL
        SELECT window_end, site || ' cap', max(power_cap_mw) * 1e6
        FROM recommendations
        WHERE power_cap_mw IS NOT NULL AND $__timeFilter(window_end) GROUP BY 1, site
        ORDER BY 1""", "watt"))
    g.add(sql("Curtailment savings (USD/h)", """
        SELECT window_end AS time,
               sum(expected_cost_usd_hr) FILTER (WHERE action IN ('curtail', 'power_down'))
                 AS power_cost_avoided,
               sum(GREATEST(-expected_net_usd_hr, 0))
                 FILTER (WHERE action IN ('curtail', 'power_down')) AS loss_avoided
        FROM recommendations WHERE $__timeFilter(window_end)
        GROUP BY 1 ORDER BY 1""", "currencyUSD",
        "Expected cost and expected loss of the devices told to stop: what stopping saved."))
    g.add(sql("Curtailed by the power cap (devices)", """
        SELECT window_end AS time, site AS metric,
               count(*) FILTER (WHERE reason = 'power_cap') AS value
        FROM recommendations WHERE $__timeFilter(window_end)
        GROUP BY 1, 2 ORDER BY 1"""))
    g.add(prom("Workload queue", {
        "queued": "sum(hcp_workloads_queued)",
        "oldest queued (s)": "max(hcp_workload_oldest_queued_age_seconds)"}))
    g.add(prom("Cordoned GPUs per site", {"{{site}}": "sum by (site) (hcp_gpus_cordoned)"}))
    g.add(prom("Assignment messages (/s)", {
        "{{action}}":
            f"sum by (action) (rate(hcp_workload_assignments_total[{RATE}]))"}, "ops"))
    g.add(sql("Workload transitions per minute (assignments, preemptions, ...)", """
        SELECT $__timeGroupAlias(ts, '1m'),
               count(*) FILTER (WHERE to_state = 'queued') AS queued,
               count(*) FILTER (WHERE to_state = 'assigned') AS assigned,
               count(*) FILTER (WHERE to_state = 'running') AS running,
               count(*) FILTER (WHERE to_state = 'preempted') AS preempted,
               count(*) FILTER (WHERE to_state IN ('completed', 'failed', 'cancelled'))
                 AS finished
        FROM workload_events WHERE $__timeFilter(ts)
        GROUP BY 1 ORDER BY 1"""))
    g.add(table("Workloads by latest state (queued first)", """
        SELECT * FROM (
            SELECT DISTINCT ON (workload_id) workload_id, to_state AS state, priority,
                   ts AS since, site, reason
            FROM workload_events WHERE $__timeFilter(ts)
            ORDER BY workload_id, ts DESC) latest
        ORDER BY state = 'queued' DESC, since""",
        "Each workload's latest transition in the range; queued ones show why (reason)."))
    return board("hcp-economics", "HCP / Economic Optimization",
                 "What the optimizer decided and why, power against caps, what it saved, "
                 "and where the AI work went.", g)


BOARDS: dict[str, Callable[[], Dashboard]] = {
    "executive": executive,
    "operations": operations,
    "gpu-metrics": gpu_metrics,
    "asic-metrics": asic_metrics,
    "economic-optimization": economic_optimization,
}
