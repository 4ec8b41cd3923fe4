"""One columnar snapshot of every site's latest recommendations (docs/contract.md section 7).

- ``{prefix}snapshot:site:{site}``  string, an Arrow IPC file of REC_SCHEMA columns: the
  latest recommendation of every device of the site, sorted by device id;
- ``{prefix}snapshot:sites``        hash, site -> the newest ``window_end`` in that snapshot.

A reader (the API's read model, ``hcp recommendations``) GETs one value per site and
decodes it with polars or pyarrow, where following the stream means parsing 310,000
entries a window. The snapshot holds what the ``rec:{device}`` hashes hold: a device
missing from a window keeps its last row, and an older (replayed) window never replaces
a newer row. It is written before the window's stream entries and hashes, so a reader sees
a closed window as soon as the columnar value (tens of MB, not hundreds of MB of RESP)
is in Redis.

The writer keeps what it last wrote per site and reads the stored value back only when
that memory cannot be trusted (first window, Redis restarted, a write was refused).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import polars as pl
import redis

from hcp.schemas import REC_SCHEMA
from sinks.redis.layout import RedisKeys

__all__ = ["SNAPSHOT_LUA", "SnapshotCache", "decode_snapshot", "encode_snapshot", "write_snapshots"]

# KEYS[1]: the index hash, KEYS[2]: the site's snapshot. ARGV: site, window_end, value.
# Written only when the stored window_end is missing or not newer: replays never move back.
SNAPSHOT_LUA = """
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if old ~= nil and old > tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


@dataclass
class SnapshotCache:
    """What this writer last stored per site, valid while Redis keeps the same run_id."""

    run_id: str = ""
    sites: dict[str, pl.DataFrame] = field(default_factory=dict)

    def clear(self) -> None:
        self.run_id, self.sites = "", {}


def encode_snapshot(df: pl.DataFrame) -> bytes:
    """REC_SCHEMA rows as an Arrow IPC file, LZ4-compressed: the prices-used columns repeat
    across a site, so 310,000 rows take 22 MB instead of 73 MB for about the same CPU."""
    buf = io.BytesIO()
    # One record batch whatever the merge left: equal rows give equal bytes.
    df.select(list(REC_SCHEMA)).rechunk().write_ipc(buf, compression="lz4")
    return buf.getvalue()


def decode_snapshot(raw: bytes) -> pl.DataFrame:
    """The rows of one snapshot value, checked against REC_SCHEMA."""
    df = pl.read_ipc(io.BytesIO(raw))
    missing = [c for c in REC_SCHEMA if c not in df.columns]
    if missing:
        msg = f"snapshot lacks columns {missing}"
        raise ValueError(msg)
    return df.select(pl.col(c).cast(t) for c, t in REC_SCHEMA.items())


def _merge(new: pl.DataFrame, old: pl.DataFrame | None) -> pl.DataFrame:
    """The site's rows after ``new``: per device the newest window, devices of ``old``
    absent from ``new`` kept."""
    if old is None or old.height == 0:
        return new
    if old["window_end"].max() <= new["window_end"].min():  # type: ignore[operator]
        kept = old.filter(~pl.col("device_id").is_in(new["device_id"].implode()))
        if kept.height == 0:
            return new
        return pl.concat([new, kept]).sort("device_id")
    # An older window replayed over newer rows: newest row per device wins.
    return (
        pl.concat([old, new])
        .sort("device_id", "window_end")
        .unique("device_id", keep="last", maintain_order=True)
    )


def _stored(client: redis.Redis, keys: RedisKeys, site: str) -> pl.DataFrame | None:
    raw = client.get(keys.snapshot(site))
    return decode_snapshot(raw) if raw else None


def write_snapshots(
    client: redis.Redis,
    keys: RedisKeys,
    window: pl.DataFrame,
    sha: str,
    cache: SnapshotCache,
    run_id: str,
) -> int:
    """Merge one window (REC_SCHEMA, sorted by device id) into every site's snapshot.

    Returns the bytes written.
    """
    if cache.run_id != run_id:
        cache.clear()
        cache.run_id = run_id
    written = 0
    pipe = client.pipeline(transaction=False)
    merged: dict[str, pl.DataFrame] = {}
    for (site,), rows in window.partition_by("site", as_dict=True, maintain_order=True).items():
        name = "" if site is None else str(site)
        old = cache.sites[name] if name in cache.sites else _stored(client, keys, name)
        merged[name] = snap = _merge(rows, old)
        value = encode_snapshot(snap)
        written += len(value)
        newest = int(snap["window_end"].max())  # type: ignore[arg-type]
        pipe.evalsha(sha, 2, keys.snapshots, keys.snapshot(name), name, newest, value)
    for name, applied in zip(merged, pipe.execute(), strict=True):
        if applied:
            cache.sites[name] = merged[name]
        else:  # another writer holds a newer window: read it back next time
            cache.sites.pop(name, None)
    return written
