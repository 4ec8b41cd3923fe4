"""Two network namespaces joined by a veth pair, for cluster traffic over an interface.

``NetnsPair`` makes namespaces ``A`` and ``B`` with one veth end each (link-local
169.254.<n>.1 and .2 / 30), so the Bytewax members' traffic crosses a real interface. The
services the members need (Kafka, Redis, PostgreSQL) listen on the host's loopback only:
for each of their ports a forwarder listens on the same port of each namespace's loopback
and relays to the host's (its listening socket is created inside the namespace with
setns(2) on one thread; the relaying sockets live in the host namespace). Needs root and
``ip``; :func:`netns_unavailable` says why not, for a clean skip.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator

__all__ = ["NetnsPair", "netns_unavailable"]

_CLONE_NEWNET = 0x40000000


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"hcpprobe{uuid.uuid4().hex[:6]}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode:
        return f"ip netns add failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def _inside(netns: str) -> Iterator[None]:
    """Run this thread's next socket() calls in ``netns``; back to the host afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(there, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the namespace failed")
        try:
            yield
        finally:
            if libc.setns(here, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the host failed")
    finally:
        os.close(here)
        os.close(there)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class NetnsPair:
    """Namespaces ``a`` and ``b`` with addresses ``addr_a``/``addr_b`` on a veth pair."""

    def __init__(self, forward_ports: list[int]) -> None:
        tag = uuid.uuid4().hex[:6]
        self.a, self.b = f"hcpa{tag}", f"hcpb{tag}"
        self.veth_a, self.veth_b = f"hva{tag}", f"hvb{tag}"
        n = int(tag, 16) % 250 + 1
        self.addr_a, self.addr_b = f"169.254.{n}.1", f"169.254.{n}.2"
        self._ports = forward_ports
        self._listeners: list[socket.socket] = []

    def __enter__(self) -> NetnsPair:
        _ip("netns", "add", self.a)
        _ip("netns", "add", self.b)
        try:
            _ip("link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b)
            for ns, dev, addr in ((self.a, self.veth_a, self.addr_a),
                                  (self.b, self.veth_b, self.addr_b)):
                _ip("link", "set", dev, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                for port in self._ports:
                    self._forward(ns, port)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        for s in self._listeners:
            with contextlib.suppress(OSError):
                s.close()
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def tx_bytes(self, ns: str) -> int:
        dev = self.veth_a if ns == self.a else self.veth_b
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/tx_bytes"],
            capture_output=True, text=True, check=True,
        )
        return int(done.stdout)

    def _forward(self, ns: str, port: int) -> None:
        with _inside(ns):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        self._listeners.append(listener)

        def accept() -> None:
            while True:
                try:
                    inner, _ = listener.accept()
                except OSError:
                    return
                try:
                    outer = socket.create_connection(("127.0.0.1", port))
                except OSError:
                    inner.close()
                    continue
                for src, dst in ((inner, outer), (outer, inner)):
                    threading.Thread(target=_pump, args=(src, dst), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
