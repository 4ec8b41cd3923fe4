"""Raw Redis protocol (RESP): pipelined payloads sent and acknowledged in bulk.

redis-py packs each command and parses each reply in Python, a few microseconds apiece;
a 310,000-device window needs 620,000 commands. Here payloads of complete commands (from
the Numba packer, or polars string expressions for the rarer paths) are written with the
connection's ``send_packed_command``, and the replies are counted in C (``bytes.count``)
rather than parsed one by one. Replies are parsed individually only when an error reply
is present, to report it.
"""

from __future__ import annotations

import queue
import socket
import threading
from types import TracebackType

import numpy as np
import polars as pl
import redis

# Raw RESP bytes: bytes, or a uint8 array from the Numba packer (sent without a copy).
Payload = bytes | np.ndarray

__all__ = ["Payload", "RawPipeline", "bulk", "const_bulk", "header"]


def const_bulk(text: str) -> str:
    """One RESP bulk string for a constant."""
    return f"${len(text.encode())}\r\n{text}\r\n"


def header(n_args: int, *constant_args: str) -> str:
    """The array header of a command with ``n_args`` arguments and its constant first ones."""
    return f"*{n_args}\r\n" + "".join(const_bulk(a) for a in constant_args)


def bulk(expr: pl.Expr) -> pl.Expr:
    """RESP bulk strings for a non-null string expression, one per row."""
    return pl.concat_str(
        [pl.lit("$"), expr.str.len_bytes().cast(pl.String), pl.lit("\r\n"), expr, pl.lit("\r\n")]
    )


class RawPipeline:
    """One pooled connection for raw pipelined payloads, written by a background thread.

    ``with`` it, ``submit`` payloads of complete commands, then ``drain`` for the error
    replies. A sender thread keeps two payloads in flight, so Redis executes one while
    the caller builds the next (polars and socket writes both release the GIL).
    """

    def __init__(self, client: redis.Redis, depth: int = 2) -> None:
        self._client = client
        self._conn: redis.connection.AbstractConnection | None = None
        self._leftover = bytearray()
        self._queue: queue.Queue[tuple[Payload, int, int] | None] = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._errors: list[str] = []

    def __enter__(self) -> RawPipeline:
        conn = self._client.connection_pool.get_connection()
        try:
            conn.connect()
        except BaseException:
            conn.disconnect()
            self._client.connection_pool.release(conn)
            raise
        self._conn = conn
        self._thread = threading.Thread(target=self._run, name="redis-raw-pipeline", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
        conn, self._conn = self._conn, None
        self._leftover = bytearray()
        if conn is None:
            return
        if exc_type is not None or self._failure is not None:
            # Unread replies may be left on the socket: it cannot be reused.
            conn.disconnect()
        self._client.connection_pool.release(conn)

    def submit(self, payload: Payload, n_replies: int, n_lines: int) -> None:
        """Queue a payload whose replies are ``n_replies`` replies over ``n_lines`` lines."""
        if self._failure is not None:
            raise self._failure
        self._queue.put((payload, n_replies, n_lines))

    def drain(self) -> list[str]:
        """Wait for every submitted payload's replies; returns the error replies."""
        self._stop()
        if self._failure is not None:
            raise self._failure
        errors, self._errors = self._errors, []
        return errors

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        in_flight: tuple[int, int] | None = None
        while True:
            job = self._queue.get()
            if self._failure is not None:
                if job is None:
                    return
                continue  # keep draining so submit() never blocks on a dead thread
            try:
                if job is None:
                    if in_flight is not None:
                        self._errors += self.read(*in_flight)
                    return
                payload, n_replies, n_lines = job
                self.send(payload)
                if in_flight is not None:
                    self._errors += self.read(*in_flight)
                in_flight = (n_replies, n_lines)
            except BaseException as exc:
                self._failure = exc
                if job is None:
                    return

    def send(self, payload: Payload) -> None:
        """Write a payload of complete commands."""
        assert self._conn is not None, "use RawPipeline in a with block"
        self._conn.send_packed_command([payload], check_health=False)

    def read(self, n_replies: int, n_lines: int) -> list[str]:
        """Consume ``n_replies`` replies that, without errors, span ``n_lines`` CRLF lines.

        Status and integer replies are one line, non-null bulk strings two. Returns the
        error messages among the replies (empty when all succeeded). Never reads past
        these replies (every line is at least 2 bytes), so the next payload's replies stay
        on the socket for the next ``read``.
        """
        if n_replies == 0:
            return []
        assert self._conn is not None, "use RawPipeline in a with block"
        sock = self._conn._get_socket()  # redis-py keeps its socket private; no public API
        buf, self._leftover = self._leftover, bytearray()
        lines = buf.count(b"\r\n")
        if b"\r\n-" in buf or buf[:1] == b"-":
            return self._parse_with_errors(sock, buf, n_replies)
        while True:
            if lines == n_lines:
                return []
            if lines > n_lines:
                self._conn.disconnect()
                msg = f"Redis sent {lines} reply lines, expected {n_lines}: protocol out of step"
                raise redis.ConnectionError(msg)
            tail = bytes(buf[-2:])
            chunk = self._recv(sock, (n_lines - lines - 1) * 2 + 1)
            joined = tail + chunk
            lines += joined.count(b"\r\n") - tail.count(b"\r\n")
            buf += chunk
            if b"\r\n-" in joined or buf[:1] == b"-":
                return self._parse_with_errors(sock, buf, n_replies)

    def _recv(self, sock: socket.socket, at_most: int) -> bytes:
        try:
            chunk = sock.recv(max(1, min(at_most, 1 << 20)))
        except TimeoutError as exc:
            self._conn.disconnect()  # type: ignore[union-attr]
            msg = "timeout reading Redis replies"
            raise redis.TimeoutError(msg) from exc
        except OSError as exc:
            self._conn.disconnect()  # type: ignore[union-attr]
            msg = f"error reading Redis replies: {exc}"
            raise redis.ConnectionError(msg) from exc
        if not chunk:
            self._conn.disconnect()  # type: ignore[union-attr]
            msg = "Redis closed the connection"
            raise redis.ConnectionError(msg)
        return chunk

    def _parse_with_errors(self, sock: socket.socket, buf: bytearray, n_replies: int) -> list[str]:
        """Walk the replies one by one (slow, only when some are errors)."""
        errors: list[str] = []
        pos = 0
        done = 0
        while done < n_replies:
            end = buf.find(b"\r\n", pos)
            while end < 0:
                buf += self._recv(sock, (n_replies - done - 1) * 2 + 1)
                end = buf.find(b"\r\n", pos)
            kind = buf[pos : pos + 1]
            if kind == b"$":
                size = int(buf[pos + 1 : end])
                stop = end + 2 + size + 2 if size >= 0 else end + 2
                while len(buf) < stop:
                    buf += self._recv(sock, stop - len(buf) + (n_replies - done - 1) * 2)
                pos = stop
            else:
                if kind == b"-":
                    errors.append(buf[pos + 1 : end].decode(errors="replace"))
                elif kind not in (b":", b"+"):
                    self._conn.disconnect()  # type: ignore[union-attr]
                    msg = f"unexpected Redis reply type {kind!r} in a raw pipeline"
                    raise redis.ConnectionError(msg)
                pos = end + 2
            done += 1
        # Error replies are shorter than the replies they stand for, so the bounded reads
        # above may have taken the start of the next payload's replies: keep it.
        self._leftover = buf[pos:]
        return errors
