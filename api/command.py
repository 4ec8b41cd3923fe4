"""``hcp api``: serve the HTTP API; ``hcp api keys create|list|revoke``: manage its keys."""

from __future__ import annotations

import argparse
import logging
import sys

import psycopg

from api.keys import ROLES, create_key, list_keys, revoke_key
from api.settings import ApiSettings, add_api_args
from hcp.config import env_flag
from hcp.errors import ConfigError, SinkUnavailableError
from hcp.settings import add_settings
from sinks.postgres.schema import apply_migrations, connect, ensure_database, redact_dsn

__all__ = ["register", "serve"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "api",
        help="serve the HTTP API (SPEC section 6); `hcp api keys` manages its keys",
        description=(
            "Serve the optimizer and orchestrator endpoints, the live streams and /metrics "
            "(docs/api.md). Current state comes from Redis, history from PostgreSQL, "
            "workload requests go to Kafka."
        ),
    )
    add_api_args(parser)
    env_flag(parser, "--access-log", env="HCP_API_ACCESS_LOG", help="log every request")
    parser.set_defaults(func=_serve)
    sub = parser.add_subparsers(dest="api_command", metavar="ACTION")
    keys = sub.add_parser("keys", help="create, list or revoke API keys")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create", help="make a key; prints it (once) as the last line of stdout"
    )
    create.add_argument("--role", required=True, choices=ROLES, help="admin or customer")
    create.add_argument("--customer", help="the customer a customer key acts for")
    create.set_defaults(func=_create)
    listing = actions.add_parser("list", help="list keys (ids, roles, customers; never keys)")
    listing.set_defaults(func=_list)
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", help="the key's id (`hcp api keys list`)")
    revoke.set_defaults(func=_revoke)
    for leaf in (create, listing, revoke):
        add_settings(leaf, "pg")


def _db(dsn: str) -> psycopg.Connection:
    try:
        ensure_database(dsn)
        apply_migrations(dsn)
    except psycopg.Error as exc:
        msg = f"migrating PostgreSQL at {redact_dsn(dsn)} failed: {type(exc).__name__}"
        raise SinkUnavailableError(msg) from None
    return connect(dsn, connect_timeout=5)


def _create(args: argparse.Namespace) -> int:
    if args.role == "admin" and args.customer:
        raise ConfigError("--customer is for customer keys only")
    if args.role == "customer" and not args.customer:
        raise ConfigError("a customer key needs --customer ID")
    with _db(args.pg) as conn:
        key_id, key = create_key(conn, args.role, args.customer)
    who = f" for customer {args.customer}" if args.customer else ""
    print(f"created {args.role} key {key_id}{who}; it is shown once, store it now:")
    print(key)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _db(args.pg) as conn:
        records = list_keys(conn)
    print(f"{'key_id':<10} {'role':<9} {'customer':<20} {'created (UTC)':<20} revoked")
    for r in records:
        revoked = r.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if r.revoked_at else "-"
        print(
            f"{r.key_id:<10} {r.role:<9} {r.customer or '-':<20} "
            f"{r.created_at.strftime('%Y-%m-%d %H:%M:%S'):<20} {revoked}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with _db(args.pg) as conn:
        if not revoke_key(conn, args.key_id):
            raise ConfigError(f"no active key with id {args.key_id!r}")
    print(f"revoked key {args.key_id}")
    return 0


def tls_files(settings: ApiSettings) -> dict[str, str]:
    """uvicorn's ``ssl_certfile``/``ssl_keyfile``, checked now so a bad pair is one line."""
    if not settings.tls_cert and not settings.tls_key:
        return {}
    if not (settings.tls_cert and settings.tls_key):
        msg = "--tls-cert and --tls-key (HCP_API_TLS_CERT / HCP_API_TLS_KEY) go together"
        raise ConfigError(msg)
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_cert, settings.tls_key, password=lambda: b""
        )
    except OSError as exc:
        reason = exc.strerror or getattr(exc, "reason", None) or str(exc)
        msg = (f"cannot serve HTTPS with --tls-cert {settings.tls_cert} and --tls-key "
               f"{settings.tls_key}: {reason} (a missing file, not PEM, or a key that does "
               "not match the certificate)")
        raise ConfigError(msg) from None
    return {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}


def serve(settings: ApiSettings, *, access_log: bool = False, ready: object = None) -> None:
    """Run the API in this process until interrupted."""
    import uvicorn

    from api.app import create_app

    tls = tls_files(settings)
    config = uvicorn.Config(
        create_app(settings),
        **tls,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=access_log,
        log_level=logging.getLogger().getEffectiveLevel(),
        timeout_graceful_shutdown=2,
        lifespan="on",
    )
    uvicorn.Server(config).run()


def _serve(args: argparse.Namespace) -> int:
    settings = ApiSettings.from_args(args)
    if not 0 <= settings.port <= 65535:
        print(f"hcp api: error: --port must be 0-65535, got {settings.port}", file=sys.stderr)
        return 2
    serve(settings, access_log=args.access_log)
    return 0
