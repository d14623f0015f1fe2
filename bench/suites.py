"""Suites: frozen evaluation protocols, read from ``leaderboards/<suite>/v<N>/suite.toml``.

A suite fixes the dataset and split, the episode spec, the number of episodes and
the seed; the manifest those determine is pinned by its sha256 in the file, and
any change that can move a number bumps the version (a new folder, a new table).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.components import EpisodeSpec
from bench.errors import MrbenchError

if TYPE_CHECKING:
    from bench.components import Dataset, ImageSplit
    from bench.episodes import Manifest
    from bench.plugins import Registry


@dataclass(frozen=True)
class DataRef:
    """A dataset id, its options and a split name."""

    dataset: str
    split: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    """A versioned evaluation protocol.

    :param id: suite id (kebab-case).
    :param version: MAJOR version; tables never mix versions.
    :param spec: the test episode spec.
    :param n_episodes: test episodes (ignored when the dataset defines fixed episodes).
    :param seed: manifest seed.
    :param train: the data meta-training draws from.
    :param test: the data the fixed test episodes come from.
    :param manifest_sha256: pinned digest of the test manifest (``None`` until pinned).
    :param revision: pinned content revision of the decoded test split.
    :param fixed_episodes: take the dataset's own episode set (Lake's runs).
    :param train_query: queries per class in meta-training episodes (default: the test spec's).
    :param attacks: the ``[attacks]`` table: the suite's default attack grid
        (``attacks``, ``eps``, ``targets``), its eps ``sweep``, and the ensemble with
        the fixed episode subset it runs on (``ensemble``, ``ensemble_episodes``), and the
        poisoning ensemble for the support and both targets run on that subset
        (``poison_ensemble``), and the sanity checks' reference attacks (``sanity``,
        :mod:`bench.protocol.sanity`).
    :param shifts: the ``[shifts]`` table: the suite's shift grid (``corruptions`` at
        every one of ``severities``, plus ``extra`` ``id@severity`` cells); see
        :func:`bench.protocol.scenarios.shift_grid`.
    :param path: the file it was read from.
    """

    id: str
    version: int
    description: str
    spec: EpisodeSpec
    n_episodes: int
    seed: int
    train: DataRef
    test: DataRef
    manifest_sha256: str | None = None
    revision: str | None = None
    fixed_episodes: bool = False
    train_query: int | None = None
    attacks: dict[str, Any] | None = None
    shifts: dict[str, Any] | None = None
    path: Path | None = None

    @property
    def ref(self) -> str:
        return f"{self.id}@v{self.version}"


def suites_dirs() -> list[Path]:
    """Folders searched for suites: ``MRBENCH_SUITES`` (os.pathsep-separated), then the
    repository's ``leaderboards/``."""
    dirs = [Path(p) for p in os.environ.get("MRBENCH_SUITES", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[1] / "leaderboards")
    return dirs


def read_suite(path: Path) -> Suite:
    """Read one ``suite.toml``.

    :raises MrbenchError: the file is not a valid suite.
    """
    from bench.protocol.sanity import sanity_references

    try:
        raw = tomllib.loads(path.read_text())
        ep = raw["episodes"]
        sanity_references(raw.get("attacks"), str(path))  # a bad [attacks.sanity] fails here, not after a run
        return Suite(
            id=raw["id"],
            version=int(raw["version"]),
            description=raw.get("description", ""),
            spec=EpisodeSpec(int(ep["n_way"]), int(ep["k_shot"]), int(ep["n_query"])),
            n_episodes=int(ep["n_episodes"]),
            seed=int(ep["seed"]),
            train=DataRef(raw["train"]["dataset"], raw["train"]["split"], dict(raw["train"].get("options", {}))),
            test=DataRef(raw["test"]["dataset"], raw["test"]["split"], dict(raw["test"].get("options", {}))),
            manifest_sha256=raw["test"].get("manifest_sha256"),
            revision=raw["test"].get("revision"),
            fixed_episodes=bool(raw["test"].get("fixed_episodes", False)),
            train_query=raw["train"].get("n_query"),
            attacks=dict(raw["attacks"]) if "attacks" in raw else None,
            shifts=dict(raw["shifts"]) if "shifts" in raw else None,
            path=path,
        )
    except (KeyError, ValueError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise MrbenchError(f"Suite file {path} is invalid: {type(exc).__name__}: {exc}.",
                           "Compare it with a suite under leaderboards/ (fields id, version, [episodes], [train], [test]).") from None


def all_suites() -> dict[str, Suite]:
    """Every suite found, keyed by ``id@vN``; the bare ``id`` maps to its latest version."""
    found: dict[str, Suite] = {}
    for root in suites_dirs():
        for path in sorted(root.glob("*/v*/suite.toml")):
            s = read_suite(path)
            found.setdefault(s.ref, s)
    latest: dict[str, Suite] = {}
    for s in found.values():
        if s.id not in latest or s.version > latest[s.id].version:
            latest[s.id] = s
    return {**found, **latest}


def get_suite(name: str) -> Suite:
    """Look a suite up by ``id`` (latest version) or ``id@vN``.

    :raises MrbenchError: an unknown suite, listing the known ones; for an unknown
        version of a known suite, its versions (and that a lower one was retired).
    """
    suites = all_suites()
    if name in suites:
        return suites[name]
    known = sorted(k for k in suites if "@" not in k)
    suite_id, at, version = name.partition("@")
    if at and suite_id in suites:
        latest = suites[suite_id]
        versions = ", ".join(k for k in sorted(suites) if k.startswith(f"{suite_id}@"))
        m = re.fullmatch(r"v(\d+)", version)
        if m and int(m.group(1)) < latest.version:
            raise MrbenchError(
                f"Suite {name} was retired; the versions of {suite_id} available are {versions} (the latest one's "
                f"file, {_display(latest.path)}, says what changed).",
                f"Use --suite {suite_id} (its latest version); `mrbench suites` lists the suites and their versions.")
        raise MrbenchError(f"Suite {suite_id} has no version {version!r}; its versions: {versions}.",
                           f"Use --suite {suite_id} (the latest version); `mrbench suites` lists every suite.")
    guess = difflib.get_close_matches(suite_id, known, n=1)
    raise MrbenchError(f"Unknown suite {name!r}.{f' Did you mean {guess[0]!r}?' if guess else ''}",
                       f"Known suites: {', '.join(known) or '(none)'}. Run `mrbench suites` to list them with their "
                       "versions.")


def _display(path: Path | None) -> str:
    """``path`` relative to the working directory where it is under it."""
    if path is None:
        return "(unknown file)"
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_data(ref: DataRef, registry: "Registry", root: str | Path | None = None) -> tuple["Dataset", "ImageSplit"]:
    """Instantiate the dataset of ``ref`` through the registry and load its split."""
    dataset = registry.create("dataset", ref.dataset, ref.options)
    splits = getattr(dataset, "splits", ())
    if ref.split not in splits:
        raise MrbenchError(f"Dataset {ref.dataset!r} has no split {ref.split!r}.", f"Its splits: {', '.join(splits)}.")
    return dataset, dataset.load(ref.split, root)


def suite_manifest(suite: Suite, registry: "Registry", root: str | Path | None = None,
                   n_episodes: int | None = None, on: str = "test") -> tuple["Manifest", "ImageSplit", "Dataset"]:
    """The suite's fixed test manifest and the split it indexes.

    The regenerated manifest is checked against the hash the suite file pins, so a
    changed sampler or dataset cannot silently move a number.

    :param on: ``test`` (the suite's episodes) or ``train``: episodes of the same spec,
        count and seed drawn from the meta-training classes (the meta-train vs
        meta-test gap); their manifest is not pinned and is no leaderboard number.
    """
    from bench.episodes import make_manifest

    if on == "train":
        dataset, split = load_data(suite.train, registry, root)
        manifest = make_manifest(split, suite.spec, n_episodes or suite.n_episodes, suite.seed)
        return manifest, split, dataset
    if on != "test":
        raise ValueError(f"on must be 'test' or 'train', not {on!r}")
    dataset, split = load_data(suite.test, registry, root)
    if suite.fixed_episodes:
        manifest = dataset.fixed_episodes(suite.test.split, root)
        if manifest is None:
            raise MrbenchError(f"Suite {suite.ref} asks for fixed episodes but dataset {suite.test.dataset!r} defines none.")
    else:
        manifest = make_manifest(split, suite.spec, suite.n_episodes, suite.seed)
    if suite.revision and split.revision != suite.revision:
        raise MrbenchError(
            f"The {suite.test.dataset} {suite.test.split} split decodes to revision {split.revision}, but "
            f"{suite.path} pins {suite.revision}: the archive or the decoder differs from the one the suite was made with.",
            "Use the official archives (`mrbench data check NAME` prints the revision), or publish a new suite version.",
        )
    if suite.manifest_sha256 and manifest.sha256() != suite.manifest_sha256:
        raise MrbenchError(
            f"The test manifest of suite {suite.ref} hashes to {manifest.sha256()}, but {suite.path} pins "
            f"{suite.manifest_sha256}: the dataset decoding or the episode sampler changed.",
            "Numbers from this run would not be comparable with the suite's table: restore the original "
            "data/code, or publish a new suite version.",
        )
    if n_episodes is not None and n_episodes < manifest.n_episodes:
        manifest = manifest[:n_episodes]  # a prefix of the fixed episodes, still comparable episode by episode
    return manifest, split, dataset
