"""Omniglot (Lake et al. 2015): the Vinyals and Lake class splits, and Lake's 20 runs.

Images are decoded from the official zips (``images_background.zip``,
``images_evaluation.zip``, ``all_runs.zip``) into uint8 ``[N, 1, s, s]`` with strokes
bright on a dark background: ``convert("L")``, Lanczos resize to ``s``, invert.
Each zip is decoded once into the cache (:func:`bench.data.cache.load_cached`),
keyed by the zip's sha256, the decoder version and ``s``; splits are assembled from
the cached arrays.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import pydantic
import torch
from PIL import Image

from bench import components
from bench.components import Dataset, EpisodeSpec, ImageSplit
from bench.data import check_split, content_revision, data_error, read_data_file, resolve_root
from bench.data.cache import load_cached
from bench.episodes import Manifest
from bench.errors import DataError

__all__ = ["Omniglot", "OmniglotLakeRuns"]

NAME = "omniglot"
LAYOUT = (
    "omniglot/images_background.zip",
    "omniglot/images_evaluation.zip",
    "omniglot/all_runs.zip",
    "omniglot/splits/vinyals/{train,val,test}.json",
)
#: Bump when decoding changes what the cached arrays hold.
DECODER_VERSION = "1"

# archive key -> (zip stem, alphabets, characters) of the official release.
_ARCHIVES = {
    "background": ("images_background", 30, 964),
    "evaluation": ("images_evaluation", 20, 659),
}
_DRAWERS = 20
_VINYALS_FILES = {"meta-train": "train.json", "meta-val": "val.json", "meta-test": "test.json"}
_LAKE_ARCHIVE = {"meta-train": "background", "meta-test": "evaluation"}
_ROTATIONS = (0, 90, 180, 270)
_RUNS = 20
_RUN_WAYS = 20
# What PIL and zlib raise on a broken PNG: UnidentifiedImageError and "truncated" are
# OSErrors, a bad chunk is a SyntaxError, odd headers give ValueError.
_BAD_IMAGE = (OSError, SyntaxError, ValueError, zlib.error, Image.DecompressionBombError)


def _error(path: Path, problem: str) -> DataError:
    return data_error(path, problem, NAME, LAYOUT)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _open_zip(data: bytes, path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        raise _error(
            path, f"is not a readable zip archive ({exc}); it is truncated, corrupt or not a zip file"
        ) from exc


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    # ZipFile.read checks each member's CRC-32, so corrupt bytes are caught here.
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError, ValueError) as exc:
        raise _error(path, f"has a corrupt member {info.filename} ({exc})") from exc


def _png_to_array(raw: bytes, size: int) -> np.ndarray:
    """One Omniglot PNG -> uint8 ``[size, size]``, strokes bright."""
    with Image.open(io.BytesIO(raw)) as im:
        gray = im.convert("L")
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.LANCZOS)
    # The PNGs are black strokes on white; invert so strokes are bright on dark.
    return 255 - np.asarray(gray, dtype=np.uint8)


def _decode_png(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, size: int) -> np.ndarray:
    raw = _read_member(zf, info, path)
    try:
        return _png_to_array(raw, size)
    except _BAD_IMAGE as exc:
        raise _error(path, f"has a member {info.filename} that is not a decodable PNG ({exc})") from exc


# --- the two image archives ---------------------------------------------------------


@dataclass(frozen=True)
class _Archive:
    """A decoded image archive: images grouped by character, sorted."""

    path: Path
    images: np.ndarray  # uint8 [N, 1, s, s]
    characters: list[str]  # "Alphabet/characterNN", sorted by (alphabet, character)
    offsets: np.ndarray
    counts: np.ndarray
    index: dict[str, int]


def _decode_archive(data: bytes, path: Path, key: str, size: int) -> dict[str, np.ndarray]:
    stem, n_alphabets, n_characters = _ARCHIVES[key]
    zf = _open_zip(data, path)
    entries: list[tuple[str, str, str, zipfile.ZipInfo]] = []
    for info in zf.infolist():
        parts = info.filename.split("/")
        # Skip directories and the litter some zip tools add (__MACOSX/, ._x, .DS_Store).
        if info.is_dir() or parts[0] == "__MACOSX" or parts[-1].startswith(".") or not parts[-1].endswith(".png"):
            continue
        if len(parts) != 4 or parts[0] != stem or not all(parts):
            raise _error(
                path,
                f"holds {info.filename}, outside the expected layout "
                f"{stem}/<Alphabet>/characterNN/<id>_<drawer>.png",
            )
        entries.append((parts[1], parts[2], parts[3], info))
    entries.sort(key=lambda e: e[:3])

    images = np.empty((len(entries), 1, size, size), dtype=np.uint8)
    characters: list[str] = []
    counts: list[int] = []
    for i, (alphabet, character, _, info) in enumerate(entries):
        images[i, 0] = _decode_png(zf, info, path, size)
        name = f"{alphabet}/{character}"
        if not characters or characters[-1] != name:
            characters.append(name)
            counts.append(0)
        counts[-1] += 1

    alphabets = {c.split("/")[0] for c in characters}
    short = [c for c, n in zip(characters, counts) if n != _DRAWERS]
    found = (len(alphabets), len(characters), len(entries))
    if found != (n_alphabets, n_characters, n_characters * _DRAWERS) or short:
        detail = f"; e.g. {short[0]} has {counts[characters.index(short[0])]} images" if short else ""
        raise _error(
            path,
            f"holds {len(alphabets)} alphabets, {len(characters)} characters and {len(entries)} images where "
            f"the official release has {n_alphabets}, {n_characters} and {n_characters * _DRAWERS} "
            f"({_DRAWERS} drawers per character){detail}; the archive is incomplete or not the Omniglot release",
        )
    return {
        "images": images,
        "characters": np.array(characters, dtype=np.str_),
        "counts": np.array(counts, dtype=np.int64),
    }


def _load_archive(root: Path, key: str, size: int) -> _Archive:
    stem = _ARCHIVES[key][0]
    path = root / NAME / f"{stem}.zip"
    data = read_data_file(path, NAME, LAYOUT)
    cache_key = f"omniglot-{stem}-{_sha256(data)[:32]}-d{DECODER_VERSION}-s{size}"
    arrays = load_cached(cache_key, lambda: _decode_archive(data, path, key, size))
    characters = [str(c) for c in arrays["characters"]]
    counts = arrays["counts"].astype(np.int64)
    return _Archive(
        path=path,
        images=arrays["images"],
        characters=characters,
        offsets=np.cumsum(counts) - counts,
        counts=counts,
        index={c: i for i, c in enumerate(characters)},
    )


def _vinyals_characters(root: Path, split: str) -> dict[str, list[str]]:
    """Archive key -> ``Alphabet/characterNN`` names that a Vinyals split file lists."""
    path = root / NAME / "splits" / "vinyals" / _VINYALS_FILES[split]
    raw = read_data_file(path, NAME, LAYOUT)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _error(path, f"is not valid JSON ({exc})") from exc
    shape = '{"background"|"evaluation": {alphabet: [characterNN, ...]}}'
    ok = isinstance(doc, dict) and set(doc) <= set(_ARCHIVES)
    ok = ok and all(
        isinstance(alphabets, dict)
        and all(isinstance(a, str) and isinstance(cs, list) and all(isinstance(c, str) for c in cs)
                for a, cs in alphabets.items())
        for alphabets in doc.values()
    )
    if not ok:
        raise _error(path, f"does not have the expected format {shape}")
    out: dict[str, list[str]] = {}
    for key, alphabets in doc.items():
        names = [f"{a}/{c}" for a, cs in alphabets.items() for c in cs]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise _error(path, f"lists the character {dup} twice")
        if names:
            out[key] = names
    return out


def _assemble(
    parts: list[tuple[_Archive, str]], rotations: bool
) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """Images, labels, class names and groups for characters ``parts`` (already sorted)."""
    blocks = []
    char_counts = np.empty(len(parts), dtype=np.int64)
    for i, (arch, name) in enumerate(parts):
        j = arch.index[name]
        o, n = int(arch.offsets[j]), int(arch.counts[j])
        blocks.append(arch.images[o : o + n])
        char_counts[i] = n
    base = torch.from_numpy(np.concatenate(blocks) if blocks else np.empty((0, 1, 1, 1), np.uint8))
    names = [name for _, name in parts]
    if not rotations:
        class_counts = char_counts
        images = base
        class_names = names
        groups = [n.split("/")[0] for n in names]
    else:
        n_rot = len(_ROTATIONS)
        # Class order: character-major, then rotation; each rotation of a character is a class.
        class_counts = np.repeat(char_counts, n_rot)
        class_offsets = np.cumsum(class_counts) - class_counts
        char_of = np.repeat(np.arange(len(parts)), char_counts)
        within = np.arange(len(base)) - np.repeat(np.cumsum(char_counts) - char_counts, char_counts)
        images = torch.empty((len(base) * n_rot, *base.shape[1:]), dtype=torch.uint8)
        for k in range(n_rot):
            dest = torch.from_numpy(class_offsets[char_of * n_rot + k] + within)
            images[dest] = torch.rot90(base, k, dims=(-2, -1))
        class_names = [f"{n}/rot{deg:03d}" for n in names for deg in _ROTATIONS]
        groups = [n.split("/")[0] for n in names for _ in _ROTATIONS]
    labels = torch.from_numpy(np.repeat(np.arange(len(class_counts), dtype=np.int64), class_counts))
    return images.contiguous(), labels, class_names, groups


class Omniglot(Dataset):
    """Omniglot characters as classes, 20 drawings each.

    ``split="vinyals"``: the character split of Vinyals et al. (2016), 1028 / 172 / 423
    characters for meta-train / meta-val / meta-test, each rotated by 0/90/180/270
    degrees into 4 classes (4112 / 688 / 1692 classes). ``split="lake"``: the 30
    background alphabets (964 characters) for meta-train and the 20 evaluation
    alphabets (659 characters) for meta-test, unrotated; there is no meta-val.

    Classes are sorted by (alphabet, character), then rotation, and named
    ``Alphabet/characterNN/rot090`` (``Alphabet/characterNN`` without rotations);
    ``groups`` holds each class's alphabet.
    """

    id = "omniglot"
    group_kind = "alphabet"
    splits = ("meta-train", "meta-val", "meta-test")

    class Options(components.Options):
        """:param split: ``vinyals`` or ``lake`` class split.
        :param image_size: output side in pixels (Lanczos from 105).
        :param rotations: rotated copies as extra classes; ``None``: on for vinyals, off for lake.
        """

        split: Literal["vinyals", "lake"] = "vinyals"
        image_size: int = pydantic.Field(default=28, ge=1)
        rotations: bool | None = None

    def __init__(self, options: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        # The instance's splits follow its options; the class attribute keeps the default's.
        self.splits = ("meta-train", "meta-test") if self.options.split == "lake" else type(self).splits

    @property
    def rotations(self) -> bool:
        """Whether rotated copies are extra classes (the resolved ``rotations`` option)."""
        r = self.options.rotations
        return self.options.split == "vinyals" if r is None else r

    def load(self, split: str, root: str | Path | None = None) -> ImageSplit:
        """Decode (or read from the cache) one split; see :meth:`bench.components.Dataset.load`."""
        check_split(self, split)
        root = resolve_root(root)
        size = self.options.image_size
        if self.options.split == "vinyals":
            wanted = _vinyals_characters(root, split)
        else:
            wanted = {_LAKE_ARCHIVE[split]: None}
        parts: list[tuple[_Archive, str]] = []
        for key in sorted(wanted):
            arch = _load_archive(root, key, size)
            names = wanted[key]
            if names is None:
                names = arch.characters
            else:
                missing = [n for n in names if n not in arch.index]
                if missing:
                    json_path = root / NAME / "splits" / "vinyals" / _VINYALS_FILES[split]
                    raise _error(
                        json_path,
                        f"names {len(missing)} character(s) that {arch.path} does not hold (e.g. {missing[0]} "
                        f"under {key!r}); the split file and the archive do not belong together",
                    )
            parts.extend((arch, n) for n in names)
        # Sort by (alphabet, character) as a tuple: plain string order would put
        # "Foo-Bar/..." before "Foo/...".
        parts.sort(key=lambda p: tuple(p[1].split("/")))
        images, labels, class_names, groups = _assemble(parts, self.rotations)
        return ImageSplit(images, labels, class_names, groups, content_revision(images, labels, class_names))


# --- Lake's 20 one-shot runs ----------------------------------------------------------

_LABELS_FILE = re.compile(r"(?P<dir>(?:[^/]+/)*?(?P<run>run\d+))/class_labels\.txt")


def _decode_runs(data: bytes, path: Path, size: int) -> dict[str, np.ndarray]:
    zf = _open_zip(data, path)
    members = {i.filename: i for i in zf.infolist() if not i.is_dir()}
    label_files = sorted((m for m in (_LABELS_FILE.fullmatch(n) for n in members) if m), key=lambda m: m["run"])
    if len(label_files) != _RUNS:
        raise _error(
            path, f"holds {len(label_files)} runs (runXX/class_labels.txt) where the official file has {_RUNS}"
        )
    images: list[np.ndarray] = []
    class_names: list[str] = []
    for m in label_files:
        run_dir, run = m["dir"], m["run"]
        prefix = run_dir[: len(run_dir) - len(run)]  # "" or a top folder such as "all_runs/"
        labels_name = m.group(0)
        try:
            text = _read_member(zf, members[labels_name], path).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _error(path, f"has a member {labels_name} that is not UTF-8 text ({exc})") from exc
        # Each line: "runXX/test/itemYY.png runXX/training/classZZ.png" (test item -> its class).
        test_of: dict[str, str] = {}
        for ln, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split()
            bad = len(fields) != 2 or not all(prefix + f in members for f in fields)
            if bad or fields[1] in test_of:
                raise _error(
                    path,
                    f"has a member {labels_name} whose line {ln} ({line.strip()!r}) is not "
                    "'<test png> <training png>' naming two images of the archive, each training image once",
                )
            test_of[fields[1]] = fields[0]
        training = sorted(
            n[len(prefix) :] for n in members if n.startswith(f"{run_dir}/training/") and n.endswith(".png")
        )
        if len(training) != _RUN_WAYS or set(training) != set(test_of) or len(set(test_of.values())) != _RUN_WAYS:
            raise _error(
                path,
                f"has a run {run} with {len(training)} training images and {len(test_of)} label lines where "
                f"{labels_name} should pair each of {_RUN_WAYS} training images with its own test image",
            )
        for train_name in training:
            images.append(_decode_png(zf, members[prefix + train_name], path, size))
            images.append(_decode_png(zf, members[prefix + test_of[train_name]], path, size))
            class_names.append(f"{run}/{train_name.rsplit('/', 1)[-1].removesuffix('.png')}")
    return {
        "images": np.stack(images)[:, None],
        "class_names": np.array(class_names, dtype=np.str_),
    }


class OmniglotLakeRuns(Dataset):
    """Lake et al.'s 20 official within-alphabet 20-way one-shot runs (``all_runs.zip``).

    ``meta-test`` has one class per (run, training image), 20 x 20 = 400 classes of 2
    images each: the training image first, then the test image that belongs to it
    (per the run's ``class_labels.txt``). :meth:`fixed_episodes` gives the 20 runs as
    20 episodes of a 20-way 1-shot 1-query manifest. Class names are
    ``runXX/classYY``; ``groups`` holds the run.
    """

    id = "omniglot-lake-runs"
    splits = ("meta-test",)
    domain = "omniglot"
    group_kind = "run"

    class Options(components.Options):
        """:param image_size: output side in pixels (Lanczos from 105)."""

        image_size: int = pydantic.Field(default=28, ge=1)

    def _arrays(self, root: str | Path | None) -> dict[str, np.ndarray]:
        size = self.options.image_size
        path = resolve_root(root) / NAME / "all_runs.zip"
        data = read_data_file(path, NAME, LAYOUT)
        key = f"omniglot-all_runs-{_sha256(data)[:32]}-d{DECODER_VERSION}-s{size}"
        return load_cached(key, lambda: _decode_runs(data, path, size))

    def load(self, split: str, root: str | Path | None = None) -> ImageSplit:
        """The 400 run classes; see :meth:`bench.components.Dataset.load`."""
        check_split(self, split)
        arrays = self._arrays(root)
        class_names = [str(c) for c in arrays["class_names"]]
        images = torch.from_numpy(arrays["images"])
        labels = torch.arange(len(class_names), dtype=torch.int64).repeat_interleave(2)
        groups = [c.split("/")[0] for c in class_names]
        return ImageSplit(images, labels, class_names, groups, content_revision(images, labels, class_names))

    def fixed_episodes(self, split: str, root: str | Path | None = None) -> Manifest:
        """The 20 runs: episode ``e`` is run ``e + 1``; label ``i`` is its ``i``-th training image.

        Image ids index :meth:`load`'s split: class ``c`` has its training image at
        ``2c`` (the support) and its test image at ``2c + 1`` (the query).
        """
        check_split(self, split)
        n_classes = len(self._arrays(root)["class_names"])
        classes = torch.arange(n_classes, dtype=torch.int64).reshape(-1, _RUN_WAYS)
        s = self.options.image_size
        spec = EpisodeSpec(n_way=_RUN_WAYS, k_shot=1, n_query=1, image_shape=(1, s, s))
        return Manifest(spec, classes, (2 * classes).unsqueeze(-1), (2 * classes + 1).unsqueeze(-1))
