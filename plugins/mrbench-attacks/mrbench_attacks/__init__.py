"""mrbench's first-party attacks (see :mod:`mrbench_attacks.attacks`)."""

from __future__ import annotations

from bench.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def mrbench_register_attacks(register):
    from mrbench_attacks import attacks

    for cls in attacks.ATTACKS:
        register(cls)
