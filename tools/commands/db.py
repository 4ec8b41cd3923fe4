"""``hcp db init``: create or upgrade the history schema and say which path it took."""

from __future__ import annotations

import argparse

import psycopg

from hcp.errors import SinkUnavailableError
from hcp.settings import add_settings
from sinks.postgres.schema import apply_migrations, ensure_database, redact_dsn

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "db",
        help="manage the PostgreSQL / TimescaleDB history schema",
        description="Manage the history schema (the tables of docs/contract.md section 4).",
    )
    actions = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init",
        help="apply the schema migrations (idempotent)",
        description=(
            "Apply the versioned migrations in sinks/postgres/migrations. Uses TimescaleDB "
            "hypertables, compression, retention and a continuous aggregate when the "
            "timescaledb extension is available, plain tables with BRIN indexes otherwise. "
            "Creates the database itself when it does not exist. Running it again is a no-op."
        ),
    )
    add_settings(init, "pg")
    init.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    try:
        if ensure_database(args.pg):
            print(f"created database at {redact_dsn(args.pg)}")
        path = apply_migrations(args.pg)
    except psycopg.Error as exc:
        msg = f"migrating PostgreSQL at {redact_dsn(args.pg)} failed: {exc}"
        raise SinkUnavailableError(msg) from exc
    label = "TimescaleDB (hypertables)" if path == "timescaledb" else "plain PostgreSQL (BRIN)"
    print(f"history schema ready at {redact_dsn(args.pg)}: {path} path, {label}")
    return 0
