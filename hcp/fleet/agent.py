"""The site command agent: applies ``hcp.fleet.commands`` to the site's devices.

Reads its site's commands with ``assign()`` from the consumer group's committed offsets
(the beginning when none), and for each command:

1. skips it unless it is for this agent's site (not ours: no result, offset committed);
2. a device not in the inventory -> ``failed`` / ``unknown_device``;
3. reads the device's state first: already as commanded -> ``unchanged`` (so a restart
   that replays an uncommitted command does not switch the device twice);
4. ``--dry-run`` -> ``skipped_dry_run``;
5. waits for the per-site rate limit (N switches per sliding minute), then applies:
   ASIC ``curtail`` / ``mine`` through pyasic-rs's own ``pause()`` / ``resume()`` for a miner
   at the library's port (4028; stock Antminer: ``set_miner_conf.cgi`` ``miner-mode``), else
   through the CGMiner API's LuxOS ``curtail sleep|wakeup`` (asic-rs cannot address another
   port; docs/fleet.md); GPU ``serve`` / ``offer`` /
   ``power_down`` through the operator's hook command (``CMD ACTION DEVICE_ID SITE``);
6. publishes one result on ``hcp.fleet.command_results`` and commits the offset after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import subprocess
import time
from collections import deque
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from prometheus_client import Counter

from hcp.commands import decode_command
from hcp.fleet import asiclib
from hcp.fleet.cgminer import DeviceError, request
from hcp.fleet.inventory import Device
from hcp.kafka_admin import ensure_topics, partition_counts
from hcp.kafka_config import kafka_conf
from hcp.schemas import SCHEMA_VERSION
from hcp.topics import Topics

__all__ = ["Agent", "RateLimit"]

log = logging.getLogger("hcp.agent")

RESULTS = Counter("hcp_agent_command_results", "Command results by status", ["status"])
BAD_COMMANDS = Counter("hcp_agent_bad_commands", "Command records that did not decode, skipped")
ASIC_ACTIONS = {"curtail": "sleep", "mine": "wakeup"}
GPU_ACTIONS = ("serve", "offer", "power_down")


class RateLimit:
    """At most ``per_minute`` switches in any 60 s; ``wait()`` blocks until one is free."""

    def __init__(self, per_minute: int, clock: Any = time.monotonic, sleep: Any = time.sleep):
        self.per_minute = per_minute
        self._times: deque[float] = deque()
        self._clock, self._sleep = clock, sleep

    def wait(self) -> float:
        """Take one slot; the seconds waited."""
        waited = 0.0
        while True:
            now = self._clock()
            while self._times and now - self._times[0] >= 60.0:
                self._times.popleft()
            if len(self._times) < self.per_minute:
                self._times.append(now)
                return waited
            pause = 60.0 - (now - self._times[0])
            self._sleep(pause)
            waited += pause


class Agent:
    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        site: str,
        devices: list[Device],
        *,
        dry_run: bool = False,
        rate_per_minute: int = 60,
        gpu_hook: str | None = None,
        timeout_s: float = 2.0,
        group: str | None = None,
    ) -> None:
        self.site = site
        self.devices = {d.device_id: d for d in devices if d.site == site}
        self.dry_run = dry_run
        self.rate = RateLimit(rate_per_minute)
        self.gpu_hook = gpu_hook
        self.timeout_s = timeout_s
        self.topic = topics.commands
        self.results = topics.command_results
        ensure_topics(bootstrap, [self.results], 1)
        self._consumer = Consumer(kafka_conf(bootstrap, {
            "group.id": group or f"hcp-agent-{site}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }))
        parts = partition_counts(bootstrap, [self.topic]).get(self.topic, 1)
        tps = [TopicPartition(self.topic, p) for p in range(parts)]
        committed = self._consumer.committed(tps, timeout=10)
        self._consumer.assign(
            [
                TopicPartition(
                    self.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                )
                for tp in committed
            ]
        )
        self._producer = Producer(kafka_conf(bootstrap, {"enable.idempotence": True}))
        self.counts: dict[str, int] = {}
        # One event loop for the agent's life: the library's Miner handles (and their pooled
        # web connections) outlive a command, and a loop per command would orphan them.
        self._loop = asyncio.new_event_loop()
        self._control = (
            asiclib.MinerControl(max(timeout_s, 1.0)) if asiclib.available() else None
        )

    # -- device side ----------------------------------------------------------------
    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def _use_library(self, device: Device) -> bool:
        return self._control is not None and asiclib.library_port(device)

    def _asic_sleeping(self, device: Device) -> bool:
        if self._use_library(device):
            assert self._control is not None
            return not self._run(self._control.is_mining(device.host))
        answer = self._run(request(device.host, device.port, "summary", timeout=self.timeout_s))
        summary = answer.get("SUMMARY") or [{}]
        return float(summary[0].get("GHS 5s", 0.0)) < 1000.0

    def _asic_switch(self, device: Device, sleep: bool) -> None:
        if self._use_library(device):
            assert self._control is not None
            self._run(self._control.set_mining(device.host, not sleep))
            return
        mode = "sleep" if sleep else "wakeup"
        self._run(request(device.host, device.port, "curtail", mode, timeout=self.timeout_s))

    def _apply(self, cmd: dict[str, Any]) -> tuple[str, str | None]:
        device = self.devices.get(cmd["device_id"])
        if device is None or device.kind != cmd["device_type"]:
            return "failed", "unknown_device"
        action = cmd["action"]
        if device.kind == "asic":
            mode = ASIC_ACTIONS.get(action)
            if mode is None:
                return "failed", "unsupported_action"
            try:
                if self._asic_sleeping(device) == (mode == "sleep"):
                    return "unchanged", None
                if self.dry_run:
                    return "skipped_dry_run", None
                self.rate.wait()
                self._asic_switch(device, mode == "sleep")
            except DeviceError as exc:
                return "failed", f"device_{exc.reason}"
            return "applied", None
        if action not in GPU_ACTIONS:
            return "failed", "unsupported_action"
        if self.gpu_hook is None:
            return "failed", "no_gpu_hook"
        if self.dry_run:
            return "skipped_dry_run", None
        self.rate.wait()
        try:
            done = subprocess.run(
                [*shlex.split(self.gpu_hook), action, device.device_id, device.site],
                timeout=60,
                capture_output=True,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return "failed", f"hook_error: {type(exc).__name__}"
        if done.returncode != 0:
            return "failed", f"hook_exit_{done.returncode}"
        return "applied", None

    # -- Kafka side -----------------------------------------------------------------
    def _result(self, cmd: dict[str, Any], status: str, reason: str | None, pos: str) -> None:
        msg = {
            "v": SCHEMA_VERSION,
            "ts": int(time.time() * 1000),
            "device_id": cmd["device_id"],
            "device_type": cmd["device_type"],
            "site": cmd["site"],
            "action": cmd["action"],
            "status": status,
            "reason": reason,
            "command_ts": cmd["ts"],
            "command_position": pos,
            "dry_run": self.dry_run,
        }
        self._producer.produce(self.results, json.dumps(msg).encode(), cmd["device_id"].encode())
        self._producer.flush(30)
        self.counts[status] = self.counts.get(status, 0) + 1
        RESULTS.labels(status).inc()

    def poll(self, timeout_s: float = 1.0) -> int:
        """Handle the commands available now; how many were handled (all sites)."""
        handled = 0
        for record in self._consumer.consume(500, timeout_s):
            if record.error():
                if record.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("command topic: %s", record.error())
                continue
            pos = f"{record.partition()}:{record.offset()}"
            try:
                cmd = decode_command(record.value())
            except ValueError as exc:
                log.warning("bad command at %s: %s", pos, exc)
                BAD_COMMANDS.inc()
                self.counts["bad_command"] = self.counts.get("bad_command", 0) + 1
                cmd = None
            if cmd is not None and str(cmd["site"]) == self.site:
                status, reason = self._apply(cmd)
                self._result(cmd, status, reason, pos)
            # Committed only after the result is out: a crash before repeats the command,
            # and the state check turns the repeat into "unchanged".
            self._consumer.commit(
                offsets=[TopicPartition(self.topic, record.partition(), record.offset() + 1)],
                asynchronous=False,
            )
            handled += 1
        return handled

    def close(self) -> None:
        self._producer.flush(30)
        self._consumer.close()
        self._loop.close()
