"""Writing whole windows of recommendations to Redis: hashes, stream and summaries.

Idempotence without per-device reads. Stream entry ids are ``{window_end_ms}-{seq}`` with
``seq`` the row's index after sorting the window by device id, so a window always maps to
the same ids. Before a window the stream's last generated id is read:

- window end > last id: a new window, every row gets an entry and a plain HSET;
- window end == last id: a window cut short by a crash, entries resume after the last
  seq, hashes are rewritten with the same values;
- window end < last id: a replay of an old window, no entries; hashes go through a
  server-side "only if not older" script, so newer state is never overwritten.

Each row's XADD precedes its HSET in the same pipeline, so no hash ever holds a window
newer than the stream's last id; that is what makes the plain HSET of the first two cases
safe. This relies on one writer receiving windows in window-end order (the flow's job).

Delta hashes. Redis spends most of a window on 22-field HSETs. When the stream's last id
is the window this writer wrote last (and Redis has not restarted since, by its run_id),
the hashes hold exactly that window's text, so a device's HSET only needs the fields that
changed (``window_end`` always does). Anything unusual (an error, a replay, a resumed
window, another window in between) drops the cache and the next window is written in full.

Changed-only stream (``hcp run --redis-stream changed``). With the same cache, a device
whose action and reason equal its previous window's gets no stream entry, only its hash
write; the per-site snapshots (sinks/redis/snapshot.py) carry every device. Entry ids keep
their ``{window_end}-{seq}`` form, with gaps in ``seq``. Whenever the previous window is
not known, every device gets an entry: a reader may see a decision twice, never miss one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl
import redis

from hcp.schemas import REC_SCHEMA
from sinks.redis.layout import RedisKeys, stream_last_id
from sinks.redis.packer import BufferRing, Bulk, Const, Header, Pair, Segment, pack_rows
from sinks.redis.resp import RawPipeline, bulk, const_bulk, header
from sinks.redis.snapshot import SnapshotCache, write_snapshots

__all__ = ["ACTIONS", "REC_FIELDS", "HashCache", "RecWriteStats", "summarize", "write_recs"]

log = logging.getLogger(__name__)

REC_FIELDS = list(REC_SCHEMA)
ACTIONS = ("mine", "curtail", "serve", "offer", "power_down")
RUNNING_ACTIONS = ("mine", "serve", "offer")
SUMMARY_FIELDS = (
    "site",
    "window_start",
    "window_end",
    "devices",
    "n_gpu",
    "n_asic",
    *(f"n_{a}" for a in ACTIONS),
    "revenue_usd_hr",
    "cost_usd_hr",
    "net_usd_hr",
    "running_power_w",
)
# Rows per pipelined payload. Four payload buffers live on in the ring (BufferRing), ~1.8 KB
# of RESP per row: 10,000 rows keep them at ~90 MB where 20,000 held 175 MB of a 2 GB job,
# at the same write speed (python -m tools.bench.redis_sink --chunk-rows, docs/benchmark.md).
CHUNK_ROWS = 10_000
_DUPLICATE_ID = "equal or smaller than the target stream top item"


@dataclass
class HashCache:
    """The text of the last window written in full: what its devices' hashes now hold."""

    window_end: int = -1
    run_id: str = ""
    text: pl.DataFrame | None = None

    def clear(self) -> None:
        self.window_end, self.run_id, self.text = -1, "", None


@dataclass
class RecWriteStats:
    """What one ``write_recs`` call did."""

    windows: int = 0
    rows: int = 0
    stream_entries: int = 0
    skipped_entries: int = 0
    old_windows: int = 0
    delta_windows: int = 0
    snapshot_bytes: int = 0


def summarize(df: pl.DataFrame) -> pl.DataFrame:
    """Per-site and fleet totals of one window (fleet row has site ``""``)."""
    running = pl.col("action").is_in(RUNNING_ACTIONS)
    aggs = [
        pl.col("window_start").min(),
        pl.col("window_end").max(),
        pl.len().cast(pl.Int64).alias("devices"),
        (pl.col("device_type") == "gpu").sum().cast(pl.Int64).alias("n_gpu"),
        (pl.col("device_type") == "asic").sum().cast(pl.Int64).alias("n_asic"),
        *((pl.col("action") == a).sum().cast(pl.Int64).alias(f"n_{a}") for a in ACTIONS),
        pl.col("revenue_usd_hr").sum(),
        pl.col("cost_usd_hr").sum(),
        pl.col("net_usd_hr").sum(),
        pl.when(running).then(pl.col("expected_power_w")).otherwise(0.0).sum()
        .alias("running_power_w"),
    ]
    sites = df.group_by("site").agg(aggs).sort("site")
    fleet = df.select(aggs).with_columns(pl.lit("").alias("site"))
    return pl.concat([sites, fleet.select(sites.columns)])


def write_recs(
    client: redis.Redis,
    keys: RedisKeys,
    df: pl.DataFrame,
    *,
    cond_hset_sha: str,
    stream_maxlen: int,
    chunk_rows: int = CHUNK_ROWS,
    ring: BufferRing | None = None,
    cache: HashCache | None = None,
    changed_only: bool = False,
    snapshot_sha: str | None = None,
    snapshots: SnapshotCache | None = None,
) -> RecWriteStats:
    """Write every window in ``df`` (REC_SCHEMA columns), oldest first.

    Pass the same ``ring`` on every call to reuse its output buffers across windows, and
    the same ``cache`` to write only changed hash fields (None: always full hashes).
    ``changed_only`` (needs ``cache``) gives stream entries only to devices whose action
    or reason differs from the window before (all devices when that is not known).
    With ``snapshot_sha`` (SNAPSHOT_LUA loaded) each window is first merged into the
    per-site columnar snapshots (sinks/redis/snapshot.py).
    """
    stats = RecWriteStats()
    # Depth 2 in flight + 1 being sent + 1 being packed: 4 buffers are never reused early.
    ring = ring or BufferRing(4)
    bad = df.filter(pl.col("device_id").is_null() | pl.col("window_end").is_null())
    if bad.height:
        # Cannot be keyed or ordered; the flow never emits these, so say so loudly.
        log.error("dropping %d recommendations without device_id or window_end", bad.height)
        df = df.filter(pl.col("device_id").is_not_null() & pl.col("window_end").is_not_null())
    if df.height == 0:
        return stats
    # Which Redis this is (a restart forgets what the caches remember): asked once per call.
    remembers = snapshot_sha is not None or cache is not None
    run_id = str(client.info("server").get("run_id", "")) if remembers else ""
    for window_end in df["window_end"].unique().sort().to_list():
        window = df.filter(pl.col("window_end") == window_end).sort("device_id")
        if snapshot_sha:
            stats.snapshot_bytes += write_snapshots(
                client, keys, window, snapshot_sha, snapshots or SnapshotCache(), run_id
            )
        _write_window(client, keys, window, window_end, cond_hset_sha, stream_maxlen,
                      chunk_rows, ring, cache, stats, changed_only, run_id)
        _write_summaries(client, keys, window, cond_hset_sha)
        stats.windows += 1
        stats.rows += window.height
    return stats


def _as_text(df: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    # Nulls become "" so every hash and entry has the same fields: a field that turns
    # null must overwrite its old value, not keep it.
    return df.select(pl.col(c).cast(pl.String).fill_null("") for c in columns)


def _write_window(
    client: redis.Redis,
    keys: RedisKeys,
    window: pl.DataFrame,
    window_end: int,
    cond_hset_sha: str,
    stream_maxlen: int,
    chunk_rows: int,
    ring: BufferRing,
    cache: HashCache | None,
    stats: RecWriteStats,
    changed_only: bool = False,
    run_id: str = "",
) -> None:
    last_ms, last_seq = stream_last_id(client, keys.recs_stream)
    previous: pl.DataFrame | None = None
    if cache is not None:
        if cache.text is not None and cache.window_end == last_ms < window_end \
                and cache.run_id == run_id:
            previous = cache.text
        cache.clear()  # until this window is written in full
    if window_end < last_ms:
        text = _as_text(window, REC_FIELDS).with_row_index("seq")
        stats.old_windows += 1
        stats.skipped_entries += window.height
        _cond_hset_rows(client, keys.rec, text, cond_hset_sha, chunk_rows)
        return
    first_new = 0 if window_end > last_ms else last_seq + 1
    stats.skipped_entries += min(first_new, window.height)
    n_fields = len(REC_FIELDS)
    fields: list[Segment] = []
    for name in REC_FIELDS:
        fields += [Const(const_bulk(name)), Bulk(name)]
    hset = [Const(header(2 + 2 * n_fields, "HSET")), Bulk("device_id", keys.rec), *fields]
    hset_delta = [Header(2), Const(const_bulk("HSET")), Bulk("device_id", keys.rec),
                  *(Pair(name, name) for name in REC_FIELDS)]
    written: list[pl.DataFrame] = []
    if previous is not None:
        # The previous text of each row's device, in window order (null where absent).
        previous = window.select("device_id").join(
            previous, on="device_id", how="left", maintain_order="left"
        )
        if previous.height != window.height:  # duplicate device ids: play safe
            previous = None
    xadd = [
        Const(header(6 + 2 * n_fields, "XADD", keys.recs_stream, "MAXLEN", "~",
                     str(stream_maxlen))),
        Bulk("seq_text", f"{window_end}-"),
        *fields,
    ]
    with RawPipeline(client, depth=2) as pipe:
        for start in range(0, window.height, chunk_rows):
            # Text per chunk, so Redis gets the first chunk without waiting for the window.
            chunk = _as_text(window.slice(start, chunk_rows), REC_FIELDS).with_columns(
                pl.int_range(start, start + pl.len(), dtype=pl.Int64).alias("seq")
            ).with_columns(pl.col("seq").cast(pl.String).alias("seq_text"))
            # Template 0: the row's entry then its hash; 1: hash only (entry already there).
            choice = (chunk["seq"].to_numpy() < first_new).astype(np.int64)
            n_entries = int(chunk.height - choice.sum())
            if previous is None:
                payload = pack_rows(chunk, [xadd + hset, hset], choice, ring)
            else:
                skip = _unchanged(chunk, previous.slice(start, chunk_rows))
                if changed_only:  # no entry where the decision is the one already streamed
                    choice = (skip["action"] & skip["reason"]).astype(np.int64)
                    n_entries = int(chunk.height - choice.sum())
                payload = pack_rows(chunk, [xadd + hset_delta, hset_delta], choice, ring,
                                    skip=skip)
            if cache is not None:
                written.append(chunk.select(REC_FIELDS))
            # XADD replies are bulk ids (2 lines), HSET replies integers (1 line).
            pipe.submit(payload, n_entries + chunk.height, 2 * n_entries + chunk.height)
            stats.stream_entries += n_entries
        errors = pipe.drain()
    _check_errors(errors, stats)
    stats.delta_windows += previous is not None
    if cache is not None:
        cache.window_end, cache.run_id = window_end, run_id
        cache.text = pl.concat(written) if written else None


def _unchanged(chunk: pl.DataFrame, previous: pl.DataFrame) -> dict[str, np.ndarray]:
    """Per field, the rows whose value equals the one their hash holds (to leave out).

    ``previous`` is row-aligned with ``chunk``.
    """
    return {
        name: (chunk.get_column(name) == previous.get_column(name)).fill_null(False).to_numpy()
        for name in REC_FIELDS
        if name not in ("device_id", "window_end")  # window_end keeps the HSET non-empty
    }


def _check_errors(errors: list[str], stats: RecWriteStats) -> None:
    duplicates = sum(_DUPLICATE_ID in e for e in errors)
    if duplicates:
        # Another writer got there first: the entries exist, which is all we want.
        log.warning("%d stream entries already present (another writer?)", duplicates)
        stats.stream_entries -= duplicates
        stats.skipped_entries += duplicates
    others = [e for e in errors if _DUPLICATE_ID not in e]
    if others:
        msg = f"Redis rejected {len(others)} commands, first: {others[0]}"
        raise redis.ResponseError(msg)


def _cond_hset_rows(
    client: redis.Redis,
    key_prefix: str,
    text: pl.DataFrame,
    sha: str,
    chunk_rows: int,
) -> None:
    """HSET each row only where the stored window_end is not newer (replayed windows)."""
    n_fields = len(REC_FIELDS)
    per_script = 500
    cmp_index = REC_FIELDS.index("window_end") + 1
    names = "".join(const_bulk(f) for f in REC_FIELDS)
    values = pl.concat_str([bulk(pl.col(c)) for c in REC_FIELDS])
    key = bulk(pl.lit(key_prefix) + pl.col("device_id"))
    with RawPipeline(client) as pipe:
        for start in range(0, text.height, chunk_rows):
            chunk = text.slice(start, chunk_rows).with_columns(
                (pl.col("seq") // per_script).alias("_script")
            )
            groups = (
                chunk.lazy()
                .group_by("_script", maintain_order=True)
                .agg(key.str.join("").alias("k"), values.str.join("").alias("v"), pl.len())
                .collect()
            )
            parts = []
            for k, v, n in groups.select("k", "v", "len").iter_rows():
                n_args = 3 + n + 3 + n_fields + n * n_fields
                parts.append(
                    header(n_args, "EVALSHA", sha, str(n)) + k
                    + const_bulk(str(n_fields)) + const_bulk("window_end")
                    + const_bulk(str(cmp_index)) + names + v
                )
            pipe.submit("".join(parts).encode(), len(parts), len(parts))
        errors = pipe.drain()
    if errors:
        msg = f"Redis rejected {len(errors)} conditional writes, first: {errors[0]}"
        raise redis.ResponseError(msg)


def _write_summaries(
    client: redis.Redis, keys: RedisKeys, window: pl.DataFrame, cond_hset_sha: str
) -> None:
    summary = _as_text(summarize(window), list(SUMMARY_FIELDS))
    rows = summary.rows()
    hash_keys = [keys.site_summary(r[0]) if r[0] else keys.fleet_summary for r in rows]
    args: list[str] = [str(len(SUMMARY_FIELDS)), "window_end",
                       str(SUMMARY_FIELDS.index("window_end") + 1), *SUMMARY_FIELDS]
    for row in rows:
        args.extend(row)
    pipe = client.pipeline(transaction=False)
    pipe.evalsha(cond_hset_sha, len(hash_keys), *hash_keys, *args)
    sites = [r[0] for r in rows if r[0]]
    if sites:
        pipe.sadd(keys.sites, *sites)
    pipe.execute()
