"""pytest options, fixtures and machine info of the throughput benchmarks.

Options (all optional; ``python -m benchmarks.run`` passes them):

- ``--bench-device auto|cpu|cuda``: where models and tensors live (``auto``: CUDA when present).
- ``--bench-quick``: one timed round per case (a smoke run; numbers are indicative only).
- ``--bench-rounds N``: timed rounds per case (default 3; ``--bench-quick`` makes it 1).
- ``--bench-threads N``: ``torch.set_num_threads(N)`` before anything runs.
- ``--bench-reverse``: run the cases in reverse order. ``python -m benchmarks.run --passes N``
  alternates forward and reverse passes, so that a drift of the machine's speed during a
  pass favours no case of a group (each pair of cases runs in both orders).
- ``--bench-flops-cache PATH``: keep each case's FLOP count (``benchmarks/flops.py``) in
  this JSON file, so that the later passes of a multi-pass run reuse the first pass's.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass

import pytest
import torch

from bench.execution import pick_device
from benchmarks.flops import FlopCache

DEFAULT_ROUNDS = 3
"""Timed rounds per case in a full run: a MAML second-order step takes ~5 s on 2 CPU
cores, and the whole run should stay under ~15 minutes there."""


@dataclass(frozen=True)
class BenchConfig:
    """What every benchmark case is run with.

    :param device: where models and tensors live.
    :param rounds: timed rounds per case (each round is one call of the timed function).
    :param warmup_rounds: untimed calls before them (first-call allocations, lazy init).
    :param quick: a smoke run (one round).
    """

    device: torch.device
    rounds: int
    warmup_rounds: int = 1
    quick: bool = False


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mrbench-benchmarks", "mrbench throughput benchmarks")
    group.addoption("--bench-device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="device of the benchmark cases (auto: CUDA when present)")
    group.addoption("--bench-quick", action="store_true", help="one timed round per case (smoke run)")
    group.addoption("--bench-rounds", type=int, default=None, help=f"timed rounds per case (default {DEFAULT_ROUNDS})")
    group.addoption("--bench-threads", type=int, default=None, help="torch.set_num_threads before running")
    group.addoption("--bench-reverse", action="store_true",
                    help="run the cases in reverse order (alternate passes of benchmarks.run --passes)")
    group.addoption("--bench-flops-cache", default=None,
                    help="JSON file of FLOP counts by case, shared by the passes of one run")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--bench-reverse"):
        items.reverse()


_LOAD_AT_START: list[float] | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _LOAD_AT_START
    _LOAD_AT_START = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    threads = config.getoption("--bench-threads")
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--bench-threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if config.getoption("--bench-device") == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda: torch sees no CUDA device here")
    rounds = config.getoption("--bench-rounds")
    if rounds is not None and rounds < 1:
        raise pytest.UsageError(f"--bench-rounds must be >= 1, got {rounds}")


def bench_config(config: pytest.Config) -> BenchConfig:
    """The :class:`BenchConfig` the command-line options describe."""
    quick = bool(config.getoption("--bench-quick"))
    rounds = config.getoption("--bench-rounds") or (1 if quick else DEFAULT_ROUNDS)
    return BenchConfig(device=pick_device(config.getoption("--bench-device")), rounds=rounds, quick=quick)


@pytest.fixture(scope="session")
def bench_cfg(pytestconfig: pytest.Config) -> BenchConfig:
    return bench_config(pytestconfig)


@pytest.fixture(scope="session")
def flop_cache(pytestconfig: pytest.Config) -> FlopCache:
    return FlopCache(pytestconfig.getoption("--bench-flops-cache"))


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Record what the rates depend on next to pytest-benchmark's own machine info."""
    cfg = bench_config(config)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    info = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "device": str(cfg.device),
        "device_name": torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda"
        else (platform.processor() or platform.machine()),
        "cuda_version": torch.version.cuda if cfg.device.type == "cuda" else None,
        "python": sys.version.split()[0],
        "rounds": cfg.rounds,
        "warmup_rounds": cfg.warmup_rounds,
        "quick": cfg.quick,
        "order": "reverse" if config.getoption("--bench-reverse") else "forward",
        # 1/5/15-minute load averages when the run started and when it ended: other
        # processes competing for the cores make every rate here lower.
        "load_average_start": _LOAD_AT_START,
        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    machine_info["mrbench"] = info
