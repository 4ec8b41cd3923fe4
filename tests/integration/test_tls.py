"""Connections an operator's security team accepts, tested against real TLS servers.

Certificates are made here (tests/support/tlskit.py). Redis listens on TLS only with an ACL
user; PostgreSQL has ``ssl = on`` with a client-certificate user and a SCRAM password user;
Kafka is a dedicated Tansu broker reachable only through stunnel, which it advertises; the
API serves HTTPS. Every case goes through HCP's own commands, and every failure must be one
line with no traceback and no secret in it.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from hcp.redis_client import redis_client
from tests.support.tlskit import Certs, make_certs, private_pg, redis_tls, stunnel_kafka
from tools.broker import free_port

REDIS_USER, REDIS_PASSWORD = "hcp_job", "redisPw7c1e"  # no "-": help text wraps there
PG_USER, PG_PASSWORD = "hcp_pw", "pgPw93ad"
KAFKA_SECRET = "kafkaPw51f0"  # a sasl.password the TLS listener never asks for
SECRETS = (REDIS_PASSWORD, PG_PASSWORD, KAFKA_SECRET)
HCP = [sys.executable, "-m", "tools"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    where = tmp_path_factory.mktemp("tls")
    where.chmod(0o755)  # the postgres user reads its copies below this
    return make_certs(where / "certs")


@pytest.fixture(scope="module")
def redis_port(certs: Certs) -> Iterator[int]:
    with redis_tls(certs, REDIS_USER, REDIS_PASSWORD) as port:
        yield port


@pytest.fixture(scope="module")
def pg_port(certs: Certs) -> Iterator[int]:
    with private_pg(certs, certs.dir.parent / "pg", PG_USER, PG_PASSWORD) as port:
        yield port


@pytest.fixture(scope="module")
def kafka_port(certs: Certs) -> Iterator[int]:
    with stunnel_kafka(certs, certs.dir.parent / "stunnel") as port:
        yield port


def rediss(port: int, ca: Path, password: str = REDIS_PASSWORD) -> str:
    return f"rediss://{REDIS_USER}:{password}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"


def cert_dsn(port: int, certs: Certs, ca: Path | None = None) -> str:
    return (f"host=127.0.0.1 port={port} dbname=hcp_tls user=hcp_cert sslmode=verify-full "
            f"sslrootcert={ca or certs.ca} sslcert={certs.client_cert} "
            f"sslkey={certs.client_key}")


def kafka_props(certs: Certs, ca: Path | None = None) -> Path:
    path = certs.dir / f"client-{(ca or certs.ca).stem}.properties"
    path.write_text(
        "# what an operator hands HCP: TLS to the broker, trusted by our CA\n"
        "security.protocol=SSL\n"
        f"ssl.ca.location={ca or certs.ca}\n"
        "ssl.endpoint.identification.algorithm=https\n"
    )
    return path


def hcp(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> (
        subprocess.CompletedProcess[str]):
    full = {**os.environ, "HCP_METRICS_PORT": "0", **(env or {})}
    return subprocess.run([*HCP, *args], capture_output=True, text=True, env=full,
                          timeout=timeout)


def assert_one_line_failure(proc: subprocess.CompletedProcess[str], *codes: int) -> str:
    assert proc.returncode in codes, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for secret in SECRETS:
        assert secret not in proc.stderr + proc.stdout
    return lines[0]


def test_job_round_trip_over_tls_everywhere(certs, redis_port, pg_port, kafka_port, tmp_path):
    """Simulators -> Kafka over TLS -> `hcp run --once` -> Redis over TLS as an ACL user
    and PostgreSQL by client certificate; nothing in any output repeats a secret."""
    prefix = f"tls{os.getpid()}:"
    env = {
        "HCP_KAFKA_CONFIG": str(kafka_props(certs)),
        "HCP_KAFKA_SASL_PASSWORD": KAFKA_SECRET,  # ignored by SSL; must never be shown
        "HCP_KAFKA_BOOTSTRAP": f"localhost:{kafka_port}",
        "HCP_TOPIC_PREFIX": "tls.",
        "HCP_REDIS_URL": rediss(redis_port, certs.ca),
        "HCP_REDIS_PREFIX": prefix,
        "HCP_PG_DSN": cert_dsn(pg_port, certs),
        "HCP_LATENESS_S": "0",
    }
    gen = hcp("generate", "--gpus", "2", "--asics", "4", "--sites", "1", "--duration", "180",
              "--speed", "max", "--partitions", "2", env=env)
    assert gen.returncode == 0, gen.stderr[-2000:]
    init = hcp("db", "init", env=env)
    assert init.returncode == 0, init.stderr[-2000:]
    run = hcp("--log-level", "DEBUG", "run", "--once", env=env, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    client = redis_client(env["HCP_REDIS_URL"], decode_responses=True)
    recs = [k for k in client.scan_iter(f"{prefix}rec:*")]
    assert len(recs) == 6, recs  # every simulated device has a recommendation
    with psycopg.connect(env["HCP_PG_DSN"]) as conn:
        rows = conn.execute("SELECT count(*) FROM recommendations").fetchone()[0]
        on_tls = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert on_tls.fetchone()[0] is True
    assert rows >= 6
    for out in (gen, init, run):
        for secret in SECRETS:
            assert secret not in out.stdout + out.stderr


def test_kafka_wrong_ca_is_one_line(certs, kafka_port):
    env = {"HCP_KAFKA_CONFIG": str(kafka_props(certs, certs.other_ca)),
           "HCP_KAFKA_SASL_PASSWORD": KAFKA_SECRET}
    proc = hcp("run", "--once", "--no-redis", "--no-pg", "--bootstrap",
               f"localhost:{kafka_port}", "--topic-prefix", "tlsbad.", env=env)
    line = assert_one_line_failure(proc, 1)
    assert "unreachable" in line
    assert "certificate verify failed" in line  # the reason, not only "transport failure"


def test_unknown_kafka_property_is_a_config_error(certs):
    proc = hcp("run", "--once", env={"HCP_KAFKA_SSL_CA_LOCATOIN": str(certs.ca)})
    line = assert_one_line_failure(proc, 2)
    assert '"ssl.ca.locatoin"' in line


def test_invalid_secret_value_is_redacted(certs):
    bad = certs.dir / "bad.properties"
    bad.write_text(f"sasl.password={KAFKA_SECRET}\nsasl.mechanism=PLAIN\n"
                   "security.protocol=SASL_SSL\n")
    proc = hcp("--kafka-config", str(bad), "run", "--once")
    assert_one_line_failure(proc, 2)  # no sasl.username: rejected, password not repeated


def test_redis_wrong_password_and_wrong_ca(certs, redis_port):
    cases = ((rediss(redis_port, certs.ca, password="not-" + REDIS_PASSWORD),
              "invalid username-password pair"),
             (rediss(redis_port, certs.other_ca), "CERTIFICATE_VERIFY_FAILED"))
    for url, reason in cases:
        proc = hcp("recommendations", "--redis", url, "--redis-prefix", "tlsnone:")
        line = assert_one_line_failure(proc, 1, 2)
        assert reason in line
        assert "not-" + REDIS_PASSWORD not in line


def test_redis_tls_from_variables(certs, redis_port):
    """HCP_REDIS_CA/CERT/KEY fill in what a bare rediss:// URL leaves out."""
    url = f"rediss://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/0"
    os.environ.update(HCP_REDIS_CA=str(certs.ca), HCP_REDIS_CERT=str(certs.client_cert),
                      HCP_REDIS_KEY=str(certs.client_key))
    try:
        assert redis_client(url).ping() is True
    finally:
        for name in ("HCP_REDIS_CA", "HCP_REDIS_CERT", "HCP_REDIS_KEY"):
            os.environ.pop(name)


def test_pg_password_user_and_failures(certs, pg_port):
    good = (f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{pg_port}/hcp_pw_db"
            f"?sslmode=verify-full&sslrootcert={certs.ca}")
    # The DSN names a database that does not exist: HCP creates it, keeping the TLS params.
    init = hcp("db", "init", "--pg", good)
    assert init.returncode == 0, init.stderr[-2000:]
    wrong_pw = good.replace(PG_PASSWORD, "not-" + PG_PASSWORD)
    line = assert_one_line_failure(hcp("db", "init", "--pg", wrong_pw), 1, 2)
    assert "not-" + PG_PASSWORD not in line
    wrong_ca = cert_dsn(pg_port, certs, ca=certs.other_ca)
    assert_one_line_failure(hcp("db", "init", "--pg", wrong_ca), 1, 2)


def _https_get(url: str, ca: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(url, context=context, timeout=5) as resp:
        return resp.read()


def test_api_over_https(certs, redis_port, pg_port, kafka_port):
    port = free_port()
    env = {**os.environ, "HCP_KAFKA_CONFIG": str(kafka_props(certs)),
           "HCP_KAFKA_SASL_PASSWORD": KAFKA_SECRET}
    proc = subprocess.Popen(
        [*HCP, "api", "--port", str(port), "--tls-cert", str(certs.server_cert),
         "--tls-key", str(certs.server_key), "--bootstrap", f"localhost:{kafka_port}",
         "--redis", rediss(redis_port, certs.ca), "--pg", cert_dsn(pg_port, certs)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 30
        health = None
        while time.monotonic() < deadline and health is None:
            try:
                health = json.loads(_https_get(f"https://localhost:{port}/api/v1/health",
                                               certs.ca))
            except OSError:
                time.sleep(0.2)
        assert health is not None, "the API never answered over HTTPS"
        # Redis as the ACL user over TLS, PostgreSQL by certificate, Kafka through stunnel.
        deps = health["dependencies"]
        assert set(deps) == {"redis", "postgresql", "broker"}, health
        assert all(d["ok"] for d in deps.values()), health
        metrics = _https_get(f"https://localhost:{port}/metrics", certs.ca).decode()
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _https_get(f"https://localhost:{port}/api/v1/health", certs.other_ca)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    for secret in SECRETS:
        assert secret not in metrics + out + err + json.dumps(health)


def test_api_tls_mismatch_is_one_line(certs):
    for cert, key in ((certs.server_cert, certs.client_key), (certs.server_cert, None),
                      (certs.dir / "missing.pem", certs.server_key)):
        args = ["api", "--port", "0", "--tls-cert", str(cert)]
        if key is not None:
            args += ["--tls-key", str(key)]
        line = assert_one_line_failure(hcp(*args), 2)
        assert "--tls-" in line


def test_help_never_shows_a_secret(certs):
    dsns = (f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1/x",
            f"host=127.0.0.1 dbname=x user={PG_USER} password={PG_PASSWORD}")
    for dsn in dsns:
        help_without_secrets(certs, dsn)


def help_without_secrets(certs: Certs, dsn: str) -> None:
    env = {"HCP_KAFKA_SASL_PASSWORD": KAFKA_SECRET,
           "HCP_REDIS_URL": rediss(6379, certs.ca),
           "HCP_PG_DSN": dsn}
    for args in (["--help"], ["run", "--help"], ["api", "--help"], ["demo", "--help"],
                 ["recommendations", "--help"]):
        out = hcp(*args, env=env)
        assert out.returncode == 0, out.stderr
        text = "".join((out.stdout + out.stderr).split())  # undo argparse's line wrapping
        if args != ["--help"]:
            assert "***" in text  # the URL or DSN is shown, its password masked
        for secret in SECRETS:
            assert secret not in text, (args, secret)
