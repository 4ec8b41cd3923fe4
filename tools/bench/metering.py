"""Cost of the metering step alone (``python -m tools.bench.metering``).

2,500 running workloads on 10,000 GPUs (4 each); one 10,000-row telemetry batch a second
for a minute, each followed by a router event so every open run is repriced. Prints the
median and worst time per batch (on_gpu + on_events + flush).
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl

from flows.metering import Meter
from hcp.schemas import WORKLOAD_EVENT_SCHEMA

T0 = 1_767_225_600_000
WORKLOADS, PER = 2500, 4


def _events(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=WORKLOAD_EVENT_SCHEMA, orient="row")


def main() -> None:
    n = WORKLOADS * PER
    meter = Meter()
    ids = [f"w{i}" for i in range(WORKLOADS)]
    meter.on_requests(pl.DataFrame({"workload_id": ids,
                                    "customer": [f"c{i % 50}" for i in range(WORKLOADS)],
                                    "max_price_usd_hr": [2.5] * WORKLOADS,
                                    "ts": [T0] * WORKLOADS}))
    meter.on_prices(pl.DataFrame({"ts": [T0 - 1], "kind": ["gpu_spot_usd_hr"], "value": [2.0],
                                  "site": [None], "model": ["H100"]}))
    meter.on_events(_events([
        (w, T0, "assigned", "running", 5, ",".join(f"g{i * PER + j}" for j in range(PER)),
         "s1", "") for i, w in enumerate(ids)]))
    meter.flush()
    gpu_ids = [f"g{k}" for k in range(n)]
    owners = [f"w{k // PER}" for k in range(n)]
    times = []
    for sec in range(1, 61):
        ts = T0 + sec * 1000
        gpu = pl.DataFrame({"ts": [ts] * n, "gpu_id": gpu_ids, "model": ["H100"] * n,
                            "power_w": np.full(n, 650.0), "workload_id": owners})
        tick = _events([("wx", ts, "queued", "queued", 1, "", "", "capacity")])
        started = time.perf_counter()
        meter.on_gpu(gpu)
        meter.on_events(tick)
        meter.flush()
        times.append(time.perf_counter() - started)
    med = float(np.median(times))
    print(f"60 batches of {n} rows: median {med * 1000:.1f} ms, worst {max(times) * 1000:.1f} "
          f"ms, {n / med:,.0f} rows/s")


if __name__ == "__main__":
    main()
