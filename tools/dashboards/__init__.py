"""The five Grafana dashboards as code (grafanalib), written to deploy/grafana/dashboards.

``python -m tools.dashboards`` regenerates the committed JSON; ``--check`` fails when the
committed files differ from what the code generates. Panels query two datasources that
deploy/grafana/provisioning declares with fixed uids: the job's metrics in Prometheus
(PromQL) and the history tables in PostgreSQL / TimescaleDB (SQL, docs/history.md).
See docs/operations.md for what each dashboard answers.
"""

from __future__ import annotations

import json

from grafanalib._gen import DashboardEncoder

from tools.dashboards.boards import BOARDS
from tools.dashboards.picture import layout_svg

__all__ = ["render_all", "render_pictures"]


def render_all() -> dict[str, str]:
    """File name -> dashboard JSON text, for every dashboard."""
    out: dict[str, str] = {}
    for name, build in BOARDS.items():
        data = build().auto_panel_ids().to_json_data()
        text = json.dumps(data, cls=DashboardEncoder, sort_keys=True, indent=2)
        out[f"{name}.json"] = text + "\n"
    return out


def render_pictures(rendered: dict[str, str]) -> dict[str, str]:
    """File name -> SVG layout picture, for every rendered dashboard JSON."""
    return {
        name.removesuffix(".json") + ".svg": layout_svg(json.loads(text))
        for name, text in rendered.items()
    }
