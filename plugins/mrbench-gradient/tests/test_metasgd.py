"""Meta-SGD: per-parameter inner learning rates that are meta-learned, never adapted."""

from __future__ import annotations

import pytest
import torch

from bench.errors import OptionsError
from bench.testing import SPEC, init_params, random_episodes
from mrbench_gradient.maml import MAML
from mrbench_gradient.metasgd import LR_PREFIX, MetaSGD


def test_one_learning_rate_per_parameter_element_in_the_paper_range():
    params = init_params(MetaSGD())
    net = {k: v for k, v in params.items() if not k.startswith(LR_PREFIX)}
    assert net.keys() == init_params(MAML()).keys()
    for k, v in net.items():
        lr = params[LR_PREFIX + k]
        assert lr.shape == v.shape
        assert 0.005 <= float(lr.min()) and float(lr.max()) <= 0.1
    assert params[LR_PREFIX + "head.weight"].unique().numel() > 1  # random, not constant


def test_learning_rates_receive_meta_gradients_and_are_not_adapted():
    algo = MetaSGD()
    params = {k: v.requires_grad_(True) for k, v in init_params(algo, dtype=torch.float64).items()}
    ep = random_episodes(dtype=torch.float64)[0]
    state = algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way, train=True)
    assert not any(k.startswith(LR_PREFIX) for k in state["params"]), "the inner loop must not adapt the lrs"
    algo.loss(params, ep, n_way=SPEC.n_way).backward()
    for k, v in params.items():
        if k.startswith(LR_PREFIX + "head.") or k.startswith(LR_PREFIX + "backbone.conv0.weight"):
            assert v.grad is not None and v.grad.abs().sum() > 0, f"{k} gets no meta-gradient"
    # The outer optimizer owns them like any other meta-parameter.
    assert any(p is params[LR_PREFIX + "head.weight"] for g in algo.param_groups(params) for p in g["params"])


def test_constant_learning_rates_reduce_to_one_step_maml():
    ep = random_episodes(dtype=torch.float64)[0]
    msgd, maml = MetaSGD(inner_lr_init=(0.4, 0.4)), MAML(inner_steps_test=1)
    p_msgd, p_maml = init_params(msgd, dtype=torch.float64), init_params(maml, dtype=torch.float64)
    a = msgd.predict(p_msgd, msgd.adapt(p_msgd, ep.x_support, ep.y_support, n_way=SPEC.n_way), ep.x_query)
    b = maml.predict(p_maml, maml.adapt(p_maml, ep.x_support, ep.y_support, n_way=SPEC.n_way), ep.x_query)
    torch.testing.assert_close(a, b)


def test_rejects_an_inverted_range():
    with pytest.raises(OptionsError, match="inner_lr_init"):
        MetaSGD(inner_lr_init=(0.1, 0.005))
