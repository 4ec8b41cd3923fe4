"""Dense integer ids for devices, sites and models, assigned column-wise.

State arrays are indexed by these ids. A batch's device ids are mapped with one polars
join; new devices are appended in their order of first appearance.
"""

from __future__ import annotations

import numpy as np
import polars as pl

__all__ = ["DeviceRegistry"]


class DeviceRegistry:
    """Devices of one type in one shard, with the site and model they first reported."""

    def __init__(self) -> None:
        self._ids = pl.DataFrame(schema={"id": pl.String, "idx": pl.Int64})
        self.site_names: list[str] = []
        self.model_names: list[str] = []
        self._site_idx: dict[str, int] = {}
        self._model_idx: dict[str, int] = {}
        self.site = np.empty(0, dtype=np.int64)
        self.model = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return self._ids.height

    @property
    def device_ids(self) -> pl.Series:
        """Device ids in dense-id order."""
        return self._ids["id"]

    def lookup(self, ids: pl.Series, sites: pl.Series, models: pl.Series) -> np.ndarray:
        """Dense ids of a batch's devices, registering the new ones."""
        batch = pl.DataFrame({"id": ids, "site": sites, "model": models}).with_row_index("_row")
        joined = batch.join(self._ids, on="id", how="left", maintain_order="left")
        if joined["idx"].null_count():
            new = joined.filter(pl.col("idx").is_null()).unique(
                "id", keep="first", maintain_order=True
            )
            start = self._ids.height
            new_ids = new.select("id", (pl.int_range(pl.len()) + start).alias("idx"))
            self._ids = pl.concat([self._ids, new_ids])
            self.site = np.concatenate(
                [self.site, self._codes(new["site"], self._site_idx, self.site_names)]
            )
            self.model = np.concatenate(
                [self.model, self._codes(new["model"], self._model_idx, self.model_names)]
            )
            joined = batch.join(self._ids, on="id", how="left", maintain_order="left")
        return joined["idx"].to_numpy()

    @staticmethod
    def _codes(values: pl.Series, index: dict[str, int], names: list[str]) -> np.ndarray:
        for name in values.unique(maintain_order=True).to_list():
            if name not in index:
                index[name] = len(names)
                names.append(name)
        return values.replace_strict(index, return_dtype=pl.Int64).to_numpy()
