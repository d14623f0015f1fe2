"""mrbench's contract checks on this plugin's algorithm and attack (run: ``pytest``).

``mrbench_check`` and ``mrbench_attack_check`` come from mrbench's pytest plugin
(installed with mrbench): each test runs once per check in
``bench.testing.ALGORITHM_CHECKS`` / ``bench.testing.ATTACK_CHECKS``, on every variant
passed. Without the fixtures, ``test_contract = bench.testing.algorithm_contract_tests(
CosineCentroid)`` and ``bench.testing.attack_contract_tests(MIFGSM(steps=3))`` do the same.
"""

from __future__ import annotations

from bench.plugins import get_registry
from mrbench_example_plugin.algorithm import CosineCentroid
from mrbench_example_plugin.attack import MIFGSM


def test_contract(mrbench_check):
    mrbench_check(CosineCentroid(), CosineCentroid(scale=1.0))


def test_attack_contract(mrbench_attack_check):
    mrbench_attack_check(MIFGSM(), MIFGSM(steps=3, decay=0.5))


def test_registered_through_the_entry_point():
    # Needs the distribution installed (pip install -e .): mrbench finds it by its entry point.
    registry = get_registry()
    assert registry.get("algorithm", CosineCentroid.id).provenance.distribution == "mrbench-example-plugin"
    assert registry.get("attack", MIFGSM.id).provenance.distribution == "mrbench-example-plugin"
