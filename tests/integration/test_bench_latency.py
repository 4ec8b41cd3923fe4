"""Latency of ``hcp bench``: the stream watcher, and short real-time runs end to end."""

from __future__ import annotations

import time

import redis as redis_lib

from tools.bench.latency import StreamProgressWatcher, devices_for_rate, measure_latency


def test_stream_watcher_counts_every_entry_once(redis_url: str, redis_prefix: str) -> None:
    client = redis_lib.Redis.from_url(redis_url)
    stream = f"{redis_prefix}recommendations"
    client.xadd(stream, {"d": "old"}, id="1000-0")  # before the watcher: not counted
    watcher = StreamProgressWatcher(redis_url, stream, interval_s=0.005).start()
    for end, n in ((60_000, 5), (120_000, 3), (180_000, 4)):
        for seq in range(n):
            client.xadd(stream, {"d": str(seq)}, id=f"{end}-{seq}")
        time.sleep(0.05 if end != 120_000 else 0.0)  # the 2nd and 3rd may land in one poll
    time.sleep(0.1)
    steps = watcher.stop()
    per_window: dict[int, int] = {}
    for _seen, end, n in steps:
        per_window[end] = per_window.get(end, 0) + n
    assert per_window == {60_000: 5, 120_000: 3, 180_000: 4}
    assert [s[0] for s in steps] == sorted(s[0] for s in steps)


def test_devices_for_rate() -> None:
    assert devices_for_rate(310_000) == (300_000, 10_000)
    asics, gpus = devices_for_rate(2_000)
    assert asics + gpus == 2_000
    assert gpus >= 1


def test_measure_latency_end_to_end(bootstrap: str, redis_url: str, pg_dsn: str) -> None:
    lat = measure_latency(bootstrap, redis_url, pg_dsn, events_per_s=2_000, window_s=2.0,
                          windows=2, lateness_s=1.0, idle_timeout_s=0.5)
    s = lat.summary()
    assert s["generator_kept_up"]
    assert s["windows"] == 2
    assert s["recommendations"] == 2 * 2_000  # every device, every measured window
    # A window cannot be readable before the job has waited for the lateness...
    assert s["p50_s"] >= 1.0 * 0.9
    # ...and at 2,000 events/s it takes well under a few seconds more.
    assert s["p99_s"] < 5.0
    assert abs(s["p99_minus_lateness_s"] - (s["p99_s"] - 1.0)) < 1e-3
    assert s["late_events"] is not None
    # The snapshots beside the stream: every device, and written before its entries.
    assert s["readable_via"] == "stream"
    assert s["snapshot_recommendations"] == 2 * 2_000
    assert s["snapshot_p50_s"] <= s["p50_s"] + 0.05


def test_measure_latency_times_snapshots_when_the_stream_carries_only_changes(
    bootstrap: str, redis_url: str, pg_dsn: str
) -> None:
    lat = measure_latency(bootstrap, redis_url, pg_dsn, events_per_s=2_000, window_s=2.0,
                          windows=2, lateness_s=1.0, idle_timeout_s=0.5, redis_stream="changed")
    s = lat.summary()
    assert s["readable_via"] == "snapshot"
    assert s["windows"] == 2
    # The stream holds few entries a window; the snapshots hold every device.
    assert s["recommendations"] == s["snapshot_recommendations"] == 2 * 2_000
    assert s["p50_s"] >= 0.9
    assert s["p99_s"] < 5.0
