"""Seeded, vectorised simulators of an ASIC + GPU fleet, its market and its workloads.

``generate`` writes a simulated run to Kafka; ``Simulation`` yields the same messages
without a broker; ``GpuFleet.assign`` lets a scheduler drive GPU states.
"""

from generators.asic_fleet import AsicFleet, AsicParams
from generators.gpu_fleet import GpuFleet, GpuParams
from generators.market import Market, MarketParams
from generators.run import Progress, Summary, generate, stream_topics
from generators.scenario import Scenario, load_scenario
from generators.simulation import Batch, SimConfig, Simulation

__all__ = [
    "AsicFleet",
    "AsicParams",
    "Batch",
    "GpuFleet",
    "GpuParams",
    "Market",
    "MarketParams",
    "Progress",
    "Scenario",
    "SimConfig",
    "Simulation",
    "Summary",
    "generate",
    "load_scenario",
    "stream_topics",
]
