"""The submission flow of a third-party plugin, end to end, as CONTRIBUTING.md writes it.

The example distribution ``examples/mrbench-example-plugin`` (and a freshly generated
``mrbench new-plugin`` one) is "installed" into ``tmp_path`` as a real distribution
(its source folder plus a ``*.dist-info`` with the entry points of its own
``pyproject.toml``) and put on ``sys.path`` for the test only, so nothing leaks into
the environment or into other tests.

The submission steps (4: evaluate, 5: add the entry and check the leaderboard) are read
from CONTRIBUTING.md's code blocks and run as written in a temporary "clone": a
``leaderboards/`` folder holding one tiny pinned suite, which the harness sees instead
of the repository's. The only changes to the commands: the names (``myalgo``,
``myattack``, ``omniglot-5w1s`` become the example's ids and the tiny suite), ``--steps 2``
for training, and ``--sanity-episodes 1`` for an attack evaluation (its attack-strength
sanity checks run Square with 1000 queries per episode: minutes on 10 episodes).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import MrbenchError
from bench.plugins import get_registry
from bench.results.schema import validate_entry
from bench.scaffold import new_plugin
from bench.testing import ALGORITHM_CHECKS, ATTACK_CHECKS

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


SUITE = "tiny-board"
SUITE_TOML = f"""
id = "{SUITE}"
version = 1
description = "A tiny procedural-glyphs suite (16x16 images, 6 episodes) standing in for a leaderboard's."

[episodes]
n_way = 3
k_shot = 1
n_query = 2
n_episodes = 6
seed = 0

[train]
dataset = "procedural-glyphs"
split = "meta-train"
options = {{ n_alphabets = 10, classes_per_alphabet = 12, samples_per_class = 10, image_size = 16 }}

[test]
dataset = "procedural-glyphs"
split = "meta-test"
options = {{ n_alphabets = 10, classes_per_alphabet = 12, samples_per_class = 10, image_size = 16 }}

[attacks]
attacks = ["fgsm", "pgd-linf"]
eps = ["16/255"]
targets = ["query", "support", "both"]
"""


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """A stand-in for a clone of mrbench: ``leaderboards/`` with the tiny suite (pinned,
    with an attack grid) and an empty ``entries/``, the only suites the harness sees;
    the working directory is its root."""
    from bench.suites import read_suite, suite_manifest

    root = tmp_path / "clone"
    folder = root / "leaderboards" / SUITE / "v1"
    (folder / "entries").mkdir(parents=True)
    text = SUITE_TOML
    (folder / "suite.toml").write_text(text)
    manifest, split, _ = suite_manifest(read_suite(folder / "suite.toml"), get_registry())
    pinned = text.replace('split = "meta-test"\n',
                          f'split = "meta-test"\nrevision = "{split.revision}"\nmanifest_sha256 = "{manifest.sha256()}"\n')
    (folder / "suite.toml").write_text(pinned)
    for module in ("bench.suites", "bench.leaderboard.board"):
        monkeypatch.setattr(f"{module}.suites_dirs", lambda: [root / "leaderboards"])
    monkeypatch.delenv("MRBENCH_SUITES", raising=False)
    monkeypatch.chdir(root)
    return root


def contributing_steps(section: str) -> list[str]:
    """The commands of the ``bash`` code blocks in CONTRIBUTING.md's section ``section``,
    in order, ``a && b`` split into two."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for block in re.findall(r"```bash\n(.*?)```", body, re.S) for line in block.splitlines()]
    return [cmd.strip() for line in lines if line and not line.startswith("#") for cmd in line.split("&&")]


def run_steps(commands: list[str], names: dict[str, str]) -> None:
    """Run ``mrbench`` and ``cp`` commands as a shell would, after renaming ``names``."""
    for command in commands:
        for old, new in names.items():
            command = command.replace(old, new)
        argv = shlex.split(command)
        if argv[0] == "cp":
            *patterns, dest = argv[1:]
            assert Path(dest).is_dir(), f"{command}: no folder {dest}"
            sources = [p for pat in patterns for p in (sorted(Path().glob(pat)) if "*" in pat else [Path(pat)])]
            assert sources, f"{command}: nothing to copy"
            for src in sources:
                shutil.copy(src, dest)
            continue
        assert argv[0] == "mrbench", command
        args = argv[1:] + (["--steps", "2"] if argv[1] == "train" else [])
        args += ["--sanity-episodes", "1"] if "--attacks" in args else []
        assert main(args) == 0, command


def test_contributing_documents_the_submission_steps_it_is_tested_with():
    assert contributing_steps("Writing an algorithm plugin") == [
        "mrbench train myalgo --suite omniglot-5w1s --out runs/myalgo.pt",
        "mrbench evaluate myalgo --suite omniglot-5w1s --checkpoint runs/myalgo.pt --out runs/myalgo-omniglot-5w1s.json",
        "mrbench zoo publish runs/myalgo.pt",
        "cp runs/myalgo-omniglot-5w1s.json runs/myalgo-omniglot-5w1s.episodes.csv "
        "leaderboards/omniglot-5w1s/v1/entries/",
        "mrbench leaderboard build", "mrbench leaderboard check",
        "mrbench verify leaderboards/omniglot-5w1s/v1/entries/myalgo-omniglot-5w1s.json"]
    attack = contributing_steps("Writing an attack plugin")
    assert attack == ["mrbench evaluate --zoo omniglot-5w1s --attacks myattack --out-dir runs/myattack",
                      "cp runs/myattack/*.json runs/myattack/*.episodes.csv leaderboards/omniglot-5w1s/v1/entries/",
                      "mrbench leaderboard build", "mrbench leaderboard check"]


def test_the_algorithm_submission_steps_work_as_written(example, clone, capsys):
    registry = get_registry()
    cls = registry.get("algorithm", "example-cosine-centroid")
    assert (cls.provenance.plugin, cls.provenance.distribution) == ("mrbench-example-plugin", "mrbench-example-plugin")
    for check in ALGORITHM_CHECKS:  # step 3
        check(registry.create("algorithm", "example-cosine-centroid"))
    run_steps(contributing_steps("Writing an algorithm plugin"),
              {"myalgo": "example-cosine-centroid", "omniglot-5w1s": SUITE})
    out = capsys.readouterr().out
    assert "leaderboard check passed: 1 leaderboard(s), 1 entries" in out
    assert "verified 1 of 1 entries" in out
    assert len(list((clone / "leaderboards" / "zoo").glob("*.safetensors"))) == 1
    entries = clone / "leaderboards" / SUITE / "v1" / "entries"
    entry = validate_entry(json.loads((entries / f"example-cosine-centroid-{SUITE}.json").read_text()), "entry")
    assert (entry.algorithm.id, entry.algorithm.distribution, entry.algorithm.distribution_version) == (
        "example-cosine-centroid", "mrbench-example-plugin", "0.1.0")
    assert entry.episodes_file == f"example-cosine-centroid-{SUITE}.episodes.csv"
    assert "example-cosine-centroid" in (clone / "leaderboards" / SUITE / "v1" / "table.md").read_text()


def test_the_attack_submission_steps_work_as_written(example, clone, capsys):
    registry = get_registry()
    assert registry.get("attack", "mi-fgsm").provenance.distribution == "mrbench-example-plugin"
    for check in ATTACK_CHECKS:  # step 3
        check(registry.create("attack", "mi-fgsm"))
    # The leaderboard has one published model: the algorithm steps, for protonet.
    run_steps(contributing_steps("Writing an algorithm plugin"), {"myalgo": "protonet", "omniglot-5w1s": SUITE})
    capsys.readouterr()
    run_steps(contributing_steps("Writing an attack plugin"), {"myattack": "mi-fgsm", "omniglot-5w1s": SUITE})
    assert "leaderboard check passed: 1 leaderboard(s), 2 entries" in capsys.readouterr().out
    [path] = (clone / "leaderboards" / SUITE / "v1" / "entries").glob("protonet-*-mi-fgsm.json")
    entry = json.loads(path.read_text())
    # The suite's attack grid: eps 16/255; mi-fgsm declares only the query target.
    assert set(entry["metrics"]) == {"clean", "mi-fgsm@16/255:query"}
    assert entry["scenarios"]["mi-fgsm@16/255:query"]["provider"] == "mrbench-example-plugin"
    table = (clone / "leaderboards" / SUITE / "v1" / "table.md").read_text()
    assert "mi-fgsm@16/255:query" in table and "external evaluation: mi-fgsm of mrbench-example-plugin" in table
    assert "Best known `16/255:query`" in table


def test_an_entry_on_the_first_episodes_gets_one_message(example, clone):
    run_steps(["mrbench train protonet --suite omniglot-5w1s --out runs/p.pt",
               "mrbench evaluate protonet --suite omniglot-5w1s --checkpoint runs/p.pt --episodes 3 --out runs/p-3.json",
               "cp runs/p-3.json runs/p-3.episodes.csv leaderboards/omniglot-5w1s/v1/entries/"],
              {"omniglot-5w1s": SUITE})
    from bench import leaderboard

    with pytest.raises(MrbenchError) as info:
        leaderboard.check()
    message = info.value.message
    assert message.startswith("Leaderboard check failed (1 problem): ")
    assert f"p-3.json: suite.n_episodes: 3, but suite {SUITE}@v1 has 6 episodes: a leaderboard entry evaluates all " \
           "of them" in message
    assert "other episodes" not in message


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


def passed(proc: subprocess.CompletedProcess) -> int:
    """The number of passed tests in a ``pytest -q`` summary line (fails on any other outcome)."""
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"(\d+) passed in [\d.]+s(?: \(\d+:\d\d:\d\d\))?", last)  # pytest adds (h:mm:ss) past a minute
    assert m, proc.stdout + proc.stderr
    return int(m.group(1))


@pytest.mark.subprocess
def test_example_plugin_passes_its_own_tests(example, tmp_path):
    # Through mrbench's pytest plugin (pytest11): one test per algorithm check, one per
    # attack check, one for the entry point.
    proc = run_own_tests(example, tmp_path / "site")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert passed(proc) == len(ALGORITHM_CHECKS) + len(ATTACK_CHECKS) + 1


@pytest.mark.slow  # tests/test_scaffold.py checks every generated kind in-process
@pytest.mark.subprocess
def test_generated_plugin_passes_its_own_tests(tmp_path):
    assert main(["new-plugin", "mrbench-my-algo", "--dir", str(tmp_path)]) == 0
    src = tmp_path / "mrbench-my-algo"
    assert {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()} == {
        "pyproject.toml", "README.md", "mrbench_my_algo/__init__.py", "mrbench_my_algo/algorithm.py",
        "tests/test_contract.py"}
    assert fake_install(src, tmp_path / "site") == "mrbench-my-algo"
    proc = run_own_tests(src, tmp_path / "site")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert passed(proc) == len(ALGORITHM_CHECKS) + 1
