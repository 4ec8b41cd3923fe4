"""``hcp bench``'s backtest part over a small fleet: fill, record, backtest, figures."""

from __future__ import annotations

from tools.bench.backtest import run_backtest_part
from tools.bench.fill import FillSpec
from tools.bench.report import BenchResults, format_table


def test_backtest_part_replays_every_recorded_message(bootstrap: str) -> None:
    spec = FillSpec(events=30_000, asics=97, gpus=3, sites=2, partitions=2)
    got = run_backtest_part(bootstrap, spec)
    assert got["devices"] == 100
    assert got["recorded_messages"] == got["filled_events"] >= 30_000
    assert got["policies"] == ["defaults", "no_dwell"]
    assert got["event_time_s"] >= 290  # 30,000 events of 100 devices at 1 Hz
    assert got["speedup"] > 1 and got["backtest_messages_per_s"] > 0
    names = [row["name"] for row in got["rows"]]
    assert names == ["recorded", "always_on", "defaults", "no_dwell"]
    table = format_table(BenchResults(backtest=got))
    assert "backtest" in table and "x real time" in table
