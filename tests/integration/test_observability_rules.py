"""Alert rules, their unit tests and the Prometheus/Alertmanager configs, checked by the real
tools (`promtool`, `amtool` from Debian's prometheus packages, installed by `make system-deps`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run `make system-deps` (Debian prometheus packages)"
    return path


def _run(*cmd: str | Path, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_rule_files_are_valid_and_name_every_alert() -> None:
    rules = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
    assert rules
    out = _run(_tool("promtool"), "check", "rules", *rules)
    assert "SUCCESS: 8 rules found" in out


def test_rule_unit_tests_pass() -> None:
    tests = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
    assert tests
    out = _run(_tool("promtool"), "test", "rules", *tests)
    assert "SUCCESS" in out and "FAILED" not in out


def test_every_alert_has_a_unit_test_and_a_runbook_section() -> None:
    import yaml

    alerts = [
        rule["alert"]
        for path in (DEPLOY / "prometheus" / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    tested = {
        case["alertname"]
        for path in (DEPLOY / "prometheus" / "tests").glob("*.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    runbook = (ROOT / "docs" / "operations.md").read_text().lower()
    assert set(alerts) <= tested
    for alert in alerts:
        assert f"### {alert.lower()}" in runbook, f"docs/operations.md has no section {alert}"


def test_prometheus_and_alertmanager_configs_are_valid() -> None:
    _run(_tool("promtool"), "check", "config", "prometheus.yml", cwd=DEPLOY / "prometheus")
    _run(_tool("amtool"), "check-config", DEPLOY / "alertmanager" / "alertmanager.yml")


@pytest.mark.parametrize("broken", ['up{job="hcp-job"} == 1'])
def test_rule_tests_catch_a_broken_rule(tmp_path: Path, broken: str) -> None:
    """The unit tests are not vacuous: the job-down rule inverted makes them fail."""
    rules = (DEPLOY / "prometheus" / "rules" / "hcp.yml").read_text()
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / "hcp.yml").write_text(rules.replace('up{job="hcp-job"} == 0', broken, 1))
    tests = (DEPLOY / "prometheus" / "tests" / "hcp_test.yml").read_text()
    (tmp_path / "tests" / "hcp_test.yml").write_text(tests)
    done = subprocess.run(
        [_tool("promtool"), "test", "rules", "tests/hcp_test.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0 and "HcpJobDown" in done.stdout + done.stderr
