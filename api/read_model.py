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
import gc
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
    "parse_entry_fields",
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


# Entries per XREAD while following: parsing one batch holds the event loop.
FOLLOW_BATCH = 5_000


class Rec:
    """One device's latest recommendation, kept as the bytes Redis sent.

    ``fields`` is the stream entry's ``[name, value, ...]`` list (``REC_FIELDS`` order);
    nothing else is decoded on arrival but the device id and window end, so following a
    310,000-device window costs about a microsecond per entry beyond parsing the reply.
    The JSON document is made on the first request that needs it and then reused.
    """

    __slots__ = ("_body", "device_id", "fields", "window_end")

    def __init__(self, fields: list[bytes], window_end: int, device_id: str) -> None:
        self.fields = fields
        self.window_end = window_end
        self.device_id = device_id
        self._body: bytes | None = None

    @property
    def device_type(self) -> str:
        return _name(self.fields[_V_TYPE])

    @property
    def site(self) -> str:
        return _name(self.fields[_V_SITE])

    @property
    def action(self) -> str:
        return _name(self.fields[_V_ACTION])

    @property
    def state(self) -> str:
        return device_state(self.device_type, self.action, _name(self.fields[_V_REASON]))

    @property
    def body(self) -> bytes:
        """The device's JSON document (the ``Resource`` schema of docs/api.md)."""
        if self._body is None:
            doc: dict[str, Any] = {}
            for name, v in zip(REC_FIELDS, self.fields[1::2], strict=True):
                text = v.decode()
                if name in _INT_FIELDS:
                    doc[name] = _num(text, True)
                elif name in _FLOAT_FIELDS:
                    value = _num(text, False)
                    doc[name] = value if value is None or value == value else None  # NaN
                else:
                    doc[name] = text
            doc["state"] = self.state
            self._body = orjson.dumps(doc)
        return self._body


_I_DEVICE = REC_FIELDS.index("device_id")
_I_TYPE = REC_FIELDS.index("device_type")
_I_SITE = REC_FIELDS.index("site")
_I_ACTION = REC_FIELDS.index("action")
_I_REASON = REC_FIELDS.index("reason")
_I_END = REC_FIELDS.index("window_end")
# Positions in an entry's [name, value, ...] list.
_V_DEVICE, _V_TYPE, _V_SITE, _V_ACTION, _V_REASON, _V_END = (
    2 * i + 1 for i in (_I_DEVICE, _I_TYPE, _I_SITE, _I_ACTION, _I_REASON, _I_END)
)
_N_FIELDS = 2 * len(REC_FIELDS)
_FIELD_NAMES = [f.encode() for f in REC_FIELDS]
_NAMES: dict[bytes, str] = {}
# KEYS: hashes; ARGV: field names. Returns each hash's values in ARGV order.
_HMGET_MANY_LUA = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HMGET', key, unpack(ARGV)) end
return out
"""


def _name(raw: bytes) -> str:
    """Decoded and shared: sites, types, actions and reasons repeat across the fleet."""
    text = _NAMES.get(raw)
    if text is None:
        if len(_NAMES) > 100_000:
            _NAMES.clear()
        text = _NAMES[raw] = raw.decode()
    return text


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


def _rec_of_fields(fields: list[bytes]) -> Rec | None:
    try:
        end = int(fields[_V_END])
    except ValueError:
        return None
    device = fields[_V_DEVICE]
    return Rec(fields, end, device.decode()) if device else None


def _interleave(values: list[bytes] | tuple[bytes, ...]) -> list[bytes]:
    fields: list[bytes] = [b""] * _N_FIELDS
    fields[0::2] = _FIELD_NAMES
    fields[1::2] = values
    return fields


def parse_rec(raw: dict) -> Rec | None:
    """A hash or stream entry as a dict (bytes keys and values); None when incomplete."""
    values = []
    for name in _FIELD_NAMES:
        v = raw.get(name)
        if v is None:
            return None
        values.append(v if isinstance(v, bytes) else str(v).encode())
    return _rec_of_fields(_interleave(values))


def parse_entry_fields(fields: list[bytes]) -> Rec | None:
    """A raw stream entry ``[name, value, ...]``; the sink writes ``REC_FIELDS`` in order."""
    if (
        len(fields) == _N_FIELDS
        and fields[_V_DEVICE - 1] == b"device_id"
        and fields[_V_END - 1] == b"window_end"
        and fields[-2] == _FIELD_NAMES[-1]
    ):
        return _rec_of_fields(fields)
    return parse_rec(dict(zip(fields[0::2], fields[1::2], strict=False)))


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
        # XREAD replies stay hiredis' nested lists: redis-py's per-entry dict building
        # would cost more than the rest of following the stream. This client is ours alone.
        client.set_response_callback("XREAD", lambda response, **_: response)
        self.client = client
        self._hmget_many = client.register_script(_HMGET_MANY_LUA)
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
        self._gc_held = False

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
                try:
                    await self._follow()
                finally:
                    self._collect_when_caught_up(behind=False)
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
        async for keys in self._scan(self.keys.rec):
            # One script call reads 2,000 hashes in REC_FIELDS order: far fewer round trips
            # and parses than one HGETALL each (the load of 310,000 devices is what it costs).
            for values in await self._hmget_many(keys=keys, args=_FIELD_NAMES):
                if values and None not in values:
                    rec = _rec_of_fields(_interleave(values))
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
        self.sorted_ids()  # build the id index now, not in the first list request
        self._rec_id, self._wl_id = rec_last, wl_last
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
            len(recs), len(workloads), time.monotonic() - started,
        )

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
            rec_last, rec_deleted = await self._stream_last(self.keys.recs_stream)
            if _id(rec_last) < _id(self._rec_id) or _id(rec_deleted) > _id(self._rec_id):
                log.warning("read model: stream reset or trimmed past %s; reloading", self._rec_id)
                self.ready = False
                return
            reply = await self.client.xread(
                {self.keys.recs_stream: self._rec_id, self.keys.workloads_stream: self._wl_id},
                # Small batches: parsing one holds the event loop, and requests wait.
                count=FOLLOW_BATCH,
                block=self.block_ms,
            )
            # RESP3 answers a map of stream -> entries, RESP2 a list of pairs.
            streams = reply.items() if isinstance(reply, dict) else (reply or [])
            longest = 0
            for stream, entries in streams:
                longest = max(longest, len(entries))
                name = _text(stream)
                if name == self.keys.recs_stream:
                    self._apply_recs(entries)
                else:
                    self._apply_workloads(
                        [(i, dict(zip(f[0::2], f[1::2], strict=False))) for i, f in entries]
                    )
            behind = longest >= FOLLOW_BATCH
            self._collect_when_caught_up(behind)
            if not behind:
                # Summaries and prices once the window is read, not once per batch of it.
                await self._small()
            self.synced_at = time.monotonic()
            self.error = None

    def _collect_when_caught_up(self, behind: bool) -> None:
        """Hold the cyclic collector while a backlog is read; freeze the survivors after.

        A 310,000-device window arrives as 62 full batches, each leaving thousands of new
        long-lived records; the collector's full passes over them (every few batches) held
        the event loop for seconds, so the last device of a window was served 8-10 s after
        the sink wrote it. Records hold no cycles, so nothing waits on the collector; one
        young-generation pass at the end and a freeze (as after the first load) keep later
        passes small.
        """
        if behind:
            if gc.isenabled():
                gc.disable()
                self._gc_held = True
        elif self._gc_held:
            gc.collect(0)
            gc.freeze()
            gc.enable()
            self._gc_held = False

    def _apply_recs(self, entries: list) -> None:
        recs = self.recs
        if entries:
            self._rec_id = _text(entries[-1][0])
        for _, fields in entries:
            rec = parse_entry_fields(fields)
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
