"""The API's copy of every device's latest recommendation, kept as the sink's snapshots.

The Redis sink writes each site's latest recommendations as one Arrow IPC value
(sinks/redis/snapshot.py). :class:`RecStore` keeps the decoded frame of every site and
answers from it: a new 310,000-device window costs one GET and one decode per site, where
the stream would mean parsing 310,000 entries in this process. A device's JSON document
is made on the first request that needs it and then reused until its site's next window.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator
from typing import Any

import orjson
import polars as pl

from hcp.schemas import REC_SCHEMA

__all__ = ["REC_FIELDS", "Rec", "RecStore", "SiteSnapshot", "device_state", "parse_rec"]

REC_FIELDS = tuple(REC_SCHEMA)
_INTS = frozenset(k for k, t in REC_SCHEMA.items() if str(t).startswith("Int"))
_FLOATS = frozenset(k for k, t in REC_SCHEMA.items() if str(t).startswith("Float"))
_STRINGS = frozenset(REC_FIELDS) - _INTS - _FLOATS
_I = {name: i for i, name in enumerate(REC_FIELDS)}


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


def _state_expr() -> pl.Expr:
    """:func:`device_state` over columns."""
    gpu = (
        pl.when(pl.col("reason") == "running_workload").then(pl.lit("busy"))
        .when(pl.col("reason") == "device_down").then(pl.lit("down"))
        .otherwise(pl.lit("idle"))
    )
    asic = pl.when(pl.col("action") == "mine").then(pl.lit("mining")).otherwise(pl.lit("curtailed"))
    return pl.when(pl.col("device_type") == "gpu").then(gpu).otherwise(asic).alias("state")


class Rec:
    """One device's latest recommendation: typed values in ``REC_FIELDS`` order."""

    __slots__ = ("_body", "values")

    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = values
        self._body: bytes | None = None

    @property
    def device_id(self) -> str:
        return self.values[_I["device_id"]]

    @property
    def window_end(self) -> int:
        return self.values[_I["window_end"]]

    @property
    def device_type(self) -> str:
        return self.values[_I["device_type"]]

    @property
    def site(self) -> str:
        return self.values[_I["site"]]

    @property
    def action(self) -> str:
        return self.values[_I["action"]]

    @property
    def state(self) -> str:
        return device_state(self.device_type, self.action, self.values[_I["reason"]])

    @property
    def body(self) -> bytes:
        """The device's JSON document (the ``Resource`` schema of docs/api.md)."""
        if self._body is None:
            doc: dict[str, Any] = dict(zip(REC_FIELDS, self.values, strict=True))
            for name in _FLOATS:
                v = doc[name]
                if v is not None and math.isnan(v):
                    doc[name] = None
            doc["state"] = self.state
            self._body = orjson.dumps(doc)
        return self._body


def _typed(name: str, text: str) -> Any:
    if name in _STRINGS:
        return text
    if text == "":
        return None
    try:
        return int(text) if name in _INTS else float(text)
    except ValueError:
        return None


def parse_rec(raw: dict) -> Rec | None:
    """A ``rec:{device}`` hash (bytes or str keys and values); None when incomplete."""
    text = {(k.decode() if isinstance(k, bytes) else str(k)):
            (v.decode() if isinstance(v, bytes) else str(v)) for k, v in raw.items()}
    if any(name not in text for name in REC_FIELDS):
        return None
    values = tuple(_typed(name, text[name]) for name in REC_FIELDS)
    if not values[_I["device_id"]] or values[_I["window_end"]] is None:
        return None
    return Rec(values)


class SiteSnapshot:
    """One site's decoded snapshot: rows sorted by device id, and the Recs made from them."""

    __slots__ = ("df", "recs", "rows", "site", "window_end")

    def __init__(self, site: str, df: pl.DataFrame, window_end: int) -> None:
        # Strings never null in a Rec (the hashes hold "" for null), as in parse_rec.
        self.df = df.with_columns(pl.col(c).fill_null("") for c in sorted(_STRINGS))
        self.site = site
        self.window_end = window_end
        self.rows = {device_id: i for i, device_id in enumerate(self.df["device_id"].to_list())}
        self.recs: dict[str, Rec] = {}

    def rec(self, device_id: str) -> Rec | None:
        rec = self.recs.get(device_id)
        if rec is None:
            row = self.rows.get(device_id)
            if row is None:
                return None
            rec = self.recs[device_id] = Rec(self.df.row(row))
        return rec


_LISTING_SCHEMA = {"device_id": pl.String, "device_type": pl.String, "site": pl.String,
                   "action": pl.String, "state": pl.String}
_LISTING_COLS = ["device_id", "device_type", "site", "action", "reason"]


class RecStore:
    """Latest Rec per device over every site's snapshot (a read-only mapping)."""

    def __init__(self) -> None:
        self.sites: dict[str, SiteSnapshot] = {}
        self._owner: dict[str, SiteSnapshot] = {}
        self._shared = False  # has any device been in two sites' snapshots?
        # Per site selection (None: all): its devices by id, and the ids as a list for bisect.
        self._listings: dict[tuple[str, ...] | None, tuple[pl.DataFrame, list[str]]] = {}

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._owner

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner)

    def get(self, device_id: str) -> Rec | None:
        snap = self._owner.get(device_id)
        return snap.rec(device_id) if snap is not None else None

    def replace(self, snap: SiteSnapshot) -> None:
        """Make ``snap`` the site's rows; a device also in another site goes to the site
        whose row is newer (it moved)."""
        old = self.sites.get(snap.site)
        self.sites[snap.site] = snap
        owner = self._owner
        if old is not None:
            for device_id in old.rows.keys() - snap.rows.keys():
                if owner.get(device_id) is old:
                    del owner[device_id]
        ends = snap.df["window_end"]
        for device_id, row in snap.rows.items():
            held = owner.get(device_id)
            if held is None or held is old or held.site == snap.site:
                owner[device_id] = snap
                continue
            self._shared = True
            if held.df["window_end"][held.rows[device_id]] <= ends[row]:
                owner[device_id] = snap
        self._listings.clear()

    def drop(self, site: str) -> None:
        snap = self.sites.pop(site, None)
        if snap is not None:
            for device_id in snap.rows:
                if self._owner.get(device_id) is snap:
                    del self._owner[device_id]
            self._listings.clear()

    def listing(self, sites: list[str] | None = None) -> tuple[pl.DataFrame, list[str]]:
        """device_id, device_type, site, action, state of the sites' devices (None: all),
        by device id, and the ids as a list."""
        key = tuple(sorted(set(sites))) if sites else None
        cached = self._listings.get(key)
        if cached is None:
            names = key if key is not None else tuple(self.sites)
            frames = [self.sites[n].df.select(_LISTING_COLS) for n in names if n in self.sites]
            if frames:
                df = pl.concat(frames).with_columns(_state_expr()).drop("reason")
                if self._shared:  # a device in two sites' snapshots is listed under its owner
                    owned = pl.Series([self._owner[i].site for i in df["device_id"]],
                                      dtype=pl.String)
                    df = df.filter(pl.col("site") == owned)
                if len(frames) > 1:
                    df = df.sort("device_id")
            else:
                df = pl.DataFrame(schema=_LISTING_SCHEMA)
            if len(self._listings) > 64:
                self._listings.clear()
            cached = self._listings[key] = (df, df["device_id"].to_list())
        return cached

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
        df, ids = self.listing(sites)
        start = bisect_right(ids, after) if after else 0
        conds = [
            pl.col(name).is_in(sorted(values))
            for name, values in (("device_type", types), ("action", actions), ("state", states))
            if values
        ]
        found: list[str] = []
        if not conds:
            found = ids[start:start + limit + 1]
        else:
            # Chunk by chunk from the cursor: a page of dense matches reads one chunk, not
            # the whole fleet.
            chunk = max(2048, 8 * limit)
            keep = pl.all_horizontal(conds)
            while start < len(ids) and len(found) <= limit:
                part = df.slice(start, chunk).filter(keep)
                found += part["device_id"].head(limit + 1 - len(found)).to_list()
                start += chunk
        out = [rec for i in found[:limit] if (rec := self.get(i)) is not None]
        return out, (out[-1].device_id if len(found) > limit and out else None)
