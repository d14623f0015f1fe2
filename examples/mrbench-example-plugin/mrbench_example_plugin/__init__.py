"""mrbench-example-plugin: an mrbench algorithm plugin.

mrbench imports this module through the ``mrbench`` entry point in pyproject.toml and
calls the hook below. Register every algorithm of the distribution here.
"""

from __future__ import annotations

from bench.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def mrbench_register_algorithms(register):
    # Import inside the hook: mrbench lists plugins without importing torch models.
    from mrbench_example_plugin.algorithm import CosineCentroid

    register(CosineCentroid)
