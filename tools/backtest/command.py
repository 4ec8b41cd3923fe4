"""``hcp backtest RECORDING --policy FILE [--policy FILE ...] --out REPORT.json``.

Replays a recording (``hcp record``) through the job's decision stages once per policy,
in event time and as fast as the CPU allows, without Kafka, Redis or PostgreSQL, and
reports per policy net USD, energy MWh, switches per device-day and minutes over cap,
next to the recorded fleet and an always-on fleet (docs/control-loop.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hcp.config import env_arg
from hcp.errors import ConfigError
from hcp.extras import MissingExtraError
from tools.backtest.evaluate import score_always_on, score_policy, score_recorded, site_caps
from tools.backtest.policy import Policy, load_policy
from tools.backtest.replay import run_policies
from tools.backtest.report import table, write_chart, write_json

__all__ = ["backtest", "register"]

_REFERENCE = "_recorded_caps"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "backtest",
        help="replay a recording under other decision policies and compare them",
        description=(
            "Replay a recording from `hcp record` through the job's own decision stages once "
            "per policy file (a JSON object with a name and hcp run settings without dashes: "
            "hysteresis, dwell_s, pool_fee, max_price_age_s, window_s, lateness_s, and "
            "power_cap_mw), in event time and faster than real time, touching no Kafka, "
            "Redis or PostgreSQL. Prints a table, writes a JSON report and a chart."
        ),
    )
    parser.add_argument("recording", help="recording directory written by `hcp record`")
    parser.add_argument(
        "--policy",
        action="append",
        required=True,
        metavar="FILE",
        help="policy JSON file; repeat to compare several",
    )
    env_arg(
        parser,
        "--out",
        env="HCP_BACKTEST_OUT",
        default="backtest.json",
        help="JSON report to write",
    )
    env_arg(
        parser,
        "--chart",
        env="HCP_BACKTEST_CHART",
        default=None,
        help="PNG chart to write (default: the report's name with .png, skipped with a note when "
        "matplotlib, the 'bench' extra, is not installed; 'none' for no chart)",
    )
    parser.set_defaults(func=run)


def backtest(recording: Path, policies: list[Policy]) -> dict[str, Any]:
    """Run every policy over ``recording``; the report as a JSON-ready dict."""
    if not policies:
        msg = "give at least one --policy"
        raise ConfigError(msg)
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        msg = f"policy names must differ, got {names}"
        raise ConfigError(msg)
    windows = {p.settings.window_ms for p in policies}
    runs_in = list(policies)
    if all(p.power_cap_mw is not None for p in policies):
        # The references need the recording's own caps: one more run, not reported.
        runs_in.append(Policy(_REFERENCE, replace(policies[0].settings)))
    started = time.monotonic()
    runs, replay = run_policies(recording, runs_in)
    frames = {run.policy.name: run.frame() for run in runs}
    wall = time.monotonic() - started
    if any(f.height == 0 for f in frames.values()):
        msg = f"{recording}: no window closed (no telemetry with prices?)"
        raise ConfigError(msg)
    reference = next(r.policy.name for r in runs if r.policy.power_cap_mw is None)
    base = frames[reference]
    caps = site_caps(base)
    rows = [
        {"name": "recorded", **score_recorded(base, caps)},
        {"name": "always_on", **score_always_on(base, caps)},
    ]
    for policy in policies:
        scores = score_policy(frames[policy.name])
        rows.append({"name": policy.name, "settings": policy.described(), **scores})
    span_s = ((replay.last_ts or 0) - (replay.first_ts or 0)) / 1000.0
    return {
        "recording": str(recording),
        "messages": replay.messages,
        "bad_messages": replay.bad,
        "event_time": {"first_ts": replay.first_ts, "last_ts": replay.last_ts, "span_s": span_s},
        "window_s_per_policy": sorted(w / 1000 for w in windows),
        "wall_s": round(wall, 3),
        "speedup": round(span_s / wall, 1) if wall > 0 else None,
        "rows": rows,
    }


def run(args: argparse.Namespace) -> int:
    recording = Path(args.recording)
    if not recording.is_dir():
        msg = f"recording {recording} is not a directory"
        raise ConfigError(msg)
    policies = [load_policy(Path(p)) for p in args.policy]
    report = backtest(recording, policies)
    out = Path(args.out)
    write_json(out, report)
    print(table(report["rows"]))
    hours = report["event_time"]["span_s"] / 3600
    print(
        f"{sum(report['messages'].values()):,} messages, {hours:.2f} h of event time "
        f"replayed for {len(policies)} policies in {report['wall_s']:.1f} s wall "
        f"({report['speedup']}x real time); report: {out}",
        file=sys.stderr,
    )
    if args.chart is not None and args.chart.lower() == "none":
        return 0
    chart = Path(args.chart) if args.chart is not None else out.with_suffix(".png")
    try:
        write_chart(chart, report["rows"])
    except MissingExtraError as exc:
        if args.chart is not None:  # asked for by name: not having it is an error
            raise
        # The default chart is a picture of the table just printed: skip it, say how to get it.
        print(f"chart skipped: {exc}", file=sys.stderr)
        return 0
    print(f"chart: {chart}", file=sys.stderr)
    return 0
