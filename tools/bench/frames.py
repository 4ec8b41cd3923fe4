"""``hcp bench``'s frames part: the same fleet sent by site collectors as Arrow frames.

Site collectors batch their devices' samples into Arrow IPC frames keyed by site (SPEC
1b); ``hcp generate --encoding frames`` plays them. On fresh topics filled that way with
one full window (by default 60 s of 310,000 devices at 1 Hz, 18.6M samples) this part
measures:

- the frames limit: one plain consumer per partition reading every frame into a polars
  frame and doing nothing else (:func:`tools.bench.limit.measure_limit`, decoder
  ``frames``), in samples/s;
- HCP over the frames: ``hcp run --once --no-raw`` with every sink on, as the JSON part
  runs it (:func:`tools.bench.hooks.run_hcp`), in samples/s and peak RSS;
- the same samples as JSON messages through HCP again, and whether both runs wrote the
  same recommendations (``same_recommendations_frames``);
- the live latency with frames: the real-time generator at 1 Hz sending frames while
  ``hcp run`` streams (:func:`tools.bench.latency.measure_latency`).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
import uuid
from dataclasses import dataclass

from hcp.topics import Topics
from tools.bench import hooks
from tools.bench.latency import measure_latency
from tools.bench.limit import measure_limit
from tools.bench.report import BenchResults, write_part

__all__ = ["FULL", "QUICK", "FramesSpec", "run_frames_part"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FramesSpec:
    """The fleet and span of the frames part; the latency run uses the same fleet."""

    asics: int = 300_000
    gpus: int = 10_000
    sites: int = 8
    seconds: int = 60  # one full window of the default 60 s
    seed: int = 42
    partitions: int = 8
    latency_window_s: float = 60.0
    latency_windows: int = 1
    latency_lateness_s: float = 1.0
    # Above the collectors' 1 s cadence: a site's partition is silent between its frames,
    # and an idle timeout shorter than that gap closes windows on the others' clocks.
    latency_idle_timeout_s: float = 1.5

    @property
    def samples(self) -> int:
        return (self.asics + self.gpus) * self.seconds


FULL = FramesSpec()
QUICK = FramesSpec(asics=20_000, gpus=1_000, seconds=20, latency_window_s=5.0,
                   latency_windows=2)


def _phase(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _fill(bootstrap: str, topics: Topics, spec: FramesSpec, encoding: str) -> tuple[int, float]:
    """Generate the spec's seconds into ``topics`` as fast as the broker takes them."""
    from generators.run import generate
    from generators.simulation import SimConfig

    config = SimConfig(seed=spec.seed, gpus=spec.gpus, asics=spec.asics, sites=spec.sites,
                       duration_s=spec.seconds, workloads=False, encoding=encoding)
    summary = generate(config, bootstrap, topics, speed=math.inf, partitions=spec.partitions)
    return summary.events, summary.wall_s


def run_frames_part(
    bootstrap: str, args: argparse.Namespace, results: BenchResults, spec: FramesSpec
) -> None:
    """Fill, then the frames limit, HCP over frames, HCP over the same JSON, latency."""
    run_id = uuid.uuid4().hex[:8]
    topics = Topics(prefix=f"bench-frames-{run_id}.")
    _phase(f"frames: filling {spec.samples:,} samples ({spec.asics + spec.gpus:,} devices x "
           f"{spec.seconds} s) as site frames ...")
    samples, fill_s = _fill(bootstrap, topics, spec, "frames")
    results.frames_samples = samples
    info: dict = {"devices": spec.asics + spec.gpus, "seconds": spec.seconds,
                  "sites": spec.sites, "fill_seconds": round(fill_s, 3)}
    limit = measure_limit(bootstrap, topics.inputs(), decoder="frames")
    results.frames_limit_samples_per_s = round(limit.events_per_s, 1)
    info["limit_seconds"] = round(limit.seconds, 3)
    info["frame_bytes"] = limit.value_bytes
    _phase(f"frames limit: {limit.events_per_s:,.0f} samples/s ({limit.events:,} in "
           f"{limit.seconds:.1f} s)")

    ctx = hooks.BenchContext(bootstrap=bootstrap, topics=topics, events=samples,
                             redis_url=args.redis, redis_prefix=f"bench-frames-{run_id}:",
                             pg_dsn=args.pg, args=args)
    _phase("HCP over frames: hcp run --once (Redis, PostgreSQL, DLQ on) ...")
    frames_run = hooks.run_hcp(ctx)
    results.hcp_frames_samples_per_s = round(frames_run.events_per_s, 1)
    results.hcp_frames_peak_rss_mb = frames_run.peak_rss_mb
    info["hcp_seconds"] = round(frames_run.seconds, 3)
    info["hcp_job_seconds"] = frames_run.details.get("job_seconds")
    _phase(f"HCP over frames: {frames_run.events_per_s:,.0f} samples/s "
           f"({frames_run.seconds:.1f} s, peak RSS {frames_run.peak_rss_mb:,.0f} MB)")

    if not getattr(args, "skip_frames_json", False):
        json_topics = Topics(prefix=f"bench-fjson-{run_id}.")
        _phase(f"frames: the same {samples:,} samples as JSON messages, then HCP over them ...")
        json_samples, json_fill_s = _fill(bootstrap, json_topics, spec, "json")
        json_ctx = hooks.BenchContext(bootstrap=bootstrap, topics=json_topics,
                                      events=json_samples, redis_url=args.redis,
                                      redis_prefix=f"bench-fjson-{run_id}:", pg_dsn=args.pg,
                                      args=args)
        json_run = hooks.run_hcp(json_ctx)
        info["json_fill_seconds"] = round(json_fill_s, 3)
        info["hcp_json_samples_per_s"] = round(json_run.events_per_s, 1)
        info["hcp_json_peak_rss_mb"] = json_run.peak_rss_mb
        same = (
            json_samples == samples
            and frames_run.recommendations is not None
            and json_run.recommendations is not None
            and frames_run.recommendations.height > 0
            and hooks.same_recommendations(frames_run.recommendations, json_run.recommendations)
        )
        results.same_recommendations_frames = bool(same)
        _phase(f"HCP over the same JSON: {json_run.events_per_s:,.0f} samples/s; same "
               f"recommendations: {results.same_recommendations_frames}")

    if not args.skip_latency:
        info["latency"] = frames_latency(bootstrap, args.redis, args.pg, spec,
                                         redis_stream=args.latency_redis_stream)
        results.latency_frames_p99_s = info["latency"]["p99_s"]
    results.frames = info


def frames_latency(
    bootstrap: str, redis_url: str, pg_dsn: str, spec: FramesSpec, redis_stream: str = "all"
) -> dict:
    """Live latency with the real-time generator sending frames; its summary dict."""
    rate = float(spec.asics + spec.gpus)
    _phase(f"latency with frames: {rate:,.0f} devices at 1 Hz, {spec.latency_windows} "
           f"windows of {spec.latency_window_s:g} s (+1 warm-up) ...")
    started = time.monotonic()
    lat = measure_latency(
        bootstrap, redis_url, pg_dsn, events_per_s=rate,
        window_s=spec.latency_window_s, windows=spec.latency_windows,
        lateness_s=spec.latency_lateness_s, idle_timeout_s=spec.latency_idle_timeout_s,
        sites=spec.sites, encoding="frames", devices=(spec.asics, spec.gpus),
        redis_stream=redis_stream,
    )
    summary = lat.summary()
    summary["wall_s"] = round(time.monotonic() - started, 1)
    _phase(f"latency with frames (--redis-stream {redis_stream}, timed by "
           f"{summary['readable_via']}): p50 {summary['p50_s']} s, p99 {summary['p99_s']} s, "
           f"snapshots p99 {summary['snapshot_p99_s']} s; "
           f"generator kept up: {summary['generator_kept_up']}, "
           f"job kept up: {summary['job_kept_up']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.bench.frames --latency-only``: the live latency with frames alone,
    on an embedded broker, its summary as JSON to ``--out`` (and stdout)."""
    from pathlib import Path

    from hcp.settings import default
    from tools.broker import EmbeddedBroker

    p = argparse.ArgumentParser(prog="python -m tools.bench.frames", description=main.__doc__)
    p.add_argument("--latency-only", action="store_true", required=True)
    p.add_argument("--quick", action="store_true", help="the --quick fleet and windows")
    p.add_argument("--out", default="bench-results/frames-latency.json")
    p.add_argument("--redis-stream", default="all", choices=("all", "changed"),
                   help="the job's --redis-stream (see hcp bench --latency-redis-stream)")
    p.add_argument("--redis", default=default("redis"))
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = p.parse_args(argv)
    spec = QUICK if args.quick else FULL
    with EmbeddedBroker() as broker:
        summary = frames_latency(broker.bootstrap, args.redis, args.pg, spec,
                                 redis_stream=args.redis_stream)
    print(write_part(Path(args.out), {
        "command": "python -m tools.bench.frames " + " ".join(argv or sys.argv[1:]),
        "latency_frames_p99_s": summary["p99_s"], "latency": summary,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
