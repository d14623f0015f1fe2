"""ANIL: only the head adapts; the backbone is meta-learned through it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.nn import conv4, linear
from bench.testing import SPEC, init_params, random_episodes
from mrbench_gradient.anil import ANIL
from mrbench_gradient.maml import MAML


def _setup(**options):
    algo = ANIL(**options)
    params = init_params(algo, dtype=torch.float64)
    return algo, params, random_episodes(dtype=torch.float64)[0]


def test_adapts_the_head_only():
    algo, params, ep = _setup()
    state = algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)
    assert set(state["head"]) == {"head.weight", "head.bias"}
    assert not torch.allclose(state["head"]["head.weight"], params["head.weight"])
    # The queries go through the unchanged backbone, normalised with the support statistics.
    z, _ = conv4(params, ep.x_query, state["stats"])
    torch.testing.assert_close(algo.predict(params, state, ep.x_query), linear(state["head"], z))


def test_head_adaptation_lowers_the_support_loss():
    algo, params, ep = _setup(inner_lr=0.05)  # small steps: random images, untrained features
    z, _ = conv4(params, ep.x_support)
    state = algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)
    before = F.cross_entropy(linear(params, z), ep.y_support)
    after = F.cross_entropy(linear(state["head"], z), ep.y_support)
    assert after < before


def test_same_init_and_defaults_as_maml():
    anil, maml = ANIL(), MAML()
    a, m = init_params(anil), init_params(maml)
    assert a.keys() == m.keys() and all(torch.equal(a[k], m[k]) for k in a)
    assert anil.train_defaults(SPEC) == maml.train_defaults(SPEC)


def test_backbone_gets_meta_gradients_and_first_order_drops_the_second_order_term():
    _, params, ep = _setup()
    grads = []
    for algo in (ANIL(), ANIL(inner_steps=2)):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        algo.loss(p, ep, n_way=SPEC.n_way).backward()
        assert p["backbone.conv0.weight"].grad.abs().sum() > 0
        grads.append(p["backbone.conv0.weight"].grad)
    assert not torch.allclose(grads[0], grads[1])
