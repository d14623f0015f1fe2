"""Clean evaluation throughput of every registered algorithm: batched vs one episode at a time.

One group per algorithm (``eval-zoo reptile`` ...), all with the algorithm's default
options (what a suite evaluates) and its seeded initial parameters (throughput does
not depend on training). One call produces the query logits of
:data:`ZOO_EPISODES` random 5-way 1-shot 15-query episodes through
:func:`bench.execution.predict_episodes`:

- ``mrbench`` ``loop+channels_last``: one episode at a time with channels-last images,
  the plan evaluation uses on the CPU; ``loop``: the same without channels-last;
  ``vmap/<N>``: every episode of the call batched in one ``torch.func.vmap`` (the plan
  on CUDA, with chunks of 64).
- ``ceiling``: an inference forward of the conv4 ``nn.Module`` over the same images in
  one batch (channels-last). Learners that adapt by gradient steps (MAML: 3, ANIL and
  Meta-SGD: 1 or more, Reptile: 50, fine-tuning: 100 steps of the head) do several
  passes per image, so their fraction of this ceiling is low by construction; the
  number to read for them is the batched-vs-loop ratio.
"""

from __future__ import annotations

import pytest
import torch

from bench.execution import predict_episodes
from bench.plugins import get_registry
from benchmarks.test_throughput import (SEED, SPEC, Case, PeakMemory, Workload, ceiling_workload, eval_plan, execution,
                                        images_per_episode, initial_params, random_episodes, sync)

ZOO_EPISODES = 20
"""Episodes per call (fewer than the two-algorithm eval groups: Reptile adapts with 50 steps)."""
ALGORITHMS = sorted(get_registry().ids("algorithm"))
VARIANTS = (("mrbench", "loop+channels_last"), ("mrbench", "loop"), ("mrbench", f"vmap/{ZOO_EPISODES}"),
            ("ceiling", "batch=all+channels_last"))
CASES = [(algo, role, variant) for algo in ALGORITHMS for role, variant in VARIANTS]


def _workload(algo_id: str, role: str, variant: str, device: torch.device) -> Workload:
    n_images = ZOO_EPISODES * images_per_episode(SPEC)
    if role == "ceiling":
        return ceiling_workload(Case("eval", algo_id, role, variant), n_images, device, episodes=ZOO_EPISODES)
    algo = get_registry().create("algorithm", algo_id)
    params = initial_params(algo, device)
    episodes = random_episodes(ZOO_EPISODES, SPEC, SEED + 5, device)
    ex = execution(variant)

    def predict() -> None:
        predict_episodes(algo, params, episodes, SPEC.n_way, ex)
        sync(device)

    info = {"algorithm_options": algo.options.model_dump(mode="json"), "episodes": ZOO_EPISODES,
            "transductive": bool(algo.transductive), "default_plan": variant == eval_plan(device)}
    return Workload(predict, "episode", ZOO_EPISODES, n_images, info)


@pytest.mark.parametrize("algo_id,role,variant", CASES, ids=["-".join(c) for c in CASES])
def test_zoo_eval_throughput(benchmark, bench_cfg, algo_id: str, role: str, variant: str) -> None:
    device = bench_cfg.device
    work = _workload(algo_id, role, variant, device)
    benchmark.group = f"eval-zoo {algo_id}"
    benchmark.extra_info.update(
        kind="eval-zoo", algorithm=algo_id, role=role, variant=variant, unit=work.unit,
        units_per_call=work.units_per_call, images_per_call=work.images_per_call,
        shape=f"{SPEC.n_way}w{SPEC.k_shot}s{SPEC.n_query}q", image_shape=list(SPEC.image_shape),
        device=str(device), torch_threads=torch.get_num_threads(), **work.info,
    )
    with PeakMemory(device) as mem:
        benchmark.pedantic(work.fn, rounds=bench_cfg.rounds, warmup_rounds=bench_cfg.warmup_rounds, iterations=1)
    benchmark.extra_info.update(mem.info)
