"""HCP's use of pyasic-rs (the Python bindings of asic-rs): identification of what runs at
each miner address, curtail/resume with the library's own commands, and its full data
snapshot mapped to the contract's ASIC sample.

Why the 1 Hz hot path is not here: docs/fleet.md ("Library choice") has the measured
figures; in short, a full ``get_data`` costs the library about 14 requests per miner (RPC
``version``/``stats``/``summary``/``pools``/``stats new_api`` and digest-authenticated web
pages, each twice for the 401 challenge), far over one core for 10,000 miners a second, while
the hot path's one ``summary+stats`` CGMiner exchange reads the same counters.

asic-rs addresses a miner by IP alone (API 4028, web 80): a device at another port (the
per-port simulators, NAT'd racks) is not the library's to reach, :func:`library_port`
says which are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hcp.fleet.cgminer import DeviceError
from hcp.fleet.inventory import Device

__all__ = [
    "LIBRARY_PORT",
    "Identity",
    "MinerControl",
    "available",
    "identify",
    "library_port",
    "row_from_data",
]

log = logging.getLogger("hcp.asiclib")

# The only port asic-rs talks the CGMiner API on (its web API is on 80).
LIBRARY_PORT = 4028


def available() -> bool:
    """Whether pyasic-rs imports here (a base dependency; a wheel is missing on some
    platforms, where HCP falls back to its CGMiner client)."""
    try:
        import pyasic_rs  # noqa: F401
    except ImportError:
        return False
    return True


def library_port(device: Device) -> bool:
    return device.kind == "asic" and device.port == LIBRARY_PORT


@dataclass(frozen=True)
class Identity:
    """What the library found at an address."""

    make: str
    model: str
    firmware: str
    stock: bool
    supports_pause: bool


async def _get_miner(factory: Any, host: str, timeout: float) -> Any:
    async with asyncio.timeout(timeout):
        return await factory.get_miner(host)


def _factory(timeout: float) -> Any:
    from pyasic_rs import MinerFactory

    secs = max(1, round(timeout))
    return (
        MinerFactory()
        .with_connectivity_timeout_secs(secs)
        .with_identification_timeout_secs(secs)
    )


def _identity(miner: Any) -> Identity:
    firmware = str(miner.firmware)
    return Identity(
        make=str(miner.make),
        model=str(miner.model),
        firmware=firmware,
        stock="stock" in firmware.lower(),
        supports_pause=bool(miner.supports_pause and miner.supports_resume),
    )


async def identify(
    devices: Iterable[Device], concurrency: int = 256, timeout: float = 5.0
) -> dict[str, Identity | None]:
    """The library's identification of each ASIC at the library port, by device id
    (``None``: nothing it recognises answered). Run at startup / inventory reload, not per
    round: it costs several requests per miner and a 300 ms wait on stock firmware for a
    non-stock answer."""
    factory = _factory(timeout)
    targets = [d for d in devices if library_port(d)]
    out: dict[str, Identity | None] = {}
    gate = asyncio.Semaphore(concurrency)

    async def one(device: Device) -> None:
        async with gate:
            try:
                miner = await _get_miner(factory, device.host, timeout + 1.0)
            except Exception as exc:  # the library raises its own errors and timeouts
                log.debug("identify %s: %r", device.device_id, exc)
                miner = None
            out[device.device_id] = None if miner is None else _identity(miner)

    await asyncio.gather(*(one(d) for d in targets))
    return out


class MinerControl:
    """The agent's device side through the library: state and curtail/resume, one library
    ``Miner`` per address, identified on first use."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._factory = _factory(timeout)
        self._miners: dict[str, Any] = {}

    async def _miner(self, host: str) -> Any:
        miner = self._miners.get(host)
        if miner is None:
            try:
                miner = await _get_miner(self._factory, host, self.timeout + 1.0)
            except TimeoutError as exc:
                raise DeviceError("timeout") from exc
            except Exception as exc:  # the library's own failure: a result, not a crash
                raise DeviceError("error", f"identify: {exc}") from exc
            if miner is None:
                raise DeviceError("unidentified", host)
            self._miners[host] = miner
        return miner

    async def _call(self, host: str, method: str) -> Any:
        miner = await self._miner(host)
        try:
            async with asyncio.timeout(self.timeout * 3):
                return await getattr(miner, method)()
        except TimeoutError as exc:
            raise DeviceError("timeout") from exc
        except Exception as exc:  # an HTTP/RPC failure inside the library
            self._miners.pop(host, None)  # identify again next time: it may have changed
            raise DeviceError("error", f"{method}: {exc}") from exc

    async def is_mining(self, host: str) -> bool:
        return bool(await self._call(host, "get_is_mining"))

    async def set_mining(self, host: str, mining: bool) -> None:
        """``resume()`` / ``pause()`` (stock Antminer: ``set_miner_conf.cgi`` ``miner-mode``
        0 / 1); a firmware that cannot is ``unsupported``, one that refuses ``refused``."""
        miner = await self._miner(host)
        if not (miner.supports_pause and miner.supports_resume):
            raise DeviceError("unsupported", str(miner.firmware))
        if not await self._call(host, "resume" if mining else "pause"):
            raise DeviceError("refused")


def row_from_data(device: Device, data: Any, ts: int) -> dict[str, Any]:
    """A library ``MinerData`` as a contract ASIC sample.

    Shares are the pools' cumulative counters, not deltas (the library keeps no history),
    and ``hw_errors`` is 0: ``MinerData`` has no hardware-error count (the CGMiner hot path
    reads ``Hardware Errors``). ``temp_c`` is the hottest board, as the hot path's hottest
    sensor; ``fault`` when the firmware reports an error message.
    """
    hashrate = data.hashrate
    ths = float(hashrate.as_unit(_terahash()).value) if hashrate is not None else 0.0
    boards = [b.board_temperature for b in data.hashboards if b.board_temperature is not None]
    temp = max(boards) if boards else float(data.average_temperature or 0.0)
    accepted = rejected = 0
    for group in data.pools:
        for pool in group.pools:
            accepted += int(pool.accepted_shares or 0)
            rejected += int(pool.rejected_shares or 0)
    errors = [m for m in data.messages if str(m.severity).lower().endswith("error")]
    if errors:
        state = "fault"
    elif not data.is_mining or ths < 1.0:
        state = "curtailed"
    else:
        state = "mining"
    return {
        "ts": ts,
        "asic_id": device.device_id,
        "site": device.site,
        "model": device.model,
        "state": state,
        "hashrate_ths": ths,
        "power_w": float(data.wattage or 0.0),
        "temp_c": float(temp),
        "shares_accepted": accepted,
        "shares_rejected": rejected,
        "hw_errors": 0,
    }


def _terahash() -> Any:
    from pyasic_rs.data import HashRateUnit

    return HashRateUnit.TeraHash
