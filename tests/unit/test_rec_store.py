"""The API's in-memory store of the sink's snapshots: lookups, pages, moves, drops."""

from __future__ import annotations

import orjson
import polars as pl

from api.rec_store import RecStore, SiteSnapshot, parse_rec
from hcp.schemas import REC_SCHEMA
from tools.bench.redis_sink import synthetic_recs

W = 1_800_000_000_000


def store_of(df: pl.DataFrame) -> RecStore:
    store = RecStore()
    for (site,), rows in df.partition_by("site", as_dict=True).items():
        rows = rows.sort("device_id")
        store.replace(SiteSnapshot(site, rows, int(rows["window_end"].max())))
    return store


def test_a_device_document_matches_the_hash_text_path():
    df = synthetic_recs(20, W, seed=1).with_columns(pl.lit(None, pl.Float64).alias("btc_usd"))
    store = store_of(df)
    row = df.row(3, named=True)
    text = pl.DataFrame([row], schema=REC_SCHEMA).select(
        pl.col(c).cast(pl.String).fill_null("") for c in REC_SCHEMA
    ).row(0, named=True)
    from_hash = parse_rec({k.encode(): v.encode() for k, v in text.items()})
    got = store.get(row["device_id"])
    assert got is not None and from_hash is not None
    assert orjson.loads(got.body) == orjson.loads(from_hash.body)
    assert orjson.loads(got.body)["btc_usd"] is None
    assert len(store) == 20 and store.get("nope") is None


def test_pages_walk_every_matching_device_once_in_id_order():
    df = synthetic_recs(500, W, seed=2)
    store = store_of(df)
    want = df.filter(pl.col("action") == "mine").sort("device_id")["device_id"].to_list()
    seen: list[str] = []
    after = None
    while True:
        page, after = store.page(sites=None, types={"asic"}, actions={"mine"}, states=None,
                                 after=after, limit=7)
        seen += [r.device_id for r in page]
        if after is None:
            break
    assert seen == want
    site = df["site"][0]
    page, _ = store.page(sites=[site], types=None, actions=None, states={"mining"},
                         after=None, limit=1000)
    assert [r.device_id for r in page] == df.filter(
        (pl.col("site") == site) & (pl.col("action") == "mine")
    ).sort("device_id")["device_id"].to_list()


def test_a_device_that_moved_site_is_served_from_its_newer_row_and_listed_once():
    first = synthetic_recs(10, W, seed=3)
    store = store_of(first)
    moved = first.row(0, named=True)
    new_site = next(s for s in first["site"].unique() if s != moved["site"])
    row = pl.DataFrame([{**moved, "site": new_site, "window_end": W + 60_000}], schema=REC_SCHEMA)
    rows = pl.concat([first.filter(pl.col("site") == new_site), row]).sort("device_id")
    store.replace(SiteSnapshot(new_site, rows, W + 60_000))
    got = store.get(moved["device_id"])
    assert got is not None and got.site == new_site
    page, _ = store.page(sites=None, types=None, actions=None, states=None, after=None,
                         limit=100)
    assert [r.device_id for r in page] == sorted(first["device_id"].to_list())
    store.drop(new_site)
    assert store.get(moved["device_id"]) is None
    assert len(store) == 10 - first.filter(pl.col("site") == new_site).height - 1
