"""Dataset files: where they live, how their errors read, and content digests.

The dataset root is chosen as ``--data-root`` (an explicit ``root``) >
``MRBENCH_DATA`` > a per-user folder; decoded arrays are cached under
:func:`cache_dir`. Every loader reports a missing or corrupt file with
:func:`data_error`, so the message always names the file and the same fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import Tensor

from bench.errors import DataError, MrbenchError

__all__ = [
    "cache_dir",
    "check_split",
    "content_revision",
    "data_error",
    "home_dir",
    "read_data_file",
    "resolve_root",
]


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser().absolute() if value else None


def home_dir() -> Path:
    """The per-user mrbench folder: ``$MRBENCH_HOME``, else ``$XDG_CACHE_HOME/mrbench``
    (``~/.cache/mrbench`` when ``XDG_CACHE_HOME`` is unset)."""
    home = _env_path("MRBENCH_HOME")
    if home is not None:
        return home
    xdg = _env_path("XDG_CACHE_HOME")
    return (xdg if xdg is not None else Path.home() / ".cache") / "mrbench"


def resolve_root(root: str | Path | None) -> Path:
    """The dataset root folder (it need not exist; loaders report missing files).

    :param root: an explicit root (``--data-root``); wins when given.
    :returns: ``root``, else ``$MRBENCH_DATA``, else ``home_dir() / "data"``
        (``~/.cache/mrbench/data`` by default), ``~`` expanded, made absolute.
    """
    if root is not None and str(root).strip():
        return Path(root).expanduser().absolute()
    env = _env_path("MRBENCH_DATA")
    return env if env is not None else home_dir() / "data"


def cache_dir() -> Path:
    """Where decoded arrays are cached: ``$MRBENCH_CACHE``, else ``home_dir() / "decoded"``
    (``~/.cache/mrbench/decoded`` by default). Created on first write."""
    env = _env_path("MRBENCH_CACHE")
    return env if env is not None else home_dir() / "decoded"


def data_error(path: Path, problem: str, name: str, layout: Sequence[str]) -> DataError:
    """The standard one-paragraph error for a missing or corrupt dataset file.

    :param path: the exact file at fault.
    :param problem: what is wrong with it, as the end of a sentence starting with
        the path (e.g. ``"does not exist"``).
    :param name: the dataset folder / download name (``omniglot``, ``mnist``).
    :param layout: the files expected under the root, relative to it.
    """
    where = ""
    if not path.exists() and not path.parent.exists():
        # Most often the root itself is wrong; say so instead of only naming the file.
        missing = next((p for p in path.parents if p.parent.exists() or p.parent == p), path.parent)
        where = f" (the folder {missing} does not exist either)"
    # `mrbench data download` keeps files that exist, so a bad one must go first.
    first = "delete the file and run" if path.is_file() else "run"
    return DataError(
        f"Dataset file {path} {problem}{where}.",
        f"Fix: {first} `mrbench data download {name}` where internet exists, or set "
        f"MRBENCH_DATA to a folder holding {name}/... with this layout: {', '.join(layout)}.",
    )


def read_data_file(path: Path, name: str, layout: Sequence[str]) -> bytes:
    """Read a whole dataset file, turning a missing or unreadable file into :func:`data_error`.

    :param path: the file.
    :param name: dataset folder name, for the error's fix.
    :param layout: expected files under the root, for the error's fix.
    """
    if not path.exists():
        raise data_error(path, "does not exist", name, layout)
    if not path.is_file():
        raise data_error(path, "is not a regular file", name, layout)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise data_error(path, f"cannot be read ({exc.strerror or exc})", name, layout) from exc


def check_split(dataset: Any, split: str) -> None:
    """Raise :class:`~bench.errors.MrbenchError` unless ``split`` is one of ``dataset.splits``.

    :param dataset: a :class:`~bench.components.Dataset` instance (its options may
        decide its splits).
    :param split: the requested split name.
    """
    if split not in dataset.splits:
        opts = ", ".join(f"{k}={v!r}" for k, v in dataset.options.model_dump().items())
        raise MrbenchError(
            f"Dataset {dataset.id!r} ({opts}) has no split {split!r}.",
            f"Its splits are: {', '.join(dataset.splits)}.",
        )


def content_revision(images: Tensor, labels: Tensor, class_names: Sequence[str]) -> str:
    """Digest (16 hex chars of sha256) of a split's decoded content.

    Covers the image shape and bytes, the labels and the class names, so any change
    in decoding, preprocessing or class order gives a new revision.
    """
    h = hashlib.sha256()
    imgs = np.ascontiguousarray(images.detach().cpu().numpy())
    h.update(json.dumps({"shape": list(imgs.shape), "dtype": str(imgs.dtype)}).encode())
    h.update(imgs.tobytes())
    h.update(np.ascontiguousarray(labels.detach().cpu().numpy().astype("<i8")).tobytes())
    h.update(json.dumps(list(class_names)).encode())
    return h.hexdigest()[:16]
