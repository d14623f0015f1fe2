from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real dataset root from ``MRBENCH_DATA``.

    In CI (``CI`` set) a missing or empty root fails the test loudly; on a developer
    machine it skips with the reason.
    """
    value = os.environ.get("MRBENCH_DATA")
    root = Path(value) if value else None
    if root is None or not (root / "omniglot").is_dir():
        msg = (
            f"MRBENCH_DATA={value!r} does not point at a dataset root with omniglot/ in it; "
            "set MRBENCH_DATA=../shared/data (the offline copies) to run the data tests."
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return root.resolve()


TINY_SUITE = """
id = "tiny-glyphs"
version = 1
description = "A tiny procedural-glyphs suite for fast tests."

[episodes]
n_way = 3
k_shot = 1
n_query = 4
n_episodes = 12
seed = 0

[train]
dataset = "procedural-glyphs"
split = "meta-train"
options = { n_alphabets = 10, classes_per_alphabet = 12, samples_per_class = 10 }

[test]
dataset = "procedural-glyphs"
split = "meta-test"
options = { n_alphabets = 10, classes_per_alphabet = 12, samples_per_class = 10 }
"""


@pytest.fixture(scope="session")
def _tiny_suites_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suites")
    (root / "tiny-glyphs" / "v1").mkdir(parents=True)
    (root / "tiny-glyphs" / "v1" / "suite.toml").write_text(TINY_SUITE)
    return root


@pytest.fixture
def tiny_suite(_tiny_suites_dir, monkeypatch) -> str:
    """The id of a tiny, file-free suite (3-way 1-shot, 12 episodes) made visible to the harness."""
    monkeypatch.setenv("MRBENCH_SUITES", str(_tiny_suites_dir))
    return "tiny-glyphs"
