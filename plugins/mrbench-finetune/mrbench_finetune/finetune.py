"""Baseline and Baseline++ (Chen et al., 2019, "A Closer Look at Few-shot Classification")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.components import Algorithm, EpisodeSpec, ImageSplit, Params, TrainDefaults
from bench.nn import class_means, conv4, Conv4Options, cosine, init_conv4, init_linear, pooled, sgd_steps, SupportStatsBN

if TYPE_CHECKING:
    from bench.training import TrainContext

PRETRAIN = "pretrain."


class Finetune(SupportStatsBN, Algorithm):
    """Pre-train conv4 + a linear classifier over all meta-train classes, then fit a new
    linear classifier on the frozen features of each episode's support set.

    Meta-training (:meth:`train_step`) is ordinary supervised learning: mini-batches
    of ``batch_size`` labeled images drawn uniformly from the whole meta-train split,
    cross-entropy over its ``n_classes`` classes (the head is created by
    :meth:`init_for_training`, which sees the split), one Adam step each.
    Adaptation fits the new ``n_way`` head with ``finetune_steps`` full-batch
    gradient steps (:func:`bench.nn.sgd_steps`) on the support features, with L2
    weight decay; the backbone is not changed (gradients still flow through the
    features to the support images, which attacks need).

    Defaults follow the paper and its reference code (wyharveychen/CloserLookFewShot)
    for Omniglot: conv4, batch 16, Adam 1e-3, 5 epochs over the meta-train split
    (25700 steps = 5 x 82240 images / 16 on the Vinyals split with rotations, 4112
    classes); new head: SGD lr 0.01, weight decay 0.001. The reference fits the
    head for 100 epochs of mini-batches of 4 with momentum 0.9 and dampening 0.9,
    from a random init; here: 100 full-batch steps of plain SGD (with dampening 0.9
    the momentum's steady-state step equals plain SGD's), from zero weights, because
    adaptation must be deterministic and cheap enough to attack through.

    BatchNorm: batch statistics of each pre-training mini-batch; at test time the
    support set's statistics, with which queries are normalised too (``bn='support'``,
    non-transductive), or each batch its own (``bn='batch'``, transductive). The
    reference code uses running statistics at test time; mrbench keeps none.
    """

    id = "finetune"
    version = "1"
    head_type: ClassVar[str] = "linear"

    class Options(Conv4Options):
        batch_size: int = 16
        """Images per pre-training step (the harness's ``meta_batch``)."""
        finetune_steps: int = 100
        """Full-batch gradient steps fitting the new head on the support features."""
        finetune_lr: float = 0.01
        weight_decay: float = 1e-3
        """L2 weight decay of the new head while fitting it."""

    def _feature_dim(self, spec: EpisodeSpec) -> int:
        _, H, W = spec.image_shape
        return self.options.hidden * pooled(H, 4) * pooled(W, 4)

    def init(self, spec: EpisodeSpec, generator: torch.Generator) -> Params:
        # Only what adapt/predict use: the test-time head is fitted anew in every episode.
        return init_conv4(generator, in_channels=spec.image_shape[0], hidden=self.options.hidden)

    def init_for_training(self, spec: EpisodeSpec, generator: torch.Generator, split: ImageSplit) -> Params:
        params = self.init(spec, generator)
        params.update(self._init_pretrain_head(generator, self._feature_dim(spec), split.n_classes))
        return params

    # -- heads: the linear one here, the cosine one in FinetuneCosine --------------------

    def _init_pretrain_head(self, generator: torch.Generator, d: int, n_classes: int) -> Params:
        return init_linear(generator, d, n_classes, PRETRAIN)

    def _new_head(self, z: Tensor, y: Tensor, n_way: int) -> Params:
        return {"weight": z.new_zeros(n_way, z.shape[-1]), "bias": z.new_zeros(n_way)}

    def _head(self, head: Params, z: Tensor) -> Tensor:
        return F.linear(z, head["weight"], head["bias"])

    # -----------------------------------------------------------------------------------

    def adapt(self, params: Params, x_support: Tensor, y_support: Tensor, *, n_way: int, train: bool = False) -> Any:
        o = self.options
        z, stats = conv4(params, x_support)

        def loss(h: Params) -> Tensor:
            decay = sum(t.square().sum() for t in h.values())
            return F.cross_entropy(self._head(h, z), y_support) + 0.5 * o.weight_decay * decay

        head = sgd_steps(loss, self._new_head(z, y_support, n_way), o.finetune_steps, o.finetune_lr)
        return {"head": head, "stats": stats}

    def predict(self, params: Params, state: Any, x_query: Tensor) -> Tensor:
        stats = self.query_stats(state["stats"])
        z, _ = conv4(params, x_query, stats)
        return self._head(state["head"], z)

    def train_step(self, ctx: "TrainContext") -> float:
        from bench.training import classifier_train_step

        head = {k[len(PRETRAIN):]: v for k, v in ctx.params.items() if k.startswith(PRETRAIN)}
        return classifier_train_step(ctx, lambda x: self._head(head, conv4(ctx.params, x)[0]))

    def train_defaults(self, spec: EpisodeSpec) -> TrainDefaults:
        return TrainDefaults(meta_batch=self.options.batch_size, lr=1e-3, steps=25700)


class FinetuneCosine(Finetune):
    """Baseline++: as :class:`Finetune` with cosine-similarity classifiers, both for
    pre-training and for the new head.

    The head is the reference code's ``distLinear``: ``scores_c = s * g_c *
    cos(v_c, z)`` with a weight-normalised direction ``v_c``, a learned per-class norm
    ``g_c`` (initialised to ``|v_c|``, as ``torch.nn.utils.weight_norm`` does) and no
    bias; the scale ``s`` is the reference's 2 for at most 200 classes and 10 above
    (Omniglot pre-training, 4112 classes), unless ``scale`` is set. The new head
    starts from the support class means (``v_c``), a deterministic start that a
    cosine head needs (zero weights have no direction).
    """

    id = "finetune-cosine"
    version = "1"
    head_type = "cosine"

    class Options(Finetune.Options):
        scale: float | None = None
        """Fixed scale of the cosine scores; ``None``: 2 for <= 200 classes, else 10."""

    def _scale(self, n_out: int) -> float:
        s = self.options.scale
        return float(s) if s is not None else (2.0 if n_out <= 200 else 10.0)

    def _init_pretrain_head(self, generator: torch.Generator, d: int, n_classes: int) -> Params:
        v = init_linear(generator, d, n_classes, "")["weight"]
        return {f"{PRETRAIN}v": v, f"{PRETRAIN}g": v.norm(dim=1)}

    def _new_head(self, z: Tensor, y: Tensor, n_way: int) -> Params:
        v = class_means(z, y, n_way)
        return {"v": v, "g": v.square().sum(-1).clamp_min(1e-12).sqrt()}

    def _head(self, head: Params, z: Tensor) -> Tensor:
        return self._scale(head["v"].shape[0]) * head["g"] * cosine(z, head["v"])
