"""Reptile: its own outer step (interpolation towards adapted weights) and Adam inner loop."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.errors import MrbenchError
from bench.execution import Execution
from bench.nn import AdamState, batch_norm_mode
from bench.testing import SPEC, algorithm_contract_tests, init_params, make_train_context, random_episodes
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
        if k.startswith("inner_adam."):  # the carried Adam state does not interpolate
            torch.testing.assert_close(half[k], full[k])
            continue
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


def test_vmap_and_loop_outer_steps_agree():
    # This checks Reptile's own batching (chunks, sums, mini-batch order). Both paths run
    # the hand-written batch norm here: the loop would otherwise use native kernels, whose
    # float32 rounding differs, and the inner Adam steps turn rounding-level gradient
    # differences (e.g. the conv biases' ~1e-9 noise) into visibly different weights.
    # That the two forms agree is tested in float64 (bench.nn tests and the contract).
    algo = Reptile(inner_batch=4)
    loop = make_train_context(algo, meta_batch=3)
    vmap = dataclasses.replace(make_train_context(algo, meta_batch=3), execution=Execution("vmap", chunk=2))
    with batch_norm_mode("hand"):
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
    assert o.inner_adam_state == "carry" and algo.version == "2"  # the reference code's Adam


# --- the reference's carried inner-Adam state (inner_adam_state='carry') ----------------

# The default (carry) runs the contract in tests/test_contract.py; version 1's reset mode here.
test_contract_reset = algorithm_contract_tests(lambda: Reptile(inner_adam_state="reset", inner_batch=4))


def test_carried_state_is_stored_with_the_parameters_and_advances_per_inner_step():
    algo = Reptile(inner_batch=4, inner_adam_state="carry")
    ctx = make_train_context(algo, meta_batch=3)
    assert float(ctx.params["inner_adam.t"].detach()) == 0
    assert all(not v.any() for k, v in ctx.params.items() if k.startswith("inner_adam."))
    algo.train_step(ctx)
    assert float(ctx.params["inner_adam.t"].detach()) == 3 * algo.options.inner_steps
    assert ctx.params["inner_adam.v.head.weight"].min() > 0
    assert "inner_adam.t" not in Reptile(inner_adam_state="reset").init(SPEC, torch.Generator().manual_seed(0))


def test_carried_state_combines_the_meta_batch_as_if_run_in_sequence():
    # Episode e ends with b**S * v0 + u_e; in sequence, episode 1 starts where episode 0 ended.
    algo = Reptile(inner_adam_state="carry", inner_betas=(0.5, 0.9), inner_steps=2)
    v0 = {"w": torch.tensor([1.0, 2.0])}
    m0 = {"w": torch.tensor([0.5, -0.5])}
    u = [torch.tensor([0.3, 0.1]), torch.tensor([0.2, 0.4])]
    finals = [((0.5 ** 2) * m0["w"] + u[e] / 10, (0.9 ** 2) * v0["w"] + u[e]) for e in range(2)]
    params = {"inner_adam.m.w": torch.zeros(2), "inner_adam.v.w": torch.zeros(2), "inner_adam.t": torch.tensor(7.0)}
    algo._carry_on(params, AdamState(m0, v0, params["inner_adam.t"].clone()),
                   [({"w": m}, {"w": v}) for m, v in finals])
    torch.testing.assert_close(params["inner_adam.v.w"], 0.9 ** 2 * ((0.9 ** 2) * v0["w"] + u[0]) + u[1])
    torch.testing.assert_close(params["inner_adam.m.w"], 0.5 ** 2 * ((0.5 ** 2) * m0["w"] + u[0] / 10) + u[1] / 10)
    assert float(params["inner_adam.t"]) == 7 + 2 * 2


def test_adapt_starts_from_the_carried_state():
    algo = Reptile(inner_steps_test=1, inner_lr=0.01, inner_adam_state="carry")
    params = init_params(algo, dtype=torch.float64)
    params["inner_adam.t"] = torch.tensor(1e6, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]

    def head_step(v):
        params["inner_adam.v.head.weight"] = torch.full_like(params["head.weight"], v)
        return algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)["params"]["head.weight"] - params["head.weight"]

    # A large carried second moment makes the first step 100x smaller than reset's sign step.
    assert head_step(1e4).abs().max() < 0.01 / 100
    # A negligible one, long after bias correction stopped mattering (t = 1e6): the step is
    # lr * g / sqrt((1 - beta2) * g**2) = lr / sqrt(0.001), not reset's bias-corrected lr * sign(g).
    small = head_step(1e-30)
    torch.testing.assert_close(small.abs(), torch.full_like(small, 0.01 / 0.001 ** 0.5), rtol=1e-3, atol=0)  # Adam eps


def test_carry_needs_a_checkpoint_with_the_state():
    params = init_params(Reptile(inner_adam_state="reset"))  # a version-1 checkpoint
    ep = random_episodes()[0]
    with pytest.raises(MrbenchError, match="inner_adam_state=reset"):
        Reptile(inner_adam_state="carry").adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)


def test_vmap_and_loop_outer_steps_agree_with_the_carried_state():
    algo = Reptile(inner_batch=4, inner_adam_state="carry")
    loop = make_train_context(algo, meta_batch=3)
    vmap = dataclasses.replace(make_train_context(algo, meta_batch=3), execution=Execution("vmap", chunk=2))
    with batch_norm_mode("hand"):
        algo.train_step(loop), algo.train_step(vmap)
    for k in ("inner_adam.v.head.weight", "inner_adam.v.backbone.conv1.weight", "inner_adam.t"):
        torch.testing.assert_close(vmap.params[k].detach(), loop.params[k].detach(), rtol=1e-4, atol=1e-9)
