"""Writing market prices, workload state transitions and GPU cordons to Redis.

Both are small next to recommendations (tens to thousands of rows a second), so they go
through redis-py pipelines and the scripts in :mod:`sinks.redis.layout`, which keep the
newest value whatever order batches are replayed in.

Workload stream ids are ``{ts}-{seq}``. Events older than the stream's last id are a
replay and add no entry. Events in the same millisecond as the last id are compared with
the entries already there by (workload, from, to), so a replay adds nothing and a
millisecond split across two batches still gets all its entries. A ``queued -> queued``
event carries a queued workload's new pending reason (flows/router/states.py): it gets a
stream entry like any event and sets the hash's ``pending_reason``.

GPU cordons (``GPU_HEALTH_SCHEMA`` rows from the router) go to the ``gpu:cordoned`` hash:
HSET on a cordon, HDEL when it ends, in the router's order (one writer, the router's).
"""

from __future__ import annotations

import json
import logging

import polars as pl
import redis

from sinks.redis.layout import RedisKeys, stream_last_id

__all__ = [
    "RESERVATION_FIELDS",
    "WORKLOAD_STREAM_FIELDS",
    "write_gpu_health",
    "write_prices",
    "write_reservations",
    "write_workload_events",
]

log = logging.getLogger(__name__)

_EVENTS_PER_SCRIPT = 2_000
# Fields a reservation sets on its workload's hash (and removes when it ends).
RESERVATION_FIELDS = ("expected_start_ts", "reserved_site", "reserved_gpus")
WORKLOAD_STREAM_FIELDS = (
    "workload_id", "ts", "from_state", "to_state", "priority", "gpus", "site", "reason"
)


def write_prices(client: redis.Redis, keys: RedisKeys, df: pl.DataFrame, prices_sha: str) -> int:
    """Keep the newest value per price key; returns how many keys changed."""
    if df.height == 0:
        return 0
    latest = (
        df.filter(pl.col("key").is_not_null() & pl.col("ts").is_not_null())
        .sort("ts", maintain_order=True)
        .group_by("key", maintain_order=True)
        .last()
        .select(
            pl.col("key"),
            pl.col("ts").cast(pl.String),
            pl.col("value").cast(pl.String).fill_null(""),
        )
    )
    args = [v for row in latest.rows() for v in row]
    if not args:
        return 0
    return int(client.evalsha(prices_sha, 1, keys.prices, *args))


def write_workload_events(
    client: redis.Redis,
    keys: RedisKeys,
    df: pl.DataFrame,
    workload_sha: str,
    stream_maxlen: int,
) -> int:
    """Append new transitions and update workload hashes; returns stream entries added.

    An event already in the stream is a replay and changes nothing (its hash update was
    applied with it). A new event gets its entry, then its hash update, in one pipeline in
    that order, so a crash between them is repaired by the replay that follows.
    """
    if df.height == 0:
        return 0
    # A stable sort keeps same-millisecond transitions (submitted, queued, assigned ...)
    # in the order the router produced them.
    rows = (
        df.sort("ts", maintain_order=True)
        .select(
            pl.col("workload_id"),
            pl.col("ts").cast(pl.String).alias("ts_text"),
            *(
                pl.col(c).cast(pl.String).fill_null("")
                for c in ("from_state", "to_state", "priority", "gpus", "site", "reason")
            ),
            pl.col("ts"),
        )
        .rows()
    )
    stream = keys.workloads_stream
    last_ms, last_seq = stream_last_id(client, stream)
    present = _entries_at(client, stream, last_ms, last_seq) if any(
        r[8] == last_ms for r in rows) else set()
    pipe = client.pipeline(transaction=False)
    hash_keys: list[str] = []
    args: list[str] = []
    next_seq: dict[int, int] = {last_ms: last_seq + 1}
    added = 0
    for r in rows:
        ts = r[8]
        if ts == last_ms and (r[0], r[2], r[3]) in present:
            continue  # replayed
        if ts < last_ms:
            mode = "late"  # older than the stream: no entry possible, state only if newer
        else:
            mode = "new"
            seq = next_seq.get(ts, 0)
            next_seq[ts] = seq + 1
            fields = dict(zip(WORKLOAD_STREAM_FIELDS, r[:8], strict=True))
            pipe.xadd(stream, fields, id=f"{ts}-{seq}", maxlen=stream_maxlen, approximate=True)
            added += 1
        hash_keys.append(keys.workload + r[0])
        args.extend((*r[:8], mode))
    # Scripts of bounded size, in event order, after the entries in the same pipeline.
    for i in range(0, len(hash_keys), _EVENTS_PER_SCRIPT):
        part = hash_keys[i : i + _EVENTS_PER_SCRIPT]
        pipe.evalsha(workload_sha, len(part), *part, *args[i * 9 : (i + len(part)) * 9])
    if hash_keys:
        pipe.execute()
    skipped = len(rows) - len(hash_keys)
    if skipped:
        log.debug("skipped %d workload transitions already in %s", skipped, stream)
    return added


def write_gpu_health(client: redis.Redis, keys: RedisKeys, df: pl.DataFrame) -> int:
    """Apply cordon changes in order: set cordoned GPUs, delete uncordoned ones."""
    if df.height == 0:
        return 0
    pipe = client.pipeline(transaction=True)
    for gpu_id, site, _ts, cordoned, reason, since in df.select(
        "gpu_id", "site", "ts", "cordoned", "reason", "since"
    ).iter_rows():
        if cordoned:
            value = json.dumps({"reason": reason, "since": since, "site": site},
                               sort_keys=True)
            pipe.hset(keys.cordoned, gpu_id, value)
        else:
            pipe.hdel(keys.cordoned, gpu_id)
    pipe.execute()
    # Each touched site's summary gets its cordoned count (n_offer still counts these GPUs
    # when the profitability flow recommends `offer`: it runs upstream of the router).
    per_site: dict[str, int] = dict.fromkeys(df["site"].unique().to_list(), 0)
    for raw in client.hvals(keys.cordoned):
        site = json.loads(raw).get("site")
        if site in per_site:
            per_site[site] += 1
    pipe = client.pipeline(transaction=False)
    for site, n in per_site.items():
        pipe.hset(keys.site_summary(site), "n_cordoned", n)
    pipe.execute()
    return df.height


def _entries_at(client: redis.Redis, stream: str, ms: int, last_seq: int) -> set[tuple]:
    """(workload, from, to) of the entries in one millisecond of the stream."""
    present: set[tuple] = set()
    for _id, fields in client.xrange(stream, f"{ms}-0", f"{ms}-{last_seq}"):
        present.add(tuple(fields.get(f, b"").decode()
                          for f in (b"workload_id", b"from_state", b"to_state")))
    return present


def write_reservations(client: redis.Redis, keys: RedisKeys, df: pl.DataFrame) -> int:
    """Set or clear each workload's reservation fields, in the router's order.

    One writer (the router's) and whole-value writes, so a replay writes the same fields
    again; the next round's row corrects any older one a replay repeats.
    """
    if df.height == 0:
        return 0
    pipe = client.pipeline(transaction=False)
    for wid, start, site, gpus in df.select(
        "workload_id", "expected_start_ts", "reserved_site", "reserved_gpus"
    ).iter_rows():
        key = keys.workload + wid
        if start is None:
            pipe.hdel(key, *RESERVATION_FIELDS)
        else:
            pipe.hset(key, mapping=dict(zip(RESERVATION_FIELDS, (str(start), site, gpus),
                                            strict=True)))
    pipe.execute()
    return df.height
