"""Plugin loading, blocking, provenance and the registry.

Fake plugins are real distributions written into ``tmp_path`` (module, ``METADATA``,
``entry_points.txt``) so the entry-point path is the one users get. Installed
plugins and the built-in are blocked unless a test is about them, so these tests do
not depend on what else is installed.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from rich.console import Console

import bench
import bench.builtin
from bench import hookspecs
from bench.components import Algorithm, Component, Dataset, Options, Provenance
from bench.errors import OptionsError, PluginError, UnknownComponentError
from bench.hookspecs import hookimpl
from bench.plugins import (
    PluginLoadWarning,
    PluginManager,
    PluginSource,
    Registry,
    get_plugin_manager,
    get_registry,
    plugins_json,
    render_plugins,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ENV_VARS = (
    "MRBENCH_DISABLE_PLUGINS",
    "MRBENCH_DISABLE_PLUGIN_AUTOLOAD",
    "MRBENCH_TRACE_PLUGINS",
)

GOOD_PLUGIN = """
from bench.components import Algorithm, Options
from bench.hookspecs import hookimpl


class FakeOptions(Options):
    steps: int = 1


class FakeAlgo(Algorithm):
    id = "fake-algo"
    Options = FakeOptions


@hookimpl
def mrbench_register_algorithms(register):
    register(FakeAlgo)
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def installed() -> list[str]:
    """Names of the entry points installed in this environment (before any fake)."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group="mrbench")})


@pytest.fixture
def only_fakes(monkeypatch: pytest.MonkeyPatch, installed: list[str]) -> None:
    """Block the installed plugins and the built-in: only the test's fakes load."""
    monkeypatch.setenv("MRBENCH_DISABLE_PLUGINS", ",".join([*installed, "builtin"]))


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Install a fake plugin distribution: ``install(module, source, ep=..., version=...)``."""
    site = tmp_path / "site"
    site.mkdir()
    modules: list[str] = []

    def _install(module: str, source: str, *, ep: str = "fake", version: str = "1.2.3") -> None:
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[mrbench]\n{ep} = {module}\n")
        sys.modules.pop(module, None)
        modules.append(module)

    # Also invalidates importlib's finder caches.
    monkeypatch.syspath_prepend(str(site))
    yield _install
    for module in modules:
        sys.modules.pop(module, None)


def hand_plugin(**hooks: Callable[..., None]) -> object:
    """A plugin object registered by hand, its functions marked as hook impls."""
    # An instance of a fresh class: pluggy needs plugins to be hashable.
    namespace = {name: staticmethod(hookimpl(func)) for name, func in hooks.items()}
    return type("HandPlugin", (), namespace)()


def hand_manager(monkeypatch: pytest.MonkeyPatch, **plugins: object) -> PluginManager:
    monkeypatch.setenv("MRBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("MRBENCH_DISABLE_PLUGINS", "builtin")
    pm = get_plugin_manager()
    for name, plugin in plugins.items():
        pm.register(plugin, name=name)
    return pm


class StepsOptions(Options):
    steps: int = 1


def component(kind: str, id_: Any) -> type[Component]:
    """A fresh component class (fresh, so provenance never leaks between tests)."""
    base: type[Component] = {"algorithm": Algorithm, "dataset": Dataset}.get(kind, Component)
    return type(f"Fake_{kind}", (base,), {"id": id_, "kind": kind, "Options": StepsOptions})


# -- entry points -----------------------------------------------------------------


def test_entry_point_plugin_registers_with_provenance(install: Callable[..., None], only_fakes: None) -> None:
    install("fake_mrbench_plugin", GOOD_PLUGIN)

    registry = get_registry()

    cls = registry.get("algorithm", "fake-algo")
    assert cls.provenance == Provenance("fake", "fake_mrbench_plugin", "1.2.3")
    assert registry.ids("algorithm") == ["fake-algo"]
    instance = registry.create("algorithm", "fake-algo")
    assert instance.describe()["distribution"] == "fake_mrbench_plugin"
    assert instance.describe()["distribution_version"] == "1.2.3"
    (row,) = [row for row in registry.plugins() if row["name"] == "fake"]
    assert row == {
        "name": "fake",
        "distribution": "fake_mrbench_plugin",
        "version": "1.2.3",
        "status": "ok",
        "components": {"algorithm": ["fake-algo"], "attack": [], "shift": [], "dataset": []},
        "error": None,
    }


def test_plugin_manager_is_a_fresh_factory(only_fakes: None) -> None:
    assert get_plugin_manager() is not get_plugin_manager()


def test_disable_plugins_blocks_and_reports(
    install: Callable[..., None], monkeypatch: pytest.MonkeyPatch, installed: list[str]
) -> None:
    install("fake_mrbench_plugin", GOOD_PLUGIN)
    monkeypatch.setenv("MRBENCH_DISABLE_PLUGINS", ",".join([" fake ", *installed, "builtin"]))

    pm = get_plugin_manager()
    registry = get_registry(pm)

    assert "fake_mrbench_plugin" not in sys.modules  # blocked before import
    assert not pm.has_plugin("fake")
    assert "fake-algo" not in registry.ids("algorithm")
    (row,) = [row for row in registry.plugins() if row["name"] == "fake"]
    assert (row["status"], row["distribution"], row["version"]) == ("blocked", "fake_mrbench_plugin", "1.2.3")


@pytest.mark.parametrize(("value", "autoload"), [("1", False), ("yes", False), ("0", True), ("", True)])
def test_disable_autoload_keeps_builtin(
    install: Callable[..., None], monkeypatch: pytest.MonkeyPatch, installed: list[str], value: str, autoload: bool
) -> None:
    install("fake_mrbench_plugin", GOOD_PLUGIN)
    monkeypatch.setenv("MRBENCH_DISABLE_PLUGIN_AUTOLOAD", value)
    monkeypatch.setenv("MRBENCH_DISABLE_PLUGINS", ",".join(installed))

    pm = get_plugin_manager()

    assert pm.has_plugin("fake") is autoload
    assert pm.get_plugin("builtin") is bench.builtin
    assert pm.source_of("builtin") == PluginSource("builtin", "mrbench", bench.__version__)


def test_plugin_that_fails_to_import_is_reported_and_others_load(
    install: Callable[..., None], only_fakes: None
) -> None:
    install("fake_mrbench_plugin", GOOD_PLUGIN)
    install("broken_mrbench_plugin", "raise RuntimeError('boom at import')\n", ep="broken", version="0.0.1")

    with pytest.warns(PluginLoadWarning, match=r"'broken'.*broken_mrbench_plugin 0\.0\.1.*boom at import"):
        pm = get_plugin_manager()
    registry = get_registry(pm)

    (failure,) = registry.failures
    assert (failure.plugin, failure.distribution, failure.version) == ("broken", "broken_mrbench_plugin", "0.0.1")
    assert failure.error == "RuntimeError: boom at import"
    assert failure.hook is None
    assert "boom at import" in failure.traceback
    assert registry.ids("algorithm") == ["fake-algo"]
    (row,) = [row for row in registry.plugins() if row["name"] == "broken"]
    assert row["status"] == "failed"
    assert row["error"] == "RuntimeError: boom at import"


def test_misspelled_hook_names_plugin_and_hook(install: Callable[..., None], only_fakes: None) -> None:
    install("fake_mrbench_plugin", GOOD_PLUGIN.replace("mrbench_register_algorithms", "mrbench_register_algorithm"))

    with pytest.raises(PluginError, match=r"'fake'.*fake_mrbench_plugin.*'mrbench_register_algorithm'") as info:
        get_plugin_manager()
    assert "did you mean 'mrbench_register_algorithms'" in str(info.value).lower()


def test_hook_without_marker_is_an_error(install: Callable[..., None], only_fakes: None) -> None:
    install("fake_mrbench_plugin", GOOD_PLUGIN.replace("@hookimpl\n", ""))

    with pytest.raises(PluginError, match=r"'fake'.*mrbench_register_algorithms\(\) without @hookimpl"):
        get_plugin_manager()


def test_two_distributions_with_one_plugin_name(install: Callable[..., None], only_fakes: None) -> None:
    install("fake_a", GOOD_PLUGIN, ep="fake")
    install("fake_b", GOOD_PLUGIN, ep="fake")

    with pytest.raises(PluginError, match=r"Two plugins are named 'fake'.*fake_[ab].*fake_[ab]"):
        get_plugin_manager()


def test_duplicate_id_across_plugins_names_both(install: Callable[..., None], only_fakes: None) -> None:
    install("fake_a", GOOD_PLUGIN, ep="fake-a", version="1.0")
    install("fake_b", GOOD_PLUGIN, ep="fake-b", version="2.0")

    with pytest.raises(PluginError, match="Duplicate algorithm id 'fake-algo'") as info:
        get_registry()
    message = str(info.value)
    for name in ("'fake-a'", "fake_a 1.0", "'fake-b'", "fake_b 2.0"):
        assert name in message


# -- registration through each hook ------------------------------------------------


@pytest.mark.parametrize(
    ("hook", "kind"),
    [
        ("mrbench_register_algorithms", "algorithm"),
        ("mrbench_register_attacks", "attack"),
        ("mrbench_register_shifts", "shift"),
        ("mrbench_register_datasets", "dataset"),
    ],
)
def test_each_hook_registers_its_kind(monkeypatch: pytest.MonkeyPatch, hook: str, kind: str) -> None:
    cls = component(kind, f"my-{kind}")
    pm = hand_manager(monkeypatch, mine=hand_plugin(**{hook: lambda register: register(cls)}))

    registry = get_registry(pm)

    assert registry.ids(kind) == [f"my-{kind}"]
    assert registry.get(kind, f"my-{kind}") is cls
    # Registered by hand: no installed distribution behind it.
    assert cls.provenance == Provenance("mine", "mine", "unknown")
    assert isinstance(registry.create(kind, f"my-{kind}", {"steps": 3}), cls)


def test_each_plugin_gets_its_own_provenance(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = component("algorithm", "algo-a"), component("algorithm", "algo-b")
    pm = hand_manager(
        monkeypatch,
        first=hand_plugin(mrbench_register_algorithms=lambda register: register(a)),
        second=hand_plugin(mrbench_register_algorithms=lambda register: register(b)),
    )

    registry = Registry(pm)

    assert (a.provenance.plugin, b.provenance.plugin) == ("first", "second")
    rows = {row["name"]: row["components"]["algorithm"] for row in registry.plugins()}
    assert rows["first"] == ["algo-a"] and rows["second"] == ["algo-b"]


def test_class_registered_through_wrong_hook_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = component("dataset", "some-data")
    pm = hand_manager(monkeypatch, wrong=hand_plugin(mrbench_register_algorithms=lambda register: register(dataset)))

    with pytest.raises(PluginError, match=r"'wrong'.*kind 'dataset'.*mrbench_register_algorithms") as info:
        get_registry(pm)
    assert "mrbench_register_datasets" in str(info.value)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: component("algorithm", None), "with id None"),
        (lambda: component("algorithm", "Not_Kebab"), "with id 'Not_Kebab'"),
        (lambda: component("algorithm", "algo")(), "not a component class"),
        (lambda: int, "not a component class"),
    ],
)
def test_invalid_classes_are_rejected(monkeypatch: pytest.MonkeyPatch, make: Callable[[], Any], match: str) -> None:
    obj = make()
    pm = hand_manager(monkeypatch, bad=hand_plugin(mrbench_register_algorithms=lambda register: register(obj)))

    with pytest.raises(PluginError, match=rf"plugin 'bad'.*{match}"):
        get_registry(pm)


def test_plugin_cannot_swallow_registration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def sneaky(register: Callable[[type[Component]], None]) -> None:
        try:
            register(component("dataset", "data"))
        except PluginError:
            pass

    pm = hand_manager(monkeypatch, sneaky=hand_plugin(mrbench_register_algorithms=sneaky))

    with pytest.raises(PluginError, match="'sneaky'"):
        get_registry(pm)


def test_plugin_whose_hook_raises_is_skipped_as_a_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    def half(register: Callable[[type[Component]], None]) -> None:
        register(component("algorithm", "half-done"))
        raise ImportError("optional dependency missing")

    good = component("algorithm", "good-algo")
    pm = hand_manager(
        monkeypatch,
        half=hand_plugin(mrbench_register_algorithms=half),
        good=hand_plugin(mrbench_register_algorithms=lambda register: register(good)),
    )

    with pytest.warns(PluginLoadWarning, match="'half'.*optional dependency missing"):
        registry = get_registry(pm)

    assert registry.ids("algorithm") == ["good-algo"]
    (failure,) = registry.failures
    assert (failure.plugin, failure.hook) == ("half", "mrbench_register_algorithms")
    statuses = {row["name"]: row["status"] for row in registry.plugins()}
    assert statuses == {"half": "failed", "good": "ok", "builtin": "blocked"}


# -- registry API ------------------------------------------------------------------


def test_create_validates_options_and_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    cls = component("algorithm", "algo")
    pm = hand_manager(monkeypatch, mine=hand_plugin(mrbench_register_algorithms=lambda register: register(cls)))
    registry = get_registry(pm)

    assert registry.create("algorithm", "algo", {"steps": 5}).options.steps == 5
    with pytest.raises(OptionsError, match="stepz"):
        registry.create("algorithm", "algo", {"stepz": 5})
    with pytest.raises(UnknownComponentError, match=r"Unknown algorithm 'alg'.*Known algorithms: algo"):
        registry.create("algorithm", "alg")
    with pytest.raises(UnknownComponentError, match="Known component kinds: algorithm, attack, dataset, shift"):
        registry.ids("algorithms")


def test_trace_writes_hook_calls_to_stderr(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MRBENCH_TRACE_PLUGINS", "1")
    cls = component("algorithm", "algo")
    pm = hand_manager(monkeypatch, mine=hand_plugin(mrbench_register_algorithms=lambda register: register(cls)))

    get_registry(pm)

    err = capsys.readouterr().err
    assert "mrbench_register_algorithms" in err
    assert "of plugin mine" in err


def test_no_trace_by_default(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cls = component("algorithm", "algo")
    pm = hand_manager(monkeypatch, mine=hand_plugin(mrbench_register_algorithms=lambda register: register(cls)))

    get_registry(pm)

    assert capsys.readouterr().err == ""


def test_plugins_json_and_table(install: Callable[..., None], only_fakes: None) -> None:
    install("fake_mrbench_plugin", GOOD_PLUGIN)
    install("broken_mrbench_plugin", "import does_not_exist_anywhere\n", ep="broken")
    with pytest.warns(PluginLoadWarning):
        registry = get_registry()

    data = json.loads(plugins_json(registry))
    by_name = {row["name"]: row for row in data["plugins"]}
    assert by_name["fake"]["distribution"] == "fake_mrbench_plugin"
    assert by_name["fake"]["components"]["algorithm"] == ["fake-algo"]
    assert by_name["broken"]["status"] == "failed"
    assert by_name["builtin"]["status"] == "blocked"

    console = Console(record=True, width=200)
    render_plugins(console, registry)
    text = console.export_text()
    for expected in ("fake", "fake_mrbench_plugin", "1.2.3", "fake-algo", "blocked", "ModuleNotFoundError"):
        assert expected in text


def test_builtin_registers_the_shipped_datasets(monkeypatch: pytest.MonkeyPatch, installed: list[str]) -> None:
    glyphs = pytest.importorskip("bench.data.glyphs")
    mnist = pytest.importorskip("bench.data.mnist")
    omniglot = pytest.importorskip("bench.data.omniglot")
    monkeypatch.setenv("MRBENCH_DISABLE_PLUGINS", ",".join(installed))

    registry = get_registry()

    for cls in (omniglot.Omniglot, omniglot.OmniglotLakeRuns, mnist.MNIST, glyphs.ProceduralGlyphs):
        assert registry.get("dataset", cls.id) is cls
        assert cls.provenance == Provenance("builtin", "mrbench", bench.__version__)


# -- meta-tests: the plugin surface stays documented and tested ---------------------


def hook_specs() -> list[str]:
    return [name for name, _ in inspect.getmembers(hookspecs) if name.startswith("mrbench_")]


def test_there_are_four_hooks() -> None:
    assert hook_specs() == [
        "mrbench_register_algorithms",
        "mrbench_register_attacks",
        "mrbench_register_datasets",
        "mrbench_register_shifts",
    ]


@pytest.mark.parametrize("name", hook_specs())
def test_every_hook_is_documented(name: str) -> None:
    spec = getattr(hookspecs, name)
    assert list(inspect.signature(spec).parameters) == ["register"]
    assert ":param register:" in (inspect.getdoc(spec) or "")


@pytest.mark.parametrize("name", hook_specs())
def test_every_hook_is_tested(name: str) -> None:
    source = Path(__file__).read_text()
    # Quoted or called: a prefix of a longer hook name does not count.
    assert f'"{name}"' in source or f"{name}(" in source
