"""table.csv: the ranked rows as CSV, one column per :data:`bench.leaderboard.columns.CSV` entry."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

from bench.leaderboard.columns import CSV, row_views

if TYPE_CHECKING:
    from bench.leaderboard.board import Board
    from bench.leaderboard.ranking import Row


def render_csv(board: Board, rows: list[Row]) -> str:
    """The table as CSV: one row per live entry, fixed formatting (percentages with two
    decimals, the checkpoint's full weights digest), no timestamps.

    :param board: the board.
    :param rows: from :func:`bench.leaderboard.rank`.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c.csv_name for c in CSV])
    for view in row_views(board, rows)[0]:
        w.writerow([c.csv_text(view) for c in CSV])
    return buf.getvalue()
