"""The benchmark baseline: the profitability job written the idiomatic per-event Bytewax way.

What a user would write without HCP, with Bytewax's own building blocks::

    KafkaSource(gpu, asic, prices; tail=False)        one item per Kafka message
      ─► map: json.loads + validation per message ──► bad: dropped, counted (count_final)
      ─► telemetry: key_on device ─► fold_window (EventClock on ts, TumblingWindower
           aligned to the epoch): per-device window sums; late events counted
      ─► prices: one item per price event
      ─► fold_final "gather": every closed window and every price until end of input
      ─► flat_map decide: as-of price join, economics, ASIC hysteresis/dwell, GPU
           decisions and site power caps, in plain Python per device (tools/bench/baseline/logic.py)
      ─► recommendations Parquet (+ a stats JSON)

It is a **replay-mode** baseline: the decision step runs once at end of input (the ASIC
state and the power caps need every device's window, in window order), so it suits
``hcp bench``, which reads finished topics, not a live deployment. For the same reason
the EventClock's system clock is frozen (``now_getter`` is constant): with the wall clock a
device whose next sample arrives more than the lateness later in *wall* time (normal when
replaying 300,000 devices slower than real time) would have it dropped as late; frozen,
the watermark is the device's latest event time minus the lateness, as in HCP. And
``to_system_utc`` returns ``None`` so windows close on a device's next items or at EOF:
with the default identity mapping every replayed window close is "due" in wall time, and
Bytewax wakes every device with an open window on every activation (measured: 27k ev/s
with 3,000 devices but 800 ev/s with 310,000).

Run: ``python -m tools.bench.baseline.flow --bootstrap HOST:9092 --topic-prefix P --out OUT``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.operators import windowing as win
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from hcp.config import env_arg
from hcp.schemas import REC_SCHEMA
from hcp.settings import add_settings
from hcp.topics import Topics
from tools.bench.baseline.logic import (
    BaselineConfig,
    Gathered,
    check_message,
    decide,
    fold_sample,
    price_key,
)

__all__ = ["build_baseline_flow", "main"]

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FROZEN_NOW = datetime(2000, 1, 1, tzinfo=UTC)


class _RecordingSink(DynamicSink):
    """Keeps recommendation rows and counters; writes them when the flow ends."""

    def __init__(self, out: Path, stats: dict) -> None:
        self.out = out
        self.stats = stats

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition:
        sink = self

        class _Part(StatelessSinkPartition):
            def __init__(self) -> None:
                self.rows: list[dict] = []

            def write_batch(self, items: list) -> None:
                for tag, value in items:
                    if tag == "rec":
                        self.rows.append(value)
                    else:
                        name, count = value
                        sink.stats[name] = sink.stats.get(name, 0) + count

            def close(self) -> None:
                import polars as pl  # once, at the end: not on the per-event path

                frame = pl.DataFrame(self.rows, schema=REC_SCHEMA) if self.rows else (
                    pl.DataFrame(schema=REC_SCHEMA)
                )
                sink.out.parent.mkdir(parents=True, exist_ok=True)
                frame.sort(["window_start", "device_id"]).write_parquet(sink.out)
                sink.stats["recommendations"] = frame.height

        return _Part()


def build_baseline_flow(
    bootstrap: str,
    topics: Topics,
    out: Path,
    *,
    cfg: BaselineConfig | None = None,
    lateness_s: float = 5.0,
    stats: dict | None = None,
) -> Dataflow:
    """The per-event dataflow over ``topics``' gpu/asic/prices, to end of input."""
    cfg = cfg or BaselineConfig()
    stats = stats if stats is not None else {}
    kinds = {topics.gpu: "gpu", topics.asic: "asic", topics.prices: "prices"}
    flow = Dataflow("hcp_baseline")
    messages = op.input(
        "kafka",
        flow,
        KafkaSource([bootstrap], list(kinds), tail=False, batch_size=5_000),
    )

    def parse(msg: KafkaSourceMessage) -> tuple[str, dict | None, str | None]:
        kind = kinds[msg.topic]
        obj, reason = check_message(kind, msg.value)
        return kind, obj, reason

    parsed = op.map("json_loads_validate", messages, parse)
    valid = op.branch("valid", parsed, lambda t: t[2] is None)
    bad = op.count_final("bad_count", valid.falses, lambda t: f"bad_input_{t[0]}")
    good = op.map("strip", valid.trues, lambda t: (t[0], t[1]))
    is_price = op.branch("is_price", good, lambda t: t[0] == "prices")

    telemetry = op.key_on(
        "key_device",
        is_price.falses,
        lambda t: t[0] + "/" + (t[1]["gpu_id"] if t[0] == "gpu" else t[1]["asic_id"]),
    )
    clock = win.EventClock(
        lambda t: EPOCH + timedelta(milliseconds=t[1]["ts"]),
        wait_for_system_duration=timedelta(seconds=lateness_s),
        now_getter=lambda: _FROZEN_NOW,
        # Replayed event times are in the past of the wall clock: mapping window closes to
        # system times would make every device's wake-up "due" on every activation (a
        # Python call per open window per batch). None: close on newer items or at EOF.
        to_system_utc=lambda _ts: None,
    )
    windower = win.TumblingWindower(length=timedelta(milliseconds=cfg.window_ms), align_to=EPOCH)

    def merge(a: list, b: list) -> list:  # only session windows merge; tumbling never do
        msg = "tumbling windows never merge"
        raise AssertionError(msg)

    windows = win.fold_window("device_windows", telemetry, clock, windower, lambda: None,
                              fold_sample, merge)
    late = op.count_final("late_count", windows.late, lambda kv: f"late_{kv[0].split('/', 1)[0]}")

    def closed(kv: tuple[str, tuple[int, list]]) -> tuple[str, tuple]:
        key, (window_id, sums) = kv
        kind, device = key.split("/", 1)
        return "all", ("win", window_id * cfg.window_ms, kind, device, sums)

    def price_item(t: tuple[str, dict]) -> tuple[str, tuple]:
        m = t[1]
        return "all", ("price", price_key(m), m["ts"], float(m["value"]))

    both = op.merge(
        "windows_and_prices",
        op.map("closed_windows", windows.down, closed),
        op.map("price_events", is_price.trues, price_item),
    )
    gathered = op.fold_final("gather", both, Gathered, Gathered.add)
    recs = op.flat_map("decide", gathered, lambda kv: [("rec", r) for r in decide(kv[1], cfg)])
    counters = op.merge(
        "counters",
        op.map("bad_tag", bad, lambda kv: ("stat", kv)),
        op.map("late_tag", late, lambda kv: ("stat", kv)),
    )
    op.output("out", op.merge("all_out", recs, counters), _RecordingSink(out, stats))
    return flow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.baseline.flow",
        description="The per-event Bytewax baseline of hcp bench: read the topics to their "
        "end, write the recommendations as Parquet.",
    )
    add_settings(
        parser, "bootstrap", "topic_prefix", "window_s", "lateness_s", "pool_fee", "hysteresis",
        "dwell_s", "workers",
        helps={"workers": "ignored: the baseline runs one worker (its gather step is one key)"},
    )
    env_arg(parser, "--out", env="HCP_BASELINE_OUT", default="baseline-recs.parquet",
            help="recommendations Parquet file to write")
    env_arg(parser, "--stats", env="HCP_BASELINE_STATS", default=None,
            help="JSON file for the counters (bad input, late events, seconds)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = BaselineConfig(
        window_ms=round(args.window_s * 1000),
        pool_fee=args.pool_fee,
        hysteresis=args.hysteresis,
        dwell_ms=round(args.dwell_s * 1000),
    )
    stats: dict = {}
    out = Path(args.out)
    flow = build_baseline_flow(args.bootstrap, Topics(args.topic_prefix), out, cfg=cfg,
                               lateness_s=args.lateness_s, stats=stats)
    started = time.perf_counter()
    run_main(flow)
    stats["seconds"] = round(time.perf_counter() - started, 3)
    if args.stats:
        Path(args.stats).write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
