"""Site-level history and live site summaries (contract section 7: extensions of section 6).

The per-device recommendation stream is the wrong size for a dashboard: a 310,000-device
fleet writes 310,000 entries a window. These two endpoints answer at the size of the
number of sites instead:

- ``GET /api/v1/sites/history``: per window, per site, the summed revenue, cost and net
  (USD/h) and device counts per action, from PostgreSQL; by default the three hours of
  event time before the latest window.
- ``GET /api/v1/gpus/cordoned``: the GPUs the router has cordoned now (reason, since,
  site), from its ``gpu:cordoned`` Redis hash (docs/workloads.md).
- ``GET /api/v1/stream/sites`` (in :mod:`api.routes.stream`, with the other streams): one
  ``sites`` event with the ``/api/v1/sites`` document whenever it changes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError
from starlette.responses import Response

from api.auth import Principal
from api.problems import ProblemError
from api.read_model import _text
from api.routes.common import ERRORS, admin, json_doc, to_ms
from api.routes.optimizer import ensure_model
from api.services import Services

__all__ = ["gpus_router", "history_router"]

history_router = APIRouter(prefix="/api/v1/sites", tags=["orchestrator"], responses=ERRORS)
gpus_router = APIRouter(prefix="/api/v1/gpus", tags=["orchestrator"], responses=ERRORS)
DEFAULT_SPAN_MS = 3 * 3600 * 1000
MAX_SPAN_MS = 7 * 86400 * 1000

_HISTORY = """
SELECT window_end, site,
       sum(revenue_usd_hr), sum(cost_usd_hr), sum(net_usd_hr), count(*),
       count(*) FILTER (WHERE action = 'mine'), count(*) FILTER (WHERE action = 'curtail'),
       count(*) FILTER (WHERE action = 'serve'), count(*) FILTER (WHERE action = 'offer'),
       count(*) FILTER (WHERE action = 'power_down')
FROM recommendations
WHERE window_end > %s AND window_end <= %s
GROUP BY window_end, site
ORDER BY window_end, site
"""
_COLS = ("window_end", "site", "revenue_usd_hr", "cost_usd_hr", "net_usd_hr", "devices",
         "n_mine", "n_curtail", "n_serve", "n_offer", "n_power_down")


class SiteWindow(BaseModel):
    model_config = ConfigDict(extra="allow")
    window_end: int
    site: str
    revenue_usd_hr: float | None
    cost_usd_hr: float | None
    net_usd_hr: float | None
    devices: int


class SiteHistory(BaseModel):
    since: int
    until: int
    windows: list[SiteWindow]


@history_router.get("/history", response_model=SiteHistory)
async def site_history(
    request: Request,
    _: Annotated[Principal, Depends(admin)],
    since: datetime | None = None,
    until: datetime | None = None,
) -> Response:
    """Per window and site: money and action counts, oldest first (at most 7 days)."""
    services: Services = request.app.state.services
    if until is None:
        fleet = (await ensure_model(services)).fleet or {}
        end = fleet.get("window_end")
        if end is None:
            return json_doc({"since": 0, "until": 0, "windows": []})
        until_ms = int(end)
    else:
        until_ms = to_ms(until)
    since_ms = to_ms(since) if since is not None else until_ms - DEFAULT_SPAN_MS
    if not 0 <= until_ms - since_ms <= MAX_SPAN_MS:
        raise ProblemError(
            422, "since must be before until and at most 7 days earlier",
            errors=[{"loc": ["query", "since"], "msg": "out of range", "type": "value_error"}],
        )
    async with services.pg.connection() as conn:
        cur = await conn.execute(_HISTORY, (ms_dt(since_ms), ms_dt(until_ms)))
        rows = await cur.fetchall()
    windows = []
    for row in rows:
        doc: dict[str, Any] = dict(zip(_COLS, row, strict=True))
        doc["window_end"] = to_ms(doc["window_end"])
        windows.append(doc)
    return json_doc({"since": since_ms, "until": until_ms, "windows": windows})


def ms_dt(value: int) -> datetime:
    """Epoch milliseconds as the aware datetime the history tables hold."""
    return datetime.fromtimestamp(value / 1000, tz=UTC)


class CordonedGpu(BaseModel):
    gpu_id: str
    site: str | None
    reason: str | None
    since: int | None


class CordonedGpus(BaseModel):
    items: list[CordonedGpu]


@gpus_router.get("/cordoned", response_model=CordonedGpus)
async def cordoned_gpus(request: Request, _: Annotated[Principal, Depends(admin)]) -> Response:
    """GPUs the router keeps from work because they did not start what it assigned."""
    services: Services = request.app.state.services
    key = f"{services.keys_layout.prefix}gpu:cordoned"
    try:
        raw = await services.redis.hgetall(key)
    except (RedisError, OSError) as exc:
        raise services.redis_down(exc) from None
    items = []
    for gpu, value in sorted(raw.items()):
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            doc = {}
        items.append({"gpu_id": _text(gpu), "site": doc.get("site"),
                      "reason": doc.get("reason"), "since": doc.get("since")})
    return json_doc({"items": items})
