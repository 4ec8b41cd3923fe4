"""Writing the control loop's compliance to Redis (docs/control-loop.md).

- ``{prefix}compliance:site:{site}`` hash: the site's latest judged window (commanded and
  observed kW, devices out of step, flagged devices, savings, planned and actual net);
  written only when not older than what is there, so replays never move it back.
- ``{prefix}noncompliant`` hash: device id -> consecutive windows out of step, for every
  device flagged in its latest window; a device back in step is removed.

A site has a handful of rows per window, and flagged devices are few, so plain
pipelines are enough.
"""

from __future__ import annotations

import polars as pl
import redis

from sinks.redis.layout import RedisKeys

__all__ = ["SITE_FIELDS", "write_device_compliance", "write_site_compliance"]

SITE_FIELDS = (
    "site",
    "window_start",
    "window_end",
    "devices",
    "commanded_kw",
    "observed_kw",
    "noncompliant",
    "flagged",
    "savings_usd",
    "planned_net_usd",
    "actual_net_usd",
)


def write_site_compliance(
    client: redis.Redis, keys: RedisKeys, df: pl.DataFrame, cond_hset_sha: str
) -> int:
    """Latest window per site; returns how many site hashes were written."""
    if df.height == 0:
        return 0
    text = df.select(pl.col(c).cast(pl.String).fill_null("") for c in SITE_FIELDS)
    n = len(SITE_FIELDS)
    argv: list[str] = [str(n), "window_end", str(SITE_FIELDS.index("window_end") + 1)]
    argv += list(SITE_FIELDS)
    hash_keys = []
    for row in text.iter_rows():
        hash_keys.append(f"{keys.prefix}compliance:site:{row[0]}")
        argv += list(row)
    return int(client.evalsha(cond_hset_sha, len(hash_keys), *hash_keys, *argv))


def write_device_compliance(client: redis.Redis, keys: RedisKeys, df: pl.DataFrame) -> int:
    """Keep the flagged set of the window; returns how many devices are flagged in it."""
    key = f"{keys.prefix}noncompliant"
    flagged = df.filter(pl.col("flagged"))
    back = df.filter(~pl.col("flagged") & (pl.col("misses") == 0))
    pipe = client.pipeline(transaction=False)
    if flagged.height:
        pipe.hset(key, mapping=dict(zip(flagged["device_id"], flagged["misses"], strict=True)))
    if back.height:
        pipe.hdel(key, *back["device_id"].to_list())
    pipe.execute()
    return flagged.height
