"""Device, site and message keys, and the stable key -> partition map.

Partitions come from ``zlib.crc32(key) % partitions``, computed once per device, never
from Python's ``hash()`` (salted per process) nor from librdkafka's partitioner, so two runs
with the same seed put every message in the same partition in the same order.
"""

from __future__ import annotations

import zlib

import numpy as np
import polars as pl

__all__ = ["asic_ids", "gpu_ids", "partitions_for", "site_ids", "site_of", "static_frame"]


def site_ids(sites: int) -> list[str]:
    """``site-01`` ... ``site-NN``."""
    return [f"site-{i + 1:02d}" for i in range(sites)]


def gpu_ids(n: int) -> list[str]:
    return [f"gpu-{i + 1:05d}" for i in range(n)]


def asic_ids(n: int) -> list[str]:
    return [f"asic-{i + 1:06d}" for i in range(n)]


def site_of(n: int, sites: int) -> np.ndarray:
    """Site index of each of ``n`` devices: round robin, so every site gets a fair share."""
    return (np.arange(n, dtype=np.int64) % sites).astype(np.int16)


def partitions_for(keys: list[bytes], partitions: int) -> list[int]:
    """The partition of each key: ``crc32(key) % partitions``."""
    crc = zlib.crc32
    return [crc(k) % partitions for k in keys]


def static_frame(
    id_column: str, ids: list[str], site_index: np.ndarray, sites: list[str], model: str
) -> pl.DataFrame:
    """A fleet's columns that never change: id, site, model (SPEC field order)."""
    return pl.DataFrame(
        {
            id_column: ids,
            "site": pl.Series([sites[i] for i in site_index]),
            "model": [model] * len(ids),
        }
    )
