"""Optimizer endpoints (SPEC section 6): prices, profitability, recommendations."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from redis.exceptions import RedisError
from starlette.responses import Response

from api.auth import Principal
from api.models import (
    CalcRequest,
    CalcResponse,
    PriceHistory,
    PricesCurrent,
    Profitability,
    RecommendationPage,
)
from api.problems import ProblemError
from api.read_model import Rec, parse_rec
from api.routes.common import (
    ERRORS,
    NOT_FOUND,
    admin,
    anyone,
    csv_set,
    decode_cursor,
    encode_cursor,
    json_doc,
    ms,
    to_ms,
)
from api.services import Services
from flows.profitability.prices import DEFAULT_BLOCK_REWARD
from flows.profitability.whatif import GPU_STATE_CODES, WhatIfPrices, evaluate

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["optimizer"], responses=ERRORS)
DEVICE_ID = Path(min_length=1, max_length=256)


def _services(request: Request) -> Services:
    return request.app.state.services


@router.get("/prices/current", response_model=PricesCurrent)
async def prices_current(
    request: Request, _: Annotated[Principal, Depends(anyone)]
) -> Response:
    """Latest value and event time of every price kind and scope (from Redis)."""
    prices = await _services(request).prices()
    return json_doc({"prices": [prices[k] for k in sorted(prices)]})


@router.get("/prices/history", response_model=PriceHistory)
async def prices_history(
    request: Request,
    _: Annotated[Principal, Depends(admin)],
    kind: Annotated[str | None, Query(max_length=64)] = None,
    scope: Annotated[str | None, Query(max_length=128)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """Stored prices (PostgreSQL ``market_prices``), newest first, ``since < ts <= until``."""
    where, params = ["true"], []
    for column, value in (("kind", kind), ("scope", scope)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if since is not None:
        where.append("ts > %s")
        params.append(ms(since))
    if until is not None:
        where.append("ts <= %s")
        params.append(ms(until))
    query = (
        "SELECT ts, kind, scope, key, value FROM market_prices "
        f"WHERE {' AND '.join(where)} ORDER BY ts DESC, key LIMIT %s"
    )
    async with _services(request).pg.connection() as conn:
        cur = await conn.execute(query, (*params, limit))
        rows = await cur.fetchall()
    return json_doc(
        {
            "prices": [
                {"key": key, "kind": k, "scope": s, "value": v, "ts": to_ms(ts)}
                for ts, k, s, key, v in rows
            ]
        }
    )


@router.post("/profitability/calculate", response_model=CalcResponse)
async def calculate(
    request: Request, body: CalcRequest, _: Annotated[Principal, Depends(admin)]
) -> Response:
    """What-if: the job's profitability kernels over up to 10,000 devices.

    A price left out of ``prices`` is the current one for the device's site (electricity)
    or model (GPU spot); ``pool_fee`` defaults to the API's ``--pool-fee``.
    """
    services = _services(request)
    p = body.prices
    devices = body.devices
    needs_current = (
        p.btc_usd is None
        or p.difficulty is None
        or p.block_reward_btc is None
        or p.electricity_usd_mwh is None
        or p.gpu_spot_usd_hr is None
    )
    current = await services.prices() if needs_current else {}

    def cur(key: str) -> float:
        hit = current.get(key)
        return float(hit["value"]) if hit else np.nan

    n = len(devices)
    is_asic = np.fromiter((d.device_type == "asic" for d in devices), np.bool_, n)
    hashrate = np.fromiter(
        (d.hashrate_ths if d.hashrate_ths is not None else 0.0 for d in devices), np.float64, n
    )
    power = np.fromiter((d.power_w for d in devices), np.float64, n)
    busy = np.fromiter((d.busy_fraction for d in devices), np.float64, n)
    state = np.fromiter((GPU_STATE_CODES[d.state] for d in devices), np.int8, n)
    if p.electricity_usd_mwh is not None:
        elec = np.full(n, p.electricity_usd_mwh)
    else:
        by_site = {s: cur(f"electricity_usd_mwh:{s}") for s in {d.site for d in devices}}
        elec = np.fromiter((by_site[d.site] for d in devices), np.float64, n)
    if p.gpu_spot_usd_hr is not None:
        spot = np.full(n, p.gpu_spot_usd_hr)
    else:
        by_model = {m: cur(f"gpu_spot_usd_hr:{m}") for m in {d.model for d in devices}}
        spot = np.fromiter((by_model[d.model] for d in devices), np.float64, n)
    reward = p.block_reward_btc if p.block_reward_btc is not None else cur("block_reward_btc")
    prices = WhatIfPrices(
        btc_usd=p.btc_usd if p.btc_usd is not None else cur("btc_usd"),
        difficulty=p.difficulty if p.difficulty is not None else cur("difficulty"),
        block_reward_btc=DEFAULT_BLOCK_REWARD if np.isnan(reward) else reward,
        pool_fee=p.pool_fee if p.pool_fee is not None else services.settings.pool_fee,
    )
    started = time.perf_counter()
    res = evaluate(
        is_asic, hashrate, power, busy, state, elec, spot, prices,
        hysteresis=services.settings.hysteresis,
    )
    m = services.metrics
    m.calc_seconds.observe(time.perf_counter() - started)
    n_asic = int(is_asic.sum())
    if n_asic:
        m.calculations.labels("asic").inc(n_asic)
    if n - n_asic:
        m.calculations.labels("gpu").inc(n - n_asic)

    def num(a: np.ndarray) -> list[float | None]:
        return [None if x != x else x for x in a.tolist()]

    cols = zip(
        num(res.revenue_usd_hr), num(res.cost_usd_hr), num(res.net_usd_hr), num(res.score),
        res.action, res.reason, strict=True,
    )
    results = [
        {"revenue_usd_hr": r, "cost_usd_hr": c, "net_usd_hr": nt, "score": s,
         "action": a, "reason": why}
        for r, c, nt, s, a, why in cols
    ]
    return json_doc({"results": results})


async def lookup_rec(services: Services, device_id: str) -> Rec | None:
    """A device's rec from the read model, or from Redis when the model is off or loading."""
    rm = services.fresh_model()
    if rm is not None:
        return rm.recs.get(device_id)
    try:
        raw = await services.redis.hgetall(services.keys_layout.rec + device_id)
    except (RedisError, OSError) as exc:
        raise services.redis_down(exc) from None
    return parse_rec(raw) if raw else None


_HISTORY = """
SELECT r.window_start, r.window_end, r.action, r.reason, r.revenue_usd_hr, r.cost_usd_hr,
       r.net_usd_hr, r.score, r.expected_net_usd_hr, w.samples, w.util_pct, w.power_w,
       w.temp_c, w.hashrate_ths, w.busy_fraction, w.j_per_th, w.reject_rate
FROM recommendations r
LEFT JOIN device_windows w ON w.device_id = r.device_id AND w.window_start = r.window_start
WHERE {where}
ORDER BY r.window_end DESC
LIMIT %s
"""
_HISTORY_COLS = (
    "window_start", "window_end", "action", "reason", "revenue_usd_hr", "cost_usd_hr",
    "net_usd_hr", "score", "expected_net_usd_hr", "samples", "util_pct", "power_w", "temp_c",
    "hashrate_ths", "busy_fraction", "j_per_th", "reject_rate",
)


@router.get("/profitability/{device_id}", response_model=Profitability, responses=NOT_FOUND)
async def profitability(
    request: Request,
    device_id: Annotated[str, DEVICE_ID],
    _: Annotated[Principal, Depends(admin)],
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """The device's latest window (Redis) and its stored windows, newest first (PostgreSQL)."""
    services = _services(request)
    rec = await lookup_rec(services, device_id)
    where, params = ["r.device_id = %s"], [device_id]
    if since is not None:
        where.append("r.window_end > %s")
        params.append(ms(since))
    if until is not None:
        where.append("r.window_end <= %s")
        params.append(ms(until))
    async with services.pg.connection() as conn:
        cur = await conn.execute(_HISTORY.format(where=" AND ".join(where)), (*params, limit))
        rows = await cur.fetchall()
    if rec is None and not rows:
        raise ProblemError(404, f"no device {device_id!r}")
    history = []
    for row in rows:
        doc: dict[str, Any] = dict(zip(_HISTORY_COLS, row, strict=True))
        doc["window_start"] = to_ms(doc["window_start"])
        doc["window_end"] = to_ms(doc["window_end"])
        history.append(doc)
    latest = orjson.Fragment(rec.body) if rec is not None else None
    return json_doc({"device_id": device_id, "latest": latest, "history": history})


@router.get("/recommendations", response_model=RecommendationPage)
async def recommendations(
    request: Request,
    _: Annotated[Principal, Depends(admin)],
    site: Annotated[str | None, Query(description="comma-separated sites")] = None,
    action: Annotated[str | None, Query(description="comma-separated actions")] = None,
    type: Annotated[str | None, Query(description="gpu or asic")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> Response:
    """Latest recommendation per device in device-id order, with site and fleet summaries."""
    services = _services(request)
    after = decode_cursor(cursor)
    rm = await ensure_model(services)
    sites = sorted(csv_set(site) or [])
    items, last = rm.recs.page(
        sites=sites or None, types=csv_set(type), actions=csv_set(action), states=None,
        after=after, limit=limit,
    )
    summary_sites = {s: rm.sites[s] for s in (sites or sorted(rm.sites)) if s in rm.sites}
    return json_doc(
        {
            "items": [orjson.Fragment(r.body) for r in items],
            "next_cursor": encode_cursor(last),
            "summary": {"fleet": rm.fleet or None, "sites": summary_sites},
        }
    )


async def ensure_model(services: Services, wait_s: float = 5.0):  # type: ignore[no-untyped-def]
    """The read model for list endpoints: waits briefly while it loads, then 503."""
    if services.settings.no_read_model:
        raise ProblemError(503, "list endpoints need the read model (started with --no-read-model)")
    deadline = time.monotonic() + wait_s
    while True:
        rm = services.fresh_model()
        if rm is not None:
            return rm
        if services.read_model.error is not None:
            raise services.redis_down(RuntimeError(services.read_model.error))
        if time.monotonic() > deadline:
            raise ProblemError(503, "the read model is still loading from Redis",
                          headers={"Retry-After": "2"})
        await asyncio.sleep(0.05)
