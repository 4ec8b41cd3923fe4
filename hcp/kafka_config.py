"""librdkafka properties shared by every Kafka client HCP makes, declared once.

An operator's security settings (``security.protocol``, ``ssl.ca.location``,
``sasl.mechanism``, ``sasl.username``/``sasl.password`` ...) come from one place and reach
every producer, consumer and admin client: the job's source and sinks, the API, the
simulators, record/replay, the command producers and the broker checks.

* ``--kafka-config FILE`` / ``HCP_KAFKA_CONFIG``: a librdkafka ``.properties`` file
  (``key=value`` lines, ``#`` or ``!`` comments);
* ``HCP_KAFKA_<PROP>`` variables, e.g. ``HCP_KAFKA_SECURITY_PROTOCOL=SSL`` for
  ``security.protocol`` (``_`` becomes ``.``, lower case); a variable beats the file.

The settings are read from the environment each time a client is made (the CLI flag sets
``HCP_KAFKA_CONFIG``), so Bytewax worker processes started by ``hcp run`` inherit them.
HCP's own per-client properties (``group.id``, offsets, ``linger.ms`` ...) and
``bootstrap.servers`` (``--bootstrap``) are set by the code and win over the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hcp.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "check_kafka_config",
    "is_secret",
    "kafka_conf",
    "redact",
    "user_properties",
]

CONFIG_ENV = "HCP_KAFKA_CONFIG"
_PREFIX = "HCP_KAFKA_"
# HCP_KAFKA_* variables that are HCP settings, not librdkafka properties.
_NOT_PROPERTIES = frozenset({"HCP_KAFKA_BOOTSTRAP", CONFIG_ENV, "HCP_KAFKA_VERSION"})
_SECRET = re.compile(r"password|secret|\.pem$|sasl\.oauthbearer\.config|sasl\.jaas\.config")
_MASK = "***"


def is_secret(key: str) -> bool:
    """Whether a property's value must never be shown (passwords, keys, tokens)."""
    return bool(_SECRET.search(key))


def _read_properties(path: str) -> dict[str, str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read the Kafka properties file {path}: {exc.strerror} (--kafka-config)"
        raise ConfigError(msg) from None
    props: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            msg = f"{path} line {number}: expected key=value (a librdkafka property)"
            raise ConfigError(msg)
        props[key.strip()] = value.strip()
    return props


def user_properties(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The operator's librdkafka properties: the file, then ``HCP_KAFKA_<PROP>`` variables."""
    env = os.environ if environ is None else environ
    path = env.get(CONFIG_ENV, "")
    props = _read_properties(path) if path else {}
    for name, value in sorted(env.items()):
        if name.startswith(_PREFIX) and name not in _NOT_PROPERTIES and value != "":
            props[name[len(_PREFIX):].lower().replace("_", ".")] = value
    return props


def redact(text: str, props: Mapping[str, Any] | None = None) -> str:
    """``text`` with the value of every secret property replaced by ``***``."""
    props = user_properties() if props is None else props
    for key, value in props.items():
        if is_secret(key) and str(value):
            text = text.replace(str(value), _MASK)
    return text


def kafka_conf(bootstrap: str, props: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The configuration dict of one client: the operator's properties, then HCP's own."""
    conf: dict[str, Any] = dict(user_properties())
    conf["bootstrap.servers"] = bootstrap
    conf.update(props or {})
    return conf


def check_kafka_config() -> None:
    """Fail with one line now if librdkafka rejects the operator's properties.

    librdkafka checks names and values when a client is made; a throwaway producer without
    brokers makes that check without connecting anywhere. Its message is redacted: an
    invalid value would otherwise be repeated, and it may be a password.
    """
    props = user_properties()
    if not props:
        return
    from confluent_kafka import KafkaException, Producer

    try:
        Producer({**props, "log_level": 0}).flush(0)
    except (KafkaException, ValueError, TypeError) as exc:
        reason = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        msg = f"Kafka client configuration rejected: {redact(reason, props)} "
        msg += f"(check --kafka-config / {CONFIG_ENV} and HCP_KAFKA_* variables)"
        raise ConfigError(msg) from None
