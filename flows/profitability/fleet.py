"""Stage two of the profitability flow: whole windows across shards, and power caps.

A site's devices are spread over every shard, so the power cap (SPEC section 3) can only be
applied once all shards have closed a window. This stage holds each window until every
shard's watermark has passed its end, then ranks each capped site's devices and emits the
window's final recommendations, in window order, sorted by device id.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import polars as pl
from bytewax.operators import StatefulBatchLogic

from flows import metrics
from flows.profitability import kernels as k
from flows.profitability.shard import NEG_INF, POS_INF
from flows.source import shutdown_requested
from hcp.schemas import REC_SCHEMA, WINDOW_SCHEMA
from hcp.tags import Out

__all__ = ["FleetLogic", "FleetState", "apply_power_caps"]

_RUNNING = ["mine", "serve", "offer"]


@dataclass
class FleetState:
    shard_wm: dict[str, int] = field(default_factory=dict)
    pending: dict[int, list[pl.DataFrame]] = field(default_factory=dict)
    # The last ("fleet_wm", wm) sent: the workload router waits for it (flows/router/clock.py).
    emitted_wm: int = NEG_INF


def apply_power_caps(df: pl.DataFrame) -> pl.DataFrame:
    """Stop the devices a site's power cap has no room for (reason ``power_cap``)."""
    if df.height == 0 or df["power_cap_mw"].null_count() == df.height:
        return df
    kwh = pl.col("expected_power_w") / 1000.0
    ranked = df.with_columns(
        (pl.when(kwh > 0).then(pl.col("expected_net_usd_hr") / kwh).otherwise(float("inf"))).alias(
            "_per_kwh"
        ),
        pl.col("site").rank("dense").cast(pl.Int64).alias("_site"),
    ).sort(["_site", "_per_kwh", "device_id"], descending=[False, True, False])
    keep = k.power_cap_keep(
        ranked["_site"].to_numpy(),
        (ranked["power_cap_mw"].cast(pl.Float64).fill_null(float("nan")) * 1e6).to_numpy(),
        ranked["action"].is_in(_RUNNING).to_numpy(),
        ranked["expected_power_w"].fill_null(0.0).to_numpy(),
        ranked["expected_net_usd_hr"].fill_null(float("nan")).to_numpy(),
    )
    stop = ranked["action"].is_in(_RUNNING) & ~pl.Series(keep)
    ranked = ranked.with_columns(
        pl.when(stop)
        .then(
            pl.when(pl.col("device_type") == "asic")
            .then(pl.lit("curtail"))
            .otherwise(pl.lit("power_down"))
        )
        .otherwise(pl.col("action"))
        .alias("action"),
        pl.when(stop).then(pl.lit("power_cap")).otherwise(pl.col("reason")).alias("reason"),
    )
    return ranked.drop("_per_kwh", "_site").sort("device_id")


class FleetLogic(StatefulBatchLogic[tuple, tuple, bytes]):
    """Collects shards' ``win``/``wm`` items; emits ``("recs", df)`` and ``("windows", df)``."""

    def __init__(self, shards: tuple[str, ...], flush_on_eof: bool, state: FleetState) -> None:
        self.shards = shards
        self.flush_on_eof = flush_on_eof
        self.s = state

    def on_batch(self, values: list[tuple]) -> tuple[list[tuple], bool]:
        for item in values:
            if item[0] == "win":
                _, _, start, df = item
                self.s.pending.setdefault(start, []).append(df)
            else:
                _, shard, wm = item
                self.s.shard_wm[shard] = max(wm, self.s.shard_wm.get(shard, NEG_INF))
        wm = min((self.s.shard_wm.get(s, NEG_INF) for s in self.shards), default=NEG_INF)
        if NEG_INF < wm < POS_INF:
            metrics.WATERMARK.set(wm / 1000.0)
        return self._emit_ready(wm), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple], bool]:
        # Not on SIGTERM: the shards did not close their windows either (see ShardLogic).
        if not self.flush_on_eof or shutdown_requested():
            return [], StatefulBatchLogic.RETAIN
        return self._emit_ready(POS_INF), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        metrics.SNAPSHOT_TIME.set_to_current_time()
        return pickle.dumps(self.s, protocol=pickle.HIGHEST_PROTOCOL)

    def _emit_ready(self, wm: int) -> list[tuple]:
        out: list[tuple] = []
        for start in sorted(self.s.pending):
            frames = self.s.pending[start]
            end = int(frames[0]["window_end"][0])
            if end > wm:
                break
            del self.s.pending[start]
            df = apply_power_caps(pl.concat(frames, how="diagonal_relaxed").sort("device_id"))
            for action, n in df["action"].value_counts().iter_rows():
                metrics.RECOMMENDATIONS.labels(action).inc(n)
            metrics.observe_window(df)
            out.append((Out.WINDOWS, _conform(df, WINDOW_SCHEMA)))
            out.append((Out.RECS, _conform(df, REC_SCHEMA)))
        # After the recs it covers, on the same stream, so the router never sees a
        # watermark before the recommendations of the windows it closes.
        if wm > getattr(self.s, "emitted_wm", NEG_INF):  # absent in older snapshots
            self.s.emitted_wm = wm
            out.append((Out.FLEET_WM, wm))
        return out


def _conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return df.select(
        pl.col(name).cast(dtype) if name in df.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in schema.items()
    )
