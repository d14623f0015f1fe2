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
- ``ceiling``: an inference forward of the conv4 ``nn.Module`` over the same images,
  channels-last, one episode's images at a time (on CUDA: in one batch). Learners that adapt by gradient steps (MAML: 3, ANIL and
  Meta-SGD: 1 or more, Reptile: 50, fine-tuning: 100 steps of the head) do several
  passes per image; the report compares GFLOP/s, which counts those passes
  (``benchmarks/flops.py``), and the batched-vs-loop ratio.
"""

from __future__ import annotations

import pytest
import torch

from bench.execution import pick_device, predict_episodes
from bench.plugins import get_registry
from benchmarks.test_throughput import (SEED, SPEC, Case, Workload, ceiling_variants, ceiling_workload, eval_plan,
                                        execution, images_per_episode, initial_params, random_episodes, sync, time_case)

ZOO_EPISODES = 20
"""Episodes per call (fewer than the two-algorithm eval groups: Reptile adapts with 50 steps)."""
ALGORITHMS = sorted(get_registry().ids("algorithm"))
MRBENCH_VARIANTS = ("loop+channels_last", "loop", f"vmap/{ZOO_EPISODES}")


def zoo_cases(device: torch.device) -> list[tuple[str, str, str]]:
    """(algorithm, role, variant) of every case timed on ``device``: the mrbench variants and
    the fastest ceiling variant measured on that device (channels-last; per episode on the CPU)."""
    ceiling = [v for v in ceiling_variants(device, images_per_episode(SPEC)) if v.endswith("+channels_last")][0]
    return [(algo, role, v) for algo in ALGORITHMS
            for role, v in [("mrbench", m) for m in MRBENCH_VARIANTS] + [("ceiling", ceiling)]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "zoo_case" in metafunc.fixturenames:
        cases = zoo_cases(pick_device(metafunc.config.getoption("--bench-device")))
        metafunc.parametrize("zoo_case", cases, ids=["-".join(c) for c in cases])


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


def test_zoo_eval_throughput(benchmark, bench_cfg, flop_cache, zoo_case: tuple[str, str, str]) -> None:
    algo_id, role, variant = zoo_case
    work = _workload(algo_id, role, variant, bench_cfg.device)
    time_case(benchmark, bench_cfg, flop_cache, kind="eval-zoo", algo=algo_id, role=role, variant=variant, work=work)
