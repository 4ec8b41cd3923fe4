"""``hcp bench``'s backtest part: how fast ``hcp backtest`` replays a recording.

Fills fresh topics with the seeded fleet (tools/bench/fill.py; by default 1,000 devices
for about 17 minutes of event time), records them with ``hcp record``'s own code, then
runs ``hcp backtest``'s :func:`~tools.backtest.command.backtest` over the recording with
two policies (the defaults, and dwell 0 with no hysteresis). The figures: messages
replayed per wall second (every policy replays the whole recording) and event time per
wall time (``speedup``), beside the record step's own speed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from flows.settings import JobSettings
from hcp.topics import Topics
from tools.backtest.command import backtest
from tools.backtest.policy import Policy
from tools.bench.fill import FillSpec, fill_topics
from tools.bench.report import write_part
from tools.record.recording import record

__all__ = ["BACKTEST_SPEC", "run_backtest_part"]

BACKTEST_SPEC = FillSpec(events=1_000_000, asics=970, gpus=30, sites=4, partitions=4)


def run_backtest_part(bootstrap: str, spec: FillSpec = BACKTEST_SPEC) -> dict[str, Any]:
    """Fill, record and backtest; the figures as a JSON-ready dict."""
    topics = Topics(prefix=f"btbench{uuid.uuid4().hex[:8]}.")
    filled = fill_topics(bootstrap, topics, spec)
    with tempfile.TemporaryDirectory(prefix="hcp-bench-backtest-") as tmp:
        out = Path(tmp) / "recording"
        started = time.perf_counter()
        recorded = record(bootstrap, [topics.gpu, topics.asic, topics.prices], out,
                          prefix=topics.prefix)
        record_s = time.perf_counter() - started
        base = JobSettings()
        policies = [
            Policy("defaults", base),
            Policy("no_dwell", replace(base, dwell_s=0.0, hysteresis=0.0)),
        ]
        report = backtest(out, policies)
    messages = sum(report["messages"].values())
    wall = report["wall_s"]
    return {
        "devices": spec.devices,
        "filled_events": filled.events,
        "recorded_messages": sum(t.messages for t in recorded),
        "record_s": round(record_s, 3),
        "record_messages_per_s": round(messages / record_s, 1) if record_s else None,
        "policies": [p.name for p in policies],
        "event_time_s": report["event_time"]["span_s"],
        "backtest_wall_s": wall,
        "backtest_messages_per_s": round(messages * len(policies) / wall, 1) if wall else None,
        "speedup": report["speedup"],
        "rows": report["rows"],
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.bench.backtest``: the backtest part alone, on an embedded broker."""
    from tools.broker import EmbeddedBroker

    p = argparse.ArgumentParser(prog="python -m tools.bench.backtest", description=__doc__)
    p.add_argument("--out", default="bench-results/backtest.json", help="JSON results file")
    args = p.parse_args(argv)
    with EmbeddedBroker() as broker:
        result = run_backtest_part(broker.bootstrap)
    print(write_part(Path(args.out), result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
