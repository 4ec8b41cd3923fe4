"""``hcp audit``: print the audit trail (every API write and fleet command), oldest first."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

import psycopg

from api.audit import list_audit
from hcp.config import positive_int
from hcp.errors import ConfigError, SinkUnavailableError
from hcp.settings import add_settings
from sinks.postgres.schema import apply_migrations, connect, redact_dsn

__all__ = ["register"]


def _since(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO time such as 2026-01-31T12:00, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="print the audit trail: who submitted, cancelled, made keys, set quotas, "
             "which commands the job sent",
        description="Rows of audit_log (append-only), the newest --limit, oldest first.",
    )
    parser.add_argument("--since", type=_since, help="only rows at or after this time (UTC)")
    parser.add_argument("--actor", help="only this actor (key:<id>, cli:<user>, job)")
    parser.add_argument("--action", help="only this action (e.g. workload.cancel)")
    parser.add_argument("--limit", type=positive_int, default=100, help="at most this many rows")
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    add_settings(parser, "pg")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        apply_migrations(args.pg)
        with connect(args.pg, connect_timeout=5) as conn:
            rows = list_audit(conn, args.since, args.actor, args.action, args.limit)
    except psycopg.Error as exc:
        msg = f"reading the audit trail at {redact_dsn(args.pg)} failed: {type(exc).__name__}"
        raise SinkUnavailableError(msg) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for rid, at, actor, action, target, request_id, detail in rows:
        if args.json:
            print(json.dumps({"id": rid, "at": at.isoformat(), "actor": actor, "action": action,
                              "target": target, "request_id": request_id, "detail": detail},
                             sort_keys=True))
        else:
            print(f"{at:%Y-%m-%d %H:%M:%S} {actor:<16} {action:<18} {target:<24} "
                  f"{request_id} {json.dumps(detail, sort_keys=True)}")
    return 0
