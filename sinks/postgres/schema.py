"""The HCP history schema: versioned plain-SQL migrations, applied once, on either path.

Migration files live in ``sinks/postgres/migrations`` and are named ``NNNN_name.sql`` (run on every
database) or ``NNNN_name.timescaledb.sql`` / ``NNNN_name.postgres.sql`` (the two variants
of one version; exactly one runs). The path is chosen once per database: TimescaleDB when
the ``timescaledb`` extension is installed or can be created, plain PostgreSQL otherwise.
Later runs keep the path recorded in ``schema_migrations`` so one database never mixes them.

Each version runs in its own transaction together with its ``schema_migrations`` row, so a
failed migration leaves nothing behind; a session advisory lock serializes concurrent
appliers (several workers starting at once), and applying twice is a no-op.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import psycopg
from psycopg import conninfo, sql

from hcp.errors import ConfigError, HcpError, SinkUnavailableError

__all__ = [
    "MIGRATIONS_DIR",
    "PATH_POSTGRES",
    "PATH_TIMESCALE",
    "Migration",
    "SchemaMissingError",
    "apply_migrations",
    "connect",
    "ensure_database",
    "load_migrations",
    "plan_migrations",
    "redact_dsn",
    "require_database_name",
    "require_schema",
    "split_statements",
]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
PATH_TIMESCALE = "timescaledb"
PATH_POSTGRES = "postgres"
_COMMON = "common"
# Any constant works as long as every HCP migrator uses the same one ("HCPDB" in ASCII).
_LOCK_KEY = 0x48_43_50_44_42
# Databases every server has for its own use: HCP's tables never belong there.
MAINTENANCE_DBS = ("postgres", "template0", "template1")
_TIMESCALE_EXTENSION = "timescaledb"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(timescaledb|postgres))?\.sql$")

_SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    path        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class SchemaMissingError(HcpError):
    """The history tables do not exist in the database (run `hcp db init`)."""


class _ExtensionClosedConnection(Exception):  # noqa: N818 - internal signal, not an error
    """Creating the extension failed and the server closed the connection (a FATAL)."""


@dataclass(frozen=True)
class Migration:
    """One version's statements for one path (``common``, ``timescaledb`` or ``postgres``)."""

    version: int
    name: str
    path: str
    statements: tuple[str, ...]
    checksum: str


def redact_dsn(dsn: str) -> str:
    """The DSN with any password removed, safe to print in error messages."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        user = f"{parts.username}@" if parts.username else ""
        # libpq also takes password= (and sslpassword=) as query parameters.
        query = "&".join(
            f"{k}={v}" for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if k not in ("password", "sslpassword")
        )
        return urlunsplit((parts.scheme, f"{user}{host}", parts.path, query, ""))
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    params.pop("password", None)
    params.pop("sslpassword", None)
    return conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


def connect(dsn: str, *, connect_timeout: int = 10, autocommit: bool = True) -> psycopg.Connection:
    """Open a connection, mapping failure to a one-line :class:`SinkUnavailableError`."""
    try:
        return psycopg.connect(dsn, connect_timeout=connect_timeout, autocommit=autocommit)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = (
            f"cannot connect to PostgreSQL at {redact_dsn(dsn)} ({reason}); "
            "set --pg or HCP_PG_DSN and check that the server is running"
        )
        raise SinkUnavailableError(msg) from exc


def require_database_name(dsn: str) -> str:
    """The DSN's database name; a :class:`ConfigError` if it names none or a maintenance DB.

    Without a name libpq connects to the database named like the user, usually the
    ``postgres`` maintenance database, and the history tables would be installed there.
    """
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        msg = f"--pg {redact_dsn(dsn)!r} is not a PostgreSQL DSN: {exc}"
        raise ConfigError(msg) from None
    name = str(params.get("dbname") or "")
    if not name:
        msg = (
            f"--pg {redact_dsn(dsn)} names no database; add one, e.g. "
            f"postgresql://HOST:5432/hcp (it is created if missing)"
        )
        raise ConfigError(msg)
    if name in MAINTENANCE_DBS:
        msg = (
            f"--pg {redact_dsn(dsn)} names the {name!r} maintenance database; "
            "give HCP a database of its own, e.g. .../hcp (it is created if missing)"
        )
        raise ConfigError(msg)
    return name


def ensure_database(dsn: str, *, maintenance_db: str = "postgres") -> bool:
    """Create the DSN's database when the server says it does not exist; True if created.

    Connects to ``maintenance_db`` on the same server with the same credentials.
    """
    try:
        psycopg.connect(dsn, connect_timeout=10).close()
        return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            return False  # unreachable etc.: connect() reports it with the DSN and variable
    params = conninfo.conninfo_to_dict(dsn)
    name = str(params.get("dbname") or "")
    if not name:
        return False
    params["dbname"] = maintenance_db
    with psycopg.connect(conninfo.make_conninfo(**params), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    log.info("created database %s", name)
    return True


def require_schema(conn: psycopg.Connection, dsn: str) -> None:
    """Raise :class:`SchemaMissingError` unless the migrations have created the tables."""
    row = conn.execute(
        "SELECT to_regclass('schema_migrations') IS NOT NULL "
        "AND to_regclass('recommendations') IS NOT NULL"
    ).fetchone()
    if not (row and row[0]):
        msg = (
            f"the history schema is missing in {redact_dsn(dsn)}; "
            "run `hcp db init` (with the same --pg / HCP_PG_DSN) first"
        )
        raise SchemaMissingError(msg)


def split_statements(sql: str) -> list[str]:
    """Split a migration file into statements.

    Statements end with ``;`` at the end of a line; our migration files keep semicolons
    out of literals and use no dollar-quoted bodies, so no SQL parser is needed.
    """
    statements = []
    for chunk in re.split(r";[ \t]*(?:\n|$)", sql):
        lines = [ln for ln in chunk.splitlines() if not ln.strip().startswith("--")]
        text = "\n".join(lines).strip()
        if text:
            statements.append(text)
    return statements


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration file in ``directory``, ordered by version then path."""
    found = []
    for file in sorted(directory.glob("*.sql")):
        match = _FILE_RE.match(file.name)
        if not match:
            msg = f"migration file name {file.name!r} does not match NNNN_name[.path].sql"
            raise ValueError(msg)
        sql = file.read_text(encoding="utf-8")
        found.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                path=match.group(3) or _COMMON,
                statements=tuple(split_statements(sql)),
                checksum=hashlib.sha256(sql.encode()).hexdigest()[:16],
            )
        )
    return sorted(found, key=lambda m: (m.version, m.path))


def plan_migrations(timescale: bool, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations one path runs, in order: one per version."""
    chosen = PATH_TIMESCALE if timescale else PATH_POSTGRES
    by_version: dict[int, list[Migration]] = {}
    for migration in load_migrations(directory):
        by_version.setdefault(migration.version, []).append(migration)
    plan = []
    for version in sorted(by_version):
        variants = {m.path: m for m in by_version[version]}
        if _COMMON in variants and len(variants) > 1:
            msg = f"migration {version:04d} has both a common file and path variants"
            raise ValueError(msg)
        if _COMMON in variants:
            plan.append(variants[_COMMON])
        elif chosen in variants:
            plan.append(variants[chosen])
        else:
            msg = f"migration {version:04d} has no {chosen} variant"
            raise ValueError(msg)
    return plan


def _recorded_path(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT path FROM schema_migrations WHERE path <> %s ORDER BY version LIMIT 1",
        (_COMMON,),
    ).fetchone()
    return None if row is None else str(row[0])


def _timescale_usable(conn: psycopg.Connection, extension: str) -> bool:
    """Whether the extension is installed here or can be created now.

    Raises :class:`_ExtensionClosedConnection` when trying closed the connection: a
    TimescaleDB that is installed but not in ``shared_preload_libraries`` fails with FATAL.
    """
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = %s", (extension,)).fetchone():
        return True
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = %s", (extension,)
    ).fetchone()
    if not available:
        return False
    try:
        # Available is not enough: it also has to be in shared_preload_libraries.
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension))
            )
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if conn.closed or conn.broken:
            raise _ExtensionClosedConnection(reason) from exc
        log.warning("%s is available but cannot be created (%s); using plain tables",
                    extension, reason)
        return False
    return True


def apply_migrations(
    dsn: str, *, directory: Path = MIGRATIONS_DIR, extension: str = _TIMESCALE_EXTENSION
) -> str:
    """Bring the database at ``dsn`` up to date; return the path taken.

    Returns ``"timescaledb"`` or ``"postgres"`` and logs it. Safe to call from several
    processes at once and as often as you like. Refuses a DSN without a database name or
    naming a maintenance database (:func:`require_database_name`). When creating the
    extension (``extension``: the one that picks the TimescaleDB path; a parameter for
    tests) closes the connection, the plain path is taken on a fresh connection and one
    warning says why.
    """
    require_database_name(dsn)
    try:
        return _apply(dsn, directory, extension)
    except _ExtensionClosedConnection as exc:
        log.warning(
            "CREATE EXTENSION %s failed and closed the connection (%s): is it missing from "
            "shared_preload_libraries? Using plain tables; add it there and restart the "
            "server to use TimescaleDB on a new database",
            extension, exc,
        )
        return _apply(dsn, directory, None)


def _apply(dsn: str, directory: Path, extension: str | None) -> str:
    """One attempt of :func:`apply_migrations`; ``extension`` None rules TimescaleDB out."""
    with connect(dsn) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(_SCHEMA_MIGRATIONS_DDL)
            path = _recorded_path(conn)
            if path is None:
                usable = extension is not None and _timescale_usable(conn, extension)
                path = PATH_TIMESCALE if usable else PATH_POSTGRES
            applied = {
                int(v): str(c)
                for v, c in conn.execute("SELECT version, checksum FROM schema_migrations")
            }
            ran = []
            for migration in plan_migrations(path == PATH_TIMESCALE, directory):
                if migration.version in applied:
                    if applied[migration.version] != migration.checksum:
                        log.warning(
                            "migration %04d_%s changed after it was applied; "
                            "migrations are append-only, add a new version instead",
                            migration.version,
                            migration.name,
                        )
                    continue
                with conn.transaction():
                    for statement in migration.statements:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, path, checksum) "
                        "VALUES (%s, %s, %s, %s)",
                        (migration.version, migration.name, migration.path, migration.checksum),
                    )
                ran.append(f"{migration.version:04d}_{migration.name}")
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    if ran:
        log.info("history schema on the %s path: applied %s", path, ", ".join(ran))
    else:
        log.info("history schema on the %s path: up to date", path)
    return path
