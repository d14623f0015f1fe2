"""easyfsl's few-shot classifiers as mrbench algorithms (``easyfsl-<method>``).

The worked example of :mod:`bench.adapters`: each algorithm runs easyfsl's own module
(``process_support_set`` then ``forward``) under ``torch.func.functional_call``, on
mrbench's conv4 backbone. See the distribution's README for what differs from easyfsl.
"""

from __future__ import annotations

from bench.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def mrbench_register_algorithms(register):
    from mrbench_easyfsl.algorithms import ALGORITHMS

    for cls in ALGORITHMS:
        register(cls)
