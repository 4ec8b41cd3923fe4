"""The dashboard generator: datasources match the provisioning, layouts fit the grid, and
`python -m tools.dashboards --check` tells stale files from current ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tools.dashboards import render_all

ROOT = Path(__file__).resolve().parents[3]
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "hcp.yml"


def test_every_target_uses_a_provisioned_datasource() -> None:
    provisioned = {
        (d["type"], d["uid"]) for d in yaml.safe_load(PROVISIONING.read_text())["datasources"]
    }
    for name, text in render_all().items():
        for panel in json.loads(text)["panels"]:
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for target in panel["targets"]:
                ds = target["datasource"]
                assert (ds["type"], ds["uid"]) in provisioned, f"{name}: {panel['title']}"


def test_panels_fit_the_grid_without_overlapping() -> None:
    for name, text in render_all().items():
        board = json.loads(text)
        cells: set[tuple[int, int]] = set()
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            g = panel["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"{name}: {panel['title']}"
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                    for y in range(g["y"], g["y"] + g["h"])}
            assert not mine & cells, f"{name}: {panel['title']} overlaps"
            cells |= mine


def test_check_mode_fails_on_stale_files_and_passes_after_writing(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tools.dashboards", "--out", str(tmp_path / "json"),
           "--pictures", str(tmp_path / "svg")]
    stale = subprocess.run([*cmd, "--check"], capture_output=True, text=True, cwd=ROOT)
    assert stale.returncode == 1 and "is not what tools/dashboards generates" in stale.stderr
    assert subprocess.run(cmd, capture_output=True, cwd=ROOT).returncode == 0
    assert len(list((tmp_path / "json").glob("*.json"))) == 5
    assert len(list((tmp_path / "svg").glob("*.svg"))) == 5
    fresh = subprocess.run([*cmd, "--check"], capture_output=True, text=True, cwd=ROOT)
    assert fresh.returncode == 0, fresh.stderr
