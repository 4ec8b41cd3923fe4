"""The Numba RESP packer against redis-py's own command packer, on random rows."""

from __future__ import annotations

import numpy as np
import polars as pl
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.redis.packer import BufferRing, Bulk, Const, Header, Pair, pack_rows
from sinks.redis.resp import const_bulk, header

_PACKER = redis.Connection()  # never connected: only its pack_command is used

text_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=30
)


def reference(args: list[str]) -> bytes:
    return b"".join(_PACKER.pack_command(*args))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(text_values, text_values, text_values), min_size=0, max_size=40),
    choices=st.lists(st.integers(0, 1), min_size=40, max_size=40),
    prefix=st.sampled_from(["", "hcp:rec:", "ключ:"]),
)
def test_pack_rows_matches_redis_py(rows, choices, prefix):
    df = pl.DataFrame(rows, schema=["id", "a", "b"], orient="row")
    full = [Const(header(6, "HSET")), Bulk("id", prefix), Const(const_bulk("a")), Bulk("a"),
            Const(const_bulk("b")), Bulk("b")]
    short = [Const(header(3, "SET")), Bulk("id", prefix), Bulk("b")]
    choice = np.asarray(choices[: len(rows)], dtype=np.int64)
    packed = pack_rows(df, [full, short], choice, BufferRing(2)).tobytes()
    expected = b"".join(
        reference(["HSET", prefix + i, "a", a, "b", b]) if c == 0
        else reference(["SET", prefix + i, b])
        for (i, a, b), c in zip(rows, choice, strict=True)
    )
    assert packed == expected


def test_sliced_frames_and_ring_reuse():
    df = pl.DataFrame(
        {"k": [f"key-{i}" for i in range(100)], "v": [str(i * i) for i in range(100)]}
    )
    ring = BufferRing(2)
    template = [Const(header(3, "SET")), Bulk("k"), Bulk("v")]
    for start in (0, 37, 90):
        part = df.slice(start, 25)
        got = pack_rows(part, [template], ring=ring).tobytes()
        assert got == b"".join(reference(["SET", k, v]) for k, v in part.iter_rows())


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(text_values, text_values, text_values, st.booleans(), st.booleans()),
        min_size=0, max_size=40,
    ),
)
def test_skipped_pairs_and_counted_headers_match_redis_py(rows):
    df = pl.DataFrame([r[:3] for r in rows], schema=["id", "a", "b"], orient="row")
    template = [Header(2), Const(const_bulk("HSET")), Bulk("id", "h:"), Pair("a", "a"),
                Pair("bb", "b")]
    skip = {"a": np.array([r[3] for r in rows], dtype=bool),
            "b": np.array([r[4] for r in rows], dtype=bool)}
    packed = pack_rows(df, [template], skip=skip).tobytes()
    expected = b""
    for i, a, b, skip_a, skip_b in rows:
        args = ["HSET", "h:" + i]
        if not skip_a:
            args += ["a", a]
        if not skip_b:
            args += ["bb", b]
        expected += reference(args)
    assert packed == expected
