"""Writing the control loop's compliance to Redis (docs/control-loop.md).

- ``{prefix}compliance:site:{site}`` hash: the site's latest judged window (commanded and
  observed kW, devices out of step, flagged devices, savings, planned and actual net);
  written only when not older than what is there, so replays never move it back.
- ``{prefix}noncompliant`` hash: device id -> consecutive windows out of step, for every
  device flagged in its latest window; a device back in step (``cleared``) is removed. The window it
  reflects is in ``{prefix}noncompliant:window_end``; an older (replayed) window is skipped.

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


# KEYS: the hash, its window marker. ARGV: window_end, count of flagged, flagged (device,
# misses) pairs, then the devices to remove. Skipped when the marker is newer.
_FLAGGED_LUA = """
local old = tonumber(redis.call('GET', KEYS[2]))
local wend = tonumber(ARGV[1])
if old ~= nil and wend < old then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[3 + 2 * i], ARGV[4 + 2 * i])
end
for i = 3 + 2 * n, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
return 1
"""


def write_device_compliance(client: redis.Redis, keys: RedisKeys, df: pl.DataFrame) -> int:
    """Keep the flagged set, window by window; returns how many windows were applied."""
    key = f"{keys.prefix}noncompliant"
    script = client.register_script(_FLAGGED_LUA)
    applied = 0
    for wend in df["window_end"].unique().sort().to_list():
        window = df.filter(pl.col("window_end") == wend)
        flagged = window.filter(pl.col("flagged"))
        back = window.filter(pl.col("cleared"))["device_id"].to_list()
        pairs = [v for row in flagged.select("device_id", "misses").iter_rows() for v in row]
        args = [wend, flagged.height, *pairs, *back]
        applied += int(script(keys=[key, f"{key}:window_end"], args=args))
    return applied
