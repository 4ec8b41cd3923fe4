"""The 10-level queue (base priority first, FIFO within a level) and request classification."""

from __future__ import annotations

import random

import polars as pl
import pytest

from flows.router.classify import classify, classify_one
from flows.router.queue import AgingQueue

T0 = 1_767_225_600_000


def test_priority_order_then_fifo_then_id() -> None:
    q = AgingQueue()
    q.push("b", 5, T0 + 10)
    q.push("a", 5, T0 + 10)  # same level, same ts: id breaks the tie
    q.push("c", 5, T0 + 5)
    q.push("hi", 9, T0 + 50)
    q.push("lo", 1, T0)
    order = [wid for _, _, wid in q.ordered()]
    assert order == ["hi", "c", "a", "b", "lo"]


def test_order_matches_sort_on_random_entries() -> None:
    rng = random.Random(7)
    q = AgingQueue()
    entries = []
    for i in range(500):
        prio, ts = rng.randint(1, 10), T0 + rng.randint(0, 3_600_000)
        q.push(f"w{i:04d}", prio, ts)
        entries.append((prio, ts, f"w{i:04d}"))
    for wid in [e[2] for e in entries[::7]]:
        q.remove(wid)
    entries = [e for i, e in enumerate(entries) if i % 7]
    expected = sorted(entries, key=lambda e: (-e[0], e[1], e[2]))
    assert [wid for _, _, wid in q.ordered()] == [e[2] for e in expected]
    assert q.oldest_submit_ts() == min(e[1] for e in entries)
    assert len(q) == len(entries)


def test_age_never_lifts_work_above_a_higher_base_priority() -> None:
    """Aging cannot invert priorities: an hour-old priority-1 job stays behind fresh 2s."""
    q = AgingQueue()
    q.push("old-low", 1, T0)
    q.push("old-nine", 9, T0 + 1)
    q.push("fresh-ten", 10, T0 + 3_600_000)
    q.push("fresh-two", 2, T0 + 3_600_000)
    assert [wid for _, _, wid in q.ordered()] == ["fresh-ten", "old-nine", "fresh-two", "old-low"]


def test_double_push_and_bad_priority_are_errors() -> None:
    q = AgingQueue()
    q.push("a", 3, T0)
    with pytest.raises(KeyError):
        q.push("a", 3, T0)
    with pytest.raises(ValueError, match="priority"):
        q.push("b", 11, T0)


def test_remove_many_keeps_the_rest_in_order() -> None:
    q = AgingQueue()
    for i in range(100):
        q.push(f"w{i:03d}", 1 + i % 10, T0 + i)
    q.remove_many([f"w{i:03d}" for i in range(0, 100, 2)])
    got = [wid for _, _, wid in q.ordered()]
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
