"""How HCP lays its outputs out in Redis (SPEC section 4): key names and server-side scripts.

Every key starts with a configurable prefix (default ``hcp:``) so tests, replays and
benchmarks can share one Redis without seeing each other:

- ``{prefix}rec:{device_id}``        hash, the device's latest recommendation
- ``{prefix}recommendations``        stream, every recommendation, id ``{window_end_ms}-{seq}``
- ``{prefix}summary:site:{site}``    hash, totals of the site's latest window (and
  ``n_cordoned``, the site's GPUs the router has cordoned now)
- ``{prefix}summary:fleet``          hash, totals of the fleet's latest window
- ``{prefix}summary:sites``          set of site names that have a summary
- ``{prefix}prices``                 hash, ``key`` -> latest value, ``key:ts`` -> its event time
- ``{prefix}workload:{workload_id}`` hash, current state of a workload
- ``{prefix}workloads``              stream of workload state transitions, id ``{ts}-{seq}``
- ``{prefix}compliance:site:{site}`` hash, the site's latest commanded vs observed power
- ``{prefix}noncompliant``           hash, flagged device id -> windows out of step
- ``{prefix}snapshot:site:{site}`` string, Arrow IPC of the site's latest recommendations,
  ``{prefix}snapshot:sites`` hash, site -> its newest window_end (sinks/redis/snapshot.py)
- ``{prefix}gpu:cordoned``           hash, ``gpu_id`` -> JSON ``{reason, since, site}`` of
  every GPU the router has cordoned now (removed when it is uncordoned)

The scripts make "never overwrite newer state with older state" a server-side check, so a
replay of old windows or events cannot move a hash backwards whatever the read order.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

__all__ = [
    "COND_HSET_LUA",
    "PRICES_LUA",
    "WORKLOAD_LUA",
    "RedisKeys",
    "stream_last_id",
]


@dataclass(frozen=True)
class RedisKeys:
    """The key names under one prefix."""

    prefix: str = "hcp:"

    @property
    def rec(self) -> str:
        """Prefix of the per-device recommendation hashes (append the device id)."""
        return f"{self.prefix}rec:"

    @property
    def recs_stream(self) -> str:
        return f"{self.prefix}recommendations"

    @property
    def prices(self) -> str:
        return f"{self.prefix}prices"

    @property
    def fleet_summary(self) -> str:
        return f"{self.prefix}summary:fleet"

    @property
    def sites(self) -> str:
        return f"{self.prefix}summary:sites"

    def site_summary(self, site: str) -> str:
        return f"{self.prefix}summary:site:{site}"

    @property
    def workload(self) -> str:
        """Prefix of the per-workload hashes (append the workload id)."""
        return f"{self.prefix}workload:"

    @property
    def workloads_stream(self) -> str:
        return f"{self.prefix}workloads"

    @property
    def snapshots(self) -> str:
        """Hash of the columnar snapshots: site -> newest window_end (sinks/redis/snapshot.py)."""
        return f"{self.prefix}snapshot:sites"

    def snapshot(self, site: str) -> str:
        """The site's columnar snapshot: an Arrow IPC file of its latest recommendations."""
        return f"{self.prefix}snapshot:site:{site}"

    @property
    def cordoned(self) -> str:
        """Hash of the GPUs the router has cordoned: gpu_id -> JSON reason/since/site."""
        return f"{self.prefix}gpu:cordoned"


def stream_last_id(client: redis.Redis, key: str) -> tuple[int, int]:
    """The stream's last generated id as ``(ms, seq)``; ``(0, 0)`` when it does not exist.

    XINFO's ``last-generated-id`` survives trimming and XDEL, unlike the id of the last
    entry, so an XADD with a larger id can never be rejected.
    """
    try:
        info = client.xinfo_stream(key)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return (0, 0)
        raise
    raw = info["last-generated-id"]
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ms, _, seq = text.partition("-")
    return (int(ms), int(seq or 0))


# KEYS: hashes. ARGV: n, compare field, its 1-based index among the n fields, the n field
# names, then n values per key. A hash is written only when its stored compare value is
# missing or not greater than the new one. Returns how many hashes were written.
COND_HSET_LUA = """
local n = tonumber(ARGV[1])
local cmpf = ARGV[2]
local cmpi = tonumber(ARGV[3])
local base = 3 + n
local written = 0
local args = {}
for i = 1, #KEYS do
  local off = base + (i - 1) * n
  local new = tonumber(ARGV[off + cmpi])
  local old = tonumber(redis.call('HGET', KEYS[i], cmpf))
  if old == nil or (new ~= nil and new >= old) then
    for j = 1, n do
      args[2 * j - 1] = ARGV[3 + j]
      args[2 * j] = ARGV[off + j]
    end
    redis.call('HSET', KEYS[i], unpack(args))
    written = written + 1
  end
end
return written
"""

# KEYS[1]: the prices hash. ARGV: (key, ts, value) triples. Keeps the newest value per key.
PRICES_LUA = """
local written = 0
for i = 1, #ARGV, 3 do
  local k = ARGV[i]
  local ts = tonumber(ARGV[i + 1])
  local old = tonumber(redis.call('HGET', KEYS[1], k .. ':ts'))
  if old == nil or ts >= old then
    redis.call('HSET', KEYS[1], k, ARGV[i + 2], k .. ':ts', ARGV[i + 1])
    written = written + 1
  end
end
return written
"""

# KEYS: workload hashes, one per event, in event order. ARGV: 9 values per event:
# workload_id, ts, from_state, to_state, priority, gpus, site, reason, mode. The current
# state moves only forward in event time: mode "new" (an event just appended to the
# stream) applies at an equal time, so same-millisecond chains end in their last state;
# mode "late" (older than the stream, never seen) applies only when strictly newer.
# `{state}_ts` keeps when the workload last entered each state; `submitted_ts` the first.
# A `queued -> queued` event is a new pending reason, not a transition: it sets
# `pending_reason` (and `updated_ts`) only; any other event clears `pending_reason`.
WORKLOAD_LUA = """
local written = 0
for i = 1, #KEYS do
  local o = (i - 1) * 9
  local key = KEYS[i]
  local ts = tonumber(ARGV[o + 2])
  local old = tonumber(redis.call('HGET', key, 'updated_ts'))
  local pending = ARGV[o + 3] == 'queued' and ARGV[o + 4] == 'queued'
  if old == nil or ts > old or (ts == old and ARGV[o + 9] == 'new') then
    if pending then
      redis.call('HSET', key, 'workload_id', ARGV[o + 1], 'pending_reason', ARGV[o + 8],
        'updated_ts', ARGV[o + 2])
    else
      redis.call('HSET', key, 'workload_id', ARGV[o + 1], 'state', ARGV[o + 4],
        'prev_state', ARGV[o + 3], 'priority', ARGV[o + 5], 'gpus', ARGV[o + 6],
        'site', ARGV[o + 7], 'reason', ARGV[o + 8], 'updated_ts', ARGV[o + 2],
        'pending_reason', '')
    end
    written = written + 1
  end
  local f = ARGV[o + 4] .. '_ts'
  local seen = tonumber(redis.call('HGET', key, f))
  if pending then
    -- not a transition: queued_ts keeps when it entered the queue
  elseif f == 'submitted_ts' then
    if seen == nil or ts < seen then redis.call('HSET', key, f, ARGV[o + 2]) end
  elseif seen == nil or ts > seen then
    redis.call('HSET', key, f, ARGV[o + 2])
  end
end
return written
"""
