"""Almost No Inner Loop (Raghu et al., 2020): MAML that adapts only the head."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from bench.components import Params
from bench.nn import conv4, linear, sgd_steps
from mrbench_gradient.maml import MAML

HEAD = ("head.weight", "head.bias")


class ANIL(MAML):
    """MAML whose inner loop adapts only the linear head, on backbone features of the
    support computed once; the backbone is meta-learned through the head's adaptation
    (second order by default, as in the paper).

    Raghu et al. 2020 ("Rapid Learning or Feature Reuse?") keep MAML's architecture and
    hyper-parameters, so the defaults are MAML's Omniglot ones (Finn et al. 2017):
    inner step size 0.4, one inner step in meta-training and three at test time,
    meta-batch 32, Adam 1e-3, 60000 steps, as many training queries as shots.

    BatchNorm: the backbone does not change during adaptation, so its support
    statistics are the ones the features were computed with; queries are normalised
    with them (``bn='support'``, non-transductive) or with their own batch
    (``bn='batch'``, transductive).
    """

    id = "anil"
    version = "1"

    def adapt(self, params: Params, x_support: Tensor, y_support: Tensor, *, n_way: int, train: bool = False) -> Any:
        o = self.options
        z, stats = conv4(params, x_support)
        head = sgd_steps(
            lambda h: F.cross_entropy(linear(h, z), y_support),
            {k: params[k] for k in HEAD},
            o.inner_steps if train else o.inner_steps_test,
            o.inner_lr,
            first_order=self.first_order and train,
        )
        return {"head": head, "stats": stats}

    def predict(self, params: Params, state: Any, x_query: Tensor) -> Tensor:
        stats = self.query_stats(state["stats"])
        z, _ = conv4(params, x_query, stats)
        return linear(state["head"], z)
