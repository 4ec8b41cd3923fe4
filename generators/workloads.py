"""Workload requests: Poisson arrivals of inference, training and batch jobs.

Each kind has its own shape: inference is small, short and urgent, training is large
(4-8 GPUs), long and mid-priority, batch is cheap and patient. About one request in ten
leaves ``kind`` out (the router classifies it) and two in five leave ``max_price_usd_hr``
out (any price goes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CUSTOMERS", "WorkloadSource", "run_tag"]

CUSTOMERS = (
    "acme-ai",
    "borealis-labs",
    "cobalt-bio",
    "driftwood-games",
    "ember-finance",
    "fjord-robotics",
    "granite-search",
    "helix-media",
)
KINDS = ("inference", "training", "batch")
_KIND_P = (0.55, 0.2, 0.25)
# Per kind: priority range, GPU counts to pick from, mem_gb range, duration range (s).
_SHAPES: dict[
    str, tuple[tuple[int, int], tuple[int, ...], tuple[float, float], tuple[int, int]]
] = {
    "inference": ((6, 10), (1, 1, 1, 2), (10.0, 40.0), (300, 3600)),
    "training": ((3, 7), (4, 8, 8), (40.0, 80.0), (3600, 43200)),
    "batch": ((1, 4), (1, 2, 4), (8.0, 60.0), (600, 7200)),
}


@dataclass(frozen=True)
class Burst:
    """Extra requests at one second (scenario ``workload_burst``)."""

    count: int
    kind: str | None = None
    priority: int | None = None
    gpus: int | None = None
    customer: str | None = None


def run_tag(seed: int, start_ms: int) -> str:
    """Eight hex digits naming one generator run: the same seed and start give the same tag.

    Workload ids are ``wl-{tag}-{n:07d}``. A counter alone restarts at 1 in every run, so a
    second ``hcp generate`` (a later ``--start``, or another seed) would reuse the ids of
    the first and the router would reject its requests as transitions of finished work.
    """
    return hashlib.sha256(f"{seed}:{start_ms}".encode()).hexdigest()[:8]


class WorkloadSource:
    """Draws the workload requests of each simulated second."""

    def __init__(self, rate_per_min: float, rng: np.random.Generator, tag: str = "") -> None:
        self.rate_per_s = rate_per_min / 60.0
        self.rng = rng
        self.issued = 0
        self._id_prefix = f"wl-{tag}-" if tag else "wl-"

    def step(self, t_ms: int, bursts: list[Burst] | None = None) -> list[dict[str, Any]]:
        """The requests arriving in the second starting at ``t_ms``, in time order."""
        rng = self.rng
        n = int(rng.poisson(self.rate_per_s)) if self.rate_per_s > 0 else 0
        specs: list[Burst | None] = [None] * n
        for burst in bursts or ():
            specs.extend([burst] * burst.count)
        if not specs:
            return []
        offsets = np.sort(rng.integers(0, 1000, len(specs)))
        out = []
        for spec, off in zip(specs, offsets, strict=True):
            out.append(self._request(int(t_ms + off), spec))
        return out

    def _request(self, ts: int, spec: Burst | None) -> dict[str, Any]:
        rng = self.rng
        self.issued += 1
        kind = spec.kind if spec and spec.kind else KINDS[int(rng.choice(3, p=_KIND_P))]
        (plo, phi), gpu_choices, (mlo, mhi), (dlo, dhi) = _SHAPES[kind]
        u = rng.random(6)
        rec: dict[str, Any] = {
            "ts": ts,
            "workload_id": f"{self._id_prefix}{self.issued:07d}",
            "customer": spec.customer
            if spec and spec.customer
            else CUSTOMERS[int(u[0] * len(CUSTOMERS))],
        }
        if u[1] >= 0.1 or (spec and spec.kind):
            rec["kind"] = kind
        rec["priority"] = (
            spec.priority if spec and spec.priority else plo + int(u[2] * (phi - plo + 1))
        )
        rec["gpus"] = spec.gpus if spec and spec.gpus else gpu_choices[int(u[3] * len(gpu_choices))]
        rec["mem_gb"] = round(mlo + (mhi - mlo) * u[4], 1)
        rec["est_duration_s"] = int(dlo * (dhi / dlo) ** u[5])
        if rng.random() < 0.6:
            rec["max_price_usd_hr"] = round(float(rng.uniform(1.8, 3.5)), 2)
        return rec
