"""Customer quotas (``customer_quotas``): at most ``max_gpus`` GPUs at once, and
``monthly_gpu_hours`` GPU-hours per calendar month (UTC); null means no limit.

Set with ``hcp api customers set`` (or ``PUT /api/v1/customers/{customer}/quota``). The
API puts the customer's quota on every submission it produces (``quota_max_gpus``,
``quota_gpu_hours``), and the router holds work over it with pending reason ``quota``
(docs/customers.md): the quota in force is the one of the customer's newest request, read
in the job's event order, so the same topics give the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

__all__ = ["Quota", "get_quota", "list_quotas", "set_quota"]


@dataclass(frozen=True)
class Quota:
    customer: str
    max_gpus: int | None
    monthly_gpu_hours: float | None

    def doc(self) -> dict[str, object]:
        return {"customer": self.customer, "max_gpus": self.max_gpus,
                "monthly_gpu_hours": self.monthly_gpu_hours}


_UPSERT = (
    "INSERT INTO customer_quotas (customer, max_gpus, monthly_gpu_hours) VALUES (%s, %s, %s) "
    "ON CONFLICT (customer) DO UPDATE SET max_gpus = EXCLUDED.max_gpus, "
    "monthly_gpu_hours = EXCLUDED.monthly_gpu_hours, updated_at = now()"
)
_SELECT = "SELECT customer, max_gpus, monthly_gpu_hours FROM customer_quotas"


def set_quota(conn: psycopg.Connection, quota: Quota) -> None:
    conn.execute(_UPSERT, (quota.customer, quota.max_gpus, quota.monthly_gpu_hours))


def get_quota(conn: psycopg.Connection, customer: str) -> Quota | None:
    row = conn.execute(_SELECT + " WHERE customer = %s", (customer,)).fetchone()
    return Quota(*row) if row else None


def list_quotas(conn: psycopg.Connection) -> list[Quota]:
    return [Quota(*r) for r in conn.execute(_SELECT + " ORDER BY customer").fetchall()]
