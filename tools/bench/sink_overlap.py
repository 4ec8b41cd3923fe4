"""What overlapping the Redis and PostgreSQL writes saves, measured on the sinks alone.

``python -m tools.bench.sink_overlap [--devices 310000] [--repeat 3]`` builds one closed
window's outputs (a window row and a recommendation per device, the job's own schemas) and
writes them through the real sinks, into a fresh database and Redis prefix each time: the
two sinks one after the other, as separate output steps ran them, then both at once
through :class:`sinks.overlap.OverlappedSinks`. Each pass writes a new window, so
PostgreSQL takes its fast path in both.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import numpy as np
import polars as pl

from hcp.schemas import REC_SCHEMA, WINDOW_SCHEMA
from hcp.settings import default
from hcp.tags import Out
from sinks.overlap import OverlappedSinks
from sinks.postgres.sink import PostgresSink
from sinks.redis.sink import RedisSink
from tools.bench.hooks import delete_redis_prefix, fresh_database

__all__ = ["main"]

_T0 = 1_767_225_600_000


def window_items(devices: int, window: int) -> list[tuple[str, pl.DataFrame]]:
    """One window's ``windows`` and ``recs`` frames for ``devices`` ASICs."""
    rng = np.random.default_rng(window)
    start = _T0 + window * 60_000
    ids = [f"asic-{i:06d}" for i in range(devices)]

    def frame(schema: dict) -> pl.DataFrame:
        cols: dict[str, object] = {}
        for name, dtype in schema.items():
            if name == "device_id":
                cols[name] = ids
            elif name == "window_start":
                cols[name] = np.full(devices, start, dtype=np.int64)
            elif name == "window_end":
                cols[name] = np.full(devices, start + 60_000, dtype=np.int64)
            elif dtype == pl.Float64:
                cols[name] = rng.normal(100, 10, devices)
            elif dtype == pl.Int64:
                cols[name] = rng.integers(0, 1000, devices)
            elif name == "action":
                cols[name] = ["mine"] * devices
            elif name == "device_type":
                cols[name] = ["asic"] * devices
            else:
                cols[name] = [f"{name}-x"] * devices
        return pl.DataFrame(cols, schema=schema)

    return [(Out.WINDOWS, frame(WINDOW_SCHEMA)), (Out.RECS, frame(REC_SCHEMA))]


def addressed(items: list[tuple[str, pl.DataFrame]]) -> list[tuple[str, tuple]]:
    """The same items for both sinks, as the dataflow addresses them."""
    return [(name, item) for item in items for name in ("redis", "pg")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.sink_overlap", description=__doc__)
    p.add_argument("--devices", type=int, default=310_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis", default=default("redis"))
    args = p.parse_args(argv)
    timings: dict[str, list[float]] = {"in turn": [], "overlapped": []}
    for i in range(args.repeat):
        for mode in timings:
            prefix = f"overlap-{uuid.uuid4().hex[:6]}:"
            with fresh_database(args.pg, "overlap") as dsn:
                sinks = {"redis": RedisSink(args.redis, prefix=prefix), "pg": PostgresSink(dsn)}
                if mode == "overlapped":
                    parts = [OverlappedSinks(sinks).build("history", 0, 1)]
                    batches = [addressed(window_items(1_000, 0)),
                               addressed(window_items(args.devices, 1 + i))]
                else:
                    parts = [s.build("history", 0, 1) for s in sinks.values()]
                    batches = [window_items(1_000, 0), window_items(args.devices, 1 + i)]
                for part in parts:  # connect, migrate, warm up
                    part.write_batch(batches[0])
                started = time.perf_counter()
                for part in parts:
                    part.write_batch(batches[1])
                timings[mode].append(time.perf_counter() - started)
                for part in parts:
                    part.close()
            delete_redis_prefix(args.redis, prefix)
            print(f"{mode:>10}: {timings[mode][-1]:.3f} s for {args.devices:,} windows + "
                  f"recommendations", flush=True)
    a, b = (statistics.median(timings[m]) for m in ("in turn", "overlapped"))
    print(f"median: in turn {a:.3f} s, overlapped {b:.3f} s, saved {1 - b / a:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
