"""What every shift of this distribution shares: severity checks, the corruption
base class with its ``target`` option, and the episode layout of support-set shifts."""

from __future__ import annotations

import math
import operator
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from bench.components import Episode, Options, Shift
from bench.errors import MrbenchError, OptionsError

#: Smallest image side a corruption accepts (one JPEG block).
MIN_SIZE = 8


def check_severity(shift: Shift, severity: int) -> int:
    """``severity`` as an int if it is 0 (the identity) or one of ``shift.severities``.

    :raises bench.errors.OptionsError: any other value, listing the valid ones.
    """
    valid = (0, *shift.severities)
    try:
        level = operator.index(severity)  # ints and integer numpy scalars, not 2.0
    except TypeError:
        level = None
    if isinstance(severity, bool) or level not in valid:
        raise OptionsError(
            f"Shift {shift.id!r} has no severity {severity!r}.",
            f"Valid severities: {', '.join(map(str, valid))} (0 leaves the episode unchanged).",
        )
    return level


def round_half_up(value: float) -> int:
    """Nearest integer, halves rounded up (Python's ``round`` rounds 2.5 to 2).

    The small epsilon absorbs binary representation error, e.g. ``0.3 * 5 = 1.4999...``.
    """
    return math.floor(value + 0.5 + 1e-9)


class CorruptionOptions(Options):
    """Options every corruption takes.

    :param target: which images of the episode are corrupted: ``query`` (test-time
        shift, the default), ``support`` or ``both``.
    """

    target: Literal["query", "support", "both"] = "query"


class Corruption(Shift):
    """An image corruption with five calibrated severities.

    A subclass sets :attr:`levels` (one entry per severity 1..5, increasingly
    damaging), :attr:`parameter` (what an entry means, for the docs) and implements
    :meth:`corrupt` on a flat batch ``[B, C, H, W]``. This base handles severity 0,
    the ``target`` option, any leading episode dims, dtypes, clamping to [0, 1] and
    the device of the random draws.

    With ``target="both"`` the query images are corrupted first, with the same draws
    as under ``target="query"``, so a seed gives the same query images either way.
    Tensors a shift does not change are shared with the input episode, not copied.

    :cvar levels: the parameter of each severity 1..5.
    :cvar parameter: what a :attr:`levels` entry is (lengths are pixels at 28x28).
    :cvar stochastic: ``False`` where the output does not depend on the generator.
    """

    Options: ClassVar[type[Options]] = CorruptionOptions
    category: ClassVar[str] = "corruption"
    levels: ClassVar[tuple[Any, ...]]
    parameter: ClassVar[str]
    stochastic: ClassVar[bool] = True

    def apply(self, episode: Episode, severity: int, generator: torch.Generator) -> Episode:
        """The episode with its targeted images corrupted at ``severity``.

        :param episode: images float in [0, 1], ``[..., n, C, H, W]``.
        :param severity: 0 (identity) or one of :attr:`severities`.
        :param generator: the only source of randomness; may live on another device
            than the images.
        :raises bench.errors.OptionsError: an unknown severity.
        :raises bench.errors.MrbenchError: images that are not floating point, or
            smaller than 8x8.
        """
        level = check_severity(self, severity)
        x_support, x_query = episode.x_support, episode.x_query
        if level:
            target = self.options.target
            if target in ("query", "both"):
                x_query = self.corrupt_images(x_query, level, generator)
            if target in ("support", "both"):
                x_support = self.corrupt_images(x_support, level, generator)
        return Episode(x_support, episode.y_support, x_query, episode.y_query)

    def corrupt_images(self, images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
        """Corrupt a tensor of images ``[..., C, H, W]`` (float in [0, 1]) at ``severity``.

        Returns a new tensor of the same shape and dtype, clamped to [0, 1].
        """
        level = check_severity(self, severity)
        if not images.is_floating_point():
            raise MrbenchError(
                f"Shift {self.id!r} needs float images in [0, 1], got {images.dtype}.",
                "Convert uint8 images with bench.episodes.to_float.",
            )
        if images.dim() < 3 or min(images.shape[-2:]) < MIN_SIZE:
            raise MrbenchError(
                f"Shift {self.id!r} needs images [..., C, H, W] with H, W >= {MIN_SIZE}, "
                f"got shape {tuple(images.shape)}.",
            )
        if level == 0 or images.numel() == 0:
            return images.clone()
        C, H, W = images.shape[-3:]
        # Half precision lacks the range for the intermediate maths (JPEG's 0..255,
        # distances); compute in at least float32 and cast back.
        work = torch.promote_types(images.dtype, torch.float32)
        x = images.reshape(-1, C, H, W).to(work)
        out = self.corrupt(x, self.levels[level - 1], generator).clamp(0, 1)
        return out.to(images.dtype).reshape(images.shape)

    def corrupt(self, x: Tensor, level: Any, generator: torch.Generator) -> Tensor:
        """Corrupt a flat batch ``[B, C, H, W]`` with one :attr:`levels` entry.

        May return values outside [0, 1] (the caller clamps); must not modify ``x``.
        """
        raise NotImplementedError


def support_layout(shift: Shift, y_support: Tensor) -> tuple[int, int]:
    """``(n_way, k_shot)`` of a class-major, balanced support set ``[..., n_way * k_shot]``.

    Read off the labels outside any ``vmap`` (it needs ``.item()``): ``n_way`` is
    the number of distinct labels, which, unlike ``max + 1``, stays right when the
    labels have already been shifted.

    :raises bench.errors.MrbenchError: labels that are not ``0..n_way-1`` repeated
        ``k_shot`` times each in class-major order.
    """
    if y_support.numel() == 0:
        raise MrbenchError(f"Shift {shift.id!r} got an episode with an empty support set.")
    n = y_support.shape[-1]
    n_way = int(torch.unique(y_support).numel())
    k_shot = n // n_way
    expected = torch.arange(n_way, device=y_support.device).repeat_interleave(k_shot)
    if n_way * k_shot != n or not bool((y_support == expected).all()):
        raise MrbenchError(
            f"Shift {shift.id!r} needs clean class-major support labels (0..n_way-1, each "
            f"repeated k_shot times), got {y_support.reshape(-1, n)[0].tolist()}...",
            "Apply label and balance shifts to episodes straight from bench.episodes, "
            "before any other label shift.",
        )
    return n_way, k_shot
