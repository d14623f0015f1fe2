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

from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from easyfsl import methods
from easyfsl.modules import MultiHeadAttention
from torch import Tensor, nn

from bench.adapters import Conv4Module, Outputs, ModuleAlgorithm
from bench.components import Episode, EpisodeSpec, ImageSplit, Params, TrainDefaults
from bench.nn import Conv4Options, conv4, init_conv4, init_linear, linear, pooled, sgd_steps

if TYPE_CHECKING:
    from bench.training import TrainContext

PRETRAIN = "pretrain."
"""Key prefix of the pre-training classifier (training only; not used by adapt/predict)."""

_PROTOTYPES_NOT_VMAP_SAFE = ("easyfsl computes class prototypes with torch.unique and torch.nonzero (data-dependent "
                             "shapes)")


# -- easyfsl's inner Adam loops, unrolled --------------------------------------------------


class _UnrolledAdam:
    """easyfsl's ``torch.optim.Adam`` loop on ``self.prototypes`` as functional Adam steps.

    Same update (torch's Adam: betas 0.9/0.999, eps 1e-8, bias correction), but written
    with ``torch.func.grad``, so the fine-tuned prototypes stay a differentiable function
    of the support and query features.
    """

    fine_tuning_steps: int
    fine_tuning_lr: float
    prototypes: Tensor

    def _fine_tune_prototypes(self, loss_fn: Callable[[], Tensor]) -> None:
        def loss(fast: Params) -> Tensor:
            self.prototypes = fast["prototypes"]
            return loss_fn()

        fast = sgd_steps(loss, {"prototypes": self.prototypes}, self.fine_tuning_steps, self.fine_tuning_lr,
                         betas=(0.9, 0.999), eps=1e-8)
        self.prototypes = fast["prototypes"]


class _Finetune(_UnrolledAdam, methods.Finetune):
    def forward(self, query_images: Tensor) -> Tensor:
        # easyfsl.methods.Finetune.forward, with the Adam loop unrolled and the result not detached.
        query_features = self.compute_features(query_images)
        self._fine_tune_prototypes(lambda: F.cross_entropy(
            self.temperature * self.cosine_distance_to_prototypes(self.support_features), self.support_labels))
        return self.softmax_if_specified(self.cosine_distance_to_prototypes(query_features),
                                         temperature=self.temperature)


class _TransductiveFinetuning(_UnrolledAdam, methods.TransductiveFinetuning):
    def forward(self, query_images: Tensor) -> Tensor:
        # easyfsl.methods.TransductiveFinetuning.forward, with the Adam loop unrolled and the result not detached.
        from easyfsl.methods.utils import entropy

        query_features = self.compute_features(query_images)
        self._fine_tune_prototypes(lambda: F.cross_entropy(
            self.temperature * self.l2_distance_to_prototypes(self.support_features), self.support_labels)
            + entropy(self.temperature * self.l2_distance_to_prototypes(query_features)))
        return self.softmax_if_specified(self.l2_distance_to_prototypes(query_features),
                                         temperature=self.temperature)


class _TIM(_UnrolledAdam, methods.TIM):
    def forward(self, query_images: Tensor) -> Tensor:
        # easyfsl.methods.TIM.forward, with the Adam loop unrolled and the result not detached; the class
        # count is the prototypes' (easyfsl counts the distinct support labels: the same number).
        query_features = self.compute_features(query_images)
        support_labels_one_hot = F.one_hot(self.support_labels, self.prototypes.shape[0])

        def loss() -> Tensor:
            support_logits = self.temperature * self.cosine_distance_to_prototypes(self.support_features)
            query_logits = self.temperature * self.cosine_distance_to_prototypes(query_features)
            support_cross_entropy = -(support_labels_one_hot * support_logits.log_softmax(1)).sum(1).mean(0)
            query_soft_probs = query_logits.softmax(1)
            query_conditional_entropy = -(query_soft_probs * torch.log(query_soft_probs + 1e-12)).sum(1).mean(0)
            marginal_prediction = query_soft_probs.mean(0)
            marginal_entropy = -(marginal_prediction * torch.log(marginal_prediction)).sum(0)
            return self.cross_entropy_weight * support_cross_entropy - (
                self.marginal_entropy_weight * marginal_entropy
                - self.conditional_entropy_weight * query_conditional_entropy)

        self._fine_tune_prototypes(loss)
        return self.softmax_if_specified(self.cosine_distance_to_prototypes(query_features),
                                         temperature=self.temperature)


class _MatchingNetworks(methods.MatchingNetworks):
    def process_support_set(self, support_images: Tensor, support_labels: Tensor) -> None:
        super().process_support_set(support_images, support_labels)
        # easyfsl makes the one-hot labels float32 whatever the features' dtype (float64 fails).
        self.one_hot_support_labels = self.one_hot_support_labels.to(self.contextualized_support_features.dtype)


class _RelationNetworks(methods.RelationNetworks):
    def process_support_set(self, support_images: Tensor, support_labels: Tensor) -> None:
        super().process_support_set(support_images, support_labels)
        # mrbench keeps no running statistics: score every (class, support image) pair once, so
        # the relation module's conv blocks store the statistics that (class, query) pairs are
        # then normalised with (as the backbone stores the support set's for the queries).
        support_features = self.compute_features(support_images)
        n, c = support_features.shape[0], self.prototypes.shape[0]
        pairs = torch.cat((self.prototypes.unsqueeze(0).expand(n, -1, -1, -1, -1),
                           support_features.unsqueeze(1).expand(-1, c, -1, -1, -1)), dim=2)
        self.relation_module(pairs.view(-1, 2 * self.feature_dimension, *support_features.shape[2:]))


class _LaplacianShot(methods.LaplacianShot):
    def compute_pairwise_affinities(self, features: Tensor) -> Tensor:
        # easyfsl builds the 0/1 kNN affinities in float32 whatever the features' dtype (float64 fails).
        return super().compute_pairwise_affinities(features).to(features.dtype)


class _PTMAP(methods.PTMAP):
    # easyfsl's Sinkhorn and prototype update, written out of place: easyfsl scales the transport
    # plan and moves the prototypes in place, which autograd cannot differentiate ("modified by an
    # inplace operation"). The same arithmetic in the same order (tested against easyfsl's).

    def __init__(self, *args: Any, unit_norm: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unit_norm = unit_norm

    def compute_features(self, images: Tensor) -> Tensor:
        # Equation (1) of the paper: the power transform, then unit L2 norm (easyfsl omits the norm).
        features = super().compute_features(images)
        return F.normalize(features, dim=1) if self.unit_norm else features

    def compute_optimal_transport(self, cost_matrix: Tensor, epsilon: float = 1e-6) -> Tensor:
        from easyfsl.methods.pt_map import MAXIMUM_SINKHORN_ITERATIONS

        instance_multiplication_factor = cost_matrix.shape[0] // cost_matrix.shape[1]
        transport_plan = torch.exp(-self.lambda_regularization * cost_matrix)
        transport_plan = transport_plan / transport_plan.sum(dim=(0, 1), keepdim=True)
        for _ in range(MAXIMUM_SINKHORN_ITERATIONS):
            per_class_sums = transport_plan.sum(1)
            transport_plan = transport_plan * (1 / (per_class_sums + 1e-10)).unsqueeze(1)
            transport_plan = transport_plan * (instance_multiplication_factor
                                               / (transport_plan.sum(0) + 1e-10)).unsqueeze(0)
            if torch.max(torch.abs(per_class_sums - transport_plan.sum(1))) < epsilon:
                break
        return transport_plan

    def update_prototypes(self, all_features: Tensor, all_assignments: Tensor) -> None:
        new_prototypes = (all_assignments.T @ all_features) / all_assignments.sum(0).unsqueeze(1)
        self.prototypes = self.prototypes + self.fine_tuning_lr * (new_prototypes - self.prototypes)


# -- the adapter's base -------------------------------------------------------------------------


class EasyFSLAlgorithm(ModuleAlgorithm):
    """An easyfsl classifier on mrbench's conv4, run through :class:`bench.adapters.ModuleAlgorithm`.

    :cvar method: the easyfsl class (its ``is_transductive()`` decides ``transductive``).
    :cvar recipe: ``episodic`` (the harness's step on :meth:`loss`) or ``classical``
        (pre-training over all meta-train classes, :meth:`ClassicalPretraining.train_step`).
    """

    method: ClassVar[type[methods.FewShotClassifier]]
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
    method = methods.PrototypicalNetworks


class SimpleShot(ClassicalPretraining):
    """easyfsl's SimpleShot (Wang et al. 2019): cosine similarity to the class means of a
    pre-trained backbone (no feature centring, easyfsl's default)."""

    id = "easyfsl-simple-shot"
    method = methods.SimpleShot


class MatchingNetworks(EasyFSLAlgorithm):
    """easyfsl's MatchingNetworks (Vinyals et al. 2016) with full context embeddings (a
    bidirectional LSTM over the support set, an attention LSTM for the queries). The
    module returns log-probabilities; training minimises their negative log-likelihood
    (easyfsl's advice), with mrbench ``matchingnet``'s recipe."""

    id = "easyfsl-matching-networks"
    method = _MatchingNetworks
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
    method = _RelationNetworks
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
    method = methods.FEAT

    def build(self, spec: EpisodeSpec) -> nn.Module:
        d = self.feature_dim(spec)
        return self.method(self.backbone(spec), attention_module=MultiHeadAttention(1, d, d, d))


class Finetune(ClassicalPretraining):
    """easyfsl's Finetune (Chen et al. 2019): Adam fine-tunes the class means on the support
    set's cosine cross-entropy, then cosine similarity classifies the queries. The Adam
    steps are unrolled (see the module docstring), so attacks differentiate through them."""

    id = "easyfsl-finetune"
    method = _Finetune

    class Options(ClassicalPretraining.Options):
        fine_tuning_steps: int = 200
        fine_tuning_lr: float = 1e-4
        temperature: float = 1.0


class BDCSPN(ClassicalPretraining):
    """easyfsl's BD-CSPN (Liu et al. 2020): prototypes rectified with the queries
    (feature shift and pseudo-labels), cosine similarity. Transductive."""

    id = "easyfsl-bd-cspn"
    method = methods.BDCSPN


class LaplacianShot(ClassicalPretraining):
    """easyfsl's LaplacianShot (Ziko et al. 2020): BD-CSPN's rectified prototypes, then
    Laplacian-regularised soft assignments over the queries' k-nearest-neighbour graph
    (bound updates). Transductive; returns log soft-assignments."""

    id = "easyfsl-laplacian-shot"
    method = _LaplacianShot
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
    method = _TIM

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
    method = _TransductiveFinetuning

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
    method = _PTMAP
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
