"""The per-site columnar snapshots against the local Redis: what they hold and when."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import pytest
import redis

from hcp.schemas import REC_SCHEMA
from sinks.redis.layout import RedisKeys
from sinks.redis.sink import RedisWriter
from sinks.redis.snapshot import decode_snapshot
from tools.bench.redis_sink import synthetic_recs

W = 1_800_000_000_000
STEP = 60_000


@pytest.fixture()
def writer(redis_url: str, redis_prefix: str) -> Iterator[RedisWriter]:
    w = RedisWriter(redis_url, redis_prefix)
    yield w
    w.close()


@pytest.fixture()
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def stored(client: redis.Redis, prefix: str) -> dict[str, pl.DataFrame]:
    keys = RedisKeys(prefix)
    index = {k.decode(): int(v) for k, v in client.hgetall(keys.snapshots).items()}
    out = {}
    for site, end in index.items():
        df = decode_snapshot(client.get(keys.snapshot(site)))
        assert df["window_end"].max() == end
        out[site] = df
    return out


def by_site(df: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {s: g.sort("device_id") for (s,), g in df.partition_by("site", as_dict=True).items()}


def test_a_window_is_one_value_per_site_equal_to_its_rows(writer, client, redis_prefix):
    df = synthetic_recs(40, W, seed=1)
    writer.write_batch([("recs", df)])
    got = stored(client, redis_prefix)
    want = by_site(df)
    assert sorted(got) == sorted(want)
    for site, rows in want.items():
        assert got[site].equals(rows.select(list(REC_SCHEMA)), null_equal=True)
    assert writer.last_rec_stats is not None and writer.last_rec_stats.snapshot_bytes > 0


def test_snapshot_matches_the_hashes_after_gaps_and_replays(
    writer, client, redis_url, redis_prefix
):
    first = synthetic_recs(30, W, seed=1)
    # The next window lacks five devices: they keep their first-window rows, as hashes do.
    second = synthetic_recs(30, W + STEP, seed=2).filter(
        ~pl.col("device_id").is_in(first["device_id"].head(5).implode())
    )
    writer.write_batch([("recs", first)])
    writer.write_batch([("recs", second)])
    before = stored(client, redis_prefix)
    writer.write_batch([("recs", first)])  # a replay of the older window moves nothing
    assert {s: d.to_dicts() for s, d in stored(client, redis_prefix).items()} == {
        s: d.to_dicts() for s, d in before.items()
    }
    # A new writer (no memory of what it wrote) merges with what Redis holds.
    fresh = RedisWriter(redis_url, redis_prefix)
    third = synthetic_recs(30, W + 2 * STEP, seed=3).filter(pl.col("device_id").str.ends_with("1"))
    fresh.write_batch([("recs", third)])
    fresh.close()
    snap = pl.concat(stored(client, redis_prefix).values()).sort("device_id")
    assert snap.height == 30
    keys = RedisKeys(redis_prefix)
    for row in snap.iter_rows(named=True):
        stored_hash = client.hgetall(keys.rec + row["device_id"])
        assert int(stored_hash[b"window_end"]) == row["window_end"]
        assert stored_hash[b"action"].decode() == row["action"]
        net = stored_hash[b"net_usd_hr"].decode()
        assert (net == "" and row["net_usd_hr"] is None) or float(net) == row["net_usd_hr"]
    ends = dict(zip(snap["device_id"], snap["window_end"], strict=True))
    assert {ends[d] for d in third["device_id"]} == {W + 2 * STEP}
    assert {ends[d] for d in first["device_id"].head(5) if d not in set(third["device_id"])} == {W}


def test_a_rewritten_window_leaves_the_same_bytes(writer, client, redis_prefix):
    df = synthetic_recs(25, W, seed=4)
    writer.write_batch([("recs", df)])
    keys = RedisKeys(redis_prefix)
    sites = sorted(k.decode() for k in client.hkeys(keys.snapshots))
    before = [client.get(keys.snapshot(s)) for s in sites]
    writer.write_batch([("recs", df)])
    assert [client.get(keys.snapshot(s)) for s in sites] == before


def test_a_changed_only_stream_carries_only_moved_decisions(client, redis_url, redis_prefix):
    writer = RedisWriter(redis_url, redis_prefix, stream_changed_only=True)
    keys = RedisKeys(redis_prefix)
    first = synthetic_recs(50, W, seed=5)
    second = first.with_columns(
        pl.lit(W + STEP).alias("window_end"),
        (pl.col("revenue_usd_hr") + 0.5).alias("revenue_usd_hr"),
        pl.when(pl.int_range(pl.len()) < 3).then(pl.lit("power_cap"))
        .otherwise(pl.col("reason")).alias("reason"),
    )
    changed = set(second.filter(pl.col("reason") != first["reason"])["device_id"])
    writer.write_batch([("recs", first)])
    writer.write_batch([("recs", second)])
    writer.close()
    entries = client.xrange(keys.recs_stream, min=f"{W + STEP}-0")
    assert {e[1][b"device_id"].decode() for e in entries} == changed
    assert client.xlen(keys.recs_stream) == 50 + len(changed)
    for row in second.iter_rows(named=True):  # every hash and the snapshot moved on
        stored_hash = client.hgetall(keys.rec + row["device_id"])
        assert int(stored_hash[b"window_end"]) == W + STEP
        assert float(stored_hash[b"revenue_usd_hr"]) == row["revenue_usd_hr"]
    snap = pl.concat(stored(client, redis_prefix).values())
    assert set(snap["window_end"]) == {W + STEP} and snap.height == 50
