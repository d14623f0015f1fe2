"""Relation Networks (Sung et al., 2018)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.components import Algorithm, Episode, EpisodeSpec, Params, TrainDefaults
from bench.nn import Conv4Options, conv_blocks, init_conv4, init_conv_blocks, init_linear, linear, pooled, SupportStatsBN

# Sung et al. 2018, Sec. 4.1 (Omniglot): query images per class in a training episode.
_TRAIN_QUERY = {(5, 1): 19, (5, 5): 15, (20, 1): 10, (20, 5): 5}


class RelationNet(SupportStatsBN, Algorithm):
    """A learned relation module scores each (class, query) pair in [0, 1].

    Embedding: four [conv3x3 64 + BatchNorm + ReLU] blocks, the first two followed by a
    2x2 max-pool and the last two not, as in the paper (Fig. 2). The reference code
    pads the first two convolutions with 0 (28x28 -> 64x5x5 features); here every
    convolution pads with 1 like the rest of mrbench's conv4 (28x28 -> 64x7x7), so
    the same backbone code serves every algorithm. A class is represented by the sum
    of its support embeddings (the paper's element-wise sum over shots), concatenated
    in depth with the query's embedding, and the relation module (two [conv3x3 64 +
    BatchNorm + ReLU + max-pool] blocks, then FC 8 + ReLU, FC 1 + sigmoid) gives the
    relation score. Logits are the scores themselves (argmax = the paper's decision);
    training regresses them onto the one-hot labels with the mean squared error, as in
    the paper (:meth:`loss`).

    Training defaults are the paper's Omniglot ones: one episode per step with 19
    (5-way 1-shot) / 15 (5-way 5-shot) / 10 (20-way 1-shot) / 5 (20-way 5-shot)
    queries per class, Adam 1e-3 halved every 100000 episodes, 1000000 episodes.
    (The reference code also augments Omniglot with random rotations; mrbench does not.)

    BatchNorm: no running statistics. With ``bn='support'`` (default) the queries'
    embeddings are normalised with the support set's statistics, and the relation
    module normalises (class, query) pairs with the statistics of the (class,
    support image) pairs, so each query is scored on its own (non-transductive).
    ``bn='batch'`` normalises query embeddings and query pairs with their own batch
    (transductive, as the reference code's batch-statistics forward).
    """

    id = "relationnet"
    version = "1"

    class Options(Conv4Options):
        relation_hidden: int = 8
        """Width of the relation module's first fully connected layer."""

    bn_policy = ("batch statistics, no running stats; query embeddings use the support statistics and query "
                 "pairs the support pairs' statistics unless bn='batch'")

    def init(self, spec: EpisodeSpec, generator: torch.Generator) -> Params:
        o = self.options
        params = init_conv4(generator, in_channels=spec.image_shape[0], hidden=o.hidden)
        params.update(init_conv_blocks(generator, 2 * o.hidden, o.hidden, "relation.", blocks=2))
        side = pooled(pooled(spec.image_shape[1], 2), 2) * pooled(pooled(spec.image_shape[2], 2), 2)
        params.update(init_linear(generator, o.hidden * side, o.relation_hidden, "relation.fc1."))
        params.update(init_linear(generator, o.relation_hidden, 1, "relation.fc2."))
        return params

    def _embed(self, params: Params, x: Tensor, stats=None):
        return conv_blocks(params, x, stats, blocks=4, pools=2)

    def _relation(self, params: Params, classes: Tensor, z: Tensor, stats=None):
        """Scores ``[n, n_way]`` of every (class, row of ``z``) pair, and the statistics used."""
        n, W = z.shape[0], classes.shape[0]
        pairs = torch.cat([classes.unsqueeze(0).expand(n, *classes.shape), z.unsqueeze(1).expand(n, W, *z.shape[1:])], 2)
        h, used = conv_blocks(params, pairs.flatten(0, 1), stats, "relation.", blocks=2)
        h = F.relu(linear(params, h.flatten(1), "relation.fc1."))
        return torch.sigmoid(linear(params, h, "relation.fc2.")).reshape(n, W), used

    def adapt(self, params: Params, x_support: Tensor, y_support: Tensor, *, n_way: int, train: bool = False) -> Any:
        z, stats = self._embed(params, x_support)
        onehot = F.one_hot(y_support, n_way).to(z.dtype)
        classes = (onehot.t() @ z.flatten(1)).reshape(n_way, *z.shape[1:])  # sum over shots
        _, pair_stats = self._relation(params, classes, z)
        return {"classes": classes, "stats": stats, "pair_stats": pair_stats}

    def predict(self, params: Params, state: Any, x_query: Tensor) -> Tensor:
        batch = self.options.bn == "batch"
        z, _ = self._embed(params, x_query, None if batch else state["stats"])
        scores, _ = self._relation(params, state["classes"], z, None if batch else state["pair_stats"])
        return scores

    def loss(self, params: Params, episode: Episode, *, n_way: int) -> Tensor:
        state = self.adapt(params, episode.x_support, episode.y_support, n_way=n_way, train=True)
        scores = self.predict(params, state, episode.x_query)
        return F.mse_loss(scores, F.one_hot(episode.y_query, n_way).to(scores.dtype))

    def train_defaults(self, spec: EpisodeSpec) -> TrainDefaults:
        return TrainDefaults(meta_batch=1, lr=1e-3, lr_decay_every=100000, lr_decay=0.5, steps=1000000,
                             train_query=_TRAIN_QUERY.get((spec.n_way, spec.k_shot), 15))
