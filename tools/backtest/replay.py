"""Replaying a recording through the job's own decision stages, in process, per policy.

The same code as ``hcp run`` decides: each recorded message is decoded by
``flows.decode`` and folded by :class:`~flows.profitability.shard.ShardLogic` (windows,
kernels, stale-price rule), then :class:`~flows.profitability.fleet.FleetLogic` (power
caps). Only Kafka, Bytewax's scheduler and the sinks are left out: nothing is produced,
no Redis key or table is touched, and event time runs as fast as the CPU allows.

Every policy sees the same decoded batches in the same order (decoded once, shared), so
a recording and a policy always give the same recommendations. One shard holds every
partition; the flow's output does not depend on the shard count (docs/architecture.md).

Order: the whole price topic first (it is small), then the telemetry files in their
recorded row groups, alternating GPU and ASIC, each split by partition in offset order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from flows.decode import decode_values
from flows.profitability.fleet import FleetLogic, FleetState
from flows.profitability.shard import ShardConfig, ShardLogic
from flows.source import KIND_FIELDS, SourceBatch
from hcp.errors import ConfigError
from hcp.schemas import DLQ_SCHEMA
from hcp.tags import Out
from tools.backtest.policy import Policy
from tools.record.recording import read_manifest

__all__ = ["PolicyRun", "Replay", "run_policies"]

log = logging.getLogger(__name__)

_SUFFIX_KIND = {
    "telemetry.gpu": "gpu",
    "telemetry.asic": "asic",
    "market.prices": "prices",
}
_REC_COLUMNS = (
    "device_id",
    "device_type",
    "site",
    "window_start",
    "window_end",
    "action",
    "reason",
    "net_usd_hr",
    "expected_net_usd_hr",
    "expected_power_w",
    "power_cap_mw",
)
_EMPTY_DLQ = pl.DataFrame(schema=DLQ_SCHEMA)


@dataclass
class PolicyRun:
    """One policy's stages and what they emitted."""

    policy: Policy
    shard: ShardLogic
    fleet: FleetLogic
    recs: list[pl.DataFrame] = field(default_factory=list)
    windows: list[pl.DataFrame] = field(default_factory=list)

    def feed(self, batch: SourceBatch) -> None:
        self._fleet_items(self.shard.on_batch([("0", batch)])[0])

    def finish(self) -> None:
        self._fleet_items(self.shard.on_eof()[0])
        self._collect(self.fleet.on_eof()[0])

    def _fleet_items(self, items: list[tuple]) -> None:
        if items:
            self._collect(self.fleet.on_batch(items)[0])

    def _collect(self, items: list[tuple]) -> None:
        for item in items:
            if item[0] == Out.RECS:
                self.recs.append(item[1].select(_REC_COLUMNS))
            elif item[0] == Out.WINDOWS:
                self.windows.append(item[1].select("device_id", "window_start", "power_w"))

    def frame(self) -> pl.DataFrame:
        """Every device-window: the recommendation joined with the observed mean power."""
        if not self.recs:
            return pl.DataFrame()
        recs = pl.concat(self.recs)
        windows = pl.concat(self.windows)
        return recs.join(windows, on=["device_id", "window_start"], how="left").sort(
            "device_id", "window_start"
        )


@dataclass
class Replay:
    """What was replayed: messages per kind, dead letters, event-time span."""

    messages: dict[str, int] = field(default_factory=dict)
    bad: int = 0
    first_ts: int | None = None
    last_ts: int | None = None


def _topics(recording: Path) -> dict[str, tuple[str, Path, list[int]]]:
    """kind -> (topic, file, partitions with messages) for the topics the decisions read."""
    prefix, recorded = read_manifest(recording)
    found: dict[str, tuple[str, Path, list[int]]] = {}
    for r in recorded:
        suffix = r.topic[len(prefix) :] if prefix and r.topic.startswith(prefix) else r.topic
        for end, kind in _SUFFIX_KIND.items():
            if suffix == end or suffix.endswith("." + end):
                # A partition with nothing recorded would hold every window open.
                parts = sorted(p for p, n in r.per_partition.items() if n > 0)
                found[kind] = (r.topic, recording / r.file, parts)
    if "prices" not in found or not ({"gpu", "asic"} & set(found)):
        msg = f"{recording} holds no market prices or no telemetry topic to backtest"
        raise ConfigError(msg)
    return found


def _batches(
    kind: str, topic: str, path: Path, replay: Replay, row_group_rows: int = 200_000
) -> Iterator[SourceBatch]:
    """Decoded batches of one recorded topic, per partition in offset order."""
    fields = KIND_FIELDS[kind]
    for chunk in pq.ParquetFile(path).iter_batches(
        batch_size=row_group_rows, columns=["partition", "offset", "value"]
    ):
        frame = pl.from_arrow(chunk)
        values = frame["value"].to_list()
        decoded = decode_values(values, fields)
        replay.messages[kind] = replay.messages.get(kind, 0) + len(values)
        replay.bad += len(decoded.bad_index)
        parts = frame["partition"]
        offsets = frame["offset"]
        if decoded.row_index is not None:
            parts = parts.gather(decoded.row_index)
            offsets = offsets.gather(decoded.row_index)
        elif decoded.bad_index:
            keep = pl.Series(range(len(values))).is_in(decoded.bad_index).not_()
            parts, offsets = parts.filter(keep), offsets.filter(keep)
        rows = decoded.rows.with_columns(parts.alias("_p"), offsets.alias("_o"))
        if rows.height:
            lo, hi = rows["ts"].min(), rows["ts"].max()
            replay.first_ts = lo if replay.first_ts is None else min(replay.first_ts, lo)
            replay.last_ts = hi if replay.last_ts is None else max(replay.last_ts, hi)
        for (p,), part in rows.group_by(["_p"], maintain_order=True):
            part = part.sort("_o")
            yield SourceBatch(
                kind=kind,
                topic=topic,
                partition=int(p),
                rows=part.drop("_p", "_o"),
                dlq=_EMPTY_DLQ,
                next_offset=int(part["_o"][-1]) + 1,
                max_ts=int(part["ts"].max()),
            )


def _interleave(*streams: Iterator[SourceBatch]) -> Iterator[SourceBatch]:
    live = list(streams)
    while live:
        for s in list(live):
            try:
                yield next(s)
            except StopIteration:
                live.remove(s)


def _with_caps(batch: SourceBatch, policy: Policy, sites: list[str], first: bool) -> SourceBatch:
    """The price batch as this policy sees it: recorded caps replaced by the policy's."""
    caps = policy.power_cap_mw
    if caps is None:
        return batch
    per_site = {s: caps for s in sites} if not isinstance(caps, dict) else caps
    rows = batch.rows.filter(
        ~((pl.col("kind") == "power_cap_mw") & pl.col("site").is_in(list(per_site)))
    )
    if first:
        ts = int(batch.rows["ts"].min())
        extra = pl.DataFrame(
            [
                {"v": 1, "ts": ts, "kind": "power_cap_mw", "value": float(mw), "site": site}
                for site, mw in sorted(per_site.items())
                if mw is not None
            ],
            schema_overrides={"v": rows.schema["v"], "ts": rows.schema["ts"]},
        )
        if extra.height:
            rows = pl.concat([extra, rows], how="diagonal_relaxed").select(rows.columns)
    return SourceBatch(
        batch.kind, batch.topic, batch.partition, rows, batch.dlq, batch.next_offset,
        max_ts=batch.max_ts,
    )


def run_policies(recording: Path, policies: list[Policy]) -> tuple[list[PolicyRun], Replay]:
    """Replay ``recording`` once, feeding every policy's stages the same batches."""
    topics = _topics(recording)
    replay = Replay()
    inputs = tuple(
        f"{topic}#{p}" for topic, _, parts in topics.values() for p in parts
    )
    runs = []
    for policy in policies:
        s = policy.settings

        def make_config(shard: str, s: object = s) -> ShardConfig:
            return ShardConfig(
                window_ms=s.window_ms,
                lateness_ms=s.lateness_ms,
                pool_fee=s.pool_fee,
                hysteresis=s.hysteresis,
                dwell_ms=s.dwell_ms,
                flush_on_eof=True,
                inputs=inputs,
                max_price_age_ms=s.max_price_age_ms,
            )

        runs.append(
            PolicyRun(policy, ShardLogic(make_config, None), FleetLogic(("0",), True, FleetState()))
        )
    topic, path, _ = topics["prices"]
    price_batches = list(_batches("prices", topic, path, replay))
    sites = sorted(
        {
            site
            for b in price_batches
            for site in b.rows.filter(pl.col("kind") == "electricity_usd_mwh")["site"].to_list()
            if site
        }
    )
    first_partition = min((b.partition for b in price_batches), default=0)
    seen_first = False
    for batch in price_batches:
        first = not seen_first and batch.partition == first_partition
        seen_first = seen_first or first
        for run in runs:
            run.feed(_with_caps(batch, run.policy, sites, first))
    telemetry = [
        _batches(kind, *topics[kind][:2], replay) for kind in ("gpu", "asic") if kind in topics
    ]
    for batch in _interleave(*telemetry):
        for run in runs:
            run.feed(batch)
    for run in runs:
        run.finish()
    return runs, replay
