"""The API's Prometheus metrics, in a registry of its own (the job's ``hcp_*`` stay out).

Per route (the path template, not the raw path, so ids do not explode the label set):
``hcp_api_requests_total{method,route,status}`` and ``hcp_api_request_duration_seconds``.
The original plan's names the API knows: ``optimizer_profitability_calculations_total``
and ``optimizer_calculation_duration_seconds`` (calculate endpoint),
``optimizer_current_prices{key}`` and ``orchestrator_active_workloads{state}`` (read
from the read model at scrape time).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ApiMetrics", "RouteMetrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TERMINAL = frozenset({"completed", "failed", "cancelled"})


class ApiMetrics:
    """Every API metric, registered in ``self.registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "hcp_api_requests", "HTTP requests answered", ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hcp_api_request_duration_seconds", "Time to answer, per route", ["method", "route"],
            buckets=_BUCKETS, registry=self.registry,
        )
        self.calculations = Counter(
            "optimizer_profitability_calculations", "Devices evaluated by the calculate endpoint",
            ["device_type"], registry=self.registry,
        )
        self.calc_seconds = Histogram(
            "optimizer_calculation_duration_seconds", "Time of one calculate call's kernels",
            buckets=_BUCKETS, registry=self.registry,
        )

    def watch(self, prices: Callable[[], dict], workloads: Callable[[], dict]) -> None:
        """Export the read model's prices and workload counts at each scrape."""
        self.registry.register(_Snapshot(prices, workloads))


class _Snapshot:
    def __init__(self, prices: Callable[[], dict], workloads: Callable[[], dict]) -> None:
        self.prices = prices
        self.workloads = workloads

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("optimizer_current_prices", "Latest price per key", labels=["key"])
        for key, p in sorted(self.prices().items()):
            g.add_metric([key], p["value"])
        yield g
        w = GaugeMetricFamily(
            "orchestrator_active_workloads", "Workloads not yet terminal, per state",
            labels=["state"],
        )
        counts: dict[str, int] = {}
        for doc in list(self.workloads().values()):
            state = doc.get("state") or ""
            if state and state not in TERMINAL:
                counts[state] = counts.get(state, 0) + 1
        for state, n in sorted(counts.items()):
            w.add_metric([state], n)
        yield w


class RouteMetrics:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task per request)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._routes: dict[tuple[str, str], str] = {}

    def _route(self, scope: Scope) -> str:
        app = scope.get("app")
        router = getattr(app, "router", None)
        if router is None:
            return "other"
        for route in router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "other")
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or self._route(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, name, str(status)).inc()
            self.metrics.latency.labels(method, name).observe(time.perf_counter() - started)
