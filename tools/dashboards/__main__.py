"""``python -m tools.dashboards [--out DIR] [--check]``: write or check the dashboard JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.dashboards import render_all

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.dashboards",
        description="Generate the Grafana dashboards (JSON) from tools/dashboards/boards.py.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"directory of the dashboard JSON files (default: {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file differs from the generated JSON")
    args = parser.parse_args(argv)
    rendered = render_all()
    if args.check:
        stale = [name for name, text in rendered.items()
                 if not (args.out / name).is_file() or (args.out / name).read_text() != text]
        for name in stale:
            sys.stderr.write(f"{args.out / name} is not what tools/dashboards generates\n")
        return 1 if stale else 0
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (args.out / name).write_text(text)
    except OSError as exc:
        sys.stderr.write(f"cannot write dashboards to {args.out}: {exc}\n")
        return 1
    sys.stdout.write(f"wrote {len(rendered)} dashboards to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
