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
