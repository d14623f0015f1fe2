"""The built-in plugin: the datasets that ship with the harness.

Registered by :func:`bench.plugins.get_plugin_manager` under the name ``builtin``
(distribution ``mrbench``); ``MRBENCH_DISABLE_PLUGINS=builtin`` blocks it like any
other plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.hookspecs import hookimpl

if TYPE_CHECKING:
    from bench.hookspecs import Register


@hookimpl
def mrbench_register_datasets(register: Register) -> None:
    # Imported here so that loading plugins stays cheap and a broken dataset module
    # shows up as this plugin's failure in `mrbench plugins`, not as an ImportError
    # of the whole harness.
    from bench.data.glyphs import ProceduralGlyphs
    from bench.data.mnist import MNIST
    from bench.data.omniglot import Omniglot, OmniglotLakeRuns

    register(Omniglot)
    register(OmniglotLakeRuns)
    register(MNIST)
    register(ProceduralGlyphs)
