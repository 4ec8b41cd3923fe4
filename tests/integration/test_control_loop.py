"""The control loop end to end on the embedded broker: commands, compliance, savings, stale.

Site 1 has ten ASICs; its electricity spikes to 2000 $/MWh from minute 5. The job commands
them to curtail (the recommendation of window [5, 6) min, in force from minute 6); nine
obey at 6:30, asic-10 keeps mining. Site 2's electricity feed dies after its first price:
from minute 6 its two ASICs' price is older than the 300 s allowed. At minute 12 BTC falls
to 20,000 $, which makes mining unprofitable even at 40 $/MWh: site 3's ASIC (fresh feed)
curtails, site 2's must not switch on its stale price. Every figure is checked against a
hand computation from the messages sent.
"""

from __future__ import annotations

import uuid

import polars as pl
import psycopg
import pytest
import redis

from flows.compliance import ComplianceConfig, ComplianceLogic, ComplianceState
from hcp.commands import CommandReader
from hcp.tags import Out
from hcp.topics import Topics
from sinks.postgres.schema import apply_migrations
from sinks.postgres.writer import PgWriter
from sinks.redis.sink import RedisWriter
from tests.support.flowkit import T0, asic_msg, make_topics, price_msg, produce, run_once
from tools.commands.history import compliance

MIN = 60_000
SITE1 = [f"asic-{i:02d}" for i in range(1, 11)]
REBEL = "asic-10"
STANDBY_W = 20.0
BTC, DIFF, REWARD = 100_000.0, 1.2e14, 3.125


def site1_elec(t_ms: int) -> float:
    return 2000.0 if t_ms - T0 >= 5 * MIN else 40.0


def btc(t_ms: int) -> float:
    return 20_000.0 if t_ms - T0 >= 12 * MIN else BTC


def story() -> tuple[list[dict], list[dict]]:
    asics, prices = [], []
    for s in range(0, 16 * 60, 10):
        ts = T0 + s * 1000
        for a in SITE1:
            obeys = a != REBEL and s >= 6 * 60 + 30
            if obeys:
                asics.append(
                    asic_msg(a, ts, "site-01", state="curtailed", hashrate_ths=0.0,
                             power_w=STANDBY_W, shares_accepted=0, shares_rejected=0)
                )
            else:
                asics.append(asic_msg(a, ts, "site-01"))
        for a in ("asic-21", "asic-22"):
            asics.append(asic_msg(a, ts, "site-02"))
        asics.append(asic_msg("asic-31", ts, "site-03"))
        if s % 30 == 0:
            prices += [
                price_msg("btc_usd", btc(ts), ts),
                price_msg("difficulty", DIFF, ts),
                price_msg("electricity_usd_mwh", site1_elec(ts), ts, site="site-01"),
                price_msg("electricity_usd_mwh", 40.0, ts, site="site-03"),
            ]
            if s == 0:
                prices.append(price_msg("electricity_usd_mwh", 40.0, ts, site="site-02"))
    return asics, prices


@pytest.fixture(scope="module")
def run(bootstrap: str) -> tuple[Topics, object]:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    make_topics(bootstrap, topics)
    asics, prices = story()
    produce(bootstrap, topics.asic, asics, "asic_id")
    produce(bootstrap, topics.prices, prices, "kind")
    sink = run_once(
        bootstrap, topics, dwell_s=0, lateness_s=0, max_price_age_s=300,
        compliance_grace_s=60, compliance_windows=3,
    )
    return topics, sink


def test_commands_follow_changed_actions_onto_the_topic(
    bootstrap: str, run: tuple[Topics, object]
) -> None:
    topics, sink = run
    commands = sink.frame("commands")
    site1 = commands.filter(pl.col("site") == "site-01").sort("ts", "device_id")
    # Every device gets its first action, then site 1 is told to curtail once.
    assert site1.filter(pl.col("action") == "mine")["ts"].to_list() == [T0 + MIN] * 10
    curtail = site1.filter(pl.col("action") == "curtail")
    assert curtail["ts"].to_list() == [T0 + 6 * MIN] * 10
    assert curtail["reason"].unique().to_list() == ["unprofitable"]
    reader = CommandReader(bootstrap, topics.commands)
    try:
        got: list[dict] = []
        for _ in range(50):
            got += reader.poll(timeout_s=0.2)
            if len(got) >= commands.height:
                break
    finally:
        reader.close()
    assert len(got) == commands.height
    assert {(m["device_id"], m["ts"], m["action"]) for m in got} == set(
        commands.select("device_id", "ts", "action").iter_rows()
    )


def test_ignoring_devices_are_flagged_and_power_differs_by_their_share(
    run: tuple[Topics, object],
) -> None:
    _, sink = run
    per_device = sink.frame("compliance")
    rebel = per_device.filter(pl.col("device_id") == REBEL).sort("window_start")
    # Judged from window [7, 8) (the command of minute 6 plus the 60 s grace).
    judged = rebel.filter(pl.col("compliant").is_not_null() & (pl.col("command") == "curtail"))
    assert judged["window_start"][0] == T0 + 7 * MIN
    assert rebel.filter(pl.col("window_start") < T0 + 6 * MIN)["misses"].max() == 0
    assert judged["misses"].to_list()[:3] == [1, 2, 3]
    assert judged["flagged"].to_list()[:3] == [False, False, True]
    others = per_device.filter(
        (pl.col("site") == "site-01") & (pl.col("device_id") != REBEL)
        & pl.col("compliant").is_not_null()
    )
    assert others.height and others["compliant"].all() and not others["flagged"].any()
    site = sink.frame("site_compliance").filter(
        (pl.col("site") == "site-01") & (pl.col("window_start") == T0 + 10 * MIN)
    )
    row = site.row(0, named=True)
    assert row["commanded_kw"] == 0.0
    # Observed minus commanded is the rebel's draw (10 % of the site's 35 kW) plus the
    # standby draw of the nine that obeyed.
    assert row["observed_kw"] - row["commanded_kw"] == pytest.approx(
        0.1 * 10 * 3.5 + 9 * STANDBY_W / 1000
    )
    assert (row["noncompliant"], row["flagged"], row["devices"]) == (1, 1, 10)


def test_savings_equal_a_hand_computation(run: tuple[Topics, object]) -> None:
    _, sink = run
    per_device = sink.frame("compliance")
    w = T0 + 8 * MIN  # window [8, 9): spike, BTC still 100k
    hours = 1 / 60
    usd_per_th_hr = 1e12 * 3600 * REWARD / (DIFF * 2**32) * BTC
    e_rev, e_cost = 200.0 * usd_per_th_hr, 3500.0 / 1e6 * 2000.0
    obeyed = (e_cost - STANDBY_W / 1e6 * 2000.0) - (e_rev - 0.0)
    got = dict(
        per_device.filter(pl.col("window_start") == w)
        .select("device_id", "savings_usd")
        .iter_rows()
    )
    assert got["asic-01"] == pytest.approx(obeyed * hours)
    assert got[REBEL] == pytest.approx(0.0, abs=1e-12)  # ignored: nothing avoided or forgone
    site = sink.frame("site_compliance").filter(
        (pl.col("site") == "site-01") & (pl.col("window_start") == w)
    )
    assert site["savings_usd"][0] == pytest.approx(9 * obeyed * hours)
    # Planned: 0 for a curtailed device; actual: what it really earned.
    assert site["planned_net_usd"][0] == 0.0
    rebel_net = e_rev - e_cost
    standby_net = -STANDBY_W / 1e6 * 2000.0
    assert site["actual_net_usd"][0] == pytest.approx((rebel_net + 9 * standby_net) * hours)


def test_stale_feed_gives_stale_price_and_no_switch(run: tuple[Topics, object]) -> None:
    _, sink = run
    recs = sink.frame("recs")

    def story_of(device: str) -> list[tuple[int, str, str]]:
        rows = recs.filter(pl.col("device_id") == device).sort("window_start")
        return [
            ((s - T0) // MIN, a, r)
            for s, a, r in rows.select("window_start", "action", "reason").iter_rows()
        ]

    stale = story_of("asic-21")
    # Its only price is from t=0: older than 300 s at the end of window [5, 6) and after.
    assert [r for m, _, r in stale if m < 5] == ["profitable"] * 5
    assert [r for m, _, r in stale if m >= 5] == ["stale_price"] * 11
    assert {a for _, a, _ in stale} == {"mine"}
    # The same BTC fall with a fresh feed does switch.
    fresh = story_of("asic-31")
    assert fresh[12][1:] == ("curtail", "unprofitable")


def test_compliance_lands_in_redis_and_postgres(
    run: tuple[Topics, object], redis_url: str, redis_prefix: str, own_pg_dsn: str
) -> None:
    pg_dsn = own_pg_dsn  # "the latest windows" of other modules must not be in its range
    _, sink = run
    items = [(t, df) for t, df in sink.items if t in ("compliance", "site_compliance")]
    writer = RedisWriter(redis_url, prefix=redis_prefix)
    try:
        writer.write_batch(items)
        writer.write_batch(items[:2])  # a replayed older window moves nothing back
    finally:
        writer.close()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.hgetall(f"{redis_prefix}noncompliant") == {REBEL: "9"}
    site = client.hgetall(f"{redis_prefix}compliance:site:site-01")
    assert int(site["window_end"]) == T0 + 16 * MIN
    assert (site["flagged"], site["noncompliant"]) == ("1", "1")
    apply_migrations(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        pg = PgWriter(conn)
        frames = {
            "device_compliance": sink.frame("compliance"),
            "site_compliance": sink.frame("site_compliance"),
        }
        pg.write(frames)
        pg.write(frames)  # idempotent
        n, flagged = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE flagged) FROM device_compliance "
            "WHERE site = 'site-01'"
        ).fetchone()
        sites = conn.execute("SELECT count(*) FROM site_compliance").fetchone()[0]
        by_site, _, _ = compliance(conn, by="site", site="site-01")
        by_device, _, _ = compliance(conn, by="device", device=REBEL)
    assert by_site["savings_usd"][0] == pytest.approx(
        frames["site_compliance"].filter(pl.col("site") == "site-01")["savings_usd"].sum()
    )
    assert by_device.row(0, named=True)["flagged_windows"] == 7
    assert n == 10 * 16
    assert flagged == 7  # windows [9, 10) .. [15, 16)
    assert sites == 3 * 16


def test_a_device_back_in_step_leaves_the_flagged_set(redis_url: str, redis_prefix: str) -> None:
    """Told to curtail, it mines for four judged windows (flagged), then obeys (cleared)."""
    logic = ComplianceLogic(ComplianceConfig(window_ms=MIN, grace_ms=MIN, flag_windows=3),
                            ComplianceState())

    def window(w: int, action: str, power_w: float) -> list[tuple]:
        start = T0 + w * MIN
        base = {"device_id": "asic-1", "device_type": "asic", "site": "site-01",
                "window_start": start, "window_end": start + MIN}
        recs = pl.DataFrame([{**base, "action": action, "reason": "unprofitable",
                              "revenue_usd_hr": 0.4, "cost_usd_hr": 7.0, "net_usd_hr": -6.6,
                              "expected_revenue_usd_hr": 0.4, "expected_cost_usd_hr": 7.0,
                              "expected_net_usd_hr": -6.6, "expected_power_w": 3500.0}])
        wins = pl.DataFrame([{**base, "power_w": power_w}])
        return logic.on_batch([(Out.WINDOWS, wins), (Out.RECS, recs)])[0]

    out = [window(0, "curtail", 3500.0)]  # the command: curtail from minute 1
    out += [window(w, "curtail", 3500.0) for w in range(1, 6)]  # judged from minute 2
    out += [window(6, "curtail", 20.0)]
    rows = pl.concat([df for items in out for tag, df in items if tag == Out.COMPLIANCE])
    assert rows["misses"].to_list() == [0, 0, 1, 2, 3, 4, 0]
    assert rows["cleared"].to_list() == [False] * 6 + [True]
    writer = RedisWriter(redis_url, prefix=redis_prefix)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        writer.write_batch([item for items in out[:6] for item in items])
        assert client.hgetall(f"{redis_prefix}noncompliant") == {"asic-1": "4"}
        writer.write_batch(out[6])
        assert client.hgetall(f"{redis_prefix}noncompliant") == {}
    finally:
        writer.close()
