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

Stock mode (``add_miners(..., stock=True)``, ``--stock``): each miner gets its own loopback
address with the real ports, the CGMiner API on 4028 and the stock web UI on 80 (HTTP/1.1,
digest auth root/root, realm ``antMiner Configuration``: ``/cgi-bin/miner_type.cgi``,
``get_system_info.cgi``, ``summary.cgi``, ``get_miner_conf.cgi``, ``set_miner_conf.cgi``
(``miner-mode`` 1 sleeps, 0 wakes, like ``curtail``), ``get_blink_status.cgi``), so pyasic-rs
unmodified identifies an Antminer S21 on stock firmware and reads and curtails it. There
``SUMMARY`` has no ``Power`` (as on the real firmware) and ``stats`` carries ``chain_power``.

``python -m generators.devices --miners 100 [--stock] --inventory inv.csv`` serves until
stopped and writes the inventory the collector reads.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GpuHost", "SimFleet", "SimMiner"]

FAULT_MODES = ("none", "hang", "reset", "malformed")
# The stock firmware's build date, which asic-rs turns into its firmware version (>= 2023-07
# selects its current Antminer backend).
COMPILE_TIME = "Mon Nov 20 17:51:40 CST 2023"
# The stock web UI's digest realm and default login (both what the libraries expect).
WEB_REALM = "antMiner Configuration"
WEB_USER, WEB_PASSWORD = "root", "root"


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
    # Which API made the last switch: "rpc" (LuxOS curtail) or "web" (set_miner_conf.cgi).
    switched_via: str = ""
    # Stock mode: answer as Bitmain's stock firmware does (no ``Power`` in ``SUMMARY``; the
    # draw is in ``stats`` ``chain_power``) and serve the stock web UI's ``/cgi-bin`` pages.
    stock: bool = False
    ip: str = "127.0.0.1"
    _switched_at: float = field(default=-1e9)
    _from_frac: float = 1.0
    _started: float = field(default_factory=time.monotonic)

    def _run_frac(self, now: float) -> float:
        """How far from sleep (0) to full mining (1) the miner is, moving along the ramp."""
        target = 0.0 if self.sleeping else 1.0
        done = min(1.0, (now - self._switched_at) / self.ramp_s) if self.ramp_s > 0 else 1.0
        return self._from_frac + (target - self._from_frac) * done

    def set_sleep(self, sleep: bool, via: str = "rpc") -> None:
        self.switched_via = via
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
                        "CompileTime": COMPILE_TIME,
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
                        "Driver": "bitmain",
                        "Kernel": "",
                        "Model": "Antminer S21",
                    }
                    for i in range(3)
                ],
                "id": 1,
            }
        if command == "summary":
            summary: dict[str, Any] = {
                "Elapsed": elapsed,
                "GHS 5s": round(ghs, 2),
                "GHS av": round(ghs, 2),
                "Accepted": accepted,
                "Rejected": accepted // 500,
                "Hardware Errors": elapsed // 60,
                "Best Share": 123456789,
            }
            if not self.stock:
                summary["Power"] = round(self.current_power_w(), 1)
            return {"STATUS": ok("Summary"), "SUMMARY": [summary], "id": 1}
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
                        # Only in stock mode: the default mode keeps the answer as small
                        # as before, so the collector bench measures the same bytes.
                        **(self._board_stats(ghs, chip) if self.stock else {}),
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

    def _board_stats(self, ghs: float, chip: float) -> dict[str, Any]:
        # Per-chain keys of Bitmain's legacy ``stats`` (chain_rateN in GH/s, chain_acnN chips,
        # temp_pcbN "in-in-out-out"), which asic-rs reads for its hashboards. ``chain_power``
        # ("3500 W") is not in Bitmain's public documents: asic-rs parses it for wattage.
        out: dict[str, Any] = {
            "total_rateideal": round(self.hashrate_ths * 1000.0, 2),
            "total_freqavg": 490,
            "chain_power": f"{self.current_power_w():.0f} W",
        }
        pcb = f"{chip - 12:.0f}-{chip - 12:.0f}-{chip - 6:.0f}-{chip - 6:.0f}"
        for n in (1, 2, 3):
            out[f"chain_rate{n}"] = f"{ghs / 3:.2f}"
            out[f"chain_acn{n}"] = 108
            out[f"freq{n}"] = 490
            out[f"temp_pcb{n}"] = pcb
        return out

    # -- the stock web UI (lighttpd CGI pages behind HTTP digest auth) -------------------
    def web_answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """One ``/cgi-bin/*.cgi`` page as (HTTP status, JSON body).

        Shapes follow what the stock firmware's pages return as asic-rs and pyasic read
        them; Bitmain publishes no document for these pages (docs/fleet.md lists the guesses).
        """
        now = time.monotonic()
        frac = self._run_frac(now)
        ghs = self.hashrate_ths * 1000.0 * frac
        elapsed = int(now - self._started)
        mode = 1 if self.sleeping else 0
        page = path.split("?", 1)[0]
        if page == "/cgi-bin/miner_type.cgi":
            return 200, {"miner_type": "Antminer S21", "subtype": "BHB42601",
                         "fw_version": COMPILE_TIME}
        if page == "/cgi-bin/get_system_info.cgi":
            return 200, {
                "minertype": "Antminer S21",
                "nettype": "DHCP",
                "netdevice": "eth0",
                "macaddr": self.mac(),
                "hostname": "Antminer",
                "ipaddress": self.ip,
                "netmask": "255.0.0.0",
                "gateway": "",
                "dnsservers": "",
                "system_mode": "GNU/Linux",
                "system_kernel_version": "Linux 4.9.113 #1 SMP PREEMPT",
                "system_filesystem_version": COMPILE_TIME,
                "firmware_type": "Release",
                "serinum": f"SIM{self.miner_id.upper()}",
            }
        if page == "/cgi-bin/summary.cgi":
            fault = [
                {"type": t, "status": "s", "code": 0, "msg": ""}
                for t in ("rate", "network", "fans", "temp")
            ]
            return 200, {
                "STATUS": {"STATUS": "S", "when": int(time.time()), "Msg": "summary",
                           "api_version": "1.0.0"},
                "INFO": {"miner_version": "uart_trans.1.3", "CompileTime": COMPILE_TIME,
                         "type": "Antminer S21"},
                "SUMMARY": [{
                    "elapsed": elapsed,
                    "rate_5s": round(ghs, 2),
                    "rate_30m": round(ghs, 2),
                    "rate_avg": round(ghs, 2),
                    "rate_ideal": round(self.hashrate_ths * 1000.0, 2),
                    "rate_unit": "GH/s",
                    "hw_all": elapsed // 60,
                    "bestshare": 123456789,
                    "status": fault,
                }],
            }
        if page == "/cgi-bin/get_blink_status.cgi":
            return 200, {"blink": False}
        if page == "/cgi-bin/get_miner_conf.cgi":
            return 200, self.miner_conf(mode)
        if page == "/cgi-bin/set_miner_conf.cgi" and method == "POST":
            try:
                conf = json.loads(body.decode() or "{}")
                wanted = int(conf.get("miner-mode", conf.get("bitmain-work-mode")))
            except (ValueError, TypeError, AttributeError):
                return 200, {"stats": "error", "code": "M001", "msg": "Invalid config"}
            if wanted in (0, 1) and (wanted == 1) != self.sleeping:
                self.set_sleep(wanted == 1, via="web")
            return 200, {"stats": "success", "code": "M000", "msg": "OK!"}
        return 404, {}

    def miner_conf(self, mode: int) -> dict[str, Any]:
        # S19-era firmware names the work mode "bitmain-work-mode" (a string), S21-era
        # "miner-mode" (a number); both are given, as the libraries read either.
        return {
            "pools": [{"url": "stratum+tcp://pool.example:3333",
                       "user": f"site.{self.miner_id}", "pass": "x"}],
            "api-listen": True,
            "api-network": True,
            "api-groups": "A:stats:pools:devs:summary:version",
            "api-allow": "A:0/0,W:*",
            "bitmain-fan-ctrl": False,
            "bitmain-fan-pwm": "100",
            "bitmain-hashrate-percent": "100",
            "bitmain-work-mode": str(mode),
            "miner-mode": mode,
            "freq-level": "100",
        }

    def mac(self) -> str:
        n = sum(ord(c) * 31**i for i, c in enumerate(self.miner_id)) & 0xFFFFFF
        return f"02:00:00:{n >> 16:02X}:{(n >> 8) & 0xFF:02X}:{n & 0xFF:02X}"

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


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _digest_params(header: str) -> dict[str, str]:
    _, _, rest = header.partition(" ")
    return {k.lower(): v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|[^,\s]*)', rest)}


def digest_ok(header: str | None, method: str, nonce: str) -> bool:
    """RFC 7616 digest (MD5, qop=auth) with the stock login, as lighttpd checks it."""
    if not header or not header.lower().startswith("digest "):
        return False
    p = _digest_params(header)
    if p.get("username") != WEB_USER or p.get("nonce") != nonce:
        return False
    ha1 = _md5(f"{WEB_USER}:{WEB_REALM}:{WEB_PASSWORD}")
    ha2 = _md5(f"{method}:{p.get('uri', '')}")
    if p.get("qop"):
        want = _md5(f"{ha1}:{nonce}:{p.get('nc', '')}:{p.get('cnonce', '')}:{p['qop']}:{ha2}")
    else:
        want = _md5(f"{ha1}:{nonce}:{ha2}")
    return hmac.compare_digest(want, p.get("response", ""))


def _http(status: int, body: bytes, extra: str = "", close: bool = False) -> bytes:
    reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 400: "Bad Request"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode() + body


async def _serve_web(
    miner: SimMiner, nonce: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """The stock web UI on one connection (HTTP/1.1 keep-alive, as reqwest pools it)."""
    challenge = (
        f'WWW-Authenticate: Digest realm="{WEB_REALM}", qop="auth", nonce="{nonce}", '
        'algorithm=MD5\r\n'
    )
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
        except ValueError:
            writer.write(_http(400, b"", close=True))
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        body = b""
        length = int(headers.get("content-length", "0") or 0)
        if length:
            body = await reader.readexactly(min(length, 1 << 20))
        close = headers.get("connection", "").lower() == "close"
        if miner.fault == "hang":
            await asyncio.sleep(3600)
            return
        # Every page, the root included, is behind digest auth on the stock firmware: the
        # root's 401 and its realm are what identify it.
        if not digest_ok(headers.get("authorization"), method, nonce):
            writer.write(_http(401, b"", challenge, close))
        else:
            status, answer = miner.web_answer(method, target, body)
            out = json.dumps(answer).encode() if status == 200 else b""
            if miner.fault == "malformed":
                out = out[: len(out) // 2]
            writer.write(_http(status, out, close=close))
        await writer.drain()
        if close:
            return


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


_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def _reset(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER 0: close sends RST, like a crashing API thread.
    import socket
    import struct

    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


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

    ``add_miners(..., stock=True)`` instead gives each miner its own loopback address (from
    ``stock_base``, 127.0.0.0/8 is all loopback on Linux) with the real ports: the CGMiner
    API on 4028 and the stock web UI on 80, because the ASIC libraries address a miner by IP
    alone. Two listening sockets per miner: 10,000 need a file limit above 20,000.
    """

    def __init__(self, host: str = "127.0.0.1", stock_base: str = "127.20.0.1") -> None:
        self.host = host
        self._next_ip = int(ipaddress.IPv4Address(stock_base))
        self._nonce = secrets.token_hex(16)
        self.miners: list[SimMiner] = []
        self.gpu_hosts: list[GpuHost] = []
        self.addresses: dict[str, tuple[str, int]] = {}
        self._loop = _new_loop()
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=120)

    def _take_ip(self) -> str:
        while True:
            ip = ipaddress.IPv4Address(self._next_ip)
            self._next_ip += 1
            if ip not in _LOOPBACK:
                raise ValueError("stock miners ran out of 127.0.0.0/8 addresses")
            if ip.packed[3] not in (0, 255):
                return str(ip)

    async def _serve_miner(self, miner: SimMiner) -> int:
        async def handle_web(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if miner.fault == "reset":
                    _reset(writer)
                    return
                await _serve_web(miner, self._nonce, reader, writer)
            except (ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if miner.fault == "reset":
                    _reset(writer)
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

        if miner.stock:
            api = await asyncio.start_server(handle, miner.ip, 4028, backlog=64)
            web = await asyncio.start_server(handle_web, miner.ip, 80, backlog=64)
            self._servers += [api, web]
            return 4028
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

    def add_miners(
        self, count: int, prefix: str = "asic", stock: bool = False, **kwargs: Any
    ) -> list[SimMiner]:
        async def start() -> list[SimMiner]:
            added = []
            for _ in range(count):
                ip = self._take_ip() if stock else self.host
                miner = SimMiner(f"{prefix}-{len(self.miners):05d}", stock=stock, ip=ip,
                                 **kwargs)
                port = await self._serve_miner(miner)
                self.miners.append(miner)
                self.addresses[miner.miner_id] = (ip, port)
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
    parser.add_argument(
        "--stock",
        action="store_true",
        help="each miner on its own loopback address, API 4028 + stock web UI 80",
    )
    parser.add_argument("--stock-base", default="127.20.0.1",
                        help="first loopback address of --stock miners")
    parser.add_argument("--prefix", default="asic", help="miner id prefix")
    args = parser.parse_args(argv)
    fleet = SimFleet(stock_base=args.stock_base)
    fleet.add_miners(args.miners, prefix=args.prefix, stock=args.stock)
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
