"""Helpers the route modules share: JSON bytes responses, cursors, times, list filters."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.responses import Response

from api.auth import require_role
from api.models import Problem as ProblemModel
from api.problems import PROBLEM_TYPE, ProblemError

__all__ = [
    "CONFLICT",
    "ERRORS",
    "NOT_FOUND",
    "admin",
    "anyone",
    "csv_set",
    "decode_cursor",
    "encode_cursor",
    "json_bytes",
    "ms",
]


def _problem(description: str) -> dict[str, Any]:
    return {"model": ProblemModel, "description": description, "content": {PROBLEM_TYPE: {}}}


# What every authenticated route may answer besides its success, for the OpenAPI document.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _problem("the body could not be parsed (not JSON, not UTF-8)"),
    401: _problem("no or an unknown API key"),
    403: _problem("the key's role may not use this endpoint"),
    422: _problem("invalid parameters or body; `errors` lists every bad field"),
    429: _problem("the key's rate limit is reached; `Retry-After` says when to retry"),
    503: _problem("a dependency (Redis, PostgreSQL, broker) is unreachable"),
}
# The two roles of contract section 6, as route dependencies.
admin = require_role("admin")
anyone = require_role("admin", "customer")

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _problem("no such id")}
CONFLICT: dict[int | str, dict[str, Any]] = {409: _problem("conflicts with the current state")}


def json_bytes(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def json_doc(doc: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


def encode_cursor(last: str | None) -> str | None:
    return base64.urlsafe_b64encode(last.encode()).decode().rstrip("=") if last else None


def decode_cursor(cursor: str | None) -> str | None:
    """The id a cursor points after; a 422 naming the parameter when it is not ours."""
    if not cursor:
        return None
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        return raw.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ProblemError(
            422,
            "invalid cursor: pass back a next_cursor value",
            errors=[{"loc": ["query", "cursor"], "msg": "not a cursor", "type": "value_error"}],
        ) from None


def csv_set(value: str | None) -> set[str] | None:
    """``a,b`` -> ``{"a", "b"}``; None when absent or empty."""
    if not value:
        return None
    items = {v.strip() for v in value.split(",") if v.strip()}
    return items or None


def ms(value: datetime | None) -> datetime | None:
    """A query time as an aware UTC datetime (naive ones are UTC)."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)
