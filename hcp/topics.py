"""Topic names of SPEC section 1, derived from one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Topics"]


@dataclass(frozen=True)
class Topics:
    """The topic set of one HCP deployment; tests use a fresh prefix per test."""

    prefix: str = "hcp."

    @property
    def gpu(self) -> str:
        return f"{self.prefix}telemetry.gpu"

    @property
    def asic(self) -> str:
        return f"{self.prefix}telemetry.asic"

    @property
    def prices(self) -> str:
        return f"{self.prefix}market.prices"

    @property
    def workloads(self) -> str:
        return f"{self.prefix}workloads.requests"

    @property
    def assignments(self) -> str:
        return f"{self.prefix}workloads.assignments"

    @property
    def commands(self) -> str:
        """Fleet commands (docs/control-loop.md): a device's action when it changes."""
        return f"{self.prefix}fleet.commands"

    @property
    def command_results(self) -> str:
        """``hcp agent``'s result per fleet command (docs/fleet.md); the job stores them."""
        return f"{self.prefix}fleet.command_results"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}dlq"

    def inputs(self) -> list[str]:
        """Topics the generators write and the jobs read."""
        return [self.gpu, self.asic, self.prices, self.workloads]

    def all(self) -> list[str]:
        return [*self.inputs(), self.assignments, self.commands, self.command_results, self.dlq]
