"""Protocol-speaking device simulators: Antminer S21s on the CGMiner JSON API and GPU hosts
serving a DCGM-exporter ``/metrics`` page, for ``hcp collect`` and ``hcp agent`` to talk to
over real sockets.

Each simulated miner is its own TCP listener (one port each on a loopback address), answering
``version``, ``devdetails``, ``summary``, ``stats``, ``pools`` and ``+``-joined combinations
the way the cgminer API-README and Bitmain's stock firmware shape them, plus LuxOS's
``curtail`` (``sleep`` / ``wakeup``), which changes the power along a ramp. Where the public
documents say nothing (power on Bitmain stock firmware, which does not report it) the
simulator follows the firmwares that do (a ``Power`` key in ``SUMMARY``, as Whatsminer and
LuxOS give). Fault modes: ``hang`` (accepts, never answers), ``reset`` (closes at once
without answering), ``malformed`` (answers truncated JSON).

``python -m generators.devices --miners 100 --inventory inv.csv`` serves until stopped and
writes the inventory the collector reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GpuHost", "SimFleet", "SimMiner"]

FAULT_MODES = ("none", "hang", "reset", "malformed")


@dataclass
class SimMiner:
    """One simulated Antminer S21: 200 TH/s at 3,500 W, shares and errors counting up."""

    miner_id: str
    hashrate_ths: float = 200.0
    power_w: float = 3500.0
    idle_power_w: float = 15.0
    ramp_s: float = 2.0
    fault: str = "none"
    sleeping: bool = False
    curtail_calls: int = 0
    _switched_at: float = field(default=-1e9)
    _from_frac: float = 1.0
    _started: float = field(default_factory=time.monotonic)

    def _run_frac(self, now: float) -> float:
        """How far from sleep (0) to full mining (1) the miner is, moving along the ramp."""
        target = 0.0 if self.sleeping else 1.0
        done = min(1.0, (now - self._switched_at) / self.ramp_s) if self.ramp_s > 0 else 1.0
        return self._from_frac + (target - self._from_frac) * done

    def set_sleep(self, sleep: bool) -> None:
        now = time.monotonic()
        self._from_frac = self._run_frac(now)
        self._switched_at = now
        self.sleeping = sleep
        self.curtail_calls += 1

    def current_power_w(self) -> float:
        frac = self._run_frac(time.monotonic())
        return self.idle_power_w + (self.power_w - self.idle_power_w) * frac

    def answer(self, command: str, parameter: str | None) -> dict[str, Any]:
        now = time.monotonic()
        ts = int(time.time())
        frac = self._run_frac(now)
        ghs = self.hashrate_ths * 1000.0 * frac
        elapsed = int(now - self._started)
        accepted = elapsed * 3
        status = {
            "STATUS": "S",
            "When": ts,
            "Code": 11,
            "Msg": "Summary",
            "Description": "cgminer 4.11.1",
        }

        def ok(msg: str) -> list[dict[str, Any]]:
            return [{**status, "Msg": msg}]

        if command == "version":
            return {
                "STATUS": ok("CGMiner versions"),
                "VERSION": [
                    {
                        "BMMiner": "1.0.0",
                        "API": "3.1",
                        "Miner": "uart_trans.1.3",
                        "CompileTime": "Mon Nov 20 17:51:40 CST 2023",
                        "Type": "Antminer S21",
                    }
                ],
                "id": 1,
            }
        if command == "devdetails":
            return {
                "STATUS": ok("Device Details"),
                "DEVDETAILS": [
                    {
                        "DEVDETAILS": i,
                        "Name": "BTM",
                        "ID": i,
                        "Driver": "bitmicro",
                        "Kernel": "",
                        "Model": "Antminer S21",
                    }
                    for i in range(3)
                ],
                "id": 1,
            }
        if command == "summary":
            return {
                "STATUS": ok("Summary"),
                "SUMMARY": [
                    {
                        "Elapsed": elapsed,
                        "GHS 5s": round(ghs, 2),
                        "GHS av": round(ghs, 2),
                        "Accepted": accepted,
                        "Rejected": accepted // 500,
                        "Hardware Errors": elapsed // 60,
                        "Power": round(self.current_power_w(), 1),
                        "Best Share": 123456789,
                    }
                ],
                "id": 1,
            }
        if command == "stats":
            chip = 62.0 * frac + 30.0 * (1 - frac)
            return {
                "STATUS": ok("CGMiner stats"),
                "STATS": [
                    {"BMMiner": "1.0.0", "Miner": "uart_trans.1.3", "Type": "Antminer S21"},
                    {
                        "STATS": 0,
                        "ID": "BTM_SOC0",
                        "Elapsed": elapsed,
                        "GHS 5s": round(ghs, 2),
                        "miner_count": 3,
                        "fan_num": 4,
                        "fan1": 3600,
                        "fan2": 3600,
                        "fan3": 3600,
                        "fan4": 3600,
                        "temp_chip1": f"{chip:.0f}-{chip:.0f}-{chip + 4:.0f}-{chip + 4:.0f}",
                        "temp_chip2": f"{chip:.0f}-{chip:.0f}-{chip + 4:.0f}-{chip + 4:.0f}",
                        "temp_chip3": f"{chip:.0f}-{chip:.0f}-{chip + 4:.0f}-{chip + 4:.0f}",
                        "temp1": round(chip - 8),
                        "temp2": round(chip - 8),
                        "temp3": round(chip - 8),
                    },
                ],
                "id": 1,
            }
        if command == "pools":
            return {
                "STATUS": ok("1 Pool(s)"),
                "POOLS": [
                    {
                        "POOL": 0,
                        "URL": "stratum+tcp://pool.example:3333",
                        "Status": "Alive",
                        "Accepted": accepted,
                        "Rejected": accepted // 500,
                        "User": f"site.{self.miner_id}",
                    }
                ],
                "id": 1,
            }
        if command == "curtail":  # LuxOS: curtail sleep | wakeup
            if parameter not in ("sleep", "wakeup"):
                return {
                    "STATUS": [
                        {**status, "STATUS": "E", "Code": 45, "Msg": "Invalid curtail mode"}
                    ],
                    "id": 1,
                }
            self.set_sleep(parameter == "sleep")
            return {"STATUS": ok(f"Curtail {parameter}"), "CURTAIL": [{"Mode": parameter}], "id": 1}
        return {
            "STATUS": [{**status, "STATUS": "E", "Code": 14, "Msg": "Invalid command"}],
            "id": 1,
        }

    def respond(self, raw: bytes) -> bytes:
        try:
            body = json.loads(raw.decode())
            command = str(body["command"])
            parameter = body.get("parameter")
        except (ValueError, KeyError, TypeError):
            return json.dumps(
                {"STATUS": [{"STATUS": "E", "Code": 23, "Msg": "Invalid JSON"}]}
            ).encode()
        parts = command.split("+")
        if len(parts) == 1:
            out: dict[str, Any] = self.answer(command, parameter)
        else:  # cgminer: each joined command's answer as a one-element list under its name
            out = {part: [self.answer(part, parameter)] for part in parts}
        return json.dumps(out).encode() + b"\x00"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    # A request is one JSON object; clients may or may not half-close, so read until it parses.
    data = b""
    while True:
        chunk = await reader.read(4096)
        if not chunk:
            return data
        data += chunk
        try:
            json.loads(data.decode())
            return data
        except ValueError:
            if len(data) > 65536:
                return data


@dataclass
class GpuHost:
    """One simulated GPU server: ``gpus`` H100s on a DCGM-exporter ``/metrics`` page."""

    host_id: str
    gpus: int = 8
    util_pct: float = 80.0
    power_w: float = 650.0
    temp_c: float = 61.0
    fb_used_mib: float = 40_000.0
    fb_total_mib: float = 81_559.0

    def metrics(self) -> str:
        lines: list[str] = []
        series = (
            ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", self.util_pct),
            ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", self.power_w),
            ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", self.temp_c),
            ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", self.fb_used_mib),
            (
                "DCGM_FI_DEV_FB_FREE",
                "gauge",
                "Framebuffer memory free (in MiB).",
                self.fb_total_mib - self.fb_used_mib,
            ),
        )
        for name, kind, text, value in series:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            for i in range(self.gpus):
                uuid = f"GPU-{self.host_id}-{i:04d}"
                lines.append(
                    f'{name}{{gpu="{i}",UUID="{uuid}",device="nvidia{i}",'
                    f'modelName="NVIDIA H100 80GB HBM3",Hostname="{self.host_id}"}} {value}'
                )
        return "\n".join(lines) + "\n"


def _new_loop() -> asyncio.AbstractEventLoop:
    # uvloop where it imports, so 10,000 simulated miners are not the bench's bottleneck.
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class SimFleet:
    """Many simulated devices on one asyncio loop in a background thread.

    Each miner listens on ``host`` (default 127.0.0.1) on its own port; ``addresses`` lists
    ``(miner, host, port)``; each GPU host serves ``/metrics`` on its own port.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.miners: list[SimMiner] = []
        self.gpu_hosts: list[GpuHost] = []
        self.addresses: dict[str, tuple[str, int]] = {}
        self._loop = _new_loop()
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=120)

    async def _serve_miner(self, miner: SimMiner) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if miner.fault == "reset":
                    sock = writer.get_extra_info("socket")
                    # SO_LINGER 0: close sends RST, like a crashing API thread.
                    import socket as _s
                    import struct

                    sock.setsockopt(_s.SOL_SOCKET, _s.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                raw = await _read_request(reader)
                if miner.fault == "hang":
                    await asyncio.sleep(3600)
                    return
                out = miner.respond(raw)
                if miner.fault == "malformed":
                    out = out[: len(out) // 2]
                writer.write(out)
                await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, self.host, 0, backlog=64)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def _serve_gpu(self, gpu: GpuHost) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                body = gpu.metrics().encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, self.host, 0)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def add_miners(self, count: int, prefix: str = "asic", **kwargs: Any) -> list[SimMiner]:
        async def start() -> list[SimMiner]:
            added = []
            for _ in range(count):
                miner = SimMiner(f"{prefix}-{len(self.miners):05d}", **kwargs)
                port = await self._serve_miner(miner)
                self.miners.append(miner)
                self.addresses[miner.miner_id] = (self.host, port)
                added.append(miner)
            return added

        return self._call(start())

    def add_gpu_host(self, host_id: str, **kwargs: Any) -> GpuHost:
        async def start() -> GpuHost:
            gpu = GpuHost(host_id, **kwargs)
            port = await self._serve_gpu(gpu)
            self.gpu_hosts.append(gpu)
            self.addresses[host_id] = (self.host, port)
            return gpu

        return self._call(start())

    def write_inventory(self, path: Path, site: str = "site-a") -> None:
        rows = ["address,kind,id,model,site"]
        for miner in self.miners:
            host, port = self.addresses[miner.miner_id]
            rows.append(f"{host}:{port},asic,{miner.miner_id},S21,{site}")
        for gpu in self.gpu_hosts:
            host, port = self.addresses[gpu.host_id]
            rows.append(f"http://{host}:{port}/metrics,gpu,{gpu.host_id},H100-SXM,{site}")
        path.write_text("\n".join(rows) + "\n")

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        try:
            self._call(stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m generators.devices",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--miners", type=int, default=10)
    parser.add_argument("--gpu-hosts", type=int, default=0)
    parser.add_argument("--site", default="site-a")
    parser.add_argument("--inventory", type=Path, required=True, help="CSV inventory to write")
    args = parser.parse_args(argv)
    fleet = SimFleet()
    fleet.add_miners(args.miners)
    for i in range(args.gpu_hosts):
        fleet.add_gpu_host(f"gpuhost-{i:04d}")
    fleet.write_inventory(args.inventory, args.site)
    print(
        f"serving {args.miners} miners, {args.gpu_hosts} GPU hosts; inventory {args.inventory}",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    fleet.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
