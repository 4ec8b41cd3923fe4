"""docs/contract.md and the code name the same topics, fields, states, kinds and reasons.

The contract page is what users read; ``hcp/schemas.py`` and the kernels are what runs.
A field renamed on one side only fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flows.profitability.kernels import ACTIONS, REASONS
from hcp import schemas
from hcp.topics import Topics

CONTRACT = (Path(__file__).resolve().parents[3] / "docs" / "contract.md").read_text()
NAMES = set(re.findall(r"`([a-z_.:{}0-9-]+)`", CONTRACT))


@pytest.mark.parametrize("topic", Topics().all())
def test_every_topic_is_in_the_contract(topic: str) -> None:
    assert topic in NAMES


@pytest.mark.parametrize(
    "fields",
    [schemas.GPU_FIELDS, schemas.ASIC_FIELDS, schemas.PRICE_FIELDS, schemas.WORKLOAD_FIELDS],
    ids=["gpu", "asic", "prices", "workloads"],
)
def test_every_input_field_is_in_the_contract(fields: tuple[schemas.Field, ...]) -> None:
    missing = [f.name for f in fields if f.name not in NAMES]
    assert not missing


def test_states_kinds_actions_and_reasons_are_in_the_contract() -> None:
    words = (
        *schemas.GPU_STATES,
        *schemas.ASIC_STATES,
        *schemas.PRICE_KINDS,
        *schemas.WORKLOAD_KINDS,
        *ACTIONS,
        *REASONS,
    )
    assert not [w for w in words if w not in NAMES]


def test_recommendation_columns_are_in_the_contract() -> None:
    assert not [c for c in schemas.REC_SCHEMA if c not in NAMES]
