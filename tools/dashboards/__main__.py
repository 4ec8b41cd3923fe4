"""``python -m tools.dashboards [--out DIR] [--check]``: write or check the dashboard JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.dashboards import render_all, render_pictures

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "deploy" / "grafana" / "dashboards"
DEFAULT_PICTURES = ROOT / "docs" / "dashboards"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.dashboards",
        description="Generate the Grafana dashboards (JSON) from tools/dashboards/boards.py.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"directory of the dashboard JSON files (default: {DEFAULT_OUT})")
    parser.add_argument("--pictures", type=Path, default=DEFAULT_PICTURES,
                        help=f"directory of the layout pictures, SVG (default: {DEFAULT_PICTURES})")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file differs from the generated JSON")
    args = parser.parse_args(argv)
    rendered = render_all()
    files = {args.out / name: text for name, text in rendered.items()}
    files.update({args.pictures / name: svg for name, svg in render_pictures(rendered).items()})
    if args.check:
        stale = [path for path, text in files.items()
                 if not path.is_file() or path.read_text() != text]
        for path in stale:
            sys.stderr.write(f"{path} is not what tools/dashboards generates\n")
        return 1 if stale else 0
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    except OSError as exc:
        sys.stderr.write(f"cannot write the dashboards: {exc}\n")
        return 1
    sys.stdout.write(f"wrote {len(rendered)} dashboards to {args.out} "
                     f"and their layout pictures to {args.pictures}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
