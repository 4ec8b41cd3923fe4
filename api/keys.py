"""API keys: made here, stored hashed in PostgreSQL (``api_keys``), checked by :mod:`api.auth`.

A key reads ``hcp_<key_id>_<secret>``: ``key_id`` (8 hex characters) names it in
``hcp api keys list`` and ``revoke`` and in logs; the secret is 32 random bytes. Only the
SHA-256 of the whole key is stored, so a copy of the table lets nobody in. The key itself
is shown once, when it is made.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg

from hcp.errors import ConfigError

__all__ = [
    "ROLES",
    "KeyRecord",
    "create_key",
    "hash_key",
    "key_id_of",
    "list_keys",
    "revoke_key",
]

ROLES = ("admin", "customer")


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    role: str
    customer: str | None
    created_at: datetime
    revoked_at: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key, else None (safe to log: not the secret)."""
    parts = key.split("_")
    if len(parts) == 3 and parts[0] == "hcp" and len(parts[1]) == 8:
        return parts[1]
    return None


def create_key(conn: psycopg.Connection, role: str, customer: str | None) -> tuple[str, str]:
    """Store a new key; return ``(key_id, key)``. A customer key needs its customer."""
    if role not in ROLES:
        msg = f"--role must be one of {', '.join(ROLES)}, got {role!r}"
        raise ConfigError(msg)
    if role == "customer" and not customer:
        msg = "a customer key needs --customer ID"
        raise ConfigError(msg)
    key_id = secrets.token_hex(4)
    key = f"hcp_{key_id}_{secrets.token_urlsafe(32).replace('_', '-')}"
    conn.execute(
        "INSERT INTO api_keys (key_id, key_hash, role, customer) VALUES (%s, %s, %s, %s)",
        (key_id, hash_key(key), role, customer if role == "customer" else None),
    )
    return key_id, key


def list_keys(conn: psycopg.Connection) -> list[KeyRecord]:
    rows = conn.execute(
        "SELECT key_id, role, customer, created_at, revoked_at FROM api_keys "
        "ORDER BY created_at, key_id"
    ).fetchall()
    return [KeyRecord(*row) for row in rows]


def revoke_key(conn: psycopg.Connection, key_id: str) -> bool:
    """Revoke by id; False when no such (unrevoked) key exists."""
    cur = conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL",
        (key_id,),
    )
    return cur.rowcount == 1
