"""Prototypical Networks (Snell et al., 2017)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bench.components import Algorithm, EpisodeSpec, Params, TrainDefaults
from bench.nn import class_means, conv4, Conv4Options, init_conv4, sq_euclidean, SupportStatsBN


class ProtoNet(SupportStatsBN, Algorithm):
    """Nearest class mean in a learned embedding, squared Euclidean distance.

    Defaults follow the paper's Omniglot setup: conv4 (64 channels), training
    episodes with 60 ways and 5 queries per class at the test shot, Adam 1e-3
    halved every 2000 episodes.
    """

    id = "protonet"
    version = "1"

    class Options(Conv4Options):
        """No options beyond conv4's."""

    def init(self, spec: EpisodeSpec, generator: torch.Generator) -> Params:
        return init_conv4(generator, in_channels=spec.image_shape[0], hidden=self.options.hidden)

    def adapt(self, params: Params, x_support: Tensor, y_support: Tensor, *, n_way: int, train: bool = False) -> Any:
        z, stats = conv4(params, x_support)
        return {"prototypes": class_means(z, y_support, n_way), "stats": stats}

    def predict(self, params: Params, state: Any, x_query: Tensor) -> Tensor:
        stats = self.query_stats(state["stats"])
        z, _ = conv4(params, x_query, stats)
        return -sq_euclidean(z, state["prototypes"])

    def train_defaults(self, spec: EpisodeSpec) -> TrainDefaults:
        return TrainDefaults(meta_batch=1, lr=1e-3, lr_decay_every=2000, lr_decay=0.5, steps=5000, train_way=60, train_query=5)
