"""A small pool of async PostgreSQL connections that survives the server going away.

psycopg's own pool is a separate package; the API needs only this: up to ``size``
connections opened on demand, a broken one dropped instead of returned, and every failure
surfaced as one 503 line that names the server without its password.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg

from api.problems import ProblemError, unavailable
from sinks.postgres.schema import redact_dsn

__all__ = ["PgPool"]


class PgPool:
    """Async connections to one DSN, autocommit, ``timeout_s`` for connecting."""

    def __init__(self, dsn: str, size: int = 4, timeout_s: float = 2.0) -> None:
        self.dsn = dsn
        self.timeout_s = timeout_s
        self._idle: list[psycopg.AsyncConnection] = []
        self._slots = asyncio.Semaphore(size)

    @property
    def where(self) -> str:
        return redact_dsn(self.dsn)

    async def _open(self) -> psycopg.AsyncConnection:
        return await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, round(self.timeout_s))
            ),
            self.timeout_s + 1,
        )

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A connection for one unit of work; a 503 ProblemError when PostgreSQL is unreachable."""
        async with self._slots:
            conn = None
            while self._idle and conn is None:
                candidate = self._idle.pop()
                if candidate.closed or candidate.broken:
                    continue
                conn = candidate
            try:
                if conn is None:
                    conn = await self._open()
                yield conn
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError) as e:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
                conn = None
                raise unavailable("postgresql", _reason(e, self.where)) from None
            except ProblemError:
                raise
            except BaseException:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
                conn = None
                raise
            finally:
                if conn is not None and not conn.closed and not conn.broken:
                    self._idle.append(conn)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()


def _reason(exc: BaseException, where: str) -> str:
    if isinstance(exc, TimeoutError):
        return f"{where} did not answer in time"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # psycopg names host and port, never the password; keep it to the first line.
    return f"{where}: {first[:200]}"
