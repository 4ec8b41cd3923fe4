"""Serving Prometheus ``/metrics`` from an HCP process, with a one-line error when it cannot."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from hcp.errors import HcpError

__all__ = ["serve_metrics"]

log = logging.getLogger(__name__)


def serve_metrics(port: int, host: str, flag: str) -> None:
    """Start the endpoint on ``host:port`` (``port`` 0: off).

    A port that is taken (or a host that is not this machine's) raises
    :class:`~hcp.errors.HcpError` naming ``flag``, the setting to change, e.g.
    ``--metrics-port (HCP_METRICS_PORT)``: a bad config gets a sentence, not a traceback.
    """
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        msg = (
            f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}; "
            f"choose another {flag}, or 0 to turn the endpoint off"
        )
        raise HcpError(msg) from None
    log.info("metrics on http://%s:%d/metrics", host, port)
