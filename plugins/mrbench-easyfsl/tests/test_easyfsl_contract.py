"""Every easyfsl method passes mrbench's shipped contract checks."""

from __future__ import annotations

import pytest

from bench.plugins import get_registry
from mrbench_easyfsl.algorithms import ALGORITHMS


@pytest.mark.parametrize("cls", ALGORITHMS, ids=[c.id for c in ALGORITHMS])
def test_contract(mrbench_check, cls):
    mrbench_check(cls())


def test_transductive_variant_of_an_inductive_method(mrbench_check):
    # bn='batch' normalises the queries together: declared transductive, and shown to be.
    from mrbench_easyfsl.algorithms import PrototypicalNetworks

    mrbench_check(PrototypicalNetworks(bn="batch"))


def test_entry_point_registers_every_method():
    registry = get_registry()
    ids = {c.id for c in ALGORITHMS}
    assert len(ids) == 11 and all(i.startswith("easyfsl-") for i in ids)
    for algo_id in ids:
        assert registry.get("algorithm", algo_id).provenance.distribution == "mrbench-easyfsl"
