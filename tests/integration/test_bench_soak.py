"""``hcp bench soak``: the verdict's rule, and one short real soak end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.bench.latency import SimClock
from tools.bench.soak import SoakSample, _window_delays, verdict


def _samples(rss: list[float], pg_mb_per_min: float = 10.0) -> list[SoakSample]:
    return [
        SoakSample(t_s=60.0 * (i + 1), rss_mb=v, watermark_lag_s=1.0, consumer_lag=0.0,
                   windows=i, close_p50_s=1.0, close_p99_s=1.5, redis_keys=1000,
                   redis_bytes=10 * 1024**2, recs_stream_len=1000,
                   pg_bytes=int((i + 1) * pg_mb_per_min * 1024**2), late_events=0.0)
        for i, v in enumerate(rss)
    ]


def test_verdict_flat_series_and_steady_history_are_bounded() -> None:
    # A warm-up climb in the first third is not growth.
    v = verdict(_samples([300, 600, 900, 1000, 1010, 1000, 1005, 1010, 1000]))
    assert v["rss_mb"]["bounded"] is True
    assert v["pg_bytes"]["steady_growth"] is True
    assert v["nothing_grows_without_bound"] is True


def test_verdict_flags_a_leak() -> None:
    v = verdict(_samples([1000, 1100, 1200, 1300, 1400, 1500, 1600, 1700, 1800]))  # +6%/min
    assert v["rss_mb"]["bounded"] is False
    assert v["nothing_grows_without_bound"] is False


def test_verdict_needs_three_samples() -> None:
    v = verdict(_samples([1000, 1000]))
    assert v["rss_mb"]["bounded"] is None
    assert v["nothing_grows_without_bound"] is None


def test_window_delays_count_only_complete_windows_once() -> None:
    clock = SimClock(sim0_ms=0, wall0=100.0)
    done: set[int] = set()
    steps = [(106.0, 5_000, 2), (106.5, 5_000, 1), (111.0, 10_000, 1)]
    assert sorted(_window_delays(steps, clock, done, devices=3)) == [1.0, 1.0, 1.5]
    assert done == {5_000}
    steps.append((111.2, 10_000, 2))
    assert sorted(_window_delays(steps, clock, done, devices=3)) == pytest.approx([1.0, 1.2, 1.2])
    assert done == {5_000, 10_000}


@pytest.mark.slow
def test_soak_command_end_to_end(
    bootstrap: str, redis_url: str, pg_dsn: str, tmp_path: Path
) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tools", "bench", "soak", "--broker", "external",
         "--bootstrap", bootstrap, "--redis", redis_url, "--pg", pg_dsn,
         "--minutes", "0.5", "--rate", "1000", "--sample-s", "6", "--soak-window-s", "3",
         "--soak-out", str(out)],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(result["samples"]) >= 4
    last = result["samples"][-1]
    assert last["windows"] >= 5
    assert last["redis_keys"] >= 1000  # one hash per device at least
    assert last["pg_bytes"] > 0 and last["rss_mb"] > 100
    assert last["close_p99_s"] is not None and last["close_p99_s"] < 3 + 1 + 5
    assert result["generator_events"] >= 25_000
    assert "nothing grows without bound:" in proc.stdout
    assert (out.with_suffix(".png")).stat().st_size > 0
    # The run's keys and database are gone afterwards.
    import redis

    assert not list(redis.Redis.from_url(redis_url).scan_iter(match="soak-*", count=10_000))
