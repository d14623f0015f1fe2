"""MNIST digits as a 10-class dataset (a cross-domain target for Omniglot learners).

Read from the standard gzip'd idx files under ``<root>/mnist/``; ``meta-train`` is
the 60,000 training digits and ``meta-test`` the 10,000 test digits, sorted by label
(stably, so the original order is kept within a digit). Decoded arrays are cached
like Omniglot's.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np
import pydantic
import torch
from PIL import Image

from bench import components
from bench.components import Dataset, ImageSplit
from bench.data import check_split, content_revision, data_error, read_data_file, resolve_root
from bench.data.cache import load_cached
from bench.errors import DataError

__all__ = ["MNIST"]

NAME = "mnist"
LAYOUT = ("mnist/{train,t10k}-images-idx3-ubyte.gz", "mnist/{train,t10k}-labels-idx1-ubyte.gz")
#: Bump when decoding changes what the cached arrays hold.
DECODER_VERSION = "1"

# split -> (file prefix, number of digits in the official release)
_FILES = {"meta-train": ("train", 60000), "meta-test": ("t10k", 10000)}
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim
_SIDE = 28


def _error(path: Path, problem: str) -> DataError:
    return data_error(path, problem, NAME, LAYOUT)


def _gunzip(data: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        # EOFError: truncated stream; BadGzipFile (an OSError): not gzip or a CRC mismatch.
        raise _error(path, f"is not a complete gzip file ({exc}); it is truncated or corrupt") from exc


def _parse_idx(raw: bytes, path: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """An idx array, checking its magic number, its dims against ``shape`` and its size."""
    ndim = len(shape)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _error(path, f"holds {len(raw)} bytes after decompression, too few for an idx header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise _error(
            path, f"has idx magic number 0x{found:08x} where 0x{magic:08x} is expected; it is not this MNIST file"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims != shape:
        raise _error(path, f"declares the shape {dims} where the official file has {shape}")
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise _error(path, f"holds {len(raw)} bytes after decompression where its header implies {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _decode(split: str, files: dict[str, tuple[Path, bytes]], size: int) -> dict[str, np.ndarray]:
    _, n = _FILES[split]
    img_path, img_gz = files["images"]
    lab_path, lab_gz = files["labels"]
    images = _parse_idx(_gunzip(img_gz, img_path), img_path, _IMAGES_MAGIC, (n, _SIDE, _SIDE))
    labels = _parse_idx(_gunzip(lab_gz, lab_path), lab_path, _LABELS_MAGIC, (n,))
    if int(labels.max(initial=0)) > 9:
        raise _error(lab_path, f"holds the label {int(labels.max())}, outside the digits 0-9")
    order = np.argsort(labels, kind="stable")
    images, labels = images[order], labels[order]
    if size != _SIDE:
        lanczos = Image.Resampling.LANCZOS
        images = np.stack([np.asarray(Image.fromarray(x).resize((size, size), lanczos)) for x in images])
    return {"images": np.ascontiguousarray(images[:, None]), "labels": labels.astype(np.int64)}


class MNIST(Dataset):
    """MNIST: 10 digit classes, named ``"0"`` to ``"9"``; bright strokes on black.

    ``meta-train`` = the 60,000 training images, ``meta-test`` = the 10,000 test
    images, each sorted by label.
    """

    id = "mnist"
    splits = ("meta-train", "meta-test")

    class Options(components.Options):
        """:param image_size: output side in pixels (Lanczos resize only when not 28)."""

        image_size: int = pydantic.Field(default=28, ge=1)

    def load(self, split: str, root: str | Path | None = None) -> ImageSplit:
        """Decode (or read from the cache) one split; see :meth:`bench.components.Dataset.load`."""
        check_split(self, split)
        folder = resolve_root(root) / NAME
        prefix, _ = _FILES[split]
        files: dict[str, tuple[Path, bytes]] = {}
        h = hashlib.sha256()
        for kind, stem in (("images", "images-idx3"), ("labels", "labels-idx1")):
            path = folder / f"{prefix}-{stem}-ubyte.gz"
            data = read_data_file(path, NAME, LAYOUT)
            files[kind] = (path, data)
            h.update(hashlib.sha256(data).digest())
        size = self.options.image_size
        key = f"mnist-{prefix}-{h.hexdigest()[:32]}-d{DECODER_VERSION}-s{size}"
        arrays = load_cached(key, lambda: _decode(split, files, size))
        images = torch.from_numpy(arrays["images"])
        labels = torch.from_numpy(arrays["labels"])
        class_names = [str(d) for d in range(10)]
        return ImageSplit(images, labels, class_names, None, content_revision(images, labels, class_names))
