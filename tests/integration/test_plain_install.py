"""What a user installs: a fresh venv with ``pip install .`` alone, as deploy/Dockerfile does.

CI otherwise runs everything from the developer install (``.[dev]``), which hides a base
command that imports a dev-only package or a data file the wheel does not carry. Here the
installed ``hcp`` runs every subcommand's ``--help``, creates the schema, generates topics,
processes them with ``hcp run --once``, records, replays and backtests them and serves the
API; the broker, Redis and PostgreSQL are the test session's own real services.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from hcp.topics import Topics
from tools.broker import free_port
from tools.cli import _subcommand_parsers, build_parser

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hcp", "flows", "sinks", "generators", "api", "tools")
# Modules a plain install may not import: developer tools whose extra is named beside them.
DEV_ONLY = {"tools.dashboards": "grafanalib"}
# The console's libraries come from `make console-assets` (npm); the wheel carries these three.
CONSOLE_VENDOR = [
    "api/console/node_modules/alpinejs/dist/cdn.min.js",
    "api/console/node_modules/uplot/dist/uPlot.iife.min.js",
    "api/console/node_modules/uplot/dist/uPlot.min.css",
]
START = 1_767_225_600_000


def _source_tree(dest: Path) -> Path:
    """The checkout as a build sees it: tracked and new files, plus the console's libraries."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    for rel in [*listed, *CONSOLE_VENDOR]:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ directory of a venv where only ``pip install .`` ran."""
    base = tmp_path_factory.mktemp("plain")
    src = _source_tree(base / "src")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    done = subprocess.run([*pip, "install", "-q", str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv / "bin"


@pytest.fixture()
def env(bootstrap: str, topics: Topics, redis_url: str, redis_prefix: str, own_pg_dsn: str,
        tmp_path: Path) -> dict[str, str]:
    # Only what a user would set: none of the developer venv's paths leak into the plain one.
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("HCP_", "PYTHON", "VIRTUAL"))}
    return {
        **keep,
        "HCP_KAFKA_BOOTSTRAP": bootstrap,
        "HCP_TOPIC_PREFIX": topics.prefix,
        "HCP_REDIS_URL": redis_url,
        "HCP_REDIS_PREFIX": redis_prefix,
        "HCP_PG_DSN": own_pg_dsn,
        "HCP_PARTITIONS": "2",
        "HCP_METRICS_PORT": "0",
        "HOME": str(tmp_path),
        "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
    }


def _hcp(plain: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 180,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(plain / "hcp"), *args], capture_output=True, text=True, env=env, timeout=timeout,
        cwd=cwd,
    )


def _subcommands() -> list[list[str]]:
    """Every subcommand path of the `hcp` parser: ['run'], ['db', 'init'], ..."""
    return [sub.prog.split()[1:] for sub in _subcommand_parsers(build_parser())]


def test_every_subcommand_help(plain: Path) -> None:
    paths = _subcommands()
    assert ["run"] in paths and ["db", "init"] in paths and ["api"] in paths
    failed = {}
    for path in paths:
        done = _hcp(plain, *path, "--help", timeout=60)
        if done.returncode != 0 or "usage:" not in done.stdout:
            failed[" ".join(path)] = done.stderr.strip().splitlines()[-1:]
    assert not failed, failed
    assert _hcp(plain, "--version").stdout.startswith("hcp ")


def test_every_module_imports(plain: Path) -> None:
    """No base module imports a package only an extra brings (lazily imported ones aside)."""
    script = """
import importlib, json, pkgutil, sys
out = {}
for top in sys.argv[1:]:
    pkg = importlib.import_module(top)
    for info in pkgutil.walk_packages(pkg.__path__, top + "."):
        if info.name.endswith(".__main__"):  # entry points: importing one runs it
            continue
        try:
            importlib.import_module(info.name)
        except ImportError as exc:
            out[info.name] = getattr(exc, "name", None) or str(exc)
print(json.dumps(out))
"""
    done = subprocess.run([str(plain / "python"), "-c", script, *PACKAGES],
                          capture_output=True, text=True,
                          timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    failed = json.loads(done.stdout)
    unexpected = {
        mod: missing for mod, missing in failed.items()
        if not any(mod.startswith(dev) and missing == pkg for dev, pkg in DEV_ONLY.items())
    }
    assert not unexpected, unexpected


def test_installed_package_carries_its_data_files(plain: Path) -> None:
    site = Path(subprocess.run(
        [str(plain / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip())
    tracked = subprocess.run(
        ["git", "ls-files", *PACKAGES], cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    # npm's manifests only matter to `make console-assets`; the served files are CONSOLE_VENDOR.
    data = [p for p in tracked if not p.endswith((".py", "package.json", "package-lock.json"))]
    assert data, "no data files found: the listing is wrong"
    present = [p for p in CONSOLE_VENDOR if (ROOT / p).is_file()]
    missing = [p for p in [*data, *present] if not (site / p).is_file()]
    assert not missing, missing


def test_commands_needing_an_extra_say_which(plain: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCP_")}
    env["HOME"] = str(tmp_path)
    for args, extra in ((["broker", "--port", "0"], "broker"), (["demo"], "broker"),
                        (["bench", "--quick"], "broker")):
        done = _hcp(plain, *args, env=env, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (args, done.stderr)
        assert f"pip install 'hcp[{extra}]'" in lines[-1], (args, lines)
        assert "Traceback" not in done.stderr


def test_plain_install_runs_the_pipeline(plain: Path, env: dict[str, str], topics: Topics,
                                         redis_url: str, redis_prefix: str,
                                         tmp_path: Path) -> None:
    done = _hcp(plain, "db", "init", env=env)
    assert done.returncode == 0, done.stderr
    assert "schema ready" in done.stdout

    done = _hcp(plain, "generate", "--gpus", "4", "--asics", "12", "--sites", "2",
                "--duration", "180", "--speed", "max", "--start", "2026-01-01T00:00:00Z", env=env)
    assert done.returncode == 0, done.stderr

    done = _hcp(plain, "run", "--once", env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = next(line for line in done.stdout.splitlines() if line.startswith("once:"))
    # 16 devices x 3 closed one-minute windows, nothing dead-lettered or dropped.
    assert "48 device windows closed" in summary, summary
    assert "0 dead letters" in summary and "0 late events" in summary, summary

    r = redis.Redis.from_url(redis_url)
    assert r.hget(f"{redis_prefix}rec:asic-000001", "action") in (b"mine", b"curtail")
    done = _hcp(plain, "recommendations", "--limit", "0", env=env)
    assert done.returncode == 0 and "asic-000012" in done.stdout, done.stderr
    done = _hcp(plain, "history", "--by", "site", "--since", "2026-01-01T00:00:00Z", env=env)
    assert done.returncode == 0 and "site-01" in done.stdout, done.stderr

    recording = tmp_path / "rec"
    done = _hcp(plain, "record", "--out", str(recording), env=env)
    assert done.returncode == 0, done.stderr
    done = _hcp(plain, "replay", "--input", str(recording), "--speed", "max",
                env={**env, "HCP_TOPIC_PREFIX": f"{topics.prefix}again."})
    assert done.returncode == 0 and "replayed" in done.stdout, done.stderr

    policy = tmp_path / "quick.json"
    policy.write_text(json.dumps({"name": "quick", "dwell_s": 0}))
    done = _hcp(plain, "backtest", str(recording), "--policy", str(policy), env=env,
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "backtest.json").read_text())
    assert [row["name"] for row in report["rows"]][-1] == "quick"
    # The chart is matplotlib's (the bench extra): skipped with a note, never a failure.
    assert "chart skipped" in done.stderr and "hcp[bench]" in done.stderr


@pytest.fixture()
def api(plain: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(plain / "hcp"), "api", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    # Read stderr as it comes: an unread pipe that fills up blocks the server's logging.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)
            try:
                urllib.request.urlopen(f"{url}/api/v1/health", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=45)  # every shutdown step is bounded at 5 s (api/services.py)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            reader.join(timeout=5)
            pytest.fail("hcp api did not stop within 45 s of SIGTERM; its log:\n"
                        + "".join(lines[-40:]))


def test_plain_install_serves_the_api(api: str) -> None:
    with urllib.request.urlopen(f"{api}/api/v1/health", timeout=5) as resp:
        health = json.load(resp)
    assert resp.status == 200 and health["status"] == "ok", health
    assert all(dep["ok"] for dep in health["dependencies"].values()), health
    with urllib.request.urlopen(f"{api}/console/", timeout=5) as resp:
        assert resp.status == 200 and b"<html" in resp.read().lower()
    with urllib.request.urlopen(f"{api}/console/static/console.js", timeout=5) as resp:
        assert resp.status == 200
    if (ROOT / CONSOLE_VENDOR[0]).is_file():
        with urllib.request.urlopen(f"{api}/console/vendor/alpine.js", timeout=5) as resp:
            assert resp.status == 200


def test_plain_install_collects_and_applies_on_simulated_miners(
    plain: Path, env: dict[str, str], topics: Topics, tmp_path: Path
) -> None:
    """The site processes as a plain install runs them: `hcp collect` polls three simulated
    miners and publishes frames, `hcp agent` curtails one on a command and reports it."""
    from flows.frames import decode_frame
    from generators.devices import SimFleet
    from hcp.commands import produce_commands
    from hcp.schemas import ASIC_FIELDS
    from tests.support.fleetkit import read_topic
    from tests.support.flowkit import make_topics

    make_topics(env["HCP_KAFKA_BOOTSTRAP"], topics, partitions=1)
    fleet = SimFleet()
    try:
        miners = fleet.add_miners(3, ramp_s=0.0)
        inventory = tmp_path / "site.csv"
        fleet.write_inventory(inventory, site="site-p")
        done = _hcp(plain, "collect", "--inventory", str(inventory), "--rounds", "2",
                    "--interval-s", "0.3", env=env, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        frames = [decode_frame(m.value(), ASIC_FIELDS)
                  for m in read_topic(env["HCP_KAFKA_BOOTSTRAP"], topics.asic)]
        assert sum(f.rows.height for f in frames) == 6

        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": env["HCP_KAFKA_BOOTSTRAP"]})
        produce_commands(producer, topics.commands, [{
            "v": 1, "ts": 1_000, "device_id": miners[0].miner_id, "device_type": "asic",
            "site": "site-p", "action": "curtail", "reason": "test", "window_start": 0,
        }])
        assert producer.flush(30) == 0
        agent = subprocess.Popen(
            [str(plain / "hcp"), "agent", "--inventory", str(inventory), "--site", "site-p"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not miners[0].sleeping and time.monotonic() < deadline:
                assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
                time.sleep(0.2)
        finally:
            agent.terminate()
            agent.wait(timeout=30)
        assert miners[0].sleeping and not miners[1].sleeping
        results = [json.loads(m.value())
                   for m in read_topic(env["HCP_KAFKA_BOOTSTRAP"], topics.command_results)]
        assert [(r["device_id"], r["status"]) for r in results] == [
            (miners[0].miner_id, "applied")
        ]
    finally:
        fleet.close()
