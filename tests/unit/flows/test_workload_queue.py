"""The 10-level aging queue and the request classification rule."""

from __future__ import annotations

import random

import polars as pl
import pytest

from flows.router.classify import classify, classify_one
from flows.router.queue import AgingQueue, effective_priority

T0 = 1_767_225_600_000


def test_priority_order_then_fifo_then_id() -> None:
    q = AgingQueue(aging_s=10_000)  # no aging within this test
    q.push("b", 5, T0 + 10)
    q.push("a", 5, T0 + 10)  # same level, same ts: id breaks the tie
    q.push("c", 5, T0 + 5)
    q.push("hi", 9, T0 + 50)
    q.push("lo", 1, T0)
    order = [wid for _, _, wid in q.ordered(T0 + 100)]
    assert order == ["hi", "c", "a", "b", "lo"]


def test_order_matches_sort_on_random_entries() -> None:
    rng = random.Random(7)
    q = AgingQueue(aging_s=60)
    entries = []
    for i in range(500):
        prio, ts = rng.randint(1, 10), T0 + rng.randint(0, 3_600_000)
        q.push(f"w{i:04d}", prio, ts)
        entries.append((prio, ts, f"w{i:04d}"))
    for wid in [e[2] for e in entries[::7]]:
        q.remove(wid)
    entries = [e for i, e in enumerate(entries) if i % 7]
    now = T0 + 3_700_000
    expected = sorted(
        entries, key=lambda e: (-effective_priority(e[0], e[1], now, 60_000), e[1], e[2])
    )
    assert [wid for _, _, wid in q.ordered(now)] == [e[2] for e in expected]
    assert len(q) == len(entries)


def test_aging_prevents_starvation() -> None:
    """A priority-1 job overtakes a stream of fresh priority-9 jobs once it has aged."""
    q = AgingQueue(aging_s=120)
    q.push("old-low", 1, T0)
    served_at = None
    for minute in range(60):
        now = T0 + minute * 60_000
        q.push(f"urgent-{minute}", 9, now)
        head = next(iter(q.ordered(now)))[2]  # one GPU frees each minute
        q.remove(head)
        if head == "old-low":
            served_at = minute
            break
    assert served_at is not None
    # 9 levels at 120 s each = 18 min to reach 10, above the fresh 9s.
    assert 16 <= served_at <= 19


def test_effective_priority_caps_at_ten() -> None:
    assert effective_priority(3, T0, T0 + 10 * 3_600_000, 120_000) == 10
    assert effective_priority(3, T0, T0 + 239_999, 120_000) == 4
    assert effective_priority(3, T0 + 5, T0, 120_000) == 3  # clock skew never lowers it


def test_double_push_and_bad_priority_are_errors() -> None:
    q = AgingQueue()
    q.push("a", 3, T0)
    with pytest.raises(KeyError):
        q.push("a", 3, T0)
    with pytest.raises(ValueError, match="priority"):
        q.push("b", 11, T0)


def test_remove_many_keeps_the_rest_in_order() -> None:
    q = AgingQueue(aging_s=10_000)
    for i in range(100):
        q.push(f"w{i:03d}", 1 + i % 10, T0 + i)
    q.remove_many([f"w{i:03d}" for i in range(0, 100, 2)])
    got = [wid for _, _, wid in q.ordered(T0)]
    assert len(got) == 50 and all(int(w[1:]) % 2 for w in got)
    assert q.level_sizes() == [0, 10, 0, 10, 0, 10, 0, 10, 0, 10]


def test_classification_rule() -> None:
    assert classify_one(1, 60, 16.0) == "inference"
    assert classify_one(8, 60, 16.0) == "training"
    assert classify_one(1, 5 * 3600, 16.0) == "training"
    assert classify_one(1, 3600, 16.0) == "batch"
    df = pl.DataFrame(
        {"kind": [None, "batch", None], "gpus": [1, 4, 2], "est_duration_s": [30, 30, 30],
         "mem_gb": [10.0, 10.0, 10.0]},
        schema_overrides={"kind": pl.String},
    )
    assert classify(df)["kind"].to_list() == ["inference", "batch", "training"]
    vector = classify(df.drop("kind"))["kind"].to_list()
    assert vector == [classify_one(1, 30, 10.0), classify_one(4, 30, 10.0),
                      classify_one(2, 30, 10.0)]
