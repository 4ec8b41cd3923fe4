"""Collector round time and CPU for N simulated miners (simulators in another process).

``python -m tools.bench.collect --miners 10000 --rounds 5``: starts
``python -m generators.devices`` serving N miners on loopback, then polls them for a few
rounds in this process and prints per-round wall seconds and CPU seconds (this process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hcp.fleet.collect import Collector
from hcp.fleet.inventory import load_inventory


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
            [
                sys.executable,
                "-m",
                "generators.devices",
                "--miners",
                str(args.miners),
                "--inventory",
                str(inv),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert sim.stdout is not None
            sim.stdout.readline()  # "serving ..." once every listener is up
            collector = Collector(load_inventory(inv), args.timeout_s, args.concurrency)
            rounds = []

            async def run() -> None:
                for _ in range(args.rounds):
                    cpu0 = time.process_time()
                    result = await collector.poll_round()
                    rounds.append(
                        {
                            "wall_s": round(result.seconds, 3),
                            "cpu_s": round(time.process_time() - cpu0, 3),
                            "rows": len(result.asic),
                            "faults": result.faults,
                        }
                    )

            asyncio.run(run())
        finally:
            sim.terminate()
            sim.wait(30)
    print(
        json.dumps(
            {"miners": args.miners, "concurrency": args.concurrency, "rounds": rounds}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
