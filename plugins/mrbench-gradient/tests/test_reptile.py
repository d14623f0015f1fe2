"""Reptile: its own outer step (interpolation towards adapted weights) and Adam inner loop."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.execution import Execution
from bench.testing import SPEC, init_params, make_train_context, random_episodes
from mrbench_gradient.reptile import Reptile


def _step(algo: Reptile, seed: int = 0, lr: float = 1.0, **kw) -> dict[str, torch.Tensor]:
    ctx = make_train_context(algo, seed=seed, lr=lr, **kw)
    algo.train_step(ctx)
    return {k: v.detach() for k, v in ctx.params.items()}


def test_outer_step_interpolates_towards_the_adapted_weights():
    algo = Reptile(inner_batch=4)
    theta = {k: v.detach() for k, v in make_train_context(algo).params.items()}
    full = _step(algo, lr=1.0)  # eps = 1: the mean of the adapted weights
    half = _step(algo, lr=0.5)  # same episodes and mini-batches (same generator seed)
    assert any(not torch.equal(full[k], theta[k]) for k in theta)
    for k in theta:
        torch.testing.assert_close(half[k], (theta[k] + full[k]) / 2, rtol=1e-5, atol=1e-6)


def test_outer_step_size_is_annealed_linearly_to_the_final_value():
    algo = Reptile()
    assert [algo.outer_step_size(1.0, s, 4) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert Reptile(outer_step_final=0.2).outer_step_size(1.0, 10, 10) == pytest.approx(0.2)
    # Late in a run the parameters barely move.
    theta = {k: v.detach() for k, v in make_train_context(algo).params.items()}
    late = _step(algo, step=99, steps=100)
    early = _step(algo, step=0, steps=100)
    for k in ("backbone.conv0.weight", "head.weight"):
        torch.testing.assert_close(late[k] - theta[k], (early[k] - theta[k]) / 100, rtol=1e-4, atol=1e-7)


def test_train_step_is_deterministic_under_the_generator():
    algo = Reptile(inner_batch=4)
    a, b, c = _step(algo, seed=0), _step(algo, seed=0), _step(algo, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_vmap_and_loop_outer_steps_agree(monkeypatch):
    # This checks Reptile's own batching (chunks, sums, mini-batch order). Both paths run
    # the hand-written batch norm here: the loop would otherwise use native kernels, whose
    # float32 rounding differs, and the inner Adam steps turn rounding-level gradient
    # differences (e.g. the conv biases' ~1e-9 noise) into visibly different weights.
    # That the two forms agree is tested in float64 (bench.nn tests and the contract).
    import bench.nn

    monkeypatch.setattr(bench.nn, "_bn_mode", lambda: "hand")
    algo = Reptile(inner_batch=4)
    loop = make_train_context(algo, meta_batch=3)
    vmap = dataclasses.replace(make_train_context(algo, meta_batch=3), execution=Execution("vmap", chunk=2))
    loss_loop, loss_vmap = algo.train_step(loop), algo.train_step(vmap)
    assert loss_loop == pytest.approx(loss_vmap, rel=1e-5)
    for k in loop.params:
        # Conv biases feed batch-statistics BatchNorm, which removes them: their gradient is
        # float noise (~1e-9) whose sign differs between the two paths, and Adam scales it up
        # to a visible step. They do not change any output.
        if ".conv" in k and k.endswith(".bias"):
            continue
        torch.testing.assert_close(vmap.params[k].detach(), loop.params[k].detach(), rtol=1e-4, atol=1e-6)


def test_adapt_uses_adam_on_the_support_set():
    # With beta1 = 0 and bias correction, Adam's first step is -lr * sign(grad).
    algo = Reptile(inner_steps_test=1, inner_lr=0.01)
    params = init_params(algo, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]
    delta = algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)["params"]["head.weight"] - params["head.weight"]
    assert torch.allclose(delta.abs(), torch.full_like(delta, 0.01), rtol=1e-4)
    sgd = Reptile(inner_steps_test=1, inner_lr=0.01, inner_optimizer="sgd")
    delta_sgd = sgd.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)["params"]["head.weight"] - params["head.weight"]
    assert not torch.allclose(delta_sgd.abs(), delta.abs())


def test_paper_defaults():
    algo = Reptile()
    o = algo.options
    assert (o.inner_lr, o.inner_steps, o.inner_batch, o.train_shots, o.inner_steps_test, o.meta_batch) == (0.001, 5, 10, 10, 50, 5)
    d = algo.train_defaults(SPEC.replace(n_way=5, k_shot=1))
    assert (d.lr, d.meta_batch, d.steps, d.train_query) == (1.0, 5, 100000, 9)
    assert algo.transductive is False and Reptile(bn="batch").transductive is True
