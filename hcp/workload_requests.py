"""Messages on ``hcp.workloads.requests``: submit and cancel (SPEC sections 1 and 3).

One JSON object per message, keyed by the workload id, ``v`` = 1 and ``ts`` in event-time
milliseconds. A submit carries the request fields of SPEC section 1 (``op`` may be left
out: it defaults to ``submit``); a cancel carries only ``op``, ``workload_id`` and the
common fields::

    {"v": 1, "ts": 1767225600000, "op": "cancel", "workload_id": "wl-42"}

Every producer (the generators, ``hcp workloads cancel``, the HTTP API) puts a workload's
messages on the partition :func:`partition_for` names, the one the generators use
(``crc32(key) % partitions``), so a cancel is read after its submit.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from hcp.schemas import SCHEMA_VERSION, WORKLOAD_FIELDS

__all__ = ["cancel_message", "partition_for", "request_key", "submit_message"]

_SUBMIT_FIELDS = tuple(f.name for f in WORKLOAD_FIELDS if f.name not in ("v", "ts", "op"))


def submit_message(fields: dict[str, Any], ts_ms: int) -> bytes:
    """A submit request: ``fields`` holds the SPEC section 1 request fields.

    Unknown fields are an error (ValueError names them) rather than silently sent; the
    router validates ranges and required fields on its side (bad ones are dead-lettered).
    """
    unknown = sorted(set(fields) - set(_SUBMIT_FIELDS) - {"op"})
    if unknown:
        msg = f"unknown workload request fields: {', '.join(unknown)}"
        raise ValueError(msg)
    if fields.get("op", "submit") != "submit":
        msg = f"submit_message cannot send op {fields['op']!r}"
        raise ValueError(msg)
    body = {"v": SCHEMA_VERSION, "ts": int(ts_ms), "op": "submit"}
    body.update((k, v) for k, v in fields.items() if k != "op" and v is not None)
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def cancel_message(workload_id: str, ts_ms: int) -> bytes:
    """A cancel request for ``workload_id``."""
    if not workload_id:
        msg = "a cancel needs a workload id"
        raise ValueError(msg)
    body = {"v": SCHEMA_VERSION, "ts": int(ts_ms), "op": "cancel", "workload_id": workload_id}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def request_key(workload_id: str) -> bytes:
    """The Kafka key of every message about ``workload_id``."""
    return workload_id.encode()


def partition_for(workload_id: str, partitions: int) -> int:
    """The partition of ``workload_id``'s messages: ``crc32(key) % partitions``."""
    return zlib.crc32(request_key(workload_id)) % partitions
