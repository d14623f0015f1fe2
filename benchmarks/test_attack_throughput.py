"""PGD-20 attacked episodes per second: mrbench's batched attacks vs one episode at a time.

Groups (one per algorithm and target, ``attack-query protonet`` ...):

- ``mrbench`` ``batched``: the ``pgd-linf`` attack plugin (20 steps, eps 16/255,
  random start) as :func:`bench.evaluation.evaluate` runs it: one call over all the
  episodes of a chunk. For the query target that is one ``torchattacks.PGD`` call on
  the adapted learners of every episode wrapped as one ``nn.Module``
  (:class:`bench.attacks.QueryModule`); for the support target mrbench's own batched
  PGD through adaptation.
- ``peer`` ``per-episode``: the same attack called once per episode. For the query
  target this is what a user of torchattacks writes (one adapted model, one
  ``torchattacks.PGD`` call per episode); for support poisoning, which no library
  implements, the peer is mrbench's own PGD called episode by episode.
- ``ceiling``: 20 forward+backward passes (gradient with respect to the input) of the
  same conv4 ``nn.Module`` in one batch over the images the attack differentiates
  through (the queries; for support poisoning the support images too), plus one
  forward: the convolution work of PGD-20 without any few-shot structure.

Each call attacks :data:`ATTACK_EPISODES` random 5-way 1-shot 15-query episodes with
the algorithm's seeded initial parameters (throughput does not depend on training).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.attacks import Victim
from bench.components import Episode
from bench.execution import plan
from bench.plugins import get_registry
from benchmarks.test_throughput import (SEED, SPEC, PeakMemory, Workload, images_per_episode, initial_params,
                                        peer_model, random_episodes, sync)

ATTACK_EPISODES = 10
EPS = 16 / 255
STEPS = 20
GROUPS = [("attack-query", "protonet"), ("attack-query", "maml"),
          ("attack-support", "protonet"), ("attack-support", "maml")]
CASES = [(kind, algo, role, variant) for kind, algo in GROUPS
         for role, variant in (("mrbench", "batched"), ("peer", "per-episode"), ("ceiling", "batch=all"))]


def _attack_workload(kind: str, algo_id: str, role: str, device: torch.device) -> Workload:
    registry = get_registry()
    algo = registry.create("algorithm", algo_id)  # default options: what a suite evaluates
    params = initial_params(algo, device)
    episodes = random_episodes(ATTACK_EPISODES, SPEC, SEED, device)
    n_images = ATTACK_EPISODES * images_per_episode(SPEC)
    target = kind.removeprefix("attack-")
    info = {"attack": f"pgd-linf steps={STEPS} eps=16/255", "target": target, "algorithm_options": algo.options.model_dump()}

    if role == "ceiling":
        model = peer_model(params).requires_grad_(False)
        # the images the attack differentiates through: the queries (query target), or
        # support and queries (support poisoning acts through adaptation on every query)
        parts = [episodes.x_query.flatten(0, 1)] + ([episodes.x_support.flatten(0, 1)] if target == "support" else [])
        x = torch.cat(parts)
        n_images = x.shape[0]
        y = torch.zeros(x.shape[0], dtype=torch.long, device=device)

        def ceiling() -> None:
            xa = x.clone().requires_grad_(True)
            for _ in range(STEPS):
                loss = F.cross_entropy(model(xa), y)
                (g,) = torch.autograd.grad(loss, xa)
                xa = (xa.detach() + 1e-3 * g.sign()).requires_grad_(True)
            with torch.no_grad():
                model(xa)
            sync(device)

        return Workload(ceiling, "episode", ATTACK_EPISODES, n_images, info)

    attack = registry.create("attack", "pgd-linf", {"steps": STEPS})
    victim = Victim(algo, params, SPEC.n_way, plan(device))

    def batched() -> None:
        attack.perturb(victim, episodes, EPS, target, torch.Generator().manual_seed(SEED))
        sync(device)

    def per_episode() -> None:
        g = torch.Generator().manual_seed(SEED)
        for e in range(ATTACK_EPISODES):
            attack.perturb(victim, Episode(*(t[e : e + 1] for t in episodes.tensors())), EPS, target, g)
        sync(device)

    return Workload(batched if role == "mrbench" else per_episode, "episode", ATTACK_EPISODES, n_images, info)


@pytest.mark.parametrize("kind,algo_id,role,variant", CASES, ids=["-".join(c) for c in CASES])
def test_attack_throughput(benchmark, bench_cfg, kind: str, algo_id: str, role: str, variant: str) -> None:
    device = bench_cfg.device
    work = _attack_workload(kind, algo_id, role, device)
    benchmark.group = f"{kind} {algo_id}"
    benchmark.extra_info.update(
        kind=kind, algorithm=algo_id, role=role, variant=variant, unit=work.unit, units_per_call=work.units_per_call,
        images_per_call=work.images_per_call, shape=f"{SPEC.n_way}w{SPEC.k_shot}s{SPEC.n_query}q",
        image_shape=list(SPEC.image_shape), device=str(device), torch_threads=torch.get_num_threads(), **work.info,
    )
    with PeakMemory(device) as mem:
        benchmark.pedantic(work.fn, rounds=bench_cfg.rounds, warmup_rounds=bench_cfg.warmup_rounds, iterations=1)
    benchmark.extra_info.update(mem.info)
