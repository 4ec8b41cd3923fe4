"""The simulated fleets obey the job's commands (``hcp.fleet.commands``), mostly.

A real fleet does not switch the instant it is told: an S21 takes a while to spin its
hashboards down or back up, and some machines (a firmware that ignores the pool's
controller, a site that overrides it) never follow. :class:`FleetControl` models that:

- a command takes effect ``ramp_s`` simulated seconds after the fleet sees it;
- a fixed, seeded share of devices ignores every command (``ignore_share``) and another
  share obeys ``late_s`` seconds later still (``late_share``);
- ASICs: ``curtail`` stops hashing (state ``curtailed``, ~20 W) until a ``mine`` command;
  a faulted miner stays faulted;
- GPUs: ``power_down`` parks an idle GPU at standby power (``standby_w``) and it takes no
  background work until ``offer``/``serve``; it still reports ``idle``, so the job keeps
  seeing it and can bring it back when renting pays again. A busy GPU finishes its work
  first (the router gives no new work to a GPU told to power down).

Which devices ignore or lag depends only on the seed and the fleet sizes, so two runs with
the same flags have the same rebels (the messages still depend on the running job).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from generators.asic_fleet import CURTAILED, FAULT
from generators.gpu_fleet import IDLE

if TYPE_CHECKING:
    from generators.simulation import Simulation

__all__ = ["ControlConfig", "FleetControl"]

_FOREVER_MS = 2**62
_ON = {"mine", "serve", "offer"}


@dataclass(frozen=True)
class ControlConfig:
    """How the simulated fleet follows commands."""

    ramp_s: float = 30.0
    ignore_share: float = 0.0
    late_share: float = 0.0
    late_s: float = 300.0
    standby_w: float = 10.0

    def validate(self) -> ControlConfig:
        for name in ("ignore_share", "late_share"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                msg = f"{name.replace('_', '-')} must be in [0, 1], got {share}"
                raise ValueError(msg)
        if self.ignore_share + self.late_share > 1.0:
            msg = "ignore-share + late-share must not exceed 1"
            raise ValueError(msg)
        return self


@dataclass
class _Pending:
    """Commands waiting for their ramp, per fleet: index -> (due ms, turn on?)."""

    due: dict[int, tuple[int, bool]] = field(default_factory=dict)


class FleetControl:
    """Applies commands to a :class:`~generators.simulation.Simulation`'s fleets."""

    def __init__(self, config: ControlConfig, seed: int, n_gpus: int, n_asics: int) -> None:
        self.config = config.validate()
        # Its own random stream: the fleets' and market's messages stay what they were.
        rng = np.random.default_rng([seed, 17])
        u_asic, u_gpu = rng.random(n_asics), rng.random(n_gpus)
        c = config
        self.asic_ignores = u_asic < c.ignore_share
        self.asic_late = (u_asic >= c.ignore_share) & (u_asic < c.ignore_share + c.late_share)
        self.gpu_ignores = u_gpu < c.ignore_share
        self.gpu_late = (u_gpu >= c.ignore_share) & (u_gpu < c.ignore_share + c.late_share)
        self.gpu_parked = np.zeros(n_gpus, dtype=bool)
        self._asic = _Pending()
        self._gpu = _Pending()
        self.applied = 0
        self.ignored = 0

    # -- receiving -------------------------------------------------------------------------
    def receive(self, sim: Simulation, msgs: list[dict[str, Any]], now_ms: int) -> None:
        """Queue commands seen at ``now_ms``; the newest per device wins."""
        c = self.config
        for msg in msgs:
            kind = msg.get("device_type")
            try:
                idx = _index(msg["device_id"])
            except (KeyError, ValueError):
                continue
            if kind == "asic" and idx < sim.asic.n:
                ignores, late, pending = self.asic_ignores, self.asic_late, self._asic
            elif kind == "gpu" and idx < sim.gpu.n:
                ignores, late, pending = self.gpu_ignores, self.gpu_late, self._gpu
            else:
                continue
            if ignores[idx]:
                self.ignored += 1
                continue
            delay = c.ramp_s + (c.late_s if late[idx] else 0.0)
            due = max(int(msg["ts"]), now_ms) + int(delay * 1000)
            pending.due[idx] = (due, msg["action"] in _ON)

    # -- acting ----------------------------------------------------------------------------
    def apply_due(self, sim: Simulation, now_ms: int) -> None:
        """Carry out the commands whose ramp has passed, before this second is stepped."""
        asic = sim.asic
        for idx, on in _take_due(self._asic, now_ms):
            self.applied += 1
            if asic.state[idx] == FAULT:
                continue
            if on:
                if asic.state[idx] == CURTAILED:
                    # Ends the pinned state on this step: back to mining.
                    asic.until_ms[idx] = 0
                    asic.forced[idx] = True
            else:
                asic.state[idx] = CURTAILED
                asic.until_ms[idx] = _FOREVER_MS
                asic.forced[idx] = True
        gpu = sim.gpu
        for idx, on in _take_due(self._gpu, now_ms):
            self.applied += 1
            if on and self.gpu_parked[idx] and gpu.state[idx] == IDLE:
                gpu.hold_until_ms[idx] = 0
            self.gpu_parked[idx] = not on
        # A parked idle GPU starts no background job and takes no random failure; a busy
        # one told to power down parks when its work ends.
        gpu.hold_until_ms[self.gpu_parked & (gpu.state == IDLE)] = _FOREVER_MS

    def adjust_gpu(self, sim: Simulation, cols: dict[str, np.ndarray]) -> None:
        """Parked idle GPUs draw standby power (after the fleet's own step)."""
        parked = self.gpu_parked & (sim.gpu.state == IDLE)
        if parked.any():
            cols["power_w"] = np.where(parked, self.config.standby_w, cols["power_w"])
            cols["util_pct"] = np.where(parked, 0.0, cols["util_pct"])


def _index(device_id: str) -> int:
    """``asic-00007`` -> 6 (ids are 1-based in the simulators)."""
    return int(device_id.rsplit("-", 1)[1]) - 1


def _take_due(pending: _Pending, now_ms: int) -> list[tuple[int, bool]]:
    due = [(i, on) for i, (t, on) in pending.due.items() if t <= now_ms]
    for i, _ in due:
        del pending.due[i]
    return sorted(due)
