"""The audit trail: every API write and every fleet command, once, in ``audit_log``.

``audit_log`` (migration 0007) is append-only: a trigger refuses UPDATE, DELETE and
TRUNCATE. A row says who (``actor``: ``key:<id>``, ``cli:<user>`` or ``job``), when, what
(``action`` and ``target``), the request id and a JSON ``detail``. ``(action, request_id,
target)`` is unique and writes use ``ON CONFLICT DO NOTHING``, so a retried request or a
replayed command is recorded once.
"""

from __future__ import annotations

import getpass
import uuid
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

__all__ = ["AUDIT_COLUMNS", "cli_actor", "list_audit", "record", "record_async"]

AUDIT_COLUMNS = ("id", "at", "actor", "action", "target", "request_id", "detail")
_INSERT = (
    "INSERT INTO audit_log (actor, action, target, request_id, detail) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (action, request_id, target) DO NOTHING"
)


def cli_actor() -> str:
    """Who runs an ``hcp`` write command: ``cli:<OS user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def record(conn: psycopg.Connection, actor: str, action: str, target: str = "",
           detail: dict[str, Any] | None = None, request_id: str | None = None) -> None:
    """Append one row (a CLI write has no request: it gets a fresh id)."""
    conn.execute(_INSERT, (actor, action, target, request_id or uuid.uuid4().hex,
                           Jsonb(detail or {})))


async def record_async(conn: psycopg.AsyncConnection, actor: str, action: str, target: str,
                       detail: dict[str, Any], request_id: str) -> None:
    await conn.execute(_INSERT, (actor, action, target, request_id, Jsonb(detail)))


def list_audit(conn: psycopg.Connection, since: datetime | None = None,
               actor: str | None = None, action: str | None = None,
               limit: int = 100) -> list[tuple]:
    """Rows oldest first, filtered (the ``hcp audit`` query)."""
    where, args = [], []
    if since is not None:
        where.append("at >= %s")
        args.append(since)
    if actor:
        where.append("actor = %s")
        args.append(actor)
    if action:
        where.append("action = %s")
        args.append(action)
    sql = "SELECT id, at, actor, action, target, request_id, detail FROM audit_log"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT %s"
    args.append(limit)
    return list(reversed(conn.execute(sql, args).fetchall()))
