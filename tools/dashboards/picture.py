"""A picture of a dashboard's layout: an SVG of its panels' grid boxes, titles and sources.

Drawn from the generated JSON itself (``gridPos``), so the picture in docs/operations.md
is the layout Grafana will show, without a Grafana to screenshot.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

__all__ = ["layout_svg"]

COL_PX = 40  # Grafana's grid has 24 columns
ROW_PX = 20  # drawn flatter than Grafana (30 px) to keep the pictures short
_SOURCE = {"prometheus": "PromQL", "grafana-postgresql-datasource": "SQL"}
_FILL = {"PromQL": "#e8f1fb", "SQL": "#eef7ea"}


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def layout_svg(board: dict) -> str:
    """The SVG text of one dashboard's layout (its JSON as generated)."""
    panels = board["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) * ROW_PX
    width = 24 * COL_PX
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" '
        f'font-family="sans-serif" font-size="12">',
        f'<text x="4" y="22" font-size="16" font-weight="bold">{escape(board["title"])} '
        f"({len(panels)} panels)</text>",
    ]
    for p in panels:
        g = p["gridPos"]
        x, y = g["x"] * COL_PX, g["y"] * ROW_PX + 32
        w, h = g["w"] * COL_PX, g["h"] * ROW_PX
        sources = sorted({_SOURCE[t["datasource"]["type"]] for t in p["targets"]})
        fill = _FILL[sources[0]] if len(sources) == 1 else "#f4f4f4"
        out.append(f'<rect x="{x + 2}" y="{y + 2}" width="{w - 4}" height="{h - 4}" rx="4" '
                   f'fill="{fill}" stroke="#8899aa"/>')
        for i, line in enumerate(_wrap(p["title"], max(8, (w - 16) // 7))[:3]):
            out.append(f'<text x="{x + 8}" y="{y + 20 + 15 * i}">{escape(line)}</text>')
        out.append(f'<text x="{x + 8}" y="{y + h - 10}" fill="#556677">'
                   f'{escape(p["type"])} · {" + ".join(sources)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
