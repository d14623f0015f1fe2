"""mrbench: a plugin-based robustness benchmark suite for few-shot meta-learning.

The public API: :func:`train` meta-trains an algorithm on a suite and writes a
checkpoint; :func:`evaluate` scores a checkpoint on a suite's fixed episodes and
returns the result entry; :func:`results_frame` turns result entries into a pandas
DataFrame; :func:`load_model` loads a published model from the checkpoint zoo. The ``mrbench`` CLI is a thin layer over these.

The plugin surface: :data:`hookimpl` marks a plugin's hook implementations, and the
component bases (:class:`Algorithm`, :class:`Attack`, :class:`Shift`,
:class:`Dataset`, with :class:`Options`, :class:`Episode`, :class:`EpisodeSpec`,
:class:`ImageSplit`, :class:`TrainDefaults`, :data:`Params`) are what plugins derive
from; ``docs/plugin-utilities.md`` lists everything else a plugin may import.

Every name is imported on first use, so ``import bench`` (and the CLI's start) does
not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from bench.components import (
        Algorithm, Attack, Dataset, Episode, EpisodeSpec, ImageSplit, Options, Params, Shift, TrainDefaults,
    )
    from bench.errors import MrbenchError
    from bench.evaluation import evaluate
    from bench.hookspecs import hookimpl
    from bench.results.frame import results_frame
    from bench.training import train
    from bench.zoo import load_model

_LAZY = {
    "train": "bench.training",
    "evaluate": "bench.evaluation",
    "results_frame": "bench.results.frame",
    "load_model": "bench.zoo",
    "hookimpl": "bench.hookspecs",
    "MrbenchError": "bench.errors",
    **{name: "bench.components" for name in ("Algorithm", "Attack", "Dataset", "Episode", "EpisodeSpec", "ImageSplit",
                                             "Options", "Params", "Shift", "TrainDefaults")},
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
