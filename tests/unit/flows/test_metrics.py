"""The job's metric helpers: consumer lag from librdkafka stats, price gauges per unit, the
per-site gauges of a closed window. Values are read back from the real registry."""

from __future__ import annotations

import polars as pl
from confluent_kafka import OFFSET_BEGINNING
from prometheus_client import REGISTRY

from flows import metrics
from flows.source import _lag


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_lag_counts_from_the_position_not_the_committed_offset() -> None:
    # The job never commits: consumer_lag is -1, consumer_lag_stored is the real one.
    stats = {"consumer_lag": -1, "consumer_lag_stored": 42, "ls_offset": 100, "app_offset": 58}
    assert _lag(stats, OFFSET_BEGINNING) == 42


def test_lag_before_the_first_message_is_the_distance_from_the_start() -> None:
    fresh = {"consumer_lag": -1, "consumer_lag_stored": -1, "ls_offset": 30,
             "hi_offset": 30, "lo_offset": 0, "app_offset": -1001}
    assert _lag(fresh, OFFSET_BEGINNING) == 30
    assert _lag(fresh, 25) == 5  # resumed from a snapshot at offset 25
    empty = {**fresh, "ls_offset": 0, "hi_offset": 0}
    assert _lag(empty, OFFSET_BEGINNING) == 0
    assert _lag({"consumer_lag_stored": -1, "ls_offset": -1, "hi_offset": -1}, 0) is None


def test_prices_go_to_one_gauge_per_unit() -> None:
    rows = pl.DataFrame({
        "kind": ["btc_usd", "difficulty", "electricity_usd_mwh", "gpu_spot_usd_hr",
                 "power_cap_mw", "block_reward_btc"],
        "scope": ["", "", "unit-site", "UNIT-GPU", "unit-site", ""],
        "value": [97_000.0, 1.1e14, 42.5, 2.4, 1.5, 3.2],
    })
    metrics.set_prices(rows)
    assert _value("hcp_btc_usd") == 97_000.0
    assert _value("hcp_difficulty") == 1.1e14
    assert _value("hcp_block_reward_btc") == 3.2
    assert _value("hcp_electricity_usd_per_mwh", site="unit-site") == 42.5
    assert _value("hcp_gpu_spot_usd_per_hour", model="UNIT-GPU") == 2.4
    assert _value("hcp_power_cap_watts", site="unit-site") == 1.5e6
    assert _value("hcp_price_updated_timestamp_seconds", kind="btc_usd") > 1.7e9


def test_a_closed_window_sets_power_cap_and_decision_gauges_per_site() -> None:
    window = pl.DataFrame({
        "site": ["unit-a", "unit-a", "unit-a", "unit-b"],
        "device_type": ["asic", "asic", "gpu", "asic"],
        "action": ["mine", "curtail", "serve", "mine"],
        "power_w": [3500.0, 3400.0, 650.0, None],
        "expected_power_w": [3500.0, 3500.0, 700.0, 3500.0],
        "power_cap_mw": [0.004, 0.004, 0.004, None],
        "net_usd_hr": [1.0, -0.5, 2.0, 0.25],
        "window_end": [1_767_225_660_000] * 4,
    })
    metrics.observe_window(window)
    # Measured: every device's mean power (the curtailed ASIC still draws); planned: running.
    assert _value("hcp_site_power_watts", site="unit-a") == 7550.0
    assert _value("hcp_site_planned_power_watts", site="unit-a") == 4200.0
    assert _value("hcp_site_power_cap_watts", site="unit-a") == 4000.0
    assert _value("hcp_site_net_usd_per_hour", site="unit-a") == 2.5
    assert _value("hcp_site_devices", site="unit-a", device_type="asic", action="curtail") == 1
    assert _value("hcp_site_devices", site="unit-a", device_type="gpu", action="offer") == 0
    # No cap: no sample, so "power > cap" cannot match.
    assert _value("hcp_site_power_cap_watts", site="unit-b") is None
    metrics.observe_window(window.with_columns(pl.lit(None, pl.Float64).alias("power_cap_mw")))
    assert _value("hcp_site_power_cap_watts", site="unit-a") is None
