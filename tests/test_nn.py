"""The functional building blocks in bench.nn that algorithms share."""

from __future__ import annotations

import pytest
import torch

from bench.execution import Execution, map_episodes
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



def _bn_params(seed: int, channels_last: bool = False):
    g = torch.Generator().manual_seed(seed)
    params = {k: v.double() for k, v in init_conv4(g).items()}
    # non-trivial BatchNorm affine parameters
    params = {k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype) if "bn" in k else v
              for k, v in params.items()}
    x = torch.rand(12, 1, 28, 28, generator=g, dtype=torch.float64)
    xq = torch.rand(7, 1, 28, 28, generator=g, dtype=torch.float64)
    if channels_last:
        x, xq = x.to(memory_format=torch.channels_last), xq.to(memory_format=torch.channels_last)
        params = {k: v.to(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in params.items()}
    return params, x, xq


def _support_then_query(params, x, xq, pools=4):
    z, stats = conv_blocks(params, x, pools=pools)
    zq, _ = conv_blocks(params, xq, stats, pools=pools)
    return z, zq, stats


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("pools", [4, 2])
def test_fused_inference_batch_norm_matches_the_hand_written_one(channels_last, pools):
    """Without autograd the backbone runs native batch norm (one kernel); it must give the
    same features and statistics as the hand-written form, both with the batch's own
    statistics and with given (support) statistics."""
    import bench.nn as nn_mod

    params, x, xq = _bn_params(3, channels_last)
    with torch.no_grad():
        assert nn_mod._bn_mode() == "fused"
        out, out_q, stats = _support_then_query(params, x, xq, pools)
        with nn_mod.batch_norm_mode("hand"):
            ref, ref_q, ref_stats = _support_then_query(params, x, xq, pools)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_q, ref_q, rtol=1e-9, atol=1e-9)
    for (m, v), (rm, rv) in zip(stats, ref_stats):
        torch.testing.assert_close(m, rm, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(v, rv, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("query_stats", ["support", "own"])
def test_native_batch_norm_gives_the_hand_written_second_order_gradients(query_stats):
    """Under autograd and ``torch.func.grad`` (no vmap) the backbone runs native batch-norm
    kernels; a MAML-style second-order meta-gradient through an inner SGD step, and the
    input gradients attacks use, must equal the hand-written form's (float64)."""
    import bench.nn as nn_mod

    def meta_grads():
        params, x, xq = _bn_params(5)
        params = {k: v.requires_grad_(True) for k, v in params.items()}
        x, xq = x.requires_grad_(True), xq.requires_grad_(True)
        y = torch.arange(12) % 3
        head = torch.randn(64, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

        def inner_loss(fast):
            z, _ = conv4(fast, x)
            return torch.nn.functional.cross_entropy(z @ head, y)

        fast = sgd_steps(inner_loss, params, 2, 0.3)
        z, stats = conv4(fast, x)
        zq, _ = conv4(fast, xq, stats if query_stats == "support" else None)
        loss = (zq @ head).logsumexp(-1).mean() + z.square().mean()
        return torch.autograd.grad(loss, [*params.values(), x, xq])

    assert nn_mod._bn_mode() == "native"
    native = meta_grads()
    with nn_mod.batch_norm_mode("hand"):
        hand = meta_grads()
    scale = max(float(g.abs().max()) for g in hand)
    for a, b in zip(native, hand):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * scale)


def test_batch_norm_mode_comes_from_the_plan():
    """fused without autograd, native under autograd and grad, hand-written in the ``vmap``
    calls of ``map_episodes`` (grad inside them too) and under ``batch_norm_mode``, so
    vmapped and looped predictions agree."""
    import bench.nn as nn_mod

    seen = []

    def probe(x):
        seen.append(nn_mod._bn_mode())
        return x.sum()

    x = torch.rand(3, 4)
    vmap, loop = Execution("vmap", chunk=2), Execution("loop")
    with torch.no_grad():
        probe(x)
        map_episodes(probe, vmap, x)  # two chunks
    probe(x)
    torch.func.grad(probe)(x)
    map_episodes(torch.func.grad(probe), vmap, x)
    map_episodes(probe, loop, x)
    with nn_mod.batch_norm_mode("hand"):
        probe(x)
    probe(x)
    assert seen == ["fused", "hand", "hand", "native", "native", "hand", "hand", "native", "native", "native", "hand",
                    "native"]

    params = init_conv4(torch.Generator().manual_seed(4))
    xe = torch.rand(3, 5, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        looped = map_episodes(lambda e: conv4(params, e)[0], loop, xe)
        batched = map_episodes(lambda e: conv4(params, e)[0], vmap, xe)
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)


def test_adam_state_carried_between_calls_continues_one_adam_run():
    # 3 steps, then 4 more from the returned state == 7 steps of one torch Adam.
    target = torch.linspace(-1, 1, 5, dtype=torch.float64)
    loss_fn = _quadratic(target)
    first, state = sgd_steps(loss_fn, {"w": torch.zeros(5, dtype=torch.float64)}, 3, 0.05, betas=(0.9, 0.999),
                             return_state=True)
    w = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05, betas=(0.9, 0.999), eps=1e-8)
    for step in range(7):
        if step == 3:
            assert state.t == 3
            torch.testing.assert_close(state.m["w"], opt.state[w]["exp_avg"], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(state.v["w"], opt.state[w]["exp_avg_sq"], rtol=1e-12, atol=1e-12)
        opt.zero_grad()
        loss_fn({"w": w}).backward()
        opt.step()
    out = sgd_steps(loss_fn, first, 4, 0.05, betas=(0.9, 0.999), adam_state=state)
    torch.testing.assert_close(out["w"], w.detach(), rtol=1e-12, atol=1e-12)


def test_adam_state_needs_adam():
    with pytest.raises(ValueError, match="betas"):
        sgd_steps(_quadratic(torch.zeros(5)), {"w": torch.zeros(5)}, 1, 0.1, return_state=True)


@pytest.mark.parametrize("cin", [1, 64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fold_bn_is_the_conv_then_batch_norm_and_keeps_the_filter_layout(cin, channels_last):
    """Folding given statistics into the conv gives the conv followed by batch norm
    (values and gradients, statistics included, float64), and a channels-last filter
    stays channels-last, the ambiguous one-input-channel filter too."""
    from bench.nn import BN_EPS, fold_bn

    g = torch.Generator().manual_seed(11)
    w, b, gamma, beta = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
                         for s in [(64, cin, 3, 3), (64,), (64,), (64,)])
    mean = torch.randn(64, generator=g, dtype=torch.float64, requires_grad=True)
    var = torch.rand(64, generator=g, dtype=torch.float64).add(0.1).requires_grad_(True)
    x = torch.rand(6, cin, 9, 9, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    wl = w.to(memory_format=torch.channels_last) if channels_last else w
    fw, fb = fold_bn(wl, b, gamma, beta, mean, var)
    assert (fw.stride(1) == 1) == channels_last
    out = torch.nn.functional.conv2d(x, fw, fb, padding=1)
    c = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    h = torch.nn.functional.conv2d(x, wl, b, padding=1)
    ref = (h - c(mean)) / c(var + BN_EPS).sqrt() * c(gamma) + c(beta)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    head = torch.randn(out.shape, generator=g, dtype=torch.float64)
    ga = torch.autograd.grad((out * head).sum(), [w, b, gamma, beta, mean, var])
    gr = torch.autograd.grad((ref * head).sum(), [w, b, gamma, beta, mean, var])
    for a, r in zip(ga, gr):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)


def test_batch_statistics_under_autograd_are_computed_when_used_and_stay_differentiable():
    """Under plain autograd the returned statistics are lazy: equal to the batch's own
    (float64), computed once, and differentiable even when first read under no_grad."""
    from bench.nn import _LazyBatchStats, batch_stats

    params, x, _ = _bn_params(7)
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    _, lazy = conv_blocks(params, x)
    assert all(isinstance(p, _LazyBatchStats) for p in lazy)
    with torch.no_grad():
        _, ref = conv_blocks({k: v.detach() for k, v in params.items()}, x)
        mean, var = lazy[2]
    torch.testing.assert_close(mean, ref[2][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var, ref[2][1], rtol=1e-10, atol=1e-12)
    assert lazy[2][0] is mean and len(lazy[2]) == 2
    (g,) = torch.autograd.grad(var.sum(), params["backbone.conv2.weight"])
    assert g.abs().sum() > 0
    h = torch.rand(4, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(tuple(_LazyBatchStats(h)), batch_stats(h))
