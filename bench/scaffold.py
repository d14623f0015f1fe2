"""``mrbench new-plugin``: generate a third-party algorithm plugin distribution.

The generated folder is a complete, installable distribution: a ``pyproject.toml``
with an entry point in the ``mrbench`` group, a module that registers an algorithm
skeleton (a working nearest-centroid learner on conv4, so it passes the contract
checks out of the box), ``tests/test_contract.py`` running the contract checks
through mrbench's pytest plugin, and a README with the submission steps.

Templates are plain strings formatted with :meth:`str.format` (literal braces are
doubled).
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from pathlib import Path

from bench.errors import MrbenchError

_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
_RESERVED = {"mrbench", "bench"}


@dataclass(frozen=True)
class PluginNames:
    """The names a plugin distribution is made of.

    :param dist: distribution (and entry-point) name, kebab-case, e.g. ``mrbench-myalgo``.
    :param module: the importable module, e.g. ``mrbench_myalgo``.
    :param algorithm_id: the algorithm's registry id, e.g. ``myalgo``.
    :param class_name: the algorithm class, e.g. ``Myalgo``.
    """

    dist: str
    module: str
    algorithm_id: str
    class_name: str


def plugin_names(name: str) -> PluginNames:
    """Derive the module, algorithm id and class name from a distribution name.

    :raises MrbenchError: when ``name`` is not kebab-case or is reserved.
    """
    if not _NAME.fullmatch(name or ""):
        raise MrbenchError(
            f"Plugin name {name!r} is not a kebab-case distribution name.",
            "Use lowercase letters, digits and single hyphens, starting with a letter, e.g. `mrbench-myalgo`.",
        )
    module = name.replace("-", "_")
    if name in _RESERVED or module in _RESERVED or keyword.iskeyword(module):
        raise MrbenchError(f"Plugin name {name!r} is reserved (it would shadow mrbench itself).",
                           "Pick a name of your own, e.g. `mrbench-myalgo`.")
    algorithm_id = name.removeprefix("mrbench-")
    class_name = "".join(part.capitalize() for part in algorithm_id.split("-"))
    if class_name[0].isdigit():
        class_name = "Algo" + class_name
    return PluginNames(name, module, algorithm_id, class_name)


PYPROJECT = '''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "A few-shot learner for the mrbench robustness benchmark"
requires-python = ">=3.10"
dependencies = ["mrbench"]

[project.optional-dependencies]
test = ["pytest>=8"]

# mrbench finds the plugin through this entry point: name = "module".
[project.entry-points.mrbench]
{dist} = "{module}"

[tool.setuptools.packages.find]
include = ["{module}*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

INIT = '''\
"""{dist}: an mrbench algorithm plugin.

mrbench imports this module through the ``mrbench`` entry point in pyproject.toml and
calls the hook below. Register every algorithm of the distribution here.
"""

from __future__ import annotations

from bench.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def mrbench_register_algorithms(register):
    # Import inside the hook: mrbench lists plugins without importing torch models.
    from {module}.algorithm import {class_name}

    register({class_name})
'''

ALGORITHM = '''\
"""{class_name}: a nearest-centroid learner on conv4 (the skeleton to change).

As generated it is a working baseline (squared Euclidean distance to the class means
of conv4 embeddings, i.e. a Prototypical Network) that passes mrbench's contract
checks. Change ``adapt`` / ``predict`` (and ``Options``, ``train_defaults``) into your
method; keep them pure (no in-place changes to inputs, no hidden state, static
shapes) so the harness can ``torch.func.vmap`` them and attacks can differentiate
through them. Run ``pytest`` after every change.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bench.components import Algorithm, EpisodeSpec, Params, TrainDefaults
from bench.nn import class_means, conv4, Conv4Options, init_conv4, sq_euclidean, SupportStatsBN


class {class_name}(SupportStatsBN, Algorithm):
    """Nearest class mean in a learned conv4 embedding.

    CHANGE: say what the method is, where it comes from and how its defaults were chosen.
    """

    # CHANGE: the registry id (kebab-case, never renamed once results are published).
    id = "{algorithm_id}"
    # Bump whenever the outputs for the same parameters may change.
    version = "1"

    class Options(Conv4Options):
        """CHANGE: add your options here (strict: unknown options are errors).

        Conv4Options gives ``hidden`` (channels) and ``bn`` (BatchNorm statistics:
        ``support``, non-transductive, or ``batch``, transductive)."""

    # SupportStatsBN declares ``bn_policy`` and derives ``transductive`` from ``bn``.
    # Without BatchNorm, drop the mixin and set ``transductive`` / ``bn_policy`` yourself.

    def init(self, spec: EpisodeSpec, generator: torch.Generator) -> Params:
        # Every parameter, drawn from ``generator`` only (the contract checks determinism).
        return init_conv4(generator, in_channels=spec.image_shape[0], hidden=self.options.hidden)

    def adapt(self, params: Params, x_support: Tensor, y_support: Tensor, *, n_way: int, train: bool = False) -> Any:
        # CHANGE: adapt to the support set. Return any pytree of tensors.
        z, stats = conv4(params, x_support)
        return {{"centroids": class_means(z, y_support, n_way), "stats": stats}}

    def predict(self, params: Params, state: Any, x_query: Tensor) -> Tensor:
        # CHANGE: logits [n_query, n_way]; the harness trains on their cross-entropy
        # (override ``loss`` or ``train_step`` for another objective).
        z, _ = conv4(params, x_query, self.query_stats(state["stats"]))
        return -sq_euclidean(z, state["centroids"])

    def train_defaults(self, spec: EpisodeSpec) -> TrainDefaults:
        # CHANGE: the outer-loop settings your method is trained with by default.
        return TrainDefaults(meta_batch=1, lr=1e-3, steps=5000)
'''

TEST_CONTRACT = '''\
"""mrbench's contract checks on this plugin's algorithm (run: ``pytest``).

``mrbench_check`` comes from mrbench's pytest plugin (installed with mrbench): the
test runs once per check in ``bench.testing.ALGORITHM_CHECKS``. Without the fixture,
``test_contract = bench.testing.algorithm_contract_tests({class_name})`` does the same.
"""

from __future__ import annotations

from bench.plugins import get_registry
from {module}.algorithm import {class_name}


def test_contract(mrbench_check):
    # Add a line per option set that changes the computation, e.g. {class_name}(bn="batch").
    mrbench_check({class_name}())


def test_registered_through_the_entry_point():
    # Needs the distribution installed (pip install -e .): mrbench finds it by its entry point.
    registry = get_registry()
    cls = registry.get("algorithm", {class_name}.id)
    assert cls.provenance.distribution == "{dist}"
'''

README = '''\
# {dist}

An algorithm plugin for mrbench, registering `{algorithm_id}`.

Generated by `mrbench new-plugin {dist}`. As generated, `{algorithm_id}` is a
nearest-centroid learner on conv4 (a Prototypical Network) that passes mrbench's
contract checks; change it into your method.

## Steps

1. Install it next to mrbench: `pip install -e .` (mrbench finds it through the
   `mrbench` entry point in `pyproject.toml`; `mrbench plugins` lists it).
2. Implement your method in `{module}/algorithm.py` (the `CHANGE:` comments say
   where). Keep `init` / `adapt` / `predict` pure and `torch.func`-friendly.
3. `pytest`: runs mrbench's contract checks on it (`tests/test_contract.py`, through
   mrbench's pytest plugin) and checks that the entry point registers it.
4. Train and evaluate on a suite (`mrbench suites` lists them):

   ```bash
   mrbench train {algorithm_id} --suite omniglot-5w1s --out runs/{algorithm_id}.pt
   mrbench evaluate {algorithm_id} --suite omniglot-5w1s --checkpoint runs/{algorithm_id}.pt \\
       --out runs/{algorithm_id}.json
   ```

5. Submit: in a clone of mrbench, copy `runs/{algorithm_id}.json` and
   `runs/{algorithm_id}.episodes.csv` into `leaderboards/<suite>/v<N>/entries/`, run
   `mrbench leaderboard build && mrbench leaderboard check`, and open a pull request
   (see mrbench's CONTRIBUTING.md). Publish this distribution so reviewers can
   reproduce the entry.
'''

FILES = {
    "pyproject.toml": PYPROJECT,
    "README.md": README,
    "{module}/__init__.py": INIT,
    "{module}/algorithm.py": ALGORITHM,
    "tests/test_contract.py": TEST_CONTRACT,
}


def _check_id_free(algorithm_id: str) -> None:
    """An algorithm id already registered here would make both plugins fail to load together."""
    from bench.plugins import get_registry

    registry = get_registry()
    known = registry.ids("algorithm")
    if algorithm_id in known:
        prov = getattr(registry.get("algorithm", algorithm_id), "provenance", None)
        raise MrbenchError(
            f"Algorithm id {algorithm_id!r} is already registered (by {prov.distribution if prov else 'mrbench'}); "
            "a second plugin with that id could not be installed next to it.",
            f"Pick another NAME, e.g. `mrbench-{algorithm_id}-v2`. Registered algorithms: {', '.join(sorted(known))}.")


def new_plugin(name: str, directory: str | Path = ".") -> Path:
    """Write a plugin distribution skeleton to ``directory/name`` and return that folder.

    :raises MrbenchError: for a bad name, or when the folder exists and is not empty
        (nothing is overwritten).
    """
    names = plugin_names(name)
    _check_id_free(names.algorithm_id)
    target = Path(directory) / names.dist
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise MrbenchError(f"{target} already exists and is not an empty folder; mrbench new-plugin writes nothing there.",
                           "Pick another NAME or --dir, or remove that folder.")
    fields = {"dist": names.dist, "module": names.module, "algorithm_id": names.algorithm_id,
              "class_name": names.class_name}
    for rel, template in FILES.items():
        path = target / rel.format(**fields)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**fields))
    return target
