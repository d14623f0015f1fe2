"""``mrbench leaderboard show``: the tables of table.md in the terminal, with rich."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.leaderboard.board import find_board, load_boards
from bench.leaderboard.columns import TERMINAL, Column, RowView, robustness_terminal_columns, row_views
from bench.leaderboard.ranking import SECTIONS, rank


def show(suite: str | None = None, root: str | Path | None = None, console: Console | None = None) -> None:
    """Print leaderboards in the terminal with rich.

    :param suite: one suite (``id`` or ``id@vN``); ``None`` prints every leaderboard.
    :param root: see :func:`bench.leaderboard.leaderboard_roots`.
    :param console: where to print (default: stdout).
    """
    console = console or Console(soft_wrap=True)
    boards = [find_board(suite, root)] if suite else [b for b in load_boards(root) if b.entries]
    if not boards:
        console.print("No leaderboard entries found.")
    for board in boards:
        rows = rank(board)
        views, notes = row_views(board, rows)
        for section, _ in SECTIONS:
            shown = [view for view in views if view.row.section == section]
            if shown:
                console.print(table(f"{board.suite.ref}, {board.suite.n_episodes} episodes: {section}", TERMINAL,
                                    shown))
        robust = robustness_terminal_columns(rows)
        shown = [view for view in views if set(view.entry.metrics) - {"clean"}]
        if robust and shown:
            console.print(table(f"{board.suite.ref}: accuracy (%) under attacks (ATTACK@EPS:TARGET) and shifts, "
                                "± 95% CI", robust, shown))
        for n in notes:
            console.print(n, highlight=False, markup=False)


def table(title: str, columns: tuple[Column, ...], views: list[RowView]) -> Table:
    """A rich table of ``columns``, one row per view; numbers never wrap."""
    out = Table(title=title, title_justify="left")
    for c in columns:
        if c.fold:
            out.add_column(c.terminal_label, overflow="fold", min_width=12)
        else:
            out.add_column(c.terminal_label, justify="right" if c.numeric else "left", no_wrap=True)
    for view in views:
        out.add_row(*(Text(c.text(view)) for c in columns))  # Text: "[1]" is a note marker, not markup
    return out
