"""mrbench: a plugin-based robustness benchmark suite for few-shot meta-learning.

The public API: :func:`train` meta-trains an algorithm on a suite and writes a
checkpoint; :func:`evaluate` scores a checkpoint on a suite's fixed episodes and
returns the result entry; :func:`results_frame` turns result entries into a pandas
DataFrame. The ``mrbench`` CLI is a thin layer over these.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def train(*args: Any, **kwargs: Any):
    """See :func:`bench.training.train`."""
    from bench.training import train as _train

    return _train(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any):
    """See :func:`bench.evaluation.evaluate`."""
    from bench.evaluation import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def results_frame(entries: Any):
    """See :func:`bench.results.results_frame`."""
    from bench.results import results_frame as _frame

    return _frame(entries)


def load_model(ref: Any):
    """A published model from the checkpoint zoo. See :func:`bench.zoo.load_model`."""
    from bench.zoo import load_model as _load

    return _load(ref)
