"""``hcp run --processes N``: a Bytewax cluster of N processes on this host, supervised.

Each member is ``hcp run`` again with the same flags plus ``--process-id I --addresses
A`` (Bytewax's ``-i``/``-a``): the same code path as a member on its own host. Bytewax
cannot lose a member and go on (its workers exchange data and progress over TCP, and a
dead peer stops them all), so this supervisor treats the cluster as one unit: when any
member exits with an error or is killed, the others are stopped and ``hcp run`` exits 1,
and whatever restarts it (systemd, Kubernetes, a shell loop) restarts all of them; they
resume together from the recovery directory's last complete epoch.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time

from flows.settings import JobSettings
from hcp.errors import HcpError

__all__ = ["free_addresses", "supervise"]

log = logging.getLogger(__name__)



def free_addresses(n: int, host: str = "127.0.0.1") -> list[str]:
    """``n`` distinct ``host:port`` addresses with ports the system says are free now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [f"{host}:{s.getsockname()[1]}" for s in socks]
    finally:
        for s in socks:
            s.close()


def member_command(settings: JobSettings, index: int, addresses: list[str]) -> list[str]:
    """The command line of cluster member ``index``: this run's flags, plus its place."""
    argv = list(sys.argv[1:])
    extra = ["--process-id", str(index), "--addresses", ";".join(addresses)]
    if settings.metrics_port:
        # One /metrics endpoint per member: consecutive ports from the configured one.
        extra += ["--metrics-port", str(settings.metrics_port + index)]
    return [sys.executable, "-m", "tools", *argv, *extra]


def supervise(settings: JobSettings) -> int:
    """Run ``settings.processes`` members until all finish; stop all if one fails."""
    addresses = free_addresses(settings.processes)
    members = [
        subprocess.Popen(member_command(settings, i, addresses))
        for i in range(settings.processes)
    ]
    log.info("started a %d-process cluster on %s (pids %s)", len(members),
             ";".join(addresses), [m.pid for m in members])
    stopping = {"signal": 0}

    def forward(signum: int, _frame: object) -> None:
        stopping["signal"] = signum
        for m in members:
            if m.poll() is None:
                m.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed: tuple[int, int] | None = None
    while any(m.poll() is None for m in members):
        for i, m in enumerate(members):
            code = m.poll()
            if code not in (None, 0) and failed is None:
                failed = (i, code)
                log.error("cluster process %d exited with %d: stopping the others", i, code)
                _kill(members)
        time.sleep(0.1)
    if failed is None:
        failed = next(((i, m.returncode) for i, m in enumerate(members) if m.returncode), None)
    if failed is not None and not stopping["signal"]:
        i, code = failed
        msg = (
            f"cluster process {i} exited with code {code}; stopped the whole cluster. "
            f"Restart it to resume from --recovery-dir"
        )
        raise HcpError(msg)
    return 0


def _kill(members: list[subprocess.Popen]) -> None:
    # Without its peer a member cannot finish an epoch, so a graceful stop would only
    # hang: kill at once. The recovery directory holds the last epoch all of them
    # finished, and the sinks are idempotent, so this is the same as any crash.
    for m in members:
        if m.poll() is None:
            m.kill()
    for m in members:
        m.wait()
