"""Live streams (SPEC section 6): Server-Sent Events from the job's Redis streams.

Each event is one stream entry: ``id`` is the Redis stream id, ``event`` names the
stream (``recommendation`` or ``workload``), ``data`` is the entry as JSON. A client that
reconnects with ``Last-Event-ID`` (or ``?last_event_id=``) resumes right after that entry;
without one it gets entries added from now on (``0`` replays what the stream still holds).
A comment line every 15 s keeps idle connections open. If Redis goes away the stream
sends an ``error`` event, keeps the connection and resumes where it was once Redis is back.
Customer keys get only their own workloads' events.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from redis.exceptions import RedisError
from starlette.responses import StreamingResponse

from api.auth import Principal
from api.problems import ProblemError
from api.read_model import _text
from api.routes.common import ERRORS, admin, anyone
from api.routes.optimizer import ensure_model
from api.routes.orchestrator import sites_doc
from api.services import Services

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/stream", tags=["stream"], responses=ERRORS)
_ID = re.compile(r"^(\d+)(-\d+)?$")
_SSE = {200: {"description": "text/event-stream", "content": {"text/event-stream": {}}}}
KEEPALIVE_S = 15.0


def _start_id(header: str | None, query: str | None) -> str:
    value = header or query
    if value is None or value == "":
        return "$"
    if not _ID.match(value):
        raise ProblemError(
            422, "Last-Event-ID must be a stream id such as 1767225660000-0",
            errors=[{"loc": ["header", "Last-Event-ID"], "msg": "not a stream id",
                     "type": "value_error"}],
        )
    return value


async def _events(
    services: Services, key: str, event: str, start: str, request: Request,
    allowed: set[str] | None, customer: str | None,
) -> AsyncIterator[bytes]:
    last = start
    client = services.redis_streams
    if last == "$":  # resolve now, so a reconnect after an outage resumes exactly here
        try:
            info = await client.xinfo_stream(key)
            last = _text(info["last-generated-id"])
        except RedisError:
            last = "0-0"
    yield b": connected\n\n"
    quiet_since = time.monotonic()
    failing = False
    while True:  # StreamingResponse cancels this generator when the client goes away
        try:
            reply = await client.xread({key: last}, count=1000, block=1000)
            if failing:
                failing = False
                yield b'event: status\ndata: {"redis":"ok"}\n\n'
        except (RedisError, OSError) as exc:
            if not failing:
                failing = True
                msg = {"detail": f"redis unavailable: {type(exc).__name__}; retrying"}
                yield b"event: error\ndata: " + orjson.dumps(msg) + b"\n\n"
            await asyncio.sleep(1.0)
            continue
        out = []
        streams = reply.values() if isinstance(reply, dict) else [e for _, e in reply or []]
        for entries in streams:
            for entry_id, raw in entries:
                last = _text(entry_id)
                doc = {_text(k): _text(v) for k, v in raw.items()}
                if customer is not None:
                    wid = doc.get("workload_id", "")
                    if wid not in allowed and services.owners.get(wid) != customer:
                        continue
                out.append(
                    b"id: " + last.encode() + b"\nevent: " + event.encode()
                    + b"\ndata: " + orjson.dumps(doc) + b"\n\n"
                )
        if out:
            quiet_since = time.monotonic()
            yield b"".join(out)
        elif time.monotonic() - quiet_since > KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield b": keepalive\n\n"


def _sse(gen: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        gen,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _check_redis(services: Services) -> None:
    try:
        await services.redis_streams.ping()
    except (RedisError, OSError) as exc:
        raise services.redis_down(exc) from None


@router.get("/recommendations", responses=_SSE)
async def stream_recommendations(
    request: Request,
    _: Annotated[Principal, Depends(admin)],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
    from_id: Annotated[str | None, Query(alias="last_event_id", max_length=64)] = None,
) -> StreamingResponse:
    """Every new recommendation as it is written."""
    services: Services = request.app.state.services
    start = _start_id(last_event_id, from_id)
    await _check_redis(services)
    key = services.keys_layout.recs_stream
    return _sse(_events(services, key, "recommendation", start, request, None, None))


@router.get("/workloads", responses=_SSE)
async def stream_workloads(
    request: Request,
    principal: Annotated[Principal, Depends(anyone)],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
    from_id: Annotated[str | None, Query(alias="last_event_id", max_length=64)] = None,
) -> StreamingResponse:
    """Every workload state transition; a customer key sees its own workloads only."""
    services: Services = request.app.state.services
    start = _start_id(last_event_id, from_id)
    await _check_redis(services)
    key = services.keys_layout.workloads_stream
    customer = None if principal.is_admin else principal.customer
    allowed: set[str] = set()
    return _sse(_events(services, key, "workload", start, request, allowed, customer))


@router.get("/sites", responses=_SSE)
async def stream_sites(
    request: Request, _: Annotated[Principal, Depends(admin)]
) -> StreamingResponse:
    """The ``/api/v1/sites`` document as an event each time it changes (contract 7).

    Checked every second from the read model, so at most about two seconds behind Redis;
    the size of the number of sites, not of the devices' recommendation stream.
    """
    services: Services = request.app.state.services
    await ensure_model(services)
    return _sse(_sites_events(services))


async def _sites_events(services: Services) -> AsyncIterator[bytes]:
    last = b""
    sent_at = time.monotonic()
    failing = False
    yield b": connected\n\n"
    while True:  # cancelled by StreamingResponse when the client goes away
        try:
            model = services.fresh_model()
            if failing:
                failing = False
                yield b'event: status\ndata: {"redis":"ok"}\n\n'
        except ProblemError as exc:  # Redis away: say so once, keep the connection
            model = None
            if not failing:
                failing = True
                yield b"event: error\ndata: " + orjson.dumps({"detail": exc.detail}) + b"\n\n"
        if model is not None:
            body = orjson.dumps(sites_doc(model), option=orjson.OPT_SERIALIZE_NUMPY)
            if body != last:
                last, sent_at = body, time.monotonic()
                yield b"event: sites\ndata: " + body + b"\n\n"
        if time.monotonic() - sent_at > KEEPALIVE_S:
            sent_at = time.monotonic()
            yield b": keepalive\n\n"
        await asyncio.sleep(1.0)
