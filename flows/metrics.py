"""Prometheus metrics of the streaming job (SPEC section 4), all named ``hcp_*``.

Each metric is updated by the module that knows the number; this module only declares
them; :class:`MetricsEndpoint` serves ``/metrics``, one per run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter as _Tally

import polars as pl
from prometheus_client import Counter, Gauge, Histogram

from hcp.errors import ConfigError, HcpError
from hcp.metrics_http import serve_metrics

__all__ = ["MetricsEndpoint", "count_bad_input", "observe_window", "set_prices"]

log = logging.getLogger(__name__)

EVENTS_IN = Counter("hcp_events_in_total", "Messages read, per topic", ["topic"])
BAD_INPUT = Counter(
    "hcp_bad_input_total", "Messages dead-lettered, per topic and reason", ["topic", "reason"]
)
SOURCE_ERRORS = Counter("hcp_source_errors_total", "Kafka errors seen by the source", ["topic"])
LATE_EVENTS = Counter(
    "hcp_late_events_total", "Events beyond the allowed lateness, per kind", ["kind"]
)
DECODE_SECONDS = Histogram("hcp_decode_seconds", "Time to decode one fetched batch", ["kind"])
DECODE_STRICT = Counter(
    "hcp_decode_strict_batches_total",
    "JSON batches decoded message by message (they held bad input or a Kafka event)",
    ["topic"],
)
BATCH_SECONDS = Histogram("hcp_batch_seconds", "Time to fold one batch into window state", ["kind"])
WINDOWS_CLOSED = Counter("hcp_windows_closed_total", "Device windows closed", ["device_type"])
RECOMMENDATIONS = Counter("hcp_recommendations_total", "Recommendations per action", ["action"])
STALE_PRICE_DECISIONS = Counter(
    "hcp_stale_price_decisions_total",
    "Decisions made under the stale-price fail-safe (a price feed older than allowed)",
    ["device_type"],
)
COMMANDS = Counter(
    "hcp_fleet_commands_total", "Commands sent to the fleet (changed actions)", ["action"]
)
FLAGGED_DEVICES = Gauge(
    "hcp_noncompliant_devices",
    "Devices out of step with their command for the flagging number of windows, per site",
    ["site"],
)
SITE_POWER_KW = Gauge(
    "hcp_site_power_kw", "A site's commanded and observed power in its latest window",
    ["site", "kind"],
)
CONSUMER_LAG = Gauge(
    "hcp_consumer_lag", "Messages behind the partition end (librdkafka)", ["topic", "partition"]
)
WATERMARK = Gauge(
    "hcp_watermark_seconds", "Event-time watermark of the fleet stage (Unix time, seconds)"
)

# One gauge per price unit (a gauge mixing USD, BTC and difficulty cannot be charted or
# aggregated): names carry the unit, per Prometheus naming conventions. Power caps are
# converted to watts, the base unit every power metric of the job uses.
BTC_USD = Gauge("hcp_btc_usd", "Latest bitcoin price, USD per BTC")
DIFFICULTY = Gauge("hcp_difficulty", "Latest bitcoin network difficulty")
BLOCK_REWARD_BTC = Gauge(
    "hcp_block_reward_btc", "Latest block reward (subsidy plus average fees), BTC per block"
)
ELECTRICITY_USD_PER_MWH = Gauge(
    "hcp_electricity_usd_per_mwh", "Latest electricity price per site, USD per MWh", ["site"]
)
GPU_SPOT_USD_PER_HOUR = Gauge(
    "hcp_gpu_spot_usd_per_hour", "Latest GPU spot rate per model, USD per GPU-hour", ["model"]
)
POWER_CAP_WATTS = Gauge("hcp_power_cap_watts", "Latest power cap per site, watts", ["site"])
PRICE_UPDATED = Gauge(
    "hcp_price_updated_timestamp_seconds",
    "Wall-clock time the job last read a price message of this kind (Unix time)",
    ["kind"],
)

# The latest closed window of each site (set by the fleet stage, after power caps).
SITE_POWER = Gauge(
    "hcp_site_power_watts", "Measured mean power of a site's devices in its latest window", ["site"]
)
SITE_PLANNED_POWER = Gauge(
    "hcp_site_planned_power_watts",
    "Expected power of the devices recommended to run in a site's latest window",
    ["site"],
)
SITE_POWER_CAP = Gauge(
    "hcp_site_power_cap_watts",
    "Power cap applied to a site's latest window (no sample: no cap)",
    ["site"],
)
SITE_NET = Gauge(
    "hcp_site_net_usd_per_hour", "Net (revenue - cost) of a site's latest window, USD/h", ["site"]
)
SITE_DEVICES = Gauge(
    "hcp_site_devices",
    "Devices per recommended action in a site's latest window",
    ["site", "device_type", "action"],
)
SNAPSHOT_TIME = Gauge(
    "hcp_snapshot_timestamp_seconds",
    "Wall-clock time the fleet stage last snapshotted its state for recovery (Unix time)",
)
STAGE_SECONDS = Histogram(
    "hcp_stage_seconds",
    "Time spent in one call of a stateful step (shards, site_groups, fleet, compliance)",
    ["stage"],
)
WINDOW_CLOSE_DELAY = Gauge(
    "hcp_window_close_delay_seconds",
    "Wall-clock time of the latest window's decision minus its window end",
)

# Workload router gauges (issue 11 sets them; declared here so dashboards and alerts have
# one definition to point at).
GPUS_CORDONED = Gauge(
    "hcp_gpus_cordoned", "GPUs the router cordoned: they never started assigned work", ["site"]
)
WORKLOADS_QUEUED = Gauge("hcp_workloads_queued", "Workloads waiting in the router queue")
WORKLOAD_OLDEST_QUEUED_AGE = Gauge(
    "hcp_workload_oldest_queued_age_seconds",
    "Event-time age of the oldest queued workload, seconds (0 when none is queued)",
)
# The original plan's orchestrator names: the router allocates GPUs inside the job, so the
# job exports them (the API exports orchestrator_active_workloads from Redis).
ALLOCATIONS = Counter(
    "orchestrator_allocations", "Workloads placed on GPUs by the router", ["kind"]
)
ALLOCATION_SECONDS = Histogram(
    "orchestrator_allocation_duration_seconds",
    "Time of one routing round that had queued work (scoring, placement, preemption)",
)

_PRICE_GAUGES = {
    "btc_usd": (BTC_USD, 1.0),
    "difficulty": (DIFFICULTY, 1.0),
    "block_reward_btc": (BLOCK_REWARD_BTC, 1.0),
    "electricity_usd_mwh": (ELECTRICITY_USD_PER_MWH, 1.0),
    "gpu_spot_usd_hr": (GPU_SPOT_USD_PER_HOUR, 1.0),
    "power_cap_mw": (POWER_CAP_WATTS, 1e6),
}
_RUNNING = ("mine", "serve", "offer")

class MetricsEndpoint:
    """The /metrics address of one run; ``port`` 0 turns the endpoint off.

    An object per run rather than module state, handed to the source, so two flows in one
    process never share it. ``hcp run`` starts it at once (:meth:`serve_now`: a port that
    cannot be bound stops the job, since running without it would hide the job from its
    monitoring); under ``bytewax.run`` the first worker starts it (:meth:`serve_once`) and a
    busy port is only a warning, as every process of a host reads the same setting.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        if not 0 <= port <= 65535:
            msg = (
                f"--metrics-port must be a TCP port in 0..65535 (0 turns /metrics off), "
                f"got {port}"
            )
            raise ConfigError(msg)
        self.port = port
        self.host = host
        self._lock = threading.Lock()
        self._started = False
        # Known label values start at zero, so "none yet" is a sample a dashboard can show
        # rather than an empty panel (label values that depend on data appear when first set).
        for kind in ("gpu", "asic", "prices"):
            LATE_EVENTS.labels(kind)
        for device_type in ("gpu", "asic"):
            WINDOWS_CLOSED.labels(device_type)

    def serve_now(self) -> None:
        """Start the endpoint here; raise :class:`~hcp.errors.HcpError` if the port is busy."""
        if not self.port:
            return
        with self._lock:
            if self._started:
                return
            self._start()

    def serve_once(self) -> None:
        """Start the endpoint the first time a worker of this process needs it."""
        with self._lock:
            if self._started or not self.port:
                return
            try:
                self._start()
            except HcpError as exc:
                log.warning("metrics endpoint not started: %s", exc)
            finally:
                self._started = True  # one attempt per process, not per worker

    def _start(self) -> None:
        serve_metrics(self.port, self.host, "--metrics-port (HCP_METRICS_PORT)")
        self._started = True


def count_bad_input(topic: str, reasons: list[str]) -> None:
    for reason, n in _Tally(reasons).items():
        BAD_INPUT.labels(topic, reason).inc(n)


def set_prices(rows: pl.DataFrame) -> None:
    """Set the price gauges from stored price rows (``kind``, ``scope``, ``value``)."""
    now = time.time()
    for kind, scope, value in rows.select("kind", "scope", "value").iter_rows():
        gauge, scale = _PRICE_GAUGES.get(kind, (None, 1.0))
        if gauge is None or value is None:
            continue
        (gauge.labels(scope) if scope else gauge).set(value * scale)
        PRICE_UPDATED.labels(kind).set(now)


def observe_window(df: pl.DataFrame) -> None:
    """Set the per-site gauges from one closed window's final recommendations."""
    if df.height == 0:
        return
    running = pl.col("action").is_in(_RUNNING)
    sites = df.group_by("site").agg(
        pl.col("power_w").fill_null(0.0).sum().alias("power"),
        pl.when(running).then(pl.col("expected_power_w")).otherwise(0.0).sum().alias("planned"),
        pl.col("power_cap_mw").max().alias("cap"),
        pl.col("net_usd_hr").sum().alias("net"),
    )
    for site, power, planned, cap, net in sites.iter_rows():
        SITE_POWER.labels(site).set(power)
        SITE_PLANNED_POWER.labels(site).set(planned)
        SITE_NET.labels(site).set(net)
        if cap is None or math.isnan(cap):
            # No cap means unlimited: no sample, so "power > cap" never matches.
            with contextlib.suppress(KeyError):
                SITE_POWER_CAP.remove(site)
        else:
            SITE_POWER_CAP.labels(site).set(cap * 1e6)
    counts = df.group_by("site", "device_type", "action").len()
    seen = {(s, t, a): n for s, t, a, n in counts.iter_rows()}
    for site in sites["site"]:
        for device_type, actions in (("asic", ("mine", "curtail")),
                                     ("gpu", ("serve", "offer", "power_down"))):
            for action in actions:
                SITE_DEVICES.labels(site, device_type, action).set(
                    seen.get((site, device_type, action), 0)
                )
    WINDOW_CLOSE_DELAY.set(time.time() - int(df["window_end"].max()) / 1000.0)
