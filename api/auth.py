"""Bearer-key authentication and roles (SPEC section 6), as reusable FastAPI dependencies.

``require_role("admin")`` admits admin keys only; ``require_role("admin", "customer")``
admits both and leaves the per-customer checks to the route. A checked key is trusted for
``--key-cache-s`` seconds (default 5), so point reads do not ask PostgreSQL each time and
keep working through a short PostgreSQL outage; a revoked key stops working within that
time. Logs name a key by its id, never by the key.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.keys import hash_key
from api.pg import PgPool
from api.problems import ProblemError

__all__ = ["KEY_COOKIE", "KeyCache", "Principal", "bearer", "require_role"]

# The browser console (api/console/) keeps the key it signed in with in this HttpOnly,
# SameSite=Strict cookie, because EventSource cannot send an Authorization header.
KEY_COOKIE = "hcp_key"

bearer = HTTPBearer(auto_error=False, description="an API key made by `hcp api keys create`")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, role and (for customer keys) customer."""

    key_id: str
    role: str
    customer: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def owner(self) -> str:
        """The scope of its idempotency keys: one customer, or admin."""
        return self.customer if self.customer is not None else f"admin:{self.key_id}"


class KeyCache:
    """Key hash -> principal (or None for unknown/revoked), each for ``ttl_s`` seconds."""

    def __init__(self, pg: PgPool, ttl_s: float) -> None:
        self.pg = pg
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def peek(self, key: str) -> Principal | None:
        """The cached principal of ``key`` when the cache holds a fresh one, else None."""
        hit = self._cache.get(hash_key(key))
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    async def lookup(self, key: str) -> Principal | None:
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self.pg.connection() as conn:
            cur = await conn.execute(
                "SELECT key_id, role, customer FROM api_keys "
                "WHERE key_hash = %s AND revoked_at IS NULL",
                (digest,),
            )
            row = await cur.fetchone()
        principal = Principal(*row) if row else None
        if len(self._cache) > 100_000:  # a flood of made-up keys must not grow it forever
            self._cache.clear()
        self._cache[digest] = (now + self.ttl_s, principal)
        return principal


_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def require_role(*roles: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that answers 401 without a valid key and 403 for another role."""
    allowed = frozenset(roles)

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> Principal:
        key = credentials.credentials if credentials else request.cookies.get(KEY_COOKIE)
        if not key:
            raise ProblemError(401, "missing bearer API key", headers=_UNAUTHORIZED)
        principal = await request.app.state.services.keys.lookup(key)
        if principal is None:
            raise ProblemError(401, "unknown or revoked API key", headers=_UNAUTHORIZED)
        if principal.role not in allowed:
            raise ProblemError(403, f"a {principal.role} key may not use this endpoint")
        request.state.principal = principal
        route = getattr(request.scope.get("route"), "path", "other")
        wait = request.app.state.services.limiter.check(principal.key_id, route)
        if wait:
            raise ProblemError(429, f"rate limit of this API key reached; retry in {wait:.0f} s",
                               headers={"Retry-After": f"{wait:.0f}"})
        return principal

    return dependency
