"""Every mistake a newcomer made (issue 18, item 7) ends in one stderr line and exit 2 or 1.

Each command line runs as users run it, ``python -m tools ...`` in a child process, so a
traceback anywhere (argparse, a Bytewax worker, interpreter shutdown) would show.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hcp.kafka_admin import ensure_topics, partition_counts
from hcp.topics import Topics

USAGE, RUNTIME = 2, 1
Case = tuple[str, list[str], int, str]


def hcp(*args: str, stdout: int | None = subprocess.DEVNULL, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "tools", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-errors")
    plain = root / "plain-file"
    plain.write_text('{"x":')
    latin = root / "latin1.json"
    latin.write_bytes(b'\xff\xfe{"events": []}')
    corrupt = root / "corrupt-recovery"
    corrupt.mkdir()
    (corrupt / "hcp-recovery.json").write_text("garbage")
    garbage = root / "garbage-recording"
    garbage.mkdir()
    (garbage / "manifest.json").write_text(
        '{"format": "hcp-recording", "version": 1, "prefix": "hcp.", "topics": [{"topic": '
        '"hcp.market.prices", "file": "hcp.market.prices.parquet", "partitions": 1, '
        '"messages": 1, "per_partition": {"0": 1}, "first_timestamp_ms": 1, '
        '"last_timestamp_ms": 1}]}'
    )
    (garbage / "hcp.market.prices.parquet").write_bytes(b"not parquet at all")
    missing = root / "missing-recording"
    missing.mkdir()
    (missing / "manifest.json").write_text((garbage / "manifest.json").read_text())
    return {
        "plain": plain,
        "latin": latin,
        "corrupt": corrupt,
        "garbage": garbage,
        "missing": missing,
    }


@pytest.fixture(scope="module")
def live(bootstrap: str, pg_dsn: str) -> list[str]:
    """Flags naming services that work, so each line fails for its own reason only."""
    topics = Topics(f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(bootstrap, topics.all(), partitions=1)
    assert hcp("db", "init", "--pg", pg_dsn).returncode == 0
    return ["--bootstrap", bootstrap, "--topic-prefix", topics.prefix, "--pg", pg_dsn]


def _lines(f: dict[str, Path], redis_url: str, live: list[str]) -> list[Case]:
    """(name, argv, exit code, a phrase the one line must contain)."""
    bad_db = redis_url.rsplit("/", 1)[0] + "/99"
    plain = str(f["plain"])
    kafka, pg = live[:4], live[4:]
    job = ["run", *live, "--no-redis", "--metrics-port", "0"]
    return [
        ("recs-not-a-url", ["recommendations", "--redis", "notaurl"], USAGE, "not a Redis URL"),
        ("recs-bad-db", ["recommendations", "--redis", bad_db], USAGE, "DB index is out of"),
        ("workloads-bad-db", ["workloads", "--redis", bad_db], USAGE, "DB index is out of"),
        ("run-not-a-url", ["run", *live, "--once", "--redis", "notaurl"], USAGE,
         "not a Redis URL"),
        ("run-bad-db", ["run", *live, "--once", "--redis", bad_db], USAGE, "DB index is out of"),
        ("run-port-70000", ["run", *live, "--once", "--no-redis", "--metrics-port", "70000"],
         USAGE, "--metrics-port"),
        ("generate-seed", ["generate", *kafka, "--seed", "-1"], USAGE, "--seed"),
        ("generate-latin1", ["generate", *kafka, "--scenario", str(f["latin"])], USAGE, "UTF-8"),
        ("recovery-on-file", [*job, "--recovery-dir", plain], RUNTIME, "is a file"),
        ("recovery-under-file", [*job, "--recovery-dir", plain + "/sub"], RUNTIME,
         "Not a directory"),
        ("recovery-under-proc", [*job, "--recovery-dir", "/proc/hcp-recovery"], RUNTIME,
         "--recovery-dir /proc/hcp-recovery"),
        ("recovery-corrupt", [*job, "--recovery-dir", str(f["corrupt"])], RUNTIME, "corrupt"),
        ("history-export", ["history", *pg, "--export", "/nonexistent-dir/out.csv"], USAGE,
         "/nonexistent-dir"),
        ("replay-file", ["replay", *kafka, "--in", plain], USAGE, "not a recording directory"),
        ("replay-missing-parquet", ["replay", *kafka, "--in", str(f["missing"])], USAGE,
         "is missing"),
        ("replay-garbage-parquet", ["replay", *kafka, "--in", str(f["garbage"])], USAGE,
         "not a readable Parquet file"),
        ("record-out-file", ["record", *kafka, "--out", plain], USAGE, "is a file"),
        ("log-level-loud", ["--log-level", "LOUD", "workloads"], USAGE, "--log-level"),
        ("log-level-loud-after", ["workloads", "--log-level", "LOUD"], USAGE, "--log-level"),
    ]


CASES = [c[0] for c in _lines(dict.fromkeys(
    ("plain", "latin", "corrupt", "garbage", "missing"), Path("/x")), "redis://h/0", [""] * 6)]
# The job's lines run in a child process: Bytewax, signal handlers and logging are set up
# as for a user. The others run through tools.cli.main here, where any exception escaping
# (what a user would see as a traceback) fails the test; that keeps the suite quick.
IN_CHILD = {name for name in CASES if name.startswith(("run-", "recovery-"))}


@pytest.mark.parametrize("case", CASES)
def test_one_line_and_exit_code(
    case: str,
    files: dict[str, Path],
    redis_url: str,
    live: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tools.cli import main

    _, argv, expected, phrase = next(c for c in _lines(files, redis_url, live) if c[0] == case)
    if case in IN_CHILD:
        done = hcp(*argv)
        returncode, stderr = done.returncode, done.stderr
    else:
        try:
            returncode = main(argv)
        except SystemExit as exc:  # argparse
            returncode = exc.code
        stderr = capsys.readouterr().err
    lines = stderr.splitlines()
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hcp") and phrase in lines[0], lines
    assert returncode == expected, stderr


def test_busy_metrics_port_is_an_error(bootstrap: str, topics: Topics) -> None:
    ensure_topics(bootstrap, topics.all(), partitions=1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = hcp("run", "--no-pg", "--no-redis", "--bootstrap", bootstrap,
                   "--topic-prefix", topics.prefix, "--metrics-port", str(port))
    assert done.returncode == RUNTIME, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "--metrics-port" in done.stderr


def test_once_on_a_mistyped_prefix_stops_and_creates_nothing(bootstrap: str) -> None:
    typo = Topics(f"t{os.urandom(4).hex()}")  # the missing dot of a typo
    done = hcp("run", "--once", "--no-pg", "--no-redis", "--metrics-port", "0",
               "--bootstrap", bootstrap, "--topic-prefix", typo.prefix)
    assert done.returncode == USAGE, done.stderr
    assert done.stderr.count("\n") == 1 and "--topic-prefix" in done.stderr
    assert partition_counts(bootstrap, typo.all()) == {}


@pytest.fixture()
def closed_pipe() -> Iterator[int]:
    read, write = os.pipe()
    os.close(read)  # like `| head` that has already exited
    yield write
    os.close(write)


@pytest.mark.parametrize("command", ["recommendations", "workloads", "history"])
def test_closed_pipe_is_quiet(
    command: str, closed_pipe: int, redis_url: str, redis_prefix: str, pg_dsn: str
) -> None:
    if command == "history":
        assert hcp("db", "init", "--pg", pg_dsn).returncode == 0
        argv = ["history", "--pg", pg_dsn]
    else:
        argv = [command, "--redis", redis_url, "--redis-prefix", redis_prefix]
    done = hcp(*argv, stdout=closed_pipe)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert "error" not in done.stderr
    assert done.returncode == RUNTIME


def test_errors_raised_inside_a_worker_are_found_by_their_cause(tmp_path: Path) -> None:
    from tools.cli import describe_error

    missing = tmp_path / "x"
    wrapped = RuntimeError("error calling build_part")  # how Bytewax re-raises
    wrapped.__cause__ = FileNotFoundError(2, "No such file or directory", str(missing))
    assert describe_error(wrapped) == (RUNTIME, f"No such file or directory: {missing}")
    assert describe_error(RuntimeError("a bug")) is None  # main: "unexpected RuntimeError"
