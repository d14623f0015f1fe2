"""FlopCounterMode counts what runs: hand counts for the conv4, under transforms and double backward.

Not timed; a few seconds. ``python -m benchmarks.run`` runs these before the timed cases,
so a torch whose counter stopped seeing an op fails the run instead of skewing its GFLOP/s.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.execution import Execution, map_episodes, meta_loss_backward
from bench.nn import conv4
from benchmarks import peers
from benchmarks.flops import FlopCache, count_flops
from benchmarks.test_throughput import SPEC, initial_params, make_algorithm, peer_runner, random_episodes

HIDDEN = 64
# (input channels, spatial size) of the four 3x3 convolutions on a 28x28 image: each keeps
# its size (padding 1) and a 2x2 max-pool follows it: 28 -> 14 -> 7 -> 3.
LAYERS = [(1, 28), (HIDDEN, 14), (HIDDEN, 7), (HIDDEN, 3)]


def conv_flops(c_in: int, size: int, n: int = 1) -> int:
    """2 FLOPs per multiply-add of a 3x3 convolution to HIDDEN channels at ``size`` x ``size``."""
    return 2 * n * HIDDEN * size * size * c_in * 9


def conv4_forward_flops(n: int) -> int:
    return sum(conv_flops(c, s, n) for c, s in LAYERS)


def test_one_conv4_forward_matches_the_hand_count() -> None:
    params = initial_params(make_algorithm("protonet"), torch.device("cpu"))
    x = torch.rand(3, 1, 28, 28)
    counted = count_flops(lambda: conv4(params, x))
    assert conv4_forward_flops(1) == 19_630_080  # per image: 1152 * (784 + 64 * (196 + 49 + 9))
    assert counted == {"flops": conv4_forward_flops(3), "flops_by_op": {"convolution": conv4_forward_flops(3)}}


def test_backward_under_torch_func_grad_is_counted() -> None:
    # The weight gradient of every layer and the input gradient of all but the first (the
    # images need none): each costs as much as that layer's forward.
    params = initial_params(make_algorithm("protonet"), torch.device("cpu"))
    x = torch.rand(2, 1, 28, 28)
    grad = torch.func.grad(lambda p: conv4(p, x)[0].sum())
    counted = count_flops(lambda: grad(params))
    backward = 2 * conv4_forward_flops(2) - conv_flops(*LAYERS[0], n=2)
    assert counted["flops_by_op"] == {"convolution": conv4_forward_flops(2), "convolution_backward": backward}


def test_vmap_over_episodes_counts_every_episode() -> None:
    params = initial_params(make_algorithm("protonet"), torch.device("cpu"))
    x = torch.rand(4, 2, 1, 28, 28)
    counted = count_flops(lambda: map_episodes(lambda xe: conv4(params, xe)[0], Execution("vmap", chunk=4), x))
    assert counted["flops"] == conv4_forward_flops(8)


def test_double_backward_of_a_convolution_is_counted() -> None:
    # y = conv(x, w), inner loss |y|^2 / 2, g = dL/dw with create_graph (one weight gradient,
    # F), then the gradient of <g, v> with respect to w. torch runs three convolutions of F
    # for that (seen with torch.profiler): conv(x, v) and conv_transpose(y, v) in
    # convolution_backward's double backward, then the weight gradient of y = conv(x, w).
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    w = torch.rand(8, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    v = torch.rand_like(w)
    f = 2 * 2 * 8 * 8 * 8 * 3 * 9
    y = F.conv2d(x, w, padding=1)
    holder = {}
    inner = count_flops(lambda: holder.setdefault("g", torch.autograd.grad(y.square().sum() / 2, w, create_graph=True)[0]))
    assert inner["flops"] == f
    outer = count_flops(lambda: torch.autograd.grad((holder["g"] * v).sum(), w))
    assert outer["flops_by_op"] == {"convolution": 2 * f, "convolution_backward": f}


def test_second_order_maml_counts_more_than_first_order_and_the_peers_count_the_same() -> None:
    device = torch.device("cpu")
    episodes = random_episodes(1, SPEC, 0, device)
    counts = {}
    for algo_id in ("maml", "fomaml"):
        algo = make_algorithm(algo_id)
        params = initial_params(algo, device, requires_grad=True)
        ours = count_flops(lambda: meta_loss_backward(algo, params, episodes, SPEC.n_way, Execution()))["flops"]
        ref = peer_runner("reference", "plain", algo, initial_params(algo, device))
        counts[algo_id] = count_flops(lambda: ref.loss_backward(episodes))["flops"]
        if peers.available("higher"):
            lib = peer_runner("peer", "higher", algo, initial_params(algo, device))
            assert count_flops(lambda: lib.loss_backward(episodes))["flops"] == counts[algo_id]
        # mrbench's MAML.adapt embeds the support once more with the adapted weights (for the
        # support statistics of bn="support"), also under bn="batch", which does not use them.
        assert counts[algo_id] <= ours <= counts[algo_id] + conv4_forward_flops(SPEC.n_support)
    # The inner step's double backward adds convolutions over the 5 support images.
    assert counts["maml"] - counts["fomaml"] >= 2 * conv4_forward_flops(SPEC.n_support)


def test_the_flop_cache_counts_once_and_is_shared_through_its_file(tmp_path: Path) -> None:
    calls = []
    path = tmp_path / "flops.json"
    cache = FlopCache(path)
    x, w = torch.rand(2, 4), torch.rand(4, 3)
    first = cache.get("cpu/a", lambda: calls.append(1) or x @ w)
    assert first == {"flops": 2 * 2 * 4 * 3, "flops_by_op": {"mm": 48}}
    assert FlopCache(path).get("cpu/a", lambda: calls.append(2)) == first
    assert calls == [1] and json.loads(path.read_text()) == {"cpu/a": first}


def test_an_input_gradient_of_a_module_is_counted() -> None:
    # torch.autograd.grad with respect to a leaf input of an nn.Module, as torchattacks does:
    # FlopCounterMode's module hooks fail there, the counter used here does not.
    conv = torch.nn.Conv2d(1, HIDDEN, 3, padding=1)
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    counted = count_flops(lambda: torch.autograd.grad(conv(x).sum(), x))
    assert counted["flops_by_op"] == {"convolution": conv_flops(1, 28, 2), "convolution_backward": conv_flops(1, 28, 2)}


def test_the_op_profiler_sees_the_same_flops_as_the_counter() -> None:
    from benchmarks.op_profile import OpTimer

    params = initial_params(make_algorithm("protonet"), torch.device("cpu"))
    x = torch.rand(2, 1, 28, 28)
    grad = torch.func.grad(lambda p: conv4(p, x)[0].sum())
    timer = OpTimer()
    with timer:
        grad(params)
    by_op: dict[str, int] = {}
    for (name, _shape), s in timer.ops.items():
        if s.flops:
            by_op[name] = by_op.get(name, 0) + s.flops
    assert by_op == count_flops(lambda: grad(params))["flops_by_op"]
    assert all(s.seconds > 0 for s in timer.ops.values())
