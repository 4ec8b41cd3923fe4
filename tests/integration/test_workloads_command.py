"""`hcp workloads` reads what the Redis sink wrote from real router events."""

from __future__ import annotations

import polars as pl
import pytest

from flows.router.router import Router, RouterConfig
from generators.router_sim import SimFleet
from hcp.assignments import apply_assignment
from sinks.redis.sink import RedisWriter
from tools.cli import main

T0 = 1_767_225_600_000


def route_some(redis_url: str, prefix: str) -> None:
    """Two GPUs, four requests: the p7 and the first p5 run; the other p5 waits ahead of p2."""
    fleet = SimFleet(2, sites=("north",))
    router = Router(RouterConfig(urgent_priority=11))
    router.on_gpu_status(fleet.status(T0))
    router.on_requests(pl.DataFrame(
        {"v": [1] * 4, "ts": [T0, T0 + 1, T0 + 2, T0 + 3],
         "workload_id": ["run-a", "wait-b", "wait-lo", "run-hi"], "customer": ["c"] * 4,
         "priority": [5, 5, 2, 7], "gpus": [1, 1, 1, 1], "mem_gb": [10.0] * 4,
         "est_duration_s": [3600] * 4}))
    writer = RedisWriter(redis_url, prefix=prefix)
    try:
        for step in range(3):
            now = T0 + 10 + step * 5_000
            router.on_gpu_status(fleet.status(now))
            router.route(now)
            events, msgs = router.drain()
            for m in msgs:
                apply_assignment(fleet, m)
            writer.write_batch([("workload_events", events)])
    finally:
        writer.close()


def test_workloads_table(redis_url: str, redis_prefix: str, capsys) -> None:
    route_some(redis_url, redis_prefix)
    code = main(["workloads", "--redis", redis_url, "--redis-prefix", redis_prefix])
    out = capsys.readouterr().out
    assert code == 0
    assert "2 queued, 2 running" in out
    queue = out.split("QUEUE")[1].split("RUNNING")[0]
    assert queue.index("wait-b") < queue.index("wait-lo")  # by priority
    running = out.split("RUNNING")[1]
    assert "run-a" in running and "run-hi" in running and "north" in running
    assert "gpu-0000" in running


def test_empty_prefix_and_unreachable_redis(redis_url: str, redis_prefix: str, capsys) -> None:
    assert main(["workloads", "--redis", redis_url, "--redis-prefix", redis_prefix]) == 0
    assert "workloads: none" in capsys.readouterr().out
    code = main(["workloads", "--redis", "redis://127.0.0.1:1/0"])
    err = capsys.readouterr().err
    assert code == 1 and "unreachable" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "env"),
    [("--redis", "HCP_REDIS_URL"), ("--redis-prefix", "HCP_REDIS_PREFIX"),
     ("--limit", "HCP_WORKLOADS_LIMIT")],
)
def test_flags_show_their_env_variable(flag: str, env: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["workloads", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert flag in text and f"[env: {env}]" in text
