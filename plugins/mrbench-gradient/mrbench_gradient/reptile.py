"""Reptile (Nichol et al., 2018): move the initialisation towards task-adapted weights."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.components import EpisodeSpec, Params, TrainDefaults
from bench.episodes import sample_batch
from bench.errors import MrbenchError
from bench.execution import episode_blocks
from bench.nn import AdamState, conv4, sgd_steps
from mrbench_gradient.maml import MAML

if TYPE_CHECKING:
    from bench.training import TrainContext

_STATE = "inner_adam."  # key prefix of the carried inner-Adam state in the parameters


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

    The inner Adam's state: the reference code keeps one Adam state running through
    all training episodes and starts every evaluation episode from its end-of-training
    value. ``inner_adam_state='carry'`` (default since version 2) does that, keeping
    the state in the parameters (``inner_adam.*``, excluded from adaptation and
    gradients) so ``adapt`` stays pure. The episodes of a meta-batch run in parallel
    from the same state, and the state then advances as if they had run in sequence.
    ``'reset'`` (version 1's only mode) starts the moments at zero in every episode,
    so with beta1 = 0 every first step is ``-inner_lr * sign(grad)`` for every weight,
    however small its gradient; on Omniglot 5-way 1-shot that cost 5.6 points
    (82.58 vs 88.21 after 500 outer steps, docs/reproduction.md).
    Evaluation adapts on the whole support set at every step (the reference uses
    mini-batches of 5, which for 5-way 1-shot is the whole support).

    BatchNorm: batch statistics of each inner mini-batch in training and of the
    support set in adaptation, never running statistics. With ``bn='support'``
    (default) queries are normalised with the adapted network's support statistics,
    so each query is classified on its own (non-transductive; the reference's
    non-transductive mode normalises each query together with the support set).
    ``bn='batch'`` normalises the queries with their own batch: the paper's
    transductive setting.
    """

    id = "reptile"
    version = "2"

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
        inner_adam_state: Literal["carry", "reset"] = "carry"
        """``carry`` (the reference code): one inner-Adam state runs on through all
        training episodes (in meta-batch order) and every evaluation episode starts from
        its end-of-training value; it is stored in the checkpoint under ``inner_adam.*``.
        ``reset``: the moments start at zero in every episode (reptile version 1), so
        with beta1 = 0 the first step is ``-inner_lr * sign(grad)`` for every weight."""

    def _inner_betas(self) -> tuple[float, float] | None:
        return tuple(self.options.inner_betas) if self.options.inner_optimizer == "adam" else None

    def _carries(self) -> bool:
        return self.options.inner_adam_state == "carry" and self.options.inner_optimizer == "adam"

    def init(self, spec: EpisodeSpec, generator: torch.Generator) -> Params:
        params = super().init(spec, generator)
        if self._carries():
            net = list(params.items())
            params.update({f"{_STATE}m.{k}": torch.zeros_like(v) for k, v in net})
            params.update({f"{_STATE}v.{k}": torch.zeros_like(v) for k, v in net})
            params[f"{_STATE}t"] = torch.zeros((), dtype=net[0][1].dtype, device=net[0][1].device)
        return params

    def _inner(self, params: Params) -> tuple[Params, float | Params]:
        return {k: v for k, v in params.items() if not k.startswith(_STATE)}, self.options.inner_lr

    def _adam_state(self, params: Params) -> AdamState | None:
        """The carried inner-Adam state (``None`` with ``inner_adam_state='reset'``)."""
        if not self._carries():
            return None
        if f"{_STATE}t" not in params:
            raise MrbenchError(
                "This Reptile checkpoint has no carried inner-Adam state (it was trained with "
                "inner_adam_state='reset', the only mode of reptile version 1).",
                "Evaluate it with `-o inner_adam_state=reset`, or train again with inner_adam_state=carry.")
        # A statistic of past inner steps, not a learned parameter: no gradient flows into it.
        net, _ = self._inner(params)
        return AdamState({k: params[f"{_STATE}m.{k}"].detach() for k in net},
                         {k: params[f"{_STATE}v.{k}"].detach() for k in net}, params[f"{_STATE}t"].detach())

    def adapt(self, params: Params, x_support: Tensor, y_support: Tensor, *, n_way: int, train: bool = False) -> Any:
        o = self.options
        fast, lr = self._inner(params)
        fast = sgd_steps(lambda p: F.cross_entropy(self._logits(p, x_support), y_support), fast,
                         o.inner_steps if train else o.inner_steps_test, lr, betas=self._inner_betas(),
                         adam_state=self._adam_state(params))
        _, stats = conv4(fast, x_support)
        return {"params": fast, "stats": stats}

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
        net, _ = self._inner(ctx.params)
        theta = {k: v.detach() for k, v in net.items()}
        carried = self._adam_state({k: v.detach() for k, v in ctx.params.items()})

        def one(xe, ye, oe):
            out = sgd_steps(
                lambda p, i: F.cross_entropy(self._logits(p, xe[oe[i]]), ye[oe[i]]),
                theta, o.inner_steps, o.inner_lr, betas=self._inner_betas(), indexed=True,
                adam_state=carried, return_state=carried is not None,
            )
            phi, st = out if carried is not None else (out, None)
            return phi, F.cross_entropy(self._logits(phi, xe), ye), (st.m, st.v) if st is not None else ()

        # Reptile's inner loop runs channels-first, whatever the plan's loop layout.
        ex = replace(ctx.execution, channels_last=False)
        with torch.no_grad():
            phi_sum = {k: torch.zeros_like(v) for k, v in theta.items()}
            loss, moments = 0.0, []
            for phi, losses, mv in episode_blocks(one, ex, x, y, order):
                phi_sum = {k: phi_sum[k] + phi[k].sum(0) for k in theta}
                loss += float(losses.sum()) / E
                if carried is not None:
                    moments += [({k: mv[0][k][j] for k in theta}, {k: mv[1][k][j] for k in theta})
                                for j in range(losses.shape[0])]
            eps = self.outer_step_size(ctx.optimizer.param_groups[0]["lr"], ctx.step, ctx.steps)
            for k, p in net.items():
                p.add_(phi_sum[k] / E - p, alpha=eps)
            if carried is not None:
                self._carry_on(ctx.params, carried, moments)
        return loss

    def _carry_on(self, params: Params, start: AdamState, moments: list) -> None:
        """Advance the carried Adam state as if the episodes had run one after another.

        Every episode of a meta-batch starts from the same carried state (they run in
        parallel), so episode ``e`` ends with ``m_e = b**S m0 + u_e`` (``S`` inner steps);
        the reference runs them in sequence, which gives
        ``b**(E*S) m0 + sum_e b**((E-1-e)*S) u_e`` for each moment.
        """
        b1, b2 = self._inner_betas()
        S, E = self.options.inner_steps, len(moments)
        for which, b, m0 in (("m", b1, start.m), ("v", b2, start.v)):
            for k, init in m0.items():
                fresh = sum((b ** ((E - 1 - e) * S)) * (mv[0 if which == "m" else 1][k] - b ** S * init)
                            for e, mv in enumerate(moments))
                params[f"{_STATE}{which}.{k}"].copy_(b ** (E * S) * init + fresh)
        params[f"{_STATE}t"].add_(E * S)
