"""A late price is counted once, though every shard sees every price."""

from __future__ import annotations

from prometheus_client import REGISTRY

from hcp.topics import Topics
from tests.support.flowkit import T0, asic_msg, make_topics, price_msg, produce, run_once


def test_a_late_price_is_counted_once(bootstrap: str, topics: Topics) -> None:
    make_topics(bootstrap, topics)  # 4 partitions: 4 shards, each sees every price
    asics = [asic_msg(f"asic-{i}", T0 + s * 10_000) for i in range(8) for s in range(12)]
    produce(bootstrap, topics.asic, asics, "asic_id")
    prices = [
        price_msg("btc_usd", 100_000.0, T0 + 60_000),
        price_msg("btc_usd", 99_000.0, T0 + 30_000),  # 30 s behind its partition: late
        price_msg("btc_usd", 101_000.0, T0 + 90_000),
    ]
    produce(bootstrap, topics.prices, prices, "kind")
    before = REGISTRY.get_sample_value("hcp_late_events_total", {"kind": "prices"}) or 0.0
    run_once(bootstrap, topics)
    after = REGISTRY.get_sample_value("hcp_late_events_total", {"kind": "prices"}) or 0.0
    assert after - before == 1
