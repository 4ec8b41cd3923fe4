"""One simulated world: fleets, market, workload requests and scenario, stepped by seconds.

:meth:`Simulation.blocks` yields ready-to-produce :class:`Batch` es (keys, JSON values and
partitions) for a block of simulated seconds. Fleets are stepped one second at a time (so
the random streams, and hence the messages, do not depend on the block size) and encoded
per block in chunks of at most ``chunk_rows`` rows, which bounds memory at any fleet size.
Each component draws from its own child of the seed, so ``--no-workloads`` or a different
ASIC count leaves the GPU messages unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl

from generators.asic_fleet import CURTAILED, FAULT, MINING, AsicFleet
from generators.control import ControlConfig, FleetControl
from generators.encode import encode_frame, encode_records
from generators.gpu_fleet import BUSY, DOWN, IDLE, GpuFleet, GpuParams
from generators.keys import partitions_for, site_ids, site_of
from generators.market import Market
from generators.scenario import Event, Scenario
from generators.workloads import Burst, WorkloadSource, run_tag
from hcp.schemas import PRICE_FIELDS, WORKLOAD_FIELDS, polars_schema

__all__ = ["STREAMS", "Batch", "SimConfig", "Simulation"]

STREAMS = ("gpu", "asic", "prices", "workloads")
_GPU_STATES = {"idle": IDLE, "busy": BUSY, "down": DOWN}
_ASIC_STATES = {"mining": MINING, "curtailed": CURTAILED, "fault": FAULT}
_PRICE_SCHEMA = {k: v for k, v in polars_schema(PRICE_FIELDS).items() if k != "v"}
_WORKLOAD_SCHEMA = {k: v for k, v in polars_schema(WORKLOAD_FIELDS).items() if k != "v"}


@dataclass(frozen=True)
class SimConfig:
    """What to simulate; the same config and seed give the same messages."""

    seed: int = 7
    gpus: int = 10
    asics: int = 50
    sites: int = 3
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    duration_s: int = 600
    workload_rate: float = 6.0  # requests per simulated minute
    market: bool = True
    workloads: bool = True
    scenario: Scenario | None = None
    # GPUs run only what the router assigns (hcp.workloads.assignments), no background jobs.
    closed_loop: bool = False
    # Fleets follow the job's commands on hcp.fleet.commands (generators/control.py).
    control: ControlConfig | None = None


@dataclass
class Batch:
    """Messages of one stream, ready for ``produce``: parallel lists."""

    stream: str
    keys: list[bytes]
    values: list[str]
    partitions: list[int]


class Simulation:
    """The simulated world. ``partitions`` maps each stream to its topic's partition count."""

    def __init__(
        self,
        config: SimConfig,
        partitions: dict[str, int] | None = None,
        chunk_rows: int = 65_536,
    ) -> None:
        self.config = c = config
        self.partitions = {s: 8 for s in STREAMS} | (partitions or {})
        self.chunk_rows = chunk_rows
        self.sites = site_ids(c.sites)
        seq = np.random.SeedSequence(c.seed)
        r_site, r_gpu, r_asic, r_market, r_work = (np.random.default_rng(s) for s in seq.spawn(5))
        self.ambient_base = r_site.uniform(16.0, 28.0, c.sites)
        self.gpu = GpuFleet(
            c.gpus,
            site_of(c.gpus, c.sites),
            r_gpu,
            c.start_ms,
            GpuParams(background_jobs=not c.closed_loop),
        )
        self.asic = AsicFleet(c.asics, site_of(c.asics, c.sites), r_asic, c.start_ms)
        random_spikes = c.scenario.random_spikes if c.scenario else True
        self.market = Market(
            self.sites, [self.gpu.params.model], r_market, random_spikes=random_spikes
        )
        self.work = WorkloadSource(
            c.workload_rate if c.workloads else 0.0, r_work, run_tag(c.seed, c.start_ms)
        )
        # Devices report at a fixed phase within each second, increasing with the index,
        # so each second's batch (in index order) is already in time order.
        self._gpu_phase = (np.arange(c.gpus, dtype=np.int64) * 1000) // max(c.gpus, 1)
        self._asic_phase = (np.arange(c.asics, dtype=np.int64) * 1000) // max(c.asics, 1)
        self._gpu_keys = [k.encode() for k in self.gpu.ids]
        self._asic_keys = [k.encode() for k in self.asic.ids]
        self._gpu_parts = partitions_for(self._gpu_keys, self.partitions["gpu"])
        self._asic_parts = partitions_for(self._asic_keys, self.partitions["asic"])
        self._gpu_static = self.gpu.static_frame(self.sites)
        self._asic_static = self.asic.static_frame(self.sites)
        self._schedule = self._build_schedule(c.scenario)
        self._bursts: list[Burst] = []
        self._site_mw = self._nameplate_mw()
        self.on_second: Callable[[Simulation, int], None] | None = None
        self.control = (
            FleetControl(c.control, c.seed, c.gpus, c.asics) if c.control is not None else None
        )

    # -- scenario --------------------------------------------------------------------------
    def _build_schedule(self, scenario: Scenario | None) -> dict[int, list[tuple[str, Event]]]:
        """second -> [("begin" | "end", event)], ends before begins within a second."""
        plan: dict[int, list[tuple[str, Event]]] = {}
        for ev in scenario.events if scenario else ():
            plan.setdefault(ev.start_s, []).append(("begin", ev))
            if ev.end_s is not None:
                plan.setdefault(ev.end_s, []).insert(0, ("end", ev))
        return plan

    def _nameplate_mw(self) -> np.ndarray:
        """Peak power of each site's devices in MW (what a power-cap fraction applies to)."""
        mw = np.zeros(len(self.sites))
        np.add.at(mw, self.gpu.site_index, self.gpu.params.max_power_w / 1e6)
        np.add.at(mw, self.asic.site_index, self.asic.nominal_w * 1.05 / 1e6)
        return mw

    def _site_mask(self, site_index: np.ndarray, site: str | None) -> np.ndarray:
        if site is None:
            return np.ones(site_index.size, dtype=bool)
        return site_index == self.sites.index(site)

    def _apply(self, phase: str, ev: Event) -> None:
        site = self.sites.index(ev.site) if ev.site else -1
        end_ms = self.config.start_ms + (ev.end_s or 0) * 1000
        p = ev.params
        begin = phase == "begin"
        if ev.type == "electricity":
            self.market.override_electricity(site, float(p["value"]) if begin else None)
        elif ev.type == "btc_price":
            self.market.set_btc(float(p["value"]))
        elif ev.type == "difficulty":
            self.market.set_difficulty(float(p["value"]))
        elif ev.type == "power_cap":
            if begin:
                mw = p["mw"] if "mw" in p else p["fraction"] * self._site_mw[site]
                self.market.set_power_cap(site, float(mw))
            else:
                self.market.clear_power_cap(site, float(math.ceil(self._site_mw[site] * 2 + 1)))
        elif ev.type == "workload_burst":
            self._bursts.append(
                Burst(
                    int(p["count"]),
                    p.get("kind"),
                    p.get("priority"),
                    p.get("gpus"),
                    p.get("customer"),
                )
            )
        elif ev.type == "gpu_state" and begin:
            mask = self._site_mask(self.gpu.site_index, ev.site)
            label = p.get("workload_id", f"scenario-{ev.start_s}")
            self.gpu.force(mask, _GPU_STATES[p["state"]], end_ms, label)
        elif ev.type == "asic_state" and begin:
            mask = self._site_mask(self.asic.site_index, ev.site)
            self.asic.set_state(mask, _ASIC_STATES[p["state"]], end_ms)

    # -- stepping --------------------------------------------------------------------------
    def ambient(self, t_ms: int) -> np.ndarray:
        hour = (t_ms / 3_600_000.0) % 24.0
        return self.ambient_base + 4.0 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)

    def blocks(self, first_s: int, seconds: int) -> Iterator[Batch]:
        """Step seconds ``first_s .. first_s + seconds - 1`` and yield their batches."""
        c = self.config
        gpu_cols: list[dict[str, np.ndarray]] = []
        asic_cols: list[dict[str, np.ndarray]] = []
        prices: list[dict] = []
        price_keys: list[bytes] = []
        requests: list[dict] = []
        for s in range(first_s, first_s + seconds):
            t_ms = c.start_ms + s * 1000
            if self.on_second is not None:
                self.on_second(self, s)
            for phase, ev in self._schedule.get(s, ()):
                self._apply(phase, ev)
            amb = self.ambient(t_ms)
            if self.control is not None:
                self.control.apply_due(self, t_ms)
            if c.gpus:
                cols = self.gpu.step(t_ms, amb)
                if self.control is not None:
                    self.control.adjust_gpu(self, cols)
                gpu_cols.append(cols)
            if c.asics:
                asic_cols.append(self.asic.step(t_ms, amb))
            if c.market:
                for kind, scope_field, scope, value in self.market.step(s, t_ms):
                    rec = {"ts": t_ms, "kind": kind, "value": float(value)}
                    if scope_field:
                        rec[scope_field] = scope
                    prices.append(rec)
                    price_keys.append(f"{kind}:{scope}".encode() if scope else kind.encode())
            if c.workloads or self._bursts:
                requests.extend(self.work.step(t_ms, self._bursts))
                self._bursts = []
        start_ms = c.start_ms + first_s * 1000
        if gpu_cols:
            yield from self._fleet_batches(
                "gpu",
                self.gpu,
                self._gpu_static,
                self._gpu_phase,
                gpu_cols,
                start_ms,
                self._gpu_keys,
                self._gpu_parts,
            )
        if asic_cols:
            yield from self._fleet_batches(
                "asic",
                self.asic,
                self._asic_static,
                self._asic_phase,
                asic_cols,
                start_ms,
                self._asic_keys,
                self._asic_parts,
            )
        if prices:
            values = encode_records(prices, _PRICE_SCHEMA)
            parts = partitions_for(price_keys, self.partitions["prices"])
            yield Batch("prices", price_keys, values, parts)
        if requests:
            keys = [r["workload_id"].encode() for r in requests]
            values = encode_records(requests, _WORKLOAD_SCHEMA)
            yield Batch(
                "workloads", keys, values, partitions_for(keys, self.partitions["workloads"])
            )

    def _fleet_batches(
        self,
        stream: str,
        fleet: GpuFleet | AsicFleet,
        static: pl.DataFrame,
        phase: np.ndarray,
        cols: list[dict[str, np.ndarray]],
        start_ms: int,
        keys: list[bytes],
        parts: list[int],
    ) -> Iterator[Batch]:
        n = fleet.n
        per_chunk = max(1, self.chunk_rows // n)  # whole seconds per chunk
        for i in range(0, len(cols), per_chunk):
            group = cols[i : i + per_chunk]
            k = len(group)
            ts = (np.arange(i, i + k, dtype=np.int64) * 1000 + start_ms)[:, None] + phase[None, :]
            merged = {name: np.concatenate([g[name] for g in group]) for name in group[0]}
            tiled = static if k == 1 else pl.concat([static] * k)
            frame = fleet.frame(tiled, ts.ravel(), merged)
            if k > 1:
                yield Batch(stream, keys * k, encode_frame(frame), parts * k)
                continue
            # One second of a large fleet is split so no chunk exceeds chunk_rows rows.
            for lo in range(0, n, self.chunk_rows):
                part = frame.slice(lo, self.chunk_rows)
                hi = lo + part.height
                yield Batch(stream, keys[lo:hi], encode_frame(part), parts[lo:hi])
