"""Certificates and private TLS servers for the TLS/auth tests, made with the openssl CLI.

:func:`make_certs` writes a test CA, a server certificate for ``localhost``/``127.0.0.1``,
a client certificate (its CN is the PostgreSQL user it logs in as) and a second, unrelated
CA for the wrong-CA cases. The servers (Redis with ``--tls-port``, a PostgreSQL cluster with
``ssl = on``, stunnel in front of a Tansu broker) listen on free loopback ports in tmp dirs
and are stopped by the fixture that started them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tools.broker import EmbeddedBroker, free_port

__all__ = ["Certs", "make_certs", "private_pg", "redis_tls", "stunnel_kafka", "wait_port"]


@dataclass(frozen=True)
class Certs:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting it must fail


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key_and_csr(cwd: Path, name: str, cn: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=cwd)


def _ca(cwd: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN=hcp test {name}", cwd=cwd)


def _sign(cwd: Path, name: str, ext: str) -> None:
    (cwd / f"{name}.ext").write_text(ext + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=cwd)


def make_certs(where: Path, client_cn: str = "hcp_cert") -> Certs:
    where.mkdir(parents=True, exist_ok=True)
    _ca(where, "ca")
    _ca(where, "other_ca")
    _key_and_csr(where, "server", "localhost")
    _sign(where, "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
          "extendedKeyUsage=serverAuth")
    _key_and_csr(where, "client", client_cn)
    _sign(where, "client", "extendedKeyUsage=clientAuth")
    for key in where.glob("*.key"):
        key.chmod(0o600)
    return Certs(where, where / "ca.pem", where / "server.pem", where / "server.key",
                 where / "client.pem", where / "client.key", where / "other_ca.pem")


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            msg = f"server exited with {proc.returncode} before listening on {port}"
            raise RuntimeError(msg)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    msg = f"nothing listened on {port} within {timeout_s} s"
    raise RuntimeError(msg)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def redis_tls(certs: Certs, user: str, password: str) -> Iterator[int]:
    """A private redis-server, TLS only (``--port 0``), whose one enabled user is ``user``."""
    port = free_port()
    acl = certs.dir / "users.acl"
    acl.write_text(f"user default off\nuser {user} on >{password} ~* &* +@all\n")
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
         "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "optional",
         "--save", "", "--appendonly", "no", "--dir", str(certs.dir),
         "--aclfile", str(acl),
         "--logfile", str(certs.dir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc)
        yield port
    finally:
        _stop(proc)


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        msg = f"PostgreSQL server binaries ({name}) not found under /usr/lib/postgresql"
        raise RuntimeError(msg)
    return str(found[-1])


@contextlib.contextmanager
def private_pg(certs: Certs, where: Path, password_user: str, password: str) -> Iterator[int]:
    """A private PostgreSQL cluster with ``ssl = on``: ``hcp_cert`` logs in by client
    certificate, ``password_user`` by SCRAM password, both over TLS only."""
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        # pytest's tmp dirs are private to root; the server runs as postgres.
        where = Path(tempfile.mkdtemp(prefix="hcp-tls-pg-"))
    where.mkdir(parents=True, exist_ok=True)
    data, sock = where / "data", where / "sock"
    sock.mkdir(exist_ok=True)
    if as_pg:
        shutil.chown(where, "postgres")
        shutil.chown(sock, "postgres")
    subprocess.run([*as_pg, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    for src, name in ((certs.server_cert, "server.crt"), (certs.server_key, "server.key"),
                      (certs.ca, "root.crt")):
        shutil.copy(src, data / name)
        if as_pg:
            shutil.chown(data / name, "postgres")
        (data / name).chmod(0o600)
    (data / "pg_hba.conf").write_text(
        "local all postgres trust\n"
        "hostssl all hcp_cert 127.0.0.1/32 cert\n"
        f"hostssl all {password_user} 127.0.0.1/32 scram-sha-256\n"
    )
    port = free_port()
    opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c ssl=on "
            "-c ssl_cert_file=server.crt -c ssl_key_file=server.key -c ssl_ca_file=root.crt "
            "-c fsync=off -c shared_buffers=16MB -c max_connections=30")
    subprocess.run([*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l",
                    str(where / "pg.log"), "-w", "start"], check=True, capture_output=True)
    try:
        psql = [*as_pg, _pg_bin("psql"), "-h", str(sock), "-p", str(port), "-U", "postgres",
                "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
        for stmt in ("CREATE ROLE hcp_cert LOGIN CREATEDB",
                     f"CREATE ROLE {password_user} LOGIN CREATEDB PASSWORD '{password}'",
                     "CREATE DATABASE hcp_tls OWNER hcp_cert"):
            subprocess.run([*psql, "-c", stmt], check=True, capture_output=True)
        yield port
    finally:
        subprocess.run([*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        if as_pg:
            shutil.rmtree(where, ignore_errors=True)


@contextlib.contextmanager
def stunnel_kafka(certs: Certs, where: Path) -> Iterator[int]:
    """A Tansu broker reachable only through stunnel's TLS port, which it advertises."""
    tls_port = free_port()
    broker = EmbeddedBroker(advertised_port=tls_port)
    where.mkdir(parents=True, exist_ok=True)
    conf = where / "stunnel.conf"
    conf.write_text(
        f"foreground = yes\npid =\ndebug = 3\noutput = {where / 'stunnel.log'}\n"
        f"[kafka]\naccept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{broker.port}\n"
        f"cert = {certs.server_cert}\nkey = {certs.server_key}\n"
    )
    with broker:
        proc = subprocess.Popen(["stunnel4", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_port(tls_port, proc)
            yield tls_port
        finally:
            _stop(proc)
