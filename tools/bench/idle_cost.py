"""What an idle job costs: ``hcp run`` on empty topics, CPU of the job and of its broker.

``python -m tools.bench.idle_cost [--seconds 30] [--partitions 8]`` starts an embedded
broker and ``hcp run --no-pg --no-redis`` on fresh, empty topics, lets it settle for
10 s, then reads the CPU time (user + system, from /proc, children included) that each
process used over ``--seconds`` and prints it as a share of one core. Linux only.
docs/architecture.md has the figures (issue 18).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tools.broker import EmbeddedBroker

__all__ = ["cpu_ticks", "main"]


def cpu_ticks(pid: int) -> int:
    """User + system clock ticks of ``pid`` and its descendants, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    total = int(fields[11]) + int(fields[12])
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            try:
                total += cpu_ticks(int(child))
            except FileNotFoundError:  # ended meanwhile
                continue
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.idle_cost", description=__doc__)
    p.add_argument("--seconds", type=float, default=30.0, help="measured span (default 30)")
    p.add_argument("--partitions", type=int, default=8, help="partitions per topic (default 8)")
    args = p.parse_args(argv)
    hz = os.sysconf("SC_CLK_TCK")
    with EmbeddedBroker() as broker:
        job = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "run", "--no-pg", "--no-redis",
             "--bootstrap", broker.bootstrap, "--topic-prefix", f"idle-{uuid.uuid4().hex[:6]}.",
             "--partitions", str(args.partitions), "--metrics-port", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(10.0)  # start-up, topic creation, first fetches
            if job.poll() is not None:
                print(f"idle_cost: the job exited early (code {job.returncode})", file=sys.stderr)
                return 1
            broker_pid = broker._proc.pid  # type: ignore[union-attr]
            b0, j0, t0 = cpu_ticks(broker_pid), cpu_ticks(job.pid), time.monotonic()
            time.sleep(args.seconds)
            b1, j1, t1 = cpu_ticks(broker_pid), cpu_ticks(job.pid), time.monotonic()
        finally:
            job.terminate()
            job.wait(30)
    wall = t1 - t0
    print(f"idle job on empty topics ({args.partitions} partitions x 4 input topics), "
          f"{wall:.0f} s: broker {100 * (b1 - b0) / hz / wall:.1f} % of a core, "
          f"job {100 * (j1 - j0) / hz / wall:.1f} % of a core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
