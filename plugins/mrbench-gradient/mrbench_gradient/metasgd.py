"""Meta-SGD (Li et al., 2017): MAML with learned per-parameter inner learning rates."""

from __future__ import annotations

import pydantic
import torch

from bench.components import EpisodeSpec, Params
from mrbench_gradient.maml import MAML, GradientOptions

LR_PREFIX = "inner_lr."


class MetaSGD(MAML):
    """One inner step ``theta - alpha * grad``, with ``alpha`` a learned tensor of the
    shape of ``theta`` (one step size per parameter element, hence also a learned
    update direction), meta-learned jointly with ``theta``.

    The step sizes are meta-parameters stored under ``inner_lr.<name>`` (e.g.
    ``inner_lr.head.weight``): the outer optimizer updates them, and the inner loop
    only reads them (it adapts the network tensors, never the step sizes).

    Defaults: one adaptation step in training and at test time (the paper's
    "one step" setting) and every ``alpha`` element drawn uniformly from
    [0.005, 0.1], the paper's initialisation range. The outer-loop settings are
    MAML's Omniglot ones (conv4 learner, meta-batch 32, Adam 1e-3, 60000 steps, as
    many training queries as shots), the setup the paper compares against on the
    same learner. A constant initialisation (e.g. MAML's 0.4, as learn2learn's
    MetaSGD does) is ``inner_lr_init=(0.4, 0.4)``.

    BatchNorm as MAML: support statistics of the adapted network for the queries
    (``bn='support'``, non-transductive) or each batch its own (``bn='batch'``).
    """

    id = "metasgd"
    version = "1"

    class Options(GradientOptions):
        inner_steps_test: int = 1
        inner_lr_init: tuple[float, float] = (0.005, 0.1)
        """Range of the uniform initialisation of every inner step size."""

        @pydantic.model_validator(mode="after")
        def _check_range(self) -> "MetaSGD.Options":
            lo, hi = self.inner_lr_init
            if not 0 <= lo <= hi:
                raise ValueError(f"inner_lr_init must be (low, high) with 0 <= low <= high, got {self.inner_lr_init}")
            return self

    def init(self, spec: EpisodeSpec, generator: torch.Generator) -> Params:
        net = super().init(spec, generator)
        lo, hi = self.options.inner_lr_init
        lrs = {LR_PREFIX + k: lo + (hi - lo) * torch.rand(v.shape, generator=generator) for k, v in net.items()}
        return {**net, **lrs}

    def _inner(self, params: Params) -> tuple[Params, Params]:
        net = {k: v for k, v in params.items() if not k.startswith(LR_PREFIX)}
        return net, {k: params[LR_PREFIX + k] for k in net}
