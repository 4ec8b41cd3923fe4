"""Each setting is declared once, and every entry point uses that declaration."""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pytest

from flows.settings import JOB_SETTINGS, JobSettings
from hcp.errors import ConfigError
from hcp.settings import SETTINGS, add_settings
from tools.cli import build_parser

ROOT = Path(__file__).resolve().parents[3]
CODE = ("hcp", "flows", "sinks", "generators", "api", "tools")


def _env_declarations() -> Counter[str]:
    """Every ``env="HCP_..."`` keyword and ``Setting(name, "HCP_...", ...)`` in the code."""
    found: Counter[str] = Counter()
    for package in CODE:
        for path in (ROOT / package).rglob("*.py") if (ROOT / package).is_dir() else ():
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                for kw in node.keywords:
                    if kw.arg == "env" and isinstance(kw.value, ast.Constant):
                        found[kw.value.value] += 1
                name = getattr(node.func, "id", None)
                if name == "Setting" and len(node.args) > 1:
                    found[node.args[1].value] += 1
    return found


def test_no_environment_variable_is_declared_twice() -> None:
    twice = {env: n for env, n in _env_declarations().items() if n > 1}
    assert not twice, f"declared more than once: {twice}"


def test_job_settings_defaults_come_from_the_declarations() -> None:
    for f in fields(JobSettings):
        if f.name == "store_raw":
            assert f.default is not SETTINGS["no_raw"].default
            continue
        assert f.name in SETTINGS, f"JobSettings.{f.name} has no declaration in hcp/settings.py"
        assert f.default == SETTINGS[f.name].default, f.name
    assert set(JOB_SETTINGS) <= set(SETTINGS)


def test_every_command_help_names_the_declared_variable() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    seen = 0
    for command in sub.choices.values():
        for action in command._actions:
            for s in SETTINGS.values():
                if f"[env: {s.env}]" in (action.help or ""):
                    assert s.flag in action.option_strings
                    assert action.help.startswith(s.help)
                    seen += 1
    assert seen > 40


@pytest.mark.parametrize("value", ["maybe", "2", "enabled"])
def test_an_unknown_switch_value_is_an_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HCP_NO_PG", value)
    with pytest.raises(ConfigError, match="HCP_NO_PG"):
        add_settings(argparse.ArgumentParser(), "no_pg")


@pytest.mark.parametrize(("value", "on"), [("1", True), ("off", False), ("", False), ("Yes", True)])
def test_switch_values(monkeypatch: pytest.MonkeyPatch, value: str, on: bool) -> None:
    monkeypatch.setenv("HCP_NO_PG", value)
    parser = argparse.ArgumentParser()
    add_settings(parser, "no_pg")
    assert parser.parse_args([]).no_pg is on


def test_a_command_can_start_a_setting_at_its_own_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HCP_GPUS", raising=False)
    parser = argparse.ArgumentParser()
    add_settings(parser, "gpus", defaults={"gpus": 24})
    assert parser.parse_args([]).gpus == 24
    monkeypatch.setenv("HCP_GPUS", "3")
    parser = argparse.ArgumentParser()
    add_settings(parser, "gpus", defaults={"gpus": 24})
    assert parser.parse_args([]).gpus == 3
