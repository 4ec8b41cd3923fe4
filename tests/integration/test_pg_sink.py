"""The PostgreSQL sink against the local server: exact COPY, idempotent upserts, atomic
batches, retry through an outage, the hourly rollup, and a real Bytewax dataflow."""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator

import bytewax.operators as op
import numpy as np
import polars as pl
import psycopg
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from polars.testing import assert_frame_equal

from hcp import schemas
from sinks.metrics import SINK_ERRORS, SINK_OUTAGES, SINK_ROWS
from sinks.postgres.schema import apply_migrations
from sinks.postgres.sink import PostgresSink
from sinks.postgres.writer import PgWriter
from tests.conftest import new_database
from tests.support.faults import InjectedFaultError, fail_once_before_commit

pytestmark = pytest.mark.pg

T0 = 1_764_000_000_000
TIME_COLUMNS = {
    "gpu_metrics": ("ts",),
    "asic_metrics": ("ts",),
    "market_prices": ("ts",),
    "device_windows": ("window_start", "window_end"),
    "recommendations": ("window_start", "window_end"),
    "workload_events": ("ts",),
}
KEYS = {
    "gpu_metrics": ["gpu_id", "ts"],
    "asic_metrics": ["asic_id", "ts"],
    "market_prices": ["key", "ts"],
    "device_windows": ["device_id", "window_start"],
    "recommendations": ["device_id", "window_end"],
    "workload_events": ["workload_id", "ts", "to_state"],
}
SCHEMAS = {
    "gpu_metrics": schemas.polars_schema(schemas.GPU_FIELDS),
    "asic_metrics": schemas.polars_schema(schemas.ASIC_FIELDS),
    "market_prices": schemas.PRICE_ROW_SCHEMA,
    "device_windows": schemas.WINDOW_SCHEMA,
    "recommendations": schemas.REC_SCHEMA,
    "workload_events": schemas.WORKLOAD_EVENT_SCHEMA,
}
NOT_NULL = {
    "gpu_id",
    "asic_id",
    "device_id",
    "workload_id",
    "key",
    "kind",
    "scope",
    "site",
    "model",
    "state",
    "device_type",
    "action",
    "reason",
    "to_state",
    "samples",
    "value",
    "ts",
    "window_start",
    "window_end",
}


@pytest.fixture()
def db(pg_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    with new_database("pgsink") as dsn:
        apply_migrations(dsn)
        yield dsn


def random_frame(table: str, n: int, seed: int, *, key_offset: int = 0) -> pl.DataFrame:
    """``n`` rows with unique keys and awkward values: nulls, '' strings, extreme floats."""
    rng = np.random.default_rng(seed)
    awkward = np.array([0.0, -0.0, 1e-300, 1.7976931348623157e308, 1 / 3, 2.5e-7, 123456.789])
    cols: dict[str, pl.Series] = {}
    for name, dtype in SCHEMAS[table].items():
        nullable = name not in NOT_NULL and name != "v"
        if name in ("ts", "window_start"):
            # Unique, arbitrary (not whole-second) milliseconds: exactness is the point.
            values = T0 + (np.arange(n) + key_offset) * 997 + rng.integers(0, 997, n)
            series = pl.Series(name, values, dtype=pl.Int64)
        elif name == "window_end":
            series = pl.Series(name, cols["window_start"].to_numpy() + 60_000, dtype=pl.Int64)
        elif name == "v":
            series = pl.Series(name, np.ones(n, dtype=np.int64))
        elif dtype == pl.Float64:
            vals = rng.normal(0, 1e6, n) * rng.choice([1e-9, 1.0, 1e9], n)
            vals = np.where(rng.random(n) < 0.2, rng.choice(awkward, n), vals)
            series = pl.Series(name, vals)
        elif dtype == pl.Int64:
            series = pl.Series(name, rng.integers(-(2**62), 2**62, n))
        else:
            words = np.array(["", "a b", 'q"uote', "comma,here", "ünï", "\\N", "x"])
            series = pl.Series(name, rng.choice(words, n).tolist())
        if nullable:
            series = series.scatter(np.flatnonzero(rng.random(n) < 0.25), None)
        cols[name] = series
    frame = pl.DataFrame(cols)
    # Key text columns must be unique per row for a deterministic expectation.
    for key in KEYS[table]:
        if SCHEMAS[table][key] == pl.String:
            frame = frame.with_columns(
                pl.format("{}-{}", pl.col(key), pl.int_range(key_offset, key_offset + n)).alias(key)
            )
    return frame


def read_back(dsn: str, table: str) -> pl.DataFrame:
    """The table as the sink's frames would carry it: times as epoch ms."""
    with psycopg.connect(dsn) as conn:
        cols = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                "ORDER BY ordinal_position",
                (table,),
            )
        ]
        exprs = [
            f"(EXTRACT(EPOCH FROM {c}) * 1000)::bigint AS {c}" if c in TIME_COLUMNS[table] else c
            for c in cols
        ]
        cur = conn.execute(f"SELECT {', '.join(exprs)} FROM {table}")
        rows = cur.fetchall()
    schema = {c: SCHEMAS[table][c] for c in cols}
    return pl.DataFrame(rows, schema=schema, orient="row").sort(KEYS[table])


def expected(table: str, *frames: pl.DataFrame) -> pl.DataFrame:
    frame = pl.concat(frames).drop("v", strict=False)
    frame = frame.unique(subset=KEYS[table], keep="last", maintain_order=True)
    return frame.sort(KEYS[table])


def count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("copy_format", ["csv", "binary"])
@pytest.mark.parametrize("table", list(SCHEMAS))
def test_copy_round_trip_is_exact(db: str, table: str, copy_format: str) -> None:
    frame = random_frame(table, 400, seed=list(SCHEMAS).index(table))
    with psycopg.connect(db, autocommit=True) as conn:
        PgWriter(conn, copy_format=copy_format).write({table: frame})  # type: ignore[arg-type]
    got = read_back(db, table)
    want = expected(table, frame)
    assert got.height == 400
    # Bit-exact floats (check_exact), nulls distinct from '' and from NaN, ms timestamps.
    assert_frame_equal(got, want.select(got.columns), check_exact=True)


def test_same_input_twice_leaves_the_same_rows(db: str) -> None:
    windows = random_frame("device_windows", 300, seed=1)
    recs = random_frame("recommendations", 300, seed=2)
    asic = random_frame("asic_metrics", 300, seed=3)
    items = [("windows", windows), ("recs", recs), ("asic_raw", asic)]
    part = PostgresSink(db, migrate=False).build("pg", 0, 1)
    part.write_batch(items)
    first = {t: read_back(db, t) for t in ("device_windows", "recommendations", "asic_metrics")}
    # The replay, split differently and with a duplicated slice inside one batch.
    part.write_batch([("windows", windows.slice(0, 100)), ("windows", windows), ("recs", recs)])
    part.write_batch([("asic_raw", asic), ("asic_raw", asic.slice(50, 10))])
    part.close()
    for table, before in first.items():
        assert count(db, table) == 300
        assert_frame_equal(read_back(db, table), before, check_exact=True)


def test_later_values_for_a_key_replace_earlier_ones(db: str) -> None:
    recs = random_frame("recommendations", 50, seed=4)
    changed = recs.with_columns(pl.lit("curtail").alias("action"), pl.col("score") + 1)
    with psycopg.connect(db, autocommit=True) as conn:
        writer = PgWriter(conn)
        writer.write({"recommendations": recs})
        writer.write({"recommendations": changed})
    assert_frame_equal(read_back(db, "recommendations"), expected("recommendations", changed))


def _batches(n: int) -> list[dict[str, pl.DataFrame]]:
    return [
        {
            "device_windows": random_frame("device_windows", 120, seed=10 + i, key_offset=i * 120),
            "recommendations": random_frame(
                "recommendations", 120, seed=50 + i, key_offset=i * 120
            ),
        }
        for i in range(n)
    ]


def test_failure_on_nth_batch_leaves_no_partial_batch_and_rewrite_completes(db: str) -> None:
    batches = _batches(5)

    def fail_third(batch_number: int) -> None:
        if batch_number == 3:
            raise InjectedFaultError("boom")

    with psycopg.connect(db, autocommit=True) as conn:
        writer = PgWriter(conn, before_commit=fail_third)
        writer.write(batches[0])
        writer.write(batches[1])
        with pytest.raises(InjectedFaultError):
            writer.write(batches[2])
        # Both tables hold exactly batches 1-2: batch 3's rows were merged, then rolled back.
        for table in ("device_windows", "recommendations"):
            assert_frame_equal(
                read_back(db, table), expected(table, *(b[table] for b in batches[:2]))
            )
        # A restart replays from the last committed point: batch 2 again, then 3..5.
        for batch in batches[1:]:
            writer.write(batch)
    for table in ("device_windows", "recommendations"):
        assert_frame_equal(read_back(db, table), expected(table, *(b[table] for b in batches)))


def test_sink_retries_the_failed_batch_and_completes(db: str, caplog) -> None:
    batches = _batches(5)
    seen_during_retry: dict[str, int] = {}
    attempts: list[int] = []

    def hook(batch_number: int) -> None:
        attempts.append(batch_number)
        if batch_number != 3:
            return
        if attempts.count(3) == 1:
            raise InjectedFaultError("injected before commit")
        # Second attempt, still uncommitted: another session sees batches 1-2 only.
        for table in ("device_windows", "recommendations"):
            seen_during_retry[table] = count(db, table)

    errors = SINK_ERRORS.labels(sink="postgres")._value.get()
    outages = SINK_OUTAGES.labels(sink="postgres")._value.get()
    part = PostgresSink(db, before_commit=hook, backoff_min_s=0.01).build("pg", 0, 1)
    caplog.set_level(logging.INFO, logger="sinks.postgres.sink")
    for batch in batches:
        part.write_batch([("windows", batch["device_windows"]), ("recs", batch["recommendations"])])
    part.close()
    assert attempts == [1, 2, 3, 3, 4, 5]
    assert seen_during_retry == {"device_windows": 240, "recommendations": 240}
    for table in ("device_windows", "recommendations"):
        assert_frame_equal(read_back(db, table), expected(table, *(b[table] for b in batches)))
    assert SINK_ERRORS.labels(sink="postgres")._value.get() == errors + 1
    assert SINK_OUTAGES.labels(sink="postgres")._value.get() == outages + 1
    assert sum("holding the batch" in r.message for r in caplog.records) == 1
    assert sum("recovered after" in r.message for r in caplog.records) == 1


def test_a_failure_before_one_commit_is_retried_to_completion(db: str) -> None:
    batches = _batches(3)
    before_commit = fail_once_before_commit(2)
    part = PostgresSink(db, before_commit=before_commit, backoff_min_s=0.01, migrate=False)
    writer = part.build("pg", 0, 1)
    for batch in batches:
        writer.write_batch([("windows", batch["device_windows"])])
    assert before_commit.fired
    assert_frame_equal(
        read_back(db, "device_windows"),
        expected("device_windows", *(b["device_windows"] for b in batches)),
    )



def test_raw_storage_off_and_foreign_tags_ignored(db: str) -> None:
    rows_before = SINK_ROWS.labels(sink="postgres", table="device_windows")._value.get()
    part = PostgresSink(db, store_raw=False).build("pg", 0, 1)
    part.write_batch(
        [
            ("gpu_raw", random_frame("gpu_metrics", 10, seed=5)),
            ("asic_raw", random_frame("asic_metrics", 10, seed=6)),
            ("redis_only", pl.DataFrame({"x": [1]})),
            ("windows", random_frame("device_windows", 7, seed=7)),
            ("prices", random_frame("market_prices", 3, seed=8)),
        ]
    )
    assert count(db, "gpu_metrics") == 0
    assert count(db, "asic_metrics") == 0
    assert count(db, "device_windows") == 7
    assert count(db, "market_prices") == 3
    assert SINK_ROWS.labels(sink="postgres", table="device_windows")._value.get() == (
        rows_before + 7
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Proxy:
    """A TCP forwarder to the real server that we can start late (the DB 'comes back')."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self._server: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        server.settimeout(0.2)
        self._server = server
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()


def test_outage_holds_the_batch_logs_once_and_recovers(db: str, caplog) -> None:
    port = _free_port()
    server = db.split("@", 1)[1].split("/", 1)[0]  # host:port of the test server
    proxied = db.replace(server, f"127.0.0.1:{port}")
    assert proxied != db
    windows = random_frame("device_windows", 200, seed=9)
    errors = SINK_ERRORS.labels(sink="postgres")._value.get()
    outages = SINK_OUTAGES.labels(sink="postgres")._value.get()
    caplog.set_level(logging.INFO, logger="sinks.postgres.sink")
    part = PostgresSink(proxied, backoff_min_s=0.05, backoff_max_s=0.3).build("pg", 0, 1)
    writer = threading.Thread(target=part.write_batch, args=([("windows", windows)],))
    writer.start()
    proxy = _Proxy(port, ("127.0.0.1", int(server.rsplit(":", 1)[1])))
    try:
        time.sleep(1.5)
        assert writer.is_alive()  # still holding the batch: backpressure, not a drop
        assert count(db, "device_windows") == 0
        failures = SINK_ERRORS.labels(sink="postgres")._value.get() - errors
        assert failures >= 4  # 0.05 + 0.1 + 0.2 + 0.3 ... within 1.5 s
        proxy.start()
        writer.join(timeout=10)
        assert not writer.is_alive()
    finally:
        proxy.stop()
        part.close()
    assert_frame_equal(read_back(db, "device_windows"), expected("device_windows", windows))
    assert SINK_OUTAGES.labels(sink="postgres")._value.get() == outages + 1
    warnings = [r for r in caplog.records if "holding the batch" in r.message]
    assert len(warnings) == 1
    assert f"127.0.0.1:{port}" in warnings[0].message
    recovered = [r for r in caplog.records if "recovered after" in r.message]
    assert len(recovered) == 1


def test_hourly_rollup_equals_a_direct_aggregate(db: str) -> None:
    rng = np.random.default_rng(11)
    n = 2_000
    # 30 s and 60 s windows across ~6 hours, some ending exactly on an hour boundary.
    length = rng.choice([30_000, 60_000], n)
    end = (T0 // 3_600_000) * 3_600_000 + rng.integers(0, 6 * 60, n) * 60_000
    recs = pl.DataFrame(
        {
            "device_id": [f"d{i}" for i in range(n)],
            "device_type": rng.choice(["gpu", "asic"], n).tolist(),
            "site": rng.choice(["north", "south", "east"], n).tolist(),
            "model": "S21",
            "window_start": end - length,
            "window_end": end,
            "action": "mine",
            "reason": "profitable",
            "revenue_usd_hr": rng.uniform(0, 10, n),
            "cost_usd_hr": rng.uniform(0, 8, n),
        }
    ).with_columns((pl.col("revenue_usd_hr") - pl.col("cost_usd_hr")).alias("net_usd_hr"))
    with psycopg.connect(db, autocommit=True) as conn:
        PgWriter(conn).write({"recommendations": recs})
        rollup = conn.execute(
            "SELECT (EXTRACT(EPOCH FROM bucket) * 1000)::bigint, site, windows, device_hours, "
            "revenue_usd, cost_usd, net_usd FROM site_hourly_profit ORDER BY 1, 2"
        ).fetchall()
        direct = conn.execute(
            "SELECT (EXTRACT(EPOCH FROM date_trunc('hour', window_end AT TIME ZONE 'UTC'))"
            " * 1000)::bigint AS b, site, count(*), "
            "sum((EXTRACT(EPOCH FROM window_end) - EXTRACT(EPOCH FROM window_start)) / 3600), "
            "sum(revenue_usd_hr * EXTRACT(EPOCH FROM window_end - window_start)::float8 / 3600), "
            "sum(cost_usd_hr * EXTRACT(EPOCH FROM window_end - window_start)::float8 / 3600), "
            "sum(net_usd_hr * EXTRACT(EPOCH FROM window_end - window_start)::float8 / 3600) "
            "FROM recommendations GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    # An independent reference in polars, from the frame we wrote.
    reference = (
        recs.with_columns(
            ((pl.col("window_end") // 3_600_000) * 3_600_000).alias("bucket"),
            ((pl.col("window_end") - pl.col("window_start")) / 3_600_000).alias("h"),
        )
        .group_by("bucket", "site")
        .agg(
            pl.len().alias("windows"),
            pl.col("h").sum().alias("device_hours"),
            (pl.col("revenue_usd_hr") * pl.col("h")).sum().alias("revenue_usd"),
            (pl.col("cost_usd_hr") * pl.col("h")).sum().alias("cost_usd"),
            (pl.col("net_usd_hr") * pl.col("h")).sum().alias("net_usd"),
        )
        .sort("bucket", "site")
        .rows()
    )
    assert len(rollup) == len(direct) == len(reference) > 6
    for got, sql_row, ref in zip(rollup, direct, reference, strict=True):
        assert got[:3] == sql_row[:3] == ref[:3]
        for a, b, c in zip(got[3:], sql_row[3:], ref[3:], strict=True):
            assert math.isclose(a, float(b), rel_tol=1e-9)
            assert math.isclose(a, c, rel_tol=1e-9)


def test_bytewax_dataflow_writes_through_the_sink(db: str) -> None:
    batches = _batches(3)
    items = [("windows", b["device_windows"]) for b in batches]
    items += [("recs", b["recommendations"]) for b in batches]
    items.append(("somebody_elses", pl.DataFrame({"x": [1]})))
    flow = Dataflow("pg_sink_test")
    stream = op.input("in", flow, TestingSource(items, batch_size=2))
    op.output("pg", stream, PostgresSink(db))
    run_main(flow)
    for table in ("device_windows", "recommendations"):
        assert_frame_equal(read_back(db, table), expected(table, *(b[table] for b in batches)))


def test_a_split_batch_retries_only_the_connection_that_failed(db: str) -> None:
    # split_rows=1: every batch of two tables goes down two connections at once.
    batches = _batches(3)
    lock = threading.Lock()
    calls: list[int] = []

    def fail_first_commit_of_batch_2(batch_number: int) -> None:
        with lock:
            calls.append(batch_number)
            first = batch_number == 2 and calls.count(2) == 1
        if first:
            raise InjectedFaultError("injected before one lane's commit")

    part = PostgresSink(db, connections=2, split_rows=1, before_commit=fail_first_commit_of_batch_2,
                        backoff_min_s=0.01, migrate=False).build("pg", 0, 1)
    for batch in batches:
        part.write_batch([("windows", batch["device_windows"]), ("recs", batch["recommendations"])])
    part.close()
    # Two lanes per batch; batch 2's failed lane is written again, the other one is not.
    assert calls == [1, 1, 2, 2, 2, 3, 3]
    for table in ("device_windows", "recommendations"):
        assert_frame_equal(read_back(db, table), expected(table, *(b[table] for b in batches)))
