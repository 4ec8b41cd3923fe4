"""The kinds of item on the job's output stream, each ``(tag, payload)``.

One merged stream feeds every sink (Redis, PostgreSQL, the DLQ and assignment producers);
each sink takes the tags it knows and ignores the rest. Naming the tags here, once, lets a
reader find every producer and consumer of a kind by searching for its member.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Out"]


class Out(StrEnum):
    """Tag of an output item; the payload is a polars DataFrame unless said otherwise."""

    DLQ = "dlq"  # dead letters: original bytes, source position and reason
    PRICES = "prices"  # price rows (PRICE_ROW_SCHEMA)
    GPU_RAW = "gpu_raw"  # decoded GPU telemetry, for raw storage
    ASIC_RAW = "asic_raw"  # decoded ASIC telemetry, for raw storage
    WINDOWS = "windows"  # closed device windows (WINDOW_SCHEMA)
    RECS = "recs"  # recommendations of whole windows (REC_SCHEMA)
    OBSERVED = "observed"  # a whole window's device_id, window_start, power_w (compliance)
    FLEET_WM = "fleet_wm"  # payload int: every window ending at or before it has been emitted
    WORKLOAD_EVENTS = "workload_events"  # workload state transitions
    ASSIGNMENTS = "assignments"  # payload list of assignment messages for the fleet
    COMMAND_RESULTS = "command_results"  # hcp agent's results, stored for compliance reports
    COMMANDS = "commands"  # fleet commands: devices whose action changed (flows/compliance.py)
    COMPLIANCE = "compliance"  # per device and window: command vs observed, realised value
    SITE_COMPLIANCE = "site_compliance"  # per site and window: commanded vs observed kW
    GPU_HEALTH = "gpu_health"  # the router's GPU cordon changes (GPU_HEALTH_SCHEMA)
    RESERVATIONS = "reservations"  # the router's reservation changes (RESERVATION_SCHEMA)
    USAGE = "usage"  # metered usage per workload and minute (flows/metering.py)
    USAGE_TOTALS = "usage_totals"  # running usage totals per workload and customer month
