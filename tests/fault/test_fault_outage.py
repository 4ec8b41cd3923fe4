"""Outages: Redis, PostgreSQL and the broker cut off mid-run and brought back.

Each service is reached through a :class:`~tests.support.faultkit.CutProxy` this test controls,
never by stopping the machine's shared Redis or PostgreSQL (that Redis keeps nothing on
disk). A cut resets every live connection and refuses new ones, which is what a crashed
server or a dropped network looks like to a client. The issue asks for a minute; CI cuts
for OUTAGE_S seconds, long enough for the sinks' backoff to reach its 5 s ceiling.

The broker test runs its own Tansu broker advertising the proxy's port, so every client
connection goes through the proxy; cutting the proxy stands in for a broker restart
(Tansu's memory storage would lose the topics on a real one).
"""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from confluent_kafka import Producer

from hcp.topics import Topics
from tests.support.cleanup import delete_prefixes
from tests.support.faultkit import (
    CutProxy,
    Fleet,
    Job,
    compare,
    fill_topics,
    fleet_messages,
    free_port,
    job_args,
    pg_state,
    record_figures,
    redis_state,
    redis_target,
    scrape,
    scratch_databases,
)
from tests.support.flowkit import T0, make_topics, produce
from tools.broker import EmbeddedBroker

pytestmark = pytest.mark.fault

FLEET = Fleet(asics=300, gpus=150, minutes=6)
BATCH = 20
OUTAGE_S = 12.0


def _drop(url: str, prefixes: list[str]) -> None:
    delete_prefixes(url, *prefixes)


class Sinks:
    """Filled topics, an uninterrupted reference run, and databases for the cut runs."""

    def __init__(self, bootstrap: str, redis_url: str, dsns: list[str], tmp: Path) -> None:
        self.bootstrap, self.redis_url, self.dsns, self.tmp = bootstrap, redis_url, dsns, tmp
        self.topics = Topics(prefix=f"o{uuid.uuid4().hex[:10]}.")
        fill_topics(bootstrap, self.topics, FLEET)
        self.prefixes: list[str] = []
        prefix = self.prefix()
        job = Job(self.args(redis_url, prefix, dsns[0]), tmp / "reference.log").start()
        assert job.wait(300) == 0, job.output()[-3000:]
        self.ref_redis = redis_state(redis_url, prefix)
        self.ref_pg = pg_state(dsns[0])

    def prefix(self) -> str:
        self.prefixes.append(f"o{uuid.uuid4().hex[:10]}:")
        return self.prefixes[-1]

    def args(self, redis_url: str, prefix: str, dsn: str, *extra: str) -> list[str]:
        return job_args(self.bootstrap, self.topics, redis_url, prefix, dsn, *extra,
                        batch_size=BATCH)


@pytest.fixture(scope="module")
def sinks(
    bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sinks]:
    with scratch_databases(3) as dsns:
        s = Sinks(bootstrap, redis_url, dsns, tmp_path_factory.mktemp("outage"))
        yield s
        _drop(redis_url, s.prefixes)


def _stream_len(url: str, key: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.xlen(key))
    finally:
        client.close()


def _pg_count(dsn: str, table: str = "recommendations") -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except psycopg.Error:
        return 0


def _wait(cond: object, job: Job, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert job.alive(), f"the job ended early:\n{job.output()[-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _outage_run(sinks: Sinks, which: str, request: pytest.FixtureRequest) -> None:
    """Cut Redis or PostgreSQL once the first recommendations are out, then restore it."""
    port = free_port()
    if which == "redis":
        host, rport = redis_target(sinks.redis_url)
        proxy = CutProxy((host, rport))
        redis_url = re.sub(r"//[^/]+/", f"//127.0.0.1:{proxy.port}/", sinks.redis_url)
        dsn = sinks.dsns[1]
        sink, line_fail, line_ok = "redis", "Redis sink: ", "recovered after"
    else:
        proxy = CutProxy(("127.0.0.1", 5432))
        redis_url = sinks.redis_url
        dsn = sinks.dsns[2].replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        sink, line_fail, line_ok = "postgres", "postgres sink ", "recovered after"
    prefix = sinks.prefix()
    stream = f"{prefix}recommendations"
    direct_dsn = sinks.dsns[1] if which == "redis" else sinks.dsns[2]
    try:
        job = Job(sinks.args(redis_url, prefix, dsn, "--metrics-port", str(port)),
                  sinks.tmp / f"{which}.log").start()
        # Mid-run: the first window is out, the rest of the input is still to come.
        _wait(lambda: _stream_len(sinks.redis_url, stream) > 0, job)
        proxy.cut()
        time.sleep(3.0)
        # The other sink stalls too: the worker holds its input while the batch is retried.
        held = (_stream_len(sinks.redis_url, stream), _pg_count(direct_dsn))
        outages: dict[str, float] = {}
        restore_at = time.monotonic() + OUTAGE_S - 3.0
        while time.monotonic() < restore_at:
            outages = scrape(port, "hcp_sink_outages_total") or outages
            time.sleep(0.1)
        still = (_stream_len(sinks.redis_url, stream), _pg_count(direct_dsn))
        proxy.restore()
        assert job.alive(), "the job died during the outage"
        deadline = time.monotonic() + 120
        while job.alive():
            assert time.monotonic() < deadline, f"no catch-up:\n{job.output()[-3000:]}"
            outages = scrape(port, "hcp_sink_outages_total") or outages
            time.sleep(0.1)
        assert job.wait(60) == 0, job.output()[-3000:]
    finally:
        if job.alive():
            job.kill()
        proxy.close()
    out = job.output()
    fails = [ln for ln in out.splitlines() if line_fail in ln and "failed" in ln
             and line_ok not in ln]
    recovered = [ln for ln in out.splitlines() if line_fail in ln and line_ok in ln]
    diff = compare(sinks.ref_redis, redis_state(sinks.redis_url, prefix), sinks.ref_pg,
                   pg_state(direct_dsn))
    count = outages.get(f'{{sink="{sink}"}}', 0.0)
    record_figures(request.config, f"outage_{which}", {
        "outage_seconds": round(proxy.cut_seconds, 1), "outages_metric": count,
        "outage_log_lines": len(fails), "recovered_log_lines": len(recovered),
        "held_during_outage": held == still, "rows_compared": diff.compared,
        "rows_lost": diff.lost, "rows_duplicated": diff.duplicated,
    })
    assert diff.ok, diff.detail[:20]
    assert count == 1.0, outages
    assert len(fails) == 1, fails
    assert len(recovered) == 1, recovered
    assert held == still, f"output moved during the outage: {held} -> {still}"
    assert proxy.cut_seconds >= OUTAGE_S


def test_redis_outage_mid_run_holds_input_then_catches_up(
    sinks: Sinks, request: pytest.FixtureRequest
) -> None:
    _outage_run(sinks, "redis", request)


def test_postgres_outage_mid_run_holds_input_then_catches_up(
    sinks: Sinks, request: pytest.FixtureRequest
) -> None:
    _outage_run(sinks, "postgres", request)


def test_broker_cut_mid_run_is_survived_and_output_is_complete(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The job keeps running through a broker cut and reads what is written after it.

    The input is prefetched by the consumer, so the cut only matters for input that comes
    later: the first half of the fleet's data is there at start, the second half is
    written after the broker is back, and the job (without --once) must read it all.
    """
    fleet = Fleet(asics=200, gpus=100, minutes=6)
    cut_s = 10.0
    proxy_port = free_port()
    prefixes = [f"k{uuid.uuid4().hex[:10]}:", f"k{uuid.uuid4().hex[:10]}:"]
    topics = Topics(prefix=f"k{uuid.uuid4().hex[:10]}.")
    split = T0 + 3 * 60_000
    asics, gpus, prices = fleet_messages(fleet)
    halves = [
        [[m for m in msgs if (m["ts"] < split) == first] for msgs in (asics, gpus, prices)]
        for first in (True, False)
    ]
    port = free_port()
    last_end = T0 + (fleet.minutes - 1) * 60_000  # the last window stays open without --once
    closed = (fleet.minutes - 1) * (fleet.asics + fleet.gpus)
    with (
        EmbeddedBroker(advertised_port=proxy_port, log_path=tmp_path / "broker.log") as broker,
        scratch_databases(2) as dsns,
    ):
        proxy = CutProxy(("127.0.0.1", broker.port), port=proxy_port)
        boot = proxy.address
        job: Job | None = None
        try:
            make_topics(boot, topics)

            def send(half: list[list[dict]]) -> None:
                produce(boot, topics.asic, half[0], "asic_id")
                produce(boot, topics.gpu, half[1], "gpu_id")
                # Prices round-robin, so no price partition is empty: an empty one would
                # hold the watermark for ever without --idle-timeout-s (see below).
                producer = Producer({"bootstrap.servers": boot, "linger.ms": 5})
                for i, msg in enumerate(half[2]):
                    producer.produce(topics.prices, json.dumps(msg).encode(),
                                     key=msg["kind"].encode(), partition=i % 4)
                assert producer.flush(30) == 0

            send(halves[0])
            args = job_args(boot, topics, redis_url, prefixes[0], dsns[0], batch_size=BATCH)
            # A 2 s idle timeout, far shorter than the cut: inputs must not count as idle
            # while the broker is away, or whichever partition came back first would close
            # windows that the others' backlog then reaches late.
            args = [a for a in args if a != "--once"] + ["--metrics-port", str(port)]
            at = args.index("--idle-timeout-s")
            args[at + 1] = "2"
            job = Job(args, tmp_path / "broker-job.log").start()
            stream = f"{prefixes[0]}recommendations"
            _wait(lambda: _stream_len(redis_url, stream) > 0, job)
            proxy.cut()
            time.sleep(cut_s)
            assert job.alive(), job.output()[-3000:]
            proxy.restore()
            send(halves[1])
            try:
                _wait(lambda: _stream_len(redis_url, stream) >= closed
                      and _pg_count(dsns[0]) >= closed, job, timeout=120)
            except AssertionError:
                counts = (_stream_len(redis_url, stream), _pg_count(dsns[0]), closed)
                late = scrape(port, "hcp_late_events_total")
                job.kill()
                raise AssertionError(f"no catch-up after the cut: {counts}, {late}") from None
            late = scrape(port, "hcp_late_events_total")
            time.sleep(1.0)  # nothing more may come: the last window stays open
            job.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            assert job.wait(60) == 0, job.output()[-3000:]
            ref_args = job_args(boot, topics, redis_url, prefixes[1], dsns[1], batch_size=BATCH)
            ref = Job(ref_args, tmp_path / "broker-ref.log").start()
            assert ref.wait(300) == 0, ref.output()[-3000:]
            got_redis, ref_redis = (redis_state(redis_url, p) for p in prefixes)
            got_pg, ref_pg = pg_state(dsns[0]), pg_state(dsns[1], max_window_end_ms=last_end)
        finally:
            if job is not None and job.alive():
                job.kill()
            proxy.close()
            _drop(redis_url, prefixes)
    # Compare what a run without --once can have: every input row, every closed window.
    ref_redis = {"recommendations": [e for e in ref_redis["recommendations"]
                                     if int(e[0].split("-")[0]) <= last_end]}
    got_redis = {"recommendations": got_redis.get("recommendations", [])}
    diff = compare(ref_redis, got_redis, {}, {})
    pg_diff = compare({}, {}, ref_pg, got_pg)
    errors = [ln for ln in job.output().splitlines() if "Kafka error" in ln]
    record_figures(request.config, "outage_broker", {
        "cut_seconds": round(proxy.cut_seconds, 1), "kafka_error_log_lines": len(errors),
        "stream_entries": len(got_redis.get("recommendations", [])),
        "late_events": sum(late.values()),
        "rows_lost": diff.lost + pg_diff.lost,
        "rows_duplicated": diff.duplicated + pg_diff.duplicated,
    })
    assert diff.ok and pg_diff.ok, (diff.detail + pg_diff.detail)[:20]
    assert len(got_redis["recommendations"]) == closed
    assert sum(late.values()) == 0, late
