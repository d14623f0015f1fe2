"""The mrbench plugin API: the hooks a plugin implements.

A plugin is a module (or any object) with functions marked ``@hookimpl`` whose
names are hook names from this file. A distribution makes it discoverable through
the ``mrbench`` entry-point group::

    # pyproject.toml of the distribution "mrbench-my-algo"
    [project.entry-points.mrbench]
    my_algo = "mrbench_my_algo"

    # mrbench_my_algo.py
    from bench.components import Algorithm
    from bench.hookspecs import hookimpl

    class MyAlgo(Algorithm):
        id = "my-algo"
        ...

    @hookimpl
    def mrbench_register_algorithms(register):
        register(MyAlgo)

Every hook receives a ``register`` callback and returns nothing. A plugin registers
*classes*, not instances: the harness instantiates them with strict options and
records which plugin, distribution and version provided each class
(``cls.provenance``, see :class:`bench.components.Provenance`); that provenance goes
into every result entry.

Rules the harness enforces, each failing with :class:`bench.errors.PluginError`
naming the plugin:

- a hook name that is not defined here (e.g. ``mrbench_register_algorithm``) is an
  error when the plugins are loaded, not a silently ignored function;
- a class must derive from :class:`bench.components.Component`, define a kebab-case
  ``id`` and be registered through the hook of its ``kind``;
- ids are unique within a kind across *all* installed plugins; a clash names both
  providers and is never resolved by renaming or overriding.

Exceptions other than these raised inside a hook (e.g. an optional dependency that
is not installed) mark the whole plugin as failed: none of its components are
registered, a warning names it, and ``mrbench plugins`` shows the error; the other
plugins still load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:
    from bench.components import Component

hookspec = pluggy.HookspecMarker("mrbench")
hookimpl = pluggy.HookimplMarker("mrbench")


class Register(Protocol):
    """The callback every ``mrbench_register_*`` hook receives.

    Call it once per component class. It validates the class immediately, so an
    invalid registration fails at the plugin's own line.

    :param cls: a subclass of :class:`bench.components.Component` whose ``kind``
        matches the hook (``"algorithm"`` for :func:`mrbench_register_algorithms`,
        and so on), with a kebab-case ``id``.
    :raises bench.errors.PluginError: ``cls`` is not a component class, lacks an
        ``id``, has the kind of another hook, or its id is already registered.
    """

    def __call__(self, cls: type[Component], /) -> None: ...


@hookspec
def mrbench_register_algorithms(register: Register) -> None:
    """Register meta-learning algorithms.

    Called once per plugin when a :class:`bench.plugins.Registry` is built.

    :param register: call ``register(cls)`` for each
        :class:`bench.components.Algorithm` subclass this plugin provides (its
        ``kind`` is ``"algorithm"``). Related variants are separate classes with
        their own ids (``maml``, ``fomaml``), typically sharing one distribution.

    Example::

        @hookimpl
        def mrbench_register_algorithms(register):
            register(MAML)
            register(FOMAML)
    """


@hookspec
def mrbench_register_attacks(register: Register) -> None:
    """Register adversarial attacks.

    Called once per plugin when a :class:`bench.plugins.Registry` is built.

    :param register: call ``register(cls)`` for each attack class this plugin
        provides (``kind == "attack"``). An attack declares its ``norm``
        (``linf``/``l2``) and the ``targets`` it supports (``query``, ``support``,
        ``both``); ids carry the variant, e.g. ``pgd-linf``.

    Example::

        @hookimpl
        def mrbench_register_attacks(register):
            register(PGDLinf)
    """


@hookspec
def mrbench_register_shifts(register: Register) -> None:
    """Register distribution shifts (corruptions, label noise, cross-domain, ...).

    Called once per plugin when a :class:`bench.plugins.Registry` is built.

    :param register: call ``register(cls)`` for each shift class this plugin
        provides (``kind == "shift"``). A shift is seeded and deterministic and
        declares its ``severities`` (1..5).

    Example::

        @hookimpl
        def mrbench_register_shifts(register):
            register(GaussianNoise)
    """


@hookspec
def mrbench_register_datasets(register: Register) -> None:
    """Register class-split image datasets.

    Called once per plugin when a :class:`bench.plugins.Registry` is built.

    :param register: call ``register(cls)`` for each
        :class:`bench.components.Dataset` subclass this plugin provides
        (``kind == "dataset"``). Registration must stay cheap: do not read or
        decode archives here, only in :meth:`bench.components.Dataset.load`.

    Example::

        @hookimpl
        def mrbench_register_datasets(register):
            register(MyDataset)
    """
