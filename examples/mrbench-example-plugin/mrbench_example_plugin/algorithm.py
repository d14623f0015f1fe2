"""CosineCentroid: a cosine nearest-centroid learner on conv4.

The example third-party plugin of mrbench: generated with
``mrbench new-plugin mrbench-example-plugin --dir examples`` and then changed from
the skeleton's squared Euclidean distance into scaled cosine similarity to the class
means. Its tests (``tests/test_contract.py``) run mrbench's contract checks through
mrbench's pytest plugin; mrbench's ``tests/test_submission_flow.py`` installs it and
takes it through training, evaluation and entry validation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bench.components import Algorithm, EpisodeSpec, Params, TrainDefaults
from bench.nn import class_means, conv4, Conv4Options, cosine, init_conv4, SupportStatsBN


class CosineCentroid(SupportStatsBN, Algorithm):
    """Nearest class mean in a learned conv4 embedding by cosine similarity.

    Logits are ``scale * cos(z_query, centroid_c)``, with a fixed temperature ``scale``
    (cosine similarities lie in [-1, 1], too flat a softmax to train on without it).
    Training defaults are the skeleton's (Adam 1e-3, one episode per step); they
    are an example, not a tuned method.
    """

    id = "example-cosine-centroid"
    version = "1"

    class Options(Conv4Options):
        scale: float = 10.0
        """Fixed temperature multiplying the cosine similarities."""

    def init(self, spec: EpisodeSpec, generator: torch.Generator) -> Params:
        return init_conv4(generator, in_channels=spec.image_shape[0], hidden=self.options.hidden)

    def adapt(self, params: Params, x_support: Tensor, y_support: Tensor, *, n_way: int, train: bool = False) -> Any:
        z, stats = conv4(params, x_support)
        return {"centroids": class_means(z, y_support, n_way), "stats": stats}

    def predict(self, params: Params, state: Any, x_query: Tensor) -> Tensor:
        z, _ = conv4(params, x_query, self.query_stats(state["stats"]))
        return self.options.scale * cosine(z, state["centroids"])

    def train_defaults(self, spec: EpisodeSpec) -> TrainDefaults:
        return TrainDefaults(meta_batch=1, lr=1e-3, steps=5000)
