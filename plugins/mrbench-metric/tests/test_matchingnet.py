"""Matching Networks: attention-weighted support labels, optional full-context embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.components import EpisodeSpec
from bench.nn import conv4
from bench.testing import ALGORITHM_CHECKS, SPEC, init_params, random_episodes
from mrbench_metric.matchingnet import MatchingNet


def _logits(algo, params, ep, n_way=SPEC.n_way):
    return algo.predict(params, algo.adapt(params, ep.x_support, ep.y_support, n_way=n_way), ep.x_query)


def test_logits_are_log_of_attention_weighted_labels():
    algo = MatchingNet()
    params = init_params(algo, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]
    logits = _logits(algo, params, ep)
    zs, stats = conv4(params, ep.x_support)
    zq, _ = conv4(params, ep.x_query, stats)
    attention = torch.softmax(F.normalize(zq, dim=-1) @ F.normalize(zs, dim=-1).t(), dim=-1)
    expected = attention @ F.one_hot(ep.y_support, SPEC.n_way).to(attention.dtype)
    torch.testing.assert_close(logits.exp(), expected)
    torch.testing.assert_close(logits.exp().sum(-1), torch.ones(len(logits), dtype=logits.dtype))


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_scale_is_the_attention_softmax_temperature(scale):
    algo = MatchingNet(scale=scale)
    params = init_params(algo, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]
    zs, stats = conv4(params, ep.x_support)
    zq, _ = conv4(params, ep.x_query, stats)
    attention = torch.softmax(scale * F.normalize(zq, dim=-1) @ F.normalize(zs, dim=-1).t(), dim=-1)
    expected = attention @ F.one_hot(ep.y_support, SPEC.n_way).to(attention.dtype)
    torch.testing.assert_close(_logits(algo, params, ep).exp(), expected)


def test_scale_1_has_the_papers_loss_floor():
    # Non-negative (post-ReLU) embeddings: cosines in [0, 1], so even a perfect 5-way 1-shot
    # embedding (own class 1, others 0) cannot push the loss below -log(e / (e + 4)).
    algo = MatchingNet()
    assert all(v >= 0 for v in conv4(init_params(algo), random_episodes()[0].x_support)[0].flatten().tolist())
    floor = -torch.log(torch.tensor(torch.e / (torch.e + 4)))
    assert 0.90 < float(floor) < 0.91


def test_scale_must_be_positive():
    with pytest.raises(ValueError, match="scale"):
        MatchingNet(scale=0)


def test_one_shot_prediction_is_the_most_similar_support_image():
    spec = EpisodeSpec(n_way=4, k_shot=1, n_query=3)
    algo = MatchingNet()
    params = init_params(algo, spec, dtype=torch.float64)
    ep = random_episodes(spec, dtype=torch.float64)[0]
    zs, stats = conv4(params, ep.x_support)
    zq, _ = conv4(params, ep.x_query, stats)
    nearest = ep.y_support[(F.normalize(zq, dim=-1) @ F.normalize(zs, dim=-1).t()).argmax(-1)]
    assert torch.equal(_logits(algo, params, ep, spec.n_way).argmax(-1), nearest)


@pytest.mark.parametrize("check", ALGORITHM_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_full_context_embeddings_pass_the_contract(check):
    check(MatchingNet(fce=True, fce_steps=2))


def test_full_context_embeddings_depend_on_the_whole_support_set():
    algo = MatchingNet(fce=True, fce_steps=2)
    params = init_params(algo, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]
    a = algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)["support"]
    xs = ep.x_support.clone()
    xs[-1] = torch.rand_like(xs[-1])
    b = algo.adapt(params, xs, ep.y_support, n_way=SPEC.n_way)["support"]
    # Changing the last support image changes the first one's embedding (through the LSTM).
    assert not torch.allclose(a[0], b[0])
    assert {k for k in params if k.startswith("fce.")} == {f"fce.{d}.{t}" for d in ("fwd", "bwd", "att")
                                                          for t in ("w_ih", "w_hh", "bias")}
