"""Prometheus metrics of the sinks (Redis, PostgreSQL, the dead-letter topic).

Defined once here because prometheus_client refuses to register the same name twice in
one process: each sink module imports these and sets its own ``sink`` label.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "DLQ_WRITTEN",
    "SINK_DOWN",
    "SINK_ERRORS",
    "SINK_OUTAGES",
    "SINK_ROWS",
    "SINK_WRITE_SECONDS",
    "outage_ended",
    "outage_started",
    "sink_started",
]

SINK_WRITE_SECONDS = Histogram(
    "hcp_sink_write_seconds",
    "Wall time of one successful sink batch write, retries included",
    ["sink"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
SINK_ERRORS = Counter(
    "hcp_sink_errors_total",
    "Failed sink write attempts (each retry that fails counts once)",
    ["sink"],
)
SINK_OUTAGES = Counter(
    "hcp_sink_outages_total",
    "Times a sink became unavailable (a run of failed attempts counts once)",
    ["sink"],
)
SINK_ROWS = Counter(
    "hcp_sink_rows_total",
    "Rows written by a sink, per destination table or key family",
    ["sink", "table"],
)
DLQ_WRITTEN = Counter("hcp_dlq_written_total", "Dead letters written to the DLQ topic")
SINK_DOWN = Gauge(
    "hcp_sink_down",
    "Sink partitions currently in an outage (holding a batch and retrying); 0 when healthy",
    ["sink"],
)


def sink_started(sink: str) -> None:
    """Expose a sink's series at zero from its start, so "no outage yet" is a sample of 0."""
    for metric in (SINK_DOWN, SINK_ERRORS, SINK_OUTAGES):
        metric.labels(sink=sink)


def outage_started(sink: str) -> None:
    SINK_OUTAGES.labels(sink=sink).inc()
    SINK_DOWN.labels(sink=sink).inc()


def outage_ended(sink: str) -> None:
    SINK_DOWN.labels(sink=sink).dec()
