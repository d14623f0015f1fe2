"""mrbench-example-plugin: an mrbench plugin with an algorithm and an attack.

mrbench imports this module through the ``mrbench`` entry point in pyproject.toml and
calls the hooks below. Register every component of the distribution here.
"""

from __future__ import annotations

from typing import Callable

from bench import hookimpl

__version__ = "0.1.0"


@hookimpl
def mrbench_register_algorithms(register: Callable[[type], None]) -> None:
    # Import inside the hook: mrbench lists plugins without importing torch models.
    from mrbench_example_plugin.algorithm import CosineCentroid

    register(CosineCentroid)


@hookimpl
def mrbench_register_attacks(register: Callable[[type], None]) -> None:
    from mrbench_example_plugin.attack import MIFGSM

    register(MIFGSM)
