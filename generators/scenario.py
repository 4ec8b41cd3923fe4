"""Scenario files: market and fleet events pinned to simulated times.

A scenario is a JSON object ``{"description": ..., "random_spikes": bool, "events": [...]}``;
see docs/generators.md for every event type. Times are seconds after ``--start`` (numbers)
or ISO 8601 instants. Loading checks everything up front and raises
:class:`~hcp.errors.ConfigError` naming the file and the event, so a typo never surfaces
halfway through a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hcp.errors import ConfigError

__all__ = ["SCENARIO_DIR", "Event", "Scenario", "load_scenario", "parse_instant_ms"]

SCENARIO_DIR = Path(__file__).parent / "scenarios"

# type -> (required fields, optional fields); "from"/"to"/"at" are times.
_EVENT_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "electricity": ({"site", "from", "to", "value"}, set()),
    "btc_price": ({"at", "value"}, set()),
    "difficulty": ({"at", "value"}, set()),
    "power_cap": ({"site", "from", "to"}, {"mw", "fraction"}),
    "workload_burst": ({"at", "count"}, {"kind", "priority", "gpus", "customer"}),
    "gpu_state": ({"from", "to", "state"}, {"site", "workload_id"}),
    "asic_state": ({"from", "to", "state"}, {"site"}),
}
_STATES = {"gpu_state": ("busy", "idle", "down"), "asic_state": ("mining", "curtailed", "fault")}


@dataclass(frozen=True)
class Event:
    """One scenario event; ``start_s``/``end_s`` are seconds after the simulated start."""

    type: str
    start_s: int
    end_s: int | None = None
    site: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """A named list of events plus switches for the random market."""

    name: str
    description: str = ""
    random_spikes: bool = True
    events: tuple[Event, ...] = ()


def parse_instant_ms(text: str) -> int:
    """ISO 8601 instant -> epoch ms; a time without a zone is UTC."""
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        msg = f"expected an ISO 8601 time such as 2026-01-01T00:00:00Z, got {text!r}"
        raise ValueError(msg) from exc
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return round(stamp.timestamp() * 1000)


def _resolve(path: str | Path) -> Path:
    candidate = Path(path)
    if candidate.exists():
        return candidate
    named = SCENARIO_DIR / f"{path}.json"
    if named.exists():
        return named
    msg = f"scenario file {str(path)!r} not found (nor a bundled scenario of that name)"
    raise ConfigError(msg)


# Top-level keys of a scenario file and the JSON types each must have.
_TOP_LEVEL: dict[str, tuple[type, ...]] = {
    "description": (str,),
    "random_spikes": (bool,),
    "events": (list,),
}


def load_scenario(
    path: str | Path, start_ms: int, sites: list[str], duration_s: int | None = None
) -> Scenario:
    """Load and check a scenario file (or a bundled one by name, e.g. ``demo``).

    With ``duration_s`` an event that starts at or after the end of the simulated span is
    an error too: it would never happen, which is almost always a mistake in the file.
    """
    file = _resolve(path)
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        msg = f"scenario {file}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise ConfigError(msg) from None
    except (OSError, json.JSONDecodeError) as exc:
        msg = f"scenario {file}: cannot read JSON: {exc}"
        raise ConfigError(msg) from None
    if not isinstance(raw, dict):
        msg = f"scenario {file}: expected an object with an 'events' list"
        raise ConfigError(msg)
    unknown = sorted(set(raw) - set(_TOP_LEVEL))
    if unknown:
        msg = (
            f"scenario {file}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
            f"expected {', '.join(map(repr, _TOP_LEVEL))}"
        )
        raise ConfigError(msg)
    for key, types in _TOP_LEVEL.items():
        if key in raw and not isinstance(raw[key], types):
            want = {str: "a string", bool: "true or false", list: "a list"}[types[0]]
            msg = f"scenario {file}: {key!r} must be {want}, got {json.dumps(raw[key])}"
            raise ConfigError(msg)
    events = [_event(file, i, ev, start_ms, sites) for i, ev in enumerate(raw.get("events", []))]
    if duration_s is not None:
        for i, ev in enumerate(events):
            if ev.start_s >= duration_s:
                msg = (
                    f"scenario {file}: event {i} ({ev.type}) starts {ev.start_s} s after "
                    f"--start, beyond the {duration_s} s of --duration"
                )
                raise ConfigError(msg)
    return Scenario(
        name=file.stem,
        description=raw.get("description", ""),
        random_spikes=raw.get("random_spikes", True),
        events=tuple(events),
    )


def _event(file: Path, i: int, ev: Any, start_ms: int, sites: list[str]) -> Event:
    where = f"scenario {file}: event {i}"
    if not isinstance(ev, dict) or ev.get("type") not in _EVENT_FIELDS:
        msg = f"{where}: 'type' must be one of {sorted(_EVENT_FIELDS)}"
        raise ConfigError(msg)
    kind = ev["type"]
    required, optional = _EVENT_FIELDS[kind]
    missing = required - set(ev)
    unknown = set(ev) - required - optional - {"type", "note"}
    if missing or unknown:
        msg = f"{where} ({kind}): missing {sorted(missing)}, unknown {sorted(unknown)}"
        raise ConfigError(msg)
    site = ev.get("site")
    if site is not None and site not in sites:
        msg = f"{where} ({kind}): site {site!r} is not simulated (sites: {', '.join(sites)})"
        raise ConfigError(msg)
    try:
        start = _offset_s(ev["at"] if "at" in ev else ev["from"], start_ms)
        end = _offset_s(ev["to"], start_ms) if "to" in ev else None
    except (TypeError, ValueError) as exc:
        msg = f"{where} ({kind}): bad time: {exc}"
        raise ConfigError(msg) from exc
    if end is not None and end <= start:
        msg = f"{where} ({kind}): 'to' must be after 'from'"
        raise ConfigError(msg)
    params = {k: v for k, v in ev.items() if k not in {"type", "note", "site", "at", "from", "to"}}
    _check_params(where, kind, params)
    return Event(type=kind, start_s=start, end_s=end, site=site, params=params)


def _check_params(where: str, kind: str, params: dict[str, Any]) -> None:
    def number(name: str, lo: float = 0.0) -> None:
        value = params.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < lo
        ):
            msg = f"{where} ({kind}): {name!r} must be a number >= {lo}, got {value!r}"
            raise ConfigError(msg)

    for name in ("value", "mw", "fraction", "count", "priority", "gpus"):
        number(name)
    if kind == "power_cap" and ("mw" in params) == ("fraction" in params):
        msg = f"{where} (power_cap): give exactly one of 'mw' or 'fraction'"
        raise ConfigError(msg)
    if kind in _STATES and params["state"] not in _STATES[kind]:
        msg = f"{where} ({kind}): state must be one of {_STATES[kind]}"
        raise ConfigError(msg)
    if kind == "workload_burst" and params.get("kind") not in (
        None,
        "inference",
        "training",
        "batch",
    ):
        msg = f"{where} (workload_burst): kind must be inference, training or batch"
        raise ConfigError(msg)


def _offset_s(value: Any, start_ms: int) -> int:
    if isinstance(value, bool):
        raise TypeError("a time must be seconds or an ISO 8601 string")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"negative offset {value}")
        return int(value)
    if isinstance(value, str):
        offset = (parse_instant_ms(value) - start_ms) // 1000
        if offset < 0:
            raise ValueError(f"{value} is before the simulated start")
        return int(offset)
    raise TypeError("a time must be seconds or an ISO 8601 string")
