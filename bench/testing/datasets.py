"""Contract checks every dataset plugin must pass (:data:`DATASET_CHECKS`).

They load every declared split (from ``MRBENCH_DATA`` or the cache folder, as
:meth:`bench.components.Dataset.load` resolves it when ``root`` is ``None``), so a
dataset that needs files is checked where its files are.
"""

from __future__ import annotations

from typing import Callable

import torch

from bench.components import Dataset, ImageSplit
from bench.errors import OptionsError
from bench.testing._common import KEBAB, ContractError

SPLITS = ("meta-train", "meta-val", "meta-test")


def _load(ds: Dataset, split: str) -> ImageSplit:
    out = ds.load(split)
    if not isinstance(out, ImageSplit):
        raise ContractError(f"Dataset {ds.id!r}: load({split!r}) returned {type(out).__name__}, not a "
                            "bench.components.ImageSplit")
    return out


def check_dataset_metadata(ds: Dataset) -> None:
    """A kebab-case ``id``, ``splits`` a non-empty subset of meta-train / meta-val /
    meta-test, a boolean ``needs_files`` and options that serialise into result entries."""
    problems = []
    if not KEBAB.fullmatch(str(ds.id)):
        problems.append(f"id {ds.id!r} is not kebab-case")
    if not tuple(ds.splits) or not set(ds.splits) <= set(SPLITS):
        problems.append(f"splits {tuple(ds.splits)!r} must be values from {', '.join(SPLITS)}")
    if not isinstance(ds.needs_files, bool):
        problems.append("needs_files must be a bool")
    if problems:
        raise ContractError(f"Dataset {ds.id!r}: " + "; ".join(problems))
    ds.options.model_dump(mode="json")


def check_dataset_splits_load(ds: Dataset) -> None:
    """Every declared split loads as an :class:`~bench.components.ImageSplit` (uint8
    images ``[N, C, H, W]``, labels grouped by class) with at least two images in each
    of at least two classes, and a non-empty ``revision``; different splits hold
    different classes."""
    names: dict[str, set[str]] = {}
    for split in ds.splits:
        s = _load(ds, split)
        if not s.revision:
            raise ContractError(f"Dataset {ds.id!r}: split {split!r} has no revision; set it to a digest of the "
                                "decoded images and labels, so results say which data they were measured on")
        if s.n_classes < 2 or int(s.counts.min()) < 2:
            raise ContractError(f"Dataset {ds.id!r}: split {split!r} has {s.n_classes} classes, the smallest with "
                                f"{int(s.counts.min()) if s.n_classes else 0} images; an episode needs at least two "
                                "classes of at least two images (one support, one query)")
        names[split] = set(s.class_names)
    for a in names:
        for b in names:
            if a < b and names[a] & names[b]:
                raise ContractError(f"Dataset {ds.id!r}: splits {a!r} and {b!r} share classes "
                                    f"({sorted(names[a] & names[b])[:3]}...); meta-test classes must be unseen")


def check_dataset_deterministic(ds: Dataset) -> None:
    """Loading a split twice gives the same images, labels and revision (a fresh instance
    too): the revision identifies the data."""
    for split in ds.splits:
        a, b = _load(ds, split), _load(type(ds)(ds.options.model_dump()), split)
        if a.revision != b.revision or not torch.equal(a.images, b.images) or not torch.equal(a.labels, b.labels):
            raise ContractError(f"Dataset {ds.id!r}: two loads of split {split!r} differ (revisions {a.revision} and "
                                f"{b.revision}); generate from a fixed seed, or decode deterministically")


def check_dataset_strict_options(ds: Dataset) -> None:
    """Unknown options are an error (:class:`bench.errors.OptionsError`)."""
    try:
        type(ds)(no_such_option_xyz=1)
    except OptionsError:
        return
    raise ContractError(f"Dataset {ds.id!r}: an unknown option was accepted; derive Options from "
                        "bench.components.Options")


DATASET_CHECKS: list[Callable[[Dataset], None]] = [
    check_dataset_metadata,
    check_dataset_splits_load,
    check_dataset_deterministic,
    check_dataset_strict_options,
]
"""Every dataset contract check."""
