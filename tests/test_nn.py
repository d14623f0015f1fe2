"""The functional building blocks in bench.nn that algorithms share."""

from __future__ import annotations

import pytest
import torch

from bench.nn import conv4, conv_blocks, cosine, init_conv4, pooled, sgd_steps


def _quadratic(target: torch.Tensor):
    return lambda p: ((p["w"] - target) ** 2 * torch.arange(1.0, 6.0, dtype=target.dtype)).sum()


def test_sgd_steps_is_plain_gradient_descent():
    target = torch.linspace(-1, 1, 5, dtype=torch.float64)
    w0 = {"w": torch.zeros(5, dtype=torch.float64)}
    out = sgd_steps(_quadratic(target), w0, 3, 0.1)
    w = w0["w"].clone()
    for _ in range(3):
        w = w - 0.1 * 2 * (w - target) * torch.arange(1.0, 6.0, dtype=torch.float64)
    torch.testing.assert_close(out["w"], w)


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.0, 0.999)])
def test_sgd_steps_with_betas_matches_torch_adam(betas):
    target = torch.linspace(-1, 1, 5, dtype=torch.float64)
    loss_fn = _quadratic(target)
    out = sgd_steps(loss_fn, {"w": torch.zeros(5, dtype=torch.float64)}, 7, 0.05, betas=betas)
    w = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05, betas=betas, eps=1e-8)
    for _ in range(7):
        opt.zero_grad()
        loss_fn({"w": w}).backward()
        opt.step()
    torch.testing.assert_close(out["w"], w.detach(), rtol=1e-12, atol=1e-12)


def test_adam_steps_stay_differentiable_where_a_gradient_is_zero():
    # w[0] does not affect the loss: its gradient is exactly 0, which must not give NaN.
    x = torch.tensor([0.0, 2.0], dtype=torch.float64, requires_grad=True)
    out = sgd_steps(lambda p: (p["w"][1] * x[1]) ** 2 + 0.0 * p["w"][0], {"w": x.clone()}, 3, 0.1, betas=(0.0, 0.999))
    (g,) = torch.autograd.grad(out["w"].sum(), x)
    assert torch.isfinite(g).all()


def test_indexed_loss_gets_the_step_index():
    seen = []

    def loss_fn(p, i):
        seen.append(i)
        return p["w"].sum() * (i + 1)

    out = sgd_steps(loss_fn, {"w": torch.zeros(2)}, 3, 1.0, indexed=True)
    assert seen == [0, 1, 2]
    torch.testing.assert_close(out["w"], torch.full((2,), -6.0))


def test_conv4_is_four_pooled_conv_blocks():
    params = init_conv4(torch.Generator().manual_seed(0))
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    z, _ = conv4(params, x)
    maps, _ = conv_blocks(params, x)
    torch.testing.assert_close(z, maps.flatten(1))
    half, stats = conv_blocks(params, x, pools=2)
    assert half.shape == (3, 64, pooled(28, 2), pooled(28, 2)) == (3, 64, 7, 7) and len(stats) == 4


def test_cosine_is_safe_at_zero():
    a = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    b = torch.tensor([[1.0, 0.0]])
    sim = cosine(a, b)
    torch.testing.assert_close(sim.detach(), torch.tensor([[0.0], [0.6]]))
    (g,) = torch.autograd.grad(sim.sum(), a)
    assert torch.isfinite(g).all()
