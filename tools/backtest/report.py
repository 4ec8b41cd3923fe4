"""The backtest report: one JSON document, a text table and a bar chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hcp.extras import require

__all__ = ["COLUMNS", "table", "write_chart", "write_json"]

COLUMNS = (
    ("net_usd", "net USD", "{:,.2f}"),
    ("energy_mwh", "energy MWh", "{:,.3f}"),
    ("switches_per_device_day", "switches/dev-day", "{:,.2f}"),
    ("minutes_over_cap", "min over cap", "{:,.0f}"),
)


def table(rows: list[dict[str, Any]]) -> str:
    """Rows side by side, best net first after the two references."""
    head = ["run", *(title for _, title, _ in COLUMNS)]
    body = [
        [r["name"], *(fmt.format(r[key]) for key, _, fmt in COLUMNS)] for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def write_chart(path: Path, rows: list[dict[str, Any]]) -> None:
    """One panel per measure, one bar per run (matplotlib, in the bench extra)."""
    matplotlib = require("matplotlib", "bench", "the backtest chart")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(4 * len(COLUMNS), 3.6))
    for ax, (key, title, _) in zip(axes, COLUMNS, strict=True):
        values = [r[key] for r in rows]
        colors = (["#888888", "#bbbbbb"] + ["#3060c0"] * len(rows))[: len(rows)]
        ax.bar(range(len(rows)), values, color=colors)
        ax.set_title(title)
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
