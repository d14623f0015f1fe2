"""Fetch the official dataset archives into ``<root>/<name>/`` (``mrbench data download``).

Each file is streamed to a temporary file next to its destination and renamed into
place only when complete (and, where the official checksum is known, verified), so
an interrupted download never leaves a partial archive under the expected name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from bench.data import resolve_root
from bench.errors import DataError, MrbenchError

__all__ = ["MD5", "URLS", "download"]

_OMNIGLOT = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
_TORCHMETA = (
    "https://raw.githubusercontent.com/tristandeleu/pytorch-meta/master/torchmeta/datasets/assets/omniglot"
)
# torchvision.datasets.MNIST's mirrors, in the order it now tries them.
_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

#: name -> file path under ``<root>/<name>/`` -> candidate URLs, tried in order.
URLS: dict[str, dict[str, tuple[str, ...]]] = {
    "omniglot": {
        "images_background.zip": (f"{_OMNIGLOT}/images_background.zip",),
        "images_evaluation.zip": (f"{_OMNIGLOT}/images_evaluation.zip",),
        "all_runs.zip": (f"{_OMNIGLOT}/one-shot-classification/all_runs.zip",),
        **{f"splits/vinyals/{s}.json": (f"{_TORCHMETA}/{s}.json",) for s in ("train", "val", "test")},
    },
    "mnist": {f: tuple(m + f for m in _MNIST_MIRRORS) for f in _MNIST_FILES},
}

#: (name, file path) -> md5 of the official file (torchvision's), checked after download.
MD5: dict[tuple[str, str], str] = {
    ("omniglot", "images_background.zip"): "68d2efa1b9178cc56df9314c21c6e718",
    ("omniglot", "images_evaluation.zip"): "6b91aef0f799c5bb55b94e3f2daec811",
    ("mnist", "train-images-idx3-ubyte.gz"): "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ("mnist", "train-labels-idx1-ubyte.gz"): "d53e105ee54ea40749a09fcbcd1e9432",
    ("mnist", "t10k-images-idx3-ubyte.gz"): "9fb629c4189551a2d022fa330f9573f3",
    ("mnist", "t10k-labels-idx1-ubyte.gz"): "ec29112dd5afa0611ce80d1b7f02629c",
}

_CHUNK = 1 << 16
_TIMEOUT_S = 60
# What a failed fetch can raise: URLError (no network, HTTP errors), timeouts and
# resets (OSError), a connection cut mid-body (IncompleteRead), a malformed URL.
_FETCH_ERRORS = (OSError, urllib.error.URLError, http.client.HTTPException, ValueError)

Progress = Callable[[Path, int, "int | None"], None]


class _ChecksumMismatch(Exception):
    pass


def download(
    name: str, root: str | Path | None = None, *, force: bool = False, progress: Progress | None = None
) -> list[Path]:
    """Download dataset ``name``'s official files into ``<root>/<name>/``.

    :param name: a key of :data:`URLS` (``omniglot``, ``mnist``).
    :param root: dataset root; ``None`` resolves it like the loaders
        (:func:`bench.data.resolve_root`).
    :param force: download files that already exist again (e.g. a corrupt archive).
    :param progress: called as ``progress(dest, bytes_done, bytes_total_or_None)``
        while a file arrives (the CLI draws its progress bar with it).
    :returns: the path of every file of the dataset, downloaded or already present.
    :raises bench.errors.MrbenchError: an unknown ``name``.
    :raises bench.errors.DataError: no URL of a file could be fetched (no network,
        HTTP error, checksum mismatch) or the destination cannot be written.
    """
    if name not in URLS:
        raise MrbenchError(
            f"No download is known for dataset {name!r}.",
            f"Known names: {', '.join(sorted(URLS))}.",
        )
    folder = resolve_root(root) / name
    paths = []
    for rel, urls in URLS[name].items():
        dest = folder / rel
        paths.append(dest)
        if dest.is_file() and not force:
            continue
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f"Cannot create the folder {dest.parent} for {name} ({exc.strerror or exc}).",
                "Pass a writable dataset root (--data-root or MRBENCH_DATA).",
            ) from exc
        failures = []
        for url in urls:
            try:
                _fetch(url, dest, MD5.get((name, rel)), progress)
                break
            except _FETCH_ERRORS as exc:
                failures.append(f"{url}: {_reason(exc)}")
            except _ChecksumMismatch as exc:
                failures.append(f"{url}: {exc}")
        else:
            raise DataError(
                f"Could not download {rel} of {name} into {dest}; tried {'; '.join(failures)}.",
                f"If this machine has no internet access, run `mrbench data download {name}` on one that "
                f"has and copy the {name}/ folder over, or set MRBENCH_DATA to a folder that already holds "
                f"{name}/{rel}.",
            )
    return paths


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    return f"{type(exc).__name__}: {exc}"


def _fetch(url: str, dest: Path, md5: str | None, progress: Progress | None) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
            total = int(length) if length and length.isdigit() else None
            done = 0
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(dest, done, total)
            if total is not None and done != total:
                raise http.client.IncompleteRead(b"", total - done)
            out.flush()
            os.fsync(out.fileno())
        if md5 is not None and digest.hexdigest() != md5:
            raise _ChecksumMismatch(f"md5 {digest.hexdigest()} differs from the official {md5}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
