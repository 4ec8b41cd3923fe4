"""Numba packer of Redis commands: one RESP command per row, straight into one buffer.

A command is a template of segments: constant bytes, a bulk string made of a constant
prefix and one string column (``$<len>\\r\\n<prefix><value>\\r\\n``), a ``name value``
pair that a per-row mask can leave out, and an array header that counts the pairs kept.
The kernel sizes every row, then copies constants and column bytes into a reused
``uint8`` buffer: no per-row Python objects, no intermediate strings. Values are turned
into text beforehand by polars (its float text is the shortest that round-trips).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import polars as pl
import pyarrow as pa

__all__ = ["BufferRing", "Bulk", "Const", "Header", "Pair", "pack_rows"]


@dataclass(frozen=True)
class Const:
    """Constant bytes (already RESP, e.g. an array header or a field name's bulk)."""

    text: str


@dataclass(frozen=True)
class Bulk:
    """A bulk string of ``prefix`` followed by the row's value of ``column``."""

    column: str
    prefix: str = ""


@dataclass(frozen=True)
class Pair:
    """A field ``name`` and the row's value of ``column``, left out where ``skip`` says."""

    name: str
    column: str


@dataclass(frozen=True)
class Header:
    """An array header: ``fixed`` arguments plus two per kept :class:`Pair` of the row."""

    fixed: int


Segment = Const | Bulk | Pair | Header
_CONST, _BULK, _PAIR, _HEADER = 0, 1, 2, 3


class BufferRing:
    """Output buffers reused in turn: fresh memory costs a page fault per 4 KB, which
    for hundreds of MB a window is slower than packing itself.

    ``size`` must exceed the number of payloads that can still be referenced (queued or
    being sent) while the next one is packed.
    """

    def __init__(self, size: int = 4) -> None:
        self._buffers: list[np.ndarray] = [np.zeros(0, np.uint8) for _ in range(size)]
        self._next = 0

    def get(self, nbytes: int) -> np.ndarray:
        i = self._next
        self._next = (i + 1) % len(self._buffers)
        if self._buffers[i].shape[0] < nbytes:
            self._buffers[i] = np.empty(int(nbytes * 1.25), dtype=np.uint8)
        return self._buffers[i]


def pack_rows(
    text: pl.DataFrame,
    templates: list[list[Segment]],
    choice: np.ndarray | None = None,
    ring: BufferRing | None = None,
    skip: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Pack row ``i`` with ``templates[choice[i]]`` (template 0 when no choice), in order.

    ``text`` holds the columns the templates name, as non-null strings. ``skip`` maps a
    column to a boolean per row: where true, that column's :class:`Pair` is left out. The
    result is a view of a ``ring`` buffer when one is given, valid until the ring comes
    round again.
    """
    columns = sorted({s.column for t in templates for s in t if isinstance(s, Bulk | Pair)})
    n_rows = text.height
    vals, starts, lens = _column_bytes(text, columns)
    skips = np.zeros((len(columns), n_rows), dtype=np.bool_)
    for name, mask in (skip or {}).items():
        if name in columns:
            skips[columns.index(name)] = mask
    consts = bytearray()
    kinds: list[int] = []
    args: list[tuple[int, int, int]] = []
    bounds: list[tuple[int, int]] = []
    for template in templates:
        first = len(kinds)
        for seg in template:
            start = len(consts)
            if isinstance(seg, Const):
                raw = seg.text.encode()
                kinds.append(_CONST)
                args.append((start, len(raw), 0))
            elif isinstance(seg, Bulk):
                raw = seg.prefix.encode()
                kinds.append(_BULK)
                args.append((start, len(raw), columns.index(seg.column)))
            elif isinstance(seg, Pair):
                name = seg.name.encode()
                raw = b"$%d\r\n%s\r\n" % (len(name), name)
                kinds.append(_PAIR)
                args.append((start, len(raw), columns.index(seg.column)))
            else:
                raw = b""
                kinds.append(_HEADER)
                args.append((seg.fixed, 0, 0))
            consts += raw
        bounds.append((first, len(kinds)))
    if choice is None:
        choice = np.zeros(n_rows, dtype=np.int64)
    choice = choice.astype(np.int64, copy=False)
    const_arr = np.frombuffer(bytes(consts), dtype=np.uint8) if consts else np.zeros(0, np.uint8)
    kind_arr = np.asarray(kinds, dtype=np.int64)
    arg_arr = np.asarray(args, dtype=np.int64).reshape(-1, 3)
    bound_arr = np.asarray(bounds, dtype=np.int64).reshape(-1, 2)
    offsets = _sizes(lens, skips, kind_arr, arg_arr, bound_arr, choice)
    total = int(offsets[-1])
    out = ring.get(total) if ring is not None else np.empty(total, dtype=np.uint8)
    _write(vals, starts, lens, skips, const_arr, kind_arr, arg_arr, bound_arr, choice,
           offsets, out)
    return out[:total]


def _column_bytes(
    text: pl.DataFrame, columns: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All named columns' UTF-8 bytes in one buffer, with per (column, row) start/length."""
    buffers: list[np.ndarray] = []
    starts = np.empty((len(columns), text.height), dtype=np.int64)
    lens = np.empty((len(columns), text.height), dtype=np.int64)
    base = 0
    for i, name in enumerate(columns):
        arr = text.get_column(name).rechunk().to_arrow()
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if arr.type != pa.large_string():
            arr = arr.cast(pa.large_string())
        _, offsets_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
        data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
                else np.zeros(0, np.uint8))
        lo, hi = int(offsets[0]), int(offsets[-1])
        buffers.append(data[lo:hi])
        starts[i] = offsets[:-1] - lo + base
        lens[i] = np.diff(offsets)
        base += hi - lo
    vals = np.concatenate(buffers) if buffers else np.zeros(0, np.uint8)
    return vals, starts, lens


@numba.njit(cache=True, inline="always")
def _digits(x: int) -> int:
    n = 1
    while x >= 10:
        x //= 10
        n += 1
    return n


@numba.njit(cache=True, inline="always")
def _copy(dst, p, src, s0, n):
    # A plain loop: LLVM turns it into a memcpy, without a slice's per-call overhead.
    for i in range(n):
        dst[p + i] = src[s0 + i]


@numba.njit(cache=True, inline="always")
def _header_count(skips, kinds, args, lo, hi, fixed, r):
    n = fixed
    for k in range(lo, hi):
        if kinds[k] == 2 and not skips[args[k, 2], r]:
            n += 2
    return n


@numba.njit(cache=True, nogil=True)
def _sizes(lens, skips, kinds, args, bounds, choice):
    """Start offset of every row's bytes, plus the total at the end."""
    n_rows = choice.shape[0]
    offsets = np.empty(n_rows + 1, dtype=np.int64)
    offsets[0] = 0
    for r in range(n_rows):
        t = choice[r]
        lo = bounds[t, 0]
        hi = bounds[t, 1]
        size = 0
        for k in range(lo, hi):
            kind = kinds[k]
            if kind == 0:
                size += args[k, 1]
            elif kind == 1:
                body = args[k, 1] + lens[args[k, 2], r]
                size += 1 + _digits(body) + 2 + body + 2
            elif kind == 2:
                col = args[k, 2]
                if not skips[col, r]:
                    size += args[k, 1] + 1 + _digits(lens[col, r]) + 2 + lens[col, r] + 2
            else:
                size += 1 + _digits(_header_count(skips, kinds, args, lo, hi, args[k, 0], r)) + 2
        offsets[r + 1] = offsets[r] + size
    return offsets


@numba.njit(cache=True, inline="always")
def _number(out, p, x):
    """Write ``x`` in decimal at ``p``; returns the position after it."""
    nd = _digits(x)
    for d in range(nd - 1, -1, -1):
        out[p + d] = 48 + x % 10
        x //= 10
    return p + nd


@numba.njit(cache=True, nogil=True)
def _write(vals, starts, lens, skips, consts, kinds, args, bounds, choice, offsets, out):
    for r in range(choice.shape[0]):
        t = choice[r]
        lo = bounds[t, 0]
        hi = bounds[t, 1]
        p = offsets[r]
        for k in range(lo, hi):
            kind = kinds[k]
            c0 = args[k, 0]
            cn = args[k, 1]
            if kind == 0:
                _copy(out, p, consts, c0, cn)
                p += cn
            elif kind == 3:
                out[p] = 42  # '*'
                p = _number(out, p + 1, _header_count(skips, kinds, args, lo, hi, c0, r))
                out[p] = 13
                out[p + 1] = 10
                p += 2
            else:
                col = args[k, 2]
                vn = lens[col, r]
                if kind == 2:
                    if skips[col, r]:
                        continue
                    _copy(out, p, consts, c0, cn)  # the field name's bulk
                    p += cn
                    body = vn
                else:
                    body = cn + vn
                out[p] = 36  # '$'
                p = _number(out, p + 1, body)
                out[p] = 13
                out[p + 1] = 10
                p += 2
                if kind == 1:
                    _copy(out, p, consts, c0, cn)  # the bulk's constant prefix
                    p += cn
                _copy(out, p, vals, starts[col, r], vn)
                p += vn
                out[p] = 13
                out[p + 1] = 10
                p += 2
