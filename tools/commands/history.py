"""``hcp history``: what each device or site earned over a time range, from stored decisions.

Profit comes from the ``recommendations`` table: every row holds a window's revenue, cost
and net as USD/h rates, so the USD earned is the rate times the window's length. A window
belongs to the range when its ``window_end`` lies in ``(since, until]``. Without
``--since``/``--until`` the range is the last 24 h of stored data (not of the wall clock),
so replayed or simulated history is reported the same way as live history.

``--report compliance`` reads the control loop's tables instead (``device_compliance``,
``site_compliance``, docs/control-loop.md): windows judged and out of step, flagged
windows, realised curtailment savings, planned vs actual net, commanded vs observed power.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg

from hcp.config import env_arg
from hcp.errors import ConfigError, SinkUnavailableError
from hcp.settings import add_settings
from sinks.postgres.schema import connect, redact_dsn, require_schema

__all__ = ["compliance", "profitability", "register"]

_HOURS = "(EXTRACT(EPOCH FROM (window_end - window_start))::double precision / 3600.0)"
_SUMS = f"""
    count(*) AS windows,
    sum({_HOURS}) AS device_hours,
    sum(revenue_usd_hr * {_HOURS}) AS revenue_usd,
    sum(cost_usd_hr * {_HOURS}) AS cost_usd,
    sum(net_usd_hr * {_HOURS}) AS net_usd,
    CASE WHEN sum(revenue_usd_hr * {_HOURS}) > 0
         THEN sum(net_usd_hr * {_HOURS}) / sum(revenue_usd_hr * {_HOURS}) * 100 END
        AS margin_pct"""
_BY_DEVICE = f"""
SELECT device_id, device_type, site, model, {_SUMS},
    (array_agg(action ORDER BY window_end DESC))[1] AS last_action
FROM recommendations WHERE {{where}}
GROUP BY device_id, device_type, site, model
ORDER BY net_usd DESC NULLS LAST, device_id"""
_BY_SITE = f"""
SELECT site,
    count(DISTINCT device_id) FILTER (WHERE device_type = 'asic') AS asics,
    count(DISTINCT device_id) FILTER (WHERE device_type = 'gpu') AS gpus, {_SUMS}
FROM recommendations WHERE {{where}}
GROUP BY site
ORDER BY net_usd DESC NULLS LAST, site"""

_DEVICE_HOURS = "(EXTRACT(EPOCH FROM (window_end - window_start))::double precision / 3600.0)"
# The agents' results (hcp.fleet.command_results) in the same range say why a device is
# out of step: its last command failed, was only a dry run, or no agent answered (null).
_COMPLIANCE_BY_DEVICE = f"""
WITH judged AS (
SELECT device_id, device_type, site,
    count(*) AS windows,
    count(*) FILTER (WHERE compliant IS NOT NULL) AS judged,
    count(*) FILTER (WHERE NOT compliant) AS out_of_step,
    count(*) FILTER (WHERE flagged) AS flagged_windows,
    max(misses) AS max_misses,
    sum(savings_usd) AS savings_usd,
    sum(planned_net_usd_hr * {_DEVICE_HOURS}) AS planned_net_usd,
    sum(actual_net_usd_hr * {_DEVICE_HOURS}) AS actual_net_usd,
    sum(commanded_power_w * {_DEVICE_HOURS}) / 1000.0 AS commanded_kwh,
    sum(observed_power_w * {_DEVICE_HOURS}) / 1000.0 AS observed_kwh
FROM device_compliance WHERE {{where}}
GROUP BY device_id, device_type, site)
SELECT judged.*, agent.commands_applied, agent.commands_failed,
    agent.last_result, agent.last_result_reason
FROM judged LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE status = 'applied') AS commands_applied,
        count(*) FILTER (WHERE status = 'failed') AS commands_failed,
        (array_agg(status ORDER BY ts DESC, command_position DESC))[1] AS last_result,
        (array_agg(reason ORDER BY ts DESC, command_position DESC))[1] AS last_result_reason
    FROM command_results r
    WHERE r.device_id = judged.device_id AND r.ts > %(since)s AND r.ts <= %(until)s
) agent ON true
ORDER BY flagged_windows DESC, out_of_step DESC, device_id"""
_COMPLIANCE_BY_SITE = """
SELECT site,
    count(*) AS windows,
    avg(commanded_kw) AS avg_commanded_kw,
    avg(observed_kw) AS avg_observed_kw,
    max(noncompliant) AS max_out_of_step,
    max(flagged) AS max_flagged,
    sum(savings_usd) AS savings_usd,
    sum(planned_net_usd) AS planned_net_usd,
    sum(actual_net_usd) AS actual_net_usd
FROM site_compliance WHERE {where}
GROUP BY site
ORDER BY site"""


def _iso_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        msg = f"expected an ISO 8601 time such as 2026-01-31T12:00Z, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "history",
        help="profitability per device or per site over a time range",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings(parser, "pg")
    env_arg(
        parser,
        "--by",
        env="HCP_HISTORY_BY",
        default="device",
        choices=("device", "site"),
        help="group rows by device or by site",
    )
    env_arg(
        parser,
        "--report",
        env="HCP_HISTORY_REPORT",
        default="profit",
        choices=("profit", "compliance"),
        help="profit (recommendations) or compliance (the control loop's tables)",
    )
    env_arg(parser, "--site", env="HCP_HISTORY_SITE", help="only this site")
    env_arg(parser, "--device", env="HCP_HISTORY_DEVICE", help="only this device id")
    env_arg(
        parser,
        "--since",
        env="HCP_HISTORY_SINCE",
        type=_iso_time,
        help="start, ISO 8601; naive times are UTC (default: 24 h before --until)",
    )
    env_arg(
        parser,
        "--until",
        env="HCP_HISTORY_UNTIL",
        type=_iso_time,
        help="end, ISO 8601 (default: the newest stored window end)",
    )
    env_arg(
        parser,
        "--export",
        env="HCP_HISTORY_EXPORT",
        type=Path,
        metavar="FILE",
        help="also write the full-precision table to FILE (.csv or .parquet)",
    )
    parser.set_defaults(func=_run)


def profitability(
    conn: psycopg.Connection,
    *,
    by: str = "device",
    since: datetime | None = None,
    until: datetime | None = None,
    site: str | None = None,
    device: str | None = None,
) -> tuple[pl.DataFrame, datetime | None, datetime | None]:
    """Profit per device or site; returns the table and the range actually used."""
    query = _BY_DEVICE if by == "device" else _BY_SITE
    return _windowed(conn, "recommendations", query, since, until, site, device)


def compliance(
    conn: psycopg.Connection,
    *,
    by: str = "device",
    since: datetime | None = None,
    until: datetime | None = None,
    site: str | None = None,
    device: str | None = None,
) -> tuple[pl.DataFrame, datetime | None, datetime | None]:
    """Compliance and realised value per device or site; the table and the range used."""
    if by == "device":
        return _windowed(conn, "device_compliance", _COMPLIANCE_BY_DEVICE, since, until, site,
                         device)
    # Site rows have no device to filter on.
    return _windowed(conn, "site_compliance", _COMPLIANCE_BY_SITE, since, until, site, None)


def _windowed(
    conn: psycopg.Connection,
    table: str,
    query: str,
    since: datetime | None,
    until: datetime | None,
    site: str | None,
    device: str | None,
) -> tuple[pl.DataFrame, datetime, datetime]:
    """``query`` over ``table``'s windows in a range: by default the 24 h up to its latest."""
    if until is None:
        row = conn.execute(f"SELECT max(window_end) FROM {table}").fetchone()
        until = row[0] if row and row[0] is not None else datetime.now(UTC)
    if since is None:
        since = until - timedelta(hours=24)
    clauses = ["window_end > %(since)s", "window_end <= %(until)s"]
    params: dict[str, object] = {"since": since, "until": until}
    if site:
        clauses.append("site = %(site)s")
        params["site"] = site
    if device:
        clauses.append("device_id = %(device)s")
        params["device"] = device
    with conn.cursor() as cur:
        cur.execute(query.format(where=" AND ".join(clauses)), params)
        names = [d.name for d in cur.description or []]
        rows = cur.fetchall()
    return pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None), since, until


def _run(args: argparse.Namespace) -> int:
    if args.since and args.until and args.since >= args.until:
        msg = (
            f"--since ({args.since.isoformat()}) must be before --until ({args.until.isoformat()})"
        )
        raise ConfigError(msg)
    export: Path | None = args.export
    if export is not None and export.suffix.lower() not in (".csv", ".parquet"):
        msg = f"--export needs a .csv or .parquet file name, got {str(export)!r}"
        raise ConfigError(msg)
    if export is not None and not export.absolute().parent.is_dir():
        # Checked before the query: finding out after a long query wastes it.
        msg = f"--export {export}: directory {export.absolute().parent} does not exist"
        raise ConfigError(msg)
    with connect(args.pg) as conn:
        require_schema(conn, args.pg)
        query = profitability if args.report == "profit" else compliance
        try:
            frame, since, until = query(
                conn,
                by=args.by,
                since=args.since,
                until=args.until,
                site=args.site,
                device=args.device,
            )
        except psycopg.Error as exc:
            msg = f"history query on {redact_dsn(args.pg)} failed: {exc}"
            raise SinkUnavailableError(msg) from exc
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    title = "profitability" if args.report == "profit" else "compliance and realised value"
    print(
        f"{title} by {args.by}, window ends in ({since:%Y-%m-%d %H:%M:%S}, "
        f"{until:%Y-%m-%d %H:%M:%S}] UTC; USD"
    )
    if frame.is_empty():
        print(f"no stored {'recommendations' if args.report == 'profit' else 'compliance'} "
              "in this range")
    else:
        shown = frame.with_columns(pl.selectors.float().round(2))
        with pl.Config(
            tbl_rows=-1,
            tbl_cols=-1,
            tbl_hide_dataframe_shape=True,
            tbl_hide_column_data_types=True,
            tbl_width_chars=200,
        ):
            print(shown)
    if export is not None:
        if export.suffix.lower() == ".csv":
            frame.write_csv(export)
        else:
            frame.write_parquet(export)
        print(f"wrote {frame.height} rows to {export}")
    return 0
