"""What the sinks cost: ``hcp run --once`` over the same filled topics with sinks toggled.

``python -m tools.bench.sink_cost [--events N] [--py-spy DIR]`` starts an embedded broker,
fills it as ``hcp bench`` does, then runs the job three times on those topics: every sink,
``--no-pg``, ``--no-pg --no-redis`` (raw storage off throughout), and prints the dataflow
seconds and events/s of each. With ``--py-spy DIR`` the first run is recorded by py-spy
(``pip install py-spy``) as raw stacks in DIR. docs/benchmark.md has the figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from pathlib import Path

from hcp.settings import default
from hcp.topics import Topics
from tools.bench.fill import FillSpec, fill_topics
from tools.bench.hooks import _job_seconds, delete_redis_prefix, fresh_database
from tools.broker import EmbeddedBroker

__all__ = ["main"]

VARIANTS = (("every sink", []), ("--no-pg", ["--no-pg"]),
            ("--no-pg --no-redis", ["--no-pg", "--no-redis"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.sink_cost", description=__doc__)
    p.add_argument("--events", type=int, default=FillSpec().events)
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="PostgreSQL server (a fresh database is made per run)")
    p.add_argument("--redis", default=default("redis"))
    p.add_argument("--py-spy", default=None, help="directory for a py-spy profile of run 1")
    args = p.parse_args(argv)
    with EmbeddedBroker() as broker:
        topics = Topics(f"sinkcost-{uuid.uuid4().hex[:6]}.")
        filled = fill_topics(broker.bootstrap, topics, FillSpec(events=args.events))
        print(f"filled {filled.events:,} events", flush=True)
        for i, (label, flags) in enumerate(VARIANTS):
            with fresh_database(args.pg, "sinkcost") as dsn:
                prefix = f"sinkcost-{uuid.uuid4().hex[:6]}:"
                cmd = [sys.executable, "-m", "tools", "run", "--once", "--no-raw",
                       "--bootstrap", broker.bootstrap, "--topic-prefix", topics.prefix,
                       "--redis", args.redis, "--redis-prefix", prefix, "--pg", dsn,
                       "--metrics-port", "0", *flags]
                if i == 0 and args.py_spy:
                    out = Path(args.py_spy) / "hcp-every-sink.txt"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    cmd = ["py-spy", "record", "-r", "100", "--format", "raw", "-o", str(out),
                           "--", *cmd]
                started = time.monotonic()
                run = subprocess.run(cmd, capture_output=True, text=True, check=False)
                wall = time.monotonic() - started
                delete_redis_prefix(args.redis, prefix)
            if run.returncode != 0:
                print(f"{label}: failed ({run.returncode}): {run.stderr[-500:]}", file=sys.stderr)
                return 1
            job = _job_seconds(run.stderr)
            print(f"{label:>20}: wall {wall:6.1f} s, dataflow {job} s, "
                  f"{filled.events / wall:,.0f} events/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
