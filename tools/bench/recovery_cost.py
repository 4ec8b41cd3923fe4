"""What recovery costs: `hcp run --once` over the same topics with and without snapshots.

    python -m tools.bench.recovery_cost [--asics 300000 --gpus 10000 --duration 10] [--runs 2]

Fills fresh topics on an embedded broker once, then alternates runs without and with
`--recovery-dir` (1 s snapshots), every sink on and raw storage off, each into a fresh
PostgreSQL database and Redis prefix that are removed afterwards. Prints events/s per run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg

from generators.run import generate
from generators.simulation import SimConfig
from hcp.redis_client import redis_client
from hcp.settings import default
from hcp.topics import Topics
from tools.broker import EmbeddedBroker

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _run(bootstrap: str, topics: Topics, extra: list[str]) -> tuple[int, float]:
    db = f"hcp_rc_{uuid.uuid4().hex[:8]}"
    prefix = f"rc{uuid.uuid4().hex[:8]}:"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        cmd = [
            sys.executable,
            "-m",
            "hcp",
            "run",
            "--once",
            "--no-raw",
            "--metrics-port",
            "0",
            "--bootstrap",
            bootstrap,
            "--topic-prefix",
            topics.prefix,
            "--redis-prefix",
            prefix,
            "--pg",
            f"{ADMIN_DSN.rsplit('/', 1)[0]}/{db}",
            *extra,
        ]
        started = time.monotonic()
        code = subprocess.run(cmd, capture_output=True, check=False).returncode
        return code, time.monotonic() - started
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        client = redis_client(default("redis"))
        keys = list(client.scan_iter(f"{prefix}*", count=10_000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--asics", type=int, default=300_000)
    parser.add_argument("--gpus", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=10, help="simulated seconds")
    parser.add_argument("--runs", type=int, default=2, help="runs of each kind, alternated")
    args = parser.parse_args(argv)
    with EmbeddedBroker() as broker:
        topics = Topics(f"rc{uuid.uuid4().hex[:6]}.")
        config = SimConfig(
            seed=1,
            gpus=args.gpus,
            asics=args.asics,
            sites=8,
            duration_s=args.duration,
            workloads=False,
        )
        events = generate(config, broker.bootstrap, topics).events
        print(f"filled {events:,} events", flush=True)
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                for label, extra in (
                    ("without recovery", []),
                    (
                        "--recovery-dir, 1 s snapshots",
                        ["--recovery-dir", f"{tmp}/recovery", "--snapshot-interval-s", "1"],
                    ),
                ):
                    code, seconds = _run(broker.bootstrap, topics, extra)
                    print(
                        f"{label:32} exit {code}  {seconds:5.1f} s  "
                        f"{events / seconds:>9,.0f} events/s",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
