"""Plugin loading and the component registry.

``get_plugin_manager()`` builds a fresh pluggy manager (specs, blocked names, entry
points, built-ins, ``check_pending``, optional tracing); :class:`Registry` asks every
plugin, through pluggy, for its component classes. Nothing here runs at import time.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

import bench
from bench import hookspecs
from bench.components import Component, Provenance
from bench.errors import PluginError, UnknownComponentError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rich.console import Console

    from bench.hookspecs import Register

ENTRY_POINT_GROUP = "mrbench"
BUILTIN = "builtin"

#: Component kind -> the hook that registers it.
HOOKS: dict[str, str] = {
    "algorithm": "mrbench_register_algorithms",
    "attack": "mrbench_register_attacks",
    "shift": "mrbench_register_shifts",
    "dataset": "mrbench_register_datasets",
}
KINDS: tuple[str, ...] = tuple(HOOKS)

_KEBAB = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


class PluginLoadWarning(UserWarning):
    """A plugin failed to import or to register; it is skipped, the rest load."""


@dataclass(frozen=True)
class PluginSource:
    """Which distribution provides a plugin.

    :param name: the plugin name (entry-point name, or ``builtin``).
    :param distribution: the distribution's name as its metadata spells it.
    :param version: the distribution's version, ``"unknown"`` when not installed.
    """

    name: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"plugin {self.name!r} (distribution {self.distribution} {self.version})"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that was skipped because its code raised.

    :param plugin: the plugin name.
    :param distribution: the providing distribution.
    :param version: the distribution's version.
    :param error: ``"ExceptionType: message"``.
    :param hook: the hook that raised, or ``None`` when importing the plugin failed.
    :param traceback: the formatted traceback, for ``--verbose`` style output.
    """

    plugin: str
    distribution: str
    version: str
    error: str
    hook: str | None = None
    traceback: str = field(default="", repr=False)


class PluginManager(pluggy.PluginManager):
    """A pluggy manager for project ``mrbench`` that remembers where plugins came from.

    :ivar sources: plugin name -> :class:`PluginSource`, for every plugin seen:
        loaded, blocked or failed.
    :ivar failures: plugins whose import failed, in discovery order.
    """

    def __init__(self) -> None:
        super().__init__("mrbench")
        self.sources: dict[str, PluginSource] = {}
        self.failures: list[PluginFailure] = []

    def source_of(self, name: str) -> PluginSource:
        """Where plugin ``name`` comes from; a plugin registered by hand (tests,
        notebooks) has no distribution: its own name and version ``"unknown"``."""
        return self.sources.get(name) or PluginSource(name, name, "unknown")


def _source_of(pm: pluggy.PluginManager, name: str) -> PluginSource:
    # Registry and check_hooks also accept a plain pluggy manager.
    return pm.source_of(name) if isinstance(pm, PluginManager) else PluginSource(name, name, "unknown")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def get_plugin_manager() -> PluginManager:
    """A new plugin manager with every enabled plugin loaded and checked.

    Environment: ``MRBENCH_DISABLE_PLUGINS=a,b`` blocks plugins by name (``builtin``
    included); ``MRBENCH_DISABLE_PLUGIN_AUTOLOAD`` (non-empty, not ``0``) skips the
    ``mrbench`` entry points; ``MRBENCH_TRACE_PLUGINS`` traces hook calls to stderr.

    :raises bench.errors.PluginError: a plugin implements a hook that does not
        exist, or two distributions use the same plugin name.
    """
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)

    for name in os.environ.get("MRBENCH_DISABLE_PLUGINS", "").split(","):
        if name.strip():
            pm.set_blocked(name.strip())

    if not _env_flag("MRBENCH_DISABLE_PLUGIN_AUTOLOAD"):
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            source = PluginSource(
                ep.name,
                ep.dist.name if ep.dist else ep.value,
                ep.dist.version if ep.dist else "unknown",
            )
            if pm.is_blocked(ep.name):
                pm.sources.setdefault(ep.name, source)
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                # One broken install must not take the whole benchmark down.
                _record_failure(pm.failures, source, exc, hook=None)
                pm.sources.setdefault(ep.name, source)
                continue
            _register(pm, plugin, source)

    from bench import builtin

    _register(pm, builtin, PluginSource(BUILTIN, "mrbench", bench.__version__))
    check_hooks(pm)

    if _env_flag("MRBENCH_TRACE_PLUGINS"):
        pm.trace.root.setwriter(_write_stderr)
        pm.enable_tracing()
    return pm


def _write_stderr(message: str) -> None:
    # Looked up per call so that a replaced sys.stderr (pytest's capsys) sees it.
    sys.stderr.write(message)


def _register(pm: PluginManager, plugin: object, source: PluginSource) -> None:
    if pm.is_blocked(source.name):
        pm.sources.setdefault(source.name, source)
        return
    if source.name in pm.sources:
        other = pm.sources[source.name]
        raise PluginError(
            f"Two plugins are named {source.name!r}: {other} and {source}.",
            "Plugin names must be unique; uninstall one of the distributions.",
        )
    # pluggy ignores functions without the marker, so a forgotten @hookimpl would
    # register nothing, silently.
    for attr in dir(plugin):
        if not attr.startswith("mrbench_"):
            continue
        value = getattr(plugin, attr, None)
        if callable(value) and not hasattr(value, "mrbench_impl"):
            raise PluginError(
                f"{source} defines {attr}() without @hookimpl, so it would never be called.",
                "Decorate it with `@hookimpl` from `bench.hookspecs`.",
            )
    try:
        pm.register(plugin, name=source.name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(f"{source} cannot be registered: {exc}") from exc
    pm.sources[source.name] = source


def check_hooks(pm: pluggy.PluginManager) -> None:
    """``pm.check_pending()``, with pluggy's error turned into a :class:`PluginError`.

    :raises bench.errors.PluginError: a plugin implements a hook that is not in
        :mod:`bench.hookspecs` (usually a typo), naming the plugin and the hook.
    """
    import difflib

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        source = _source_of(pm, name)
        unknown = sorted(
            hook_name
            for hook_name, caller in vars(pm.hook).items()
            if not hook_name.startswith("_")
            and not caller.has_spec()
            and any(impl.plugin is exc.plugin and not impl.optionalhook for impl in caller.get_hookimpls())
        )
        guesses = [difflib.get_close_matches(h, list(HOOKS.values()), n=1) for h in unknown]
        hint = "; ".join(f"did you mean {g[0]!r} instead of {h!r}?" for h, g in zip(unknown, guesses) if g)
        raise PluginError(
            f"{source} implements unknown hook(s) {', '.join(map(repr, unknown))}.",
            f"{hint.capitalize() + ' ' if hint else ''}The hooks are: {', '.join(HOOKS.values())}.",
        ) from exc


def _record_failure(
    failures: list[PluginFailure], source: PluginSource, exc: Exception, hook: str | None
) -> None:
    failure = PluginFailure(
        source.name,
        source.distribution,
        source.version,
        f"{type(exc).__name__}: {exc}",
        hook,
        "".join(traceback.format_exception(exc)),
    )
    failures.append(failure)
    where = f"in {hook}" if hook else "on import"
    warnings.warn(
        f"Skipping {source}: it raised {where}: {failure.error}. "
        f"Block it with MRBENCH_DISABLE_PLUGINS={source.name} to silence this.",
        PluginLoadWarning,
        stacklevel=3,
    )


class Registry:
    """Component classes by kind and id, collected from a plugin manager.

    Each plugin's register hooks are called through pluggy, one plugin at a time,
    so every class is tied to the plugin that registered it; the class gets
    ``cls.provenance``. A plugin whose hook raises is skipped as a whole (recorded
    in :attr:`failures`, with a :class:`PluginLoadWarning`).

    :param pm: a manager from :func:`get_plugin_manager` (or any pluggy manager
        with the :mod:`bench.hookspecs` specs added).
    :raises bench.errors.PluginError: a plugin registered an invalid class, through
        the wrong hook, or an id that another plugin already registered.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._classes: dict[str, dict[str, type[Component]]] = {kind: {} for kind in KINDS}
        self._providers: dict[tuple[str, str], PluginSource] = {}
        self._by_plugin: dict[str, dict[str, list[str]]] = {}
        self.failures: list[PluginFailure] = list(pm.failures) if isinstance(pm, PluginManager) else []

        check_hooks(pm)
        plugins = [(name, plugin) for name, plugin in pm.list_name_plugin() if plugin is not None]
        for name, plugin in plugins:
            others = [p for _, p in plugins if p is not plugin]
            self._collect(_source_of(pm, name), plugin, others)

    def _collect(self, source: PluginSource, plugin: object, others: list[object]) -> None:
        # Staged, and committed only when all of the plugin's hooks succeed: a plugin
        # is either fully available or not at all.
        staged: dict[tuple[str, str], type[Component]] = {}
        for kind, hook_name in HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            if not any(impl.plugin is plugin for impl in caller.get_hookimpls()):
                continue
            errors: list[PluginError] = []
            register = self._register_callback(kind, hook_name, source, staged, errors)
            # pluggy's own trace names only the hook; say whose implementation runs.
            self.pm.trace.root.get("registry")(hook_name, "of plugin", source.name)
            try:
                self.pm.subset_hook_caller(hook_name, remove_plugins=others)(register=register)
            except PluginError:
                raise
            except Exception as exc:
                if errors:  # the plugin turned our PluginError into something else
                    raise errors[0] from exc
                _record_failure(self.failures, source, exc, hook=hook_name)
                return
            # A plugin that swallowed our PluginError must not get away with it.
            if errors:
                raise errors[0]

        by_kind: dict[str, list[str]] = {kind: [] for kind in KINDS}
        for (kind, id_), cls in staged.items():
            cls.provenance = Provenance(source.name, source.distribution, source.version)
            self._classes[kind][id_] = cls
            self._providers[(kind, id_)] = source
            by_kind[kind].append(id_)
        self._by_plugin[source.name] = {kind: sorted(ids) for kind, ids in by_kind.items()}

    def _register_callback(
        self,
        kind: str,
        hook_name: str,
        source: PluginSource,
        staged: dict[tuple[str, str], type[Component]],
        errors: list[PluginError],
    ) -> Register:
        def register(cls: type[Component], /) -> None:
            try:
                staged[(kind, self._validate(cls, kind, hook_name, source, staged))] = cls
            except PluginError as exc:
                errors.append(exc)
                raise

        return register

    def _validate(
        self,
        cls: object,
        kind: str,
        hook_name: str,
        source: PluginSource,
        staged: Mapping[tuple[str, str], type[Component]],
    ) -> str:
        if not (isinstance(cls, type) and issubclass(cls, Component)):
            raise PluginError(
                f"{source} registered {cls!r} through {hook_name}, which is not a component class.",
                "Pass a subclass of a bench.components base (e.g. Algorithm), not an instance.",
            )
        id_ = getattr(cls, "id", None)
        if not isinstance(id_, str) or not _KEBAB.fullmatch(id_):
            raise PluginError(
                f"{source} registered {cls.__qualname__} with id {id_!r} through {hook_name}.",
                "Every component class needs a kebab-case `id` (e.g. 'pgd-linf') that never changes.",
            )
        if cls.kind != kind:
            right = HOOKS.get(cls.kind)
            raise PluginError(
                f"{source} registered {cls.__qualname__} (kind {cls.kind!r}) through {hook_name}, "
                f"which registers {kind}s.",
                f"Register it from {right}." if right else f"Derive it from the {kind} base class.",
            )
        if (kind, id_) in staged:
            raise PluginError(f"{source} registers {kind} id {id_!r} twice.")
        if (kind, id_) in self._providers:
            other = self._providers[(kind, id_)]
            raise PluginError(
                f"Duplicate {kind} id {id_!r}: registered by {other} and by {source}.",
                f"Ids are never renamed or overridden; uninstall one distribution or block "
                f"one plugin with MRBENCH_DISABLE_PLUGINS={source.name}.",
            )
        return id_

    def _kind(self, kind: str) -> dict[str, type[Component]]:
        if kind not in self._classes:
            raise UnknownComponentError("component kind", kind, list(KINDS))
        return self._classes[kind]

    def ids(self, kind: str) -> list[str]:
        """The registered ids of ``kind`` (``algorithm``, ``attack``, ``shift``, ``dataset``), sorted."""
        return sorted(self._kind(kind))

    def get(self, kind: str, id: str) -> type[Component]:
        """The class registered as ``id``.

        :raises bench.errors.UnknownComponentError: no such id; lists the known ones.
        """
        classes = self._kind(kind)
        try:
            return classes[id]
        except KeyError:
            raise UnknownComponentError(kind, id, list(classes)) from None

    def create(self, kind: str, id: str, options: Mapping[str, Any] | None = None) -> Component:
        """An instance of the class registered as ``id``, with validated ``options``.

        :raises bench.errors.UnknownComponentError: no such id.
        :raises bench.errors.OptionsError: an unknown option or an invalid value.
        """
        return self.get(kind, id)(options)

    def plugins(self) -> list[dict[str, Any]]:
        """Every plugin seen, loaded, blocked or failed, as JSON-ready dicts.

        Keys: ``name``, ``distribution``, ``version``, ``status`` (``ok``,
        ``blocked``, ``failed``), ``components`` (every kind -> sorted ids) and
        ``error`` (``None`` unless failed). Sorted by name.
        """
        names = [name for name, _ in self.pm.list_name_plugin()]
        if isinstance(self.pm, PluginManager):
            names += [name for name in self.pm.sources if name not in names]
        names += [f.plugin for f in self.failures if f.plugin not in names]
        failed = {f.plugin: f for f in self.failures}
        rows: list[dict[str, Any]] = []
        for name in names:
            blocked = self.pm.is_blocked(name)
            if blocked and not (isinstance(self.pm, PluginManager) and name in self.pm.sources):
                continue  # a blocked name that matches no plugin
            source = _source_of(self.pm, name)
            failure = failed.get(name)
            rows.append(
                {
                    "name": name,
                    "distribution": source.distribution,
                    "version": source.version,
                    "status": "failed" if failure else "blocked" if blocked else "ok",
                    "components": self._by_plugin.get(name, {kind: [] for kind in KINDS}),
                    "error": failure.error if failure else None,
                }
            )
        return sorted(rows, key=lambda row: row["name"])


def get_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """A :class:`Registry` of ``pm``, or of a fresh :func:`get_plugin_manager`."""
    return Registry(pm if pm is not None else get_plugin_manager())


def plugins_json(registry: Registry) -> str:
    """``{"plugins": [...]}`` as indented JSON (see :meth:`Registry.plugins`)."""
    return json.dumps({"plugins": registry.plugins()}, indent=2)


def render_plugins(console: Console, registry: Registry) -> None:
    """Print a table of plugins, their distributions, components and status."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="mrbench plugins")
    for column in ("plugin", "distribution", "version", "components", "status"):
        table.add_column(column)
    styles = {"ok": "green", "blocked": "yellow", "failed": "red"}
    for row in registry.plugins():
        components = "\n".join(f"{kind}: {', '.join(ids)}" for kind, ids in row["components"].items() if ids)
        status = row["status"] if row["error"] is None else f"{row['status']}: {row['error']}"
        table.add_row(
            escape(row["name"]),
            escape(row["distribution"]),
            escape(row["version"]),
            escape(components) or "-",
            f"[{styles[row['status']]}]{escape(status)}[/]",
        )
    console.print(table)


def same_weights(registry: Registry, a: str, b: str) -> bool:
    """Whether algorithms ``a`` and ``b`` share checkpoints: the same id, or both declare
    the same :attr:`bench.components.Algorithm.weights_family`."""
    if a == b:
        return True
    known = registry.ids("algorithm")
    if a not in known or b not in known:
        return False
    fa = registry.get("algorithm", a).weights_family
    return fa is not None and fa == registry.get("algorithm", b).weights_family


def family_hint(registry: Registry, algorithm: str) -> str:
    """``" or of its weights family '...' (ids)."`` for an algorithm with a family, else ``"."``."""
    if algorithm not in registry.ids("algorithm"):
        return "."
    family = registry.get("algorithm", algorithm).weights_family
    siblings = [a for a in registry.ids("algorithm") if a != algorithm and same_weights(registry, a, algorithm)]
    return f" or of its weights family {family!r} ({', '.join(siblings)})." if family and siblings else "."
