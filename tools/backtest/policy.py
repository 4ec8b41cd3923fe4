"""Backtest policy files: a JSON object with a ``name`` and decision settings.

Settings use the ``hcp run`` flag names without dashes (``hysteresis``, ``dwell_s``,
``pool_fee``, ``max_price_age_s``, ``window_s``, ``lateness_s``); ``power_cap_mw`` is a
number (every site) or an object ``{site: MW}`` that replaces the recorded caps of those
sites for the whole replay (``null`` lifts a site's cap). Unknown keys are an error, so a
typo never silently backtests the defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from flows.settings import JobSettings
from hcp.errors import ConfigError

__all__ = ["DECISION_KEYS", "Policy", "load_policy"]

DECISION_KEYS = ("hysteresis", "dwell_s", "pool_fee", "max_price_age_s", "window_s", "lateness_s")


@dataclass(frozen=True)
class Policy:
    """One what-if: job settings plus power-cap overrides per site (None = no cap)."""

    name: str
    settings: JobSettings = field(default_factory=JobSettings)
    power_cap_mw: dict[str, float | None] | float | None = None

    def described(self) -> dict[str, object]:
        out: dict[str, object] = {k: getattr(self.settings, k) for k in DECISION_KEYS}
        if self.power_cap_mw is not None:
            out["power_cap_mw"] = self.power_cap_mw
        return out


def load_policy(path: Path) -> Policy:
    """Read and check one policy file; ConfigError says what is wrong."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        msg = f"policy file {path} does not exist"
        raise ConfigError(msg) from None
    except json.JSONDecodeError as exc:
        msg = f"policy file {path} is not valid JSON: {exc}"
        raise ConfigError(msg) from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        msg = f"policy file {path} must be a JSON object with a non-empty string 'name'"
        raise ConfigError(msg)
    unknown = sorted(set(data) - {"name", "power_cap_mw", *DECISION_KEYS})
    if unknown:
        msg = (
            f"policy file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(('power_cap_mw', *DECISION_KEYS))}"
        )
        raise ConfigError(msg)
    values = {}
    for key in DECISION_KEYS:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                msg = f"policy file {path}: {key} must be a non-negative number, got {value!r}"
                raise ConfigError(msg)
            values[key] = float(value)
    caps = data.get("power_cap_mw")
    if caps is not None and not _valid_caps(caps):
        msg = (
            f"policy file {path}: power_cap_mw must be a non-negative number or an object "
            "of site -> number or null"
        )
        raise ConfigError(msg)
    settings = replace(JobSettings(), **values).validate()
    return Policy(data["name"], settings, caps)


def _valid_caps(caps: object) -> bool:
    def number(v: object) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and v >= 0

    if number(caps):
        return True
    return isinstance(caps, dict) and all(
        isinstance(k, str) and (v is None or number(v)) for k, v in caps.items()
    )
