"""RFC 9457 problem details: every error the API answers is ``application/problem+json``.

Handlers turn FastAPI's validation errors (422, with the path of every bad field), HTTP
errors and anything unexpected (500, logged server-side, never a traceback to the client)
into one shape::

    {"type": "about:blank", "title": "Unprocessable Content", "status": 422,
     "detail": "2 invalid fields", "errors": [{"loc": ["body", "gpus"], "msg": "..."}]}
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "PROBLEM_TYPE",
    "BodyLimit",
    "ProblemError",
    "install_handlers",
    "problem_response",
    "unavailable",
]

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"


class ProblemError(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def unavailable(dependency: str, reason: str) -> ProblemError:
    """A 503 naming the dependency that is down, in one line."""
    return ProblemError(
        503,
        f"{dependency} unavailable: {reason}",
        headers={"Retry-After": "1"},
        dependency=dependency,
    )


def problem_response(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    body.update(extra)
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_TYPE, headers=headers
    )


def _loc(loc: Any) -> list[Any]:
    return [p for p in loc] if isinstance(loc, list | tuple) else [loc]


def install_handlers(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app``."""

    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> Response:
        return problem_response(exc.status, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"loc": _loc(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        n = len(errors)
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors[:5])
        return problem_response(
            422, f"{n} invalid field{'s' if n != 1 else ''}: {fields}", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return problem_response(exc.status_code, detail, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # The class name only: messages of driver errors can carry a DSN.
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return problem_response(500, "internal error")


class BodyLimit:
    """ASGI middleware: 413 for a body larger than ``limit`` bytes, before it is parsed.

    Checks ``Content-Length`` first and counts chunked bodies as they arrive, so a large
    body is never buffered whole.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLargeError
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted, tracking_send)
        except _BodyTooLargeError:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        resp = problem_response(413, f"request body larger than {self.limit} bytes")
        await resp({"type": "http"}, _no_receive, send)


class _BodyTooLargeError(BaseException):  # not Exception: FastAPI turns those into 400
    pass


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
