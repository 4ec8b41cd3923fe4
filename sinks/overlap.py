"""Run the writes of several sinks for one batch at the same time.

Bytewax runs a worker's output steps one after the other, so the Redis and the
PostgreSQL writes of a closed window would add up. :class:`OverlappedSinks` is one output
step over named child sinks. Items on its stream are addressed, ``(name, item)``: the
dataflow sends Redis the fleet step's whole windows and PostgreSQL the site groups' rows
(issue 16's layout), and the side outputs to both. Its partition hands each child the
items addressed to it, all children at once (the first in the worker's own thread, the
others in threads of their own), and returns only when all of them have: delivery and
backpressure are those of the slowest child, as if they ran in turn, but the wall time is
the longest write, not the sum. The children's writes spend their time in network waits,
Numba and polars, which release the GIL.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

__all__ = ["OverlappedSinks"]


class OverlappedSinks(DynamicSink[tuple[str, Any]]):
    """Items ``(name, item)`` to the child sink of that name; each batch written at once."""

    def __init__(self, sinks: Mapping[str, DynamicSink[Any]]) -> None:
        if not sinks:
            msg = "OverlappedSinks needs at least one sink"
            raise ValueError(msg)
        self._sinks = dict(sinks)

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[tuple[str, Any]]:
        parts = {
            name: sink.build(f"{step_id}.{name}", worker_index, worker_count)
            for name, sink in self._sinks.items()
        }
        return _OverlappedPartition(parts)


class _OverlappedPartition(StatelessSinkPartition[tuple[str, Any]]):
    def __init__(self, parts: dict[str, StatelessSinkPartition[Any]]) -> None:
        self._parts = parts
        self._pool = (
            ThreadPoolExecutor(len(parts) - 1, thread_name_prefix="hcp-sink")
            if len(parts) > 1
            else None
        )

    def write_batch(self, items: list[tuple[str, Any]]) -> None:
        mine: dict[str, list[Any]] = {name: [] for name in self._parts}
        for name, item in items:
            mine[name].append(item)
        jobs = [(self._parts[name], batch) for name, batch in mine.items() if batch]
        if not jobs:
            return
        futures = [self._pool.submit(p.write_batch, b) for p, b in jobs[1:]]  # type: ignore[union-attr]
        error: BaseException | None = None
        try:
            jobs[0][0].write_batch(jobs[0][1])
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
            for part in self._parts.values():
                part.close()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
