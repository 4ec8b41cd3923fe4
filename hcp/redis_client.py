"""Every Redis client HCP makes, built in one place so TLS and ACL users work everywhere.

The URL carries what redis-py reads from it: ``rediss://`` for TLS, ``user:password@`` for an
ACL user, and query parameters such as ``?ssl_ca_certs=/ca.pem&ssl_certfile=...&
ssl_keyfile=...&ssl_cert_reqs=required``. For a ``rediss://`` URL the variables
``HCP_REDIS_CA``, ``HCP_REDIS_CERT`` and ``HCP_REDIS_KEY`` supply the CA bundle and the
client certificate and key when the URL does not. A URL is shown only through
:func:`safe_url`, which masks the password.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
import redis.asyncio as aredis

__all__ = ["TLS_ENV", "async_redis_client", "redis_client", "safe_url", "tls_options"]

# Variable -> redis-py connection keyword it fills for a rediss:// URL.
TLS_ENV = {
    "HCP_REDIS_CA": "ssl_ca_certs",
    "HCP_REDIS_CERT": "ssl_certfile",
    "HCP_REDIS_KEY": "ssl_keyfile",
}


def tls_options(url: str) -> dict[str, str]:
    """TLS keywords from ``HCP_REDIS_*`` for a ``rediss://`` URL that does not set them."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return {}
    given = parse_qs(parts.query)
    return {
        kw: os.environ[env]
        for env, kw in TLS_ENV.items()
        if os.environ.get(env) and kw not in given
    }


def redis_client(url: str, **kwargs: Any) -> redis.Redis:
    """A synchronous client for ``url`` (see the module doc for TLS and ACL users)."""
    return redis.Redis.from_url(url, **{**tls_options(url), **kwargs})


def async_redis_client(url: str, **kwargs: Any) -> aredis.Redis:
    """An asyncio client for ``url``, configured as :func:`redis_client`."""
    return aredis.Redis.from_url(url, **{**tls_options(url), **kwargs})


def safe_url(url: str) -> str:
    """``url`` fit for a log line or an error message: the password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{user}:***@{host}{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "(unparseable URL)"
