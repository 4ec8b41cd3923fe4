"""The point read's fast path: ``GET /api/v1/resources/{id}`` answered below FastAPI.

Point reads are the API's busiest request, and once the answer is bytes in the read
model, FastAPI's routing, dependency injection and validation cost several times more
than the lookup itself. This ASGI middleware answers the common case directly: a GET of
a device the read model has, with an admin key that is in the key cache and within its
rate limit, and a read model that is fresh enough. Everything else (no or unknown key, a
customer key, an empty rate bucket, an unknown device, a stale or loading read model,
anything odd in the path) goes on to the routed handler, which has the same semantics and
gives the 401/403/404/429/503 answers, so the two cannot disagree on who may read what.
The request is counted in the same metrics.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

from api.metrics import ApiMetrics

__all__ = ["PointReads"]

PREFIX = "/api/v1/resources/"
ROUTE = "/api/v1/resources/{device_id}"
_N = len(PREFIX)


class PointReads:
    """Outermost middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self._count = metrics.requests.labels("GET", ROUTE, "200")
        self._latency = metrics.latency.labels("GET", ROUTE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            if path.startswith(PREFIX) and 0 < len(path) - _N <= 256 and "/" not in path[_N:]:
                started = time.perf_counter()
                body = self._lookup(scope, path[_N:])
                if body is not None:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    self._count.inc()
                    self._latency.observe(time.perf_counter() - started)
                    return
        await self.app(scope, receive, send)

    def _lookup(self, scope: Scope, device_id: str) -> bytes | None:
        services = getattr(scope["app"].state, "services", None)
        if services is None:
            return None
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if value[:7].lower() == b"bearer ":
                    token = value[7:].decode("latin-1").strip()
                break
        if not token:
            return None
        principal = services.keys.peek(token)
        if principal is None or not principal.is_admin:
            return None
        # An empty bucket falls through: the routed handler refuses it with 429 and counts it.
        if not services.limiter.take(principal.key_id):
            return None
        rm = services.read_model
        if (
            services.settings.no_read_model
            or not rm.ready
            or rm.staleness_s > services.settings.max_staleness_s
        ):
            return None
        rec = rm.recs.get(device_id)
        return rec.body if rec is not None else None
