"""External evaluations: a new attack (or shift) against every published model of a suite.

Every model on a suite's leaderboard has its checkpoint in the zoo, so an attack
written after the models were published, first- or third-party, can be run against
all of them with one call (``mrbench evaluate --zoo SUITE --attacks ...``). Each model
gets an ordinary result entry; filed next to the model's own entries, it shows in the
model's row of the robustness table, and its numbers enter the model's best-known
robust accuracy (:func:`bench.leaderboard.best_known`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from bench.errors import MrbenchError


@dataclass(frozen=True)
class PublishedModel:
    """A model of a leaderboard: its zoo record and the options its row was evaluated with.

    :param entry: the file name of the model's row entry.
    """

    record: Any
    algorithm: str
    options: dict[str, Any]
    entry: str

    @property
    def label(self) -> str:
        return f"{self.algorithm}-{self.record.weights_sha256[:12]}"


def published_models(suite: str, root: str | Path | None = None) -> list[PublishedModel]:
    """The models of ``suite``'s leaderboard (latest version with entries): one per row."""
    from bench.leaderboard import find_board
    from bench.zoo import entry_checkpoint

    board = find_board(suite, root)
    return [PublishedModel(entry_checkpoint(e.entry), e.entry.algorithm.id, dict(e.entry.algorithm.options), e.name)
            for e in board.ranked]


def evaluate_zoo(suite: str, out_dir: str | Path, *, attacks: Sequence[Any] = (),
                 shifts: Sequence[tuple[str, int]] = (), n_episodes: int | None = None, tag: str | None = None,
                 root: str | Path | None = None, on_model: Callable[[PublishedModel], None] | None = None,
                 **kwargs: Any) -> list[dict[str, Any]]:
    """Evaluate ``attacks`` / ``shifts`` against every published model of ``suite``.

    Writes ``<out_dir>/<algorithm>-<digest12>-<tag>.json`` (and its per-episode file) per
    model; a re-run resumes or returns the finished ones, like :func:`bench.evaluate`.

    :param n_episodes: the suite's episodes (default) or its declared ensemble subset.
    :param tag: the file name's last part (default: the attack ids, joined by ``+``).
    :param kwargs: passed on to :func:`bench.evaluate` (device, reporter, shard, ...).
    :returns: the entries (``None`` for a shard that did not finish a model).
    """
    from bench.evaluation import evaluate
    from bench.suites import get_suite

    if not attacks and not shifts:
        raise MrbenchError("Nothing to evaluate: no attack and no shift given.", "Pass --attacks (or --shift).")
    s = get_suite(suite)
    models = published_models(s.ref, root)
    if not models:
        raise MrbenchError(f"The leaderboard of {s.ref} has no models.", "Publish an entry first.")
    tag = tag or "+".join(dict.fromkeys(a.attack for a in attacks)) or "shifts"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for m in models:
        if on_model:
            on_model(m)
        entries.append(evaluate(m.algorithm, s, m.record, out=out_dir / f"{m.label}-{tag}.json", n_episodes=n_episodes,
                                options=m.options, attacks=attacks, shifts=shifts, **kwargs))
    return entries
