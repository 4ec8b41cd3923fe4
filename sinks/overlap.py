"""Run the writes of several sinks for one batch at the same time.

Bytewax runs a worker's output steps one after the other, so the Redis and the
PostgreSQL writes of a closed window would add up. :class:`OverlappedSinks` is one output
step whose partition hands each batch to every child sink's partition at once (the
first in the worker's own thread, the others in threads of their own) and returns only
when all of them have: delivery and backpressure are those of the slowest child, as if
they ran in turn, but the wall time is the longest write, not the sum. The children's
writes spend their time in network waits, Numba and polars, which release the GIL.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

__all__ = ["OverlappedSinks"]


class OverlappedSinks(DynamicSink[Any]):
    """Every item to every child sink; each batch written by all children concurrently."""

    def __init__(self, sinks: Sequence[DynamicSink[Any]]) -> None:
        if not sinks:
            msg = "OverlappedSinks needs at least one sink"
            raise ValueError(msg)
        self._sinks = list(sinks)

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Any]:
        parts = [
            sink.build(f"{step_id}.{i}", worker_index, worker_count)
            for i, sink in enumerate(self._sinks)
        ]
        return _OverlappedPartition(parts)


class _OverlappedPartition(StatelessSinkPartition[Any]):
    def __init__(self, parts: list[StatelessSinkPartition[Any]]) -> None:
        self._parts = parts
        self._pool = (
            ThreadPoolExecutor(len(parts) - 1, thread_name_prefix="hcp-sink")
            if len(parts) > 1
            else None
        )

    def write_batch(self, items: list[Any]) -> None:
        futures = [self._pool.submit(p.write_batch, items) for p in self._parts[1:]]  # type: ignore[union-attr]
        error: BaseException | None = None
        try:
            self._parts[0].write_batch(items)
        except BaseException as exc:  # re-raised once every other write has finished
            error = exc
        for future in futures:
            try:
                future.result()
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error

    def close(self) -> None:
        try:
            for part in self._parts:
                part.close()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
