"""Benchmark of the Redis sink: one window of a large fleet's recommendations.

    .venv/bin/python -m tools.bench.redis_sink --devices 310000 [--mode raw|redis-py]

``raw`` is the sink as shipped (column-wise RESP); ``redis-py`` writes the same hashes and
stream entries through a redis-py pipeline for comparison. Keys go under a fresh prefix
that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np
import polars as pl
import redis

from hcp.config import positive_int
from hcp.schemas import REC_SCHEMA
from hcp.settings import add_settings
from sinks.redis.layout import RedisKeys
from sinks.redis.recs import CHUNK_ROWS
from sinks.redis.sink import RedisWriter

__all__ = ["main", "synthetic_recs"]

_SITES = ("tx-1", "tx-2", "ga-1", "nd-1", "wy-1")


def synthetic_recs(n: int, window_end: int, seed: int = 0, window_ms: int = 60_000) -> pl.DataFrame:
    """A deterministic window of ``n`` recommendations (80 % ASICs, 20 % GPUs)."""
    rng = np.random.default_rng(seed)
    is_gpu = np.arange(n) % 5 == 0
    revenue = np.round(rng.uniform(0.0, 3.0, n), 6)
    cost = np.round(rng.uniform(0.0, 1.5, n), 6)
    net = revenue - cost
    score = np.where(revenue > 0, net / np.where(revenue > 0, revenue, 1) * 100, -100.0)
    gpu_actions = np.array(["serve", "offer", "power_down"])
    asic_actions = np.array(["mine", "curtail"])
    action = np.where(
        is_gpu, gpu_actions[rng.integers(0, 3, n)], asic_actions[rng.integers(0, 2, n)]
    )
    reasons = np.array(["profitable", "unprofitable", "power_cap", "hysteresis_hold"])
    df = pl.DataFrame(
        {
            "device_id": [f"{'gpu' if g else 'asic'}-{i:07d}" for i, g in enumerate(is_gpu)],
            "device_type": np.where(is_gpu, "gpu", "asic"),
            "site": np.array(_SITES)[np.arange(n) % len(_SITES)],
            "model": np.where(is_gpu, "H100-SXM", "S21"),
            "window_start": np.full(n, window_end - window_ms, dtype=np.int64),
            "window_end": np.full(n, window_end, dtype=np.int64),
            "action": action,
            "reason": reasons[rng.integers(0, len(reasons), n)],
            "revenue_usd_hr": revenue,
            "cost_usd_hr": cost,
            "net_usd_hr": net,
            "score": score,
            "expected_revenue_usd_hr": revenue,
            "expected_cost_usd_hr": cost,
            "expected_net_usd_hr": net,
            "expected_power_w": np.where(is_gpu, 700.0, 3500.0),
            "btc_usd": np.full(n, 97_000.0),
            "difficulty": np.full(n, 1.1e14),
            "block_reward_btc": np.full(n, 3.125),
            "electricity_usd_mwh": np.round(rng.uniform(20, 120, n), 2),
            "gpu_spot_usd_hr": np.where(is_gpu, 2.1, np.nan),
            "power_cap_mw": [None] * n,
        },
        schema=REC_SCHEMA,
    )
    return df.with_columns(pl.col("gpu_spot_usd_hr").fill_nan(None))


def next_window(df: pl.DataFrame, seed: int, window_ms: int = 60_000) -> pl.DataFrame:
    """The following window as a live fleet produces it: new telemetry moves revenue,
    cost, net and score, the BTC price ticks, about 5 % of devices change action."""
    rng = np.random.default_rng(seed)
    n = df.height
    revenue = np.round(df["revenue_usd_hr"].to_numpy() * rng.uniform(0.98, 1.02, n), 6)
    cost = np.round(df["cost_usd_hr"].to_numpy() * rng.uniform(0.99, 1.01, n), 6)
    net = revenue - cost
    flip = rng.random(n) < 0.05
    swapped = df["action"].replace(
        {"mine": "curtail", "curtail": "mine", "serve": "offer", "offer": "serve"}
    )
    return df.with_columns(
        (pl.col("window_start") + window_ms),
        (pl.col("window_end") + window_ms),
        pl.Series("revenue_usd_hr", revenue),
        pl.Series("cost_usd_hr", cost),
        pl.Series("net_usd_hr", net),
        pl.Series("score", np.where(revenue > 0, net / np.where(revenue > 0, revenue, 1) * 100,
                                    -100.0)),
        pl.Series("expected_revenue_usd_hr", revenue),
        pl.Series("expected_cost_usd_hr", cost),
        pl.Series("expected_net_usd_hr", net),
        (pl.col("btc_usd") + float(rng.integers(-500, 500))),
        pl.when(pl.Series(flip)).then(swapped).otherwise(pl.col("action")).alias("action"),
    )


def _write_redis_py(client: redis.Redis, keys: RedisKeys, df: pl.DataFrame, maxlen: int) -> None:
    """The straightforward way, for comparison: one redis-py call per command."""
    text = df.select(pl.col(c).cast(pl.String).fill_null("") for c in REC_SCHEMA).sort("device_id")
    window_end = int(df["window_end"][0])
    pipe = client.pipeline(transaction=False)
    for seq, row in enumerate(text.iter_rows(named=True)):
        pipe.xadd(keys.recs_stream, row, id=f"{window_end}-{seq}", maxlen=maxlen,
                  approximate=True)
        pipe.hset(keys.rec + row["device_id"], mapping=row)
        if seq % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.redis_sink", description=__doc__)
    add_settings(parser, "redis")
    parser.add_argument("--devices", type=positive_int, default=310_000, help="rows per window")
    parser.add_argument("--windows", type=positive_int, default=1, help="windows to write")
    parser.add_argument("--mode", choices=("raw", "redis-py"), default="raw")
    parser.add_argument("--chunk-rows", type=positive_int, default=CHUNK_ROWS)
    args = parser.parse_args(argv)

    prefix = f"bench{uuid.uuid4().hex[:8]}:"
    writer = RedisWriter(args.redis, prefix, chunk_rows=args.chunk_rows)
    windows = [synthetic_recs(args.devices, 1_800_000_000_000)]
    for i in range(1, args.windows):
        windows.append(next_window(windows[-1], seed=i))
    if args.mode == "raw":  # compile the Numba packer outside the timing
        warmup = RedisWriter(args.redis, prefix + "warmup:")
        warmup.write_batch([("recs", synthetic_recs(10, 1_700_000_000_000))])
        warmup.close()
    try:
        total = 0.0
        for i, df in enumerate(windows):
            cpu0 = _redis_cpu(writer.client)
            t0 = time.perf_counter()
            if args.mode == "raw":
                writer.write_batch([("recs", df)])
            else:
                _write_redis_py(writer.client, writer.keys, df, writer.stream_maxlen)
            took = time.perf_counter() - t0
            total += took
            delta = i > 0 and args.mode == "raw"
            kind = "next (changed fields)" if delta else "first (full hashes)"
            print(f"window {i} {kind}: {took:.2f} s, {args.devices / took:,.0f} recs/s, "
                  f"Redis CPU {_redis_cpu(writer.client) - cpu0:.2f} s")
        rows = args.devices * args.windows
        print(
            f"mode={args.mode} devices={args.devices} windows={args.windows} "
            f"seconds={total:.2f} recs/s={rows / total:,.0f} (hash + stream entry each)"
        )
        t0 = time.perf_counter()
        writer.write_batch([("recs", windows[-1])])
        replay = time.perf_counter() - t0
        entries = writer.client.xlen(writer.keys.recs_stream)
        print(f"replay of the last window: {replay:.2f} s, stream length {entries} (unchanged)")
    finally:
        keys = list(writer.client.scan_iter(f"{prefix}*", count=10_000))
        for i in range(0, len(keys), 10_000):
            writer.client.unlink(*keys[i : i + 10_000])
        writer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
