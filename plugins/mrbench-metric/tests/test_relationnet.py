"""Relation Networks: learned relation scores in [0, 1], trained with MSE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.components import EpisodeSpec
from bench.testing import SPEC, init_params, random_episodes
from mrbench_metric.relationnet import RelationNet


def _run(algo, params, ep, n_way=SPEC.n_way):
    return algo.predict(params, algo.adapt(params, ep.x_support, ep.y_support, n_way=n_way), ep.x_query)


def test_scores_are_in_the_unit_interval():
    algo = RelationNet()
    params = init_params(algo)
    for e in range(3):
        scores = _run(algo, params, random_episodes()[e])
        assert scores.shape == (SPEC.n_query_total, SPEC.n_way)
        assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0


def test_loss_is_mse_to_one_hot_labels():
    algo = RelationNet()
    params = init_params(algo, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]
    scores = _run(algo, params, ep)
    expected = ((scores - F.one_hot(ep.y_query, SPEC.n_way).to(scores.dtype)) ** 2).mean()
    torch.testing.assert_close(algo.loss(params, ep, n_way=SPEC.n_way), expected)


def test_a_class_is_the_sum_of_its_shots():
    spec = EpisodeSpec(n_way=3, k_shot=3, n_query=2)
    algo = RelationNet()
    params = init_params(algo, spec, dtype=torch.float64)
    ep = random_episodes(spec, dtype=torch.float64)[0]
    state = algo.adapt(params, ep.x_support, ep.y_support, n_way=spec.n_way)
    z, _ = algo._embed(params, ep.x_support)
    torch.testing.assert_close(state["classes"], z.reshape(spec.n_way, spec.k_shot, *z.shape[1:]).sum(1))
    # Shuffling the shots within their classes changes nothing.
    perm = torch.tensor([2, 0, 1, 4, 5, 3, 7, 6, 8])
    shuffled = _run(algo, params, type(ep)(ep.x_support[perm], ep.y_support[perm], ep.x_query, ep.y_query), spec.n_way)
    torch.testing.assert_close(shuffled, _run(algo, params, ep, spec.n_way))


def test_embedding_keeps_a_feature_map_for_the_relation_module():
    algo = RelationNet()
    params = init_params(algo)
    z, stats = algo._embed(params, random_episodes()[0].x_support)
    assert z.shape[1:] == (64, 7, 7) and len(stats) == 4
    assert params["relation.conv0.weight"].shape == (64, 128, 3, 3)
    assert params["relation.fc1.weight"].shape == (8, 64) and params["relation.fc2.weight"].shape == (1, 8)


def test_paper_training_defaults():
    algo = RelationNet()
    d = algo.train_defaults(EpisodeSpec(n_way=5, k_shot=1, n_query=15))
    assert (d.meta_batch, d.lr, d.lr_decay_every, d.lr_decay, d.steps, d.train_query) == (1, 1e-3, 100000, 0.5, 1000000, 19)
    assert algo.train_defaults(EpisodeSpec(n_way=5, k_shot=5, n_query=15)).train_query == 15
