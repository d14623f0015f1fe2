"""What the contract checks of every component kind share: the failure type, small
random inputs, and the runner that checks several variants of a component."""

from __future__ import annotations

import contextlib
import random
import re
from typing import Any, Callable, Iterator

import torch

from bench.components import Algorithm, Component, Episode, EpisodeSpec

SPEC = EpisodeSpec(n_way=3, k_shot=2, n_query=2)
"""The episode spec most checks run on: small, so every check is cheap."""

KEBAB = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


class ContractError(AssertionError):
    """A component breaks an mrbench contract; the message names the component, what is
    wrong and what to change. An ``AssertionError``, so pytest reports it as a failed test."""


def random_episodes(spec: EpisodeSpec = SPEC, n_episodes: int = 3, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> Episode:
    """Episodes of random images ``[E, ...]`` with class-major labels.

    :param spec: the episode spec (its ``image_shape`` included).
    :param n_episodes: the leading episode dim ``E``.
    :param seed: seed of the images.
    :param dtype: the images' dtype.
    """
    g = torch.Generator().manual_seed(seed)
    C, H, W = spec.image_shape
    labels = torch.arange(spec.n_way)
    return Episode(
        torch.rand(n_episodes, spec.n_support, C, H, W, generator=g, dtype=dtype),
        labels.repeat_interleave(spec.k_shot).expand(n_episodes, -1).contiguous(),
        torch.rand(n_episodes, spec.n_query_total, C, H, W, generator=g, dtype=dtype),
        labels.repeat_interleave(spec.n_query).expand(n_episodes, -1).contiguous(),
    )


def init_params(algo: Algorithm, spec: EpisodeSpec = SPEC, dtype: torch.dtype = torch.float32,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """``algo.init`` for ``spec`` from a generator seeded with ``seed``, cast to ``dtype``
    (the checks run in float64 where they compare numbers).

    :param algo: the algorithm instance.
    :param spec: the episode spec passed to ``init``.
    :param dtype: dtype of the returned tensors.
    :param seed: seed of the generator passed to ``init``.
    """
    return {k: v.to(dtype) for k, v in algo.init(spec, torch.Generator().manual_seed(seed)).items()}


def label(component: Any) -> str:
    """``id`` plus the options that differ from the defaults: ``protonet,bn=batch``."""
    if isinstance(component, Component):
        opts = component.options.model_dump(mode="json", exclude_defaults=True)
        return component.id + "".join(f",{k}={v}" for k, v in opts.items())
    return str(getattr(component, "id", None) or getattr(component, "__name__", "component"))


def check_id(check: Callable[..., None]) -> str:
    """A check's test id: its name without ``check_`` (and without its kind's prefix)."""
    name = check.__name__.removeprefix("check_")
    for kind in ("attack_", "shift_", "dataset_"):
        name = name.removeprefix(kind)
    return name


def make(component: Any, base: type) -> Any:
    """An instance from an instance, a class (default options) or a zero-argument factory."""
    return component if isinstance(component, base) else component()


def run_on_variants(check: Callable[[Any], None], components: tuple[Any, ...], base: type) -> None:
    """Run ``check`` on every variant, even after one fails, then fail once listing each
    failing variant. A single variant's failure is re-raised as it is (full traceback).
    No variant can hide another: the checks never skip, so every variant is checked."""
    if not components:
        raise TypeError(f"{check.__name__} needs at least one component instance, class or factory")
    if len(components) == 1:
        check(make(components[0], base))
        return
    failures: list[tuple[str, BaseException]] = []
    for component in components:
        instance = make(component, base)
        try:
            check(instance)
        except Exception as exc:  # every variant is checked before the test fails
            failures.append((label(instance), exc))
    if failures:
        text = "\n".join(f"- {name}: {type(exc).__name__}: {exc}" for name, exc in failures)
        raise ContractError(f"{check.__name__} failed for {len(failures)} of {len(components)} variants:\n{text}") \
            from failures[0][1]


class VariantCheck:
    """A contract check that takes one or more variants: ``check(MyAlgo(), MyAlgo(bn="batch"))``.

    What the ``mrbench_*check`` fixtures hand to a test. Every variant is checked (a
    failing one does not stop the others), and the test fails once, naming each
    failing variant.
    """

    def __init__(self, check: Callable[[Any], None], base: type) -> None:
        self.check = check
        self.base = base
        self.__name__ = check.__name__
        self.__doc__ = check.__doc__

    def __call__(self, *components: Any) -> None:
        run_on_variants(self.check, components, self.base)

    def __repr__(self) -> str:
        return f"<mrbench contract check {self.__name__}>"


@contextlib.contextmanager
def scrambled_global_rngs(seed: int) -> Iterator[None]:
    """Seed torch's, numpy's and Python's global RNGs with ``seed`` inside the block and
    restore their states after it: a component that is deterministic under its own
    generator gives the same result whatever ``seed`` is."""
    import numpy as np

    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def global_rng_consumed(fn: Callable[[], Any]) -> tuple[Any, bool]:
    """Call ``fn`` and say whether it changed torch's global RNG state (it drew from it)."""
    before = torch.get_rng_state()
    out = fn()
    return out, not torch.equal(before, torch.get_rng_state())


def same_episode(a: Episode, b: Episode) -> str | None:
    """``None`` if ``a`` and ``b`` are bit-identical, else the name of the first tensor that differs."""
    for name, x, y in zip(("x_support", "y_support", "x_query", "y_query"), a.tensors(), b.tensors()):
        if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
            return name
    return None
