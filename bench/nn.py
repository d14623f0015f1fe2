"""Functional building blocks shared by the algorithm plugins.

The conv4 backbone (Vinyals et al. 2016; 4 x [conv3x3 64 + BatchNorm + ReLU +
maxpool2]) as a pure function of a flat parameter dict, so one implementation
serves meta-training, evaluation and attacks, under ``torch.func`` transforms.

Batch normalisation is hand-written and never tracks running statistics: native
BatchNorm under ``vmap`` gives wrong second-order MAML gradients (see
PERF-NOTES), and running statistics are hidden state. Statistics come either from
the batch being normalised or from an explicit ``stats`` argument (e.g. the
support set's, which makes query predictions independent of each other).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.components import Params

BN_EPS = 1e-5
Stats = list[tuple[Tensor, Tensor]]
"""Per-layer (mean, var) over (N, H, W), each ``[C]``."""


def _uniform(shape: Sequence[int], bound: float, generator: torch.Generator) -> Tensor:
    return (torch.rand(*shape, generator=generator) * 2.0 - 1.0) * bound


def init_conv4(generator: torch.Generator, in_channels: int = 1, hidden: int = 64, prefix: str = "backbone.") -> Params:
    """Conv4 parameters with PyTorch's default Conv2d init (kaiming-uniform, a=sqrt(5)).

    :param generator: seeded CPU generator; the only randomness.
    :param in_channels: image channels.
    :param hidden: channels of every conv layer.
    :param prefix: key prefix of the returned dict.
    """
    params: Params = {}
    cin = in_channels
    for i in range(4):
        fan_in = cin * 9
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) reduces to 1/sqrt(fan_in)
        params[f"{prefix}conv{i}.weight"] = _uniform((hidden, cin, 3, 3), bound, generator)
        params[f"{prefix}conv{i}.bias"] = _uniform((hidden,), bound, generator)
        params[f"{prefix}bn{i}.weight"] = torch.ones(hidden)
        params[f"{prefix}bn{i}.bias"] = torch.zeros(hidden)
        cin = hidden
    return params


def init_linear(generator: torch.Generator, in_features: int, out_features: int, prefix: str = "head.") -> Params:
    """A linear layer with PyTorch's default init."""
    bound = 1.0 / math.sqrt(in_features)
    return {
        f"{prefix}weight": _uniform((out_features, in_features), bound, generator),
        f"{prefix}bias": _uniform((out_features,), bound, generator),
    }


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance per channel over (N, H, W)."""
    mean = x.mean(dim=(0, 2, 3))
    var = (x - mean[None, :, None, None]).square().mean(dim=(0, 2, 3))
    return mean, var


def conv4(params: Params, x: Tensor, stats: Stats | None = None, prefix: str = "backbone.") -> tuple[Tensor, Stats]:
    """Embed images ``[N, C, H, W]`` -> features ``[N, hidden * h * w]``.

    :param stats: per-layer (mean, var) to normalise with; ``None`` uses the
        statistics of ``x`` itself (a transductive operation over the batch).
    :returns: the features and the statistics that were used.
    """
    used: Stats = []
    h = x
    for i in range(4):
        h = F.conv2d(h, params[f"{prefix}conv{i}.weight"], params[f"{prefix}conv{i}.bias"], padding=1)
        mean, var = batch_stats(h) if stats is None else stats[i]
        used.append((mean, var))
        scale = params[f"{prefix}bn{i}.weight"] * torch.rsqrt(var + BN_EPS)
        shift = params[f"{prefix}bn{i}.bias"] - mean * scale
        h = F.relu(h * scale[None, :, None, None] + shift[None, :, None, None])
        h = F.max_pool2d(h, 2)
    return h.flatten(1), used


def linear(params: Params, x: Tensor, prefix: str = "head.") -> Tensor:
    return F.linear(x, params[f"{prefix}weight"], params[f"{prefix}bias"])


def sq_euclidean(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ``[n, m]`` between rows of ``a`` and ``b``.

    Written as a difference (not the ``|a|^2 - 2ab + |b|^2`` expansion) so it is exact
    for identical rows and stable under second-order differentiation.
    """
    return (a.unsqueeze(-2) - b.unsqueeze(-3)).square().sum(-1)


def class_means(z: Tensor, y: Tensor, n_way: int) -> Tensor:
    """Per-class mean of rows of ``z`` ``[n, d]`` by labels ``y`` ``[n]`` -> ``[n_way, d]``.

    A one-hot matmul: static shapes, so it is ``vmap``-safe and differentiable.
    """
    onehot = F.one_hot(y, n_way).to(z.dtype)  # [n, n_way]
    counts = onehot.sum(0).clamp_min(1.0)
    return (onehot.t() @ z) / counts[:, None]


def sgd_steps(loss_fn, fast: Params, steps: int, lr: float | Params, first_order: bool = False) -> Params:
    """The one inner loop: ``steps`` plain gradient steps on ``loss_fn(fast)``.

    Uses ``torch.func.grad``, so it is ``vmap``-safe, works under ``torch.no_grad``
    (evaluation) and stays differentiable for an outer ``backward`` (second-order
    meta-gradients, attacks through adaptation).

    :param loss_fn: ``fast -> scalar loss``.
    :param fast: the tensors being adapted.
    :param lr: one step size, or a dict of per-tensor step sizes (Meta-SGD).
    :param first_order: cut the graph through the inner gradients (FOMAML); the
        adapted tensors still depend on the inputs through ``fast - lr * g``.
    """
    grad_fn = torch.func.grad(loss_fn)
    for _ in range(steps):
        grads = grad_fn(fast)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        if isinstance(lr, dict):
            fast = {k: v - lr[k] * grads[k] for k, v in fast.items()}
        else:
            fast = {k: v - lr * grads[k] for k, v in fast.items()}
    return fast
