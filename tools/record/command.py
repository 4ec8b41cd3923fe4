"""``hcp record`` and ``hcp replay``: topics to Parquet files and back.

Both default to the four input topics of :class:`hcp.topics.Topics` under ``--topic-prefix``;
``--topics`` picks others (full names, or names relative to the prefix).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hcp.config import env_arg, env_flag
from hcp.errors import ConfigError
from hcp.kafka_admin import check_broker
from hcp.settings import add_settings
from hcp.topics import Topics
from tools.bench.progress import Progress
from tools.record.recording import check_files, read_manifest, record, replay

__all__ = ["register"]

log = logging.getLogger(__name__)


def _topic_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _resolve(names: list[str] | None, prefix: str) -> list[str]:
    """Full topic names: the default inputs, or ``--topics`` with the prefix added if absent."""
    if not names:
        return Topics(prefix).inputs()
    return [n if n.startswith(prefix) else prefix + n for n in names]


def _record(args: argparse.Namespace) -> int:
    # Checked before the broker: a bad --out should not wait for Kafka to say so.
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        msg = f"--out {out} is a file; give a directory for the recording"
        raise ConfigError(msg)
    check_broker(args.bootstrap)
    topics = _resolve(args.topics, args.topic_prefix)
    progress = Progress("record", unit="messages", enabled=not args.quiet)
    recorded = record(
        args.bootstrap,
        topics,
        Path(args.out),
        prefix=args.topic_prefix,
        progress=progress.update,
        overwrite=args.overwrite,
    )
    progress.close()
    for r in recorded:
        print(f"{r.topic}: {r.messages:,} messages in {r.partitions} partitions -> {r.file}")
    print(f"recording written to {args.out}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    in_dir = Path(args.input)
    _, recorded = read_manifest(in_dir)
    check_files(in_dir, recorded)
    check_broker(args.bootstrap)
    wanted = set(args.topics or [])
    total = sum(
        r.messages
        for r in recorded
        if not wanted or r.topic in wanted or any(r.topic.endswith(w) for w in wanted)
    )
    progress = Progress("replay", total=total, unit="messages", enabled=not args.quiet)
    stats = replay(
        args.bootstrap,
        in_dir,
        prefix=args.topic_prefix,
        speed=args.speed,
        topics=args.topics,
        keep_timestamps=args.keep_timestamps,
        progress=progress.update,
    )
    progress.close()
    for topic, n in stats.per_topic.items():
        print(f"{topic}: {n:,} messages")
    print(
        f"replayed {stats.messages:,} messages in {stats.seconds:.2f} s "
        f"({stats.messages_per_s:,.0f}/s; recorded span {stats.recorded_span_s:.2f} s)"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    rec = subparsers.add_parser(
        "record",
        help="dump topics to Parquet files (one per topic, see docs/replay.md)",
        description="Read topics from their beginning to their end and write them to Parquet.",
    )
    env_arg(
        rec,
        "--out",
        env="HCP_RECORD_OUT",
        required=False,
        default="recording",
        help="directory to write the recording to: new, empty, or (with --overwrite) an "
        "earlier recording",
    )
    env_flag(
        rec,
        "--overwrite",
        env="HCP_RECORD_OVERWRITE",
        help="replace the recording already in --out (its manifest and Parquet files only)",
    )
    env_arg(
        rec,
        "--topics",
        env="HCP_RECORD_TOPICS",
        type=_topic_list,
        help="comma-separated topics (default: the four input topics)",
    )
    add_settings(rec, "quiet", "bootstrap", "topic_prefix")
    rec.set_defaults(func=_record)

    rep = subparsers.add_parser(
        "replay",
        help="produce a recording back to Kafka at its original pace times --speed",
        description=(
            "Produce a recording to the topics under --topic-prefix (the recorded prefix is "
            "replaced), to the same partition numbers and in offset order per partition, "
            "creating topics when missing."
        ),
    )
    env_arg(
        rep,
        "--input",
        "--in",
        dest="input",
        env="HCP_REPLAY_INPUT",
        default="recording",
        help="recording directory written by `hcp record`",
    )
    add_settings(rep, "speed")
    env_arg(
        rep,
        "--topics",
        env="HCP_REPLAY_TOPICS",
        type=_topic_list,
        help="comma-separated recorded topics to replay (default: all)",
    )
    env_flag(
        rep,
        "--keep-timestamps",
        env="HCP_REPLAY_KEEP_TIMESTAMPS",
        help="send the recorded message timestamps instead of the current time",
    )
    add_settings(rep, "quiet", "bootstrap", "topic_prefix", "partitions")
    rep.set_defaults(func=_replay)
