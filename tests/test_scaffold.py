"""``mrbench new-plugin --kind ...``: every kind of generated distribution installs,
registers through its entry point and passes its kind's shipped contract checks as
generated.

A generated distribution is "installed" for one test: its folder and a ``*.dist-info``
with the entry points of its own ``pyproject.toml`` go on ``sys.path`` (see
``tests/test_submission_flow.py``), and the registry is built the way mrbench builds it.
"""

from __future__ import annotations

import ast
import fnmatch
import sys
import tomllib
from pathlib import Path

import pytest

from bench.cli import main
from bench.components import Algorithm, Attack, Dataset, Shift
from bench.plugins import get_registry
from bench.scaffold import KINDS, plugin_names, render
from bench.testing import ALGORITHM_CHECKS, ATTACK_CHECKS, DATASET_CHECKS, SHIFT_CHECKS
from test_submission_flow import fake_install

REPO = Path(__file__).resolve().parents[1]
CHECKS = {"algorithm": ALGORITHM_CHECKS, "attack": ATTACK_CHECKS, "shift": SHIFT_CHECKS, "dataset": DATASET_CHECKS}
BASES = {"algorithm": Algorithm, "attack": Attack, "shift": Shift, "dataset": Dataset}


@pytest.fixture
def generated(tmp_path, monkeypatch):
    """``generated(kind, name)``: run ``mrbench new-plugin`` and install the result for this test."""
    modules = []

    def _generate(kind: str, name: str) -> Path:
        assert main(["new-plugin", name, "--kind", kind, "--dir", str(tmp_path)]) == 0
        src = tmp_path / name
        fake_install(src, tmp_path / "site")
        monkeypatch.syspath_prepend(str(src))
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        modules.append(plugin_names(name).module)
        return src

    yield _generate
    for mod in [m for m in sys.modules if m.split(".")[0] in modules]:
        del sys.modules[mod]


@pytest.mark.parametrize("kind", KINDS)
def test_a_generated_plugin_registers_and_passes_its_contract_checks(generated, kind):
    name = f"mrbench-my-{kind}"
    src = generated(kind, name)
    module = name.replace("-", "_")
    assert {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()} == {
        "pyproject.toml", "README.md", f"{module}/__init__.py", f"{module}/{kind}.py", "tests/test_contract.py"}
    for path in src.rglob("*.py"):
        ast.parse(path.read_text(), str(path))  # valid Python, every placeholder filled
    project = tomllib.loads((src / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["mrbench"] == {name: module}

    cls = get_registry().get(kind, f"my-{kind}")
    assert (cls.provenance.plugin, cls.provenance.distribution) == (name, name)
    assert issubclass(cls, BASES[kind]) and cls.__module__ == f"{module}.{kind}"
    for check in CHECKS[kind]:
        check(cls())
    fixture = {"algorithm": "mrbench_check"}.get(kind, f"mrbench_{kind}_check")
    assert f"def test_contract({fixture}):" in (src / "tests" / "test_contract.py").read_text()


def test_the_generated_attack_wraps_torchattacks_through_the_public_helper(generated):
    src = generated("attack", "mrbench-my-pgd")
    text = (src / "mrbench_my_pgd" / "attack.py").read_text()
    assert "from bench.attacks import run_torchattacks" in text and "torchattacks_query" not in text
    assert '"torchattacks"' in (src / "pyproject.toml").read_text()


def test_generated_plugins_import_only_the_documented_plugin_surface():
    # docs/plugin-utilities.md lists what plugins may import; the templates stay inside it.
    allowed = {"bench", "bench.attacks", "bench.components", "bench.data", "bench.errors", "bench.hookspecs",
               "bench.nn", "bench.plugins", "bench.testing"}
    doc = (REPO / "docs" / "plugin-utilities.md").read_text()
    for kind in KINDS:
        for rel, text in render(plugin_names(f"mrbench-x-{kind}", kind)).items():
            if not rel.endswith(".py"):
                continue
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bench":
                    assert node.module in allowed, (rel, node.module)
                    assert f"`{node.module}`" in doc, f"{node.module} (used by the {kind} template) is not documented"


def test_every_template_is_package_data():
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["bench"]
    templates = sorted((REPO / "bench" / "templates").rglob("*.tmpl"))
    assert templates
    for path in templates:
        rel = path.relative_to(REPO / "bench").as_posix()
        assert any(fnmatch.fnmatchcase(rel, p) and rel.count("/") == p.count("/") for p in patterns), rel


def test_new_plugin_refuses_an_unknown_kind_and_an_id_of_that_kind(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse: a usage error
        main(["new-plugin", "mrbench-x", "--kind", "metric", "--dir", str(tmp_path)])
    assert exc.value.code == 2 and "invalid choice: 'metric'" in capsys.readouterr().err
    assert main(["new-plugin", "mrbench-fgsm", "--kind", "attack", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Attack id 'fgsm' is already registered (by mrbench-attacks)" in " ".join(err.split())
    assert not (tmp_path / "mrbench-fgsm").exists()
    # The same name is free as another kind: ids are unique per kind.
    assert main(["new-plugin", "mrbench-fgsm", "--kind", "shift", "--dir", str(tmp_path)]) == 0


@pytest.mark.subprocess
def test_the_package_root_exports_the_plugin_surface_lazily():
    import subprocess

    import bench
    import bench.components
    import bench.hookspecs

    assert bench.hookimpl is bench.hookspecs.hookimpl and bench.Attack is bench.components.Attack
    assert all(getattr(bench, name) is not None for name in bench.__all__)
    code = "import sys, bench; assert 'torch' not in sys.modules, 'import bench imported torch'; bench.hookimpl"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_run_torchattacks_is_the_documented_form_of_torchattacks_query():
    import torch

    from bench.attacks import Victim, run_torchattacks, torchattacks_query
    from bench.testing import PixelCentroid, attack_episodes

    torchattacks = pytest.importorskip("torchattacks")
    algo = PixelCentroid()
    victim = Victim(algo, {"scale": torch.ones(())}, 2)
    ep = attack_episodes()

    def make(model):
        return torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=3, random_start=True)

    a = run_torchattacks(victim, ep, make, torch.Generator().manual_seed(1))
    b = torchattacks_query(victim, ep, make, torch.Generator().manual_seed(1), per_episode=False)
    assert torch.equal(a.x_query, b.x_query) and not torch.equal(a.x_query, ep.x_query)
    assert a.x_support is ep.x_support
    assert "deterministic under ``generator``" in run_torchattacks.__doc__
