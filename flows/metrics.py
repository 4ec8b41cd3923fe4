"""Prometheus metrics of the streaming job (SPEC section 4), all named ``hcp_*``.

Each metric is updated by the module that knows the number; this module only declares
them and serves ``/metrics``.
"""

from __future__ import annotations

import logging
from collections import Counter as _Tally

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = ["configure", "count_bad_input", "serve_once"]

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
BATCH_SECONDS = Histogram("hcp_batch_seconds", "Time to fold one batch into window state", ["kind"])
WINDOWS_CLOSED = Counter("hcp_windows_closed_total", "Device windows closed", ["device_type"])
RECOMMENDATIONS = Counter("hcp_recommendations_total", "Recommendations per action", ["action"])
CONSUMER_LAG = Gauge(
    "hcp_consumer_lag", "Messages behind the partition end (librdkafka)", ["topic", "partition"]
)
PRICE = Gauge("hcp_price", "Latest price per key (kind or kind:scope)", ["key"])
WATERMARK = Gauge("hcp_watermark_ms", "Event-time watermark of the fleet stage")
# The original plan's orchestrator names: the router allocates GPUs inside the job, so the
# job exports them (the API exports orchestrator_active_workloads from Redis).
ALLOCATIONS = Counter(
    "orchestrator_allocations", "Workloads placed on GPUs by the router", ["kind"]
)
ALLOCATION_SECONDS = Histogram(
    "orchestrator_allocation_duration_seconds",
    "Time of one routing round that had queued work (scoring, placement, preemption)",
)

_STATE: dict[str, object] = {"port": 0, "host": "127.0.0.1", "started": False}


def configure(port: int, host: str = "127.0.0.1") -> None:
    """Set the /metrics address; port 0 turns the endpoint off."""
    _STATE["port"] = port
    _STATE["host"] = host


def serve_once() -> None:
    """Start the /metrics endpoint the first time a worker in this process needs it."""
    if _STATE["started"] or not _STATE["port"]:
        return
    _STATE["started"] = True
    try:
        start_http_server(int(_STATE["port"]), addr=str(_STATE["host"]))
        log.info("metrics on http://%s:%d/metrics", _STATE["host"], _STATE["port"])
    except OSError as exc:
        log.warning("metrics endpoint not started on port %s: %s", _STATE["port"], exc)


def count_bad_input(topic: str, reasons: list[str]) -> None:
    for reason, n in _Tally(reasons).items():
        BAD_INPUT.labels(topic, reason).inc(n)
