"""mrbench's contract checks on this plugin's algorithm (run: ``pytest``).

``mrbench_check`` comes from mrbench's pytest plugin (installed with mrbench): the
test runs once per check in ``bench.testing.ALGORITHM_CHECKS``. Without the fixture,
``test_contract = bench.testing.algorithm_contract_tests(CosineCentroid)`` does the same.
"""

from __future__ import annotations

from bench.plugins import get_registry
from mrbench_example_plugin.algorithm import CosineCentroid


def test_contract(mrbench_check):
    mrbench_check(CosineCentroid())
    mrbench_check(CosineCentroid(scale=1.0))


def test_registered_through_the_entry_point():
    # Needs the distribution installed (pip install -e .): mrbench finds it by its entry point.
    registry = get_registry()
    cls = registry.get("algorithm", CosineCentroid.id)
    assert cls.provenance.distribution == "mrbench-example-plugin"
