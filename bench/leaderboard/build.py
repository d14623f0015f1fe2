"""The leaderboard commands that write or compare files: ``build``, ``check`` and ``withdraw``.

:func:`render` and :func:`render_indexes` give every generated file's content; ``build``
writes them, ``check`` compares them with the committed ones byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench.checkpoint import atomic_write_text
from bench.errors import MrbenchError
from bench.leaderboard.board import (TABLE_FILES, WITHDRAWAL_KIND, WITHDRAWALS_DIR, Board, Problems, board_folders,
                                     display_path, leaderboard_roots, load_boards)
from bench.leaderboard.csv import render_csv
from bench.leaderboard.html import render_html, render_index
from bench.leaderboard.markdown import render_markdown
from bench.leaderboard.ranking import rank

INDEX_FILE = "index.html"
"""Generated in every leaderboards folder that has a suite version with entries: links their pages."""


def render(board: Board) -> dict[str, str]:
    """``file name -> content`` of every generated table of ``board`` (:data:`TABLE_FILES`)."""
    rows = rank(board)
    return {"table.csv": render_csv(board, rows), "table.md": render_markdown(board, rows),
            "table.html": render_html(board, rows)}


def render_indexes(boards: list[Board], root: str | Path | None = None) -> dict[Path, str | None]:
    """``index.html path -> content`` for every leaderboards folder; ``None`` for a folder
    without a suite version with entries, which must not have an index.

    :param boards: the loaded boards of ``root`` (:func:`bench.leaderboard.load_boards`).
    :param root: see :func:`bench.leaderboard.leaderboard_roots`.
    """
    out: dict[Path, str | None] = {}
    seen: set[Path] = set()
    for r in leaderboard_roots(root):
        if r.resolve() in seen:
            continue
        seen.add(r.resolve())
        # board_folders() globs <root>/<suite>/v<N>, so a board's grandparent is its root as given.
        mine = [b for b in boards if b.entries and b.folder.parent.parent == r]
        out[r / INDEX_FILE] = render_index(mine) if mine else None
    return out


@dataclass(frozen=True)
class BoardSummary:
    """What ``build`` or ``check`` did for one board.

    :param written: tables rewritten (``build``; unchanged files are left alone).
    """

    ref: str
    folder: Path
    n_entries: int
    n_superseded: int
    written: tuple[Path, ...] = ()

    def line(self) -> str:
        sup = f" ({self.n_superseded} superseded)" if self.n_superseded else ""
        noun = "entry" if self.n_entries == 1 else "entries"
        return f"{self.ref}: {self.n_entries} {noun}{sup} in {display_path(self.folder)}"


@dataclass(frozen=True)
class BuildSummary:
    """What ``build`` did: a summary per board and the index pages it generated.

    :param indexes: every ``index.html`` generated (one per leaderboards folder with entries).
    :param indexes_written: those rewritten (unchanged files are left alone).
    """

    boards: list[BoardSummary]
    indexes: tuple[Path, ...] = ()
    indexes_written: tuple[Path, ...] = ()

    def lines(self) -> list[str]:
        """One line per board, then one per index page, for the CLI."""
        out = []
        for s in self.boards:
            out.append(f"{s.line()}: " + (", ".join(p.name for p in s.written) + " written" if s.written
                                           else "tables unchanged"))
        for path in self.indexes:
            out.append(f"{display_path(path)}: " + ("written" if path in self.indexes_written else "unchanged"))
        return out


def _board_summary(board: Board, written: tuple[Path, ...] = ()) -> BoardSummary:
    n = len(board.entries)
    return BoardSummary(board.suite.ref, board.folder, n, n - len(board.live), written)


def build(root: str | Path | None = None) -> BuildSummary:
    """Regenerate the tables (:data:`TABLE_FILES`) of every suite version with entries, and
    the ``index.html`` of every leaderboards folder holding one.

    Nothing is written unless every entry checks out; a file whose content would not
    change is not rewritten.

    :param root: see :func:`bench.leaderboard.leaderboard_roots`.
    :raises MrbenchError: an entry is invalid (every problem is listed).
    """
    def write(path: Path, text: str) -> bool:
        if path.is_file() and path.read_bytes() == text.encode():
            return False
        atomic_write_text(path, text)
        return True

    boards = load_boards(root)
    summaries = []
    for board in boards:
        if not board.entries:
            continue
        written = tuple(board.folder / name for name, text in render(board).items()
                        if write(board.folder / name, text))
        summaries.append(_board_summary(board, written))
    indexes = {path: text for path, text in render_indexes(boards, root).items() if text is not None}
    written_indexes = tuple(path for path, text in indexes.items() if write(path, text))
    return BuildSummary(summaries, tuple(indexes), written_indexes)


def _first_difference(a: bytes, b: bytes) -> int:
    la, lb = a.splitlines(), b.splitlines()
    for i, (x, y) in enumerate(zip(la, lb, strict=False), start=1):
        if x != y:
            return i
    return min(len(la), len(lb)) + 1


def check(root: str | Path | None = None) -> list[BoardSummary]:
    """Check every leaderboard: entries valid and consistent with their suite and
    per-episode files, committed tables and index pages identical to the ones the
    entries generate.

    :param root: see :func:`bench.leaderboard.leaderboard_roots`.
    :returns: a summary per board.
    :raises MrbenchError: naming the file and field of every problem.
    """
    boards = load_boards(root)
    problems = Problems()

    def compare(path: Path, expected: str | None, what: str) -> None:
        if expected is None:
            if path.exists():
                problems.add(path, what, "exists but there are no entries to generate it from")
        elif not path.is_file():
            problems.add(path, what, "missing; run `mrbench leaderboard build` and commit it")
        elif (have := path.read_bytes()) != (want := expected.encode()):
            problems.add(path, f"line {_first_difference(have, want)}",
                         f"stale: differs from the {what} the entries generate; run `mrbench leaderboard build`")

    for board in boards:
        expected = render(board) if board.entries else {}
        for name in TABLE_FILES:
            compare(board.folder / name, expected.get(name), "table")
    for path, text in render_indexes(boards, root).items():
        compare(path, text, "index")
    problems.raise_if_any("Leaderboard check")
    return [_board_summary(b) for b in boards]


def withdraw(suite: str, entries: list[str], reason: str, recreate: str = "", name: str | None = None,
             root: str | Path | None = None) -> Path:
    """Write a withdrawal notice for ``entries`` of ``suite``'s leaderboard (``id@vN``, or
    ``id`` for its latest version with entries); returns the notice's path.

    :raises MrbenchError: an unknown suite or entry, an empty reason, or an existing notice.
    """
    folders = [f for f in board_folders(root) if f"{f.parent.name}@{f.name}" == suite or f.parent.name == suite]
    if not folders:
        known = ", ".join(f"{f.parent.name}@{f.name}" for f in board_folders(root)) or "(none)"
        raise MrbenchError(f"No leaderboard for suite {suite!r}.", f"Leaderboards: {known}.")
    folder = max(folders, key=lambda f: int(f.name[1:]))
    if not reason.strip():
        raise MrbenchError("A withdrawal needs a reason.", "Say why the numbers can no longer stand (--reason).")
    names = [Path(e).name for e in entries]
    missing = [n for n in names if not (folder / "entries" / n).is_file()]
    if missing or not names:
        have = ", ".join(sorted(p.name for p in (folder / "entries").glob("*.json")))
        raise MrbenchError(f"No entry {', '.join(missing) or '(none given)'} in {display_path(folder / 'entries')}.",
                           f"Its entries: {have or '(none)'}.")
    created = datetime.now(timezone.utc).replace(microsecond=0)
    path = folder / WITHDRAWALS_DIR / f"{name or created.strftime('%Y%m%d-%H%M%S')}.json"
    if path.exists():
        raise MrbenchError(f"{display_path(path)} exists; withdrawal notices are append-only.",
                           "Choose another --name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    notice = {"kind": WITHDRAWAL_KIND, "created": created.isoformat(), "withdraws": names, "reason": reason.strip(),
              "recreate": recreate.strip()}
    atomic_write_text(path, json.dumps(notice, indent=2) + "\n")
    return path
