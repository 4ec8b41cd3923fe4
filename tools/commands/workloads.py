"""``hcp workloads``: the queue by priority, the running work and cordoned GPUs.
``hcp workloads cancel ID``: ask the router to cancel a workload.

Reads the ``{prefix}workload:{id}`` hashes the Redis sink writes from the router's
workload events (fields ``state``, ``priority``, ``gpus``, ``site``, ``reason``,
``pending_reason``, ``updated_ts``, one ``{state}_ts`` per state reached and, while it holds a
reservation, ``expected_start_ts`` and ``reserved_site``) and the
``{prefix}gpu:cordoned`` hash. Ages are in event time: "now" is the newest ``updated_ts``
found, so a replayed or simulated run reads sensibly.

``cancel`` writes ``{"op": "cancel", "workload_id": ID}`` to the requests topic on the
workload's partition (hcp/workload_requests.py). Its ``ts`` is ``--ts-ms`` if given, else
the event-time "now" read from Redis as above (so a simulated run is not handed a
wall-clock time far ahead of its own), else the wall clock.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TextIO

import redis
from confluent_kafka import KafkaException, Producer

from hcp.config import env_arg, non_negative_int
from hcp.errors import BrokerUnreachableError, ConfigError, SinkUnavailableError
from hcp.kafka_admin import partition_counts
from hcp.kafka_config import kafka_conf
from hcp.redis_client import redis_client, safe_url
from hcp.settings import add_settings
from hcp.topics import Topics
from hcp.workload_requests import cancel_message, partition_for, request_key

__all__ = ["fetch_cordoned", "fetch_workloads", "register", "render", "send_cancel"]

QUEUED_STATES = ("queued", "submitted", "preempted")
ACTIVE_STATES = ("assigned", "running")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "workloads",
        help="show the workload queue, the running work and cordoned GPUs; cancel a workload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings(parser, "redis", "redis_prefix")
    env_arg(parser, "--limit", env="HCP_WORKLOADS_LIMIT", default=50, type=non_negative_int,
            help="rows shown per table, 0 for all (as in `hcp recommendations`)")
    parser.set_defaults(func=_run)
    actions = parser.add_subparsers(dest="action", metavar="{cancel}")
    cancel = actions.add_parser(
        "cancel",
        help="cancel a workload (any non-terminal state ends in `cancelled`)",
        description="Write an `op: cancel` request for WORKLOAD_ID to the requests topic.",
    )
    cancel.add_argument("workload_id", metavar="WORKLOAD_ID", help="the workload to cancel")
    add_settings(cancel, "bootstrap", "topic_prefix")
    env_arg(cancel, "--ts-ms", env="HCP_CANCEL_TS_MS", default=None, type=non_negative_int,
            help="event time of the cancel in ms (default: the newest workload update in "
                 "Redis, else the wall clock)")
    cancel.set_defaults(func=_run_cancel)


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


def fetch_cordoned(client: redis.Redis, prefix: str) -> dict[str, dict]:
    """The ``{prefix}gpu:cordoned`` hash: gpu_id -> {reason, since, site}."""
    out: dict[str, dict] = {}
    for gpu, raw in client.hgetall(f"{prefix}gpu:cordoned").items():
        try:
            out[gpu.decode()] = json.loads(raw)
        except ValueError:
            out[gpu.decode()] = {"reason": raw.decode(errors="replace")}
    return out


def send_cancel(bootstrap: str, topic: str, workload_id: str, ts_ms: int) -> int:
    """Produce one cancel request; returns the partition it went to."""
    parts = partition_counts(bootstrap, [topic]).get(topic)
    if parts is None:
        msg = f"topic {topic} does not exist on {bootstrap}; check --topic-prefix"
        raise ConfigError(msg)
    part = partition_for(workload_id, parts)
    producer = Producer({**kafka_conf(bootstrap), "enable.idempotence": True})
    try:
        producer.produce(topic, key=request_key(workload_id),
                         value=cancel_message(workload_id, ts_ms), partition=part)
        left = producer.flush(10)
    except KafkaException as exc:
        msg = f"cancel for {workload_id} not written to {topic}: {exc}"
        raise BrokerUnreachableError(msg) from None
    if left:
        msg = f"cancel for {workload_id} not delivered to {topic} on {bootstrap}"
        raise BrokerUnreachableError(msg)
    return part


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


def _reserved(now: int, r: dict[str, str]) -> str:
    """``site in 1h00m`` for a workload holding a reservation, else ``-``."""
    start = _int(r, "expected_start_ts")
    if start <= 0:
        return "-"
    return f"{r.get('reserved_site', '') or '?'} in {_age(start, now)}"


def _table(out: TextIO, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out.write(fmt.format(*header).rstrip() + "\n")
    for r in rows:
        out.write(fmt.format(*r).rstrip() + "\n")


def render(
    rows: list[dict[str, str]], out: TextIO, limit: int = 50,
    cordoned: dict[str, dict] | None = None,
) -> None:
    """Write the summary line, the queue table, the running table and cordoned GPUs
    (``limit`` rows per table, 0: all)."""
    limit = limit or max(len(rows), len(cordoned or {}))
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
    _table(out, ("PRIO", "WORKLOAD", "STATE", "WAITING", "PENDING", "RESERVED", "REASON"), [
        (str(_int(r, "priority")), r["workload_id"], r.get("state", ""),
         _age(now, _int(r, "submitted_ts")), r.get("pending_reason", "") or "-",
         _reserved(now, r), r.get("reason", ""))
        for r in queued[:limit]
    ])
    pending: dict[str, int] = {}
    for r in queued:
        key = r.get("pending_reason", "") or "-"
        pending[key] = pending.get(key, 0) + 1
    if queued:
        out.write("pending: " + ", ".join(f"{pending[k]} {k}" for k in sorted(pending)) + "\n")
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
    gpus = sorted((cordoned or {}).items(), key=lambda kv: (str(kv[1].get("site", "")), kv[0]))
    out.write(f"\nCORDONED GPUs ({len(gpus)}, offered no work until they run work or the "
              "cool-off ends)\n")
    _table(out, ("GPU", "SITE", "REASON", "FOR"), [
        (gpu, str(info.get("site", "")), str(info.get("reason", "")),
         _age(now, int(info.get("since", 0) or 0)))
        for gpu, info in gpus[:limit]
    ])
    hidden = max(0, len(queued) - limit) + max(0, len(active) - limit)
    if hidden:
        out.write(f"\n({hidden} more rows; raise --limit)\n")


def _run(args: argparse.Namespace) -> int:
    try:
        client = redis_client(args.redis, socket_connect_timeout=3, socket_timeout=10)
        rows = fetch_workloads(client, args.redis_prefix)
        cordoned = fetch_cordoned(client, args.redis_prefix)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        where = safe_url(args.redis)
        msg = f"Redis at {where} is unreachable ({exc}); set --redis or HCP_REDIS_URL"
        raise SinkUnavailableError(msg) from None
    render(rows, sys.stdout, args.limit, cordoned)
    return 0


def _event_now(url: str, prefix: str) -> int | None:
    """The newest ``updated_ts`` of any workload hash, or None (no data, no Redis)."""
    try:
        client = redis_client(url, socket_connect_timeout=3, socket_timeout=10)
        rows = fetch_workloads(client, prefix)
    except (redis.RedisError, ValueError):
        return None
    return max((_int(r, "updated_ts") for r in rows), default=0) or None


def _run_cancel(args: argparse.Namespace) -> int:
    ts = args.ts_ms
    if ts is None:
        ts = _event_now(args.redis, args.redis_prefix) or int(time.time() * 1000)
    topic = Topics(args.topic_prefix).workloads
    part = send_cancel(args.bootstrap, topic, args.workload_id, ts)
    sys.stdout.write(f"cancel for {args.workload_id} written to {topic}[{part}] at ts {ts}\n")
    return 0
