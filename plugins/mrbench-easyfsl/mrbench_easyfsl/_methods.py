"""easyfsl's classes as the adapter runs them: the unmodified ones, and the rewrites that
mrbench's contract forces (see :mod:`mrbench_easyfsl.algorithms`).

Imported only when an easyfsl algorithm builds its module (:class:`LazyMethod`), so
that loading the plugin (every ``mrbench`` command does) does not import easyfsl and
torchvision.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from easyfsl import methods
from easyfsl.methods import BDCSPN, FEAT, PrototypicalNetworks, SimpleShot  # noqa: F401 (looked up by LazyMethod)
from torch import Tensor

from bench.components import Params
from bench.nn import sgd_steps

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
