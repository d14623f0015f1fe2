"""mrbench's first-party gradient-based meta-learners."""

from __future__ import annotations

from bench.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def mrbench_register_algorithms(register):
    from mrbench_gradient.maml import FOMAML, MAML

    register(MAML)
    register(FOMAML)
