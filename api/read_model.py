"""The in-process read model: the job's current Redis state, kept in memory.

Point reads are the API's hot path, and one Redis round trip per request costs more than
the rest of the request. So each API process keeps a copy of

- every ``rec:{device}`` hash, as ready-to-send JSON bytes plus the few fields filters use;
- every ``workload:{id}`` hash;
- the ``prices`` hash and the site and fleet summaries,

loaded once (SCAN + pipelined HGETALL) and then kept current by following the
``recommendations`` and ``workloads`` streams with ``XREAD BLOCK`` (the sink XADDs each
entry before the hash write, so the stream is never behind the hashes) and re-reading the
small hashes each pass. A pass ends at most every 0.5 s, so the copy is at most about one
second behind Redis. A device's entry only moves forward in ``window_end`` (a replay of
older windows does not move it back, as in Redis). When the stream was trimmed past the
last entry read, or Redis was emptied, the copy is rebuilt from the hashes.

``staleness_s`` is the time since the last successful pass; the routes answer 503 rather
than serve a copy older than ``--max-staleness-s`` (Redis unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aredis
from redis.exceptions import RedisError

from hcp.schemas import REC_SCHEMA
from sinks.redis.layout import RedisKeys

__all__ = [
    "REC_FIELDS",
    "ReadModel",
    "Rec",
    "device_state",
    "parse_rec",
    "parse_workload",
]

log = logging.getLogger(__name__)

REC_FIELDS = tuple(REC_SCHEMA)
_INT_FIELDS = frozenset(k for k, t in REC_SCHEMA.items() if str(t).startswith("Int"))
_FLOAT_FIELDS = frozenset(k for k, t in REC_SCHEMA.items() if str(t).startswith("Float"))
_SUMMARY_INTS = frozenset(
    {"window_start", "window_end", "devices", "n_gpu", "n_asic", "n_mine", "n_curtail",
     "n_serve", "n_offer", "n_power_down"}
)
_WL_INTS = frozenset({"priority", "updated_ts"})


@dataclass(frozen=True, slots=True)
class Rec:
    """One device's latest recommendation: filter fields and its JSON document."""

    device_id: str
    window_end: int
    device_type: str
    site: str
    action: str
    state: str
    body: bytes


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _num(text: str, as_int: bool) -> int | float | None:
    if text == "":
        return None
    try:
        return int(text) if as_int else float(text)
    except ValueError:
        return None


def device_state(device_type: str, action: str, reason: str) -> str:
    """The device state a recommendation implies (the job keeps no state field in Redis).

    GPUs: ``busy`` while serving a workload, ``down`` when reported down, else ``idle``;
    ASICs: ``mining`` when told to mine, else ``curtailed``.
    """
    if device_type == "gpu":
        if reason == "running_workload":
            return "busy"
        return "down" if reason == "device_down" else "idle"
    return "mining" if action == "mine" else "curtailed"


def parse_rec(raw: dict) -> Rec | None:
    """A hash or stream entry (bytes or str) as a :class:`Rec`; None when incomplete."""
    doc: dict[str, Any] = {}
    for name in REC_FIELDS:
        v = raw.get(name.encode()) if name.encode() in raw else raw.get(name)
        if v is None:
            return None
        text = _text(v)
        if name in _INT_FIELDS:
            doc[name] = _num(text, True)
        elif name in _FLOAT_FIELDS:
            value = _num(text, False)
            doc[name] = value if value is None or value == value else None  # NaN -> null
        else:
            doc[name] = text
    if doc["window_end"] is None or not doc["device_id"]:
        return None
    state = device_state(doc["device_type"], doc["action"], doc["reason"])
    doc["state"] = state
    return Rec(
        device_id=doc["device_id"],
        window_end=int(doc["window_end"]),
        device_type=doc["device_type"],
        site=doc["site"],
        action=doc["action"],
        state=state,
        body=orjson.dumps(doc),
    )


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


@dataclass
class _Index:
    """Sorted device ids, overall and per site; rebuilt only when the membership changes."""

    ids: list[str] = field(default_factory=list)
    by_site: dict[str, list[str]] = field(default_factory=dict)
    dirty: bool = True


class ReadModel:
    """Follows one prefix of the job's Redis outputs; see the module docstring."""

    def __init__(self, client: aredis.Redis, keys: RedisKeys, block_ms: int = 500) -> None:
        self.client = client
        self.keys = keys
        self.block_ms = block_ms
        self.recs: dict[str, Rec] = {}
        self.workloads: dict[str, dict[str, Any]] = {}
        self.prices: dict[str, dict[str, Any]] = {}
        self.sites: dict[str, dict[str, Any]] = {}
        self.fleet: dict[str, Any] = {}
        self.ready = False
        self.synced_at = 0.0
        self.error: str | None = None
        self._rec_id = "0-0"
        self._wl_id = "0-0"
        self._index = _Index()
        self._task: asyncio.Task[None] | None = None

    # --- queries --------------------------------------------------------------------------

    @property
    def staleness_s(self) -> float:
        return time.monotonic() - self.synced_at if self.synced_at else float("inf")

    def sorted_ids(self, site: str | None = None) -> list[str]:
        idx = self._index
        if idx.dirty:
            ids = sorted(self.recs)
            by_site: dict[str, list[str]] = {}
            for device_id in ids:
                by_site.setdefault(self.recs[device_id].site, []).append(device_id)
            self._index = idx = _Index(ids, by_site, False)
        return idx.ids if site is None else idx.by_site.get(site, [])

    def page(
        self,
        *,
        sites: list[str] | None,
        types: set[str] | None,
        actions: set[str] | None,
        states: set[str] | None,
        after: str | None,
        limit: int,
    ) -> tuple[list[Rec], str | None]:
        """Recs in device-id order after ``after`` that pass the filters; next cursor or None."""
        lists = [self.sorted_ids(s) for s in sites] if sites else [self.sorted_ids()]
        ids = sorted(i for lst in lists for i in lst) if len(lists) > 1 else lists[0]
        start = bisect_right(ids, after) if after else 0
        out: list[Rec] = []
        recs = self.recs
        for i in range(start, len(ids)):
            rec = recs.get(ids[i])
            if rec is None:
                continue
            if types and rec.device_type not in types:
                continue
            if actions and rec.action not in actions:
                continue
            if states and rec.state not in states:
                continue
            if len(out) == limit:
                return out, out[-1].device_id
            out.append(rec)
        return out, None

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
        rec_last, _ = await self._stream_last(self.keys.recs_stream)
        wl_last, _ = await self._stream_last(self.keys.workloads_stream)
        recs: dict[str, Rec] = {}
        async for batch in self._hashes(self.keys.rec):
            for raw in batch:
                rec = parse_rec(raw)
                if rec is not None:
                    recs[rec.device_id] = rec
        workloads: dict[str, dict[str, Any]] = {}
        async for batch in self._hashes(self.keys.workload):
            for raw in batch:
                doc = parse_workload(raw)
                if doc.get("workload_id"):
                    workloads[doc["workload_id"]] = doc
        self.recs, self.workloads = recs, workloads
        self._index = _Index()
        self._rec_id, self._wl_id = rec_last, wl_last
        await self._small()
        self.ready = True
        self.synced_at = time.monotonic()
        self.error = None
        log.info(
            "read model loaded: %d devices, %d workloads in %.1f s",
            len(recs), len(workloads), time.monotonic() - started,
        )

    async def _hashes(self, prefix: str, batch: int = 2000):  # type: ignore[no-untyped-def]
        keys: list[bytes] = []
        async for key in self.client.scan_iter(match=f"{prefix}*", count=10_000):
            keys.append(key)
            if len(keys) >= batch:
                yield await self._hgetall_many(keys)
                keys = []
        if keys:
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
            rec_last, rec_deleted = await self._stream_last(self.keys.recs_stream)
            if _id(rec_last) < _id(self._rec_id) or _id(rec_deleted) > _id(self._rec_id):
                log.warning("read model: stream reset or trimmed past %s; reloading", self._rec_id)
                self.ready = False
                return
            reply = await self.client.xread(
                {self.keys.recs_stream: self._rec_id, self.keys.workloads_stream: self._wl_id},
                count=20_000,
                block=self.block_ms,
            )
            for stream, entries in reply or []:
                name = _text(stream)
                if name == self.keys.recs_stream:
                    self._apply_recs(entries)
                else:
                    self._apply_workloads(entries)
            await self._small()
            self.synced_at = time.monotonic()
            self.error = None

    def _apply_recs(self, entries: list) -> None:
        recs = self.recs
        for entry_id, raw in entries:
            self._rec_id = _text(entry_id)
            rec = parse_rec(raw)
            if rec is None:
                continue
            old = recs.get(rec.device_id)
            if old is None:
                self._index.dirty = True
            elif old.window_end > rec.window_end:
                continue
            recs[rec.device_id] = rec

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


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
