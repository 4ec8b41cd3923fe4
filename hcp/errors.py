"""One flat hierarchy of HCP's own errors.

Lower-level errors (confluent-kafka, psycopg, redis) are mapped to these at the edge so
the CLI can print one clear line instead of a traceback.
"""

__all__ = [
    "BrokerUnreachableError",
    "ConfigError",
    "HcpError",
    "RecoveryStateError",
    "SinkUnavailableError",
]


class HcpError(Exception):
    """Base class of every error HCP raises on purpose."""


class ConfigError(HcpError):
    """A flag, environment variable or scenario file has a bad value."""


class BrokerUnreachableError(HcpError):
    """The Kafka bootstrap address did not answer in time."""


class SinkUnavailableError(HcpError):
    """Redis or PostgreSQL refused or dropped the connection."""


class RecoveryStateError(HcpError):
    """A recovery directory does not match this job's version or topics."""
