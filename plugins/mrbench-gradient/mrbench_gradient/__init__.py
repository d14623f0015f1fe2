"""mrbench's first-party gradient-based meta-learners."""

from __future__ import annotations

from bench.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def mrbench_register_algorithms(register):
    from mrbench_gradient.anil import ANIL
    from mrbench_gradient.maml import FOMAML, MAML
    from mrbench_gradient.metasgd import MetaSGD
    from mrbench_gradient.reptile import Reptile

    register(MAML)
    register(FOMAML)
    register(ANIL)
    register(MetaSGD)
    register(Reptile)
