"""Metering against a hand computation: known run times, powers and prices."""

from __future__ import annotations

import pickle

import polars as pl
import pytest

from flows.metering import Meter
from hcp.schemas import WORKLOAD_EVENT_SCHEMA
from hcp.tags import Out

T0 = 1_700_000_000_000 // 60_000 * 60_000  # a minute boundary


def events(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=WORKLOAD_EVENT_SCHEMA, orient="row")


def requests() -> pl.DataFrame:
    return pl.DataFrame({
        "workload_id": ["w1", "w2"], "customer": ["acme", "beta"],
        "max_price_usd_hr": [1.5, None], "op": [None, None], "ts": [T0, T0],
    })


def prices() -> pl.DataFrame:
    return pl.DataFrame({
        "ts": [T0 - 1000, T0 + 90_000, T0 - 1000],
        "kind": ["gpu_spot_usd_hr", "gpu_spot_usd_hr", "electricity_usd_mwh"],
        "value": [2.0, 1.0, 100.0], "site": [None, None, "s1"], "model": ["H100", "H100", None],
    })


def gpu_rows() -> pl.DataFrame:
    # w1 on two GPUs: 300 W and 500 W in minute 0, 400 W in minute 1; w2: 250 W.
    return pl.DataFrame({
        "ts": [T0 + 10_000, T0 + 20_000, T0 + 70_000, T0 + 30_000],
        "gpu_id": ["g1", "g2", "g1", "g3"], "model": ["H100"] * 4,
        "power_w": [300.0, 500.0, 400.0, 250.0], "workload_id": ["w1", "w1", "w1", "w2"],
    })


def run_events() -> pl.DataFrame:
    # w1 runs T0+0 .. T0+120 s on 2 GPUs; w2 runs T0+30 s .. preempted at T0+60 s.
    return events([
        ("w1", T0, "assigned", "running", 5, "g1,g2", "s1", ""),
        ("w2", T0 + 30_000, "assigned", "running", 5, "g3", "s1", ""),
        ("w2", T0 + 60_000, "running", "preempted", 5, "g3", "s1", "urgent"),
        ("w1", T0 + 120_000, "running", "completed", 5, "g1,g2", "s1", ""),
    ])


def collect(meter: Meter) -> dict[tuple[str, int], dict]:
    rows: dict[tuple[str, int], dict] = {}
    for tag, df in meter.flush():
        if tag == Out.USAGE:
            for r in df.iter_rows(named=True):
                rows[(r["workload_id"], r["minute"])] = r
    return rows


def feed(meter: Meter, order: list[str]) -> dict[tuple[str, int], dict]:
    rows: dict[tuple[str, int], dict] = {}
    for step in order:
        {"req": lambda: meter.on_requests(requests()), "gpu": lambda: meter.on_gpu(gpu_rows()),
         "prices": lambda: meter.on_prices(prices()),
         "events": lambda: meter.on_events(run_events())}[step]()
        rows.update(collect(meter))
    return rows


def test_usage_equals_hand_computation() -> None:
    rows = feed(Meter(), ["req", "prices", "gpu", "events"])
    m0, m1 = rows[("w1", T0)], rows[("w1", T0 + 60_000)]
    # Minute 0: 60 s x 2 GPUs, mean power (300 + 500) / 2 = 400 W, spot 2.0 capped at 1.5.
    assert m0["gpu_seconds"] == pytest.approx(120.0)
    assert m0["energy_wh"] == pytest.approx(400 * 120 / 3600)
    assert m0["energy_cost_usd"] == pytest.approx(400 * 120 / 3600 / 1e6 * 100)
    assert m0["charge_usd"] == pytest.approx(120 / 3600 * 1.5)
    assert m0["customer"] == "acme" and m0["samples"] == 2
    # Minute 1: 120 GPU-s at 400 W; spot 2.0 until T0+90 s then 1.0: the rate in force at
    # the minute's start (2.0, capped 1.5) applies to the minute.
    assert m1["gpu_seconds"] == pytest.approx(120.0)
    assert m1["energy_wh"] == pytest.approx(400 * 120 / 3600)
    assert m1["charge_usd"] == pytest.approx(120 / 3600 * 1.5)
    w2 = rows[("w2", T0)]
    # w2: 30 s on 1 GPU until preempted, no cap: spot 2.0.
    assert w2["gpu_seconds"] == pytest.approx(30.0)
    assert w2["energy_wh"] == pytest.approx(250 * 30 / 3600)
    assert w2["charge_usd"] == pytest.approx(30 / 3600 * 2.0)
    assert set(rows) == {("w1", T0), ("w1", T0 + 60_000), ("w2", T0)}


def test_arrival_order_and_snapshot_do_not_change_the_figures() -> None:
    reference = feed(Meter(), ["req", "prices", "gpu", "events"])
    other = feed(Meter(), ["events", "gpu", "prices", "req"])
    assert other == reference
    meter = Meter()
    feed(meter, ["req", "prices"])
    resumed = Meter(pickle.loads(pickle.dumps(meter.state)))
    rows = feed(resumed, ["gpu", "events"])
    assert {k: v["charge_usd"] for k, v in rows.items()} == {
        k: v["charge_usd"] for k, v in reference.items()}


def test_totals_and_no_double_billing_on_replay() -> None:
    meter = Meter()
    feed(meter, ["req", "prices", "gpu", "events"])
    # The same events again (a replay) change no row and emit nothing.
    meter.on_events(run_events())
    again = [df for tag, df in meter.flush() if tag == Out.USAGE]
    assert not again or all(df.height == 0 for df in again)
    totals = meter.totals({"w1"})
    w1 = totals.filter(pl.col("scope") == "workload").row(0, named=True)
    assert w1["gpu_seconds"] == pytest.approx(240.0)
    assert w1["charge_usd"] == pytest.approx(240 / 3600 * 1.5)
