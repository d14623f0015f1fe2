"""Support-query shift (Bennequin et al. 2021, "Bridging Few-Shot Learning and
Adaptation: New Challenges of Support-Query Shift"): the support set and the queries of
an episode come from two different domains.

Here a domain is one of this distribution's image corruptions. Every episode draws one
corruption for its support images from :attr:`SupportQueryShiftOptions.support` and one
for its queries from :attr:`SupportQueryShiftOptions.query`, two disjoint lists, and
applies both at the scenario's severity. The learner adapts on support images of one
domain and is tested on queries of another, which no amount of robustness to a single
corruption hides: ProtoNet's class means, for instance, are computed in the support
domain and compared with query embeddings of the other one.

The default lists split the 19 corruptions of the omniglot suites by family, so each
side has noise, blur, digital, geometric and occlusion corruptions (fog goes to the
support side).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import pydantic
import torch

from bench.components import Episode, Options, Shift
from mrbench_shifts import ops
from mrbench_shifts.base import Corruption, check_severity

SUPPORT_CORRUPTIONS: tuple[str, ...] = (
    "gaussian-noise", "impulse-noise", "motion-blur", "pixelate", "contrast", "fog",
    "rotation", "scale", "elastic-transform", "stripe",
)
"""The support side of the default split."""
QUERY_CORRUPTIONS: tuple[str, ...] = (
    "shot-noise", "defocus-blur", "glass-blur", "jpeg", "brightness",
    "shear", "translation", "zigzag", "dotted-line",
)
"""The query side of the default split (disjoint from :data:`SUPPORT_CORRUPTIONS`)."""


def corruption_classes() -> dict[str, type[Corruption]]:
    """This distribution's image corruptions by id."""
    from mrbench_shifts import all_shifts

    return {cls.id: cls for cls in all_shifts() if issubclass(cls, Corruption)}


class SupportQueryShiftOptions(Options):
    """Options of :class:`SupportQueryShift`.

    :param support: the corruptions a support set may be drawn under.
    :param query: the corruptions the queries may be drawn under; no id in both lists.
    """

    support: tuple[str, ...] = SUPPORT_CORRUPTIONS
    query: tuple[str, ...] = QUERY_CORRUPTIONS

    @pydantic.model_validator(mode="after")
    def _disjoint_known_lists(self) -> "SupportQueryShiftOptions":
        known = corruption_classes()
        for side in ("support", "query"):
            ids = getattr(self, side)
            if not ids:
                raise ValueError(f"{side} lists no corruption; give at least one of: {', '.join(known)}")
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise ValueError(f"{side} names unknown corruptions {unknown}; known: {', '.join(known)}")
            if len(set(ids)) != len(ids):
                raise ValueError(f"{side} lists a corruption twice: {list(ids)}")
        both = sorted(set(self.support) & set(self.query))
        if both:
            raise ValueError(f"support and query must be disjoint (a support-query shift draws the two sides from "
                             f"different domains), but both list {both}")
        return self


class SupportQueryShift(Shift):
    """Support and query images corrupted by two different corruptions, drawn per
    episode from two disjoint lists, both at the scenario's severity (the corruptions'
    own calibrated levels). Labels are untouched.

    The draws come first (support index, then query index, per episode), then the
    queries are corrupted, then the support set, every random number from the
    generator. On a batch ``[E, ...]`` each episode draws its own pair; episodes that
    drew the same corruption are corrupted in one call.
    """

    id = "support-query-shift"
    Options: ClassVar[type[Options]] = SupportQueryShiftOptions
    targets: ClassVar[tuple[str, ...]] = ("both",)
    category: ClassVar[str] = "other"
    levels: ClassVar[tuple[int, ...]] = (1, 2, 3, 4, 5)
    parameter = "severity of the support and the query corruption"
    stochastic: ClassVar[bool] = True

    def __init__(self, options: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        known = corruption_classes()
        self._support = [known[i]() for i in self.options.support]
        self._query = [known[i]() for i in self.options.query]

    def draw(self, n_episodes: int, generator: torch.Generator) -> tuple[list[str], list[str]]:
        """The (support, query) corruption ids of ``n_episodes`` episodes, as :meth:`apply` draws them."""
        s, q = self._draw(n_episodes, generator)
        return [self.options.support[i] for i in s.tolist()], [self.options.query[i] for i in q.tolist()]

    def _draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        s = ops.randint(generator, 0, len(self._support), (n,), torch.device("cpu"))
        q = ops.randint(generator, 0, len(self._query), (n,), torch.device("cpu"))
        return s, q

    def apply(self, episode: Episode, severity: int, generator: torch.Generator) -> Episode:
        """The episode with its support images under one corruption and its queries under another.

        :raises bench.errors.OptionsError: an unknown severity.
        """
        level = check_severity(self, severity)
        if level == 0:
            return Episode(*episode.tensors())
        xs = episode.x_support.reshape(-1, *episode.x_support.shape[-4:])
        xq = episode.x_query.reshape(-1, *episode.x_query.shape[-4:])
        s, q = self._draw(xs.shape[0], generator)
        xq = self._corrupt(xq, q, self._query, level, generator)
        xs = self._corrupt(xs, s, self._support, level, generator)
        return Episode(xs.reshape(episode.x_support.shape), episode.y_support,
                       xq.reshape(episode.x_query.shape), episode.y_query)

    @staticmethod
    def _corrupt(images: torch.Tensor, which: torch.Tensor, corruptions: list[Corruption], level: int,
                 generator: torch.Generator) -> torch.Tensor:
        out = images.clone()
        for k in sorted(set(which.tolist())):
            rows = (which == k).nonzero()[:, 0].to(images.device)
            out[rows] = corruptions[k].corrupt_images(images[rows], level, generator)
        return out


SUPPORT_QUERY_SHIFTS = (SupportQueryShift,)
