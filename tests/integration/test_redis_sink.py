"""The Redis sink against the local Redis: exact values, idempotence, ordering, trimming."""

from __future__ import annotations

import math
from collections.abc import Iterator

import polars as pl
import pytest
import redis

from hcp.schemas import PRICE_ROW_SCHEMA, REC_SCHEMA, WORKLOAD_EVENT_SCHEMA
from sinks.redis.layout import RedisKeys
from sinks.redis.recs import ACTIONS
from sinks.redis.sink import RedisSink, RedisWriter
from tools.bench.redis_sink import synthetic_recs

W = 1_800_000_000_000  # a window end, ms
FIELDS = list(REC_SCHEMA)


@pytest.fixture()
def writer(redis_url: str, redis_prefix: str) -> Iterator[RedisWriter]:
    w = RedisWriter(redis_url, redis_prefix, chunk_rows=7)  # tiny chunks: many payloads
    yield w
    w.close()


@pytest.fixture()
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


def expected_text(row: dict) -> dict[str, str]:
    """How a value must appear in Redis: polars' shortest round-trip text, null as ""."""
    frame = pl.DataFrame([row], schema=REC_SCHEMA)
    text = frame.select(pl.col(c).cast(pl.String).fill_null("") for c in FIELDS)
    return text.row(0, named=True)


def snapshot(client: redis.Redis, prefix: str) -> dict:
    state = {}
    for key in client.scan_iter(f"{prefix}*"):
        kind = client.type(key)
        if kind == "hash":
            state[key] = client.hgetall(key)
        elif kind == "stream":
            state[key] = client.xrange(key)
        elif kind == "set":
            state[key] = sorted(client.smembers(key))
    return state


def test_hashes_and_stream_hold_exact_values(writer, client, redis_prefix):
    df = synthetic_recs(23, W, seed=3)
    writer.write_batch([("recs", df)])
    keys = RedisKeys(redis_prefix)
    ordered = df.sort("device_id").to_dicts()
    for row in ordered:
        assert client.hgetall(keys.rec + row["device_id"]) == expected_text(row)
    entries = client.xrange(keys.recs_stream)
    assert [e[0] for e in entries] == [f"{W}-{i}" for i in range(23)]
    assert [e[1] for e in entries] == [expected_text(r) for r in ordered]
    # A null price is written as "" (so it overwrites an old value) and reads back as null.
    asic = next(r for r in ordered if r["device_type"] == "asic")
    assert client.hget(keys.rec + asic["device_id"], "gpu_spot_usd_hr") == ""
    assert float(client.hget(keys.rec + asic["device_id"], "net_usd_hr")) == asic["net_usd_hr"]


def test_replaying_the_same_batch_changes_nothing(writer, client, redis_prefix):
    batch = [("recs", pl.concat([synthetic_recs(30, W, seed=1),
                                 synthetic_recs(30, W + 60_000, seed=2)]))]
    writer.write_batch(batch)
    before = snapshot(client, redis_prefix)
    assert client.xlen(RedisKeys(redis_prefix).recs_stream) == 60
    writer.write_batch(batch)
    writer.write_batch(batch[:1])
    assert snapshot(client, redis_prefix) == before


def test_half_written_window_completes_without_duplicates(writer, client, redis_prefix):
    keys = RedisKeys(redis_prefix)
    df = synthetic_recs(40, W, seed=5)
    ordered = df.sort("device_id").to_dicts()
    # What a crash after 17 rows leaves behind: the first entries and their hashes.
    for seq, row in enumerate(ordered[:17]):
        text = expected_text(row)
        client.xadd(keys.recs_stream, text, id=f"{W}-{seq}")
        client.hset(keys.rec + row["device_id"], mapping=text)
    writer.write_batch([("recs", df)])
    entries = client.xrange(keys.recs_stream)
    assert [e[0] for e in entries] == [f"{W}-{i}" for i in range(40)]
    assert [e[1] for e in entries] == [expected_text(r) for r in ordered]
    assert all(client.hgetall(keys.rec + r["device_id"]) == expected_text(r) for r in ordered)


def test_an_older_window_never_overwrites_newer_state(writer, client, redis_prefix):
    keys = RedisKeys(redis_prefix)
    newer = synthetic_recs(10, W + 60_000, seed=1)
    older = synthetic_recs(12, W, seed=2)  # two devices that the newer window lacks
    writer.write_batch([("recs", newer)])
    fleet_before = client.hgetall(keys.fleet_summary)
    writer.write_batch([("recs", older)])
    for row in newer.to_dicts():
        assert client.hget(keys.rec + row["device_id"], "window_end") == str(W + 60_000)
    # Devices only in the old window still get their (only) recommendation.
    only_old = older.filter(~pl.col("device_id").is_in(newer["device_id"].implode()))
    assert only_old.height == 2
    for row in only_old.to_dicts():
        assert client.hgetall(keys.rec + row["device_id"]) == expected_text(row)
    assert client.xlen(keys.recs_stream) == 10  # ids below the last one cannot be appended
    assert client.hgetall(keys.fleet_summary) == fleet_before


def test_summaries_equal_the_frame_sums(writer, client, redis_prefix):
    keys = RedisKeys(redis_prefix)
    df = synthetic_recs(200, W, seed=9)
    writer.write_batch([("recs", df)])
    running = df.filter(pl.col("action").is_in(["mine", "serve", "offer"]))

    def check(summary: dict, part: pl.DataFrame, part_running: pl.DataFrame) -> None:
        assert int(summary["window_end"]) == W
        assert int(summary["window_start"]) == W - 60_000
        assert int(summary["devices"]) == part.height
        for action in ACTIONS:
            assert int(summary[f"n_{action}"]) == part.filter(pl.col("action") == action).height
        for col in ("revenue_usd_hr", "cost_usd_hr", "net_usd_hr"):
            assert math.isclose(float(summary[col]), part[col].sum(), rel_tol=1e-12)
        assert float(summary["running_power_w"]) == part_running["expected_power_w"].sum()

    check(client.hgetall(keys.fleet_summary), df, running)
    sites = sorted(df["site"].unique())
    assert sorted(client.smembers(keys.sites)) == sites
    for site in sites:
        check(client.hgetall(keys.site_summary(site)), df.filter(pl.col("site") == site),
              running.filter(pl.col("site") == site))


def test_summary_moves_to_the_latest_window(writer, client, redis_prefix):
    keys = RedisKeys(redis_prefix)
    writer.write_batch([("recs", pl.concat([synthetic_recs(20, W, seed=1),
                                            synthetic_recs(8, W + 60_000, seed=2)]))])
    fleet = client.hgetall(keys.fleet_summary)
    assert fleet["window_end"] == str(W + 60_000)
    assert fleet["devices"] == "8"


def test_stream_is_trimmed_to_about_maxlen(redis_url, client, redis_prefix):
    w = RedisWriter(redis_url, redis_prefix, stream_maxlen=100, chunk_rows=1000)
    try:
        for i in range(8):
            w.write_batch([("recs", synthetic_recs(150, W + i * 60_000, seed=i))])
    finally:
        w.close()
    stream = RedisKeys(redis_prefix).recs_stream
    length = client.xlen(stream)
    # Approximate trimming drops whole radix-tree nodes (100 entries by default).
    assert 100 <= length <= 300, length
    assert client.xrevrange(stream, count=1)[0][0] == f"{W + 7 * 60_000}-149"
    assert client.xinfo_stream(stream)["entries-added"] == 8 * 150


def test_prices_keep_the_newest_value(writer, client, redis_prefix):
    def prices(rows):
        return pl.DataFrame(rows, schema=PRICE_ROW_SCHEMA, orient="row")

    writer.write_batch([("prices", prices([
        (2_000, "btc_usd", "", "btc_usd", 97_000.5),
        (1_000, "btc_usd", "", "btc_usd", 90_000.0),
        (1_500, "electricity_usd_mwh", "tx-1", "electricity_usd_mwh:tx-1", 42.25),
    ]))])
    writer.write_batch([("prices", prices([
        (1_800, "btc_usd", "", "btc_usd", 1.0),  # older than what is stored
        (1_600, "electricity_usd_mwh", "tx-1", "electricity_usd_mwh:tx-1", 180.0),
    ]))])
    assert client.hgetall(RedisKeys(redis_prefix).prices) == {
        "btc_usd": "97000.5",
        "btc_usd:ts": "2000",
        "electricity_usd_mwh:tx-1": "180.0",
        "electricity_usd_mwh:tx-1:ts": "1600",
    }


def _events(rows) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=WORKLOAD_EVENT_SCHEMA, orient="row")


def test_workload_events_are_idempotent_and_keep_state(writer, client, redis_prefix):
    keys = RedisKeys(redis_prefix)
    first = _events([
        ("wl-1", 1_000, None, "submitted", 5, "", "", "new"),
        ("wl-1", 1_000, "submitted", "queued", 5, "", "", "classified"),
        ("wl-2", 1_000, None, "submitted", 9, "", "", "new"),
    ])
    # The same millisecond continues in the next batch, then time moves on.
    second = _events([
        ("wl-2", 1_000, "submitted", "queued", 9, "", "", "classified"),
        ("wl-1", 1_500, "queued", "assigned", 5, "g-1,g-2", "tx-1", "scored"),
        ("wl-1", 2_000, "assigned", "running", 5, "g-1,g-2", "tx-1", "started"),
    ])
    writer.write_batch([("workload_events", first)])
    writer.write_batch([("workload_events", second)])
    state = snapshot(client, redis_prefix)
    writer.write_batch([("workload_events", first)])
    writer.write_batch([("workload_events", second), ("workload_events", first)])
    assert snapshot(client, redis_prefix) == state

    entries = client.xrange(keys.workloads_stream)
    assert [e[0] for e in entries] == ["1000-0", "1000-1", "1000-2", "1000-3", "1500-0",
                                       "2000-0"]
    assert [(e[1]["workload_id"], e[1]["to_state"]) for e in entries] == [
        ("wl-1", "submitted"), ("wl-1", "queued"), ("wl-2", "submitted"), ("wl-2", "queued"),
        ("wl-1", "assigned"), ("wl-1", "running"),
    ]
    wl1 = client.hgetall(keys.workload + "wl-1")
    assert wl1["state"] == "running"
    assert wl1["prev_state"] == "assigned"
    assert wl1["gpus"] == "g-1,g-2"
    assert wl1["site"] == "tx-1"
    assert wl1["priority"] == "5"
    assert wl1["submitted_ts"] == "1000"
    assert wl1["running_ts"] == "2000"
    assert wl1["updated_ts"] == "2000"
    assert client.hget(keys.workload + "wl-2", "state") == "queued"


def test_other_tags_and_empty_frames_are_ignored(writer, client, redis_prefix):
    writer.write_batch([("dlq", pl.DataFrame({"x": [1]})), ("windows", pl.DataFrame())])
    writer.write_batch([("recs", pl.DataFrame(schema=REC_SCHEMA))])
    assert list(client.scan_iter(f"{redis_prefix}*")) == []


def test_runs_as_a_bytewax_output(redis_url, client, redis_prefix):
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, run_main

    windows = [synthetic_recs(6, W + i * 60_000, seed=i) for i in range(3)]
    items = [("recs", w) for w in windows] + [("other", pl.DataFrame({"x": [1]}))]
    flow = Dataflow("redis_sink_test")
    stream = op.input("in", flow, TestingSource(items))
    op.output("redis", stream, RedisSink(redis_url, prefix=redis_prefix, stream_maxlen=1_000))
    run_main(flow)
    keys = RedisKeys(redis_prefix)
    assert client.xlen(keys.recs_stream) == 18
    assert client.hget(keys.fleet_summary, "window_end") == str(W + 120_000)
    assert client.hget(keys.rec + "gpu-0000000", "window_end") == str(W + 120_000)


def _evolve(df: pl.DataFrame, window_end: int, seed: int) -> pl.DataFrame:
    """The next window: some devices gone, a few values changed, a price null <-> set."""
    import numpy as np

    rng = np.random.default_rng(seed)
    keep = rng.random(df.height) > 0.2
    change = rng.random(df.height) < 0.5
    flip = rng.random(df.height) < 0.3
    out = df.filter(pl.Series(keep)).with_columns(
        pl.lit(window_end - 60_000).alias("window_start"),
        pl.lit(window_end).alias("window_end"),
    )
    change, flip = change[keep], flip[keep]
    return out.with_columns(
        pl.when(pl.Series(change)).then(pl.col("net_usd_hr") + 1.5)
        .otherwise(pl.col("net_usd_hr")).alias("net_usd_hr"),
        pl.when(pl.Series(change)).then(pl.lit("power_cap")).otherwise(pl.col("reason"))
        .alias("reason"),
        pl.when(pl.Series(flip)).then(
            pl.when(pl.col("power_cap_mw").is_null()).then(pl.lit(12.5)).otherwise(None)
        ).otherwise(pl.col("power_cap_mw")).alias("power_cap_mw"),
    )


@pytest.mark.parametrize("delta", [True, False])
def test_consecutive_windows_leave_full_hashes(redis_url, client, redis_prefix, delta):
    keys = RedisKeys(redis_prefix)
    w = RedisWriter(redis_url, redis_prefix, chunk_rows=9, delta_hashes=delta)
    try:
        window = synthetic_recs(60, W, seed=11)
        latest = {r["device_id"]: r for r in window.to_dicts()}
        w.write_batch([("recs", window)])
        for i in range(1, 5):
            window = _evolve(window, W + i * 60_000, seed=i)
            if i == 3:  # a device that was absent comes back
                window = pl.concat([window, synthetic_recs(60, W + i * 60_000, seed=11)
                                    .filter(~pl.col("device_id").is_in(window["device_id"]
                                                                       .implode()))])
            latest.update({r["device_id"]: r for r in window.to_dicts()})
            w.write_batch([("recs", window)])
            assert w.last_rec_stats.delta_windows == int(delta)
    finally:
        w.close()
    for device, row in latest.items():
        assert client.hgetall(keys.rec + device) == expected_text(row), device
