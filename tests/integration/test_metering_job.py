"""Metering in the job: known run times give hand-computed usage, unchanged after SIGKILL.

One 2-GPU workload runs from T0+30 s (first report of its id) to T0+150 s (first idle
report) on GPUs drawing 600 W and 400 W, at a spot price of 2.0 $/h that becomes 3.0 at
T0+90 s, capped at 2.5, with electricity at 100 $/MWh. By hand, per minute:

    minute 0: 30 s x 2 = 60 GPU-s at 2.0      minute 1: 120 GPU-s at 2.0 (in force at :60)
    minute 2: 60 GPU-s at min(3.0, 2.5)       energy: mean 500 W x GPU-s
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from hcp.topics import Topics
from tests.support.cleanup import delete_prefixes
from tests.support.faultkit import Job, job_args, kill_at, produce_many, scratch_databases
from tests.support.flowkit import T0, gpu_msg, make_topics, price_msg

pytestmark = [pytest.mark.slow, pytest.mark.pg]

MINUTE = 60_000
EXPECTED = {  # minute offset -> (gpu_seconds, charge_usd)
    0: (60.0, 60 / 3600 * 2.0),
    1: (120.0, 120 / 3600 * 2.0),
    2: (60.0, 60 / 3600 * 2.5),
}


def scenario(bootstrap: str, topics: Topics) -> None:
    make_topics(bootstrap, topics)
    gpus = []
    for s in range(0, 301, 5):
        ts = T0 + s * 1000
        for gid, watts in (("gpu-a", 600.0), ("gpu-b", 400.0)):
            if 30 <= s < 150:
                gpus.append(gpu_msg(gid, ts, "site-01", "busy", workload_id="wl-meter",
                                    power_w=watts))
            else:
                gpus.append(gpu_msg(gid, ts, "site-01", "idle"))
    produce_many(bootstrap, topics.gpu, gpus, "gpu_id")
    produce_many(bootstrap, topics.prices, [
        price_msg("gpu_spot_usd_hr", 2.0, T0 - 1000, model="H100-SXM"),
        price_msg("gpu_spot_usd_hr", 3.0, T0 + 90_000, model="H100-SXM"),
        price_msg("electricity_usd_mwh", 100.0, T0 - 1000, site="site-01"),
    ], "kind")
    produce_many(bootstrap, topics.workloads, [{
        "v": 1, "ts": T0 + 2000, "workload_id": "wl-meter", "customer": "acme", "priority": 5,
        "gpus": 2, "mem_gb": 20.0, "est_duration_s": 120, "max_price_usd_hr": 2.5,
    }], "workload_id")


def usage(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT workload_id, (extract(epoch FROM minute) * 1000)::bigint, customer, site,"
            " gpu_model, gpus, gpu_seconds, energy_wh, energy_cost_usd, spot_usd_hr,"
            " rate_usd_hr, charge_usd, samples FROM usage_minutes ORDER BY 1, 2"
        ).fetchall()


def commands(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT actor, target, request_id, detail::text FROM audit_log "
            "WHERE action = 'fleet.command' ORDER BY target, request_id").fetchall()


@pytest.fixture(scope="module")
def world(bootstrap: str, redis_url: str) -> Iterator[tuple[Topics, list[str], list[str]]]:
    topics = Topics(prefix=f"m{uuid.uuid4().hex[:10]}.")
    scenario(bootstrap, topics)
    prefixes = [f"m{uuid.uuid4().hex[:10]}:" for _ in range(2)]
    with scratch_databases(2) as dsns:
        yield topics, dsns, prefixes
    delete_prefixes(redis_url, *prefixes)


def test_usage_equals_hand_computation_and_survives_sigkill(
    world: tuple[Topics, list[str], list[str]], bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    topics, dsns, prefixes = world
    args = [job_args(bootstrap, topics, redis_url, p, d, batch_size=10)
            for p, d in zip(prefixes, dsns, strict=True)]
    ref = Job(args[0], tmp_path / "reference.log").start()
    assert ref.wait(240) == 0, ref.output()[-3000:]
    rows = usage(dsns[0])
    assert [r[1] - T0 for r in rows] == [0, MINUTE, 2 * MINUTE]
    for r in rows:
        gs, charge = EXPECTED[(r[1] - T0) // MINUTE]
        assert r[0] == "wl-meter" and r[2] == "acme" and r[3] == "site-01"
        assert r[4] == "H100-SXM" and r[5] == 2
        assert r[6] == pytest.approx(gs)
        assert r[7] == pytest.approx(500.0 * gs / 3600)
        assert r[8] == pytest.approx(500.0 * gs / 3600 / 1e6 * 100.0)
        assert r[11] == pytest.approx(charge)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    total = client.hgetall(f"{prefixes[0]}usage:workload:wl-meter")
    assert float(total["gpu_seconds"]) == pytest.approx(240.0)
    assert float(total["charge_usd"]) == pytest.approx(sum(c for _, c in EXPECTED.values()))
    month = client.hgetall(f"{prefixes[0]}usage:customer:acme:2026-01")
    assert float(month["gpu_seconds"]) == pytest.approx(240.0)

    # The same topics, SIGKILLed after a snapshot and resumed: the same rows, none twice.
    rec = tmp_path / "rec"
    extra = ["--recovery-dir", str(rec), "--snapshot-interval-s", "0.3"]
    killed = Job([*args[1], *extra], tmp_path / "killed.log").start()
    kind = kill_at(killed, rec, "after_snapshot", random.Random(3), 0.3)
    resumed = Job([*args[1], *extra], tmp_path / "killed.log").start()
    assert resumed.wait(240) == 0, resumed.output()[-3000:]
    assert kind is None or "resuming from recovery directory" in resumed.output()
    assert usage(dsns[1]) == rows
    # The job's fleet commands are in the audit trail, each once, killed or not.
    assert commands(dsns[1]) == commands(dsns[0]) and commands(dsns[0])
    again = client.hgetall(f"{prefixes[1]}usage:workload:wl-meter")
    assert again == total
