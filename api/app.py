"""The app factory: ``create_app(settings) -> FastAPI`` with every v1 route.

Connections are made in the lifespan, one set per process, and kept in
``app.state.services`` (:class:`api.services.Services`). Nothing here blocks on a
dependency: the app starts and answers (503 where needed) with Redis, PostgreSQL or the
broker down, and recovers when they come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from api.console import mount_console
from api.fastpath import PointReads
from api.metrics import ApiMetrics, RouteMetrics
from api.problems import BodyLimit, install_handlers
from api.routes import customers, optimizer, orchestrator, sites, stream
from api.services import Services
from api.settings import ApiSettings
from flows.profitability.whatif import warm_up
from sinks.postgres.schema import apply_migrations, redact_dsn

__all__ = ["create_app"]

log = logging.getLogger(__name__)


async def _migrate(dsn: str) -> None:
    """Bring the schema (api_keys etc.) up to date; a warning when PostgreSQL is down."""
    try:
        await asyncio.to_thread(apply_migrations, dsn)
    except Exception as exc:  # the routes answer 503 until PostgreSQL is back
        log.warning("schema not checked at %s: %s", redact_dsn(dsn), type(exc).__name__)


def create_app(settings: ApiSettings) -> FastAPI:
    """The HCP API for ``settings``."""
    metrics_ = ApiMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _migrate(settings.pg)
        # Load (or compile) the job's Numba kernels now, not in the first calculate request,
        # where it would stall every other request on the event loop for seconds.
        await asyncio.to_thread(warm_up)
        services = Services(settings, metrics_)
        app.state.services = services
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="HCP API",
        version="1.0.0",
        description=(
            "Optimizer and orchestrator endpoints of HCP (SPEC section 6). "
            "Authenticate with `Authorization: Bearer <key>`; errors are RFC 9457 "
            "`application/problem+json`."
        ),
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    install_handlers(app)
    app.include_router(optimizer.router)
    app.include_router(orchestrator.router)
    app.include_router(customers.router)
    app.include_router(stream.router)
    app.include_router(sites.history_router)
    app.include_router(sites.gpus_router)
    mount_console(app)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        registry = request.app.state.services.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, limit=settings.body_limit)
    app.add_middleware(RouteMetrics, metrics=metrics_)
    app.add_middleware(PointReads, metrics=metrics_)  # outermost: see api/fastpath.py
    return app
