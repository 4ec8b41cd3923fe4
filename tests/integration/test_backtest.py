"""`hcp backtest` over a real recording: reproducible, and scored as a hand computation.

One S21 at site-01 mines at 200 TH/s and 3500 W for 12 minutes; electricity is 2000 $/MWh
from minute 3 to 6 (40 otherwise). Policy "quick" (dwell 0) curtails for the spike and
resumes; "sticky" (dwell 1 h) curtails and cannot resume; "capped" puts a 3 kW cap on the
site, which no running S21 fits. A recommendation on window W is the command during W+1.
"""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path

import pytest

from hcp.topics import Topics
from tests.support.flowkit import T0, asic_msg, make_topics, price_msg, produce
from tools.backtest.command import backtest
from tools.backtest.policy import load_policy
from tools.cli import main
from tools.record.recording import record

MIN = 60_000
BTC, DIFF, REWARD = 100_000.0, 1.2e14, 3.125


def elec(t_ms: int) -> float:
    return 2000.0 if 3 * MIN <= t_ms - T0 < 6 * MIN else 40.0


@pytest.fixture(scope="module")
def recording(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    make_topics(bootstrap, topics, partitions=2)
    asics, prices = [], []
    for s in range(0, 12 * 60, 10):
        ts = T0 + s * 1000
        asics.append(asic_msg("asic-1", ts, "site-01"))
        if s % 30 == 0:
            prices += [
                price_msg("btc_usd", BTC, ts),
                price_msg("difficulty", DIFF, ts),
                price_msg("electricity_usd_mwh", elec(ts), ts, site="site-01"),
            ]
    produce(bootstrap, topics.asic, asics, "asic_id", partitions=2)
    produce(bootstrap, topics.prices, prices, "kind", partitions=2)
    out = tmp_path_factory.mktemp("rec")
    record(bootstrap, [topics.gpu, topics.asic, topics.prices], out, prefix=topics.prefix)
    return out


def _policy(tmp: Path, name: str, **settings: object) -> Path:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps({"name": name, **settings}))
    return path


def e_net(w: int) -> float:
    """Expected net (USD/h) of window w: prices as of its end (the last one at w:30)."""
    revenue = 200.0 * 1e12 * 3600 * REWARD / (DIFF * 2**32) * BTC
    return revenue - 3500.0 / 1e6 * elec(T0 + w * MIN + 30_000)


def hand(on: list[bool]) -> dict[str, float]:
    switches = sum(a != b for a, b in itertools.pairwise(on))
    return {
        "net_usd": sum(e_net(w) / 60 for w in range(12) if on[w]),
        "energy_mwh": sum(on) * 3500.0 / 60 / 1e6,
        "switches_per_device_day": switches / (12 / 1440),
    }


def test_two_policies_are_reproducible_and_rank_as_by_hand(
    recording: Path, tmp_path: Path
) -> None:
    files = [
        _policy(tmp_path, "quick", dwell_s=0),
        _policy(tmp_path, "sticky", dwell_s=3600),
        _policy(tmp_path, "capped", dwell_s=0, power_cap_mw={"site-01": 0.003}),
    ]
    policies = [load_policy(f) for f in files]
    first = backtest(recording, policies)
    second = backtest(recording, policies)
    strip = ("wall_s", "speedup")
    assert {k: v for k, v in first.items() if k not in strip} == {
        k: v for k, v in second.items() if k not in strip
    }
    rows = {r["name"]: r for r in first["rows"]}
    # quick: curtail decided on windows 3-5, so off during 4-6; sticky: off from 4 on.
    quick = hand([w not in (4, 5, 6) for w in range(12)])
    sticky = hand([w < 4 for w in range(12)])
    always = hand([True] * 12)
    for name, want in (("quick", quick), ("sticky", sticky), ("always_on", always),
                       ("recorded", always)):
        for key, value in want.items():
            assert rows[name][key] == pytest.approx(value, rel=1e-6), (name, key)
    ranked = sorted(("quick", "sticky"), key=lambda n: -rows[n]["net_usd"])
    assert ranked == sorted(("quick", "sticky"), key=lambda n: -hand_net(n))
    assert ranked == ["quick", "sticky"]
    # capped: on only in its first window, which overdraws the 3 kW cap for 1 minute.
    assert rows["capped"]["net_usd"] == pytest.approx(e_net(0) / 60)
    assert rows["capped"]["minutes_over_cap"] == 1.0
    assert rows["always_on"]["minutes_over_cap"] == 0.0  # the recording had no cap


def hand_net(name: str) -> float:
    on = {"quick": [w not in (4, 5, 6) for w in range(12)], "sticky": [w < 4 for w in range(12)]}
    return hand(on[name])["net_usd"]


def test_cli_writes_table_json_and_chart(
    recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _policy(tmp_path, "quick", dwell_s=0)
    out = tmp_path / "report.json"
    assert main(["backtest", str(recording), "--policy", str(policy), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["run", "net", "USD"]
    assert [r["name"] for r in json.loads(out.read_text())["rows"]] == [
        "recorded", "always_on", "quick",
    ]
    assert out.with_suffix(".png").stat().st_size > 1000
    bad = _policy(tmp_path, "typo", dwel_s=0)
    assert main(["backtest", str(recording), "--policy", str(bad), "--out", str(out)]) == 2
    assert "unknown setting(s) dwel_s" in capsys.readouterr().err
