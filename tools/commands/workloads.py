"""``hcp workloads``: the queue by priority and the running work, read from Redis.

Reads the ``{prefix}workload:{id}`` hashes the Redis sink writes from the router's
workload events (fields ``state``, ``priority``, ``gpus``, ``site``, ``reason``,
``updated_ts`` and one ``{state}_ts`` per state reached). Ages are in event time: "now" is
the newest ``updated_ts`` found, so a replayed or simulated run reads sensibly.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

import redis

from hcp.config import env_arg, non_negative_int
from hcp.errors import SinkUnavailableError
from hcp.settings import add_settings

__all__ = ["fetch_workloads", "register", "render"]

QUEUED_STATES = ("queued", "submitted", "preempted")
ACTIVE_STATES = ("assigned", "running")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "workloads",
        help="show the workload queue by priority and the running work",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings(parser, "redis", "redis_prefix")
    env_arg(parser, "--limit", env="HCP_WORKLOADS_LIMIT", default=50, type=non_negative_int,
            help="rows shown per table, 0 for all (as in `hcp recommendations`)")
    parser.set_defaults(func=_run)


def fetch_workloads(client: redis.Redis, prefix: str) -> list[dict[str, str]]:
    """Every workload hash under ``prefix`` as a dict of str, with ``workload_id`` set."""
    head = f"{prefix}workload:"
    keys = list(client.scan_iter(match=f"{head}*", count=5_000))
    out: list[dict[str, str]] = []
    for i in range(0, len(keys), 1_000):
        chunk = keys[i : i + 1_000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.hgetall(key)
        for key, raw in zip(chunk, pipe.execute(), strict=True):
            if not raw:
                continue
            row = {k.decode(): v.decode() for k, v in raw.items()}
            row.setdefault("workload_id", key.decode()[len(head):])
            out.append(row)
    return out


def _int(row: dict[str, str], name: str, default: int = 0) -> int:
    try:
        return int(float(row.get(name, default)))
    except ValueError:
        return default


def _age(now: int, ts: int) -> str:
    if ts <= 0:
        return "-"
    s = max(0, (now - ts) // 1000)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _table(out: TextIO, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out.write(fmt.format(*header).rstrip() + "\n")
    for r in rows:
        out.write(fmt.format(*r).rstrip() + "\n")


def render(rows: list[dict[str, str]], out: TextIO, limit: int = 50) -> None:
    """Write the summary line, the queue table and the running table (``limit`` 0: all)."""
    limit = limit or len(rows)
    now = max((_int(r, "updated_ts") for r in rows), default=0)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get("state", "?")] = counts.get(r.get("state", "?"), 0) + 1
    out.write("workloads: " + (", ".join(f"{counts[s]} {s}" for s in sorted(counts)) or "none")
              + "\n\n")
    queued = sorted(
        (r for r in rows if r.get("state") in QUEUED_STATES),
        key=lambda r: (-_int(r, "priority"), _int(r, "submitted_ts"), r["workload_id"]),
    )
    out.write(f"QUEUE ({len(queued)}, highest priority first, oldest first within a level)\n")
    _table(out, ("PRIO", "WORKLOAD", "STATE", "WAITING", "REASON"), [
        (str(_int(r, "priority")), r["workload_id"], r.get("state", ""),
         _age(now, _int(r, "submitted_ts")), r.get("reason", ""))
        for r in queued[:limit]
    ])
    active = sorted(
        (r for r in rows if r.get("state") in ACTIVE_STATES),
        key=lambda r: (r.get("site", ""), -_int(r, "priority"), r["workload_id"]),
    )
    out.write(f"\nRUNNING ({len(active)}, by site)\n")
    _table(out, ("WORKLOAD", "STATE", "PRIO", "SITE", "GPUS", "FOR"), [
        (r["workload_id"], r.get("state", ""), str(_int(r, "priority")), r.get("site", ""),
         r.get("gpus", ""),
         _age(now, _int(r, "running_ts") if r.get("state") == "running"
              else _int(r, "assigned_ts")))
        for r in active[:limit]
    ])
    hidden = max(0, len(queued) - limit) + max(0, len(active) - limit)
    if hidden:
        out.write(f"\n({hidden} more rows; raise --limit)\n")


def _run(args: argparse.Namespace) -> int:
    try:
        client = redis.Redis.from_url(args.redis, socket_connect_timeout=3, socket_timeout=10)
        rows = fetch_workloads(client, args.redis_prefix)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        msg = f"Redis at {args.redis} is unreachable ({exc}); set --redis or HCP_REDIS_URL"
        raise SinkUnavailableError(msg) from None
    render(rows, sys.stdout, args.limit)
    return 0
