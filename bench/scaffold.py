"""``mrbench new-plugin``: generate a third-party plugin distribution.

The generated folder is a complete, installable distribution of one component
(``--kind algorithm``, ``attack``, ``shift`` or ``dataset``): a ``pyproject.toml`` with an
entry point in the ``mrbench`` group, a module whose hook registers a working skeleton
of that kind (it passes the kind's contract checks as generated),
``tests/test_contract.py`` running those checks through mrbench's pytest plugin, and a
README with the steps from there to a leaderboard entry.

The templates are package data: ``bench/templates/new_plugin/<kind>/`` plus
``common/``, files ending in ``.tmpl`` written without that suffix, with
``__module__`` in a path replaced by the module name and ``${name}`` placeholders
(:class:`string.Template`; ``$$`` is a literal ``$``) filled from :class:`PluginNames`.
"""

from __future__ import annotations

import keyword
import re
import string
from dataclasses import asdict, dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Iterator

from bench.errors import MrbenchError

KINDS = ("algorithm", "attack", "shift", "dataset")
"""The component kinds ``new-plugin`` generates, each from its own templates."""

_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
_RESERVED = {"mrbench", "bench"}
_DEPENDENCIES = {"attack": '"mrbench", "torchattacks"'}
_SUFFIX = ".tmpl"


@dataclass(frozen=True)
class PluginNames:
    """The names a plugin distribution is made of.

    :param dist: distribution (and entry-point) name, kebab-case, e.g. ``mrbench-myalgo``.
    :param module: the importable module, e.g. ``mrbench_myalgo``.
    :param component_id: the component's registry id, e.g. ``myalgo``.
    :param class_name: the component class, e.g. ``Myalgo``.
    :param kind: ``algorithm``, ``attack``, ``shift`` or ``dataset``.
    """

    dist: str
    module: str
    component_id: str
    class_name: str
    kind: str = "algorithm"

    @property
    def algorithm_id(self) -> str:
        """The component id (the name this field had when only algorithms were generated)."""
        return self.component_id


def plugin_names(name: str, kind: str = "algorithm") -> PluginNames:
    """Derive the module, component id and class name from a distribution name.

    :param name: the distribution name, kebab-case; a leading ``mrbench-`` is dropped
        from the component id.
    :param kind: the component kind, one of :data:`KINDS`.
    :raises MrbenchError: when ``name`` is not kebab-case or is reserved, or ``kind`` is unknown.
    """
    if kind not in KINDS:
        raise MrbenchError(f"Unknown plugin kind {kind!r}.", f"Kinds: {', '.join(KINDS)}.")
    if not _NAME.fullmatch(name or ""):
        raise MrbenchError(
            f"Plugin name {name!r} is not a kebab-case distribution name.",
            "Use lowercase letters, digits and single hyphens, starting with a letter, e.g. `mrbench-myalgo`.",
        )
    module = name.replace("-", "_")
    if name in _RESERVED or module in _RESERVED or keyword.iskeyword(module):
        raise MrbenchError(f"Plugin name {name!r} is reserved (it would shadow mrbench itself).",
                           "Pick a name of your own, e.g. `mrbench-myalgo`.")
    component_id = name.removeprefix("mrbench-")
    class_name = "".join(part.capitalize() for part in component_id.split("-"))
    if class_name[0].isdigit():
        class_name = kind.capitalize() + class_name
    return PluginNames(name, module, component_id, class_name, kind)


def _templates(folder: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    """``(relative path, file)`` of every template under ``folder``."""
    for item in sorted(folder.iterdir(), key=lambda t: t.name):
        rel = f"{prefix}{item.name}"
        if item.is_dir():
            yield from _templates(item, rel + "/")
        elif item.name.endswith(_SUFFIX):
            yield rel.removesuffix(_SUFFIX), item


def render(names: PluginNames) -> dict[str, str]:
    """``relative path -> content`` of the distribution ``names`` describes."""
    root = files("bench") / "templates" / "new_plugin"
    fields = {**asdict(names), "dependencies": _DEPENDENCIES.get(names.kind, '"mrbench"')}
    out = {}
    for folder in ("common", names.kind):
        for rel, template in _templates(root / folder):
            out[rel.replace("__module__", names.module)] = string.Template(template.read_text()).substitute(fields)
    return out


def _check_id_free(kind: str, component_id: str) -> None:
    """An id already registered here would make both plugins fail to load together."""
    from bench.plugins import get_registry

    registry = get_registry()
    known = registry.ids(kind)
    if component_id in known:
        prov = getattr(registry.get(kind, component_id), "provenance", None)
        raise MrbenchError(
            f"{kind.capitalize()} id {component_id!r} is already registered (by "
            f"{prov.distribution if prov else 'mrbench'}); a second plugin with that id could not be installed "
            "next to it.",
            f"Pick another NAME, e.g. `mrbench-{component_id}-v2`. Registered {kind}s: {', '.join(sorted(known))}.")


def new_plugin(name: str, directory: str | Path = ".", kind: str = "algorithm") -> Path:
    """Write a plugin distribution skeleton to ``directory/name`` and return that folder.

    :param name: the distribution name (kebab-case), e.g. ``mrbench-myattack``.
    :param directory: the parent folder.
    :param kind: the component it registers, one of :data:`KINDS`.
    :raises MrbenchError: for a bad name or kind, an id that is already registered, or
        when the folder exists and is not empty (nothing is overwritten).
    """
    names = plugin_names(name, kind)
    _check_id_free(kind, names.component_id)
    target = Path(directory) / names.dist
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise MrbenchError(f"{target} already exists and is not an empty folder; mrbench new-plugin writes nothing there.",
                           "Pick another NAME or --dir, or remove that folder.")
    for rel, text in render(names).items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return target
