"""Benchmark results: the JSON file, the printed table, the PNG chart, and peak RSS of a child.

The JSON always carries every key of :data:`RESULT_KEYS` (``null`` when a part did not
run), so tools reading it never guess which run produced it.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hcp.extras import require

__all__ = [
    "RESULT_KEYS",
    "BenchResults",
    "PeakRssSampler",
    "children_peak_rss_mb",
    "format_table",
    "run_measured",
    "write_chart",
    "write_json",
]

log = logging.getLogger(__name__)

RESULT_KEYS = (
    "events",
    "limit_events_per_s",
    "hcp_events_per_s",
    "baseline_events_per_s",
    "hcp_peak_rss_mb",
    "latency_p50_s",
    "latency_p99_s",
    "same_recommendations",
    "frames_samples",
    "frames_limit_samples_per_s",
    "hcp_frames_samples_per_s",
    "same_recommendations_frames",
    "latency_frames_p99_s",
    "hcp_frames_peak_rss_mb",
)


@dataclass
class BenchResults:
    """One ``hcp bench`` run. ``None`` means that part was not measured."""

    events: int = 0
    limit_events_per_s: float | None = None
    hcp_events_per_s: float | None = None
    baseline_events_per_s: float | None = None
    hcp_peak_rss_mb: float | None = None
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    same_recommendations: bool | None = None
    # Context for reading the numbers later.
    limit_seconds: float | None = None
    hcp_seconds: float | None = None  # the child process, start-up included
    hcp_job_seconds: float | None = None  # the dataflow alone (its "job finished" log line)
    baseline_seconds: float | None = None
    baseline_peak_rss_mb: float | None = None
    hcp_recommendations: int | None = None
    baseline_stats: dict[str, Any] = field(default_factory=dict)
    # Latency: the headline p50/p99 above are those of this rate (the fastest sustained).
    latency_rate_events_per_s: float | None = None
    latency_p50_minus_lateness_s: float | None = None
    latency_p99_minus_lateness_s: float | None = None
    latency: list[dict[str, Any]] = field(default_factory=list)
    limit_decoder: str | None = None
    limit_runs_events_per_s: list[float] = field(default_factory=list)
    fill_seconds: float | None = None
    per_topic: dict[str, int] = field(default_factory=dict)
    devices: dict[str, int] = field(default_factory=dict)
    quick: bool = False
    command: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Telemetry frames (SPEC 1b, tools/bench/frames.py): one window of site-collector
    # frames, read by the limit and by HCP; the same samples as JSON through HCP.
    frames_samples: int | None = None
    frames_limit_samples_per_s: float | None = None
    hcp_frames_samples_per_s: float | None = None
    same_recommendations_frames: bool | None = None
    latency_frames_p99_s: float | None = None
    hcp_frames_peak_rss_mb: float | None = None
    frames: dict[str, Any] = field(default_factory=dict)
    # Per part: the machine's load average (1, 5, 15 min) as it started and ended, and
    # whether the start exceeded 1.5 per core (the part ran on a busy machine).
    loadavg: dict[str, dict[str, Any]] = field(default_factory=dict)
    api: dict[str, Any] = field(default_factory=dict)  # `hcp bench --with-api`
    cluster: dict[str, Any] = field(default_factory=dict)  # `--with-cluster`
    backtest: dict[str, Any] = field(default_factory=dict)  # `--with-backtest`

    @property
    def hcp_frames_over_limit(self) -> float | None:
        return _ratio(self.hcp_frames_samples_per_s, self.frames_limit_samples_per_s)

    @property
    def hcp_over_limit(self) -> float | None:
        return _ratio(self.hcp_events_per_s, self.limit_events_per_s)

    @property
    def hcp_over_baseline(self) -> float | None:
        return _ratio(self.hcp_events_per_s, self.baseline_events_per_s)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hcp_over_limit"] = self.hcp_over_limit
        data["hcp_over_baseline"] = self.hcp_over_baseline
        data["hcp_frames_over_limit"] = self.hcp_frames_over_limit
        return data


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: cores, memory, Python."""
    import platform

    mem_gb = None
    try:
        with open("/proc/meminfo") as fh:
            mem_gb = round(int(fh.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "mem_gb": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_part(path: Path, data: dict[str, Any]) -> str:
    """One part's results as indented JSON at ``path`` (its folder made); the text."""
    text = json.dumps(data, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return text


def write_json(results: BenchResults, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results.to_dict(), indent=2) + "\n")


def _fmt_rate(v: float | None) -> str:
    return "not run" if v is None else f"{v:,.0f}"


def _minus(v: float | None) -> str:
    return "" if v is None else f"  ({v:.3f} minus the lateness)"


def format_table(results: BenchResults) -> str:
    """The plain-text summary ``hcp bench`` prints."""
    rows = [
        ("events", f"{results.events:,}"),
        ("limit events/s", _fmt_rate(results.limit_events_per_s)),
        ("HCP events/s", _fmt_rate(results.hcp_events_per_s)),
        ("baseline events/s", _fmt_rate(results.baseline_events_per_s)),
        (
            "HCP / limit",
            "n/a" if results.hcp_over_limit is None else f"{results.hcp_over_limit:.2f}",
        ),
        (
            "HCP / baseline",
            "n/a" if results.hcp_over_baseline is None else f"{results.hcp_over_baseline:.2f}",
        ),
        (
            "HCP peak RSS MB",
            "n/a" if results.hcp_peak_rss_mb is None else f"{results.hcp_peak_rss_mb:,.0f}",
        ),
        (
            "baseline peak RSS MB",
            "n/a"
            if results.baseline_peak_rss_mb is None
            else f"{results.baseline_peak_rss_mb:,.0f}",
        ),
        (
            "latency rate events/s",
            _fmt_rate(results.latency_rate_events_per_s),
        ),
        (
            "latency p50 s",
            "n/a" if results.latency_p50_s is None else f"{results.latency_p50_s:.3f}"
            + _minus(results.latency_p50_minus_lateness_s),
        ),
        (
            "latency p99 s",
            "n/a" if results.latency_p99_s is None else f"{results.latency_p99_s:.3f}"
            + _minus(results.latency_p99_minus_lateness_s),
        ),
        (
            "same recommendations",
            "n/a" if results.same_recommendations is None else str(results.same_recommendations),
        ),
    ]
    for lat in results.latency:
        rows.append((
            f"  latency @ {lat['events_per_s']:,.0f}/s",
            f"p50 {lat['p50_s']} s, p99 {lat['p99_s']} s, max {lat['max_s']} s "
            f"(minus lateness: p50 {lat['p50_minus_lateness_s']}, "
            f"p99 {lat['p99_minus_lateness_s']}); {lat['windows']}/{lat.get('windows_expected')} "
            f"windows; generator kept up: {lat['generator_kept_up']}, "
            f"job kept up: {lat.get('job_kept_up')}",
        ))
    if results.frames_samples is not None:
        ratio = results.hcp_frames_over_limit
        rows += [
            ("frames samples", f"{results.frames_samples:,}"),
            ("frames limit samples/s", _fmt_rate(results.frames_limit_samples_per_s)),
            ("HCP frames samples/s", _fmt_rate(results.hcp_frames_samples_per_s)),
            ("HCP frames / limit", "n/a" if ratio is None else f"{ratio:.2f}"),
            ("HCP frames peak RSS MB", "n/a" if results.hcp_frames_peak_rss_mb is None
             else f"{results.hcp_frames_peak_rss_mb:,.0f}"),
            ("same recommendations frames", str(results.same_recommendations_frames)),
            ("latency frames p99 s", "n/a" if results.latency_frames_p99_s is None
             else f"{results.latency_frames_p99_s:.3f}"),
        ]
    for run in results.cluster.get("runs", []):
        rows.append((f"cluster {run['processes']} process(es)",
                     f"{run['events_per_s']:,} events/s (job {run['job_s']} s)"))
    if results.backtest:
        bt = results.backtest
        rows.append(("backtest", f"{bt['backtest_messages_per_s']:,.0f} messages/s over "
                     f"{len(bt['policies'])} policies, {bt['speedup']}x real time"))
    if results.api:
        point = results.api.get("endpoints", {}).get("GET /api/v1/resources/{id}", {})
        rows.append(("api point read", f"{point.get('requests_per_s')} req/s, "
                     f"p99 {point.get('p99_ms')} ms, {results.api.get('point_read_ratio')}x "
                     f"the reference; freshness {results.api.get('freshness_s')} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def write_chart(results: BenchResults, path: Path) -> None:
    """A bar chart of events/s for the limit, HCP and the baseline, with HCP's ratios."""
    matplotlib = require("matplotlib", "bench", "the benchmark chart")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["limit\n(read + decode)", "HCP", "baseline\n(per-event Bytewax)"]
    values = [results.limit_events_per_s, results.hcp_events_per_s, results.baseline_events_per_s]
    colors = ["#9e9e9e", "#1f77b4", "#ff7f0e"]
    lat = [r for r in results.latency if r.get("p99_s") is not None]
    if lat:
        fig, (ax, lax) = plt.subplots(
            1, 2, figsize=(10.5, 4.2), dpi=100, gridspec_kw={"width_ratios": [3, 2]}
        )
    else:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    bars = ax.bar(names, [v or 0 for v in values], color=colors)
    for bar, v in zip(bars, values, strict=True):
        label = "not run" if v is None else f"{v / 1000:,.0f}k/s"
        ax.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            xytext=(0, 3),
            textcoords="offset points",
        )
    ratios = []
    if results.hcp_over_limit is not None:
        ratios.append(f"HCP/limit = {results.hcp_over_limit:.2f}")
    if results.hcp_over_baseline is not None:
        ratios.append(f"HCP/baseline = {results.hcp_over_baseline:.1f}x")
    if results.hcp_peak_rss_mb is not None:
        ratios.append(f"HCP peak RSS {results.hcp_peak_rss_mb:,.0f} MB")
    title = f"Events/s over {results.events:,} events"
    if ratios:
        title += "\n" + ",  ".join(ratios)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("events per second")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p: f"{v / 1000:,.0f}k"))
    ax.set_ylim(0, max([v or 0 for v in values] + [1]) * 1.18)
    ax.spines[["top", "right"]].set_visible(False)
    if lat:
        x = [f"{r['events_per_s'] / 1000:,.0f}k/s"
             + ("" if r["generator_kept_up"] and r.get("job_kept_up", True) else "*")
             for r in lat]
        pos = range(len(lat))
        width = 0.38
        lax.bar([i - width / 2 for i in pos], [r["p50_s"] for r in lat], width, label="p50",
                color="#8fb9dc")
        lax.bar([i + width / 2 for i in pos], [r["p99_s"] for r in lat], width, label="p99",
                color="#1f77b4")
        lateness = lat[0]["lateness_s"]
        lax.axhline(lateness, color="#555555", linestyle=":", linewidth=1,
                    label=f"allowed lateness {lateness:g} s")
        lax.set_xticks(list(pos), x)
        lax.set_ylabel("seconds")
        lax.set_title("Window end to readable in Redis\n(real-time rate; * = fell behind)",
                      fontsize=10)
        lax.legend(frameon=False, fontsize=8, loc="upper left")
        lax.set_ylim(0, max([r["p99_s"] for r in lat] + [lateness]) * 1.25)
        lax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def children_peak_rss_mb() -> float:
    """Peak RSS of the largest waited-for child so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


class PeakRssSampler:
    """Polls ``/proc/<pid>/status`` VmHWM/VmRSS of a process (and its children) in a thread.

    ``RUSAGE_CHILDREN`` only covers children that have been waited for and reports the
    largest of them ever; polling gives the peak of one specific process tree.
    """

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024

    def _tree_rss_kb(self) -> int:
        total = 0
        for pid in [self.pid, *_descendants(self.pid)]:
            total += _status_kb(pid, "VmRSS:")
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self._tree_rss_kb(), _status_kb(self.pid, "VmHWM:"))
            self._stop.wait(self.interval_s)


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = [int(x) for x in fh.read().split()]
    except OSError:
        return out
    for kid in kids:
        out.append(kid)
        out.extend(_descendants(kid))
    return out


def run_measured(
    cmd: list[str],
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
    stderr: Any = None,
) -> tuple[int, float, float]:
    """Run ``cmd`` to completion; return (exit code, wall seconds, peak RSS MB of its tree).

    ``stderr`` is passed to :class:`subprocess.Popen` (e.g. an open file to keep the log).
    """
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stderr=stderr)
    with PeakRssSampler(proc.pid) as sampler:
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = -9
    return code, time.monotonic() - start, sampler.peak_mb
