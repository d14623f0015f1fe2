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
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Literal, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.components import Options, Params

BN_EPS = 1e-5
Stats = list[tuple[Tensor, Tensor]]
"""Per-layer (mean, var) over (N, H, W), each ``[C]``."""


def _uniform(shape: Sequence[int], bound: float, generator: torch.Generator) -> Tensor:
    return (torch.rand(*shape, generator=generator) * 2.0 - 1.0) * bound


def init_conv_blocks(generator: torch.Generator, in_channels: int = 1, hidden: int = 64, prefix: str = "backbone.",
                     blocks: int = 4) -> Params:
    """Parameters of ``blocks`` [conv3x3 + BatchNorm] blocks with PyTorch's default Conv2d
    init (kaiming-uniform, a=sqrt(5)).

    :param generator: seeded CPU generator; the only randomness.
    :param in_channels: channels of the first block's input.
    :param hidden: channels of every conv layer.
    :param prefix: key prefix of the returned dict.
    :param blocks: number of blocks.
    """
    params: Params = {}
    cin = in_channels
    for i in range(blocks):
        fan_in = cin * 9
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) reduces to 1/sqrt(fan_in)
        params[f"{prefix}conv{i}.weight"] = _uniform((hidden, cin, 3, 3), bound, generator)
        params[f"{prefix}conv{i}.bias"] = _uniform((hidden,), bound, generator)
        params[f"{prefix}bn{i}.weight"] = torch.ones(hidden)
        params[f"{prefix}bn{i}.bias"] = torch.zeros(hidden)
        cin = hidden
    return params


def init_conv4(generator: torch.Generator, in_channels: int = 1, hidden: int = 64, prefix: str = "backbone.") -> Params:
    """Conv4 parameters (four blocks of :func:`init_conv_blocks`)."""
    return init_conv_blocks(generator, in_channels, hidden, prefix, blocks=4)


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


def conv_blocks(params: Params, x: Tensor, stats: Stats | None = None, prefix: str = "backbone.", *,
                blocks: int = 4, pools: int | None = None) -> tuple[Tensor, Stats]:
    """``blocks`` x [conv3x3 (padding 1) + BatchNorm + ReLU (+ maxpool2)] on ``[N, C, H, W]``.

    :param stats: per-block (mean, var) to normalise with; ``None`` uses the
        statistics of ``x`` itself (a transductive operation over the batch). Given
        statistics are folded into the convolution (:func:`fold_bn`) except under
        ``vmap``: about 2x faster for query embeddings without autograd and 1.3-1.7x
        with an input gradient (1 CPU thread, 75 queries).
    :param pools: how many of the first blocks end with a 2x2 max-pool (default: all);
        RelationNet's embedding pools after its first two blocks only.
    :returns: the feature maps ``[N, hidden, h, w]`` and the statistics that were used.
    """
    pools = blocks if pools is None else pools
    mode = _bn_mode()
    used: Stats = []
    h = x
    for i in range(blocks):
        weight, bias = params[f"{prefix}conv{i}.weight"], params[f"{prefix}conv{i}.bias"]
        gamma, beta = params[f"{prefix}bn{i}.weight"], params[f"{prefix}bn{i}.bias"]
        if stats is not None and mode != "hand":
            # Given statistics make batch norm an affine map per channel: fold it into the
            # convolution (one pass instead of two, forward and backward).
            mean, var = stats[i]
            weight, bias = fold_bn(weight, bias, gamma, beta, mean, var)
            h = F.conv2d(h, weight, bias, padding=1)
            used.append((mean, var))
            if i < pools:
                h = F.max_pool2d(h, 2)
            h = F.relu(h)
            continue
        h = F.conv2d(h, weight, bias, padding=1)
        if mode == "fused":
            h, mean, var = _fused_bn(h, gamma, beta, None if stats is None else stats[i])
        elif mode == "native" and stats is None and not _transforms_active():
            # Plain autograd: the statistics are computed only if a caller uses them (e.g.
            # to normalise queries with the support's), not for every training forward.
            used.append(_LazyBatchStats(h))
            h = F.batch_norm(h, None, None, gamma, beta, True, 0.0, BN_EPS)
        elif mode == "native":
            h, mean, var = _native_bn(h, gamma, beta, None if stats is None else stats[i])
        else:
            mean, var = batch_stats(h) if stats is None else stats[i]
            scale = gamma * torch.rsqrt(var + BN_EPS)
            shift = beta - mean * scale
            h = h * scale[None, :, None, None] + shift[None, :, None, None]
        if len(used) == i:
            used.append((mean, var))
        # relu(maxpool(h)) == maxpool(relu(h)) exactly (relu is monotone), on 4x fewer elements.
        if i < pools:
            h = F.max_pool2d(h, 2)
        h = F.relu(h)
    return h, used


class _LazyBatchStats:
    """``(mean, var)`` of the activations ``h`` (as :func:`batch_stats`, differentiable),
    computed on first use and then cached; behaves as the 2-tuple everywhere a
    statistics pair is unpacked or indexed. Made only under plain autograd (no
    ``torch.func`` transform), where ``h`` lives as long as the autograd graph anyway.
    A meta-training forward whose statistics nobody reads (``bn="batch"``, MAML's
    inner-loop losses) then skips two reductions per layer.
    """

    __slots__ = ("_h", "_pair")

    def __init__(self, h: Tensor) -> None:
        self._h: Tensor | None = h
        self._pair: tuple[Tensor, Tensor] | None = None

    def _get(self) -> tuple[Tensor, Tensor]:
        if self._pair is None:
            assert self._h is not None
            with torch.enable_grad():  # as when h was made, even if first used under no_grad
                self._pair = batch_stats(self._h)
            self._h = None
        return self._pair

    def __getitem__(self, i: int) -> Tensor:
        return self._get()[i]

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return 2


def fold_bn(weight: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor, mean: Tensor, var: Tensor
            ) -> tuple[Tensor, Tensor]:
    """A conv's ``(weight, bias)`` with the batch norm of fixed statistics ``(mean, var)``
    that follows it folded in: ``bn(conv(x, w, b)) == conv(x, w * s, (b - mean) * s + beta)``
    with ``s = gamma / sqrt(var + eps)``. Exact up to float rounding, and differentiable
    with respect to every argument (statistics included). A channels-last filter stays
    channels-last (``[C_out, 1, k, k]`` filters are ambiguous, so their layout is read off
    the channel stride).
    """
    scale = gamma * torch.rsqrt(var + BN_EPS)
    folded = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    if weight.dim() == 4 and weight.stride(1) == 1 and weight.shape[2] * weight.shape[3] > 1:
        folded = folded.to(memory_format=torch.channels_last)
    return folded, (bias - mean) * scale + beta


def _transforms_active() -> bool:
    """Whether any ``torch.func`` transform is active; ``True`` when torch cannot say."""
    probe = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if probe is None else bool(probe())


BatchNormMode = Literal["fused", "native", "hand"]

_FORCED_MODE: ContextVar[BatchNormMode | None] = ContextVar("bench.nn.batch_norm_mode", default=None)


@contextmanager
def batch_norm_mode(mode: BatchNormMode | None) -> Iterator[None]:
    """Run :func:`conv_blocks`' batch norm in ``mode`` inside this block.

    The execution plan passes it down: :func:`bench.execution.map_episodes` runs its
    ``vmap`` calls under ``batch_norm_mode("hand")``, the one form that is exact under
    ``vmap``. Code that calls ``torch.func.vmap`` over :func:`conv_blocks` itself must do
    the same. Tests may force ``hand`` on a loop to compare it with ``vmap`` exactly.

    :param mode: ``fused``, ``native`` or ``hand`` (see :func:`_bn_mode`); ``None``
        restores the choice by what is being differentiated.
    """
    token = _FORCED_MODE.set(mode)
    try:
        yield
    finally:
        _FORCED_MODE.reset(token)


def _bn_mode() -> BatchNormMode:
    """How :func:`conv_blocks` normalises: the mode set by :func:`batch_norm_mode`, else
    chosen per call from what is being differentiated.

    - ``fused``: nothing is differentiated (no autograd, no transform): one native
      kernel, non-differentiable statistics.
    - ``native``: autograd or ``torch.func.grad``, but no ``vmap``: native batch-norm
      kernels (their fused backward and double backward), statistics from a separate
      differentiable two-pass reduction.
    - ``hand``: under ``vmap`` (set by the execution plan), where native batch norm gives
      wrong second-order gradients (what ``check_meta_gradient_batched_equals_loop`` in
      :mod:`bench.testing` guards): the hand-written form, exact under every transform.

    All three agree to rounding, values and gradients (tested in float64); on the CPU the
    native kernels are faster than the elementwise chain of the hand-written form
    (benchmarks/results/cpu.md). With given statistics, ``fused`` and ``native`` fold the
    normalisation into the convolution instead (:func:`fold_bn`).
    """
    forced = _FORCED_MODE.get()
    if forced is not None:
        return forced
    if not torch.is_grad_enabled() and not _transforms_active():
        return "fused"
    return "native"


def _native_bn(h: Tensor, gamma: Tensor, beta: Tensor, stats: tuple[Tensor, Tensor] | None
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Differentiable batch norm on native kernels (not under ``vmap``); ``(out, mean, var)``.

    With the batch's own statistics: training-mode ``batch_norm`` for the output, and
    :func:`batch_stats` for the returned statistics (differentiable; costs no backward pass
    unless the caller uses them, e.g. to normalise queries). With given statistics: the
    affine map ``h * scale + shift`` they define, run as an inference-mode
    ``batch_norm`` with zero mean, unit variance and ``eps=0`` (exact), whose weight
    and bias carry the gradient back to the statistics.
    """
    if stats is None:
        mean, var = batch_stats(h)  # two passes: 3x faster than var_mean's Welford on the CPU
        return F.batch_norm(h, None, None, gamma, beta, True, 0.0, BN_EPS), mean, var
    mean, var = stats
    scale = gamma * torch.rsqrt(var + BN_EPS)
    shift = beta - mean * scale
    c = h.shape[1]
    out = F.batch_norm(h, h.new_zeros(c), h.new_ones(c), scale, shift, False, 0.0, 0.0)
    return out, mean, var


def _fused_bn(h: Tensor, gamma: Tensor, beta: Tensor, stats: tuple[Tensor, Tensor] | None
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Batch norm in one native kernel (inference only); returns ``(out, mean, var)``.

    About 2x faster than the hand-written form on the CPU (one pass instead of four, and
    it keeps channels-last). Agrees with it to rounding (tested in float64).
    """
    if stats is None:
        out, mean, invstd = torch.native_batch_norm(h, gamma, beta, None, None, True, 0.0, BN_EPS)
        return out, mean, invstd.pow(-2) - BN_EPS
    mean, var = stats
    return F.batch_norm(h, mean, var, gamma, beta, False, 0.0, BN_EPS), mean, var


def conv4(params: Params, x: Tensor, stats: Stats | None = None, prefix: str = "backbone.") -> tuple[Tensor, Stats]:
    """Embed images ``[N, C, H, W]`` -> features ``[N, hidden * h * w]``.

    :param stats: per-layer (mean, var) to normalise with; ``None`` uses the
        statistics of ``x`` itself (a transductive operation over the batch).
    :returns: the features and the statistics that were used.
    """
    h, used = conv_blocks(params, x, stats, prefix)
    return h.flatten(1), used


def pooled(size: int, pools: int) -> int:
    """Spatial size after ``pools`` 2x2 max-pools (floor), e.g. 28 -> 1 after four."""
    for _ in range(pools):
        size //= 2
    return size


def linear(params: Params, x: Tensor, prefix: str = "head.") -> Tensor:
    return F.linear(x, params[f"{prefix}weight"], params[f"{prefix}bias"])


def sq_euclidean(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ``[n, m]`` between rows of ``a`` and ``b``.

    Written as a difference (not the ``|a|^2 - 2ab + |b|^2`` expansion) so it is exact
    for identical rows and stable under second-order differentiation.
    """
    return (a.unsqueeze(-2) - b.unsqueeze(-3)).square().sum(-1)


def cosine(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarities ``[n, m]`` between rows of ``a`` and ``b``.

    Normalises with ``rsqrt(max(|x|^2, eps^2))`` so a zero row gives 0, not NaN, in
    the forward and backward pass.
    """
    a = a * torch.rsqrt(a.square().sum(-1, keepdim=True).clamp_min(eps * eps))
    b = b * torch.rsqrt(b.square().sum(-1, keepdim=True).clamp_min(eps * eps))
    return a @ b.transpose(-1, -2)


def class_means(z: Tensor, y: Tensor, n_way: int) -> Tensor:
    """Per-class mean of rows of ``z`` ``[n, d]`` by labels ``y`` ``[n]`` -> ``[n_way, d]``.

    A one-hot matmul: static shapes, so it is ``vmap``-safe and differentiable.
    """
    onehot = F.one_hot(y, n_way).to(z.dtype)  # [n, n_way]
    counts = onehot.sum(0).clamp_min(1.0)
    return (onehot.t() @ z) / counts[:, None]


def sgd_steps(loss_fn, fast: Params, steps: int, lr: float | Params, first_order: bool = False, *,
              betas: tuple[float, float] | None = None, eps: float = 1e-8, indexed: bool = False,
              adam_state: AdamState | None = None, return_state: bool = False):
    """The one inner loop: ``steps`` gradient steps on ``loss_fn(fast)``.

    Uses ``torch.func.grad``, so it is ``vmap``-safe, works under ``torch.no_grad``
    (evaluation) and stays differentiable for an outer ``backward`` (second-order
    meta-gradients, attacks through adaptation).

    :param loss_fn: ``fast -> scalar loss`` (``(fast, i) -> loss`` with ``indexed``).
    :param fast: the tensors being adapted.
    :param lr: one step size, or a dict of per-tensor step sizes (Meta-SGD).
    :param first_order: cut the graph through the inner gradients (FOMAML); the
        adapted tensors still depend on the inputs through ``fast - lr * g``.
    :param betas: ``(beta1, beta2)`` turns the plain steps into Adam steps (Reptile's
        inner optimiser), with bias correction; ``None`` (default) is plain SGD.
    :param eps: Adam's denominator epsilon.
    :param indexed: call ``loss_fn(fast, i)`` with the step index ``i`` (0-based), e.g.
        to draw a different inner mini-batch at every step.
    :param adam_state: Adam's moments and step count to start from (an
        :class:`AdamState`, e.g. carried over from earlier episodes, as Reptile's
        reference code does); ``None``: moments start at zero in this call.
    :param return_state: return ``(fast, AdamState)`` (Adam only).
    """
    grad_fn = torch.func.grad(loss_fn)
    if betas is not None:
        if adam_state is None:
            m = {k: torch.zeros_like(v) for k, v in fast.items()}
            v2 = {k: torch.zeros_like(v) for k, v in fast.items()}
            t0: float | Tensor = 0.0
        else:
            m, v2, t0 = dict(adam_state.m), dict(adam_state.v), adam_state.t
    elif adam_state is not None or return_state:
        raise ValueError("adam_state and return_state need betas (Adam steps).")
    for i in range(steps):
        grads = grad_fn(fast, i) if indexed else grad_fn(fast)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        if betas is not None:
            b1, b2 = betas
            m = {k: b1 * m[k] + (1.0 - b1) * g for k, g in grads.items()}
            v2 = {k: b2 * v2[k] + (1.0 - b2) * g * g for k, g in grads.items()}
            c1, c2 = 1.0 - b1 ** (t0 + i + 1), 1.0 - b2 ** (t0 + i + 1)
            # clamp_min keeps sqrt's derivative finite where a gradient is exactly zero
            # (e.g. a conv bias under batch-statistics BatchNorm), which would otherwise
            # give 0 * inf = NaN when differentiating through the steps.
            grads = {k: (m[k] / c1) / ((v2[k] / c2).clamp_min(torch.finfo(g.dtype).tiny).sqrt() + eps)
                     for k, g in grads.items()}
        if isinstance(lr, dict):
            fast = {k: v - lr[k] * grads[k] for k, v in fast.items()}
        else:
            fast = {k: v - lr * grads[k] for k, v in fast.items()}
    if return_state:
        return fast, AdamState(m, v2, t0 + steps)
    return fast


class AdamState(NamedTuple):
    """Adam's first and second moments per tensor and its step count (for bias correction)."""

    m: Params
    v: Params
    t: float | Tensor


class Conv4Options(Options):
    """Options of every conv4 learner with the support-statistics BatchNorm policy."""

    hidden: int = 64
    """Channels of each conv layer."""
    bn: Literal["support", "batch"] = "support"
    """``support``: queries are normalised with the support set's statistics (MetaBN,
    Bronskill et al. 2020; non-transductive). ``batch``: each forward normalises with
    its own batch statistics, so queries are normalised together (transductive)."""


class SupportStatsBN:
    """Mixin for algorithms with :class:`Conv4Options`: declares the BatchNorm policy
    and derives ``transductive`` from the ``bn`` option."""

    bn_policy = "batch statistics, no running stats; queries use the support statistics unless bn='batch'"

    @property
    def transductive(self) -> bool:
        return self.options.bn == "batch"  # type: ignore[attr-defined]

    def query_stats(self, support_stats: Stats) -> Stats | None:
        """The statistics to normalise queries with: the support's, or ``None`` (own batch)."""
        return None if self.options.bn == "batch" else support_stats  # type: ignore[attr-defined]
