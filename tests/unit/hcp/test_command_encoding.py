"""A commands frame encoded at once gives the bytes one message at a time gives."""

from __future__ import annotations

import polars as pl

from hcp.commands import decode_command, encode_command, encode_command_frame


def test_frame_encoding_matches_the_message_encoder() -> None:
    df = pl.DataFrame({
        "device_id": ["asic-00007", "gpu-00001", 'odd"id\\'],
        "device_type": ["asic", "gpu", "asic"],
        "site": ["site-01", "site-02", "site-03"],
        "ts": [1_767_225_780_000, 1_767_225_780_000, 1_767_225_840_000],
        "action": ["curtail", "serve", "mine"],
        "reason": ["unprofitable", None, "profitable"],
        "window_start": [1_767_225_720_000, 1_767_225_720_000, 1_767_225_780_000],
        "extra": [1, 2, 3],  # columns a message does not carry are left out
    })
    cols = ("ts", "device_id", "device_type", "site", "action", "reason", "window_start")
    want = [
        (row["device_id"].encode(), encode_command({"v": 1, **row}))
        for row in df.select(cols).iter_rows(named=True)
    ]
    assert encode_command_frame(df) == want
    assert decode_command(want[1][1])["reason"] is None
