"""The per-episode file: ``<entry>.episodes.csv``, next to every result entry.

One row per (scenario, episode) with the counts behind the entry's ``metrics``::

    episode,scenario,correct,total,accuracy
    0,clean,4,5,0.8

Rows are written scenario by scenario, episodes in order; ``accuracy`` is
``repr(correct / total)``, the exact float, so a mean recomputed from the file agrees
with the entry to the last bit. This module is the only code that formats, reads or
validates the file: :func:`bench.evaluate` writes what :func:`render` returns, the
leaderboard check and ``mrbench verify`` validate it, and :mod:`bench.results.frame`
reads it.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable

from bench.errors import MrbenchError

COLUMNS = ("episode", "scenario", "correct", "total", "accuracy")
"""The header, in order."""

ACCURACY_TOL = 1e-12
"""How far a row's ``accuracy`` may be from ``correct / total`` (written exactly: only a hand edit differs)."""

Counts = dict[str, dict[int, tuple[int, int]]]
"""``scenario -> episode -> (correct, total)``, scenarios and episodes in file order."""


def episodes_path(entry: Path) -> Path:
    """The per-episode file of the entry at ``entry`` (``x.json`` -> ``x.episodes.csv``).

    :param entry: the result entry's path.
    """
    return entry.with_name(entry.name.removesuffix(".json") + ".episodes.csv")


def render(rows: Iterable[tuple[str, int, int, int]]) -> str:
    """The text of a per-episode file (the caller writes it, atomically, next to the entry).

    :param rows: ``(scenario, episode, correct, total)`` in the order to write them.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for name, e, c, t in rows:
        w.writerow([e, name, c, t, repr(c / t)])
    return buf.getvalue()


def validate(path: Path) -> tuple[Counts, list[tuple[str, str]]]:
    """Read and check a per-episode file without raising.

    :param path: the file.
    :returns: the counts of the rows that passed, and ``(where, message)`` for each
        problem (``where`` is ``file``, ``header`` or ``line N``). A bad header or
        encoding stops the read (no counts).
    """
    out: Counts = {}
    problems: list[tuple[str, str]] = []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        return out, [("file", "is not UTF-8 text")]
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        want = list(COLUMNS)
        if reader.fieldnames != want:
            return out, [("header", f"expected columns {','.join(want)}, got {','.join(reader.fieldnames or [])}")]
        for line, rec in enumerate(reader, start=2):
            try:
                ep, c, t, acc = int(rec["episode"]), int(rec["correct"]), int(rec["total"]), float(rec["accuracy"])
            except (TypeError, ValueError):
                problems.append((f"line {line}", "episode, correct and total must be integers and accuracy a number"))
                continue
            if not (ep >= 0 and t >= 1 and 0 <= c <= t) or not math.isclose(acc, c / t, rel_tol=0, abs_tol=ACCURACY_TOL):
                problems.append((f"line {line}", f"inconsistent counts (correct={c}, total={t}, accuracy={acc})"))
                continue
            per = out.setdefault(rec["scenario"], {})
            if ep in per:
                problems.append((f"line {line}", f"episode {ep} of scenario {rec['scenario']!r} appears twice"))
            per[ep] = (c, t)
    return out, problems


def read(path: Path) -> Counts:
    """Read a per-episode file, checked as :func:`validate` does.

    :param path: the file.
    :raises MrbenchError: naming the file and every problem in it.
    """
    counts, problems = validate(path)
    if problems:
        n = len(problems)
        raise MrbenchError(f"{path} is not a valid per-episode file ({n} problem{'s' if n > 1 else ''}): "
                           + "; ".join(f"{where}: {msg}" for where, msg in problems) + ".",
                           "Restore the *.episodes.csv that `mrbench evaluate` wrote next to the entry.")
    return counts
