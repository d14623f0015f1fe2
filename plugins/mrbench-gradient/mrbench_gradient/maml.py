"""Model-Agnostic Meta-Learning (Finn et al., 2017) and its first-order variant."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.components import Algorithm, EpisodeSpec, Params, TrainDefaults
from bench.nn import conv4, Conv4Options, init_conv4, init_linear, linear, sgd_steps, SupportStatsBN


class GradientOptions(Conv4Options):
    """Options every learner of this distribution shares (conv4 + linear head, inner loop)."""

    inner_steps: int = 1
    """Inner gradient steps during meta-training."""
    inner_steps_test: int = 3
    """Inner gradient steps at evaluation and under attack."""
    meta_batch: int = 32


class MAML(SupportStatsBN, Algorithm):
    """MAML with second-order meta-gradients on conv4 + a linear head.

    Defaults follow the paper's Omniglot setup (Finn et al. 2017 and its reference
    code): inner step size 0.4, one inner step in meta-training and three at test
    time, meta-batch 32, Adam 1e-3, and training episodes with as many query as
    support images per class (the reference code samples ``2 * K`` images per class).
    """

    id = "maml"
    version = "1"
    first_order: ClassVar[bool] = False

    class Options(GradientOptions):
        inner_lr: float = 0.4

    def init(self, spec: EpisodeSpec, generator: torch.Generator) -> Params:
        h = self.options.hidden
        params = init_conv4(generator, in_channels=spec.image_shape[0], hidden=h)
        # 28x28 input -> 1x1 spatial after four 2x poolings.
        side = spec.image_shape[1] // 16
        params.update(init_linear(generator, h * side * side, spec.n_way))
        return params

    def _logits(self, params: Params, x: Tensor, stats=None) -> Tensor:
        z, _ = conv4(params, x, stats)
        return linear(params, z)

    # The two points where the variants of this family differ from MAML's inner loop.
    def _inner(self, params: Params) -> tuple[Params, float | Params]:
        """The tensors the inner loop adapts, and their step size(s)."""
        return params, self.options.inner_lr

    def _inner_betas(self) -> tuple[float, float] | None:
        """Adam betas of the inner loop; ``None``: plain SGD."""
        return None

    def adapt(self, params: Params, x_support: Tensor, y_support: Tensor, *, n_way: int, train: bool = False) -> Any:
        o = self.options
        fast, lr = self._inner(params)
        fast = sgd_steps(
            lambda p: F.cross_entropy(self._logits(p, x_support), y_support),
            fast,
            o.inner_steps if train else o.inner_steps_test,
            lr,
            first_order=self.first_order and train,
            betas=self._inner_betas(),
        )
        _, stats = conv4(fast, x_support)
        return {"params": fast, "stats": stats}

    def predict(self, params: Params, state: Any, x_query: Tensor) -> Tensor:
        stats = self.query_stats(state["stats"])
        return self._logits(state["params"], x_query, stats)

    def train_defaults(self, spec: EpisodeSpec) -> TrainDefaults:
        return TrainDefaults(meta_batch=self.options.meta_batch, lr=1e-3, steps=60000, train_query=spec.k_shot)


class FOMAML(MAML):
    """First-order MAML: meta-training ignores second derivatives.

    Evaluation and attacks adapt exactly like MAML (full graph), so attacks through
    adaptation see the true gradient.
    """

    id = "fomaml"
    first_order = True
