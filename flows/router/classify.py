"""Classification of workload requests that do not say their ``kind``.

The rule, applied in this order (thresholds are module constants):

1. ``inference``: one GPU and a short run (``est_duration_s <= 600``) with a footprint that
   fits a serving replica (``mem_gb <= 80``). Serving requests are small, short and
   latency-bound.
2. ``training``: several GPUs (``gpus >= 2``), or a long run (``est_duration_s >= 4 h``),
   or a large footprint (``mem_gb > 80``, more than one H100's memory worth of state).
3. ``batch``: everything else (single-GPU offline work between ten minutes and four hours).

A request that carries a ``kind`` keeps it. Classification is pure and vectorised, so the
same input always gives the same kinds.
"""

from __future__ import annotations

import polars as pl

__all__ = [
    "INFERENCE_MAX_DURATION_S",
    "INFERENCE_MAX_MEM_GB",
    "TRAINING_MIN_DURATION_S",
    "classify",
    "classify_expr",
    "classify_one",
]

INFERENCE_MAX_DURATION_S = 600
INFERENCE_MAX_MEM_GB = 80.0
TRAINING_MIN_DURATION_S = 4 * 3600


def classify_one(gpus: int, est_duration_s: int, mem_gb: float) -> str:
    """The kind of one request without a ``kind`` (the rule of the module docstring)."""
    if gpus == 1 and est_duration_s <= INFERENCE_MAX_DURATION_S and mem_gb <= INFERENCE_MAX_MEM_GB:
        return "inference"
    if gpus >= 2 or est_duration_s >= TRAINING_MIN_DURATION_S or mem_gb > INFERENCE_MAX_MEM_GB:
        return "training"
    return "batch"


def classify_expr() -> pl.Expr:
    """A polars expression giving each row's kind: its own, else the rule's."""
    gpus, dur, mem = pl.col("gpus"), pl.col("est_duration_s"), pl.col("mem_gb")
    ruled = (
        pl.when((gpus == 1) & (dur <= INFERENCE_MAX_DURATION_S) & (mem <= INFERENCE_MAX_MEM_GB))
        .then(pl.lit("inference"))
        .when((gpus >= 2) | (dur >= TRAINING_MIN_DURATION_S) | (mem > INFERENCE_MAX_MEM_GB))
        .then(pl.lit("training"))
        .otherwise(pl.lit("batch"))
    )
    return pl.coalesce(pl.col("kind"), ruled).alias("kind")


def classify(requests: pl.DataFrame) -> pl.DataFrame:
    """``requests`` with ``kind`` filled in where it was null or missing."""
    if "kind" not in requests.columns:
        requests = requests.with_columns(pl.lit(None, dtype=pl.String).alias("kind"))
    return requests.with_columns(classify_expr())
