"""Collector round time and CPU for N simulated miners (simulators in another process).

``python -m tools.bench.collect --miners 10000 --rounds 5``: starts
``python -m generators.devices`` serving N miners on loopback (on uvloop), then polls them
for a few rounds in this process, first on the standard asyncio loop (the baseline) and then
on uvloop (what ``hcp collect`` runs on), and prints per-round wall and CPU seconds of this
process, their medians, and the ratios against the baseline and against the aim (a round of
10,000 miners in 1 s on one core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hcp.fleet.collect import Collector, run_on_uvloop
from hcp.fleet.inventory import load_inventory

AIM_S = 1.0


def _loop_rounds(collector: Collector, n: int, loop: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    async def run() -> None:
        for _ in range(n):
            cpu0 = time.process_time()
            result = await collector.poll_round()
            out.append({"wall_s": round(result.seconds, 3),
                        "cpu_s": round(time.process_time() - cpu0, 3),
                        "rows": len(result.asic), "faults": result.faults})

    if loop == "uvloop":
        run_on_uvloop(run())
    else:
        asyncio.run(run())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.collect", description=__doc__)
    parser.add_argument("--miners", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=512)
    parser.add_argument("--timeout-s", type=float, default=0.5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        inv = Path(tmp) / "inv.csv"
        sim = subprocess.Popen(
            [sys.executable, "-m", "generators.devices", "--miners", str(args.miners),
             "--inventory", str(inv)],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert sim.stdout is not None
            sim.stdout.readline()  # "serving ..." once every listener is up
            devices = load_inventory(inv)
            runs = {}
            for loop in ("asyncio", "uvloop"):
                collector = Collector(devices, args.timeout_s, args.concurrency)
                runs[loop] = _loop_rounds(collector, args.rounds, loop)
        finally:
            sim.terminate()
            sim.wait(30)
    report: dict[str, Any] = {"miners": args.miners, "concurrency": args.concurrency,
                              "loadavg_end": os.getloadavg()[0]}
    for loop, rounds in runs.items():
        report[loop] = {"rounds": rounds,
                        "median_wall_s": statistics.median(r["wall_s"] for r in rounds),
                        "median_cpu_s": statistics.median(r["cpu_s"] for r in rounds)}
    base, new = report["asyncio"], report["uvloop"]
    scale = 10_000 / args.miners
    report["cpu_ratio_vs_asyncio"] = round(new["median_cpu_s"] / base["median_cpu_s"], 3)
    report["wall_ratio_vs_asyncio"] = round(new["median_wall_s"] / base["median_wall_s"], 3)
    report["cpu_per_10k_vs_aim"] = round(new["median_cpu_s"] * scale / AIM_S, 3)
    report["wall_per_10k_vs_aim"] = round(new["median_wall_s"] * scale / AIM_S, 3)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
