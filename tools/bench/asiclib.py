"""pyasic-rs against HCP's CGMiner client on the same simulated stock Antminer S21s.

``python -m tools.bench.asiclib --miners 1000 --rounds 3``: starts ``python -m
generators.devices --stock`` (each miner on its own loopback address, API 4028 + web UI 80;
several processes above 4,000 miners, two listening sockets per miner against a 20,000 file
limit), then in this process times

* ``identify``: ``MinerFactory.get_miner`` for every miner (once);
* ``lib_full``: ``Miner.get_data()`` for every miner, the full snapshot;
* ``lib_contract``: ``get_data(exclude=...)`` keeping only what the contract needs;
* ``cgminer``: one ``Collector.poll_round()`` (``summary+stats``) on uvloop;

each as wall and CPU seconds of this process (all threads: the library's tokio workers
count), and prints JSON.
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
from hcp.fleet.inventory import Device, load_inventory

PER_PROCESS = 4000
# What row_from_data reads; everything else is excluded from the "contract" snapshot.
KEEP = {"Hashrate", "Wattage", "Hashboards", "Pools", "IsMining", "Messages", "DeviceInfo",
        "Ip", "Timestamp", "SchemaVersion"}


def _start_sims(n: int, tmp: Path) -> tuple[list[subprocess.Popen[str]], list[Device]]:
    procs, devices = [], []
    for i, start in enumerate(range(0, n, PER_PROCESS)):
        count = min(PER_PROCESS, n - start)
        inv = tmp / f"inv{i}.csv"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "generators.devices", "--stock", "--miners", str(count),
             "--stock-base", f"127.{20 + i}.0.1", "--prefix", f"asic{i}",
             "--inventory", str(inv)],
            stdout=subprocess.PIPE, text=True,
        ))
    for i, proc in enumerate(procs):
        assert proc.stdout is not None
        proc.stdout.readline()  # "serving ..." once every listener is up
        devices += load_inventory(tmp / f"inv{i}.csv")
    return procs, devices


def _timed(fn: Any) -> tuple[Any, dict[str, float]]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, {"wall_s": round(time.perf_counter() - wall0, 3),
                 "cpu_s": round(time.process_time() - cpu0, 3)}


def _library_runs(devices: list[Device], rounds: int, concurrency: int) -> dict[str, Any]:
    from pyasic_rs import MinerFactory
    from pyasic_rs.data import DataField

    exclude = [getattr(DataField, name) for name in dir(DataField)
               if not name.startswith("_") and name[0].isupper() and name not in KEEP]
    miners: list[Any] = []
    report: dict[str, Any] = {}

    async def identify() -> None:
        factory = MinerFactory()
        gate = asyncio.Semaphore(concurrency)

        async def one(d: Device) -> Any:
            async with gate:
                return await factory.get_miner(d.host)

        miners.extend(await asyncio.gather(*(one(d) for d in devices)))

    _, report["identify"] = _timed(lambda: asyncio.run(identify()))
    found = [m for m in miners if m is not None]
    report["identified"] = len(found)
    report["models"] = sorted({f"{m.model} / {m.firmware}" for m in found})

    async def read(filtered: bool) -> int:
        gate = asyncio.Semaphore(concurrency)

        async def one(m: Any) -> bool:
            async with gate:
                data = await (m.get_data(exclude) if filtered else m.get_data())
                return data.hashrate is not None

        return sum(await asyncio.gather(*(one(m) for m in found)))

    for name, filtered in (("lib_full", False), ("lib_contract", True)):
        runs = []
        for _ in range(rounds):
            ok, t = _timed(lambda f=filtered: asyncio.run(read(f)))
            runs.append({**t, "with_hashrate": ok})
        report[name] = {"rounds": runs,
                        "median_wall_s": statistics.median(r["wall_s"] for r in runs),
                        "median_cpu_s": statistics.median(r["cpu_s"] for r in runs)}
    return report


def _cgminer_runs(devices: list[Device], rounds: int, concurrency: int) -> dict[str, Any]:
    collector = Collector(devices, 0.5, concurrency)
    runs = []
    for _ in range(rounds):
        result, t = _timed(lambda: run_on_uvloop(collector.poll_round()))
        runs.append({**t, "rows": len(result.asic), "faults": result.faults})
    return {"rounds": runs,
            "median_wall_s": statistics.median(r["wall_s"] for r in runs),
            "median_cpu_s": statistics.median(r["cpu_s"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.asiclib", description=__doc__)
    parser.add_argument("--miners", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=512)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        procs, devices = _start_sims(args.miners, Path(tmp))
        try:
            report: dict[str, Any] = {"miners": len(devices), "concurrency": args.concurrency}
            report["cgminer"] = _cgminer_runs(devices, args.rounds, args.concurrency)
            report.update(_library_runs(devices, args.rounds, args.concurrency))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    report["loadavg_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1), flush=True)
    # The library's runtime can abort the interpreter's teardown; the report is out.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
