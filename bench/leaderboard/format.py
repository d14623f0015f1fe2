"""Text helpers shared by the leaderboard's renderers: number formats, escaping, the
algorithm label of a row and the notes under a table.

Every renderer formats a value with these, so the same number reads the same in
table.csv, table.md, table.html and the terminal.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.leaderboard.board import Entry
    from bench.leaderboard.ranking import Row
    from bench.results.schema import Reported, ResultEntry


def pct(x: float | None) -> str:
    """An accuracy in percent with two decimals (``""`` for ``None``)."""
    return "" if x is None else f"{100 * x:.2f}"


def p_value(x: float | None) -> str:
    """A p-value with three decimals, ``<0.001`` below that (``""`` for ``None``)."""
    return "" if x is None else ("<0.001" if x < 0.001 else f"{x:.3f}")


def sort_number(x: float) -> str:
    """A sort key for table.html's ``data-value``: fixed format, enough digits to order any two entries."""
    return f"{x:.6f}"


def md(text: str) -> str:
    """``text`` as one Markdown table cell: whitespace collapsed, ``|`` escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def escape_html(text: object) -> str:
    """``text`` escaped for HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def reported(e: Entry) -> Reported | None:
    """The published clean accuracy the entry reports, if any."""
    return (e.entry.reported or {}).get("clean")


def display_name(en: ResultEntry) -> str:
    """The algorithm id, with its adversarial meta-training where it had one (rows of one
    algorithm differ by checkpoint; this is the difference a reader needs first)."""
    from bench.results.schema import model_label

    return model_label(en.algorithm.id, en.training.adversarial if en.training else None)


def note_markers(rows: list[Row]) -> tuple[dict[str, str], list[str]]:
    """Per-entry note markers and the numbered notes under the table."""
    markers: dict[str, str] = {}
    notes: list[str] = []
    for r in rows:
        parts = []
        en, rep = r.entry.entry, reported(r.entry)
        if rep is not None:
            ci = f" ± {pct(rep.ci95)}" if rep.ci95 is not None else ""
            parts.append(f"Reported clean accuracy {pct(rep.accuracy)}%{ci} ({rep.source}).")
        if en.transfer is not None:
            kinds = ", ".join(en.transfer.kinds) or "no"
            spec = en.transfer.train_spec
            trained = f" ({spec.n_way}-way {spec.k_shot}-shot episodes)" if spec else ""
            parts.append(f"Meta-trained for {en.transfer.trained_on or 'another protocol'}{trained}, not for this "
                         f"suite ({kinds} shift).")
        if en.footnote:
            parts.append(en.footnote)
        mark = "†" if en.unreliable else ""
        if parts:
            notes.append(f"[{len(notes) + 1}] {r.entry.name}: " + " ".join(parts))
            mark = f"{mark} [{len(notes)}]".strip()
        markers[r.entry.name] = mark
    return markers, notes
