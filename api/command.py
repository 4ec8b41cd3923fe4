"""``hcp api``: serve the HTTP API; ``hcp api keys create|list|revoke``: manage its keys;
``hcp api customers set|list``: customer quotas. Every write is audited (api/audit.py)."""

from __future__ import annotations

import argparse
import logging
import re
import sys

import psycopg

from api.audit import cli_actor, record
from api.keys import ROLES, create_key, list_keys, revoke_key
from api.models import NAME
from api.quotas import Quota, list_quotas, set_quota
from api.settings import ApiSettings, add_api_args
from hcp.config import env_flag, non_negative_float
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
    customers = sub.add_parser("customers", help="set or list customer quotas")
    cactions = customers.add_subparsers(dest="customers_command", metavar="ACTION",
                                        required=True)
    cset = cactions.add_parser(
        "set", help="set a customer's quota (omitted limits become none)")
    cset.add_argument("name", help="the customer")
    cset.add_argument("--max-gpus", type=_non_negative_int, default=None,
                      help="GPUs the customer may hold at once (default: no limit)")
    cset.add_argument("--monthly-gpu-hours", type=non_negative_float, default=None,
                      help="GPU-hours per calendar month, UTC (default: no limit)")
    cset.set_defaults(func=_customers_set)
    clist = cactions.add_parser("list", help="list customer quotas")
    clist.set_defaults(func=_customers_list)
    for leaf in (create, listing, revoke, cset, clist):
        add_settings(leaf, "pg")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _customers_set(args: argparse.Namespace) -> int:
    if not re.match(NAME, args.name):
        raise ConfigError(f"invalid customer name {args.name!r}")
    quota = Quota(args.name, args.max_gpus, args.monthly_gpu_hours)
    with _db(args.pg) as conn, conn.transaction():
        set_quota(conn, quota)
        record(conn, cli_actor(), "quota.set", args.name, quota.doc())
    print(f"customer {args.name}: max_gpus {_limit(quota.max_gpus)}, "
          f"monthly_gpu_hours {_limit(quota.monthly_gpu_hours)}")
    return 0


def _limit(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def _customers_list(args: argparse.Namespace) -> int:
    with _db(args.pg) as conn:
        quotas = list_quotas(conn)
    print(f"{'customer':<24} {'max_gpus':>9} {'monthly_gpu_hours':>18}")
    for q in quotas:
        print(f"{q.customer:<24} {_limit(q.max_gpus):>9} {_limit(q.monthly_gpu_hours):>18}")
    return 0


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
    with _db(args.pg) as conn, conn.transaction():
        key_id, key = create_key(conn, args.role, args.customer)
        record(conn, cli_actor(), "key.create", key_id,
               {"role": args.role, "customer": args.customer})
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
    with _db(args.pg) as conn, conn.transaction():
        if not revoke_key(conn, args.key_id):
            raise ConfigError(f"no active key with id {args.key_id!r}")
        record(conn, cli_actor(), "key.revoke", args.key_id, {})
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
