"""Baseline / Baseline++: pre-training over all meta-train classes, a new head per episode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.nn import conv4
from bench.testing import SPEC, init_params, make_train_context, random_episodes, random_split
from mrbench_finetune.finetune import PRETRAIN, Finetune, FinetuneCosine

ALGOS = [Finetune, FinetuneCosine]


@pytest.mark.parametrize("cls", ALGOS)
def test_training_params_add_a_head_over_all_training_classes(cls):
    algo = cls()
    split = random_split(n_classes=9)
    params = algo.init_for_training(SPEC, torch.Generator().manual_seed(0), split)
    head = {k: v for k, v in params.items() if k.startswith(PRETRAIN)}
    assert head and all(v.shape[0] == 9 for v in head.values())
    assert set(params) - set(head) == set(init_params(algo))


@pytest.mark.parametrize("cls", ALGOS)
def test_pretraining_classifies_images_of_all_training_classes(cls):
    split = random_split(n_classes=9, per_class=5)
    ctx = make_train_context(cls(), split=split, meta_batch=45 * 4)
    loss = cls().train_step(ctx)
    # Initial cross-entropy over the 9 global classes, not over an episode's ways.
    assert loss == pytest.approx(torch.log(torch.tensor(9.0)).item(), rel=0.3)
    grad = ctx.params[PRETRAIN + ("weight" if cls is Finetune else "v")].grad
    assert bool((grad.abs().sum(1) > 0).all()), "every training class gets a gradient"


@pytest.mark.parametrize("cls", ALGOS)
def test_pretraining_lowers_the_training_loss(cls):
    split = random_split(n_classes=5, per_class=4)
    ctx = make_train_context(cls(), split=split, meta_batch=20, lr=1e-2)
    losses = [cls().train_step(ctx) for _ in range(15)]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("cls", ALGOS)
def test_adapt_fits_a_new_head_on_frozen_features(cls):
    algo = cls()
    params = init_params(algo, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]
    state = algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)
    z, stats = conv4(params, ep.x_support)
    fitted = F.cross_entropy(algo._head(state["head"], z), ep.y_support)
    start = F.cross_entropy(algo._head(algo._new_head(z, ep.y_support, SPEC.n_way), z), ep.y_support)
    assert fitted < start
    # Queries: the unchanged backbone with the support statistics, then the new head.
    zq, _ = conv4(params, ep.x_query, stats)
    torch.testing.assert_close(algo.predict(params, state, ep.x_query), algo._head(state["head"], zq))


@pytest.mark.parametrize("cls", ALGOS)
def test_the_pretraining_head_plays_no_part_at_test_time(cls):
    algo = cls()
    trained = algo.init_for_training(SPEC, torch.Generator().manual_seed(0), random_split())
    plain = algo.init(SPEC, torch.Generator().manual_seed(0))
    ep = random_episodes()[0]
    a = algo.predict(trained, algo.adapt(trained, ep.x_support, ep.y_support, n_way=SPEC.n_way), ep.x_query)
    b = algo.predict(plain, algo.adapt(plain, ep.x_support, ep.y_support, n_way=SPEC.n_way), ep.x_query)
    torch.testing.assert_close(a, b)


def test_linear_head_starts_at_zero():
    z = torch.rand(6, 64)
    head = Finetune()._new_head(z, torch.arange(3).repeat_interleave(2), 3)
    assert all(float(v.abs().sum()) == 0 for v in head.values())


def test_cosine_head_scale_follows_the_reference_rule():
    algo = FinetuneCosine()
    assert algo._scale(5) == 2.0 and algo._scale(4112) == 10.0
    assert FinetuneCosine(scale=7.0)._scale(4112) == 7.0
    z = torch.rand(6, 64)
    head = algo._new_head(z, torch.arange(3).repeat_interleave(2), 3)
    scores = algo._head(head, z)
    assert bool((scores.abs() <= 2.0 * head["g"] + 1e-5).all())  # |s * g * cos| <= s * g


def test_defaults():
    for cls in ALGOS:
        algo = cls()
        d = algo.train_defaults(SPEC)
        assert (d.meta_batch, d.lr, d.steps) == (16, 1e-3, 25700)
        o = algo.options
        assert (o.finetune_steps, o.finetune_lr, o.weight_decay) == (100, 0.01, 1e-3)
        assert algo.transductive is False and cls(bn="batch").transductive is True
