"""Metering: what each workload used and owes, per minute, from the router's transitions.

::

    router ("workload_events") ──┐
    Kafka gpu (rows with a workload_id), prices, workloads ──► metering (one stateful step)
                                 ──► ("usage", minute rows) ──► PostgreSQL usage_minutes
                                 ──► ("usage_totals", totals) ──► Redis usage hashes

A run interval opens at ``-> running`` and ends at the transition out of ``running``
(completed, failed, preempted or cancelled). Per workload and minute (``minute`` is the
minute's start, epoch ms):

* ``gpu_seconds``: seconds of the interval in the minute times the workload's GPU count;
* ``energy_wh``: the mean ``power_w`` its GPUs reported (telemetry carrying its id) in
  that minute times its GPU-seconds; ``samples`` says how many reports that mean has;
* ``energy_cost_usd``: that energy at the site's ``electricity_usd_mwh`` in force;
* ``charge_usd``: GPU-hours at the GPU model's ``gpu_spot_usd_hr`` in force, capped at the
  workload's ``max_price_usd_hr``.

"In force" is event time: the newest price at or before the later of the minute's start
and the interval's start. Rows are recomputed (columnar: numpy to cut intervals into
minutes, polars as-of joins for the prices) whenever their inputs change, and stored with
an upsert on (workload_id, minute): a replay or a late report rewrites a row, never adds
one, so nothing is billed twice. Once the router's clock is ``retention_ms`` past a minute
it is final and leaves the state (later reports for it are counted, not used).

Open intervals are metered up to the router's newest event time (its clock), so a long
run's usage grows as the router works; the figures after the input is complete depend only
on the inputs, never on batch sizes or arrival order (power sums are integer milliwatts).
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic
from prometheus_client import Counter

from flows.source import SourceBatch
from hcp.tags import Out

__all__ = [
    "MINUTE_MS",
    "USAGE_SCHEMA",
    "USAGE_TOTALS_SCHEMA",
    "MeterLogic",
    "MeterState",
    "add_metering",
]

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
END_STATES = frozenset({"completed", "failed", "preempted", "cancelled"})
TERMINAL = frozenset({"completed", "failed", "cancelled"})

USAGE_SCHEMA: dict[str, pl.DataType] = {
    "workload_id": pl.String(),
    "minute": pl.Int64(),
    "customer": pl.String(),
    "site": pl.String(),
    "gpu_model": pl.String(),
    "gpus": pl.Int64(),
    "gpu_seconds": pl.Float64(),
    "energy_wh": pl.Float64(),
    "energy_cost_usd": pl.Float64(),
    "spot_usd_hr": pl.Float64(),  # null: no spot price seen yet for the model
    "rate_usd_hr": pl.Float64(),  # spot capped at max_price_usd_hr
    "charge_usd": pl.Float64(),
    "samples": pl.Int64(),
}
# Running totals per workload (scope "workload", key the id) and per customer and month
# (scope "customer", key "NAME|YYYY-MM"): what Redis shows now.
USAGE_TOTALS_SCHEMA: dict[str, pl.DataType] = {
    "scope": pl.String(),
    "key": pl.String(),
    "customer": pl.String(),
    "gpu_seconds": pl.Float64(),
    "energy_wh": pl.Float64(),
    "energy_cost_usd": pl.Float64(),
    "charge_usd": pl.Float64(),
}
_SUMS = ("gpu_seconds", "energy_wh", "energy_cost_usd", "charge_usd")

USAGE_GPU_SECONDS = Counter(
    "hcp_usage_gpu_seconds", "Metered GPU-seconds in running (row changes)", ["customer"])
USAGE_CHARGE = Counter("hcp_usage_charge_usd", "Metered charges in USD", ["customer"])
USAGE_ENERGY = Counter("hcp_usage_energy_wh", "Metered GPU energy in Wh", ["customer"])
USAGE_ROWS = Counter("hcp_usage_rows", "Usage minute rows written (new or changed)")
USAGE_LATE = Counter(
    "hcp_usage_late_samples", "Telemetry or prices for minutes already final (not used)")


def _month(ms: int) -> str:
    return str(np.datetime64(int(ms), "ms").astype("datetime64[M]"))


@dataclass
class MeterState:
    """Everything the metering step keeps between batches (pickled in snapshots)."""

    info: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> customer, cap
    open: dict[str, tuple[int, tuple[str, ...], str]] = field(default_factory=dict)
    closed: dict[str, list[tuple[int, int, tuple[str, ...], str]]] = field(default_factory=dict)
    power: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # mW sum, count
    gpu_model: dict[str, str] = field(default_factory=dict)
    prices: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    ended: dict[str, int] = field(default_factory=dict)  # terminal workloads: when
    minutes: dict[tuple[str, int], tuple] = field(default_factory=dict)  # rows emitted
    final: dict[str, list[float]] = field(default_factory=dict)  # pruned minutes' sums
    final_customer: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    now: int = 0
    dirty: set[str] = field(default_factory=set)


class Meter:
    """The metering rules over a :class:`MeterState` (see the module docstring)."""

    def __init__(self, state: MeterState | None = None, retention_ms: int = 600_000) -> None:
        self.state = state or MeterState()
        self.retention_ms = int(retention_ms)

    @property
    def horizon(self) -> int:
        """Minutes starting before this are final."""
        return (self.state.now - self.retention_ms) // MINUTE_MS * MINUTE_MS

    # -- inputs ---------------------------------------------------------------------------
    def on_requests(self, df: pl.DataFrame) -> None:
        s = self.state
        if "op" in df.columns:
            df = df.filter(pl.col("op").is_null() | (pl.col("op") != "cancel"))
        if not df.height:
            return
        cap = (df["max_price_usd_hr"] if "max_price_usd_hr" in df.columns
               else pl.Series([None] * df.height, dtype=pl.Float64))
        for wid, cust, c in zip(df["workload_id"].to_list(), df["customer"].to_list(),
                                cap.to_list(), strict=True):
            if wid not in s.info:
                s.info[wid] = (cust or "", float("nan") if c is None else float(c))
                if wid in s.open or wid in s.closed:
                    s.dirty.add(wid)

    def on_gpu(self, df: pl.DataFrame) -> None:
        """Telemetry of GPUs that report a workload: power sums per workload and minute."""
        s = self.state
        df = df.filter(pl.col("workload_id").is_not_null())
        if not df.height:
            return
        learned = False
        for gid, model in df.select("gpu_id", "model").unique("gpu_id", keep="last").rows():
            if s.gpu_model.get(gid) != model:
                s.gpu_model[gid] = model
                learned = True
        if learned:  # rare (a GPU's first report): reprice every open run, not a search
            s.dirty.update(s.open)
        horizon = self.horizon if s.now else None
        agg = (
            df.select(
                "workload_id",
                (pl.col("ts") // MINUTE_MS * MINUTE_MS).alias("minute"),
                (pl.col("power_w") * 1000).round().cast(pl.Int64).alias("mw"),
            )
            .group_by("workload_id", "minute")
            .agg(pl.col("mw").sum(), pl.len().alias("n"))
        )
        if horizon is not None:
            late = agg.filter(pl.col("minute") < horizon)
            if late.height:
                USAGE_LATE.inc(int(late["n"].sum()))
                agg = agg.filter(pl.col("minute") >= horizon)
        for wid, minute, mw, n in agg.rows():
            cell = s.power.setdefault((wid, minute), [0, 0])
            cell[0] += mw
            cell[1] += n
            s.dirty.add(wid)

    def on_prices(self, df: pl.DataFrame) -> None:
        s = self.state
        df = df.filter(pl.col("kind").is_in(["gpu_spot_usd_hr", "electricity_usd_mwh"]))
        if not df.height:
            return
        scope = pl.when(pl.col("kind") == "gpu_spot_usd_hr").then(pl.col("model")).otherwise(
            pl.col("site"))
        rows = df.select((pl.col("kind") + ":" + scope).alias("key"), "ts", "value").rows()
        for key, ts, value in rows:
            if s.now and ts < self.horizon:
                USAGE_LATE.inc()
            hist = s.prices.setdefault(key, [])
            hist.append((int(ts), float(value)))
        for hist in s.prices.values():
            hist.sort()
        # A price may change any live minute after it: recompute every live workload.
        s.dirty.update(s.open)
        s.dirty.update(s.closed)

    def on_events(self, df: pl.DataFrame) -> None:
        """Router transitions: open and close run intervals, in the router's order."""
        s = self.state
        for wid, ts, src, to, gpus, site in df.select(
            "workload_id", "ts", "from_state", "to_state", "gpus", "site"
        ).rows():
            s.now = max(s.now, int(ts))
            if to == "running":
                if any(sp[0] == int(ts) for sp in s.closed.get(wid, ())):
                    continue  # a replayed transition: that run is already metered
                ids = tuple(g for g in (gpus or "").split(",") if g)
                s.open[wid] = (int(ts), ids, site or "")
                s.dirty.add(wid)
            elif src == "running" and to in END_STATES:
                start = s.open.pop(wid, None)
                if start is not None:
                    s.closed.setdefault(wid, []).append((start[0], int(ts), start[1], start[2]))
                    s.dirty.add(wid)
            if to in TERMINAL:
                s.ended[wid] = int(ts)
        s.dirty.update(s.open)  # the clock moved: open intervals grew

    # -- outputs --------------------------------------------------------------------------
    def _price_frame(self) -> pl.DataFrame:
        rows = [(k, ts, v) for k, hist in self.state.prices.items() for ts, v in hist]
        return pl.DataFrame(rows, schema={"key": pl.String(), "ts": pl.Int64(),
                                          "value": pl.Float64()}, orient="row").sort("ts")

    def _intervals(self, wids: list[str]) -> pl.DataFrame:
        s = self.state
        cols: dict[str, list] = {k: [] for k in ("workload_id", "start", "end", "gpus", "site",
                                                 "gpu_model", "customer", "cap")}
        for wid in wids:
            spans = list(s.closed.get(wid, ()))
            if wid in s.open:
                start, ids, site = s.open[wid]
                spans.append((start, max(start, s.now), ids, site))
            cust, cap = s.info.get(wid, ("", float("nan")))
            for start, end, ids, site in spans:
                if end <= start:
                    continue
                cols["workload_id"].append(wid)
                cols["start"].append(start)
                cols["end"].append(end)
                cols["gpus"].append(len(ids))
                cols["site"].append(site)
                cols["gpu_model"].append(s.gpu_model.get(ids[0], "") if ids else "")
                cols["customer"].append(cust)
                cols["cap"].append(cap)
        return pl.DataFrame(cols, schema={"workload_id": pl.String(), "start": pl.Int64(),
                                          "end": pl.Int64(), "gpus": pl.Int64(),
                                          "site": pl.String(), "gpu_model": pl.String(),
                                          "customer": pl.String(), "cap": pl.Float64()})

    def compute(self, wids: list[str]) -> pl.DataFrame:
        """The usage rows (``USAGE_SCHEMA``) of every live minute of ``wids``."""
        iv = self._intervals(wids)
        if not iv.height:
            return pl.DataFrame(schema=USAGE_SCHEMA)
        start, end = iv["start"].to_numpy(), iv["end"].to_numpy()
        m0 = np.maximum(start // MINUTE_MS * MINUTE_MS, self.horizon)
        m1 = (end - 1) // MINUTE_MS * MINUTE_MS
        count = np.maximum((m1 - m0) // MINUTE_MS + 1, 0)
        row = np.repeat(np.arange(iv.height), count)
        first = np.repeat(np.cumsum(count) - count, count)
        minute = m0[row] + (np.arange(row.size) - first) * MINUTE_MS
        overlap = np.minimum(end[row], minute + MINUTE_MS) - np.maximum(start[row], minute)
        cut = iv[row].with_columns(
            pl.Series("minute", minute, pl.Int64),
            pl.Series("at", np.maximum(start[row], minute), pl.Int64),
            (pl.Series(overlap / 1000.0) * pl.col("gpus")).alias("gpu_seconds"),
        )
        prices = self._price_frame()
        cut = cut.with_columns(
            ("gpu_spot_usd_hr:" + pl.col("gpu_model")).alias("spot_key"),
            ("electricity_usd_mwh:" + pl.col("site")).alias("elec_key"),
        ).sort("at")
        cut = cut.join_asof(prices.rename({"key": "spot_key", "value": "spot_usd_hr"}),
                            left_on="at", right_on="ts", by="spot_key", strategy="backward",
                            check_sortedness=False)
        cut = cut.join_asof(prices.rename({"key": "elec_key", "value": "elec"}),
                            left_on="at", right_on="ts", by="elec_key", strategy="backward",
                            check_sortedness=False)
        s = self.state
        keys = cut.select("workload_id", "minute").unique()
        power = pl.DataFrame(
            [(w, m, *s.power.get((w, m), (0, 0))) for w, m in keys.rows()],
            schema={"workload_id": pl.String(), "minute": pl.Int64(), "mw": pl.Int64(),
                    "samples": pl.Int64()}, orient="row",
        )
        cut = cut.join(power, on=["workload_id", "minute"], how="left")
        mean_w = pl.when(pl.col("samples") > 0).then(
            pl.col("mw") / pl.col("samples") / 1000.0).otherwise(0.0)
        rate = pl.when(pl.col("cap").is_nan()).then(pl.col("spot_usd_hr")).otherwise(
            pl.min_horizontal("spot_usd_hr", "cap"))
        cut = cut.with_columns(
            (mean_w * pl.col("gpu_seconds") / 3600.0).alias("energy_wh"),
            rate.alias("rate_usd_hr"),
        ).with_columns(
            (pl.col("energy_wh") / 1e6 * pl.col("elec").fill_null(0.0)).alias("energy_cost_usd"),
            (pl.col("gpu_seconds") / 3600.0 * pl.col("rate_usd_hr").fill_null(0.0))
            .alias("charge_usd"),
        )
        out = (
            cut.sort("workload_id", "minute", "start")
            .group_by("workload_id", "minute", maintain_order=True)
            .agg(
                pl.col("customer").first(), pl.col("site").first(),
                pl.col("gpu_model").first(), pl.col("gpus").max(),
                pl.col("gpu_seconds").sum(), pl.col("energy_wh").sum(),
                pl.col("energy_cost_usd").sum(), pl.col("spot_usd_hr").first(),
                pl.col("rate_usd_hr").first(), pl.col("charge_usd").sum(),
                pl.col("samples").first(),
            )
        )
        return out.select(USAGE_SCHEMA.keys()).cast(USAGE_SCHEMA)

    def flush(self) -> list[tuple[str, pl.DataFrame]]:
        """Rows changed since the last flush, and the totals they move; then prune."""
        s = self.state
        out: list[tuple[str, pl.DataFrame]] = []
        if s.dirty:
            wids = sorted(s.dirty)
            s.dirty = set()
            rows = self.compute(wids)
            changed = []
            touched: set[str] = set()
            for r in rows.rows():
                key = (r[0], r[1])
                old = s.minutes.get(key)
                if old != r:
                    changed.append(r)
                    s.minutes[key] = r
                    touched.add(r[0])
                    self._count(r, old)
            if changed:
                USAGE_ROWS.inc(len(changed))
                out.append((Out.USAGE, pl.DataFrame(changed, schema=USAGE_SCHEMA, orient="row")))
                out.append((Out.USAGE_TOTALS, self.totals(touched)))
        self._prune()
        return out

    @staticmethod
    def _count(new: tuple, old: tuple | None) -> None:
        cust = new[2] or "unknown"
        base = old if old is not None and old[2] == new[2] else None
        d_gs = new[6] - (base[6] if base else 0.0)
        d_e = new[7] - (base[7] if base else 0.0)
        d_c = new[11] - (base[11] if base else 0.0)
        if d_gs > 0:
            USAGE_GPU_SECONDS.labels(cust).inc(d_gs)
        if d_e > 0:
            USAGE_ENERGY.labels(cust).inc(d_e)
        if d_c > 0:
            USAGE_CHARGE.labels(cust).inc(d_c)

    def totals(self, wids: set[str]) -> pl.DataFrame:
        """Totals (``USAGE_TOTALS_SCHEMA``) of ``wids`` and of their customers' months."""
        s = self.state
        per_w: dict[str, list[float]] = {w: list(s.final.get(w, [0.0] * 4)) for w in wids}
        months: set[tuple[str, str]] = set()
        for (wid, minute), r in s.minutes.items():
            if wid in per_w:
                acc = per_w[wid]
                for i, v in enumerate((r[6], r[7], r[8], r[11])):
                    acc[i] += v
                months.add((r[2], _month(minute)))
        per_c = {m: list(s.final_customer.get(m, [0.0] * 4)) for m in months}
        for (_, minute), r in s.minutes.items():
            m = (r[2], _month(minute))
            if m in per_c:
                acc = per_c[m]
                for i, v in enumerate((r[6], r[7], r[8], r[11])):
                    acc[i] += v
        rows = [("workload", w, s.info.get(w, ("", 0.0))[0], *v) for w, v in sorted(per_w.items())]
        rows += [("customer", f"{c}|{m}", c, *v) for (c, m), v in sorted(per_c.items())]
        return pl.DataFrame(rows, schema=USAGE_TOTALS_SCHEMA, orient="row")

    def _prune(self) -> None:
        s = self.state
        if not s.now:
            return
        horizon = self.horizon
        for key in [k for k in s.minutes if k[1] < horizon]:
            r = s.minutes.pop(key)
            vals = (r[6], r[7], r[8], r[11])
            for acc in (s.final.setdefault(key[0], [0.0] * 4),
                        s.final_customer.setdefault((r[2], _month(key[1])), [0.0] * 4)):
                for i, v in enumerate(vals):
                    acc[i] += v
        for key in [k for k in s.power if k[1] < horizon]:
            del s.power[key]
        for wid in list(s.closed):
            spans = [sp for sp in s.closed[wid] if sp[1] > horizon]
            if spans:
                s.closed[wid] = spans
            else:
                del s.closed[wid]
        for wid, ts in list(s.ended.items()):
            if ts < horizon and wid not in s.open and wid not in s.closed:
                del s.ended[wid]
                s.info.pop(wid, None)
                s.final.pop(wid, None)
        for hist in s.prices.values():
            keep = next((i for i in range(len(hist) - 1, -1, -1) if hist[i][0] <= horizon), 0)
            del hist[:keep]


class MeterLogic(StatefulBatchLogic[tuple, tuple, bytes]):
    """The Bytewax face of :class:`Meter`: items ``("src", kind, rows)`` and
    ``("events", df)``; emits ``("usage", df)`` and ``("usage_totals", df)``."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def on_batch(self, values: list[tuple]) -> tuple[list[tuple], bool]:
        m = self.meter
        for item in values:
            if item[0] == "events":
                m.on_events(item[1])
            elif item[1] == "gpu":
                m.on_gpu(item[2])
            elif item[1] == "prices":
                m.on_prices(item[2])
            elif item[1] == "workloads":
                m.on_requests(item[2])
        return m.flush(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple], bool]:
        return self.meter.flush(), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.meter.state, protocol=pickle.HIGHEST_PROTOCOL)


_KEY = "meter"
_GPU_COLS = ("ts", "gpu_id", "model", "power_w", "workload_id")


def _source_items(batch: SourceBatch) -> list[tuple[str, tuple]]:
    rows = batch.rows
    if not rows.height:
        return []
    if batch.kind == "gpu":
        if "workload_id" not in rows.columns:
            return []
        rows = rows.select(_GPU_COLS).filter(pl.col("workload_id").is_not_null())
        return [(_KEY, ("src", "gpu", rows))] if rows.height else []
    if batch.kind in ("prices", "workloads"):
        return [(_KEY, ("src", batch.kind, rows))]
    return []


def _event_items(item: Any) -> list[tuple[str, tuple]]:
    if isinstance(item, tuple) and item and item[0] == Out.WORKLOAD_EVENTS:
        return [(_KEY, ("events", item[1]))]
    return []


def add_metering(
    batches: Stream[SourceBatch], routed: Stream[Any], retention_ms: int = 600_000
) -> Stream[tuple]:
    """Add the metering step; returns its ``("usage", df)``/``("usage_totals", df)`` items."""
    items = op.merge(
        "meter_inputs",
        op.flat_map("meter_source", batches, _source_items),
        op.flat_map("meter_events", routed, _event_items),
    )

    def build(resume: bytes | None) -> MeterLogic:
        state = pickle.loads(resume) if resume is not None else None
        return MeterLogic(Meter(state, retention_ms))

    return op.map("untag_meter", op.stateful_batch("metering", items, build), lambda kv: kv[1])
