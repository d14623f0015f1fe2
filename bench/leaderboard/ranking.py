"""Ranking: the rows of a leaderboard table, in rank order, with ties decided by a paired test.

See :mod:`bench.leaderboard` for the rule. A row's entry is merged with the entries
that supplement it (ensemble-subset runs, external evaluations), so every renderer
shows the same scenarios for it; :func:`best_known` compares the attacks of a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.leaderboard.board import Board, Entry, attack_cell
from bench.results.schema import ResultEntry
from bench.results.stats import mean_ci95, paired_t_test

ALPHA = 0.05
"""Significance level of the paired test that separates adjacent ranks."""

SECTIONS = (("non-transductive", False), ("transductive", True))
"""The ranking groups in table order, ``(name, transductive)``: each is ranked on its own."""


@dataclass(frozen=True)
class Row:
    """A table row.

    :param section: ``non-transductive`` or ``transductive``.
    :param rank: ``"3"``, or ``"1="`` for a member of a tie group.
    :param p_vs_above: p-value of the paired test against the row above (``None`` for the first).
    """

    section: str
    rank: str
    entry: Entry
    p_vs_above: float | None


def rank(board: Board, alpha: float = ALPHA) -> list[Row]:
    """The board's live entries as ranked rows, non-transductive section first.

    :param board: a loaded, checked board.
    :param alpha: significance level of the paired test between adjacent rows.
    """
    rows: list[Row] = []
    ranked = [_with_supplements(e, board.supplements) for e in board.ranked]
    for section, transductive in SECTIONS:
        items = sorted((e for e in ranked if e.entry.algorithm.transductive is transductive),
                       key=lambda e: (-e.entry.metrics["clean"].accuracy, e.name))
        ranks = _tie_ranks([(above.episodes["clean"], e.episodes["clean"]) for above, e in zip(items, items[1:])],
                           alpha)
        rows += [Row(section, r, e, p) for e, (r, p) in zip(items, ranks)]
    return rows


def _tie_ranks(adjacent: list[tuple[Sequence[float], Sequence[float]]], alpha: float) -> list[tuple[str, float | None]]:
    """Rank labels and p-values vs. the row above for rows already in order, from the
    per-episode results of each adjacent pair (row ``i`` and ``i + 1``): a row ties with
    the one above when their paired t-test is not significant at ``alpha``; ties chain,
    and a tie group shares its first row's rank with a trailing ``=``."""
    starts, pvals = [0], [None]
    for i, (a, b) in enumerate(adjacent, start=1):
        test = paired_t_test(a, b)
        starts.append(starts[-1] if not test.significant(alpha) else i)
        pvals.append(test.p)
    return [(f"{s + 1}{'=' if starts.count(s) > 1 else ''}", p) for s, p in zip(starts, pvals)]


def _with_supplements(e: Entry, supplements: list[Entry]) -> Entry:
    """``e`` with the scenarios of the other entries of its model (ensemble-subset runs,
    external evaluations) that it lacks itself, their per-episode results, and a footnote
    naming where they come from. A supplement flagged unreliable (a failed sanity check)
    flags the row: its numbers are in it."""
    metrics, episodes, notes = dict(e.entry.metrics), dict(e.episodes), []
    unreliable = e.entry.unreliable
    for sup in supplements:
        if sup.model != e.model:
            continue
        added = [k for k in sup.entry.metrics if k != "clean" and k not in metrics]
        if not added:
            continue
        metrics.update({k: sup.entry.metrics[k] for k in added})
        episodes.update({k: sup.episodes[k] for k in added if k in sup.episodes})
        n = sup.entry.suite.n_episodes
        where = (f"the suite's first {n} episodes (its ensemble subset)" if n != e.entry.suite.n_episodes
                 else f"all {n} episodes")
        by = _providers(sup.entry, added)
        flag = " Flagged unreliable (†): its numbers join this row with the flag." if sup.entry.unreliable else ""
        unreliable = unreliable or sup.entry.unreliable
        notes.append(f"{', '.join(added)}: {where}, from {sup.name}{by}.{flag}" + (f" {sup.entry.footnote}"
                                                                                   if sup.entry.footnote else ""))
    if not notes:
        return e
    footnote = " ".join(([e.entry.footnote] if e.entry.footnote else []) + notes)
    return Entry(e.path, e.entry.model_copy(update={"metrics": metrics, "footnote": footnote,
                                                    "unreliable": unreliable}), episodes,
                 e.superseded_by, e.weights)


def _providers(entry: ResultEntry, names: list[str]) -> str:
    """`` (attack X of distribution D v)`` for the attacks behind ``names`` that the entry describes."""
    parts = []
    for name in names:
        info = (entry.scenarios or {}).get(name)
        if info is not None and info.kind == "attack" and info.provider:
            parts.append(f"{info.id} of {info.provider} {info.provider_version or ''}".strip())
    parts = list(dict.fromkeys(parts))
    return f" (external evaluation: {', '.join(parts)})" if parts else ""


@dataclass(frozen=True)
class BestKnown:
    """The lowest accuracy any attack reached on a model at one (eps, target).

    :param accuracy: its mean over the episodes every attack of that cell ran on.
    :param scenario: the scenario that reached it.
    :param n_episodes: the number of those episodes (the smallest set: e.g. the ensemble subset).
    :param scenarios: every attack scenario of the cell it is the lowest of, sorted.
    """

    accuracy: float
    ci95: float
    scenario: str
    n_episodes: int
    scenarios: tuple[str, ...]


def best_known(entry: Entry) -> dict[str, BestKnown]:
    """``"EPS:TARGET" -> BestKnown`` over every attack scenario of ``entry`` (supplements
    merged, see :func:`_with_supplements`), compared on the episodes they all cover."""
    cells: dict[str, list[str]] = {}
    for name in entry.entry.metrics:
        cell = attack_cell(name)
        if cell is not None and name in entry.episodes:
            cells.setdefault(f"{cell[0]}:{cell[1]}", []).append(name)
    out = {}
    for cell, names in cells.items():
        n = min(len(entry.episodes[k]) for k in names)
        scored = []
        for k in names:
            acc, ci = mean_ci95(entry.episodes[k][:n])
            scored.append((acc, k, ci))
        acc, k, ci = min(scored)
        out[cell] = BestKnown(acc, ci, k, n, tuple(sorted(names)))
    return out


@dataclass(frozen=True)
class RobustRow:
    """A row of the robustness ranking at one ``EPS:TARGET`` cell.

    :param rank: ``"3"``, or ``"1="`` for a member of a tie group.
    :param best: the row's best-known robust accuracy at the cell (``best.scenarios``:
        the attacks it is the lowest of).
    :param p_vs_above: p-value of the paired test against the row above, on the
        episodes both best-known scenarios cover (``None`` for the first).
    """

    section: str
    rank: str
    entry: Entry
    best: BestKnown
    p_vs_above: float | None


def robustness_ranking(rows: list[Row], cell: str, alpha: float = ALPHA) -> list[RobustRow]:
    """The rows with a best-known robust accuracy at ``cell`` (``EPS:TARGET``), most robust
    first, per section (as the clean ranking: transductive learners see every query at
    once). Adjacent rows tie when a paired two-sided t-test on the per-episode results of
    their best-known scenarios, over the episodes both cover, is not significant.

    :param rows: from :func:`rank` (entries merged with their supplements).
    """
    out: list[RobustRow] = []
    for section, _ in SECTIONS:
        items = [(r.entry, b) for r in rows if r.section == section
                 for b in [best_known(r.entry).get(cell)] if b is not None]
        items.sort(key=lambda t: (-t[1].accuracy, t[0].name))
        adjacent = []
        for (above, ba), (e, b) in zip(items, items[1:]):
            n = min(ba.n_episodes, b.n_episodes)
            adjacent.append((above.episodes[ba.scenario][:n], e.episodes[b.scenario][:n]))
        out += [RobustRow(section, r, e, b, p) for (e, b), (r, p) in zip(items, _tie_ranks(adjacent, alpha))]
    return out


def ranking_note() -> str:
    """The paragraph under every table that explains ranks, ties and markers."""
    return (f"Entries are sorted by clean accuracy. Rank N= marks a tie: the entry is not significantly different "
            f"from the entry above it (paired two-sided t-test on per-episode clean accuracies, all entries share "
            f"the suite's episodes, alpha = {ALPHA}); tied entries share the rank of the first of their group. "
            "\"p vs. above\" is that test's p-value. Transductive entries are ranked separately. "
            "Reported numbers are the published ones, not measured here. † marks an entry flagged unreliable.")


