"""MIFGSM: momentum iterative FGSM on the queries, through ``torchattacks``.

The example attack plugin of mrbench: ``torchattacks.MIFGSM`` wrapped with mrbench's
public helper :func:`bench.attacks.run_torchattacks`, which runs it on the learners
adapted to each episode's clean support set. Its tests (``tests/test_contract.py``) run
mrbench's attack contract checks (``mrbench_attack_check``); mrbench's
``tests/test_submission_flow.py`` takes it through an evaluation and a leaderboard entry.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from bench.attacks import run_torchattacks
from bench.components import Attack, Episode, Options


class MIFGSM(Attack):
    """Momentum iterative FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with
    Momentum"), Linf, on the queries: ``steps`` signed steps of ``eps / steps`` along the
    accumulated, L1-normalised gradient of the cross-entropy, ``decay`` weighting the
    momentum. The paper's step size (``eps / steps``), not torchattacks' default. No
    random start, so it is deterministic.
    """

    id = "mi-fgsm"
    version = "1"
    norm: ClassVar[str] = "linf"
    targets: ClassVar[tuple[str, ...]] = ("query",)

    class Options(Options):
        steps: int = Field(10, ge=1, description="iterations (the paper's 10)")
        decay: float = Field(1.0, ge=0, description="momentum decay factor mu (the paper's 1.0)")

    def perturb(self, victim, episodes: Episode, eps: float, target: str, generator: torch.Generator) -> Episode:
        import torchattacks  # imported when an attack runs, not when mrbench lists plugins

        o = self.options
        adv = run_torchattacks(
            victim, episodes,
            lambda model: torchattacks.MIFGSM(model, eps=eps, alpha=eps / o.steps, steps=o.steps, decay=o.decay),
            generator)
        # torchattacks divides by the mean absolute gradient: a query whose gradient is exactly
        # zero (a saturated softmax) comes back NaN. Such a query cannot be attacked by gradient;
        # keep it clean.
        bad = torch.isnan(adv.x_query).flatten(2).any(-1)[..., None, None, None]
        x_query = torch.where(bad, episodes.x_query, adv.x_query)
        return Episode(episodes.x_support, episodes.y_support, x_query, episodes.y_query)
