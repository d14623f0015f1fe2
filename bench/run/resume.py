"""Resumable, sharded evaluation: the partial file, the shard grid and finished entries.

While :func:`bench.evaluate` runs, every finished chunk's per-episode results are
appended to ``RESULT.episodes.partial.jsonl`` next to the entry: a first line
``{"key": ...}`` naming the settings (:attr:`bench.evaluation._Plan.key`), then one
line per (scenario, episode)::

    {"episode": 3, "scenario": "clean", "correct": 4, "total": 5, "groups": [[1, 1], [3, 4]]}

(``groups``: clean counts per class group, where the dataset has groups). A re-run with
the same settings resumes from it; ``N`` processes started with ``shard=(K, N)`` share
it, each computing the chunks ``c`` of the fixed grid with ``c % N == K``. The file is
deleted once the entry is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from bench.errors import MrbenchError

Counts = dict[tuple[str, int], tuple[int, int]]
"""``(scenario, episode) -> (correct, total)``."""

GroupCounts = dict[int, list[list[int]]]
"""``episode -> [[correct, total] per class group]`` of the clean scenario."""


def partial_path(out: Path) -> Path:
    """The partial file of the entry at ``out`` (``x.json`` -> ``x.episodes.partial.jsonl``)."""
    return out.with_name(out.name.removesuffix(".json") + ".episodes.partial.jsonl")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        k, n = -1, 0
    if not 0 <= k < n:
        raise MrbenchError(f"Bad shard {text!r}.", "Write it as K/N with 0 <= K < N, e.g. 0/2 and 1/2 for two processes.")
    return k, n


def shard_chunks(chunks: list[list[int]], shard: tuple[int, int] | None) -> list[list[int]]:
    """The chunks of the grid that shard ``(K, N)`` computes (all of them without a shard)."""
    return chunks if shard is None else chunks[shard[0] :: shard[1]]


def finished(out: Path, run_key: str, replace: bool = False) -> dict[str, Any] | None:
    """The entry already at ``out`` when it is this evaluation's finished result, so a
    re-run (or a shard started late) returns it instead of recomputing hours of attacks;
    an error, not an overwrite, when ``out`` holds another result (``None`` when ``replace``)."""
    try:
        entry = json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        if replace:
            return None
        raise MrbenchError(f"{out} exists but is not a readable result entry ({exc}).",
                           "Pass another --out, or delete the file to evaluate again.") from None
    if isinstance(entry, dict) and entry.get("run_key") == run_key:
        return entry
    if replace:
        return None
    why = ("was written by an mrbench without run keys, so it cannot be matched to this evaluation"
           if isinstance(entry, dict) and entry.get("kind") == "mrbench-result" and "run_key" not in entry
           else "holds the result of a different evaluation (checkpoint, episodes, options, scenarios or sanity settings)")
    raise MrbenchError(f"{out} already exists and {why}.",
                       "Pass another --out, or delete the file (and its .episodes.csv) to evaluate again.")


def _read_partial(partial: Path, key: str) -> tuple[Counts, GroupCounts] | None:
    """Per-(scenario, episode) results saved in ``partial``; ``None`` when it was written
    for other settings (another key). Unreadable lines (a torn write from a crash) are
    skipped: those episodes are computed again."""
    lines = partial.read_text().splitlines()
    if not lines or json.loads(lines[0]).get("key") != key:
        return None
    done: Counts = {}
    by_group: GroupCounts = {}
    for line in lines[1:]:
        try:
            rec = json.loads(line)
            done[(rec.get("scenario", "clean"), int(rec["episode"]))] = (int(rec["correct"]), int(rec["total"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if "groups" in rec:
            by_group[int(rec["episode"])] = rec["groups"]
    return done, by_group


def _append(path: Path, text: str) -> None:
    """Append ``text`` under an exclusive lock, so shards sharing the file never interleave."""
    with open(path, "a") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: shards must not share a file there
            f.write(text)
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(text)
            f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Progress:
    """What an evaluation has computed so far, mirrored in its partial file.

    :param key: the settings digest that heads the partial file.
    :param names: every scenario of the evaluation.
    :param n_episodes: episodes of the evaluation (``0..n_episodes-1``).
    :param partial: the partial file (``None``: the evaluation writes nothing).
    :param done: counts computed here or read back from the partial file.
    :param by_group: clean counts per class group, per episode.
    """

    key: str
    names: list[str]
    n_episodes: int
    partial: Path | None = None
    done: Counts = field(default_factory=dict)
    by_group: GroupCounts = field(default_factory=dict)

    @classmethod
    def open(cls, out: Path | None, key: str, names: list[str], n_episodes: int,
             shard: tuple[int, int] | None = None) -> Progress:
        """Resume from the partial file of ``out`` when it holds these settings; start it
        afresh otherwise (a file of other settings is deleted).

        :raises MrbenchError: ``shard`` without ``out``, whose partial file the shards share.
        """
        partial = partial_path(out) if out is not None else None
        if shard is not None and partial is None:
            raise MrbenchError("A sharded evaluation needs --out: the shards share its partial file.",
                               "Pass the same --out to every shard.")
        progress = cls(key, names, n_episodes, partial)
        if partial is not None and partial.exists():
            saved = _read_partial(partial, key)
            if saved is None:
                partial.unlink()
            else:
                progress.done, progress.by_group = saved
        if partial is not None and not partial.exists():
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({"key": key}) + "\n")
        return progress

    def missing(self, ids: Iterable[int]) -> bool:
        """Whether a scenario of one of the episodes ``ids`` is still to compute."""
        return any((n, e) not in self.done for n in self.names for e in ids)

    def record(self, results: list[tuple[str, int, int, int]], groups: GroupCounts) -> None:
        """Save a chunk's ``(scenario, episode, correct, total)`` rows and clean group counts:
        on disk first, so a count reported as saved is saved."""
        if self.partial is not None:
            _append(self.partial, "".join(json.dumps({"episode": e, "scenario": n, "correct": c, "total": t}
                                                     | ({"groups": groups[e]} if n == "clean" and e in groups else {}))
                                          + "\n" for n, e, c, t in results))
        self.done.update(((n, e), (c, t)) for n, e, c, t in results)
        self.by_group.update(groups)

    def clean_accuracy(self) -> float:
        """Accuracy over every clean query computed so far (for the progress display)."""
        clean = [v for (n, _), v in self.done.items() if n == "clean"]
        return sum(c for c, _ in clean) / max(1, sum(t for _, t in clean))

    def complete(self) -> bool:
        """Whether every scenario of every episode is computed."""
        return not self.missing(range(self.n_episodes))

    def interrupted(self) -> MrbenchError:
        """The error to raise when the evaluation is interrupted, saying how much is saved."""
        n_done = sum(all((n, e) in self.done for n in self.names) for e in range(self.n_episodes))
        where = f"; {n_done}/{self.n_episodes} episodes saved to {self.partial}" if self.partial else ""
        return MrbenchError(f"Evaluation interrupted{where}.", "Run the same command again to resume.")

    def gather_shards(self, shard: tuple[int, int]) -> bool:
        """After shard ``shard`` finished its chunks: add what the other shards saved since
        it started. ``True`` when every episode is done, so this shard writes the entry;
        ``False`` when some are not yet, or another shard already wrote it (and removed
        the partial file).

        :raises MrbenchError: the partial file was restarted with other settings meanwhile.
        """
        assert self.partial is not None  # open() refuses a shard without a partial file
        if not self.partial.exists():
            return False
        saved = _read_partial(self.partial, self.key)
        if saved is None:
            raise MrbenchError(
                f"{self.partial} was restarted with other settings while shard {shard[0]}/{shard[1]} ran.",
                "Start every shard with the same arguments.")
        self.done.update(saved[0])
        self.by_group.update(saved[1])
        return self.complete()

    def close(self) -> None:
        """Delete the partial file once the entry is written."""
        if self.partial is not None:
            self.partial.unlink(missing_ok=True)
