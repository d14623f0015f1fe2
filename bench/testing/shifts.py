"""Contract checks every shift plugin must pass (:data:`SHIFT_CHECKS`).

A shift is applied to a batch of :func:`shift_episodes` (random images, class-major
labels) at every severity it declares. The checks: valid declarations, shapes, dtypes,
devices and the [0, 1] range kept (float32 and float64, one episode or a batch), labels
in range, the input not mutated, and the result deterministic under the seeded
generator: a shift that draws from a global RNG (torch's, numpy's or Python's) or
ignores its generator in favour of one fails.
"""

from __future__ import annotations

from typing import Callable

import torch

from bench.components import Episode, EpisodeSpec, Shift
from bench.errors import OptionsError
from bench.protocol.scenarios import TARGETS
from bench.testing._common import (
    KEBAB, ContractError, global_rng_consumed, random_episodes, same_episode, scrambled_global_rngs,
)

SHIFT_SPEC = EpisodeSpec(n_way=4, k_shot=2, n_query=2, image_shape=(1, 28, 28))
"""The episodes the shift checks use: 4-way 2-shot, so label and class-balance shifts
have something to change."""

CATEGORIES = ("corruption", "support", "other")


def shift_episodes(dtype: torch.dtype = torch.float32, n_episodes: int = 3, seed: int = 0) -> Episode:
    """A batch ``[E, ...]`` of random-image episodes of :data:`SHIFT_SPEC`."""
    return random_episodes(SHIFT_SPEC, n_episodes, seed, dtype)


def _apply(shift: Shift, episodes: Episode, severity: int, seed: int = 7) -> Episode:
    out = shift.apply(episodes, severity, torch.Generator().manual_seed(seed))
    if not isinstance(out, Episode):
        raise ContractError(f"Shift {shift.id!r}: apply returned {type(out).__name__}, not a bench.components.Episode")
    return out


def check_shift_metadata(shift: Shift) -> None:
    """A kebab-case ``id``, ``severities`` a non-empty tuple of distinct ints >= 1,
    ``targets`` from ``query``/``support``/``both``, a known ``category`` and options
    that serialise into result entries."""
    problems = []
    if not KEBAB.fullmatch(str(shift.id)):
        problems.append(f"id {shift.id!r} is not kebab-case")
    sev = tuple(shift.severities)
    if not sev or len(set(sev)) != len(sev) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                                          for s in sev):
        problems.append(f"severities {sev!r} must be distinct ints >= 1")
    if not tuple(shift.targets) or not set(shift.targets) <= set(TARGETS):
        problems.append(f"targets {tuple(shift.targets)!r} must be values from {', '.join(TARGETS)}")
    if shift.category not in CATEGORIES:
        problems.append(f"category {shift.category!r} is not one of {', '.join(CATEGORIES)}")
    if problems:
        raise ContractError(f"Shift {shift.id!r}: " + "; ".join(problems))
    shift.options.model_dump(mode="json")


def _check_output(shift: Shift, clean: Episode, out: Episode, what: str) -> None:
    names = ("x_support", "y_support", "x_query", "y_query")
    for name, c, o in zip(names, clean.tensors(), out.tensors()):
        if o.shape != c.shape or o.dtype != c.dtype or o.device != c.device:
            raise ContractError(f"Shift {shift.id!r} ({what}) returned {name} {tuple(o.shape)} {o.dtype} on {o.device}; "
                                f"it got {tuple(c.shape)} {c.dtype} on {c.device}: keep shapes, dtypes and devices")
    for name, x in (("x_support", out.x_support), ("x_query", out.x_query)):
        if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
            raise ContractError(f"Shift {shift.id!r} ({what}) left [0, 1] in {name} (min {float(x.min()):.4g}, "
                                f"max {float(x.max()):.4g}); clamp the images")
    for name, y in (("y_support", out.y_support), ("y_query", out.y_query)):
        if int(y.min()) < 0 or int(y.max()) >= SHIFT_SPEC.n_way:
            raise ContractError(f"Shift {shift.id!r} ({what}) gave {name} labels outside [0, {SHIFT_SPEC.n_way})")


def check_shift_every_severity_keeps_shapes_dtypes_and_range(shift: Shift) -> None:
    """Every declared severity works on float32 and float64 batches and on a single
    episode, and keeps shapes, dtypes, devices, images in [0, 1] and labels in range."""
    for dtype in (torch.float32, torch.float64):
        clean = shift_episodes(dtype)
        for severity in shift.severities:
            _check_output(shift, clean, _apply(shift, clean, severity), f"severity {severity}, {dtype}")
    single = shift_episodes()[0]
    severity = max(shift.severities)
    _check_output(shift, single, _apply(shift, single, severity), f"severity {severity}, one episode without the E dim")


def check_shift_does_not_mutate_its_input(shift: Shift) -> None:
    """``apply`` leaves the episode it gets exactly as it was, at every severity."""
    clean = shift_episodes()
    before = [t.clone() for t in clean.tensors()]
    for severity in shift.severities:
        _apply(shift, clean, severity)
        for name, b, t in zip(("x_support", "y_support", "x_query", "y_query"), before, clean.tensors()):
            if not torch.equal(b, t):
                raise ContractError(f"Shift {shift.id!r} (severity {severity}) mutated its input episode ({name}); "
                                    "return new tensors instead of changing the ones it gets in place")


def check_shift_deterministic(shift: Shift) -> None:
    """Same generator seed, same result, whatever torch's, numpy's and Python's global RNGs
    hold, at every severity; the global torch RNG is left as it was. A shift that
    declares ``stochastic = True`` (as mrbench-shifts' corruptions do) must also depend
    on the seed."""
    clean = shift_episodes()
    for severity in shift.severities:
        with scrambled_global_rngs(1):
            first, consumed = global_rng_consumed(lambda: _apply(shift, clean, severity))
        if consumed:
            raise ContractError(
                f"Shift {shift.id!r} (severity {severity}) drew from torch's global RNG (or reseeded it); draw every "
                "random number from the generator argument, e.g. torch.rand(..., generator=generator)")
        with scrambled_global_rngs(2):
            second = _apply(shift, clean, severity)
        differs = same_episode(first, second)
        if differs is not None:
            raise ContractError(
                f"Shift {shift.id!r} (severity {severity}) is not deterministic under its generator: two calls with "
                f"the same seed gave different {differs} (a global RNG, numpy's or Python's, is being used); draw "
                "every random number from the generator argument")
    if getattr(shift, "stochastic", False) is True and all(
            same_episode(_apply(shift, clean, s, seed=7), _apply(shift, clean, s, seed=8)) is None
            for s in shift.severities):
        raise ContractError(f"Shift {shift.id!r} declares stochastic = True but ignores its generator: seeds 7 and 8 "
                            "gave the same episodes at every severity")


def check_shift_strict_options(shift: Shift) -> None:
    """Unknown options are an error (:class:`bench.errors.OptionsError`)."""
    try:
        type(shift)(no_such_option_xyz=1)
    except OptionsError:
        return
    raise ContractError(f"Shift {shift.id!r}: an unknown option was accepted; derive Options from "
                        "bench.components.Options")


SHIFT_CHECKS: list[Callable[[Shift], None]] = [
    check_shift_metadata,
    check_shift_every_severity_keeps_shapes_dtypes_and_range,
    check_shift_does_not_mutate_its_input,
    check_shift_deterministic,
    check_shift_strict_options,
]
"""Every shift contract check."""
