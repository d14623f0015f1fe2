"""Re-check published numbers from their models: ``mrbench verify``.

For a result entry, the checkpoint is loaded from the zoo (:mod:`bench.zoo`) and a
sample of the entry's episodes is evaluated again under every scenario of the entry
(clean, shifts, attacks with the seeds the entry recorded, ensembles), then compared
episode by episode with the entry's per-episode file. Since manifests are hashed and
every random number of an evaluation is seeded from (suite seed, scenario, episode)
(or, in entries written before schema 3, from the episode's chunk), a re-run on the
same platform gives the same counts, bit for bit: a number whose entry and
per-episode file were edited together, or that came from another checkpoint, fails.

Tolerance (measured, see docs/zoo.md). On the same CPU kind and torch version the
comparison is exact. Elsewhere (another processor or kernel capability, another torch
version, a GPU), float rounding differs: clean and shift scenarios still agree exactly
on the published entries, while an attack can end on another point for a few queries.
Then a scenario passes when every episode is within ``tolerance`` queries of the
recorded count; the report says which tolerance applied and why.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from bench.errors import MrbenchError
from bench.protocol.scenarios import AttackCell, ShiftCell, parse

CROSS_PLATFORM_TOLERANCE = 2
"""Queries an attacked episode's correct count may differ by when the entry was computed on
another CPU kind or torch version (see the module docstring and docs/zoo.md)."""


@dataclass(frozen=True)
class Mismatch:
    scenario: str
    episode: int
    recorded: tuple[int, int]
    recomputed: tuple[int, int]


@dataclass
class VerifyResult:
    """The outcome of :func:`verify_entry`.

    :param episodes: the episodes re-run.
    :param scenarios: the scenarios compared.
    :param exact: whether the comparison had to be exact (same platform).
    :param mismatches: every episode outside the tolerance.
    :param within_tolerance: episodes that differed but within the cross-platform tolerance.
    """

    entry: Path
    weights_sha256: str
    episodes: list[int]
    scenarios: list[str]
    exact: bool
    why: str
    seconds: float = 0.0
    mismatches: list[Mismatch] = field(default_factory=list)
    within_tolerance: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def line(self) -> str:
        mode = "exact" if self.exact else f"within {CROSS_PLATFORM_TOLERANCE} queries ({self.why})"
        soft = f", {len(self.within_tolerance)} episode(s) within tolerance" if self.within_tolerance else ""
        status = "ok" if self.ok else f"MISMATCH on {len(self.mismatches)} episode(s)"
        return (f"{self.entry}: {status}: {len(self.scenarios)} scenario(s) x {len(self.episodes)} episode(s) "
                f"{self.episodes[:8]}{'...' if len(self.episodes) > 8 else ''}, checkpoint "
                f"{self.weights_sha256[:12]}, {mode}{soft}, {self.seconds:.1f} s")

    def error(self) -> MrbenchError:
        by: dict[str, list[Mismatch]] = {}
        for m in self.mismatches:
            by.setdefault(m.scenario, []).append(m)
        parts = [f"{name}: episode(s) " + ", ".join(f"{m.episode} (recorded {m.recorded[0]}/{m.recorded[1]}, "
                                                    f"recomputed {m.recomputed[0]}/{m.recomputed[1]})" for m in ms[:5])
                 + (f" and {len(ms) - 5} more" if len(ms) > 5 else "") for name, ms in by.items()]
        return MrbenchError(f"{self.entry} does not reproduce from checkpoint {self.weights_sha256[:12]}: "
                            + "; ".join(parts) + ".",
                            "The entry or its per-episode file was edited, or it was computed from another "
                            "checkpoint or with other code. Restore the files, or supersede the entry with a new "
                            "evaluation of the published checkpoint.")


def _scenarios(entry: Any) -> tuple[list[ShiftCell], list[AttackCell]]:
    """The shifts and attack cells that re-create the entry's scenarios (ensembles follow from them).

    :raises MrbenchError: a ``metrics`` key that is not a scenario name as mrbench writes it
        (the entry's scenario names were edited).
    """
    cells = [parse(name) for name in entry.metrics]
    return ([c for c in cells if isinstance(c, ShiftCell)], [c for c in cells if isinstance(c, AttackCell)])


def _check_components(entry: Any, registry: Any) -> None:
    """The components behind the entry must still compute what they computed then."""
    for name, info in (entry.scenarios or {}).items():
        if info.kind == "ensemble":
            continue
        kind = "attack" if info.kind == "attack" else "shift"
        cls = registry.get(kind, info.id)
        if info.version is not None and str(cls.version) != info.version:
            raise MrbenchError(f"Scenario {name}: {kind} {info.id!r} is version {cls.version} here, the entry used "
                               f"version {info.version}.", "Install the plugin version the entry records "
                               f"({info.provider} {info.provider_version}).")
        if info.kind == "attack" and info.options is not None:
            here = cls(dict(parse(name).options)).options.model_dump(mode="json")
            if here != info.options:
                raise MrbenchError(f"Scenario {name}: attack {info.id!r} now resolves to options {here}, the entry "
                                   f"used {info.options}.", "Its defaults changed without a version bump; install "
                                   f"{info.provider} {info.provider_version}.")


def _platform(entry: Any) -> tuple[bool, str]:
    """Whether this machine computes like the one that wrote ``entry`` (exact comparison)."""
    from bench.provenance import cpu_name

    env = entry.environment
    if env.torch_version != torch.__version__:
        return False, f"torch {env.torch_version} then, {torch.__version__} here"
    if not env.device.startswith("cpu"):
        return False, f"computed on {env.device}"
    if env.cpu is None:
        return False, "the entry does not record its CPU"
    if env.cpu != cpu_name():
        return False, f"computed on {env.cpu}, here {cpu_name()}"
    return True, "same CPU kind and torch version"


def _threads(device: str) -> int | None:
    """The torch thread count recorded in a device string ``cpu:x86_64x2threads``."""
    if device.startswith("cpu") and device.endswith("threads"):
        digits = device.rsplit("x", 1)[-1].removesuffix("threads")
        if digits.isdigit():
            return int(digits)
    return None


def choose_episodes(n: int, k: int | None, seed: int) -> list[int]:
    """``k`` of the episodes ``0..n-1`` drawn with ``seed`` (all of them for ``None``), sorted."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), k))


def verify_entry(path: str | Path, *, episodes: int | None = 3, seed: int = 0, device: str = "cpu",
                 data_root: str | Path | None = None, registry: Any = None,
                 progress: Callable[[str], None] | None = None) -> VerifyResult:
    """Re-run ``episodes`` episodes (chosen with ``seed``; ``None``: all) of the result entry at
    ``path`` from its zoo checkpoint and compare them with its per-episode file.

    :returns: the comparison; :meth:`VerifyResult.error` describes a failure.
    :raises MrbenchError: the entry is invalid or its checkpoint is not in the zoo.
    """
    from bench.evaluation import recompute
    from bench.execution import pick_device
    from bench.leaderboard.board import Problems, read_episodes
    from bench.plugins import get_registry
    from bench.results.schema import validate_entry
    from bench.suites import get_suite
    from bench.zoo import entry_checkpoint

    path = Path(path)
    started = time.perf_counter()
    registry = registry or get_registry()
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MrbenchError(f"{path} is not a readable result entry ({exc}).", "Pass an entry JSON file.") from None
    entry = validate_entry(raw, str(path))
    record = entry_checkpoint(entry)
    if entry.episodes_file is None:
        raise MrbenchError(f"{path} names no per-episode file, so nothing can be compared.",
                           "Only entries written with --out carry per-episode results.")
    problems = Problems()
    recorded = read_episodes(path.with_name(entry.episodes_file), problems)
    problems.raise_if_any(f"Reading {entry.episodes_file}")
    shifts, attacks = _scenarios(entry)
    _check_components(entry, registry)
    suite = get_suite(f"{entry.suite.id}@v{entry.suite.version}")
    ev = entry.evaluation
    chosen = choose_episodes(entry.suite.n_episodes, episodes, seed)
    exact, why = _platform(entry)
    threads, before = _threads(entry.environment.device), torch.get_num_threads()
    on_cpu = pick_device(device).type == "cpu"
    if not on_cpu:
        exact, why = False, "re-run on a GPU"
    if progress:
        progress(f"{path.name}: {len(entry.metrics)} scenario(s) on {len(chosen)} episode(s) from "
                 f"{record.weights_sha256[:12]}")
    try:
        if threads and on_cpu:
            torch.set_num_threads(threads)  # the recorded thread count: reductions split the same way
        got = recompute(entry.algorithm.id, suite, record, chosen, n_episodes=entry.suite.n_episodes,
                        options=entry.algorithm.options, shifts=shifts, attacks=attacks,
                        chunk_episodes=ev.chunk_episodes if ev else 25,
                        attack_seeds=ev.attack_seeds if ev else "chunk", device=device, data_root=data_root,
                        registry=registry, on="test" if entry.dataset.split == suite.test.split else "train")
    finally:
        torch.set_num_threads(before)
    result = VerifyResult(path, record.weights_sha256, chosen, list(entry.metrics), exact, why)
    for name in entry.metrics:
        for e in chosen:
            want = recorded.get(name, {}).get(e)
            have = got.get((name, e))
            if want == have:
                continue
            m = Mismatch(name, e, want or (-1, -1), have or (-1, -1))
            soft = (not exact and name != "clean" and want is not None and have is not None
                    and want[1] == have[1] and abs(want[0] - have[0]) <= CROSS_PLATFORM_TOLERANCE)
            (result.within_tolerance if soft else result.mismatches).append(m)
    result.seconds = time.perf_counter() - started
    return result


def live_entries(root: str | Path | None = None) -> list[Path]:
    """Every live (not superseded) entry of every leaderboard."""
    from bench.leaderboard import load_boards

    return [e.path for b in load_boards(root) for e in b.live]


def verify(paths: Sequence[str | Path], **kwargs: Any) -> list[VerifyResult]:
    """:func:`verify_entry` for each path; raises the first failure's error after checking all."""
    results = [verify_entry(p, **kwargs) for p in paths]
    failed = [r for r in results if not r.ok]
    if failed:
        errors = [r.error() for r in failed]
        raise MrbenchError(" ".join(e.message for e in errors), errors[0].hint)
    return results
