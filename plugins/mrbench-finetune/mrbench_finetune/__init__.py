"""mrbench's first-party fine-tuning baselines."""

from __future__ import annotations

from bench.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def mrbench_register_algorithms(register):
    from mrbench_finetune.finetune import Finetune, FinetuneCosine

    register(Finetune)
    register(FinetuneCosine)
