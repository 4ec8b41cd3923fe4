"""Stages two and three of the profitability flow: power caps per site, then one order.

A site's devices are spread over every shard (Kafka partition = crc32(device key) % n), so
a site's power cap (SPEC section 3) can only be applied once every shard has closed the
window. Sites are hashed into a fixed number of *site groups* (:func:`site_group`): every
shard sends each group the rows of that group's sites and its watermark, and a group holds
a window until all shards have passed its end, ranks its capped sites' devices and emits
the window's final rows (:class:`SiteGroupLogic`). Groups run in parallel on whichever
workers Bytewax gives their keys; their ``windows``/``recs`` frames go to PostgreSQL from
those workers.

The Redis recommendation stream needs every window whole, in window order, sorted by
device id (its ids are ``{window_end}-{seq}``, seq the row's index in that order) and one
writer; so does the workload router. :class:`FleetLogic` is that one global step: it only
concatenates the groups' already-capped frames of a window and sorts them by device id.
"""

from __future__ import annotations

import pickle
import zlib
from dataclasses import dataclass, field

import polars as pl
from bytewax.operators import StatefulBatchLogic

from flows import metrics
from flows.profitability import kernels as k
from flows.progress import NEG_INF, POS_INF
from hcp.schemas import REC_SCHEMA, WINDOW_SCHEMA
from hcp.shutdown import Shutdown
from hcp.tags import Out

__all__ = [
    "FleetLogic",
    "FleetState",
    "SiteGroupLogic",
    "apply_power_caps",
    "site_group",
    "split_by_site_group",
]

_RUNNING = ["mine", "serve", "offer"]


@dataclass
class FleetState:
    """What a gate (site group or the fleet order step) keeps; pickled for recovery."""

    # Closed-window boundary reported by each upstream key (shard or site group).
    shard_wm: dict[str, int] = field(default_factory=dict)
    pending: dict[int, list[pl.DataFrame]] = field(default_factory=dict)
    # The last watermark sent downstream (the router waits for the fleet's: clock.py).
    emitted_wm: int = NEG_INF
    # The site group this state belongs to ("" for the fleet step); learnt from items.
    key: str = ""


def site_group(site: str | None, groups: int) -> int:
    """The site group of ``site``: stable across processes and runs (crc32, not hash())."""
    return zlib.crc32((site or "").encode()) % groups


def split_by_site_group(df: pl.DataFrame, groups: int) -> list[tuple[int, pl.DataFrame]]:
    """``df``'s rows per site group, groups ascending, row order kept."""
    if groups == 1:
        return [(0, df)]
    sites = df["site"].fill_null("")
    table = {name: site_group(name, groups) for name in sites.unique().to_list()}
    if len(set(table.values())) == 1:
        return [(next(iter(table.values())), df)]
    ids = sites.replace_strict(table, return_dtype=pl.Int64)
    tagged = df.with_columns(ids.alias("_group"))
    return [
        (int(key[0]), part.drop("_group"))  # type: ignore[arg-type]
        for key, part in sorted(
            tagged.partition_by("_group", as_dict=True, maintain_order=True).items()
        )
    ]


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


class _WindowGate(StatefulBatchLogic[tuple, tuple, bytes]):
    """Holds ``("win", up, start, df)`` items until every upstream ``("wm", up, W)`` passed.

    Subclasses say what a ready window becomes (:meth:`_release`) and what the watermark
    they pass on looks like (:meth:`_watermark_item`).
    """

    def __init__(
        self,
        upstream: tuple[str, ...],
        flush_on_eof: bool,
        state: FleetState,
        shutdown: Shutdown | None = None,
    ) -> None:
        self.upstream = upstream
        self.flush_on_eof = flush_on_eof
        self.s = state
        self.shutdown = shutdown or Shutdown()

    def on_batch(self, values: list[tuple]) -> tuple[list[tuple], bool]:
        for item in values:
            if item[0] == "win":
                _, _, start, df = item
                self.s.pending.setdefault(start, []).append(df)
            else:
                _, up, wm = item
                self.s.shard_wm[up] = max(wm, self.s.shard_wm.get(up, NEG_INF))
        wm = min((self.s.shard_wm.get(u, NEG_INF) for u in self.upstream), default=NEG_INF)
        return self._emit_ready(wm), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple], bool]:
        # Not on SIGTERM: the shards did not close their windows either (see ShardLogic).
        if not self.flush_on_eof or self.shutdown.requested:
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
            out.extend(self._release(start, frames))
        # After the windows it covers, on the same stream, so downstream never sees a
        # watermark before the rows of the windows it closes.
        if wm > self.s.emitted_wm:
            self.s.emitted_wm = wm
            out.append(self._watermark_item(wm))
        return out

    def _release(self, start: int, frames: list[pl.DataFrame]) -> list[tuple]:
        raise NotImplementedError

    def _watermark_item(self, wm: int) -> tuple:
        raise NotImplementedError


class SiteGroupLogic(_WindowGate):
    """One site group: collects shards' ``win``/``wm`` items and applies power caps.

    Emits, per window, ``("windows", df)`` and ``("recs", df)`` (the group's rows, for the
    sinks on this worker), ``("win", group, start, recs)`` for the fleet step, and
    ``("wm", group, W)`` when the group's closed-window boundary moves. Bytewax 0.21
    builds stateful logic without its key, so items come as ``(group, item)``.
    """

    def on_batch(self, values: list[tuple]) -> tuple[list[tuple], bool]:
        if values:
            self.s.key = values[0][0]
        return super().on_batch([item for _, item in values])

    def _release(self, start: int, frames: list[pl.DataFrame]) -> list[tuple]:
        df = apply_power_caps(pl.concat(frames, how="diagonal_relaxed").sort("device_id"))
        for action, n in df["action"].value_counts().iter_rows():
            metrics.RECOMMENDATIONS.labels(action).inc(n)
        metrics.observe_window(df)  # per-site gauges: each site is in exactly one group
        recs = _conform(df, REC_SCHEMA)
        return [
            (Out.WINDOWS, _conform(df, WINDOW_SCHEMA)),
            (Out.RECS, recs),
            # The fleet step also passes on the observed power, for the compliance step.
            ("win", self.s.key, start, recs.with_columns(df["power_w"])),
        ]

    def _watermark_item(self, wm: int) -> tuple:
        return ("wm", self.s.key, wm)


class FleetLogic(_WindowGate):
    """The one global step: whole windows, in window order, sorted by device id.

    Collects site groups' ``win``/``wm`` items (rows already capped and conformed to
    REC_SCHEMA, plus the observed ``power_w``); emits ``("observed", df)`` and
    ``("recs", df)`` per window and ``("fleet_wm", wm)``, for the Redis writer, the workload
    router and the compliance step.
    """

    def on_batch(self, values: list[tuple]) -> tuple[list[tuple], bool]:
        out = super().on_batch(values)
        wm = self.s.emitted_wm
        if NEG_INF < wm < POS_INF:
            metrics.WATERMARK.set(wm / 1000.0)
        return out

    def _release(self, start: int, frames: list[pl.DataFrame]) -> list[tuple]:
        df = frames[0] if len(frames) == 1 else pl.concat(frames).sort("device_id")
        # Observed power first, on the same stream: the compliance step judges a window's
        # recommendations against it when they arrive.
        observed = df.select("device_id", "window_start", "power_w")
        return [(Out.OBSERVED, observed), (Out.RECS, df.drop("power_w"))]

    def _watermark_item(self, wm: int) -> tuple:
        return (Out.FLEET_WM, wm)


def _conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return df.select(
        pl.col(name).cast(dtype) if name in df.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in schema.items()
    )
