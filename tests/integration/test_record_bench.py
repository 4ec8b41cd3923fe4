"""The benchmark scaffolding: deterministic fill, the CLI, the report and RSS measurement."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl

from hcp.topics import Topics
from tools.bench.fill import FillSpec, fill_topics, planned_events
from tools.bench.hooks import same_recommendations
from tools.bench.latency import SimClock, percentiles
from tools.bench.limit import measure_limit
from tools.bench.report import RESULT_KEYS, BenchResults, run_measured, write_chart, write_json
from tools.cli import main
from tools.record.recording import read_manifest

SMALL = FillSpec(events=6_000, asics=2_000, gpus=100, sites=3, partitions=4, seed=11)


def _partition_contents(directory: Path) -> dict[tuple[str, int], list[tuple[bytes, bytes]]]:
    prefix, recorded = read_manifest(directory)
    out = {}
    for r in recorded:
        frame = pl.read_parquet(directory / r.file).sort(["partition", "offset"])
        for (part,), g in frame.group_by(["partition"], maintain_order=True):
            out[(r.topic[len(prefix):], part)] = list(zip(g["key"], g["value"], strict=True))
    return out


def test_fill_is_deterministic_and_the_limit_reads_all_of_it(
    bootstrap: str, tmp_path: Path
) -> None:
    a = Topics(f"{tmp_path.name}a.")
    b = Topics(f"{tmp_path.name}b.")
    first = fill_topics(bootstrap, a, SMALL)
    second = fill_topics(bootstrap, b, SMALL)
    assert first.events == second.events >= SMALL.events
    assert first.events >= planned_events(SMALL)  # telemetry plus market prices
    assert first.per_topic[a.asic] == SMALL.asics * first.simulated_s
    assert first.per_topic[a.gpu] == SMALL.gpus * first.simulated_s

    # Same seed, same messages in the same partitions in the same order: via the CLI.
    for topics, out in ((a, tmp_path / "a"), (b, tmp_path / "b")):
        code = main(["record", "--bootstrap", bootstrap, "--topic-prefix", topics.prefix,
                     "--out", str(out), "--quiet"])
        assert code == 0
    assert _partition_contents(tmp_path / "a") == _partition_contents(tmp_path / "b")

    limit = measure_limit(bootstrap, a.inputs())
    assert limit.events == first.events
    assert limit.bad == 0
    assert limit.per_topic == first.per_topic


def test_replay_cli_to_another_prefix(bootstrap: str, tmp_path: Path) -> None:
    src = Topics(f"{tmp_path.name}src.")
    filled = fill_topics(bootstrap, src, SMALL)
    rec = tmp_path / "rec"
    assert main(["record", "--bootstrap", bootstrap, "--topic-prefix", src.prefix,
                 "--topics", "telemetry.gpu,telemetry.asic", "--out", str(rec), "--quiet"]) == 0
    dst = Topics(f"{tmp_path.name}dst.")
    assert main(["replay", "--bootstrap", bootstrap, "--topic-prefix", dst.prefix,
                 "--in", str(rec), "--speed", "max", "--quiet"]) == 0
    limit = measure_limit(bootstrap, [dst.gpu, dst.asic], decoder="json")
    assert limit.per_topic == {dst.gpu: filled.per_topic[src.gpu],
                               dst.asic: filled.per_topic[src.asic]}


def test_bench_command_writes_every_result_key_and_a_chart(bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    code = main(["bench", "--broker", "external", "--bootstrap", bootstrap, "--events", "3000",
                 "--asics", "1000", "--gpus", "50", "--sites", "2", "--out", str(out),
                 "--skip-latency", "--quiet"])
    assert code == 0
    data = json.loads(out.read_text())
    assert set(RESULT_KEYS) <= set(data)
    assert data["events"] == sum(data["per_topic"].values()) >= 3000
    assert data["limit_events_per_s"] > 0
    # HCP and the per-event baseline both ran over the topics and decided the same.
    assert data["hcp_events_per_s"] > 0
    assert data["baseline_events_per_s"] > 0
    assert data["hcp_peak_rss_mb"] > 50
    assert data["hcp_recommendations"] == 1050  # one window: every device once
    assert data["same_recommendations"] is True
    # Every part that ran has the load average it found and left, and the busy-machine mark.
    assert {"limit_json_1", "hcp_json", "baseline", "frames"} <= set(data["loadavg"])
    for load in data["loadavg"].values():
        assert len(load["start"]) == len(load["end"]) == 3
        assert isinstance(load["over_1_5_per_core"], bool)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_json_and_chart(tmp_path: Path) -> None:
    res = BenchResults(events=1000, limit_events_per_s=400_000.0, hcp_events_per_s=300_000.0,
                       baseline_events_per_s=50_000.0)
    write_json(res, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["hcp_over_limit"] == 0.75
    assert data["hcp_over_baseline"] == 6.0
    assert data["latency_p99_s"] is None
    write_chart(res, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def _recs(actions: list[str], nets: list[float]) -> pl.DataFrame:
    n = len(actions)
    return pl.DataFrame({
        "device_id": [f"d{i}" for i in range(n)],
        "window_start": [0] * n,
        "window_end": [60_000] * n,
        "action": actions,
        "reason": ["profitable"] * n,
        "net_usd_hr": nets,
    })


def test_same_recommendations_ignores_order_not_decisions() -> None:
    a = _recs(["mine", "curtail", "serve"], [1.0, -2.0, 3.0])
    shuffled = a.reverse()
    assert same_recommendations(a, shuffled)
    close = a.with_columns(pl.col("net_usd_hr") * (1 + 1e-9))
    assert same_recommendations(a, close)
    assert not same_recommendations(a, _recs(["mine", "mine", "serve"], [1.0, -2.0, 3.0]))
    assert not same_recommendations(a, _recs(["mine", "curtail", "serve"], [1.0, -2.5, 3.0]))
    assert not same_recommendations(a, a.head(2))


def test_latency_helpers() -> None:
    clock = SimClock(sim0_ms=1_000_000, wall0=50.0, speed=2.0)
    assert clock.wall_of(1_004_000) == 52.0
    p50, p99 = percentiles([float(i) for i in range(1, 101)])
    assert p50 == 50.5
    assert 99.0 <= p99 <= 100.0
    assert percentiles([]) == [None, None]


def test_run_measured_reports_peak_rss_of_the_child() -> None:
    code, seconds, peak_mb = run_measured(
        [sys.executable, "-c", "import time; b = bytearray(300 * 1024 * 1024); time.sleep(0.5)"]
    )
    assert code == 0
    assert seconds >= 0.5
    assert 250 <= peak_mb <= 600


def test_recommendation_watcher_times_new_stream_entries(redis_url: str, redis_prefix: str) -> None:
    import time

    import redis as redis_lib

    from tools.bench.latency import RecommendationWatcher

    client = redis_lib.Redis.from_url(redis_url)
    stream = f"{redis_prefix}recommendations"
    client.xadd(stream, {"device_id": "old"}, id="1000-0")  # before the watcher: not counted
    window_end = 120_000
    # The window ended 0.25 s of wall time ago on the simulated clock.
    clock = SimClock(sim0_ms=window_end, wall0=time.time() - 0.25)
    watcher = RecommendationWatcher(redis_url, stream, clock).start()
    for seq in range(5):
        client.xadd(stream, {"device_id": f"d{seq}"}, id=f"{window_end}-{seq}")
    deadline = time.monotonic() + 5
    while len(watcher.result.latencies_s) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    result = watcher.stop()
    assert len(result.latencies_s) == 5
    assert result.windows == 1
    assert 0.25 <= result.p50_s < 2.0
