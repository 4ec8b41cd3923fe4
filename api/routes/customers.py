"""Customer endpoints (docs/customers.md): usage, invoices, quotas and the audit trail.

Usage and invoices read ``usage_minutes``, which the job fills per workload and minute
(flows/metering.py). A customer key sees only its own customer; an admin names one with
``?customer=`` (usage) or in the path (invoices).
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.audit import AUDIT_COLUMNS, record_async
from api.auth import Principal
from api.models import NAME
from api.problems import ProblemError
from api.routes.common import ERRORS, admin, anyone, json_doc, ms, to_ms
from api.services import Services

__all__ = ["QuotaBody", "month_bounds", "request_id", "router"]


class QuotaBody(BaseModel):
    """A customer's limits; null means none."""

    model_config = ConfigDict(extra="forbid")
    max_gpus: int | None = Field(None, ge=0, le=1_000_000)
    monthly_gpu_hours: float | None = Field(None, ge=0, le=1e9)


router = APIRouter(prefix="/api/v1", tags=["customers"], responses=ERRORS)
_MONTH = re.compile(r"^(\d{4})-(\d{2})(\.csv)?$")
_SUMS = (
    "sum(gpu_seconds) / 3600.0, sum(energy_wh) / 1000.0, sum(energy_cost_usd), sum(charge_usd)"
)
_FIGURES = ("gpu_hours", "energy_kwh", "energy_cost_usd", "charge_usd")


def _services(request: Request) -> Services:
    return request.app.state.services


def request_id(request: Request) -> str:
    """The caller's ``X-Request-Id`` (up to 128 characters) or a new one, per request."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        given = request.headers.get("x-request-id", "")
        rid = given if 0 < len(given) <= 128 else uuid.uuid4().hex
        request.state.request_id = rid
    return rid


async def audit(request: Request, principal: Principal, action: str, target: str,
                detail: dict[str, Any]) -> None:
    """Record an API write in the audit trail (once per request id, action and target)."""
    async with _services(request).pg.connection() as conn:
        await record_async(conn, f"key:{principal.key_id}", action, target, detail,
                           request_id(request))


def _customer(principal: Principal, asked: str | None) -> str | None:
    """The customer to report on; None: an admin asking for every customer."""
    if principal.is_admin:
        return asked
    if asked not in (None, principal.customer):
        raise ProblemError(403, "a customer key sees only its own usage")
    assert principal.customer is not None
    return principal.customer


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` -> [start, end) in UTC; a 422 naming the path part when malformed."""
    m = _MONTH.match(month)
    year, mon = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if not m or not 1 <= mon <= 12 or year < 1970:
        raise ProblemError(422, f"invalid month {month!r}: use YYYY-MM",
                           errors=[{"loc": ["path", "month"], "msg": "not YYYY-MM",
                                    "type": "value_error"}])
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _figures(row: tuple) -> dict[str, float]:
    return {k: float(v or 0.0) for k, v in zip(_FIGURES, row, strict=True)}


@router.get("/usage")
async def get_usage(
    request: Request,
    principal: Annotated[Principal, Depends(anyone)],
    customer: Annotated[str | None, Query(pattern=NAME, max_length=128)] = None,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
    by: Literal["day", "workload"] = "day",
) -> Response:
    """GPU-hours, energy, its cost and charges per day or per workload in [from, to).

    An admin without ``customer`` gets every customer's usage together. ``from``
    defaults to the start of the current month (UTC), ``to`` to now.
    """
    who = _customer(principal, customer)
    now = datetime.now(UTC)
    start = ms(from_) or datetime(now.year, now.month, 1, tzinfo=UTC)
    end = ms(to) or now + timedelta(minutes=1)
    if end <= start:
        raise ProblemError(422, "`to` must be after `from`",
                           errors=[{"loc": ["query", "to"], "msg": "before from",
                                    "type": "value_error"}])
    group = ("date_trunc('day', minute, 'UTC')" if by == "day" else "workload_id")
    sql = (f"SELECT {group}, {_SUMS}, min(minute), max(minute) FROM usage_minutes "
           "WHERE (%s::text IS NULL OR customer = %s) AND minute >= %s AND minute < %s "
           "GROUP BY 1 ORDER BY 1")
    async with _services(request).pg.connection() as conn:
        cur = await conn.execute(sql, (who, who, start, end))
        rows = await cur.fetchall()
    items = []
    for r in rows:
        item: dict[str, Any] = ({"day": r[0].date().isoformat()} if by == "day"
                                else {"workload_id": r[0]})
        item.update(_figures(r[1:5]))
        item["first_minute"] = to_ms(r[5])
        item["last_minute"] = to_ms(r[6])
        items.append(item)
    totals = {k: sum(i[k] for i in items) for k in _FIGURES}
    return json_doc({"customer": who, "from": to_ms(start), "to": to_ms(end), "by": by,
                     "items": items, "totals": totals})


_INVOICE_TYPES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the invoice", "content": {"application/json": {}, "text/csv": {}}},
}


@router.get("/invoices/{customer}/{month}", responses=_INVOICE_TYPES)
async def get_invoice(
    request: Request,
    principal: Annotated[Principal, Depends(anyone)],
    customer: Annotated[str, Path(pattern=NAME, max_length=128)],
    month: Annotated[str, Path(pattern=r"^\d{4}-\d{2}(\.csv)?$",
                               description="YYYY-MM, or YYYY-MM.csv for CSV")],
) -> Response:
    """One line per workload run in the month, and the totals; CSV with ``.csv`` or
    ``Accept: text/csv``."""
    if not principal.is_admin and customer != principal.customer:
        raise ProblemError(403, "a customer key sees only its own invoices")
    start, end = month_bounds(month)
    as_csv = month.endswith(".csv") or "text/csv" in request.headers.get("accept", "")
    sql = (f"SELECT workload_id, min(gpu_model), min(site), {_SUMS}, min(minute), "
           "max(minute) FROM usage_minutes WHERE customer = %s AND minute >= %s "
           "AND minute < %s GROUP BY workload_id ORDER BY workload_id")
    async with _services(request).pg.connection() as conn:
        cur = await conn.execute(sql, (customer, start, end))
        rows = await cur.fetchall()
    lines = [{"workload_id": r[0], "gpu_model": r[1], "site": r[2], **_figures(r[3:7]),
              "first_minute": to_ms(r[7]), "last_minute": to_ms(r[8])} for r in rows]
    totals = {k: sum(line[k] for line in lines) for k in _FIGURES}
    label = month.removesuffix(".csv")
    if as_csv:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        cols = ("workload_id", "gpu_model", "site", *_FIGURES)
        w.writerow(cols)
        for line in lines:
            w.writerow([line[c] if isinstance(line[c], str) else f"{line[c]:.6f}" for c in cols])
        w.writerow(["TOTAL", "", "", *(f"{totals[k]:.6f}" for k in _FIGURES)])
        return Response(out.getvalue(), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="invoice-{customer}-{label}.csv"'})
    return json_doc({"customer": customer, "month": label, "lines": lines, "totals": totals,
                     "currency": "USD"})


@router.get("/customers/{customer}/quota")
async def get_customer_quota(
    request: Request,
    principal: Annotated[Principal, Depends(anyone)],
    customer: Annotated[str, Path(pattern=NAME, max_length=128)],
) -> Response:
    """The customer's quota and what it used this month (GPU-hours, GPUs are the router's)."""
    if not principal.is_admin and customer != principal.customer:
        raise ProblemError(403, "a customer key sees only its own quota")
    quota, used = await quota_and_used(_services(request), customer)
    return json_doc({"customer": customer, "max_gpus": quota[0], "monthly_gpu_hours": quota[1],
                     "used_gpu_hours": used})


@router.put("/customers/{customer}/quota")
async def put_customer_quota(
    request: Request,
    principal: Annotated[Principal, Depends(admin)],
    customer: Annotated[str, Path(pattern=NAME, max_length=128)],
    body: QuotaBody,
) -> Response:
    """Set (or clear, with nulls) a customer's quota; it reaches the router with the
    customer's next submission."""
    async with _services(request).pg.connection() as conn:
        await conn.execute(
            "INSERT INTO customer_quotas (customer, max_gpus, monthly_gpu_hours) "
            "VALUES (%s, %s, %s) ON CONFLICT (customer) DO UPDATE SET "
            "max_gpus = EXCLUDED.max_gpus, monthly_gpu_hours = EXCLUDED.monthly_gpu_hours, "
            "updated_at = now()", (customer, body.max_gpus, body.monthly_gpu_hours))
    await audit(request, principal, "quota.set", customer, body.model_dump())
    return json_doc({"customer": customer, **body.model_dump()})


async def quota_and_used(services: Services, customer: str) -> tuple[tuple, float]:
    """((max_gpus, monthly_gpu_hours) or (None, None), GPU-hours metered this month)."""
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    async with services.pg.connection() as conn:
        cur = await conn.execute(
            "SELECT max_gpus, monthly_gpu_hours FROM customer_quotas WHERE customer = %s",
            (customer,))
        row = await cur.fetchone()
        cur = await conn.execute(
            "SELECT coalesce(sum(gpu_seconds), 0) / 3600.0 FROM usage_minutes "
            "WHERE customer = %s AND minute >= %s", (customer, start))
        (used,) = await cur.fetchone()
    return (tuple(row) if row else (None, None)), float(used)


@router.get("/audit")
async def get_audit(
    request: Request,
    _: Annotated[Principal, Depends(admin)],
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=100)] = None,
    target: Annotated[str | None, Query(max_length=200)] = None,
    after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> Response:
    """Audit rows in id order after ``after_id``; ``next_after_id`` pages on."""
    where, args = ["id > %s"], [after_id]
    for col, val in (("actor", actor), ("action", action), ("target", target)):
        if val:
            where.append(f"{col} = %s")
            args.append(val)
    if from_ is not None:
        where.append("at >= %s")
        args.append(ms(from_))
    sql = (f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_log WHERE "
           f"{' AND '.join(where)} ORDER BY id LIMIT %s")
    async with _services(request).pg.connection() as conn:
        cur = await conn.execute(sql, (*args, limit))
        rows = await cur.fetchall()
    items = [dict(zip(AUDIT_COLUMNS, r, strict=True)) for r in rows]
    for item in items:
        item["at"] = to_ms(item["at"])
    nxt = items[-1]["id"] if len(items) == limit else None
    return json_doc({"items": items, "next_after_id": nxt})
