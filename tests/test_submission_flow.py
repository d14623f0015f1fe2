"""The submission flow of a third-party plugin, end to end.

The example distribution ``examples/mrbench-example-plugin`` (and a freshly generated
``mrbench new-plugin`` one) is "installed" into ``tmp_path`` as a real distribution
(its source folder plus a ``*.dist-info`` with the entry points of its own
``pyproject.toml``) and put on ``sys.path`` for the test only, so nothing leaks into
the environment or into other tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import bench
from bench.cli import main
from bench.errors import MrbenchError
from bench.plugins import get_registry
from bench.schema import validate_entry
from bench.scaffold import new_plugin
from bench.testing import ALGORITHM_CHECKS

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "mrbench-example-plugin"


def fake_install(source: Path, site: Path) -> str:
    """Write ``site/<dist>.dist-info`` for the distribution in ``source`` (flat layout,
    its package importable from ``source``); returns the distribution name."""
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
             for group, eps in project["entry-points"].items()]
    (info / "entry_points.txt").write_text("\n".join(lines))
    return name


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The example plugin installed for this test only; yields its source folder."""
    src = tmp_path / "mrbench-example-plugin"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    fake_install(src, tmp_path / "site")
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield src
    for mod in [m for m in sys.modules if m.split(".")[0] == "mrbench_example_plugin"]:
        del sys.modules[mod]


def test_the_example_plugin_is_not_a_requirement():
    assert "example" not in (REPO / "requirements.txt").read_text()


def test_example_plugin_goes_through_the_whole_flow(example, tmp_path, tiny_suite):
    registry = get_registry()
    cls = registry.get("algorithm", "example-cosine-centroid")
    assert (cls.provenance.plugin, cls.provenance.distribution) == ("mrbench-example-plugin", "mrbench-example-plugin")
    for check in ALGORITHM_CHECKS:
        check(registry.create("algorithm", "example-cosine-centroid"))

    ckpt = tmp_path / "run" / "ckpt.pt"
    bench.train("example-cosine-centroid", tiny_suite, ckpt, steps=2, meta_batch=2, device="cpu")
    entry = bench.evaluate("example-cosine-centroid", tiny_suite, ckpt, out=tmp_path / "run" / "entry.json",
                           device="cpu")
    validated = validate_entry(entry, "entry.json")
    assert validated is not None
    algo = entry["algorithm"]
    assert (algo["id"], algo["distribution"], algo["distribution_version"]) == (
        "example-cosine-centroid", "mrbench-example-plugin", "0.1.0")
    assert 0.0 <= entry["metrics"]["clean"]["accuracy"] <= 1.0


def test_new_plugin_refuses_bad_names_and_existing_folders(tmp_path):
    for bad in ("My_Algo", "-x", "mrbench", "a--b", ""):
        with pytest.raises(MrbenchError, match="name"):
            new_plugin(bad, tmp_path)
    with pytest.raises(MrbenchError, match=r"Algorithm id 'protonet' is already registered \(by mrbench-metric\)"):
        new_plugin("mrbench-protonet", tmp_path)
    assert not (tmp_path / "mrbench-protonet").exists()
    new_plugin("mrbench-a", tmp_path)
    with pytest.raises(MrbenchError, match="already exists"):
        new_plugin("mrbench-a", tmp_path)
    assert main(["new-plugin", "mrbench-a", "--dir", str(tmp_path)]) == 2


def run_own_tests(src: Path, site: Path) -> subprocess.CompletedProcess:
    """Run a plugin distribution's own ``pytest`` in a subprocess, the distribution
    importable from ``src`` and its ``*.dist-info`` in ``site``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(site)]), "OMP_NUM_THREADS": "1"}
    env.pop("MRBENCH_DISABLE_PLUGINS", None)
    # The generated tests use the `mrbench_check` fixture of mrbench's pytest plugin (pytest11 entry point).
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=src, env=env,
                          capture_output=True, text=True, timeout=300)


def test_example_plugin_passes_its_own_tests(example, tmp_path):
    proc = run_own_tests(example, tmp_path / "site")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(ALGORITHM_CHECKS) + 1} passed" in proc.stdout


def test_generated_plugin_passes_its_own_tests(tmp_path):
    assert main(["new-plugin", "mrbench-my-algo", "--dir", str(tmp_path)]) == 0
    src = tmp_path / "mrbench-my-algo"
    assert {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()} == {
        "pyproject.toml", "README.md", "mrbench_my_algo/__init__.py", "mrbench_my_algo/algorithm.py",
        "tests/test_contract.py"}
    assert fake_install(src, tmp_path / "site") == "mrbench-my-algo"
    proc = run_own_tests(src, tmp_path / "site")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(ALGORITHM_CHECKS) + 1} passed" in proc.stdout
