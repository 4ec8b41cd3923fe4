"""``hcp bench``: fill fresh topics, then measure the limit, HCP, the baseline and latency.

Every part runs on the same topics in one run. Parts not wired yet (see
:mod:`tools.bench.hooks`) are reported as "not wired yet" and left ``null`` in the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from hcp.config import env_arg, env_flag, positive_int
from hcp.errors import ConfigError
from hcp.kafka_admin import check_broker
from hcp.settings import add_settings
from hcp.topics import Topics
from tools.bench import hooks
from tools.bench.api import add_api_bench_args
from tools.bench.fill import FillSpec, fill_topics, planned_events
from tools.bench.frames import FULL as FRAMES_FULL
from tools.bench.frames import QUICK as FRAMES_QUICK
from tools.bench.frames import run_frames_part
from tools.bench.latency import measure_latency
from tools.bench.limit import DECODERS, measure_limit
from tools.bench.progress import Progress
from tools.bench.report import BenchResults, format_table, machine_info, write_chart, write_json
from tools.bench.soak import add_soak_args
from tools.broker import EmbeddedBroker

__all__ = ["register"]

log = logging.getLogger(__name__)

QUICK_EVENTS = 300_000
# --quick keeps the fleet small too: the per-event baseline pays per device it has seen.
QUICK_ASICS = 20_000
QUICK_GPUS = 1_000
DEFAULT_LATENCY_RATES = [10_000.0, 50_000.0, 150_000.0, 350_000.0]
QUICK_LATENCY_RATE = 20_000.0


def _not_wired(part: str, exc: NotImplementedError, results: BenchResults) -> None:
    print(f"{part}: not wired yet ({exc})", file=sys.stderr)
    results.notes.append(f"{part}: not wired yet")


@contextmanager
def part_load(results: BenchResults, part: str) -> Iterator[None]:
    """Record the load average around one part (see ``BenchResults.loadavg``).

    The start is the load the part found (the previous part's own load fades from the
    1-minute figure in about a minute); the end includes the part's own processes.
    """
    start = [round(x, 2) for x in os.getloadavg()]
    try:
        yield
    finally:
        results.loadavg[part] = {
            "start": start,
            "end": [round(x, 2) for x in os.getloadavg()],
            "over_1_5_per_core": start[0] > 1.5 * (os.cpu_count() or 1),
        }


def _phase(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run_jobs(ctx: hooks.BenchContext, results: BenchResults, args: argparse.Namespace) -> None:
    """HCP, then the baseline, on the filled topics; then whether they decided the same."""
    hcp_run = baseline_run = None
    _phase(f"HCP: hcp run --once over {ctx.events:,} events (Redis, PostgreSQL, DLQ on) ...")
    try:
        with part_load(results, "hcp_json"):
            hcp_run = hooks.run_hcp(ctx)
    except NotImplementedError as exc:
        _not_wired("HCP", exc, results)
    if hcp_run is not None:
        results.hcp_events_per_s = round(hcp_run.events_per_s, 1)
        results.hcp_seconds = round(hcp_run.seconds, 3)
        results.hcp_job_seconds = hcp_run.details.get("job_seconds")
        results.hcp_peak_rss_mb = hcp_run.peak_rss_mb
        results.hcp_recommendations = hcp_run.recommendations.height
        _phase(f"HCP: {hcp_run.events_per_s:,.0f} events/s ({hcp_run.seconds:.1f} s, "
               f"peak RSS {hcp_run.peak_rss_mb:,.0f} MB, "
               f"{hcp_run.recommendations.height:,} recommendations)")
    if not args.skip_baseline:
        _phase("baseline: python -m tools.bench.baseline.flow (per-event Bytewax) ...")
        try:
            with part_load(results, "baseline"):
                baseline_run = hooks.run_baseline(ctx)
        except NotImplementedError as exc:
            _not_wired("baseline", exc, results)
    if baseline_run is not None:
        results.baseline_events_per_s = round(baseline_run.events_per_s, 1)
        results.baseline_seconds = round(baseline_run.seconds, 3)
        results.baseline_peak_rss_mb = baseline_run.peak_rss_mb
        results.baseline_stats = baseline_run.details
        _phase(f"baseline: {baseline_run.events_per_s:,.0f} events/s "
               f"({baseline_run.seconds:.1f} s, peak RSS {baseline_run.peak_rss_mb:,.0f} MB)")
    if (
        hcp_run is not None and baseline_run is not None
        and hcp_run.recommendations is not None and baseline_run.recommendations is not None
    ):
        results.same_recommendations = hooks.same_recommendations(
            hcp_run.recommendations, baseline_run.recommendations
        )
        _phase(f"same recommendations: {results.same_recommendations}")


def _cluster_part(bootstrap: str, args: argparse.Namespace, results: BenchResults) -> None:
    """``python -m tools.bench.cluster`` (1 and 2 processes, stage costs) on this broker."""
    import tempfile

    from tools.bench import cluster

    _phase("cluster: hcp run --once with 1 and 2 processes over the same topics ...")
    with tempfile.TemporaryDirectory(prefix="hcp-bench-cluster-") as tmp, part_load(
        results, "cluster"
    ):
        out = Path(tmp) / "cluster.json"
        cluster.main(["--bootstrap", bootstrap, "--redis", args.redis, "--pg", args.pg,
                      "--out", str(out)])
        results.cluster = json.loads(out.read_text())
    runs = results.cluster["runs"]
    _phase("cluster: " + ", ".join(
        f"{r['processes']} process(es) {r['events_per_s']:,} events/s" for r in runs))


def _run_latency(bootstrap: str, args: argparse.Namespace, results: BenchResults) -> None:
    """Latency at each rate; the headline figures are those of the fastest sustained rate."""
    rates = args.latency_rates or ([QUICK_LATENCY_RATE] if args.quick else DEFAULT_LATENCY_RATES)
    window_s = args.latency_window_s or (5.0 if args.quick else 10.0)
    windows = args.latency_windows or (2 if args.quick else 3)
    for rate in rates:
        _phase(f"latency: {rate:,.0f} events/s in real time, {windows} windows of "
               f"{window_s:g} s (+1 warm-up), lateness {args.latency_lateness_s:g} s ...")
        with part_load(results, f"latency_json_{rate:.0f}"):
            lat = measure_latency(
                bootstrap, args.redis, args.pg, events_per_s=rate, window_s=window_s,
                windows=windows, lateness_s=args.latency_lateness_s,
                idle_timeout_s=args.latency_idle_timeout_s,
                redis_stream=args.latency_redis_stream,
            )
        summary = lat.summary()
        results.latency.append(summary)
        _phase(f"latency @ {rate:,.0f}/s: p50 {summary['p50_s']} s, p99 {summary['p99_s']} s "
               f"over {summary['recommendations']:,} recommendations in "
               f"{summary['windows']}/{windows} windows; generator kept up: "
               f"{summary['generator_kept_up']}, job kept up: {summary['job_kept_up']}")
    usable = [
        r for r in results.latency
        if r["generator_kept_up"] and r["job_kept_up"] and r["p99_s"] is not None
    ]
    if usable:
        best = max(usable, key=lambda r: r["events_per_s"])
        results.latency_rate_events_per_s = best["events_per_s"]
        results.latency_p50_s, results.latency_p99_s = best["p50_s"], best["p99_s"]
        results.latency_p50_minus_lateness_s = best["p50_minus_lateness_s"]
        results.latency_p99_minus_lateness_s = best["p99_minus_lateness_s"]
    else:
        results.notes.append("latency: no rate was sustained by both the generator and the job")


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        msg = f"expected comma-separated events/s, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc
    if not rates or min(rates) <= 0:
        msg = f"expected positive events/s, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return rates


def _command_line() -> str:
    """How this run was started, for the results file ("" when called as a library)."""
    if sys.argv and sys.argv[0].endswith(("hcp", "__main__.py")):
        return "hcp " + shlex.join(sys.argv[1:])
    return ""


def _json_part(
    bootstrap: str, topics: Topics, spec: FillSpec, run_id: str, args: argparse.Namespace,
    results: BenchResults,
) -> None:
    """Fill JSON topics, then the limit, HCP, the baseline and the JSON latency."""
    progress = Progress("fill", total=planned_events(spec), enabled=not args.quiet)
    filled = fill_topics(bootstrap, topics, spec,
                         progress=lambda count: progress.update(count=count))
    progress.close()
    results.events = filled.events
    results.per_topic = filled.per_topic
    results.fill_seconds = round(filled.seconds, 3)
    print(f"filled {filled.events:,} events ({filled.simulated_s} simulated s) under "
          f"{topics.prefix} in {filled.seconds:.1f} s", file=sys.stderr)

    runs = []
    for i in range(args.limit_runs):
        label = "limit" if args.limit_runs == 1 else f"limit {i + 1}/{args.limit_runs}"
        progress = Progress(label, total=filled.events, enabled=not args.quiet)
        with part_load(results, f"limit_json_{i + 1}"):
            runs.append(measure_limit(bootstrap, topics.inputs(), decoder=args.decoder,
                                      progress=progress.update))
        progress.close()
    limit = max(runs, key=lambda r: r.events_per_s)
    results.limit_runs_events_per_s = [round(r.events_per_s, 1) for r in runs]
    if limit.events != filled.events:
        results.notes.append(f"limit read {limit.events} of {filled.events} events")
    results.limit_events_per_s = round(limit.events_per_s, 1)
    results.limit_seconds = round(limit.seconds, 3)
    results.limit_decoder = limit.decoder

    ctx = hooks.BenchContext(
        bootstrap=bootstrap,
        topics=topics,
        events=filled.events,
        redis_url=args.redis,
        redis_prefix=f"bench-{run_id}:",
        pg_dsn=args.pg,
        args=args,
    )
    _run_jobs(ctx, results, args)
    if not args.skip_latency:
        _run_latency(bootstrap, args, results)


def _bench(args: argparse.Namespace) -> int:
    if args.part == "api":
        from tools.bench.api import run_api_bench

        return run_api_bench(args)
    if args.part == "soak":
        from tools.bench.soak import soak_main

        return soak_main(args)
    if args.every_part:
        args.with_api = args.with_cluster = args.with_backtest = True
    if args.with_api:
        from tools.bench.api import require_wrk

        require_wrk()  # said before the pipeline parts, not after twenty minutes of them
    if args.frames_only and args.skip_frames:
        msg = "--frames-only and --skip-frames leave nothing to measure"
        raise ConfigError(msg)
    if args.decoder == "orjson":
        try:
            import orjson  # noqa: F401
        except ImportError:
            msg = "--decoder orjson needs the orjson package (pip install orjson)"
            raise ConfigError(msg) from None
    events = args.events or (QUICK_EVENTS if args.quick else FillSpec().events)
    asics = args.asics or (QUICK_ASICS if args.quick else FillSpec().asics)
    gpus = args.gpus or (QUICK_GPUS if args.quick else FillSpec().gpus)
    spec = FillSpec(events=events, asics=asics, gpus=gpus, sites=args.sites,
                    seed=args.seed, partitions=args.partitions)
    out = Path(args.out)
    chart = Path(args.chart) if args.chart else out.with_suffix(".png")
    run_id = uuid.uuid4().hex[:8]
    topics = Topics(prefix=f"bench-{run_id}.")
    results = BenchResults(
        quick=args.quick,
        command=_command_line(),
        machine={**machine_info(), "broker": args.broker},
        devices={"asics": spec.asics, "gpus": spec.gpus, "sites": spec.sites},
    )
    with ExitStack() as stack:
        if args.broker == "embedded":
            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap
            print(f"embedded broker on {bootstrap}", file=sys.stderr)
        else:
            bootstrap = args.bootstrap
            check_broker(bootstrap)

        if not args.frames_only:
            _json_part(bootstrap, topics, spec, run_id, args, results)
        if not args.skip_frames:
            # The same fleet as the JSON part, over one full window (--quick: 20 s).
            base = FRAMES_QUICK if args.quick else FRAMES_FULL
            frames_spec = dataclasses.replace(
                base, asics=spec.asics, gpus=spec.gpus, sites=spec.sites, seed=spec.seed,
                partitions=spec.partitions,
            )
            with part_load(results, "frames"):
                run_frames_part(bootstrap, args, results, frames_spec)
        if args.with_cluster:
            _cluster_part(bootstrap, args, results)
        if args.with_backtest:
            from tools.bench.backtest import run_backtest_part

            _phase("backtest: fill, hcp record, hcp backtest with two policies ...")
            with part_load(results, "backtest"):
                results.backtest = run_backtest_part(bootstrap)
            _phase(f"backtest: {results.backtest['backtest_messages_per_s']:,.0f} messages/s, "
                   f"{results.backtest['speedup']}x real time")
    if args.with_api:
        from tools.bench.api import run_api_bench

        write_json(results, out)  # the pipeline's figures stand even if the API part fails

        _phase("api: hcp bench api ...")
        with part_load(results, "api"):
            run_api_bench(args)
        results.api = json.loads(Path(args.api_out).read_text())

    write_json(results, out)
    write_chart(results, chart)
    print(format_table(results))
    print(f"results: {out}  chart: {chart}")
    if results.same_recommendations is False:
        print("HCP and the baseline made different recommendations", file=sys.stderr)
        return 1
    if results.same_recommendations_frames is False:
        print("HCP over frames and over the same JSON made different recommendations",
              file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="throughput benchmark: limit, HCP and baseline on the same fresh topics",
        description=(
            "Fill fresh topics deterministically, then measure on them: the limit (a plain "
            "consumer that reads and decodes every event), HCP (--once), the per-event "
            "Bytewax baseline, and the latency at a fixed real-time rate."
        ),
    )
    env_flag(p, "--quick", env="HCP_BENCH_QUICK",
             help=f"development run: {QUICK_EVENTS:,} events from {QUICK_ASICS:,} ASICs and "
             f"{QUICK_GPUS:,} GPUs, one latency rate (about a minute)")
    env_arg(p, "--out", env="HCP_BENCH_OUT", default="bench-results/latest.json",
            help="results JSON path (the chart goes beside it as .png)")
    env_arg(p, "--chart", env="HCP_BENCH_CHART", help="chart PNG path")
    env_arg(p, "--events", env="HCP_BENCH_EVENTS", type=positive_int,
            help=f"events to generate (default {FillSpec().events:,}, --quick {QUICK_EVENTS:,})")
    env_arg(p, "--asics", env="HCP_BENCH_ASICS", type=positive_int,
            help=f"simulated ASICs (default {FillSpec().asics:,}, --quick {QUICK_ASICS:,})")
    env_arg(p, "--gpus", env="HCP_BENCH_GPUS", type=positive_int,
            help=f"simulated GPUs (default {FillSpec().gpus:,}, --quick {QUICK_GPUS:,})")
    env_arg(p, "--sites", env="HCP_BENCH_SITES", default=FillSpec().sites, type=positive_int,
            help="simulated sites")
    env_arg(p, "--seed", env="HCP_BENCH_SEED", default=FillSpec().seed, type=int,
            help="generator seed")
    env_arg(p, "--partitions", env="HCP_BENCH_PARTITIONS", default=FillSpec().partitions,
            type=positive_int, help="partitions of each benchmark topic")
    env_arg(p, "--decoder", env="HCP_BENCH_DECODER", default="auto", choices=DECODERS,
            help="JSON decoder of the limit consumer")
    env_arg(p, "--limit-runs", env="HCP_BENCH_LIMIT_RUNS", default=1, type=positive_int,
            help="limit passes over the topics; the best one is reported")
    env_arg(p, "--latency-rates", env="HCP_BENCH_LATENCY_RATES", type=_rates,
            help="comma-separated events/s of the real-time latency runs (default "
            "10000,50000,150000,350000; --quick 20000); the JSON's latency_p50_s/p99_s are "
            "those of the fastest rate both the generator and the job sustained")
    env_arg(p, "--latency-window-s", env="HCP_BENCH_LATENCY_WINDOW_S", type=float,
            help="window length of the latency runs (default 10; --quick 5)")
    env_arg(p, "--latency-windows", env="HCP_BENCH_LATENCY_WINDOWS", type=positive_int,
            help="windows measured per rate after one warm-up window (default 3; --quick 2)")
    env_arg(p, "--latency-lateness-s", env="HCP_BENCH_LATENCY_LATENESS_S", default=1.0,
            type=float, help="allowed lateness of the latency runs")
    env_arg(p, "--latency-idle-timeout-s", env="HCP_BENCH_LATENCY_IDLE_TIMEOUT_S", default=0.5,
            type=float, help="--idle-timeout-s of the latency runs (sparse price partitions)")
    env_arg(p, "--latency-redis-stream", env="HCP_BENCH_LATENCY_REDIS_STREAM", default="all",
            choices=("all", "changed"),
            help="--redis-stream of the latency runs; 'changed' times each window by its "
            "Redis snapshots (the stream then holds only moved decisions), 'all' by the "
            "stream, with the snapshots' figures beside it")
    env_arg(p, "--broker", env="HCP_BENCH_BROKER", default="embedded",
            choices=("embedded", "external"),
            help="'embedded' starts a Tansu broker for the run; 'external' uses --bootstrap")
    env_flag(p, "--skip-baseline", env="HCP_BENCH_SKIP_BASELINE", help="do not run the baseline")
    env_flag(p, "--skip-latency", env="HCP_BENCH_SKIP_LATENCY", help="do not measure latency")
    env_flag(p, "--skip-frames", env="HCP_BENCH_SKIP_FRAMES",
             help="do not run the frames part (telemetry as site-collector Arrow frames)")
    env_flag(p, "--frames-only", env="HCP_BENCH_FRAMES_ONLY",
             help="run only the frames part (no JSON limit, HCP, baseline or JSON latency)")
    env_flag(p, "--with-api", env="HCP_BENCH_WITH_API",
             help="after the pipeline parts, run `hcp bench api` too and put its results "
             "under \"api\" in --out (needs wrk)")
    env_flag(p, "--with-cluster", env="HCP_BENCH_WITH_CLUSTER",
             help="also run python -m tools.bench.cluster (hcp run with 1 and 2 processes, "
             "stage costs) and put its results under \"cluster\"")
    env_flag(p, "--with-backtest", env="HCP_BENCH_WITH_BACKTEST",
             help="also fill, record and backtest (python -m tools.bench.backtest) and put "
             "its results under \"backtest\"")
    env_flag(p, "--every-part", env="HCP_BENCH_EVERY_PART",
             help="--with-api, --with-cluster and --with-backtest: every part in one run")
    env_flag(p, "--skip-frames-json", env="HCP_BENCH_SKIP_FRAMES_JSON",
             help="frames part: do not run the same samples as JSON through HCP (no "
             "same_recommendations_frames)")
    add_settings(p, "quiet", "bootstrap", "redis", "pg")
    add_api_bench_args(p)
    add_soak_args(p)
    p.add_argument("part", nargs="?", default="pipeline", choices=("pipeline", "api", "soak"),
                   help="what to measure: the streaming pipeline (default), `hcp api` "
                   "under wrk (docs/api.md), or `soak`: the live path for --minutes, sampled "
                   "every --sample-s, with a verdict that nothing grows without bound "
                   "(docs/benchmark.md)")
    p.set_defaults(func=_bench)
