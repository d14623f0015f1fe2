"""Reptile (Nichol et al., 2018): move the initialisation towards task-adapted weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from bench.components import EpisodeSpec, TrainDefaults
from bench.episodes import sample_batch
from bench.nn import sgd_steps
from mrbench_gradient.maml import MAML

if TYPE_CHECKING:
    from bench.training import TrainContext


class Reptile(MAML):
    """Reptile with its own outer update, on conv4 + a linear head.

    Outer step (:meth:`train_step`): for each of ``meta_batch`` training episodes,
    ``inner_steps`` Adam steps from the meta-parameters on mini-batches of
    ``inner_batch`` images drawn without replacement from the episode's
    ``train_shots`` images per class (support and query together; the reference code
    samples one pool of ``train_shots`` per class); then interpolate
    ``theta <- theta + eps * (mean(phi) - theta)`` with the outer step size ``eps``
    annealed linearly from the harness's ``lr`` (here the *outer step size*, not an
    Adam rate: the harness's optimizer is left unused) to ``outer_step_final``.
    Every random draw comes from the training generator.

    Defaults are the paper's Omniglot 5-way settings (Nichol et al. 2018, Table of
    Omniglot hyper-parameters, and the commands of the reference code
    ``openai/supervised-reptile``), 1-shot and 5-shot alike: inner Adam with step
    size 0.001 and beta1 = 0, 5 inner iterations on mini-batches of 10 from 10
    images per class, meta-batch 5, outer step size 1.0 annealed to 0 over 100000
    outer iterations; evaluation: 50 inner iterations.

    Deviations, all forced by the pure ``adapt`` contract: the inner Adam's moments
    start at zero in every episode (the reference keeps them across training
    episodes); evaluation adapts on the whole support set at every step (the
    reference uses mini-batches of 5, which for 5-way 1-shot is the whole support).

    BatchNorm: batch statistics of each inner mini-batch in training and of the
    support set in adaptation, never running statistics. With ``bn='support'``
    (default) queries are normalised with the adapted network's support statistics,
    so each query is classified on its own (non-transductive; the reference's
    non-transductive mode normalises each query together with the support set).
    ``bn='batch'`` normalises the queries with their own batch: the paper's
    transductive setting.
    """

    id = "reptile"
    version = "1"

    class Options(MAML.Options):
        inner_lr: float = 0.001
        inner_steps: int = 5
        inner_steps_test: int = 50
        meta_batch: int = 5
        inner_optimizer: Literal["adam", "sgd"] = "adam"
        inner_betas: tuple[float, float] = (0.0, 0.999)
        """Adam betas of the inner loop (the reference code sets beta1 = 0)."""
        inner_batch: int = 10
        """Images per inner mini-batch in meta-training."""
        train_shots: int = 10
        """Images per class in a training episode (support + query)."""
        outer_step_final: float = 0.0
        """Outer step size at the end of training (linear annealing from ``lr``)."""

    def _inner_betas(self) -> tuple[float, float] | None:
        return tuple(self.options.inner_betas) if self.options.inner_optimizer == "adam" else None

    def train_defaults(self, spec: EpisodeSpec) -> TrainDefaults:
        # lr is Reptile's outer step size (see the class docstring).
        return TrainDefaults(meta_batch=self.options.meta_batch, lr=1.0, steps=100000,
                             train_query=max(1, self.options.train_shots - spec.k_shot))

    def outer_step_size(self, lr: float, step: int, steps: int) -> float:
        """The paper's linear annealing: ``lr`` at step 0 to ``outer_step_final`` at ``steps``."""
        frac = step / steps
        return (1.0 - frac) * lr + frac * self.options.outer_step_final

    def train_step(self, ctx: "TrainContext") -> float:
        o = self.options
        batch = sample_batch(ctx.split, ctx.spec, ctx.meta_batch, ctx.generator)
        x = torch.cat([batch.x_support, batch.x_query], 1)
        y = torch.cat([batch.y_support, batch.y_query], 1)
        E, n = y.shape
        # Mini-batches without replacement, reshuffling after each pass (as the reference).
        need = o.inner_steps * o.inner_batch
        passes = -(-need // n)
        keys = torch.rand(E, passes, n, generator=ctx.generator, device=ctx.generator.device).to(y.device)
        order = keys.argsort(-1).reshape(E, passes * n)[:, :need].reshape(E, o.inner_steps, o.inner_batch)
        theta = {k: v.detach() for k, v in ctx.params.items()}

        def one(xe, ye, oe):
            phi = sgd_steps(
                lambda p, i: F.cross_entropy(self._logits(p, xe[oe[i]]), ye[oe[i]]),
                theta, o.inner_steps, o.inner_lr, betas=self._inner_betas(), indexed=True,
            )
            return phi, F.cross_entropy(self._logits(phi, xe), ye)

        ex = ctx.execution
        with torch.no_grad():
            if ex.strategy == "vmap":
                parts = [torch.func.vmap(one)(x[i : i + ex.chunk], y[i : i + ex.chunk], order[i : i + ex.chunk])
                         for i in range(0, E, ex.chunk)]
                phi_sum = {k: sum(p[k].sum(0) for p, _ in parts) for k in theta}
                loss = sum(float(l.sum()) for _, l in parts) / E
            else:
                phi_sum = {k: torch.zeros_like(v) for k, v in theta.items()}
                loss = 0.0
                for e in range(E):
                    phi, l = one(x[e], y[e], order[e])
                    phi_sum = {k: phi_sum[k] + phi[k] for k in theta}
                    loss += float(l) / E
            eps = self.outer_step_size(ctx.optimizer.param_groups[0]["lr"], ctx.step, ctx.steps)
            for k, p in ctx.params.items():
                p.add_(phi_sum[k] / E - p, alpha=eps)
        return loss
