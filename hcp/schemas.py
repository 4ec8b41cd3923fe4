"""The message contract of SPEC section 1 as data, shared by generators, flows and tests.

Each input topic has an ordered field list: name, polars type, whether it is required, and
its allowed range or values. The decoder validates whole batches against these specs; the
generator tests validate every message against the same specs.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

__all__ = [
    "ASIC_FIELDS",
    "ASIC_STATES",
    "COMMAND_RESULT_FIELDS",
    "GPU_FIELDS",
    "GPU_STATES",
    "PRICE_FIELDS",
    "PRICE_KINDS",
    "RESULT_STATUSES",
    "SCHEMA_VERSION",
    "SITE_SCOPED_KINDS",
    "WORKLOAD_FIELDS",
    "WORKLOAD_KINDS",
    "WORKLOAD_OPS",
    "Field",
    "polars_schema",
]

SCHEMA_VERSION = 1
GPU_STATES = ("busy", "idle", "down")
ASIC_STATES = ("mining", "curtailed", "fault")
PRICE_KINDS = (
    "btc_usd",
    "difficulty",
    "block_reward_btc",
    "electricity_usd_mwh",
    "gpu_spot_usd_hr",
    "power_cap_mw",
)
SITE_SCOPED_KINDS = ("electricity_usd_mwh", "power_cap_mw")
WORKLOAD_KINDS = ("inference", "training", "batch")
# `op` of a workload message (SPEC section 3): absent means `submit`.
WORKLOAD_OPS = ("submit", "cancel")
# `hcp agent`'s verdict on one fleet command (docs/fleet.md, contract section 7).
RESULT_STATUSES = ("applied", "unchanged", "skipped_dry_run", "failed")
# Latest event time we accept: year 2100. Guards against seconds-vs-ms and garbage.
MAX_TS_MS = 4_102_444_800_000


@dataclass(frozen=True)
class Field:
    """One message field: its type, whether it must be present, and its allowed values."""

    name: str
    dtype: type[pl.DataType] | pl.DataType
    required: bool = True
    lo: float | None = None
    hi: float | None = None
    values: tuple[str, ...] | None = None
    nullable: bool = False
    # Not required on a message whose `op` is `cancel` (it names only the workload).
    submit_only: bool = False


_COMMON = (
    Field("v", pl.Int64, lo=SCHEMA_VERSION, hi=SCHEMA_VERSION),
    Field("ts", pl.Int64, lo=0, hi=MAX_TS_MS),
)

GPU_FIELDS: tuple[Field, ...] = (
    *_COMMON,
    Field("gpu_id", pl.String),
    Field("site", pl.String),
    Field("model", pl.String),
    Field("state", pl.String, values=GPU_STATES),
    Field("util_pct", pl.Float64, lo=0, hi=100),
    Field("temp_c", pl.Float64, lo=-50, hi=150),
    Field("power_w", pl.Float64, lo=0, hi=5_000),
    Field("mem_used_gb", pl.Float64, lo=0, hi=10_000),
    Field("mem_total_gb", pl.Float64, lo=0, hi=10_000),
    Field("workload_id", pl.String, required=False, nullable=True),
)

ASIC_FIELDS: tuple[Field, ...] = (
    *_COMMON,
    Field("asic_id", pl.String),
    Field("site", pl.String),
    Field("model", pl.String),
    Field("state", pl.String, values=ASIC_STATES),
    Field("hashrate_ths", pl.Float64, lo=0, hi=10_000),
    Field("power_w", pl.Float64, lo=0, hi=50_000),
    Field("temp_c", pl.Float64, lo=-50, hi=150),
    Field("shares_accepted", pl.Int64, lo=0),
    Field("shares_rejected", pl.Int64, lo=0),
    Field("hw_errors", pl.Int64, lo=0),
)

PRICE_FIELDS: tuple[Field, ...] = (
    *_COMMON,
    Field("kind", pl.String, values=PRICE_KINDS),
    Field("value", pl.Float64, lo=0),
    # Required for some kinds only; the decoder checks the kind/scope pairing.
    Field("site", pl.String, required=False, nullable=True),
    Field("model", pl.String, required=False, nullable=True),
)

WORKLOAD_FIELDS: tuple[Field, ...] = (
    *_COMMON,
    Field("workload_id", pl.String),
    Field("op", pl.String, required=False, nullable=True, values=WORKLOAD_OPS),
    Field("customer", pl.String, submit_only=True),
    Field("kind", pl.String, required=False, nullable=True, values=WORKLOAD_KINDS),
    Field("priority", pl.Int64, lo=1, hi=10, submit_only=True),
    Field("gpus", pl.Int64, lo=1, hi=1_024, submit_only=True),
    Field("mem_gb", pl.Float64, lo=0, hi=10_000, submit_only=True),
    Field("est_duration_s", pl.Int64, lo=1, submit_only=True),
    Field("max_price_usd_hr", pl.Float64, required=False, nullable=True, lo=0),
    # The customer's quota in force when the API produced the request (docs/customers.md):
    # at most this many GPUs at once, this many GPU-hours a month; absent: no limit.
    Field("quota_max_gpus", pl.Int64, required=False, nullable=True, lo=0),
    Field("quota_gpu_hours", pl.Float64, required=False, nullable=True, lo=0),
)

COMMAND_RESULT_FIELDS: tuple[Field, ...] = (
    *_COMMON,
    Field("device_id", pl.String),
    Field("device_type", pl.String, values=("asic", "gpu")),
    Field("site", pl.String),
    Field("action", pl.String),
    Field("status", pl.String, values=RESULT_STATUSES),
    Field("reason", pl.String, required=False, nullable=True),
    Field("command_ts", pl.Int64, lo=0, hi=MAX_TS_MS),
    Field("command_position", pl.String),
    Field("dry_run", pl.Boolean),
)


def polars_schema(fields: tuple[Field, ...]) -> dict[str, type[pl.DataType] | pl.DataType]:
    """The polars schema to decode a topic's JSON with."""
    return {f.name: f.dtype for f in fields}


# ---------------------------------------------------------------------------------------
# Outputs of the profitability flow (SPEC sections 2-4). The flow emits polars DataFrames
# with exactly these columns; the Redis and PostgreSQL sinks read them by name.
# Times are integer milliseconds since the epoch (UTC), like the input `ts`.

WINDOW_SCHEMA: dict[str, pl.DataType] = {
    "device_id": pl.String(),
    "device_type": pl.String(),  # "gpu" | "asic"
    "site": pl.String(),
    "model": pl.String(),
    "window_start": pl.Int64(),
    "window_end": pl.Int64(),
    "samples": pl.Int64(),
    "util_pct": pl.Float64(),  # null for ASICs
    "power_w": pl.Float64(),
    "temp_c": pl.Float64(),
    "hashrate_ths": pl.Float64(),  # null for GPUs
    "shares_accepted": pl.Int64(),  # null for GPUs
    "shares_rejected": pl.Int64(),  # null for GPUs
    "hw_errors": pl.Int64(),  # null for GPUs
    "busy_fraction": pl.Float64(),  # null for ASICs
    "j_per_th": pl.Float64(),  # null for GPUs or zero hashrate
    "reject_rate": pl.Float64(),  # null for GPUs or no shares
}

REC_SCHEMA: dict[str, pl.DataType] = {
    "device_id": pl.String(),
    "device_type": pl.String(),
    "site": pl.String(),
    "model": pl.String(),
    "window_start": pl.Int64(),
    "window_end": pl.Int64(),
    "action": pl.String(),  # mine | curtail | serve | offer | power_down
    "reason": pl.String(),  # profitable | unprofitable | power_cap | hysteresis_hold | no_price ...
    "revenue_usd_hr": pl.Float64(),
    "cost_usd_hr": pl.Float64(),
    "net_usd_hr": pl.Float64(),
    "score": pl.Float64(),
    "expected_revenue_usd_hr": pl.Float64(),
    "expected_cost_usd_hr": pl.Float64(),
    "expected_net_usd_hr": pl.Float64(),
    "expected_power_w": pl.Float64(),
    # Prices used, as of the window end; null when that price was never seen.
    "btc_usd": pl.Float64(),
    "difficulty": pl.Float64(),
    "block_reward_btc": pl.Float64(),
    "electricity_usd_mwh": pl.Float64(),
    "gpu_spot_usd_hr": pl.Float64(),
    "power_cap_mw": pl.Float64(),
}

# Raw market rows as stored: `scope` is the site (site-scoped kinds), the GPU model
# (`gpu_spot_usd_hr`) or "" (global kinds); `key` is `kind` or `kind:scope`.
PRICE_ROW_SCHEMA: dict[str, pl.DataType] = {
    "ts": pl.Int64(),
    "kind": pl.String(),
    "scope": pl.String(),
    "key": pl.String(),
    "value": pl.Float64(),
}

# Dead letters: what went wrong, and where the original bytes came from.
DLQ_SCHEMA: dict[str, pl.DataType] = {
    "topic": pl.String(),
    "partition": pl.Int64(),
    "offset": pl.Int64(),
    "reason": pl.String(),
    "key": pl.Binary(),
    "value": pl.Binary(),
    # Row index inside a telemetry frame (SPEC 1b); null for a whole message.
    "row": pl.Int64(),
}

# Workload state transitions (SPEC section 3).
WORKLOAD_EVENT_SCHEMA: dict[str, pl.DataType] = {
    "workload_id": pl.String(),
    "ts": pl.Int64(),
    "from_state": pl.String(),  # null for the first (`submitted`)
    "to_state": pl.String(),
    "priority": pl.Int64(),
    "gpus": pl.String(),  # comma-separated GPU ids, "" when none
    "site": pl.String(),
    "reason": pl.String(),
}

# GPU cordon changes from the router (docs/workloads.md): a GPU that never starts the work
# it is given is cordoned (`cordoned` true, reason `unresponsive`) until it reports
# running work (`reported_work`) or its cool-off passes (`cool_off`).
GPU_HEALTH_SCHEMA: dict[str, pl.DataType] = {
    "gpu_id": pl.String(),
    "site": pl.String(),
    "ts": pl.Int64(),
    "cordoned": pl.Boolean(),
    "reason": pl.String(),
    "since": pl.Int64(),  # when the cordon began
}

# Reservations of the router (docs/workloads.md): a queued workload at the head of the
# queue that does not fit now holds the one-site GPUs expected to free up soonest.
# A row with a null `expected_start_ts` ends the workload's reservation.
RESERVATION_SCHEMA: dict[str, pl.DataType] = {
    "workload_id": pl.String(),
    "ts": pl.Int64(),  # the router's event time of the change
    "expected_start_ts": pl.Int64(),
    "reserved_site": pl.String(),
    "reserved_gpus": pl.String(),  # comma-separated GPU ids
}
