"""The in-process read model: the job's current Redis state, kept in memory.

Point reads are the API's hot path, and one Redis round trip per request costs more than
the rest of the request. So each API process keeps a copy of

- every device's latest recommendation: the sink's per-site columnar snapshots
  (sinks/redis/snapshot.py), decoded into :class:`api.rec_store.RecStore`;
- every ``workload:{id}`` hash;
- the ``prices`` hash and the site and fleet summaries,

loaded once and then kept current: each pass reads the small snapshot index (site ->
newest window) and GETs and decodes only the sites whose window moved, follows the
``workloads`` stream with a short ``XREAD BLOCK`` and re-reads the small hashes. A pass
ends at most every ``block_ms`` (0.1 s), so a new window is served within one pass plus
its decode. A site missing from the index (Redis emptied) is dropped; a reset or trimmed
workloads stream reloads the workloads from their hashes.

``staleness_s`` is the time since the last successful pass; the routes answer 503 rather
than serve a copy older than ``--max-staleness-s`` (Redis unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import RedisError

from api.rec_store import REC_FIELDS, Rec, RecStore, SiteSnapshot, device_state, parse_rec
from sinks.redis.layout import RedisKeys
from sinks.redis.snapshot import decode_snapshot

__all__ = [
    "REC_FIELDS",
    "ReadModel",
    "Rec",
    "device_state",
    "parse_rec",
    "parse_workload",
]

log = logging.getLogger(__name__)

_SUMMARY_INTS = frozenset(
    {"window_start", "window_end", "devices", "n_gpu", "n_asic", "n_mine", "n_curtail",
     "n_serve", "n_offer", "n_power_down"}
)
_WL_INTS = frozenset({"priority", "updated_ts"})


# Entries per XREAD while following: parsing one batch holds the event loop.
FOLLOW_BATCH = 5_000


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _num(text: str, as_int: bool) -> int | float | None:
    if text == "":
        return None
    try:
        return int(text) if as_int else float(text)
    except ValueError:
        return None


def parse_workload(raw: dict) -> dict[str, Any]:
    """A ``workload:{id}`` hash as a document (times in ms, GPUs as a list)."""
    doc: dict[str, Any] = {}
    for k, v in raw.items():
        key, text = _text(k), _text(v)
        if key in _WL_INTS or key.endswith("_ts"):
            doc[key] = _num(text, True)
        elif key == "gpus":
            doc[key] = [g for g in text.split(",") if g]
        else:
            doc[key] = text
    return doc


def parse_summary(raw: dict) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for k, v in raw.items():
        key, text = _text(k), _text(v)
        if key == "site":
            doc[key] = text
        else:
            doc[key] = _num(text, key in _SUMMARY_INTS)
    return doc


def parse_prices(raw: dict) -> dict[str, dict[str, Any]]:
    """``{key: {"kind", "scope", "value", "ts"}}`` from the prices hash."""
    values: dict[str, str] = {}
    times: dict[str, int] = {}
    for k, v in raw.items():
        key, text = _text(k), _text(v)
        if key.endswith(":ts"):
            t = _num(text, True)
            if t is not None:
                times[key[:-3]] = int(t)
        else:
            values[key] = text
    out: dict[str, dict[str, Any]] = {}
    for key, text in values.items():
        value = _num(text, False)
        if value is None:
            continue
        kind, _, scope = key.partition(":")
        out[key] = {"key": key, "kind": kind, "scope": scope, "value": value, "ts": times.get(key)}
    return out


class ReadModel:
    """Follows one prefix of the job's Redis outputs; see the module docstring."""

    def __init__(self, client: aredis.Redis, keys: RedisKeys, block_ms: int = 100) -> None:
        self.client = client
        self.keys = keys
        self.block_ms = block_ms
        self.recs = RecStore()
        self.workloads: dict[str, dict[str, Any]] = {}
        self.prices: dict[str, dict[str, Any]] = {}
        self.sites: dict[str, dict[str, Any]] = {}
        self.fleet: dict[str, Any] = {}
        self.ready = False
        self.synced_at = 0.0
        self.error: str | None = None
        self._wl_id = "0-0"
        self._task: asyncio.Task[None] | None = None

    # --- queries --------------------------------------------------------------------------

    @property
    def staleness_s(self) -> float:
        return time.monotonic() - self.synced_at if self.synced_at else float("inf")

    # --- keeping it current ---------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="read-model")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                if not self.ready:
                    await self._load()
                await self._follow()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.error is None:
                    log.warning("read model: Redis unreachable (%s); retrying", type(exc).__name__)
                self.error = f"{type(exc).__name__}: {str(exc)[:120]}"
                await asyncio.sleep(0.5)
            except Exception:  # keep following whatever one bad entry does
                log.exception("read model pass failed")
                await asyncio.sleep(0.5)

    async def _stream_last(self, key: str) -> tuple[str, str]:
        """``(last generated id, largest deleted id)`` of a stream; ``"0-0"`` when absent.

        Trimming records the largest id it removed (Redis >= 7): one above the last id
        read means entries were trimmed away unread.
        """
        try:
            info = await self.client.xinfo_stream(key)
        except RedisError as exc:
            if "no such key" in str(exc).lower():
                return "0-0", "0-0"
            raise
        deleted = info.get("max-deleted-entry-id") or "0-0"
        return _text(info["last-generated-id"]), _text(deleted)

    async def _load(self) -> None:
        started = time.monotonic()
        wl_last, _ = await self._stream_last(self.keys.workloads_stream)
        self.recs = RecStore()
        await self._snapshots()
        workloads: dict[str, dict[str, Any]] = {}
        async for batch in self._hashes(self.keys.workload):
            for raw in batch:
                doc = parse_workload(raw)
                if doc.get("workload_id"):
                    workloads[doc["workload_id"]] = doc
        self.workloads = workloads
        self._wl_id = wl_last
        await self._small()
        self.ready = True
        self.synced_at = time.monotonic()
        self.error = None
        # Hundreds of thousands of long-lived objects: keep them out of every later
        # collection, whose full passes would otherwise stall requests for a long time.
        gc.collect()
        gc.freeze()
        log.info(
            "read model loaded: %d devices, %d workloads in %.1f s",
            len(self.recs), len(workloads), time.monotonic() - started,
        )

    async def _snapshots(self) -> None:
        """GET and decode the sites whose snapshot moved; drop sites Redis no longer has."""
        index = {
            _text(k): int(v)
            for k, v in (await self.client.hgetall(self.keys.snapshots)).items()
        }
        for site in [s for s in self.recs.sites if s not in index]:
            self.recs.drop(site)
        changed = False
        for site, window_end in sorted(index.items()):
            held = self.recs.sites.get(site)
            if held is not None and held.window_end == window_end:
                continue
            raw = await self.client.get(self.keys.snapshot(site))
            if not raw:
                continue
            # Decoding and indexing take tens of ms per site: off the event loop.
            snap = await asyncio.to_thread(_decode, site, raw, window_end)
            self.recs.replace(snap)
            changed = True
        if changed:  # the fleet listing now, not in the first list request
            await asyncio.to_thread(self.recs.listing)

    async def _scan(self, prefix: str, batch: int = 2000):  # type: ignore[no-untyped-def]
        keys: list[bytes] = []
        async for key in self.client.scan_iter(match=f"{prefix}*", count=10_000):
            keys.append(key)
            if len(keys) >= batch:
                yield keys
                keys = []
        if keys:
            yield keys

    async def _hashes(self, prefix: str, batch: int = 2000):  # type: ignore[no-untyped-def]
        async for keys in self._scan(prefix, batch):
            yield await self._hgetall_many(keys)

    async def _hgetall_many(self, keys: list[bytes]) -> list[dict]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [r for r in await pipe.execute() if r]

    async def _small(self) -> None:
        """Prices and summaries: a few hashes, re-read whole each pass."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.prices)
        pipe.hgetall(self.keys.fleet_summary)
        pipe.smembers(self.keys.sites)
        prices, fleet, sites = await pipe.execute()
        names = sorted(_text(s) for s in sites)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.site_summary(name))
        summaries = await pipe.execute() if names else []
        self.prices = parse_prices(prices)
        self.fleet = parse_summary(fleet) if fleet else {}
        self.sites = {
            name: parse_summary(raw) for name, raw in zip(names, summaries, strict=True) if raw
        }

    async def _follow(self) -> None:
        while True:
            wl_last, wl_deleted = await self._stream_last(self.keys.workloads_stream)
            if _id(wl_last) < _id(self._wl_id) or _id(wl_deleted) > _id(self._wl_id):
                log.warning("read model: workloads stream reset or trimmed past %s; reloading",
                            self._wl_id)
                self.ready = False
                return
            reply = await self.client.xread(
                {self.keys.workloads_stream: self._wl_id}, count=FOLLOW_BATCH,
                block=self.block_ms,
            )
            # RESP3 answers a map of stream -> entries, RESP2 a list of pairs.
            streams = reply.items() if isinstance(reply, dict) else (reply or [])
            for _stream, entries in streams:
                self._apply_workloads(entries)
            await self._snapshots()
            await self._small()
            self.synced_at = time.monotonic()
            self.error = None

    def _apply_workloads(self, entries: list) -> None:
        for entry_id, raw in entries:
            self._wl_id = _text(entry_id)
            ev = {_text(k): _text(v) for k, v in raw.items()}
            wid = ev.get("workload_id")
            if not wid:
                continue
            ts = _num(ev.get("ts", ""), True) or 0
            doc = self.workloads.setdefault(wid, {"workload_id": wid})
            to_state = ev.get("to_state", "")
            if ts >= (doc.get("updated_ts") or 0):
                doc.update(
                    state=to_state,
                    prev_state=ev.get("from_state", ""),
                    priority=_num(ev.get("priority", ""), True),
                    gpus=[g for g in ev.get("gpus", "").split(",") if g],
                    site=ev.get("site", ""),
                    reason=ev.get("reason", ""),
                    updated_ts=ts,
                )
            if to_state:
                key = f"{to_state}_ts"
                seen = doc.get(key)
                if seen is None or (ts < seen if to_state == "submitted" else ts > seen):
                    doc[key] = ts


def _decode(site: str, raw: bytes, window_end: int) -> SiteSnapshot:
    return SiteSnapshot(site, decode_snapshot(raw), window_end)


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
