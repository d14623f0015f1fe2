"""The generalization report: a Markdown summary and PNG plots of result entries.

``mrbench report RESULT.json... --out DIR`` calls :func:`write_report`, which reads
result entries written by :func:`bench.evaluate` and writes ``DIR/report.md`` plus
the plots it links by relative file name. Every section appears only when the
entries hold data for it:

``summary``         one row per entry: clean, mean corruption, label-noise and
                    strongest-attack accuracies, unreliable flags and footnotes.
``gap``             the same checkpoint (and options) evaluated on episodes of its
                    meta-training classes and on the meta-test classes.
``steps``           the same checkpoint evaluated with different test-time adaptation
                    steps (``inner_steps_test`` or another integer ``*steps*`` option);
                    ``steps.png``.
``transfer``        entries whose learner was trained for another suite (way/shot,
                    domain or class-split shift), with the drop from its own suite.
``corruptions``     corruption x severity tables; ``severity.png`` (mean corruption
                    accuracy vs severity) and ``corruptions.png`` (one panel each).
``support-shifts``  label noise, class imbalance and other non-corruption shifts.
``attacks``         accuracy vs eps per target and attack (ensembles included);
                    ``eps.png``.
``breakdown``       per-alphabet (per-group) accuracy; ``groups.png``.

The output depends only on the entries (no absolute paths, no current time; PNGs
carry no software metadata), so re-running on the same entries gives byte-identical
files. matplotlib is imported only when a report is written, so ``import bench``
stays fast.

The package: :mod:`bench.report.load` reads, checks and labels the entries;
:mod:`bench.report.sections` writes each section (``SECTIONS`` is their order);
:mod:`bench.report.format` holds the Markdown cells and :mod:`bench.report.plots`
the PNG plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bench.errors import MrbenchError
from bench.report.format import MarkdownReport
from bench.report.load import assign_labels, load_result
from bench.report.sections import SECTIONS, sources_line

__all__ = ["REPORT_NAME", "ReportSummary", "write_report"]

REPORT_NAME = "report.md"


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`write_report` wrote.

    :param markdown: the Markdown report (``<out_dir>/report.md``).
    :param plots: the PNGs written, in the order the report links them.
    :param sections: the names of the sections that had data (see the module doc).
    """

    markdown: Path
    plots: list[Path]
    sections: list[str]


def write_report(entries: Sequence[str | Path | dict], out_dir: str | Path) -> ReportSummary:
    """Write ``report.md`` and its PNG plots for ``entries`` into ``out_dir``.

    :param entries: result entries: paths to their JSON files (read with
        :func:`bench.results.frame.load_entry`) or already-loaded dicts.
    :param out_dir: the folder to write into (created if missing).
    :raises MrbenchError: no entries; an entry that cannot be read or is not a
        ``"kind": "mrbench-result"`` (the message names the file); an ``out_dir`` that
        is a file.
    """
    if isinstance(entries, (str, Path, dict)):
        entries = [entries]
    entries = list(entries)
    if not entries:
        raise MrbenchError("No result entries given to the report.",
                           "Pass one or more RESULT.json files written by `mrbench evaluate`.")
    items = [load_result(e, i) for i, e in enumerate(entries)]
    assign_labels(items)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MrbenchError(f"The report folder {out} is a file.", "Pass a folder for --out.")
    out.mkdir(parents=True, exist_ok=True)

    rep = MarkdownReport(out)
    rep.lines.append(sources_line(items))
    for section in SECTIONS:
        section(rep, items)

    text = "\n".join(rep.lines).rstrip("\n") + "\n"
    md = out / REPORT_NAME
    md.write_bytes(text.encode("utf-8"))
    return ReportSummary(markdown=md, plots=list(rep.plots), sections=list(rep.sections))
