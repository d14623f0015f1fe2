"""A content-keyed ``.npz`` cache of decoded dataset arrays.

Decoding an archive of PNGs takes seconds; reading the decoded arrays back takes
milliseconds. Callers build the key from a digest of the source file, a decoder
version and the preprocessing options, so a stale entry is never read: a new source
or decoder simply gets a new file.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from bench.data import cache_dir

__all__ = ["cache_path", "load_cached"]

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def cache_path(key: str) -> Path:
    """The cache file for ``key`` (which need not exist yet).

    :param key: letters, digits, ``.``, ``_`` and ``-`` only (it becomes a file name).
    """
    if not _KEY.fullmatch(key):
        raise ValueError(f"Cache key {key!r} must match {_KEY.pattern} (it is used as a file name).")
    return cache_dir() / f"{key}.npz"


def load_cached(key: str, decode: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays cached under ``key``, else ``decode()``'s arrays, cached for next time.

    An unreadable cache file (truncated, corrupt) is reported with a warning and
    decoded again; a cache folder that cannot be written is reported with a warning
    and the decoded arrays are returned anyway, since the cache only saves time.

    :param key: cache key; see :func:`cache_path`.
    :param decode: builds the arrays; called only on a cache miss. Arrays must not
        have ``object`` dtype (the cache is read with ``allow_pickle=False``).
    """
    path = cache_path(key)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            warnings.warn(
                f"Ignoring the unreadable decode cache file {path} ({exc}); decoding the data again "
                "and rewriting it.",
                RuntimeWarning,
                stacklevel=2,
            )
    arrays = decode()
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray) or arr.dtype == object:
            raise TypeError(f"Decoder for cache key {key!r} returned {name!r} that is not a plain numpy array.")
    try:
        _write_atomic(path, arrays)
    except OSError as exc:
        warnings.warn(
            f"Could not write the decode cache file {path} ({exc}); the data will be decoded again next "
            "time. Set MRBENCH_CACHE to a writable folder to cache it.",
            RuntimeWarning,
            stacklevel=2,
        )
    return arrays


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Readers (other processes too) see either no file or a complete one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a shared MRBENCH_CACHE needs others to read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
