"""The columns of the leaderboard tables, as data: every renderer iterates these.

:data:`COLUMNS` defines each column once: its names, the value it shows for a row,
how that value is formatted, and how table.html sorts and decorates it. The layouts
below it say which columns each output shows, in which order:

- :data:`CSV` (table.csv), :data:`MARKDOWN` (table.md's ranked sections),
  :func:`html_columns` (table.html) and :data:`TERMINAL` (``mrbench leaderboard show``);
- :func:`robustness_markdown_columns` and :func:`robustness_terminal_columns`: the
  "Robustness and shifts" table, one column per attack or shift scenario;
- :func:`robustness_ranking_tables`: the "Robustness ranking" tables of table.md and
  table.html (rows of :func:`bench.leaderboard.ranking.robustness_ranking`, not of the
  clean ranking, so plain cells rather than :class:`Column` s).

Adding a column is one :class:`Column` in :data:`COLUMNS` and its key in the layouts
that show it; the renderers need no change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.leaderboard.format import display_name, note_markers, p_value, pct, reported, sort_number
from bench.leaderboard.ranking import best_known, robustness_ranking
from bench.protocol.scenarios import parse

if TYPE_CHECKING:
    from bench.leaderboard.board import Board, Entry
    from bench.leaderboard.ranking import RobustRow, Row
    from bench.results.schema import Reported, ResultEntry, ScenarioMetrics

CLEAN = "clean"
MEAN_CORRUPTION = "mean corruption"
"""The column that stands for every image-corruption scenario of an entry with a corruption summary."""


@dataclass(frozen=True)
class RowView:
    """A ranked row as the tables show it.

    :param row: the ranked row.
    :param position: its place in rank order over both sections, from 0 (table.html's
        Rank column sorts by it, so that clicking it restores the ranking).
    :param marker: its note marker: ``†`` (unreliable), ``[2]`` (the second note), both, or ``""``.
    :param board: the board it belongs to.
    """

    row: Row
    position: int
    marker: str
    board: Board

    @property
    def entry(self) -> ResultEntry:
        return self.row.entry.entry

    @property
    def clean(self) -> ScenarioMetrics:
        return self.entry.metrics[CLEAN]

    @property
    def reported(self) -> Reported | None:
        return reported(self.row.entry)


def row_views(board: Board, rows: list[Row]) -> tuple[list[RowView], list[str]]:
    """The rows as :class:`RowView` objects, and the numbered notes under the table."""
    markers, notes = note_markers(rows)
    return [RowView(r, i, markers[r.entry.name], board) for i, r in enumerate(rows)], notes


def _text(x: object) -> str:
    return "" if x is None else str(x)


@dataclass(frozen=True)
class Column:
    """One column of the leaderboard tables.

    :param key: its name in table.html (``data-column``) and among :data:`COLUMNS`.
    :param header: its header in table.md and table.html.
    :param value: what it shows for a row: a number, a text, or a metrics object that ``fmt`` formats.
    :param fmt: ``value`` as the text of a cell in table.md, table.html and the terminal.
    :param numeric: a number: right-aligned, and sorted as a number in table.html.
    :param csv: its name in table.csv, where that differs from ``key``.
    :param csv_fmt: ``value`` as table.csv writes it, where that differs from ``fmt`` (full
        digests, unrounded p-values).
    :param label: its header in the terminal, where that differs from ``key``.
    :param fold: long values fold onto more lines in the terminal, rather than widen the table.
    :param sort: table.html's ``data-value`` for a row, the key its sort uses (default: the text).
    :param title: table.html's tooltip for a row (none when it returns ``""``).
    :param small: table.html's small print after the value for a row (none when it returns ``""``).
    :param code: the value is shown as code (an abbreviated digest; table.html puts ``title`` on it).
    :param link: where the cell links to for a row, relative to the table.
    :param links_notes: its text holds note markers ``[n]``, which table.html links to the notes.
    :param optional: a row may have no value (``value`` returns ``None``: a scenario it was
        not evaluated on); table.html shows a greyed dash.
    :param scenario: the scenario whose accuracy it shows (table.html names it on the header).
    """

    key: str
    header: str
    value: Callable[[RowView], Any]
    fmt: Callable[[Any], str] = _text
    numeric: bool = False
    csv: str | None = None
    csv_fmt: Callable[[Any], str] | None = None
    label: str | None = None
    fold: bool = False
    sort: Callable[[RowView], str] | None = None
    title: Callable[[RowView], str] | None = None
    small: Callable[[RowView], str] | None = None
    code: bool = False
    link: Callable[[RowView], str] | None = None
    links_notes: bool = False
    optional: bool = False
    scenario: str | None = None

    def text(self, view: RowView) -> str:
        """The cell's text in table.md, table.html and the terminal."""
        return self.fmt(self.value(view))

    def csv_text(self, view: RowView) -> str:
        """The cell's text in table.csv."""
        return (self.csv_fmt or self.fmt)(self.value(view))

    @property
    def csv_name(self) -> str:
        return self.csv or self.key

    @property
    def terminal_label(self) -> str:
        return self.label or self.key


def _accuracy_ci(m: ScenarioMetrics) -> str:
    """``accuracy ± CI`` in percent (no CI where it is undefined)."""
    ci = "" if math.isnan(m.ci95) else f" ± {pct(m.ci95)}"
    return f"{pct(m.accuracy)}{ci}"


def _ci(x: float, undefined: str) -> str:
    return undefined if math.isnan(x) else pct(x)


def _distribution(en: ResultEntry) -> str:
    return " ".join(x for x in (en.algorithm.distribution, en.algorithm.distribution_version) if x) or "-"


def _id_version(en: ResultEntry) -> str:
    return f"{en.algorithm.id} v{en.algorithm.version}"


def _with_marker(text: str, view: RowView) -> str:
    return text + (f" {view.marker}" if view.marker else "")


def accuracy_column(key: str, header: str, metrics: Callable[[RowView], ScenarioMetrics | None],
                    **kw: Any) -> Column:
    """A column with a scenario's accuracy ± 95% CI in percent; table.html sorts it on the
    accuracy, gives the episode and query counts as its tooltip, and says how many
    episodes a scenario evaluated on fewer than the suite's covers.

    :param metrics: the scenario's metrics for a row (``None``: not evaluated).
    :param kw: further :class:`Column` fields.
    """
    def small(view: RowView) -> str:
        m = metrics(view)
        # A costly scenario may cover a prefix of the suite's episodes; say so where it does.
        return f"{m.n_episodes} ep." if m.n_episodes != view.board.suite.n_episodes else ""

    return Column(key, header, metrics, fmt=_accuracy_ci, numeric=True,
                  sort=lambda v: sort_number(100 * metrics(v).accuracy),
                  title=lambda v: f"{metrics(v).n_episodes} episodes, {metrics(v).n_queries} queries",
                  small=small, **kw)


COLUMNS: dict[str, Column] = {c.key: c for c in (
    Column("section", "Section", lambda v: v.row.section),
    Column("rank", "Rank", lambda v: v.row.rank, numeric=True, sort=lambda v: str(v.position)),
    Column("algorithm_id", "Algorithm id", lambda v: v.entry.algorithm.id, csv="algorithm"),
    Column("algorithm", "Algorithm", lambda v: display_name(v.entry)),
    Column("algorithm_marked", "Algorithm", lambda v: _with_marker(display_name(v.entry), v)),
    Column("id_version", "Algorithm and version", lambda v: _id_version(v.entry), label="algorithm"),
    Column("id_version_marked", "Algorithm and version", lambda v: _with_marker(_id_version(v.entry), v),
           label="algorithm"),
    Column("version", "Version", lambda v: v.entry.algorithm.version, csv="algorithm_version"),
    Column("distribution", "Distribution", lambda v: _distribution(v.entry)),
    Column("distribution_id", "Distribution id", lambda v: v.entry.algorithm.distribution or "",
           csv="distribution"),
    Column("distribution_version", "Distribution version",
           lambda v: v.entry.algorithm.distribution_version or ""),
    Column("transductive", "Transductive", lambda v: str(v.entry.algorithm.transductive).lower()),
    Column("clean_pct", "Clean acc. (%)", lambda v: v.clean.accuracy, fmt=pct, numeric=True,
           csv="clean_accuracy_pct", label="clean %"),
    Column("ci95", "± 95% CI", lambda v: v.clean.ci95, fmt=lambda x: _ci(x, "-"), numeric=True,
           csv="ci95_pct", csv_fmt=lambda x: _ci(x, "")),
    accuracy_column("clean", "Clean acc. (%) ± 95% CI", lambda v: v.clean, label="clean %"),
    Column("episodes", "Episodes", lambda v: v.clean.n_episodes, numeric=True, csv="n_episodes",
           sort=lambda v: str(v.clean.n_episodes)),
    Column("p", "p vs. above", lambda v: v.row.p_vs_above, fmt=p_value, numeric=True, csv="p_vs_above",
           csv_fmt=lambda p: "" if p is None else f"{p:.4g}", label="p vs above",
           sort=lambda v: "" if v.row.p_vs_above is None else f"{v.row.p_vs_above:.6e}"),
    Column("reported", "Reported (%)", lambda v: v.reported.accuracy if v.reported else None, fmt=pct,
           numeric=True, csv="reported_clean_pct", label="reported %",
           sort=lambda v: sort_number(100 * v.reported.accuracy) if v.reported else "",
           title=lambda v: v.reported.source if v.reported else ""),
    Column("reported_source", "Reported by", lambda v: v.reported.source if v.reported else ""),
    Column("unreliable", "Unreliable", lambda v: str(v.entry.unreliable).lower()),
    Column("footnote", "Footnote", lambda v: v.entry.footnote or ""),
    Column("notes", "Notes", lambda v: v.marker, links_notes=True),
    Column("checkpoint", "Checkpoint", lambda v: v.row.entry.weights or "", fmt=lambda w: w[:12],
           csv="weights_sha256", csv_fmt=str, code=True, title=lambda v: v.row.entry.weights or ""),
    Column("entry", "Entry", lambda v: v.row.entry.name, fold=True,
           link=lambda v: f"entries/{v.row.entry.name}"),
)}


def columns(keys: str) -> tuple[Column, ...]:
    """The :data:`COLUMNS` named by the space-separated ``keys``, in that order."""
    return tuple(COLUMNS[k] for k in keys.split())


CSV = columns("section rank algorithm_id version distribution_id distribution_version transductive clean_pct ci95 "
              "episodes p reported reported_source unreliable footnote checkpoint entry")
"""table.csv: every field of a row, unabbreviated."""
MARKDOWN = columns("rank algorithm version distribution clean_pct ci95 episodes p reported notes checkpoint entry")
"""table.md's ranked sections."""
TERMINAL = columns("rank id_version clean p reported notes entry")
"""``mrbench leaderboard show``: narrow terminals fold the entry name, never the numbers."""


def html_columns(rows: list[Row]) -> tuple[Column, ...]:
    """table.html's table: the columns of table.md, with one column per non-clean scenario
    (:func:`scenarios`) next to the clean one so that they read together."""
    return (columns("rank algorithm version section clean")
            + tuple(scenario_column(name) for name in scenarios(rows))
            + columns("p reported episodes distribution notes checkpoint entry"))


def scenarios(rows: list[Row]) -> list[str]:
    """The non-clean scenarios of the rows' entries, sorted: one table.html column each."""
    return sorted({name for r in rows for name in r.entry.entry.metrics} - {CLEAN})


def scenario_column(name: str) -> Column:
    """table.html's column of a non-clean scenario: its accuracy ± 95% CI."""
    return accuracy_column(f"scenario:{name}", f"{name} (%)", lambda v: v.entry.metrics.get(name),
                           optional=True, scenario=name)


# --- the "Robustness and shifts" table ------------------------------------------------


def robustness_markdown_columns(rows: list[Row]) -> tuple[Column, ...]:
    """table.md's "Robustness and shifts" table: the best-known robust accuracy per
    (eps, target), then one column per :func:`robust_columns` name (none: no such table)."""
    names = robust_columns(rows)
    if not names:
        return ()
    return (columns("rank algorithm_marked clean_pct")
            + tuple(best_known_column(cell) for cell in best_known_columns(rows))
            + tuple(robust_column(name) for name in names) + columns("checkpoint"))


def robustness_terminal_columns(rows: list[Row]) -> tuple[Column, ...]:
    """The terminal form of :func:`robustness_markdown_columns`: the same scenario cells, with
    the entry's file name for its checkpoint (none: no such table)."""
    names = robust_columns(rows)
    if not names:
        return ()
    return (columns("rank id_version_marked clean_pct") + tuple(robust_column(name) for name in names)
            + columns("entry"))


def robust_column(name: str) -> Column:
    """The column of one :func:`robust_columns` name."""
    header = name if name == MEAN_CORRUPTION else f"`{name}`"
    return Column(name, header, lambda v: _robust_cell(v.board, v.entry, name), numeric=True, label=name,
                  scenario=None if name == MEAN_CORRUPTION else name)


def best_known_column(cell: str) -> Column:
    """The best-known robust accuracy at one ``EPS:TARGET`` (see :func:`bench.leaderboard.best_known`)."""
    return Column(f"best_known:{cell}", f"Best known `{cell}`", lambda v: best_known_cell(v.row.entry, cell),
                  numeric=True)


def robust_columns(rows: list[Row]) -> list[str]:
    """The non-clean scenario columns of the Markdown table, in a fixed order: attacks
    (sorted by name), then :data:`MEAN_CORRUPTION` when an entry has a corruption
    summary, then the remaining shift scenarios. An entry's individual corruption
    scenarios fold into the mean (table.html and table.csv's entries keep every one).
    """
    attacks: set[str] = set()
    shifts: set[str] = set()
    mean = False
    for r in rows:
        en = r.entry.entry
        folded = set((en.summary.corruptions.by_shift if en.summary and en.summary.corruptions else {}))
        mean = mean or bool(folded)
        for name in en.metrics:
            if name == "clean":
                continue
            cell = parse(name)
            if cell.kind in ("attack", "ensemble"):
                attacks.add(name)
            elif cell.label not in folded:
                shifts.add(name)
    return sorted(attacks) + ([MEAN_CORRUPTION] if mean else []) + sorted(shifts)


def _robust_cell(board: Board, en: ResultEntry, column: str) -> str:
    if column == MEAN_CORRUPTION:
        c = en.summary.corruptions if en.summary else None
        if c is None:
            return ""
        n = f" ({c.n_scenarios} sc.)"
        return f"{pct(c.accuracy)} ± {pct(c.ci95)}{n}"
    m = en.metrics.get(column)
    if m is None:
        return ""
    ci = "" if math.isnan(m.ci95) else f" ± {pct(m.ci95)}"
    part = f" ({m.n_episodes} ep.)" if m.n_episodes != board.suite.n_episodes else ""
    return f"{pct(m.accuracy)}{ci}{part}"


def best_known_columns(rows: list[Row]) -> list[str]:
    """The ``EPS:TARGET`` cells with a best-known robust accuracy in some row, sorted."""
    return sorted({cell for r in rows for cell in best_known(r.entry)})


def best_known_cell(entry: Entry, cell: str) -> str:
    """The best-known robust accuracy of ``entry`` at ``cell`` ± CI, the attack that reached it
    and on how many episodes (``""``: no attack at that cell)."""
    b = best_known(entry).get(cell)
    if b is None:
        return ""
    ci = "" if math.isnan(b.ci95) else f" ± {pct(b.ci95)}"
    attack = b.scenario.rsplit("@", 1)[0]
    return f"{pct(b.accuracy)}{ci} ({attack}, {b.n_episodes} ep.)"


# --- the "Robustness ranking" tables ----------------------------------------------------


@dataclass(frozen=True)
class RankingTable:
    """One robustness ranking (one ``EPS:TARGET`` cell) as plain text cells.

    :param headers: the column headers; ``numeric`` and ``code`` say, per column, whether
        it is right-aligned and whether its cells are code (attack names, digests).
    """

    cell: str
    headers: tuple[str, ...]
    numeric: tuple[bool, ...]
    code: tuple[bool, ...]
    rows: tuple[tuple[RobustRow, tuple[str, ...]], ...]


def robustness_ranking_intro(board: Board) -> str:
    """The paragraph over the robustness ranking tables."""
    attacks = board.suite.attacks or {}
    ensemble = attacks.get("ensemble")
    return ("Query evasion: the rows ranked by their best-known robust accuracy (the lowest accuracy any attack run "
            "on the model reached, see \"Robustness and shifts\"), most robust first, per section. Adjacent rows tie "
            "(N=) when a paired two-sided t-test on the per-episode results of their best-known scenarios, over the "
            "episodes both cover, is not significant. A robust accuracy is an upper bound: "
            + (f"only a row with {ensemble} among its attacks rests on the suite's ensemble (on its "
               f"{attacks.get('ensemble_episodes', '')}-episode subset); the others rest on weaker attacks, and "
               "stronger ones can only lower them." if ensemble else "stronger attacks can only lower it.")
            + " Training: what the checkpoint recorded (steps, episodes seen, wall time, device).")


def robustness_ranking_tables(board: Board, rows: list[Row]) -> list[RankingTable]:
    """The robustness rankings, one per query-target ``EPS:TARGET`` cell with a best-known
    robust accuracy in some row (none: no such section)."""
    ensemble = (board.suite.attacks or {}).get("ensemble")
    spec = [("Rank", True, False), ("Algorithm", False, False), ("Section", False, False),
            ("Best known (%)", True, False), ("± 95% CI", True, False), ("Episodes", True, False),
            ("Reached by", False, True)]
    spec += [(f"{ensemble} run", False, False)] if ensemble else []
    spec += [("p vs. above", True, False), ("Clean acc. (%)", True, False), ("Training", False, False),
             ("Checkpoint", False, True)]
    out = []
    for cell in (c for c in best_known_columns(rows) if c.endswith(":query")):
        table = []
        for r in robustness_ranking(rows, cell):
            en = r.entry.entry
            ids = {sc.attack for sc in map(parse, r.best.scenarios) if sc.kind == "attack"}
            cells = [r.rank, display_name(en) + (" †" if en.unreliable else ""), r.section, pct(r.best.accuracy),
                     "" if math.isnan(r.best.ci95) else pct(r.best.ci95), str(r.best.n_episodes),
                     r.best.scenario.rsplit("@", 1)[0]]
            cells += ["yes" if ensemble in ids else "no"] if ensemble else []
            cells += [p_value(r.p_vs_above), pct(en.metrics[CLEAN].accuracy), training_cost(en),
                      (r.entry.weights or "")[:12]]
            table.append((r, tuple(cells)))
        out.append(RankingTable(cell, tuple(h for h, _, _ in spec), tuple(n for _, n, _ in spec),
                                tuple(c for _, _, c in spec), tuple(table)))
    return out


def training_cost(en: ResultEntry) -> str:
    """What the entry's checkpoint recorded of its training: steps, episodes (or batches of
    a classical training) seen, wall time and device; ``""`` where it recorded none."""
    t = en.training
    if t is None:
        return ""
    parts = [f"{t.steps} steps" if t.steps is not None else "",
             f"{t.episodes_seen} episodes" + (f" (meta-batch {t.meta_batch})" if t.meta_batch and t.meta_batch > 1 else "")
             if t.episodes_seen is not None else "",
             f"{t.wall_time_s / 3600:.2f} h" if t.wall_time_s is not None else "",
             t.device or ""]
    init = (t.adversarial or {}).get("init_from")
    if isinstance(init, dict):  # adversarial fine-tuning: its cost comes on top of the model it started from
        parts.append(f"after {init['steps']} steps of {init.get('file') or 'another checkpoint'}"
                     if init.get("steps") is not None else f"from {init.get('file') or 'another checkpoint'}")
    return ", ".join(p for p in parts if p)
