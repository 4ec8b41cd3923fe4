"""``python -m tools.bench.cluster``: events/s for 1..N processes, and each stage's cost.

Fills a fresh topic set (tools/bench/fill.py), then on the same topics:

1. for each process count P: ``hcp run --once --no-raw --processes P`` as a child process,
   every sink on (Redis under a fresh prefix, PostgreSQL in a fresh database); events/s =
   filled events / the slowest member's ``job finished in`` seconds (the dataflow alone,
   start-up excluded), and / wall seconds (start-up included);
2. one more single-process run inside this process, to read the job's own timers: source
   decode (``hcp_decode_seconds``), the shards, site groups and fleet steps
   (``hcp_stage_seconds``), and the Redis and PostgreSQL writes (``hcp_sink_write_seconds``),
   each as microseconds per event; the rest of the job time (Bytewax, the router, the
   DLQ/assignment sinks, waiting) is printed as "other".

Prints a Markdown table and writes JSON to ``--out``. Run on an idle machine for figures
worth comparing; on a shared one say so beside them (docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from prometheus_client import REGISTRY

from hcp.config import env_arg
from hcp.settings import add_settings
from hcp.topics import Topics
from tools.bench.fill import FillSpec, fill_topics
from tools.bench.hooks import delete_redis_prefix, fresh_database

__all__ = ["main"]

log = logging.getLogger(__name__)


def _job_seconds(output: str) -> list[float]:
    return [float(s) for s in re.findall(r"job finished in ([0-9.]+) s", output)]


def run_processes(bootstrap: str, topics: Topics, args: argparse.Namespace, n: int) -> dict:
    """One ``hcp run --once --processes n`` over the topics: wall and job seconds."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    with fresh_database(args.pg, "cluster") as dsn:
        cmd = [
            sys.executable, "-m", "tools", "run", "--once", "--no-raw",
            "--bootstrap", bootstrap, "--topic-prefix", topics.prefix,
            "--redis", args.redis, "--redis-prefix", prefix, "--pg", dsn,
            "--metrics-port", "0", "--processes", str(n), "--workers", str(args.workers),
            "--partitions", str(args.partitions),
        ]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        delete_redis_prefix(args.redis, prefix)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"hcp run --processes {n} failed ({done.returncode}): {tail}")
    jobs = _job_seconds(done.stderr)
    return {"processes": n, "wall_s": round(wall, 2), "job_s": round(max(jobs), 2)}


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _timers() -> dict[str, float]:
    return {
        "decode (source)": sum(
            _sample("hcp_decode_seconds_sum", {"kind": k}) for k in ("gpu", "asic", "prices",
                                                                        "workloads")
        ),
        "shards (fold, close, decide)": _sample("hcp_stage_seconds_sum", {"stage": "shards"}),
        "site groups (power caps)": _sample("hcp_stage_seconds_sum", {"stage": "site_groups"}),
        "fleet (order; global)": _sample("hcp_stage_seconds_sum", {"stage": "fleet"}),
        "compliance (control loop)": _sample("hcp_stage_seconds_sum", {"stage": "compliance"}),
        "Redis write (global)": _sample("hcp_sink_write_seconds_sum", {"sink": "redis"}),
        "PostgreSQL write": _sample("hcp_sink_write_seconds_sum", {"sink": "postgres"}),
    }


def stage_costs(bootstrap: str, topics: Topics, args: argparse.Namespace, events: int) -> dict:
    """Per-stage microseconds per event from one in-process single-worker run."""
    from bytewax.testing import run_main

    from flows.dataflow import build_flow
    from flows.layout import TopicLayout
    from flows.settings import JobSettings
    from sinks.postgres.schema import apply_migrations

    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    with fresh_database(args.pg, "cluster") as dsn:
        settings = JobSettings(
            bootstrap=bootstrap, topic_prefix=topics.prefix, redis=args.redis,
            redis_prefix=prefix, pg=dsn, once=True, store_raw=False, metrics_port=0,
            partitions=args.partitions,
        )
        apply_migrations(dsn)
        flow = build_flow(settings, layout=TopicLayout.from_broker(settings))
        before = _timers()
        started = time.perf_counter()
        run_main(flow)
        job = time.perf_counter() - started
        after = _timers()
        delete_redis_prefix(args.redis, prefix)
        import psycopg

        with psycopg.connect(dsn) as conn:
            recs = conn.execute("SELECT count(*) FROM recommendations").fetchone()[0]
    costs = {k: after[k] - before[k] for k in after}
    costs["other (Bytewax, router, DLQ, waits)"] = max(job - sum(costs.values()), 0.0)
    return {
        "job_s": round(job, 2),
        "recommendations": recs,
        "us_per_event": {k: round(v / events * 1e6, 3) for k, v in costs.items()},
        "us_per_rec": {k: round(v / max(recs, 1) * 1e6, 2) for k, v in costs.items()},
        "seconds": {k: round(v, 3) for k, v in costs.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.cluster", description=__doc__)
    env_arg(p, "--events", env="HCP_BENCH_CLUSTER_EVENTS", default=1_000_000, type=int,
            help="events to fill")
    env_arg(p, "--asics", env="HCP_BENCH_CLUSTER_ASICS", default=50_000, type=int, help="ASICs")
    env_arg(p, "--gpus", env="HCP_BENCH_CLUSTER_GPUS", default=2_000, type=int, help="GPUs")
    env_arg(p, "--sites", env="HCP_BENCH_CLUSTER_SITES", default=8, type=int, help="sites")
    env_arg(p, "--partitions", env="HCP_BENCH_CLUSTER_PARTITIONS", default=8, type=int,
            help="partitions per topic")
    env_arg(p, "--workers", env="HCP_BENCH_CLUSTER_WORKERS", default=1, type=int,
            help="workers per process")
    env_arg(p, "--processes", env="HCP_BENCH_CLUSTER_PROCESSES", default="1,2",
            help="comma-separated process counts to run")
    env_arg(p, "--bootstrap", env="HCP_BENCH_CLUSTER_BOOTSTRAP", default=None,
            help="an existing broker (default: an embedded one)")
    add_settings(p, "redis", "pg",
                 helps={"pg": "the server: the bench makes and drops its own databases"})
    env_arg(p, "--out", env="HCP_BENCH_CLUSTER_OUT", default="bench-results/cluster.json",
            help="JSON results file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from tools.broker import EmbeddedBroker

    broker = EmbeddedBroker() if args.bootstrap is None else None
    bootstrap = broker.__enter__().bootstrap if broker else args.bootstrap
    try:
        topics = Topics(prefix=f"bench{uuid.uuid4().hex[:8]}.")
        spec = FillSpec(events=args.events, asics=args.asics, gpus=args.gpus, sites=args.sites,
                        partitions=args.partitions)
        filled = fill_topics(bootstrap, topics, spec)
        runs = [run_processes(bootstrap, topics, args, int(n)) for n in args.processes.split(",")]
        stages = stage_costs(bootstrap, topics, args, filled.events)
    finally:
        if broker:
            broker.__exit__(None, None, None)
    base = runs[0]["job_s"]
    print(f"{filled.events:,} events, {args.asics:,} ASICs + {args.gpus:,} GPUs on "
          f"{args.sites} sites, {args.partitions} partitions, {args.workers} worker(s)/process")
    print("\n| processes | job s | events/s (job) | wall s | events/s (wall) | speed-up |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in runs:
        r["events_per_s"] = round(filled.events / r["job_s"])
        r["events_per_s_wall"] = round(filled.events / r["wall_s"])
        print(f"| {r['processes']} | {r['job_s']} | {r['events_per_s']:,} | {r['wall_s']} | "
              f"{r['events_per_s_wall']:,} | {base / r['job_s']:.2f}x |")
    print(f"\nStage costs (1 process, 1 worker, in-process run of {stages['job_s']} s, "
          f"{stages['recommendations']:,} recommendations):\n")
    print("| stage | seconds | us/event | us/recommendation |")
    print("| --- | --- | --- | --- |")
    for name, us in stages["us_per_event"].items():
        print(f"| {name} | {stages['seconds'][name]} | {us} | {stages['us_per_rec'][name]} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"events": filled.events, "runs": runs, "stages": stages,
                               "command": " ".join(sys.argv)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
