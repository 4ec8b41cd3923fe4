"""The one place Kafka properties and Redis clients are configured (no servers needed)."""

from __future__ import annotations

import pytest

from hcp.errors import ConfigError
from hcp.kafka_config import check_kafka_config, kafka_conf, redact, user_properties
from hcp.redis_client import safe_url, tls_options


def test_file_then_variables_then_the_code(tmp_path, monkeypatch):
    props = tmp_path / "client.properties"
    props.write_text("# comment\n! also a comment\n\nsecurity.protocol = SSL\n"
                     "ssl.ca.location=/etc/ca.pem\nlinger.ms=50\n")
    monkeypatch.setenv("HCP_KAFKA_CONFIG", str(props))
    monkeypatch.setenv("HCP_KAFKA_SSL_CA_LOCATION", "/other/ca.pem")
    monkeypatch.setenv("HCP_KAFKA_BOOTSTRAP", "ignored:1")  # an HCP setting, not a property
    assert user_properties() == {"security.protocol": "SSL", "ssl.ca.location": "/other/ca.pem",
                                 "linger.ms": "50"}
    conf = kafka_conf("b:9092", {"linger.ms": 5})
    assert conf["bootstrap.servers"] == "b:9092"
    assert conf["linger.ms"] == 5  # HCP's own per-client tuning wins
    assert conf["security.protocol"] == "SSL"


def test_bad_lines_and_missing_file_are_config_errors(tmp_path, monkeypatch):
    bad = tmp_path / "bad.properties"
    bad.write_text("security.protocol SSL\n")
    monkeypatch.setenv("HCP_KAFKA_CONFIG", str(bad))
    with pytest.raises(ConfigError, match="line 1: expected key=value"):
        user_properties()
    monkeypatch.setenv("HCP_KAFKA_CONFIG", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="cannot read"):
        user_properties()


def test_unknown_property_and_secret_value_are_redacted(monkeypatch):
    monkeypatch.setenv("HCP_KAFKA_NO_SUCH_THING", "1")
    with pytest.raises(ConfigError, match=r'"no\.such\.thing"'):
        check_kafka_config()
    monkeypatch.delenv("HCP_KAFKA_NO_SUCH_THING")
    monkeypatch.setenv("HCP_KAFKA_SSL_KEY_PASSWORD", "s3cr3t-value")
    assert redact("x s3cr3t-value y") == "x *** y"


def test_redis_url_password_masked_and_tls_from_variables(monkeypatch):
    assert safe_url("rediss://u:pw@h:6380/0?ssl_ca_certs=/ca") == "rediss://u:***@h:6380/0?ssl_ca_certs=/ca"
    assert safe_url("redis://h:6379/0") == "redis://h:6379/0"
    monkeypatch.setenv("HCP_REDIS_CA", "/ca.pem")
    monkeypatch.setenv("HCP_REDIS_CERT", "/c.pem")
    assert tls_options("redis://h/0") == {}  # plain Redis: no TLS options
    assert tls_options("rediss://h/0") == {"ssl_ca_certs": "/ca.pem", "ssl_certfile": "/c.pem"}
    assert tls_options("rediss://h/0?ssl_ca_certs=/x") == {"ssl_certfile": "/c.pem"}
