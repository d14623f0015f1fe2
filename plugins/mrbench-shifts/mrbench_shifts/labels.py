"""Support-set shifts: noisy support labels and class imbalance.

Both work on clean episodes as :mod:`bench.episodes` builds them (class-major,
balanced support labels), on one episode or a batch with any leading dims. They
read ``n_way`` and ``k_shot`` off the labels with ``.item()``-style calls, so apply
them outside ``vmap``, before the episodes go to the learner.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import pydantic
import torch

from bench.components import Episode, Options, Shift
from bench.errors import MrbenchError
from mrbench_shifts import ops
from mrbench_shifts.base import check_severity, round_half_up, support_layout


class LabelNoiseOptions(Options):
    """Options of :class:`LabelNoise`.

    :param fraction: fraction of the support labels to flip; overrides the
        severity's fraction (severity 0 still means no noise).
    """

    fraction: float | None = pydantic.Field(None, ge=0.0, le=1.0)


class LabelNoise(Shift):
    """Flips exactly ``round(fraction * n_support)`` support labels per episode
    (halves rounded up) to a different class, uniform over the other ``n_way - 1``.

    The flipped positions are uniform without replacement; images and query labels
    are untouched.
    """

    id = "label-noise"
    Options: ClassVar[type[Options]] = LabelNoiseOptions
    targets: ClassVar[tuple[str, ...]] = ("support",)
    category: ClassVar[str] = "support"
    levels: ClassVar[tuple[float, ...]] = (0.1, 0.2, 0.3, 0.4, 0.5)
    parameter = "fraction of support labels flipped"
    stochastic: ClassVar[bool] = True

    def apply(self, episode: Episode, severity: int, generator: torch.Generator) -> Episode:
        """The episode with some support labels replaced by wrong ones.

        :raises bench.errors.OptionsError: an unknown severity.
        :raises bench.errors.MrbenchError: labels that are not clean and class-major,
            or a one-way episode (there is no other class to flip to).
        """
        level = check_severity(self, severity)
        if level == 0:
            return Episode(*episode.tensors())
        fraction = self.options.fraction if self.options.fraction is not None else self.levels[level - 1]
        y = episode.y_support
        n_way, _ = support_layout(self, y)
        n_flip = round_half_up(fraction * y.shape[-1])
        if n_flip and n_way < 2:
            raise MrbenchError(f"Shift {self.id!r} cannot flip labels of a 1-way episode.")
        flipped = ops.random_subset(generator, y.shape, n_flip, y.device)
        # Adding 1..n_way-1 modulo n_way never lands on the original label and is
        # uniform over the others.
        step = ops.randint(generator, 1, max(n_way, 2), y.shape, y.device)
        y_noisy = torch.where(flipped, (y + step) % n_way, y)
        return Episode(episode.x_support, y_noisy, episode.x_query, episode.y_query)


class ClassImbalance(Shift):
    """Makes the support set imbalanced while keeping its shape.

    In a random subset of ``round(fraction * n_way)`` classes per episode, every
    shot is replaced by a duplicate of the class's first shot, so those classes
    have one distinct example and the others ``k_shot``. Shapes, labels and the
    query are unchanged, so the episode still batches with clean ones. With
    ``k_shot = 1`` there is nothing to remove and the shift is the identity (a
    warning says so).
    """

    id = "class-imbalance"
    targets: ClassVar[tuple[str, ...]] = ("support",)
    category: ClassVar[str] = "support"
    levels: ClassVar[tuple[float, ...]] = (0.2, 0.4, 0.6, 0.8, 1.0)
    parameter = "fraction of classes reduced to one distinct shot"
    stochastic: ClassVar[bool] = True

    def apply(self, episode: Episode, severity: int, generator: torch.Generator) -> Episode:
        """The episode with some classes' support shots replaced by copies of their first.

        :raises bench.errors.OptionsError: an unknown severity.
        :raises bench.errors.MrbenchError: labels that are not clean and class-major.
        """
        level = check_severity(self, severity)
        if level == 0:
            return Episode(*episode.tensors())
        x, y = episode.x_support, episode.y_support
        n_way, k_shot = support_layout(self, y)
        if k_shot == 1:
            warnings.warn(f"Shift {self.id!r} leaves 1-shot episodes unchanged.", UserWarning, stacklevel=2)
        lead = y.shape[:-1]
        affected = ops.random_subset(generator, (*lead, n_way), round_half_up(self.levels[level - 1] * n_way), x.device)
        shots = x.reshape(*lead, n_way, k_shot, *x.shape[-3:])
        first = shots[..., :1, :, :, :].expand_as(shots)
        balanced = torch.where(affected[..., None, None, None, None], first, shots)
        return Episode(balanced.reshape(x.shape), y, episode.x_query, episode.y_query)


SUPPORT_SHIFTS = (LabelNoise, ClassImbalance)
