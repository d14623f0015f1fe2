"""Contract checks every plugin component must pass, shipped to plugin authors.

One list of checks per component kind: :data:`ALGORITHM_CHECKS`,
:data:`ATTACK_CHECKS`, :data:`SHIFT_CHECKS` and :data:`DATASET_CHECKS`. Each check
takes a component instance and raises :class:`ContractError` (an ``AssertionError``)
with a message naming the component, what is wrong and what to change. No check
skips, so one test can check several variants of a component.

This package is also a pytest plugin (the ``pytest11`` entry point ``mrbench``), so
with mrbench installed every pytest run has one fixture per kind, each running the
test once per check of its kind::

    def test_contract(mrbench_check):             # ALGORITHM_CHECKS
        mrbench_check(MyAlgorithm(), MyAlgorithm(bn="batch"))

    def test_attack_contract(mrbench_attack_check):   # ATTACK_CHECKS
        mrbench_attack_check(MyAttack(steps=3))

    def test_shift_contract(mrbench_shift_check):     # SHIFT_CHECKS
        mrbench_shift_check(MyShift())

    def test_dataset_contract(mrbench_dataset_check): # DATASET_CHECKS
        mrbench_dataset_check(MyDataset())

A fixture's check takes any number of variants and checks every one of them, even
after one fails; the test then fails once, naming each failing variant. Without the
fixtures, one line makes the parametrized test (one test per check and variant)::

    from bench.testing import algorithm_contract_tests, attack_contract_tests

    test_contract = algorithm_contract_tests(MyAlgorithm, MyAlgorithm(fast=True))
    test_attack_contract = attack_contract_tests(MyAttack(steps=3))

mrbench's own test suite runs them over every registered component. Importing this
package has no side effects (it loads no plugins and builds no registry).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from bench.components import Algorithm, Attack, Dataset, Shift
from bench.testing._common import (
    SPEC, ContractError, VariantCheck, check_id, init_params, label, make, random_episodes,
)
from bench.testing.algorithms import (
    ALGORITHM_CHECKS, GRADIENT_SPEC, check_init_deterministic, check_input_gradients, check_logits_shape,
    check_meta_gradient_batched_equals_loop, check_metadata, check_pure, check_query_independence,
    check_strict_options, check_train_step, check_training_params_cover_init, check_vmap_matches_loop,
    checked_predict, make_train_context, random_split, run_train_step,
)
from bench.testing.attacks import ATTACK_CHECKS, ATTACK_EPS, PixelCentroid, attack_episodes, reference_fgsm
from bench.testing.datasets import DATASET_CHECKS
from bench.testing.shifts import SHIFT_CHECKS, SHIFT_SPEC, shift_episodes

__all__ = [
    "ALGORITHM_CHECKS", "ATTACK_CHECKS", "ATTACK_EPS", "DATASET_CHECKS", "GRADIENT_SPEC", "SHIFT_CHECKS", "SHIFT_SPEC",
    "SPEC", "ContractError", "PixelCentroid", "VariantCheck", "algorithm_contract_tests", "attack_contract_tests",
    "attack_episodes", "check_init_deterministic", "check_input_gradients", "check_logits_shape",
    "check_meta_gradient_batched_equals_loop", "check_metadata", "check_pure", "check_query_independence",
    "check_strict_options", "check_train_step", "check_training_params_cover_init", "check_vmap_matches_loop",
    "checked_predict", "dataset_contract_tests", "init_params", "make_train_context", "random_episodes",
    "random_split", "reference_fgsm", "run_train_step", "shift_contract_tests", "shift_episodes",
]


def _contract_tests(checks: list[Callable[[Any], None]], base: type, what: str, components: tuple[Any, ...]):
    if not components:
        raise TypeError(f"{what}_contract_tests needs at least one {what} class, instance or factory")

    @pytest.mark.parametrize("check", checks, ids=check_id)
    @pytest.mark.parametrize("component", components, ids=[label(c) for c in components])
    def test_contract(component: Any, check: Callable[[Any], None]) -> None:
        check(make(component, base))

    return test_contract


def algorithm_contract_tests(*algorithms: "Algorithm | type[Algorithm] | Callable[[], Algorithm]"):
    """A pytest test function running every :data:`ALGORITHM_CHECKS` check on each algorithm.

    Assign it to a ``test_*`` name in a test module::

        test_contract = algorithm_contract_tests(MyAlgorithm, MyAlgorithm(bn="batch"))

    :param algorithms: algorithm classes (created with default options), instances,
        or zero-argument factories; a fresh instance is made per check when a class
        or factory is given.
    """
    return _contract_tests(ALGORITHM_CHECKS, Algorithm, "algorithm", algorithms)


def attack_contract_tests(*attacks: "Attack | type[Attack] | Callable[[], Attack]"):
    """A pytest test function running every :data:`ATTACK_CHECKS` check on each attack:
    ``test_attack_contract = attack_contract_tests(MyAttack(steps=3))``.

    :param attacks: attack instances (give them cheap options: every check runs the
        attack a few times per target), classes (default options) or factories.
    """
    return _contract_tests(ATTACK_CHECKS, Attack, "attack", attacks)


def shift_contract_tests(*shifts: "Shift | type[Shift] | Callable[[], Shift]"):
    """A pytest test function running every :data:`SHIFT_CHECKS` check on each shift:
    ``test_shift_contract = shift_contract_tests(MyShift, MyShift(target="both"))``.

    :param shifts: shift instances, classes (default options) or factories.
    """
    return _contract_tests(SHIFT_CHECKS, Shift, "shift", shifts)


def dataset_contract_tests(*datasets: "Dataset | type[Dataset] | Callable[[], Dataset]"):
    """A pytest test function running every :data:`DATASET_CHECKS` check on each dataset.

    :param datasets: dataset instances, classes (default options) or factories.
    """
    return _contract_tests(DATASET_CHECKS, Dataset, "dataset", datasets)


@pytest.fixture(params=ALGORITHM_CHECKS, ids=check_id)
def mrbench_check(request: pytest.FixtureRequest) -> VariantCheck:
    """One of :data:`ALGORITHM_CHECKS` (the test runs once per check): call it on your
    algorithm and its variants, ``mrbench_check(MyAlgorithm(), MyAlgorithm(bn="batch"))``.
    Provided by mrbench's pytest plugin (this package, the ``pytest11`` entry point ``mrbench``)."""
    return VariantCheck(request.param, Algorithm)


@pytest.fixture(params=ATTACK_CHECKS, ids=check_id)
def mrbench_attack_check(request: pytest.FixtureRequest) -> VariantCheck:
    """One of :data:`ATTACK_CHECKS` (the test runs once per check): call it on your
    attack, with cheap options, ``mrbench_attack_check(MyAttack(steps=3))``."""
    return VariantCheck(request.param, Attack)


@pytest.fixture(params=SHIFT_CHECKS, ids=check_id)
def mrbench_shift_check(request: pytest.FixtureRequest) -> VariantCheck:
    """One of :data:`SHIFT_CHECKS` (the test runs once per check): call it on your
    shift and its variants, ``mrbench_shift_check(MyShift(), MyShift(target="both"))``."""
    return VariantCheck(request.param, Shift)


@pytest.fixture(params=DATASET_CHECKS, ids=check_id)
def mrbench_dataset_check(request: pytest.FixtureRequest) -> VariantCheck:
    """One of :data:`DATASET_CHECKS` (the test runs once per check): call it on your
    dataset, ``mrbench_dataset_check(MyDataset())``."""
    return VariantCheck(request.param, Dataset)
