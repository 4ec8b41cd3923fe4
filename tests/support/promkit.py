"""A real Prometheus server for tests (Debian's `prometheus` binary), and Grafana macro expansion.

The server listens on a free loopback port, keeps its TSDB in a temporary directory and is
stopped when the context exits. Nothing here is mocked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tools.broker import free_port

__all__ = ["PromServer", "expand_sql_macros", "prometheus_server"]


class PromServer:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: object) -> dict:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self.get("/api/v1/query_range", query=expr, start=start, end=end, step=step)[
            "result"
        ]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


@contextmanager
def prometheus_server(
    tmp: Path, targets: list[str], rule_files: list[Path], scrape_s: int = 1
) -> Iterator[PromServer]:
    """Prometheus scraping ``targets`` (job ``hcp-job``) every ``scrape_s`` seconds."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run `make system-deps`"
    config = tmp / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {
                    "scrape_interval": f"{scrape_s}s",
                    "evaluation_interval": f"{scrape_s}s",
                },
                "rule_files": [str(p) for p in rule_files],
                "scrape_configs": [
                    {"job_name": "hcp-job", "static_configs": [{"targets": targets}]}
                ],
            }
        )
    )
    port = free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not become ready in 30 s"
            time.sleep(0.2)
        yield PromServer(url)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


_INTERVAL = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(interval: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd])", interval.strip().strip("'\""))
    assert m, f"unsupported interval {interval!r}"
    return int(m[1]) * _INTERVAL[m[2]]


def expand_sql_macros(sql: str, start: datetime, end: datetime) -> str:
    """Grafana's PostgreSQL macros, expanded as its documentation gives them:

    ``$__timeFilter(c)`` -> ``c BETWEEN '<from>' AND '<to>'`` (RFC 3339 UTC),
    ``$__timeGroupAlias(c, '5m')`` -> ``floor(extract(epoch from c)/300)*300 AS "time"``,
    ``$__timeGroup(c, '5m')`` -> the same without the alias, ``$__timeFrom()`` / ``$__timeTo()``
    -> the quoted bounds. Any other ``$__`` macro left over fails the test.
    """

    def iso(t: datetime) -> str:
        return "'" + t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") + "'"

    def group(m: re.Match, alias: bool) -> str:
        col, interval = (part.strip() for part in m[1].split(",", 1))
        n = _seconds(interval)
        return f"floor(extract(epoch from {col})/{n})*{n}" + (' AS "time"' if alias else "")

    out = re.sub(r"\$__timeFilter\(([^)]*)\)",
                 lambda m: f"{m[1].strip()} BETWEEN {iso(start)} AND {iso(end)}", sql)
    out = re.sub(r"\$__timeGroupAlias\(([^)]*)\)", lambda m: group(m, True), out)
    out = re.sub(r"\$__timeGroup\(([^)]*)\)", lambda m: group(m, False), out)
    out = out.replace("$__timeFrom()", iso(start)).replace("$__timeTo()", iso(end))
    assert "$__" not in out, f"unexpanded Grafana macro in {out}"
    return out
