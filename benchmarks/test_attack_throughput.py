"""PGD-20 attacked episodes per second: mrbench's batched attacks vs one episode at a time.

Groups (one per algorithm and target, ``attack-query protonet`` ...):

- ``mrbench`` ``batched``: the ``pgd-linf`` attack plugin (20 steps, eps 16/255,
  random start) as :func:`bench.evaluation.evaluate` runs it: one call over all the
  episodes of a chunk. For the query target that is one ``torchattacks.PGD`` call on
  the adapted learners of every episode wrapped as one ``nn.Module``
  (:class:`bench.attacks.QueryModule`); for the support target mrbench's own batched
  PGD through adaptation.
- ``peer`` ``torchattacks/per-episode`` (query target): the library itself,
  ``torchattacks.PGD`` called once per episode on that episode's adapted learner, as a
  user of torchattacks attacks one episode at a time (``benchmarks/peers.py``).
- ``reference`` ``per-episode`` (support target): no library implements support
  poisoning through adaptation, so the comparison is mrbench's own PGD called episode by
  episode.
- ``ceiling``: 20 forward+backward passes (gradient with respect to the input) of the
  conv4 ``nn.Module`` with BatchNorm in eval mode (a trained supervised model under
  attack) over the images the attack differentiates through (the
  queries; for support poisoning the support images too), plus one forward: the
  convolution work of PGD-20 without any few-shot structure, one episode's images at a
  time (plain and channels-last; on CUDA also all in one batch).

``test_attack_same_computation`` (float64, no random start, not timed) checks that the
batched plugin and the per-episode library calls return the same adversarial queries.
Each call attacks :data:`ATTACK_EPISODES` random 5-way 1-shot 15-query episodes with
the algorithm's seeded initial parameters (throughput does not depend on training).
"""

from __future__ import annotations

import functools
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.attacks import Victim
from bench.components import Episode
from bench.execution import pick_device, plan
from bench.plugins import get_registry
from benchmarks import peers
from benchmarks.test_throughput import (SEED, SPEC, PeerConv4, Workload, ceiling_variants, images_per_episode,
                                        initial_params, random_episodes, sync, time_case)

ATTACK_EPISODES = 10
EPS = 16 / 255
STEPS = 20
GROUPS = [("attack-query", "protonet"), ("attack-query", "maml"),
          ("attack-support", "protonet"), ("attack-support", "maml")]
ALPHA = 2.5 / STEPS
"""Step size as a multiple of eps: the plugin's default (Madry et al.)."""


def _roles(kind: str, device: torch.device) -> list[tuple[str, str]]:
    target = kind.removeprefix("attack-")
    per_episode = SPEC.n_query_total + (SPEC.n_support if target == "support" else 0)
    comparison = ("peer", "torchattacks/per-episode") if target == "query" else ("reference", "per-episode")
    return [("mrbench", "batched"), comparison] + [("ceiling", v) for v in ceiling_variants(device, per_episode)]


def attack_cases(device: torch.device) -> list[tuple[str, str, str, str]]:
    """(kind, algorithm, role, variant) of every case timed on ``device``."""
    return [(kind, algo, r, v) for kind, algo in GROUPS for r, v in _roles(kind, device)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "attack_case" in metafunc.fixturenames:
        cases = attack_cases(pick_device(metafunc.config.getoption("--bench-device")))
        metafunc.parametrize("attack_case", cases, ids=["-".join(c) for c in cases])


def _ceiling(x: Tensor, model: nn.Module, variant: str, device: torch.device) -> Callable[[], None]:
    """PGD-20's convolution work on ``x`` without few-shot structure: per chunk of the
    variant's batch size, 20 input-gradient steps and one forward."""
    spec, _, cl = variant.partition("+")
    size = spec.removeprefix("batch=")
    batch = x.shape[0] if size == "all" else int(size)
    if cl == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(x.shape[0], dtype=torch.long, device=device)

    def ceiling() -> None:
        for a in range(0, x.shape[0], batch):
            xa = x[a : a + batch].clone().requires_grad_(True)
            for _ in range(STEPS):
                loss = F.cross_entropy(model(xa), y[a : a + batch])
                (g,) = torch.autograd.grad(loss, xa)
                xa = (xa.detach() + 1e-3 * g.sign()).requires_grad_(True)
            with torch.no_grad():
                model(xa)
        sync(device)

    return ceiling


def _attack_workload(kind: str, algo_id: str, role: str, variant: str, device: torch.device) -> Workload:
    registry = get_registry()
    algo = registry.create("algorithm", algo_id)  # default options: what a suite evaluates
    params = initial_params(algo, device)
    episodes = random_episodes(ATTACK_EPISODES, SPEC, SEED, device)
    n_images = ATTACK_EPISODES * images_per_episode(SPEC)
    target = kind.removeprefix("attack-")
    info = {"attack": f"pgd-linf steps={STEPS} eps=16/255", "target": target, "algorithm_options": algo.options.model_dump()}

    if role == "ceiling":
        # the images the attack differentiates through: the queries (query target), or
        # support and queries (support poisoning acts through adaptation on every query),
        # episode by episode
        parts = [episodes.x_query] + ([episodes.x_support] if target == "support" else [])
        x = torch.cat(parts, dim=1).flatten(0, 1)
        # A trained supervised model under attack: BatchNorm in eval mode (fixed statistics),
        # as mrbench's learners normalise the queries with the support's fixed statistics
        # (bn="support", folded into the convolutions). Batch statistics (the eval ceiling)
        # would add a BatchNorm forward and backward per layer that the attacked learner does not run.
        model = PeerConv4(SPEC.image_shape[0], track_running_stats=True).to(device).eval().requires_grad_(False)
        fn = _ceiling(x, model, variant, device)
        return Workload(fn, "episode", ATTACK_EPISODES, x.shape[0], info)

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

    def library() -> None:
        peers.torchattacks_pgd_per_episode(victim, episodes, eps=EPS, alpha=ALPHA * EPS, steps=STEPS,
                                           random_start=True, seed=SEED)
        sync(device)

    fn = batched if role == "mrbench" else library if role == "peer" else per_episode
    return Workload(fn, "episode", ATTACK_EPISODES, n_images, info)


@functools.cache
def _same_attack(algo_id: str, device_str: str) -> str | None:
    """The batched plugin and torchattacks once per episode, in float64 without random start
    (PGD is then deterministic): the same adversarial queries, or the difference."""
    device = torch.device(device_str)
    algo = get_registry().create("algorithm", algo_id)
    params = initial_params(algo, device, torch.float64)
    episodes = random_episodes(2, SPEC, SEED + 6, device, torch.float64)
    victim = Victim(algo, params, SPEC.n_way, plan(device))
    steps = 3
    attack = get_registry().create("attack", "pgd-linf", {"steps": steps, "random_start": False})
    ours = attack.perturb(victim, episodes, EPS, "query", torch.Generator().manual_seed(SEED)).x_query
    theirs = peers.torchattacks_pgd_per_episode(victim, episodes, eps=EPS, alpha=2.5 / steps * EPS, steps=steps,
                                                random_start=False, seed=SEED)
    err = float((ours - theirs).abs().max())
    moved = float((ours - episodes.x_query).abs().max())
    if moved == 0.0:
        return "the attack did not move the queries"
    return None if err <= 1e-12 else f"adversarial queries differ by up to {err:.3g} (eps {EPS:.4g})"


@pytest.mark.parametrize("algo_id", sorted({a for k, a in GROUPS if k == "attack-query"}))
def test_attack_same_computation(algo_id: str, bench_cfg) -> None:
    """The batched plugin and torchattacks once per episode compute the same attack (float64; not timed)."""
    peers.require("torchattacks")
    problem = _same_attack(algo_id, str(bench_cfg.device))
    assert problem is None, problem


def test_attack_throughput(benchmark, bench_cfg, flop_cache, attack_case: tuple[str, str, str, str]) -> None:
    kind, algo_id, role, variant = attack_case
    device = bench_cfg.device
    if role == "peer":
        peers.require(peers.library_of(variant))
        problem = _same_attack(algo_id, str(device))
        if problem is not None:
            pytest.fail(f"not timed: the batched attack and torchattacks per episode disagree ({problem})")
    work = _attack_workload(kind, algo_id, role, variant, device)
    time_case(benchmark, bench_cfg, flop_cache, kind=kind, algo=algo_id, role=role, variant=variant, work=work)
