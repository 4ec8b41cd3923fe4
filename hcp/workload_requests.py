"""Messages on ``hcp.workloads.requests``: submissions and cancellations (SPEC sections 1, 3).

One JSON object per message, keyed by the workload id (UTF-8)::

    {"v": 1, "ts": 1767225600000, "op": "submit", "workload_id": "wl-42", "customer": "acme",
     "priority": 5, "gpus": 2, "mem_gb": 40.0, "est_duration_s": 600}
    {"v": 1, "ts": 1767225660000, "op": "cancel", "workload_id": "wl-42"}

``op`` defaults to ``submit`` when absent, so requests written before cancellation existed
still read the same. The router turns a cancel into the terminal state ``cancelled``.
"""

from __future__ import annotations

import json
from typing import Any

from hcp.schemas import SCHEMA_VERSION

__all__ = ["OPS", "cancel_message", "submit_message"]

OPS = ("submit", "cancel")


def _encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":"), sort_keys=True).encode()


def submit_message(fields: dict[str, Any], ts_ms: int) -> bytes:
    """A submission: the request fields of SPEC section 1 plus ``v``, ``ts`` and ``op``."""
    msg = {k: v for k, v in fields.items() if v is not None}
    msg.update(v=SCHEMA_VERSION, ts=int(ts_ms), op="submit")
    return _encode(msg)


def cancel_message(workload_id: str, ts_ms: int) -> bytes:
    """A cancellation of ``workload_id``."""
    msg = {"v": SCHEMA_VERSION, "ts": int(ts_ms), "op": "cancel", "workload_id": workload_id}
    return _encode(msg)
