"""The site collector: poll every device of the inventory once a round, publish telemetry.

Each round polls all devices concurrently (at most ``concurrency`` sockets open at once), each
with its own ``timeout``; a device that does not answer, resets or answers garbage becomes a
``fault`` (ASIC) / ``down`` (GPU) sample and a count of ``hcp_collect_device_faults_total``
by reason, so a round always ends within about ``timeout`` x waves and never stalls.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import re
import shlex
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from prometheus_client import Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from hcp.fleet.cgminer import DeviceError, request
from hcp.fleet.inventory import Device

__all__ = [
    "Collector",
    "RoundResult",
    "asic_row",
    "gpu_rows_from_dcgm",
    "gpu_rows_from_smi",
    "run_on_uvloop",
]

log = logging.getLogger("hcp.collect")
T = TypeVar("T")


def run_on_uvloop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop (a base dependency, through uvicorn[standard]) where it
    imports: its sockets and callbacks cost about half of asyncio's per poll."""
    try:
        import uvloop
    except ImportError:  # not on this platform: the standard loop is correct, only slower
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)

DEVICE_FAULTS = Counter(
    "hcp_collect_device_faults",
    "Devices that failed a poll, by kind and reason",
    ["kind", "reason"],
)
ROUND_SECONDS = Histogram(
    "hcp_collect_round_seconds",
    "Wall time of one collector round",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0),
)
ASIC_QUERY = "summary+stats"
MIB_PER_GB = 1024.0
# Bitmain joins chip sensors with "-" ("62-62-66-66"): no signed numbers here.
_TEMP_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _first(answer: dict[str, Any], command: str, section: str) -> list[dict[str, Any]]:
    part = answer.get(command)
    inner = part[0] if isinstance(part, list) and part else answer
    items = inner.get(section) if isinstance(inner, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise DeviceError("malformed", f"no {section} section")
    return items


def _max_temp(stats: list[dict[str, Any]]) -> float:
    temps: list[float] = []
    for entry in stats:
        for key, value in entry.items():
            if key.startswith("temp") and (key.startswith("temp_chip") or key[4:].isdigit()):
                temps.extend(map(float, _TEMP_NUMBER.findall(str(value))))
    return max(temps) if temps else 0.0


def _stats_power(stats: list[dict[str, Any]]) -> float:
    # Stock Antminer firmware has no Power in SUMMARY; where it reports a draw it is stats'
    # "chain_power": "3500 W" (what asic-rs reads too).
    for entry in stats:
        value = entry.get("chain_power")
        if value is not None:
            return float(str(value).split()[0])
    return 0.0


@dataclass
class _Counts:
    accepted: int
    rejected: int
    hw: int


def asic_row(
    device: Device, answer: dict[str, Any], ts: int, prev: _Counts | None
) -> tuple[dict[str, Any], _Counts]:
    """Map a ``summary+stats`` answer to a contract ASIC sample (counts since the last one)."""
    summary = _first(answer, "summary", "SUMMARY")[0]
    stats = _first(answer, "stats", "STATS")
    try:
        ths = float(summary.get("GHS 5s", 0.0)) / 1000.0
        power = (
            float(summary["Power"]) if "Power" in summary else _stats_power(stats)
        )
        counts = _Counts(
            int(summary.get("Accepted", 0)),
            int(summary.get("Rejected", 0)),
            int(summary.get("Hardware Errors", 0)),
        )
    except (TypeError, ValueError) as exc:
        raise DeviceError("malformed", str(exc)) from exc

    def delta(now: int, before: int | None) -> int:
        # A counter that went back means the miner restarted: everything since is new.
        return now if before is None or now < before else now - before

    row = {
        "ts": ts,
        "asic_id": device.device_id,
        "site": device.site,
        "model": device.model,
        "state": "mining" if ths >= 1.0 else "curtailed",
        "hashrate_ths": ths,
        "power_w": power,
        "temp_c": _max_temp(stats),
        "shares_accepted": delta(counts.accepted, prev.accepted if prev else None),
        "shares_rejected": delta(counts.rejected, prev.rejected if prev else None),
        "hw_errors": delta(counts.hw, prev.hw if prev else None),
    }
    return row, counts


def fault_asic_row(device: Device, ts: int) -> dict[str, Any]:
    return {
        "ts": ts,
        "asic_id": device.device_id,
        "site": device.site,
        "model": device.model,
        "state": "fault",
        "hashrate_ths": 0.0,
        "power_w": 0.0,
        "temp_c": 0.0,
        "shares_accepted": 0,
        "shares_rejected": 0,
        "hw_errors": 0,
    }


def _gpu_row(
    device: Device,
    gpu_id: str,
    ts: int,
    util: float,
    power: float,
    temp: float,
    used_gb: float,
    total_gb: float,
) -> dict[str, Any]:
    return {
        "ts": ts,
        "gpu_id": gpu_id,
        "site": device.site,
        "model": device.model,
        "state": "busy" if util > 5.0 else "idle",
        "util_pct": min(max(util, 0.0), 100.0),
        "temp_c": temp,
        "power_w": power,
        "mem_used_gb": used_gb,
        "mem_total_gb": total_gb,
        "workload_id": None,
    }


def gpu_rows_from_dcgm(device: Device, text: str, ts: int) -> list[dict[str, Any]]:
    """A DCGM exporter page as one sample per GPU (keyed by its UUID label)."""
    wanted = {
        "DCGM_FI_DEV_GPU_UTIL": "util",
        "DCGM_FI_DEV_POWER_USAGE": "power",
        "DCGM_FI_DEV_GPU_TEMP": "temp",
        "DCGM_FI_DEV_FB_USED": "used",
        "DCGM_FI_DEV_FB_FREE": "free",
    }
    per_gpu: dict[str, dict[str, float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                what = wanted.get(sample.name)
                if what is None:
                    continue
                gpu = sample.labels.get("UUID") or f"{device.device_id}-{sample.labels.get('gpu')}"
                per_gpu.setdefault(gpu, {})[what] = float(sample.value)
    except ValueError as exc:
        raise DeviceError("malformed", str(exc)) from exc
    if not per_gpu:
        raise DeviceError("malformed", "no DCGM_FI_DEV series")
    rows = []
    for gpu, v in sorted(per_gpu.items()):
        used = v.get("used", 0.0) / MIB_PER_GB
        rows.append(
            _gpu_row(
                device,
                gpu,
                ts,
                v.get("util", 0.0),
                v.get("power", 0.0),
                v.get("temp", 0.0),
                used,
                used + v.get("free", 0.0) / MIB_PER_GB,
            )
        )
    return rows


SMI_QUERY = "uuid,utilization.gpu,power.draw,temperature.gpu,memory.used,memory.total"


def gpu_rows_from_smi(device: Device, text: str, ts: int) -> list[dict[str, Any]]:
    """``nvidia-smi --query-gpu=SMI_QUERY --format=csv,noheader,nounits`` as samples."""
    rows = []
    for rec in csv.reader(io.StringIO(text)):
        if not rec:
            continue
        if len(rec) != 6:
            raise DeviceError("malformed", f"nvidia-smi row has {len(rec)} fields")
        uuid, *nums = (r.strip() for r in rec)
        try:
            util, power, temp, used, total = (float(n) for n in nums)
        except ValueError as exc:  # "[N/A]" and friends
            raise DeviceError("malformed", str(exc)) from exc
        rows.append(
            _gpu_row(device, uuid, ts, util, power, temp, used / MIB_PER_GB, total / MIB_PER_GB)
        )
    if not rows:
        raise DeviceError("malformed", "nvidia-smi printed no GPUs")
    return rows


async def _http_get(url: str, timeout: float) -> str:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise DeviceError("bad_url")
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname, parts.port or 80), timeout
    )
    try:
        path = parts.path or "/"
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or head.split(b" ", 2)[1:2] != [b"200"]:
        raise DeviceError("http_status")
    return body.decode("utf-8", "replace")


@dataclass
class RoundResult:
    asic: list[dict[str, Any]] = field(default_factory=list)
    gpu: list[dict[str, Any]] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class Collector:
    """Polls one inventory; ``poll_round()`` returns the round's samples."""

    def __init__(
        self,
        devices: list[Device],
        timeout: float = 0.5,
        concurrency: int = 512,
        smi_command: str = "nvidia-smi",
    ) -> None:
        self.devices = devices
        self.timeout = timeout
        self.concurrency = concurrency
        self.smi_command = smi_command
        self._counts: dict[str, _Counts] = {}
        self.identities: dict[str, Any] = {}

    async def identify(self, concurrency: int = 256) -> dict[str, Any]:
        """What pyasic-rs finds at each ASIC address on the library port (make, model,
        firmware), kept in ``identities``; a model other than the inventory's is logged.
        Not part of a round: it is several requests per miner (docs/fleet.md)."""
        from hcp.fleet import asiclib

        found = await asiclib.identify(self.devices, concurrency, max(self.timeout, 2.0))
        self.identities.update(found)
        by_id = {d.device_id: d for d in self.devices}
        for device_id, ident in found.items():
            model = by_id[device_id].model
            if ident is None:
                log.warning("%s: not identified by pyasic-rs", device_id)
            elif model and model.upper() not in ident.model.upper():
                log.warning("%s: inventory says %s, miner is %s %s (%s)", device_id, model,
                            ident.make, ident.model, ident.firmware)
        return found

    async def _poll_asic(self, device: Device, ts: int) -> dict[str, Any]:
        answer = await request(device.host, device.port, ASIC_QUERY, timeout=self.timeout)
        row, counts = asic_row(device, answer, ts, self._counts.get(device.device_id))
        self._counts[device.device_id] = counts
        return row

    async def _poll_gpu(self, device: Device, ts: int) -> list[dict[str, Any]]:
        if device.url == "nvidia-smi":
            cmd = [
                *shlex.split(self.smi_command),
                f"--query-gpu={SMI_QUERY}",
                "--format=csv,noheader,nounits",
            ]
            try:
                proc = await asyncio.create_subprocess_exec(
                    *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
                )
            except OSError as exc:
                raise DeviceError("no_nvidia_smi", str(exc)) from exc
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
            except TimeoutError as exc:
                proc.kill()
                raise DeviceError("timeout") from exc
            if proc.returncode != 0:
                raise DeviceError("nvidia_smi_failed")
            return gpu_rows_from_smi(device, out.decode("utf-8", "replace"), ts)
        try:
            text = await _http_get(str(device.url), self.timeout)
        except TimeoutError as exc:
            raise DeviceError("timeout") from exc
        except OSError as exc:
            raise DeviceError(
                "refused" if isinstance(exc, ConnectionRefusedError) else "reset"
            ) from exc
        return gpu_rows_from_dcgm(device, text, ts)

    async def poll_round(self, ts: int | None = None) -> RoundResult:
        started = time.perf_counter()
        ts = int(time.time() * 1000) if ts is None else ts
        result = RoundResult()
        pending = iter(self.devices)

        async def worker() -> None:
            # A fixed pool of workers, not one task per device: 10,000 tasks a round cost
            # more than the polls they wait on.
            for device in pending:
                try:
                    if device.kind == "asic":
                        result.asic.append(await self._poll_asic(device, ts))
                    else:
                        result.gpu.extend(await self._poll_gpu(device, ts))
                    continue
                except DeviceError as exc:
                    reason = exc.reason
                except Exception as exc:
                    reason = "internal"
                    log.debug("poll %s failed: %r", device.device_id, exc)
                result.faults[reason] = result.faults.get(reason, 0) + 1
                DEVICE_FAULTS.labels(device.kind, reason).inc()
                if device.kind == "asic":
                    result.asic.append(fault_asic_row(device, ts))
                else:
                    # The host's GPUs are unknown when it does not answer: one down row.
                    result.gpu.append(
                        {**_gpu_row(device, device.device_id, ts, 0, 0, 0, 0, 0), "state": "down"}
                    )

        workers = min(self.concurrency, len(self.devices))
        await asyncio.gather(*(worker() for _ in range(workers)))
        result.asic.sort(key=lambda r: r["asic_id"])
        result.gpu.sort(key=lambda r: r["gpu_id"])
        result.seconds = time.perf_counter() - started
        ROUND_SECONDS.observe(result.seconds)
        return result
