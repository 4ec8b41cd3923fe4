"""The `hcp` parser (issue 18 item 18): --log-level anywhere, HCP_LOG_LEVEL, --version, help."""

from __future__ import annotations

import io

import pytest

from tools.cli import build_parser, main
from tools.commands.workloads import render


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "debug", "workloads"],
        ["workloads", "--log-level", "debug"],
        ["db", "init", "--log-level", "DEBUG"],
    ],
)
def test_log_level_before_or_after_the_subcommand(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).log_level == "DEBUG"


def test_log_level_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCP_LOG_LEVEL", "warning")
    assert build_parser().parse_args(["workloads"]).log_level == "WARNING"
    assert build_parser().parse_args(["workloads", "--log-level", "error"]).log_level == "ERROR"
    monkeypatch.setenv("HCP_LOG_LEVEL", "LOUD")
    assert main(["workloads"]) == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("hcp ")


@pytest.mark.parametrize(
    "command", ["recommendations", "workloads", "history", "broker", "run", "db"]
)
def test_help_has_no_rst_literals(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "SPEC" not in text
    assert "--log-level" in text


def test_limit_zero_means_all_rows_in_workloads_too() -> None:
    rows = [
        {"workload_id": f"wl-{i}", "state": "queued", "priority": "5", "submitted_ts": str(i),
         "updated_ts": str(i)}
        for i in range(60)
    ]
    out = io.StringIO()
    render(rows, out, limit=0)
    assert all(f"wl-{i} " in out.getvalue() for i in range(60))
    assert "more rows" not in out.getvalue()
    assert build_parser().parse_args(["workloads", "--limit", "0"]).limit == 0
