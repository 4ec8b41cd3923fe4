"""A small client of the CGMiner JSON API (TCP 4028), the API Antminers and most ASIC
firmwares (Bitmain stock, Braiins OS, LuxOS, Vnish) answer.

Protocol (cgminer API-README): the client connects, sends one JSON object
``{"command": "summary", "parameter": "..."}``, the miner answers one JSON object (often
followed by a NUL byte) and closes the connection. Several read-only commands may be joined
with ``+`` (``summary+stats``); the answer then has one key per command, each holding that
command's usual answer in a one-element list.

Why this and not pyasic-rs on the collector's 1 Hz path: pyasic-rs (hcp/fleet/asiclib.py)
identifies the miners and carries the agent's commands, but its data read costs about 7x
this client's CPU per miner (docs/fleet.md, "Library choice"), and this one ``summary+stats``
exchange is the same CGMiner API the library reads those counters from.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any, cast

import orjson

__all__ = ["DeviceError", "request"]

# An answer larger than this is not a miner's: stop reading rather than buffer it.
MAX_ANSWER_BYTES = 1 << 20


class DeviceError(Exception):
    """A device that did not answer usefully; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class _Exchange(asyncio.Protocol):
    """One request/answer on one connection, without stream objects: the collector makes
    10,000 of these a second, and StreamReader/StreamWriter plus ``wait_for``'s extra task
    cost more CPU than the exchange itself."""

    transport: asyncio.Transport

    def __init__(self, payload: bytes, answer: asyncio.Future[bytes]) -> None:
        self.payload = payload
        self.answer = answer
        self.chunks: list[bytes] = []
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > MAX_ANSWER_BYTES and not self.answer.done():
            self.answer.set_exception(DeviceError("too_large"))
            self.transport.abort()

    def eof_received(self) -> bool:
        if not self.answer.done():
            self.answer.set_result(b"".join(self.chunks))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer.done():
            return
        if exc is None:
            self.answer.set_result(b"".join(self.chunks))
        else:
            self.answer.set_exception(exc)


async def _exchange(host: str, port: int, payload: bytes, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()
    transport = None
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(
                lambda: _Exchange(payload, answer), host, port
            )
            return await answer
    finally:
        if transport is not None:
            transport.abort()  # the answer is read (or given up on): no FIN handshake to wait for


@functools.lru_cache(maxsize=256)
def _payload(command: str, parameter: str | None) -> bytes:
    body = {"command": command} if parameter is None else {"command": command,
                                                           "parameter": parameter}
    return json.dumps(body).encode()


async def request(
    host: str, port: int, command: str, parameter: str | None = None, timeout: float = 0.5
) -> dict[str, Any]:
    """Send one API command and return the decoded answer.

    Raises :class:`DeviceError` with reason ``timeout``, ``refused``, ``reset``,
    ``malformed`` (not JSON / not an object) or ``error`` (the miner's STATUS says E/F).
    """
    try:
        raw = await _exchange(host, port, _payload(command, parameter), timeout)
    except TimeoutError as exc:
        raise DeviceError("timeout") from exc
    except ConnectionRefusedError as exc:
        raise DeviceError("refused") from exc
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise DeviceError("reset") from exc
    except OSError as exc:
        raise DeviceError("unreachable", str(exc)) from exc
    if not raw:
        raise DeviceError("reset", "closed without an answer")
    # Firmwares end the answer with NUL; some put a stray NUL or whitespace inside.
    raw = raw.replace(b"\x00", b"")
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # orjson refuses invalid UTF-8, which some firmwares put in pool URLs
            answer = json.loads(raw.decode("utf-8", "replace"))
        except ValueError as exc:
            raise DeviceError("malformed") from exc
    if not isinstance(answer, dict):
        raise DeviceError("malformed", "not a JSON object")
    status = answer.get("STATUS")
    if (
        isinstance(status, list)
        and status
        and isinstance(status[0], dict)
        and status[0].get("STATUS") in ("E", "F")
    ):
        raise DeviceError("error", str(status[0].get("Msg", ""))[:200])
    return answer
