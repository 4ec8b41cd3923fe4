"""The control loop's stage: commands from recommendations, compliance and realised value.

Reads the fleet stage's whole windows (``("windows", df)`` then ``("recs", df)`` of the
same window) and, per window, in window order:

::

    recs of window W ──► command in force for W+1 (a device whose action changed gets a
    │                    ("commands", df) row; the CommandSink puts it on hcp.fleet.commands)
    windows of W ───────► observed power vs the command in force during W
                           ──► ("compliance", per device), ("site_compliance", per site)

A command is judged only once it has been in force for ``grace_ms`` (the fleet needs the
time to receive it and ramp). A device is *on* when its mean power is above
``OFF_FRACTION`` of its expected power; it complies when on matches the command (mine,
serve, offer = on; curtail, power_down = off). ``misses`` counts consecutive judged
windows out of step; at ``flag_windows`` the device is flagged (Redis, metrics, PostgreSQL).

Realised value, from observed figures (docs/control-loop.md):

- savings of a window under an off command = (cost avoided - revenue forgone) x hours
  = ((expected_cost - cost) - (expected_revenue - revenue)) x window hours, where the
  expected figures are the device running at its last mining rate at this window's prices;
  a device that ignores the command avoids nothing and forgoes nothing: savings 0.
- planned net = the expected net of the command (expected net when on, 0 when off);
  actual net = the observed net. Both USD/h per device, USD per window per site.

State is one small polars frame keyed by device, so the stage stays columnar at any fleet
size; it is pickled whole for recovery snapshots.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import polars as pl
from bytewax.operators import StatefulBatchLogic

from flows import metrics
from hcp.tags import Out

__all__ = ["OFF_FRACTION", "ComplianceConfig", "ComplianceLogic", "ComplianceState"]

ON_ACTIONS = ("mine", "serve", "offer")
# Below this share of its expected power a device counts as off: a curtailed S21 draws
# ~20 W of 3500 W, a powered-down H100 ~10 W of 700 W, an idle one 60-90 W (on).
OFF_FRACTION = 0.05

_STATE_SCHEMA = {
    "device_id": pl.String,
    "command": pl.String,
    "command_since": pl.Int64,
    "misses": pl.Int64,
}


@dataclass(frozen=True)
class ComplianceConfig:
    window_ms: int
    grace_ms: int = 60_000
    flag_windows: int = 3


@dataclass
class ComplianceState:
    devices: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=_STATE_SCHEMA))
    pending: dict[int, pl.DataFrame] = field(default_factory=dict)


class ComplianceLogic(StatefulBatchLogic[tuple, tuple, bytes]):
    """Pairs each window's ``windows`` and ``recs`` frames and judges them.

    Emits ``("compliance", df)`` and ``("site_compliance", df)`` per window, and
    ``("commands", df)`` when some device's command changed; other tags are ignored (the
    fleet's own stream reaches the sinks directly).
    """

    def __init__(self, config: ComplianceConfig, state: ComplianceState) -> None:
        self.cfg = config
        self.s = state

    def on_batch(self, values: list[tuple]) -> tuple[list[tuple], bool]:
        out: list[tuple] = []
        for tag, payload in values:
            if tag == Out.WINDOWS and payload.height:
                self.s.pending[int(payload["window_start"][0])] = payload
            elif tag == Out.RECS and payload.height:
                start = int(payload["window_start"][0])
                windows = self.s.pending.pop(start, None)
                out.extend(self.judge(windows, payload))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.s, protocol=pickle.HIGHEST_PROTOCOL)

    def judge(self, windows: pl.DataFrame | None, recs: pl.DataFrame) -> list[tuple]:
        """One window: its compliance rows, then the commands its recommendations give."""
        observed = recs.select(
            "device_id",
            "device_type",
            "site",
            "window_start",
            "window_end",
            "action",
            "reason",
            "revenue_usd_hr",
            "cost_usd_hr",
            "net_usd_hr",
            "expected_revenue_usd_hr",
            "expected_cost_usd_hr",
            "expected_net_usd_hr",
            "expected_power_w",
        )
        if windows is not None:
            observed = observed.join(
                windows.select("device_id", "power_w"), on="device_id", how="left"
            )
        else:
            observed = observed.with_columns(pl.lit(None, pl.Float64).alias("power_w"))
        df = observed.join(self.s.devices, on="device_id", how="left")
        hours = self.cfg.window_ms / 3_600_000.0
        on_cmd = pl.col("command").is_in(ON_ACTIONS)
        off_cmd = pl.col("command").is_not_null() & ~on_cmd
        observed_on = pl.col("power_w") > OFF_FRACTION * pl.col("expected_power_w")
        judged = pl.col("command").is_not_null() & (
            pl.col("window_start") >= pl.col("command_since") + self.cfg.grace_ms
        )
        df = df.with_columns(
            observed_on.alias("observed_on"),
            judged.alias("judged"),
        ).with_columns(
            pl.when(pl.col("judged"))
            .then(pl.col("observed_on") == on_cmd)
            .otherwise(None)
            .alias("compliant"),
        )
        was_flagged = pl.col("misses").fill_null(0) >= self.cfg.flag_windows
        df = df.with_columns(was_flagged.alias("was_flagged")).with_columns(
            pl.when(pl.col("compliant").is_null())
            .then(pl.col("misses").fill_null(0))
            .when(pl.col("compliant"))
            .then(0)
            .otherwise(pl.col("misses").fill_null(0) + 1)
            .cast(pl.Int64)
            .alias("misses"),
            pl.when(on_cmd)
            .then(pl.col("expected_power_w"))
            .when(off_cmd)
            .then(0.0)
            .otherwise(None)
            .alias("commanded_power_w"),
            pl.when(on_cmd)
            .then(pl.col("expected_net_usd_hr"))
            .when(off_cmd)
            .then(0.0)
            .otherwise(None)
            .alias("planned_net_usd_hr"),
            pl.when(off_cmd)
            .then(
                (
                    (pl.col("expected_cost_usd_hr") - pl.col("cost_usd_hr"))
                    - (pl.col("expected_revenue_usd_hr") - pl.col("revenue_usd_hr"))
                )
                * hours
            )
            .otherwise(0.0)
            .alias("savings_usd"),
        ).with_columns((pl.col("misses") >= self.cfg.flag_windows).alias("flagged"))
        # Back in step this window: the Redis flagged set drops exactly these.
        df = df.with_columns((pl.col("was_flagged") & ~pl.col("flagged")).alias("cleared"))
        per_device = df.select(
            "device_id",
            "device_type",
            "site",
            "window_start",
            "window_end",
            "command",
            "observed_on",
            "compliant",
            "misses",
            "flagged",
            "cleared",
            "commanded_power_w",
            pl.col("power_w").alias("observed_power_w"),
            "planned_net_usd_hr",
            pl.col("net_usd_hr").alias("actual_net_usd_hr"),
            "savings_usd",
        ).sort("device_id")
        per_site = (
            per_device.group_by("site")
            .agg(
                pl.col("window_start").first(),
                pl.col("window_end").first(),
                pl.len().cast(pl.Int64).alias("devices"),
                (pl.col("commanded_power_w").sum() / 1000.0).alias("commanded_kw"),
                (pl.col("observed_power_w").sum() / 1000.0).alias("observed_kw"),
                (pl.col("compliant") == False).sum().cast(pl.Int64).alias("noncompliant"),  # noqa: E712
                pl.col("flagged").sum().cast(pl.Int64).alias("flagged"),
                pl.col("savings_usd").sum(),
                (pl.col("planned_net_usd_hr").sum() * hours).alias("planned_net_usd"),
                (pl.col("actual_net_usd_hr").sum() * hours).alias("actual_net_usd"),
            )
            .sort("site")
        )
        for site, flagged, cmd_kw, obs_kw in per_site.select(
            "site", "flagged", "commanded_kw", "observed_kw"
        ).iter_rows():
            metrics.FLAGGED_DEVICES.labels(site).set(flagged)
            metrics.SITE_POWER_KW.labels(site, "commanded").set(cmd_kw)
            metrics.SITE_POWER_KW.labels(site, "observed").set(obs_kw)
        commands = self._advance(df)
        out: list[tuple] = [(Out.COMPLIANCE, per_device), (Out.SITE_COMPLIANCE, per_site)]
        if commands.height:
            for action, n in commands["action"].value_counts().iter_rows():
                metrics.COMMANDS.labels(action).inc(n)
            out.append((Out.COMMANDS, commands))
        return out

    def _advance(self, df: pl.DataFrame) -> pl.DataFrame:
        """Fold this window's actions into the state; the devices whose command changed."""
        changed = df.filter(pl.col("command").is_null() | (pl.col("command") != pl.col("action")))
        commands = changed.select(
            "device_id",
            "device_type",
            "site",
            pl.col("window_end").alias("ts"),
            "window_start",
            "action",
            "reason",
        ).sort("device_id")
        update = df.select(
            "device_id",
            pl.col("action").alias("command"),
            pl.when(pl.col("command").is_null() | (pl.col("command") != pl.col("action")))
            .then(pl.col("window_end"))
            .otherwise(pl.col("command_since"))
            .cast(pl.Int64)
            .alias("command_since"),
            "misses",
        )
        self.s.devices = (
            pl.concat([self.s.devices, update], how="vertical_relaxed")
            .unique(subset="device_id", keep="last", maintain_order=True)
            .sort("device_id")
        )
        return commands
