"""Scenario files (issue 18 item 10) and workload ids across runs (item 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generators import SimConfig, Simulation, load_scenario
from generators.workloads import run_tag
from hcp.errors import ConfigError

START_MS = 1_767_225_600_000
SITES = ["site-01", "site-02", "site-03"]


def _write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "story.json"
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"evnts": []}, "unknown top-level key(s) 'evnts'"),
        ({"random_spikes": "yes"}, "'random_spikes' must be true or false, got \"yes\""),
        ({"description": 7}, "'description' must be a string"),
        ({"events": {"type": "btc_price"}}, "'events' must be a list"),
        ([], "expected an object"),
    ],
)
def test_bad_top_level_is_rejected(tmp_path: Path, content: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_scenario(_write(tmp_path, content), START_MS, SITES)
    assert message in str(info.value)


def test_events_beyond_the_duration_are_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, {"events": [
        {"type": "btc_price", "at": 30, "value": 90_000},
        {"type": "electricity", "site": "site-01", "from": 700, "to": 900, "value": 500.0},
    ]})
    assert len(load_scenario(path, START_MS, SITES, duration_s=701).events) == 2
    with pytest.raises(ConfigError) as info:
        load_scenario(path, START_MS, SITES, duration_s=600)
    assert "event 1 (electricity) starts 700 s after --start" in str(info.value)
    assert "600 s of --duration" in str(info.value)


def test_non_utf8_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"description": "caf\xe9", "events": []}')
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_scenario(path, START_MS, SITES)


def _workload_ids(seed: int, start_ms: int) -> list[str]:
    config = SimConfig(seed=seed, gpus=0, asics=0, duration_s=300, start_ms=start_ms,
                       workload_rate=60, market=False)
    ids = []
    for block in Simulation(config).blocks(0, 300):
        if block.stream == "workloads":
            ids += [json.loads(v)["workload_id"] for v in block.values]
    return ids


def test_workload_ids_differ_between_runs_and_repeat_for_the_same_run() -> None:
    first = _workload_ids(7, START_MS)
    later = _workload_ids(7, START_MS + 300_000)  # a second `hcp generate --start +5min`
    assert first and later
    assert not set(first) & set(later)
    assert not set(first) & set(_workload_ids(8, START_MS))
    assert _workload_ids(7, START_MS) == first
    assert first[0] == f"wl-{run_tag(7, START_MS)}-0000001"
