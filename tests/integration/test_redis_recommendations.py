"""``hcp recommendations`` on a prefix populated by the Redis sink."""

from __future__ import annotations

import argparse
import json

import polars as pl
import pytest

from hcp.errors import SinkUnavailableError
from sinks.redis.sink import RedisWriter
from tools.bench.redis_sink import synthetic_recs
from tools.commands import recommendations as recommendations_command

W = 1_800_000_000_000  # 2027-01-15T08:00:00Z


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hcp")
    recommendations_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["recommendations", *argv])
    return args.func(args)


@pytest.fixture()
def populated(redis_url: str, redis_prefix: str) -> pl.DataFrame:
    df = synthetic_recs(40, W, seed=4)
    writer = RedisWriter(redis_url, redis_prefix)
    writer.write_batch([("recs", synthetic_recs(40, W - 60_000, seed=3)), ("recs", df)])
    writer.close()
    return df


def test_table_shows_summary_then_decisions(redis_url, redis_prefix, populated, capsys):
    assert run(["--redis", redis_url, "--redis-prefix", redis_prefix, "--limit", "0"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["summary", "window", "end"]
    assert lines[1].startswith("fleet")
    assert "2027-01-15T08:00:00Z" in lines[1]
    fleet_net = populated["net_usd_hr"].sum()
    assert f"{fleet_net:,.4f}" in lines[1]
    for site in populated["site"].unique():
        assert any(line.startswith(f"site {site}") for line in lines)
    for row in populated.to_dicts():
        line = next(line for line in lines if line.startswith(row["device_id"] + " "))
        cells = line.split()
        assert cells[1:5] == [row["device_type"], row["site"], row["action"], row["reason"]]
        assert cells[7] == f"{row['net_usd_hr']:,.4f}"
        assert cells[-1] == "2027-01-15T08:00:00Z"
    assert out.rstrip().endswith("showing 40 of 40 matching (40 devices)")


def test_filters_sort_and_json(redis_url, redis_prefix, populated, capsys):
    argv = ["--redis", redis_url, "--redis-prefix", redis_prefix, "--json",
            "--site", "tx-2", "--action", "mine,curtail", "--sort", "net",
            "--limit", "3"]
    assert run(argv) == 0
    out = json.loads(capsys.readouterr().out)
    expected = (
        populated.filter((pl.col("site") == "tx-2") & pl.col("action").is_in(["mine", "curtail"]))
        .sort("net_usd_hr", descending=True)
    )
    assert expected.height >= 3
    assert out["matched"] == expected.height
    assert out["total_devices"] == 40
    assert [r["device_id"] for r in out["recommendations"]] == expected["device_id"][:3].to_list()
    assert out["recommendations"][0]["net_usd_hr"] == expected["net_usd_hr"][0]
    assert out["summary"]["fleet"]["devices"] == 40
    assert out["summary"]["fleet"]["window_end"] == W
    assert {s["site"] for s in out["summary"]["sites"]} == set(populated["site"].unique())


def test_empty_prefix_says_so(redis_url, redis_prefix, capsys):
    assert run(["--redis", redis_url, "--redis-prefix", redis_prefix]) == 0
    out = capsys.readouterr().out
    assert "no summaries yet" in out
    assert "no recommendations match" in out


def test_unreachable_redis_is_one_clear_error():
    with socket_closed_port() as port:
        url = f"redis://127.0.0.1:{port}/0"
        with pytest.raises(SinkUnavailableError) as info:
            run(["--redis", url, "--timeout", "1"])
    message = str(info.value)
    assert url in message
    assert "HCP_REDIS_URL" in message
    assert "\n" not in message


class socket_closed_port:  # noqa: N801 - used as a context manager
    """A loopback port nothing listens on (bound, then released)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        return None
