"""Current usage totals in Redis (flows/metering.py ``usage_totals`` items).

``{prefix}usage:workload:{id}`` and ``{prefix}usage:customer:{name}:{YYYY-MM}`` are hashes
with ``gpu_seconds``, ``energy_wh``, ``energy_cost_usd`` and ``charge_usd``. The metering
step sends whole totals, not increments, so HSET is idempotent: a replay writes the same
numbers again.
"""

from __future__ import annotations

import polars as pl
import redis

from sinks.redis.layout import RedisKeys

__all__ = ["usage_key", "write_usage_totals"]

_FIELDS = ("gpu_seconds", "energy_wh", "energy_cost_usd", "charge_usd")


def usage_key(keys: RedisKeys, scope: str, key: str) -> str:
    """The hash of a workload (``key`` its id) or a customer month (``NAME|YYYY-MM``)."""
    if scope == "customer":
        name, _, month = key.rpartition("|")
        return f"{keys.prefix}usage:customer:{name}:{month}"
    return f"{keys.prefix}usage:workload:{key}"


def write_usage_totals(client: redis.Redis, keys: RedisKeys, df: pl.DataFrame) -> int:
    """HSET each row's totals; returns the number of hashes written."""
    if df.height == 0:
        return 0
    pipe = client.pipeline(transaction=True)
    for row in df.select("scope", "key", "customer", *_FIELDS).iter_rows():
        mapping = {f: repr(float(v)) for f, v in zip(_FIELDS, row[3:], strict=True)}
        mapping["customer"] = row[2] or ""
        pipe.hset(usage_key(keys, row[0], row[1]), mapping=mapping)
    pipe.execute()
    return df.height
