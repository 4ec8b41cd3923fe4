"""A small client of the CGMiner JSON API (TCP 4028), the API Antminers and most ASIC
firmwares (Bitmain stock, Braiins OS, LuxOS, Vnish) answer.

Protocol (cgminer API-README): the client connects, sends one JSON object
``{"command": "summary", "parameter": "..."}``, the miner answers one JSON object (often
followed by a NUL byte) and closes the connection. Several read-only commands may be joined
with ``+`` (``summary+stats``); the answer then has one key per command, each holding that
command's usual answer in a one-element list.

Why not pyasic / pyasic-rs: see docs/fleet.md (neither could be adopted in this change).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

__all__ = ["DeviceError", "request"]

# An answer larger than this is not a miner's: stop reading rather than buffer it.
MAX_ANSWER_BYTES = 1 << 20


class DeviceError(Exception):
    """A device that did not answer usefully; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


async def _exchange(host: str, port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        await writer.drain()
        data = await reader.read(MAX_ANSWER_BYTES)
        chunks = [data]
        while data:
            data = await reader.read(MAX_ANSWER_BYTES)
            chunks.append(data)
            if sum(map(len, chunks)) > MAX_ANSWER_BYTES:
                raise DeviceError("too_large")
        return b"".join(chunks)
    finally:
        writer.close()


async def request(
    host: str, port: int, command: str, parameter: str | None = None, timeout: float = 0.5
) -> dict[str, Any]:
    """Send one API command and return the decoded answer.

    Raises :class:`DeviceError` with reason ``timeout``, ``refused``, ``reset``,
    ``malformed`` (not JSON / not an object) or ``error`` (the miner's STATUS says E/F).
    """
    body: dict[str, str] = {"command": command}
    if parameter is not None:
        body["parameter"] = parameter
    try:
        raw = await asyncio.wait_for(_exchange(host, port, json.dumps(body).encode()), timeout)
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
    try:
        # Firmwares end the answer with NUL; some put a stray NUL or whitespace inside.
        answer = json.loads(raw.replace(b"\x00", b"").decode("utf-8", "replace"))
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
