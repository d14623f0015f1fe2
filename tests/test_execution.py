"""The one loop/``vmap`` dispatch: :func:`bench.execution.map_episodes` and its blocks."""

from __future__ import annotations

import torch

import bench.nn
from bench.attacks import Victim
from bench.execution import Execution, episode_blocks, episodes_per_graph, map_episodes, unbind_episodes
from bench.testing import SPEC, PixelCentroid, init_params, random_episodes


def _one(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"sum": x.sum() * y.float().sum(), "rows": x.flatten(1).mean(-1)}


def test_loop_and_vmap_give_the_same_per_episode_outputs():
    x, y = torch.rand(5, 3, 1, 4, 4), torch.arange(15).view(5, 3)
    loop = map_episodes(_one, Execution("loop"), x, y)
    for chunk in (1, 2, 8):
        batched = map_episodes(_one, Execution("vmap", chunk=chunk), x, y)
        for k in loop:
            torch.testing.assert_close(batched[k], loop[k], rtol=1e-6, atol=1e-6)
    assert loop["sum"].shape == (5,) and loop["rows"].shape == (5, 3)


def test_blocks_are_single_episodes_in_the_loop_and_chunks_under_vmap():
    x = torch.rand(5, 2)
    assert [b.shape[0] for b in episode_blocks(lambda v: v.sum(), Execution("loop"), x)] == [1] * 5
    assert [b.shape[0] for b in episode_blocks(lambda v: v.sum(), Execution("vmap", chunk=2), x)] == [2, 2, 1]
    assert episodes_per_graph(Execution("loop"), 5) == 1 and episodes_per_graph(Execution("vmap", chunk=2), 5) == 5


def test_vmap_calls_run_the_hand_written_batch_norm_and_loop_calls_choose_it_by_autograd():
    seen = []

    def probe(v: torch.Tensor) -> torch.Tensor:
        seen.append(bench.nn._bn_mode())
        return v.sum()

    x = torch.rand(3, 2)
    with torch.no_grad():
        map_episodes(probe, Execution("vmap", chunk=3), x)
        map_episodes(probe, Execution("loop"), x)
    assert seen == ["hand", "fused", "fused", "fused"]
    assert bench.nn._bn_mode() == "native"  # nothing leaks out of the vmap call


def test_per_episode_lists_round_trip_through_the_blocks():
    x = torch.rand(4, 3)
    states = unbind_episodes(episode_blocks(lambda v: (v * 2, "tag"), Execution("loop"), x))
    assert [s[1] for s in states] == ["tag"] * 4
    for ex in (Execution("loop"), Execution("vmap", chunk=3)):
        out = map_episodes(lambda s, v: s[0] + v, ex, [(s[0],) for s in states], x)
        torch.testing.assert_close(out, 3 * x)


def test_the_loop_lays_out_episode_images_channels_last_when_the_plan_says_so():
    x = torch.rand(2, 3, 2, 4, 4)
    layouts = []

    def probe(v: torch.Tensor) -> torch.Tensor:
        layouts.append(v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous())
        return v.sum()

    map_episodes(probe, Execution("loop", channels_last=True), x)
    map_episodes(probe, Execution("loop"), x)
    assert layouts == [True, True, False, False]


def test_the_victims_vmap_logits_respect_the_chunk():
    algo = PixelCentroid()
    params = init_params(algo)
    eps = random_episodes(n_episodes=5)
    sizes = []
    predict = algo.predict

    def counting(p, state, xq):
        sizes.append(xq.shape)
        return predict(p, state, xq)

    algo.predict = counting
    loop = Victim(algo, params, SPEC.n_way, Execution("loop")).logits(eps.x_support, eps.y_support, eps.x_query)
    n_loop = len(sizes)
    vmapped = Victim(algo, params, SPEC.n_way, Execution("vmap", chunk=2)).logits(
        eps.x_support, eps.y_support, eps.x_query)
    assert n_loop == 5 and len(sizes) - n_loop == 3  # chunks of 2, 2 and 1 episodes
    torch.testing.assert_close(vmapped, loop)
