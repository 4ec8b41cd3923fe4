"""Market prices by key, with as-of lookups at a window's end (SPEC section 2).

Prices are a few per minute per key, so a sorted list per key is all it takes; lookups
happen once per window and per site or model, never per device.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

import polars as pl

__all__ = ["DEFAULT_BLOCK_REWARD", "PriceBook", "price_rows"]

DEFAULT_BLOCK_REWARD = 3.125


def price_rows(df: pl.DataFrame) -> pl.DataFrame:
    """Decoded price messages as stored rows: ts, kind, scope, key, value."""
    scope = (
        pl.when(pl.col("kind").is_in(["electricity_usd_mwh", "power_cap_mw"]))
        .then(pl.col("site"))
        .when(pl.col("kind") == "gpu_spot_usd_hr")
        .then(pl.col("model"))
        .otherwise(pl.lit(""))
    )
    return df.select(
        pl.col("ts"),
        pl.col("kind"),
        scope.alias("scope"),
        pl.when(scope == "")
        .then(pl.col("kind"))
        .otherwise(pl.col("kind") + ":" + scope)
        .alias("key"),
        pl.col("value"),
    )


class PriceBook:
    """Every accepted price per key, ordered by event time then arrival.

    One key always comes from one partition, so arrival order among equal timestamps is
    the partition's order and the book is the same whatever the interleaving of partitions.
    """

    def __init__(self) -> None:
        self._ts: dict[str, list[int]] = {}
        self._values: dict[str, list[float]] = {}

    def add(self, rows: pl.DataFrame) -> None:
        for key, ts, value in zip(rows["key"], rows["ts"], rows["value"], strict=True):
            times = self._ts.setdefault(key, [])
            values = self._values.setdefault(key, [])
            at = bisect_right(times, ts)
            times.insert(at, ts)
            values.insert(at, value)

    def as_of(self, key: str, before_ts: int, default: float | None = None) -> float | None:
        """The latest value of ``key`` with ``ts < before_ts``."""
        times = self._ts.get(key)
        if not times:
            return default
        at = bisect_left(times, before_ts) - 1
        return self._values[key][at] if at >= 0 else default

    def age_ms(self, key: str, at_ts: int) -> float:
        """How old at ``at_ts`` the value :meth:`as_of` returns is; inf when there is none."""
        times = self._ts.get(key)
        if not times:
            return float("inf")
        at = bisect_left(times, at_ts) - 1
        return float(at_ts - times[at]) if at >= 0 else float("inf")

    def prune(self, before_ts: int) -> None:
        """Forget values that no lookup at or after ``before_ts`` can need."""
        for key, times in self._ts.items():
            at = bisect_left(times, before_ts) - 1
            if at > 0:
                del times[:at]
                del self._values[key][:at]

    def keys(self) -> list[str]:
        return sorted(self._ts)
