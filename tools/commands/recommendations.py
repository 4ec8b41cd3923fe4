"""``hcp recommendations``: the current decisions in Redis, as a consumer of HCP sees them.

Reads the ``{prefix}rec:*`` hashes and the site / fleet summaries written by the Redis
sink and prints them as tables (or JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

import polars as pl
import redis

from hcp.config import env_arg, env_flag, non_negative_float, non_negative_int
from hcp.errors import SinkUnavailableError
from hcp.redis_client import redis_client, safe_url
from hcp.schemas import REC_SCHEMA
from hcp.settings import add_settings
from sinks.redis.layout import RedisKeys
from sinks.redis.recs import ACTIONS, REC_FIELDS

__all__ = ["load_recommendations", "load_summaries", "register", "run"]

_SORTS = {
    "device": ("device_id", False),
    "site": ("site", False),
    "action": ("action", False),
    "net": ("net_usd_hr", True),
    "score": ("score", True),
    "revenue": ("revenue_usd_hr", True),
    "cost": ("cost_usd_hr", True),
}
_INT_FIELDS = {
    "window_start",
    "window_end",
    "devices",
    "n_gpu",
    "n_asic",
    *(f"n_{a}" for a in ACTIONS),
}
_TEXT_FIELDS = {"device_id", "device_type", "site", "model", "action", "reason"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recommendations",
        help="print the current decisions and summaries from Redis",
        description=__doc__,
    )
    add_settings(parser, "redis", "redis_prefix")
    env_arg(
        parser, "--site", env="HCP_RECS_SITE", type=_csv, help="only these sites, comma-separated"
    )
    env_arg(
        parser,
        "--action",
        env="HCP_RECS_ACTION",
        type=_actions,
        help=f"only these actions, comma-separated ({', '.join(ACTIONS)})",
    )
    env_arg(
        parser,
        "--type",
        env="HCP_RECS_TYPE",
        type=_device_type,
        help="only this device type (gpu or asic)",
    )
    env_arg(
        parser,
        "--sort",
        env="HCP_RECS_SORT",
        default="device",
        type=_sort_key,
        help=f"sort key, one of {', '.join(sorted(_SORTS))}; money and score sort highest first",
    )
    env_flag(parser, "--reverse", env="HCP_RECS_REVERSE", help="reverse the sort order")
    env_arg(
        parser,
        "--limit",
        env="HCP_RECS_LIMIT",
        default=50,
        type=non_negative_int,
        help="rows to print, 0 for all",
    )
    env_flag(parser, "--json", env="HCP_RECS_JSON", help="print JSON for machines")
    env_arg(
        parser,
        "--timeout",
        env="HCP_REDIS_TIMEOUT",
        default=3.0,
        type=non_negative_float,
        help="seconds to wait for Redis to answer a connection",
    )
    parser.set_defaults(func=run)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _actions(text: str) -> list[str]:
    actions = _csv(text)
    bad = [a for a in actions if a not in ACTIONS]
    if bad:
        msg = f"unknown action {bad[0]!r}; expected one of {', '.join(ACTIONS)}"
        raise argparse.ArgumentTypeError(msg)
    return actions


def _device_type(text: str) -> str:
    if text not in ("gpu", "asic"):
        msg = f"expected gpu or asic, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return text


def _sort_key(text: str) -> str:
    if text not in _SORTS:
        msg = f"expected one of {', '.join(sorted(_SORTS))}, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return text


def run(args: argparse.Namespace) -> int:
    client = redis_client(
        args.redis,
        socket_connect_timeout=args.timeout or None,
        socket_timeout=30,
        decode_responses=True,
    )
    keys = RedisKeys(args.redis_prefix)
    try:
        client.ping()
        recs = load_recommendations(client, keys)
        summaries = load_summaries(client, keys)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        msg = f"cannot reach Redis at {safe_url(args.redis)} ({exc}); set --redis or HCP_REDIS_URL"
        raise SinkUnavailableError(msg) from exc
    finally:
        client.close()
    total = recs.height
    recs = _select(recs, args)
    shown = recs if args.limit <= 0 else recs.head(args.limit)
    if args.json:
        out = {
            "summary": summaries,
            "total_devices": total,
            "matched": recs.height,
            "recommendations": shown.to_dicts(),
        }
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    _print_summary(summaries)
    print()
    _print_recs(shown)
    print(f"\nshowing {shown.height} of {recs.height} matching ({total} devices)")
    return 0


# Returns the hashes' fields as one string per call (fields joined by \x1f, hashes by
# \x1e): a few large replies instead of millions of small ones keeps 300,000 devices a
# matter of seconds. Values never contain these control characters.
_READ_LUA = """
local rows = {}
local n = #ARGV
for i = 1, #KEYS do
  local vals = redis.call('HMGET', KEYS[i], unpack(ARGV))
  for j = 1, n do
    if not vals[j] then vals[j] = '' end
  end
  rows[i] = table.concat(vals, '\\31')
end
return table.concat(rows, '\\30')
"""


def load_recommendations(client: redis.Redis, keys: RedisKeys, batch: int = 2_000) -> pl.DataFrame:
    """Every ``rec:*`` hash as a DataFrame with typed columns (REC_SCHEMA)."""
    read = client.register_script(_READ_LUA)
    found = list(client.scan_iter(f"{keys.rec}*", count=10_000))
    lines: list[str] = []
    for i in range(0, len(found), batch):
        blob = read(keys=found[i : i + batch], args=REC_FIELDS)
        if isinstance(blob, bytes):
            blob = blob.decode()
        lines.extend(blob.split("\x1e"))
    split = (
        pl.Series("row", lines, dtype=pl.String)
        .str.split_exact("\x1f", len(REC_FIELDS) - 1)
        .struct.rename_fields(REC_FIELDS)
        .struct.unnest()
    )
    return split.select(
        pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).cast(t, strict=False).alias(c)
        for c, t in REC_SCHEMA.items()
    ).filter(pl.col("device_id").is_not_null())


def load_summaries(client: redis.Redis, keys: RedisKeys) -> dict[str, Any]:
    """The fleet summary and one per site, with numbers parsed."""
    sites = sorted(client.smembers(keys.sites))
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.fleet_summary)
    for site in sites:
        pipe.hgetall(keys.site_summary(site))
    fleet, *per_site = pipe.execute()
    return {
        "fleet": _typed(fleet) if fleet else None,
        "sites": [_typed(s) for s in per_site if s],
    }


def _typed(raw: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name in _TEXT_FIELDS or value == "":
            out[name] = value or None
        elif name in _INT_FIELDS:
            out[name] = int(value)
        else:
            out[name] = float(value)
    return out


def _select(recs: pl.DataFrame, args: argparse.Namespace) -> pl.DataFrame:
    if args.site:
        recs = recs.filter(pl.col("site").is_in(args.site))
    if args.action:
        recs = recs.filter(pl.col("action").is_in(args.action))
    if args.type:
        recs = recs.filter(pl.col("device_type") == args.type)
    column, descending = _SORTS[args.sort]
    if args.reverse:
        descending = not descending
    return recs.sort([column, "device_id"], descending=[descending, False], nulls_last=True)


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _money(x: float | None) -> str:
    return "-" if x is None else f"{x:,.4f}"


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(fmt(headers))
    for row in rows:
        print(fmt(row))


def _print_summary(summaries: dict[str, Any]) -> None:
    headers = [
        "summary",
        "window end",
        "devices",
        *(f"n_{a}" for a in ACTIONS),
        "revenue $/h",
        "cost $/h",
        "net $/h",
        "running kW",
    ]
    entries = []
    if summaries["fleet"]:
        entries.append(("fleet", summaries["fleet"]))
    entries += [(f"site {s['site']}", s) for s in summaries["sites"]]
    if not entries:
        print("no summaries yet")
        return
    rows = [
        [
            label,
            _iso(s.get("window_end")),
            str(s.get("devices", 0)),
            *(str(s.get(f"n_{a}", 0)) for a in ACTIONS),
            _money(s.get("revenue_usd_hr")),
            _money(s.get("cost_usd_hr")),
            _money(s.get("net_usd_hr")),
            f"{(s.get('running_power_w') or 0.0) / 1e3:,.1f}",
        ]
        for label, s in entries
    ]
    _table(headers, rows, right=set(range(2, len(headers))))


def _print_recs(recs: pl.DataFrame) -> None:
    headers = [
        "device",
        "type",
        "site",
        "action",
        "reason",
        "revenue $/h",
        "cost $/h",
        "net $/h",
        "score",
        "window end",
    ]
    rows = [
        [
            r["device_id"],
            r["device_type"] or "-",
            r["site"] or "-",
            r["action"] or "-",
            r["reason"] or "-",
            _money(r["revenue_usd_hr"]),
            _money(r["cost_usd_hr"]),
            _money(r["net_usd_hr"]),
            "-" if r["score"] is None else f"{r['score']:.1f}",
            _iso(r["window_end"]),
        ]
        for r in recs.iter_rows(named=True)
    ]
    if not rows:
        print("no recommendations match")
        return
    _table(headers, rows, right={5, 6, 7, 8})
