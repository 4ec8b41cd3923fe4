"""Orchestrator endpoints (SPEC section 6): workloads, resources, sites, health."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from psycopg.types.json import Jsonb
from redis.exceptions import RedisError
from starlette.responses import Response

from api.auth import Principal
from api.models import (
    CancelAccepted,
    Health,
    Resource,
    ResourcePage,
    Sites,
    WorkloadAccepted,
    WorkloadDetail,
    WorkloadPage,
    WorkloadRequest,
)
from api.problems import ProblemError
from api.read_model import parse_workload
from api.routes.common import (
    CONFLICT,
    ERRORS,
    NOT_FOUND,
    admin,
    anyone,
    csv_set,
    decode_cursor,
    encode_cursor,
    json_bytes,
    json_doc,
    to_ms,
)
from api.routes.customers import audit, quota_and_used
from api.routes.optimizer import ensure_model, lookup_rec
from api.services import Services
from hcp.workload_requests import cancel_message, submit_message

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["orchestrator"], responses=ERRORS)
TERMINAL = frozenset({"completed", "failed", "cancelled"})
WORKLOAD_ID = Path(min_length=1, max_length=128)
IDEMPOTENCY_KEY = Header(
    alias="Idempotency-Key", max_length=255,
    description="retries with the same key (and body) return the first answer",
)


def _services(request: Request) -> Services:
    return request.app.state.services


# --- workloads -------------------------------------------------------------------------------


@router.post("/workloads", status_code=202, response_model=WorkloadAccepted,
             responses=CONFLICT)
async def submit_workload(
    request: Request,
    body: WorkloadRequest,
    principal: Annotated[Principal, Depends(anyone)],
    idempotency_key: Annotated[str | None, IDEMPOTENCY_KEY] = None,
) -> Response:
    """Submit a workload: 202 once the broker acknowledged it on ``workloads.requests``."""
    services = _services(request)
    fields = body.model_dump()
    if principal.is_admin:
        if not fields.get("customer"):
            raise ProblemError(
                422, "an admin key must name the customer",
                errors=[{"loc": ["body", "customer"], "msg": "required for admin keys",
                         "type": "missing"}],
            )
    elif fields.get("customer") not in (None, principal.customer):
        raise ProblemError(403, "a customer key may only submit for its own customer")
    else:
        fields["customer"] = principal.customer
    canonical = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    quota = await _check_quota(services, fields)
    if idempotency_key is None:
        wid = fields.get("workload_id") or f"wl-{uuid.uuid4().hex[:16]}"
        fields["workload_id"] = wid
        await _record_owner(services, wid, fields)
        await services.producer.send(wid, submit_message({**fields, **quota}, _now_ms()))
        await audit(request, principal, "workload.submit", wid, fields)
        return json_doc({"workload_id": wid, "state": "submitted"}, 202)
    body_hash = hashlib.sha256(canonical).hexdigest()
    wid = fields.get("workload_id") or f"wl-{uuid.uuid4().hex[:16]}"
    async with services.pg.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO api_idempotency (owner, idem_key, body_hash, workload_id) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING workload_id",
            (principal.owner, idempotency_key, body_hash, wid),
        )
        mine = await cur.fetchone()
        if mine is None:
            cur = await conn.execute(
                "SELECT body_hash, workload_id, status, answer FROM api_idempotency "
                "WHERE owner = %s AND idem_key = %s",
                (principal.owner, idempotency_key),
            )
            stored_hash, wid, status, answer = await cur.fetchone()
            if stored_hash != body_hash:
                raise ProblemError(
                    422, "Idempotency-Key was already used with a different body",
                    errors=[{"loc": ["header", "Idempotency-Key"], "msg": "reused",
                             "type": "value_error"}],
                )
            if status is not None:
                return json_doc(answer, status)
            # Reserved but never answered (a crash or an outage in between): produce again
            # under the same workload id; the router ignores a repeat of a known id.
    fields["workload_id"] = wid
    await _record_owner(services, wid, fields)
    await services.producer.send(wid, submit_message({**fields, **quota}, _now_ms()))
    await audit(request, principal, "workload.submit", wid, fields)
    answer = {"workload_id": wid, "state": "submitted"}
    async with services.pg.connection() as conn:
        await conn.execute(
            "UPDATE api_idempotency SET status = 202, answer = %s "
            "WHERE owner = %s AND idem_key = %s",
            (Jsonb(answer), principal.owner, idempotency_key),
        )
    return json_doc(answer, 202)


async def _check_quota(services: Services, fields: dict[str, Any]) -> dict[str, Any]:
    """The quota fields for the message; 409 when the request can never fit the quota."""
    (max_gpus, hours), used = await quota_and_used(services, fields["customer"])
    if max_gpus is not None and fields["gpus"] > max_gpus:
        raise ProblemError(409, f"the request needs {fields['gpus']} GPUs; customer "
                                f"{fields['customer']!r} may use at most {max_gpus} at once")
    need = fields["gpus"] * fields["est_duration_s"] / 3600.0
    if hours is not None and need > hours - used + 1e-9:
        raise ProblemError(409, f"the request needs {need:.3f} GPU-hours; customer "
                                f"{fields['customer']!r} has {max(hours - used, 0.0):.3f} of "
                                f"{hours:g} left this month")
    return {"quota_max_gpus": max_gpus, "quota_gpu_hours": hours}


async def _record_owner(services: Services, wid: str, fields: dict[str, Any]) -> None:
    """Record who submitted ``wid`` before producing it; 409 when another customer has it."""
    async with services.pg.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO api_workloads (workload_id, customer, request) VALUES (%s, %s, %s) "
            "ON CONFLICT (workload_id) DO UPDATE SET workload_id = EXCLUDED.workload_id "
            "RETURNING customer",
            (wid, fields["customer"], Jsonb(fields)),
        )
        (owner,) = await cur.fetchone()
    if owner != fields["customer"]:
        raise ProblemError(409, f"workload id {wid!r} is taken")
    services.owners[wid] = owner


def _now_ms() -> int:
    return int(time.time() * 1000)


def _summary(wid: str, doc: dict[str, Any] | None, customer: str | None) -> dict[str, Any]:
    doc = doc or {}
    return {
        "workload_id": wid,
        "customer": customer,
        "state": doc.get("state") or "submitted",
        "priority": doc.get("priority"),
        "gpus": doc.get("gpus") or [],
        "site": doc.get("site") or None,
        "pending_reason": doc.get("pending_reason") or None,
        "expected_start_ts": doc.get("expected_start_ts"),
        "reserved_site": doc.get("reserved_site") or None,
        "reason": doc.get("reason") or None,
        "updated_ts": doc.get("updated_ts"),
    }


async def _with_reservations(services: Services, items: list[dict[str, Any]]) -> None:
    """Fill the reservation of each queued item from its hash, in one round trip.

    The read model follows the workloads stream, which carries transitions; a reservation
    is a field the router sets on the hash (sinks/redis/events.py), so it is read live.
    """
    queued = [it for it in items if it["state"] == "queued"]
    if not queued:
        return
    pipe = services.redis.pipeline(transaction=False)
    for it in queued:
        pipe.hmget(services.keys_layout.workload + it["workload_id"],
                   "expected_start_ts", "reserved_site")
    try:
        got = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise services.redis_down(exc) from None
    for it, (start, site) in zip(queued, got, strict=True):
        it["expected_start_ts"] = int(start) if start else None
        it["reserved_site"] = site.decode() if isinstance(site, bytes) else site


@router.get("/workloads", response_model=WorkloadPage)
async def list_workloads(
    request: Request,
    principal: Annotated[Principal, Depends(anyone)],
    state: Annotated[str | None, Query(description="comma-separated states")] = None,
    customer: Annotated[str | None, Query(max_length=128)] = None,
    priority: Annotated[int | None, Query(ge=1, le=10)] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> Response:
    """Workloads in id order: those the router knows (Redis) and those submitted here."""
    services = _services(request)
    after = decode_cursor(cursor)
    rm = await ensure_model(services)
    if not principal.is_admin:
        if customer not in (None, principal.customer):
            raise ProblemError(403, "a customer key sees only its own workloads")
        customer = principal.customer
    owners = services.owners
    if customer is not None:
        ids = sorted(w for w, c in owners.items() if c == customer)
    else:
        ids = sorted(set(rm.workloads) | set(owners))
    states = csv_set(state)
    items: list[dict[str, Any]] = []
    last = None
    for wid in ids:
        if after is not None and wid <= after:
            continue
        item = _summary(wid, rm.workloads.get(wid), owners.get(wid))
        if states and item["state"] not in states:
            continue
        if priority is not None and item["priority"] != priority:
            continue
        if len(items) == limit:
            last = items[-1]["workload_id"]
            break
        items.append(item)
    await _with_reservations(services, items)
    return json_doc({"items": items, "next_cursor": encode_cursor(last)})


async def _find(
    services: Services, principal: Principal, wid: str
) -> tuple[dict[str, Any] | None, str | None, dict[str, Any] | None]:
    """(Redis hash, owner, original request) of a workload the caller may see; else 404."""
    try:
        raw = await services.redis.hgetall(services.keys_layout.workload + wid)
    except (RedisError, OSError) as exc:
        raise services.redis_down(exc) from None
    async with services.pg.connection() as conn:
        cur = await conn.execute(
            "SELECT customer, request FROM api_workloads WHERE workload_id = %s", (wid,)
        )
        row = await cur.fetchone()
    owner, req = (row[0], row[1]) if row else (None, None)
    if (not raw and row is None) or (not principal.is_admin and owner != principal.customer):
        # A customer cannot tell another customer's workload from a missing one.
        raise ProblemError(404, f"no workload {wid!r}")
    return (parse_workload(raw) if raw else None), owner, req


@router.get("/workloads/{workload_id}", response_model=WorkloadDetail, responses=NOT_FOUND)
async def get_workload(
    request: Request,
    workload_id: Annotated[str, WORKLOAD_ID],
    principal: Annotated[Principal, Depends(anyone)],
) -> Response:
    """State, GPUs, site, pending reason, and every transition (PostgreSQL history)."""
    services = _services(request)
    doc, owner, req = await _find(services, principal, workload_id)
    async with services.pg.connection() as conn:
        cur = await conn.execute(
            "SELECT ts, from_state, to_state, gpus, site, reason FROM workload_events "
            # Transitions of one millisecond keep the state machine's order.
            "WHERE workload_id = %s ORDER BY ts, array_position(ARRAY['submitted', 'queued', "
            "'assigned', 'running', 'preempted', 'completed', 'failed', 'cancelled'], "
            "to_state), to_state",
            (workload_id,),
        )
        rows = await cur.fetchall()
    out = _summary(workload_id, doc, owner)
    out["request"] = req
    out["state_ts"] = {k: v for k, v in (doc or {}).items() if k.endswith("_ts")}
    out["transitions"] = [
        {"ts": to_ms(ts), "from_state": a, "to_state": b,
         "gpus": [g for g in (gpus or "").split(",") if g], "site": site or None,
         "reason": reason or None}
        for ts, a, b, gpus, site, reason in rows
    ]
    return json_doc(out)


@router.delete("/workloads/{workload_id}", status_code=202, response_model=CancelAccepted,
               responses=NOT_FOUND | CONFLICT)
async def cancel_workload(
    request: Request,
    workload_id: Annotated[str, WORKLOAD_ID],
    principal: Annotated[Principal, Depends(anyone)],
) -> Response:
    """Cancel: 202 once the broker acknowledged the cancel request; 409 when terminal."""
    services = _services(request)
    doc, _, _ = await _find(services, principal, workload_id)
    state = (doc or {}).get("state") or "submitted"
    if state in TERMINAL:
        raise ProblemError(409, f"workload {workload_id!r} is already {state}")
    await services.producer.send(workload_id, cancel_message(workload_id, _now_ms()))
    await audit(request, principal, "workload.cancel", workload_id, {"state": state})
    return json_doc(
        {"workload_id": workload_id, "state": state, "cancel_requested": True}, 202
    )


# --- resources and sites ----------------------------------------------------------------------


@router.get("/resources", response_model=ResourcePage)
async def list_resources(
    request: Request,
    _: Annotated[Principal, Depends(admin)],
    type: Annotated[str | None, Query(description="gpu or asic")] = None,
    site: Annotated[str | None, Query(description="comma-separated sites")] = None,
    state: Annotated[str | None, Query(description="busy,idle,down,mining,curtailed")] = None,
    action: Annotated[str | None, Query(description="comma-separated actions")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> Response:
    """GPUs and ASICs with their latest window and recommendation, in device-id order."""
    rm = await ensure_model(_services(request))
    after = decode_cursor(cursor)
    sites = sorted(csv_set(site) or [])
    items, last = rm.recs.page(
        sites=sites or None, types=csv_set(type), actions=csv_set(action),
        states=csv_set(state), after=after, limit=limit,
    )
    body = b'{"items":[' + b",".join(r.body for r in items) + b'],"next_cursor":'
    return json_bytes(body + orjson.dumps(encode_cursor(last)) + b"}")


@router.get("/resources/{device_id}", response_model=Resource, responses=NOT_FOUND)
async def get_resource(
    request: Request,
    device_id: Annotated[str, Path(min_length=1, max_length=256)],
    _: Annotated[Principal, Depends(admin)],
) -> Response:
    """One device: its latest window and recommendation."""
    rec = await lookup_rec(request.app.state.services, device_id)
    if rec is None:
        raise ProblemError(404, f"no device {device_id!r}")
    return Response(rec.body, media_type="application/json")


@router.get("/sites", response_model=Sites)
async def sites(request: Request, _: Annotated[Principal, Depends(admin)]) -> Response:
    """Per site: devices, power now, cap, headroom and money of its latest window."""
    return json_doc(sites_doc(await ensure_model(_services(request))))


def sites_doc(rm: Any) -> dict[str, Any]:
    """The ``/sites`` document from the read model (also what ``/stream/sites`` sends)."""
    out = []
    for name in sorted(rm.sites):
        s = rm.sites[name]
        cap = rm.prices.get(f"power_cap_mw:{name}")
        cap_w = cap["value"] * 1e6 if cap else None
        power = s.get("running_power_w")
        out.append(
            {
                **s,
                "site": name,
                "devices": s.get("devices"),
                "power_now_w": power,
                "power_cap_w": cap_w,
                "headroom_w": (cap_w - power) if cap_w is not None and power is not None
                else None,
                "revenue_usd_hr": s.get("revenue_usd_hr"),
                "cost_usd_hr": s.get("cost_usd_hr"),
                "net_usd_hr": s.get("net_usd_hr"),
            }
        )
    return {"sites": out, "fleet": rm.fleet or None}


# --- health --------------------------------------------------------------------------------


@router.get("/health", response_model=Health, responses={})
async def health(request: Request) -> Response:
    """Liveness and each dependency; no key needed. 200 even when degraded."""
    services = _services(request)
    t = services.settings.dependency_timeout_s

    async def redis_check() -> str | None:
        try:
            await asyncio.wait_for(services.redis.ping(), t)
            return None
        except (RedisError, OSError, TimeoutError) as exc:
            return f"{services.redis_where}: {type(exc).__name__}"

    async def pg_check() -> str | None:
        try:
            async with services.pg.connection() as conn:
                await asyncio.wait_for(conn.execute("SELECT 1"), t)
            return None
        except ProblemError as exc:
            return exc.detail
        except TimeoutError:
            return f"{services.pg.where} did not answer in time"

    broker = asyncio.to_thread(services.producer.check, min(t, 1.0))
    r, p, b = await asyncio.gather(redis_check(), pg_check(), broker)
    deps = {
        name: {"ok": reason is None, "detail": reason}
        for name, reason in (("redis", r), ("postgresql", p), ("broker", b))
    }
    rm = services.read_model
    model = {
        "enabled": not services.settings.no_read_model,
        "ready": rm.ready,
        "devices": len(rm.recs),
        "workloads": len(rm.workloads),
        "staleness_s": None if not rm.synced_at else round(rm.staleness_s, 3),
    }
    status = "ok" if all(d["ok"] for d in deps.values()) else "degraded"
    return json_doc({"status": status, "dependencies": deps, "read_model": model})
