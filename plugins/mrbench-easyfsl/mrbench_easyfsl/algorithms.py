"""easyfsl 1.5's methods as mrbench algorithms, through :class:`bench.adapters.ModuleAlgorithm`.

Every algorithm builds easyfsl's own classifier on mrbench's conv4
(:class:`bench.adapters.Conv4Module`, the backbone of mrbench's learners) and runs it as
easyfsl wrote it, with four exceptions, each forced by mrbench's contract and each tested
against easyfsl's original code:

- Finetune, TIM and TransductiveFinetuning fine-tune the prototypes inside ``forward``
  with ``torch.optim.Adam`` and ``loss.backward()``, and return detached scores. Here
  the same Adam steps (same loss, lr, betas, eps and step count) are unrolled as
  functional steps (:func:`bench.nn.sgd_steps`), so the scores keep their gradient with
  respect to the support and query images and attacks differentiate through the
  fine-tuning, as through any other adaptation. Detached scores would make every
  gradient attack fail and the method look robust (gradient masking).
- Relation Networks: easyfsl's relation module normalises with BatchNorm's running
  statistics in ``eval()`` mode; mrbench keeps no running statistics, so the relation
  module (mrbench's conv blocks, easyfsl's default layout) normalises (class, query)
  pairs with the statistics of the (class, support image) pairs, computed while
  processing the support set, as mrbench's ``relationnet`` does.
- Probabilities (LaplacianShot's soft assignments, PT-MAP's transport plan) are
  returned as log-probabilities, so that cross-entropy and the attacks' losses see
  logits; the argmax is unchanged.
- The modules run in ``eval()`` mode (no dropout in FEAT's attention): adaptation must
  be deterministic.

easyfsl's code computes prototypes with ``torch.unique`` and ``torch.nonzero`` and some
methods stop on data-dependent tests, so none of it is ``vmap``-safe: every algorithm
declares ``vmap_unsafe`` and the harness runs it one episode at a time.

Training follows each method's recipe in easyfsl: the episodic methods (Prototypical,
Matching and Relation Networks, FEAT) train with the harness's episodic step on the
method's own loss; the others are "classical" methods in easyfsl (their backbone is
frozen at test time: Finetune, TIM and Transductive Finetuning even say that they are
incompatible with episodic training), so they pre-train conv4 with a linear classifier
over all meta-train classes (:meth:`ClassicalPretraining.train_step`), the recipe of
easyfsl's classical-training notebook and of mrbench's ``finetune`` baseline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.adapters import Conv4Module, Outputs, ModuleAlgorithm
from bench.components import Episode, EpisodeSpec, ImageSplit, Params, TrainDefaults
from bench.nn import Conv4Options, conv4, init_conv4, init_linear, linear, pooled

if TYPE_CHECKING:
    from easyfsl import methods

    from bench.training import TrainContext

PRETRAIN = "pretrain."
"""Key prefix of the pre-training classifier (training only; not used by adapt/predict)."""

_PROTOTYPES_NOT_VMAP_SAFE = ("easyfsl computes class prototypes with torch.unique and torch.nonzero (data-dependent "
                             "shapes)")


# -- easyfsl's classes, imported when first used ---------------------------------------------


class LazyMethod:
    """A class attribute naming a class of :mod:`mrbench_easyfsl._methods` (easyfsl's own
    classes and the rewrites), imported on first access: registering the plugin stays
    free of easyfsl and torchvision imports."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type | None = None) -> type["methods.FewShotClassifier"]:
        from mrbench_easyfsl import _methods

        return getattr(_methods, self.name)


# -- the adapter's base -------------------------------------------------------------------------


class EasyFSLAlgorithm(ModuleAlgorithm):
    """An easyfsl classifier on mrbench's conv4, run through :class:`bench.adapters.ModuleAlgorithm`.

    :cvar method: the easyfsl class (its ``is_transductive()`` decides ``transductive``).
    :cvar recipe: ``episodic`` (the harness's step on :meth:`loss`) or ``classical``
        (pre-training over all meta-train classes, :meth:`ClassicalPretraining.train_step`).
    """

    method: ClassVar[LazyMethod]
    recipe: ClassVar[str] = "episodic"
    vmap_unsafe = _PROTOTYPES_NOT_VMAP_SAFE
    bn_policy = "conv4 batch statistics, no running stats; queries use the support statistics unless bn='batch'"
    pools: ClassVar[int] = 4
    flatten: ClassVar[bool] = True

    class Options(Conv4Options):
        """conv4's options (``hidden``, ``bn``)."""

    @property
    def transductive(self) -> bool:  # type: ignore[override]
        return bool(self.method.is_transductive()) or self.options.bn == "batch"

    def feature_dim(self, spec: EpisodeSpec) -> int:
        """Size of the backbone's flat feature vector for images of ``spec``."""
        _, H, W = spec.image_shape
        return self.options.hidden * pooled(H, self.pools) * pooled(W, self.pools)

    def backbone(self, spec: EpisodeSpec) -> Conv4Module:
        return Conv4Module(spec.image_shape[0], self.options.hidden, pools=self.pools, flatten=self.flatten,
                           bn=self.options.bn)

    def method_kwargs(self, spec: EpisodeSpec) -> dict[str, Any]:
        """Keyword arguments of the easyfsl class besides the backbone: its options."""
        return self.options.model_dump(exclude=set(Conv4Options.model_fields) | {"batch_size"})

    def build(self, spec: EpisodeSpec) -> nn.Module:
        return self.method(self.backbone(spec), **self.method_kwargs(spec))

    def init(self, spec: EpisodeSpec, generator: torch.Generator) -> Params:
        # conv4 first, drawn exactly as mrbench's own conv4 learners draw it (the same seed gives
        # protonet's initial backbone), then the rest of the module from easyfsl's own init.
        backbone = init_conv4(generator, in_channels=spec.image_shape[0], hidden=self.options.hidden)
        params = super().init(spec, generator)
        params.update(backbone)
        return params

    def train_defaults(self, spec: EpisodeSpec) -> TrainDefaults:
        # Prototypical Networks' Omniglot recipe, as mrbench's protonet.
        return TrainDefaults(meta_batch=1, lr=1e-3, lr_decay_every=2000, lr_decay=0.5, steps=5000, train_way=60,
                             train_query=5)


class ClassicalPretraining(EasyFSLAlgorithm):
    """easyfsl's classical recipe: pre-train conv4 with a linear classifier over all the
    meta-train classes, then use the method at test time on the frozen backbone.

    One step: ``batch_size`` labelled images drawn uniformly from the meta-train split,
    cross-entropy over its classes, one Adam step (Chen et al. 2019's Omniglot settings,
    as mrbench's ``finetune``: batch 16, Adam 1e-3, 25700 steps = 5 epochs). The
    classifier (``pretrain.*``) is created by :meth:`init_for_training`, which sees the
    split, and is not used by ``adapt``/``predict``.

    Every classical method trains the same parameters the same way (the method only acts
    at test time), so they form one ``weights_family``: one pre-training serves them all
    (``mrbench evaluate easyfsl-tim --checkpoint <easyfsl-simple-shot checkpoint>``).
    """

    recipe = "classical"
    weights_family = "easyfsl-classical-conv4"

    class Options(EasyFSLAlgorithm.Options):
        batch_size: int = 16
        """Images per pre-training step (the harness's ``meta_batch``)."""

    def init_for_training(self, spec: EpisodeSpec, generator: torch.Generator, split: ImageSplit) -> Params:
        params = self.init(spec, generator)
        params.update(init_linear(generator, self.feature_dim(spec), split.n_classes, PRETRAIN))
        return params

    def train_step(self, ctx: "TrainContext") -> float:
        from bench.training import classifier_train_step

        # the backbone's features, as compute_features gives them, under a linear head
        return classifier_train_step(ctx, lambda x: linear(ctx.params, conv4(ctx.params, x)[0], PRETRAIN))

    def train_defaults(self, spec: EpisodeSpec) -> TrainDefaults:
        return TrainDefaults(meta_batch=self.options.batch_size, lr=1e-3, steps=25700)


# -- the methods ------------------------------------------------------------------------------


class PrototypicalNetworks(EasyFSLAlgorithm):
    """easyfsl's PrototypicalNetworks (Snell et al. 2017): negative Euclidean distance (not
    squared, unlike mrbench's ``protonet``) to the class means. Episodic training with
    cross-entropy, mrbench ``protonet``'s recipe."""

    id = "easyfsl-prototypical-networks"
    method = LazyMethod("PrototypicalNetworks")


class SimpleShot(ClassicalPretraining):
    """easyfsl's SimpleShot (Wang et al. 2019): cosine similarity to the class means of a
    pre-trained backbone (no feature centring, easyfsl's default)."""

    id = "easyfsl-simple-shot"
    method = LazyMethod("SimpleShot")


class MatchingNetworks(EasyFSLAlgorithm):
    """easyfsl's MatchingNetworks (Vinyals et al. 2016) with full context embeddings (a
    bidirectional LSTM over the support set, an attention LSTM for the queries). The
    module returns log-probabilities; training minimises their negative log-likelihood
    (easyfsl's advice), with mrbench ``matchingnet``'s recipe."""

    id = "easyfsl-matching-networks"
    method = LazyMethod("_MatchingNetworks")
    outputs: ClassVar[Outputs] = "log-probabilities"
    vmap_unsafe = ("easyfsl one-hot encodes the support labels without a class count and runs nn.LSTM (data-dependent "
                   "shapes)")

    def method_kwargs(self, spec: EpisodeSpec) -> dict[str, Any]:
        return {"feature_dimension": self.feature_dim(spec)}

    def loss(self, params: Params, episode: Episode, *, n_way: int) -> Tensor:
        state = self.adapt(params, episode.x_support, episode.y_support, n_way=n_way, train=True)
        return F.nll_loss(self.predict(params, state, episode.x_query), episode.y_query)

    def train_defaults(self, spec: EpisodeSpec) -> TrainDefaults:
        return TrainDefaults(meta_batch=1, lr=1e-3, steps=20000, train_query=15)


class RelationNetworks(EasyFSLAlgorithm):
    """easyfsl's RelationNetworks (Sung et al. 2018) on conv4 feature maps (the first two
    blocks pool, as in the paper: 28x28 -> 64x7x7), with a relation module of easyfsl's
    default layout (two conv3x3 + BatchNorm + ReLU + max-pool blocks, FC 8, FC 1, sigmoid)
    built from mrbench's conv blocks. Scores in [0, 1] are the logits; training regresses
    them onto the one-hot labels (mean squared error), mrbench ``relationnet``'s recipe."""

    id = "easyfsl-relation-networks"
    method = LazyMethod("_RelationNetworks")
    pools = 2
    flatten = False
    bn_policy = ("conv4 and relation-module batch statistics, no running stats; queries use the support statistics "
                 "and (class, query) pairs the (class, support) pairs' unless bn='batch'")

    class Options(EasyFSLAlgorithm.Options):
        inner_channels: int = 8
        """Width of the relation module's first fully connected layer (easyfsl's default)."""

    def build(self, spec: EpisodeSpec) -> nn.Module:
        h = self.options.hidden
        side = pooled(pooled(spec.image_shape[1], 2), 2) * pooled(pooled(spec.image_shape[2], 2), 2)
        relation = nn.Sequential(
            Conv4Module(2 * h, h, blocks=2, pools=2, flatten=True, bn=self.options.bn),
            nn.Linear(h * side, self.options.inner_channels), nn.ReLU(),
            nn.Linear(self.options.inner_channels, 1), nn.Sigmoid())
        return self.method(self.backbone(spec), feature_dimension=h, relation_module=relation)

    def loss(self, params: Params, episode: Episode, *, n_way: int) -> Tensor:
        state = self.adapt(params, episode.x_support, episode.y_support, n_way=n_way, train=True)
        scores = self.predict(params, state, episode.x_query)
        return F.mse_loss(scores, F.one_hot(episode.y_query, n_way).to(scores.dtype))

    def train_defaults(self, spec: EpisodeSpec) -> TrainDefaults:
        return TrainDefaults(meta_batch=1, lr=1e-3, lr_decay_every=100000, lr_decay=0.5, steps=1000000,
                             train_query=19 if (spec.n_way, spec.k_shot) == (5, 1) else 15)


class FEAT(EasyFSLAlgorithm):
    """easyfsl's FEAT (Ye et al. 2020): the class means pass through a one-head
    self-attention module over the feature dimension (easyfsl's ``MultiHeadAttention``,
    as in the authors' code) before ProtoNet's distance. Trained episodically with
    cross-entropy (the paper pre-trains the backbone first; here both train together,
    with protonet's recipe)."""

    id = "easyfsl-feat"
    method = LazyMethod("FEAT")

    def build(self, spec: EpisodeSpec) -> nn.Module:
        d = self.feature_dim(spec)
        from easyfsl.modules import MultiHeadAttention

        return self.method(self.backbone(spec), attention_module=MultiHeadAttention(1, d, d, d))


class Finetune(ClassicalPretraining):
    """easyfsl's Finetune (Chen et al. 2019): Adam fine-tunes the class means on the support
    set's cosine cross-entropy, then cosine similarity classifies the queries. The Adam
    steps are unrolled (see the module docstring), so attacks differentiate through them."""

    id = "easyfsl-finetune"
    method = LazyMethod("_Finetune")

    class Options(ClassicalPretraining.Options):
        fine_tuning_steps: int = 200
        fine_tuning_lr: float = 1e-4
        temperature: float = 1.0


class BDCSPN(ClassicalPretraining):
    """easyfsl's BD-CSPN (Liu et al. 2020): prototypes rectified with the queries
    (feature shift and pseudo-labels), cosine similarity. Transductive."""

    id = "easyfsl-bd-cspn"
    method = LazyMethod("BDCSPN")


class LaplacianShot(ClassicalPretraining):
    """easyfsl's LaplacianShot (Ziko et al. 2020): BD-CSPN's rectified prototypes, then
    Laplacian-regularised soft assignments over the queries' k-nearest-neighbour graph
    (bound updates). Transductive; returns log soft-assignments."""

    id = "easyfsl-laplacian-shot"
    method = LazyMethod("_LaplacianShot")
    outputs: ClassVar[Outputs] = "probabilities"
    vmap_unsafe = _PROTOTYPES_NOT_VMAP_SAFE + " and stops its bound updates on a test of .item()"

    class Options(ClassicalPretraining.Options):
        inference_steps: int = 20
        knn: int = 3
        lambda_regularization: float = 0.7


class TIM(ClassicalPretraining):
    """easyfsl's TIM (Boudiaf et al. 2020): Adam fine-tunes the class means on the support
    cross-entropy and the queries' mutual information, then cosine similarity.
    Transductive. The Adam steps are unrolled (see the module docstring)."""

    id = "easyfsl-tim"
    method = LazyMethod("_TIM")

    class Options(ClassicalPretraining.Options):
        fine_tuning_steps: int = 50
        fine_tuning_lr: float = 1e-4
        cross_entropy_weight: float = 1.0
        marginal_entropy_weight: float = 1.0
        conditional_entropy_weight: float = 0.1
        temperature: float = 10.0


class TransductiveFinetuning(ClassicalPretraining):
    """easyfsl's TransductiveFinetuning (Dhillon et al. 2020; easyfsl fine-tunes the class
    means only): Adam on the support cross-entropy plus the queries' entropy, then negative
    Euclidean distance. Transductive. The Adam steps are unrolled (see the module docstring)."""

    id = "easyfsl-transductive-finetuning"
    method = LazyMethod("_TransductiveFinetuning")

    class Options(ClassicalPretraining.Options):
        fine_tuning_steps: int = 25
        fine_tuning_lr: float = 5e-5
        temperature: float = 1.0


class PTMAP(ClassicalPretraining):
    """easyfsl's PT-MAP (Hu et al. 2020): power-transformed features, class centres refined
    by Sinkhorn optimal transport of the queries onto the classes. Transductive; returns
    the log transport plan.

    ``unit_norm`` (default on) scales the power-transformed features to unit L2 norm, as
    the paper's Equation (1) does and easyfsl's ``compute_features`` does not. Without it,
    conv4's features give squared distances of 1 to 42, ``exp(-10 d^2)`` underflows to 0
    for most (query, class) pairs and whole queries, Sinkhorn cannot converge, and
    gradients through the zeros vanish (PGD-20 scored above clean accuracy: masking).
    ``unit_norm=false`` is easyfsl's arithmetic, kept for comparison."""

    id = "easyfsl-pt-map"
    method = LazyMethod("_PTMAP")
    outputs: ClassVar[Outputs] = "probabilities"
    vmap_unsafe = _PROTOTYPES_NOT_VMAP_SAFE + " and stops Sinkhorn's iterations on a data-dependent test"

    class Options(ClassicalPretraining.Options):
        fine_tuning_steps: int = 10
        fine_tuning_lr: float = 0.2
        lambda_regularization: float = 10.0
        power_factor: float = 0.5
        unit_norm: bool = True
        """L2-normalise the power-transformed features (the paper's Equation (1); easyfsl omits it)."""


ALGORITHMS: list[type[EasyFSLAlgorithm]] = [
    PrototypicalNetworks, SimpleShot, MatchingNetworks, RelationNetworks, Finetune, BDCSPN, LaplacianShot, FEAT,
    TIM, TransductiveFinetuning, PTMAP,
]
"""Every registered method, in easyfsl's README order: inductive, then transductive."""
