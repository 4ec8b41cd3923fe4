"""Panel builders shared by the dashboards: one datasource per query language, a grid.

Every query is written for Grafana's own expansion: PromQL uses ``$__rate_interval``;
SQL uses the PostgreSQL macros ``$__timeFilter(col)`` and ``$__timeGroupAlias(col, 'N')``
(tests/integration/test_observability.py expands them the documented way and runs them).
"""

from __future__ import annotations

from grafanalib.core import (
    Dashboard,
    GridPos,
    Panel,
    SqlTarget,
    Stat,
    Table,
    Target,
    Time,
    TimeSeries,
)

__all__ = ["PG", "PROM", "Grid", "board", "prom", "sql", "sql_stat", "stat", "table"]

# Fixed uids, declared in deploy/grafana/provisioning/datasources/hcp.yml.
PROM = {"type": "prometheus", "uid": "hcp-prometheus"}
PG = {"type": "grafana-postgresql-datasource", "uid": "hcp-postgres"}


def _prom_targets(exprs: dict[str, str]) -> list[Target]:
    return [
        Target(expr=expr, legendFormat=legend, refId=chr(65 + i), datasource=PROM)
        for i, (legend, expr) in enumerate(exprs.items())
    ]


def prom(title: str, exprs: dict[str, str], unit: str = "short", desc: str = "") -> TimeSeries:
    """A time series of PromQL queries, ``{legend: expr}``."""
    return TimeSeries(title=title, dataSource=PROM, targets=_prom_targets(exprs), unit=unit,
                      description=desc)


def stat(title: str, expr: str, unit: str = "short", desc: str = "") -> Stat:
    """The latest value of one PromQL query."""
    return Stat(title=title, dataSource=PROM, targets=_prom_targets({"": expr}), format=unit,
                reduceCalc="lastNotNull", description=desc)


def _sql_target(query: str, fmt: str) -> SqlTarget:
    return SqlTarget(rawSql=" ".join(query.split()), format=fmt, refId="A", datasource=PG)


def sql(title: str, query: str, unit: str = "short", desc: str = "") -> TimeSeries:
    """A time series from SQL: a ``time`` column, then one column per series (or
    ``metric`` + ``value`` rows, Grafana's long format)."""
    return TimeSeries(title=title, dataSource=PG, targets=[_sql_target(query, "time_series")],
                      unit=unit, description=desc)


def sql_stat(title: str, query: str, unit: str = "short", desc: str = "") -> Stat:
    """One figure from SQL (the last row's value)."""
    return Stat(title=title, dataSource=PG, targets=[_sql_target(query, "table")], format=unit,
                reduceCalc="lastNotNull", description=desc)


def table(title: str, query: str, desc: str = "") -> Table:
    """A table from SQL."""
    return Table(title=title, dataSource=PG, targets=[_sql_target(query, "table")],
                 description=desc)


class Grid:
    """Places panels left to right in rows of Grafana's 24 columns."""

    def __init__(self) -> None:
        self.panels: list = []
        self._x = 0
        self._y = 0
        self._row_h = 0

    def add(self, panel: Panel, w: int = 12, h: int = 8) -> Grid:
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        panel.gridPos = GridPos(h=h, w=w, x=self._x, y=self._y)
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)
        return self


def board(uid: str, title: str, description: str, grid: Grid, span: str = "now-24h") -> Dashboard:
    return Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=["hcp"],
        timezone="utc",
        refresh="30s",
        time=Time(span, "now"),
        panels=grid.panels,
    )
