"""The static HTML leaderboard site that ``mrbench leaderboard build`` writes next to the tables.

Two kinds of page, both self-contained (inline CSS and vanilla JavaScript, no CDN,
no network), so that a checkout opened with ``file://`` or served by any static host
shows them as they are::

    leaderboards/index.html                  every suite version with entries, linked
    leaderboards/<suite>/v<N>/table.html      the table of table.md, one column per extra
                                              scenario, sortable, and a clean-vs-robust plot

The page template, its CSS and the sorting script are package data under
``bench/leaderboard/static/``, inlined into every page. Like the other tables the pages
are generated, committed and checked byte for byte (:func:`bench.leaderboard.check`), so
the output is deterministic: no timestamps, rows in rank order, scenario columns sorted
by name, fixed float formatting. Every string that comes from an entry or a suite file
is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import functools
import re
from importlib.resources import files
from string import Template
from typing import TYPE_CHECKING
from urllib.parse import quote

from bench.leaderboard.columns import (Column, RankingTable, RowView, html_columns, robustness_ranking_intro,
                                       robustness_ranking_tables, row_views, scenarios)
from bench.leaderboard.format import escape_html as _e
from bench.leaderboard.format import sort_number
from bench.leaderboard.plot import scatter_svg
from bench.leaderboard.ranking import SECTIONS, ranking_note

if TYPE_CHECKING:
    from bench.leaderboard.board import Board
    from bench.leaderboard.ranking import Row

SORTED_BY = "rank"
"""The column the rows come sorted by: its header says so (``aria-sort``) until another is clicked."""
_NOTE_REF = re.compile(r"\[(\d+)\]")


@functools.cache
def static(name: str) -> str:
    """The text of ``bench/leaderboard/static/<name>``."""
    return (files("bench.leaderboard") / "static" / name).read_text(encoding="utf-8")


def _page(title: str, body: list[str], script: bool) -> str:
    # sort.js sorts numeric columns by data-value and text columns by their text; empty
    # cells go last in either direction; equal keys keep the ranked order (data-order), so
    # a sort is stable and does not depend on the clicks before it.
    if script:
        body = [*body, "<script>", static("sort.js").rstrip("\n"), "</script>"]
    return Template(static("page.html")).substitute(title=_e(title), style=static("leaderboard.css").rstrip("\n"),
                                                   body="\n".join(body))


def _head(c: Column) -> str:
    cls = ' class="num"' if c.numeric else ""
    typ = "number" if c.numeric else "text"
    extra = ' aria-sort="ascending"' if c.key == SORTED_BY else ""
    extra += f' data-scenario="{_e(c.scenario)}"' if c.scenario is not None else ""
    return (f'<th scope="col"{cls} data-type="{typ}" data-column="{_e(c.key)}"{extra}>'
            f'<button type="button">{_e(c.header)}</button></th>')


def _cell(c: Column, view: RowView) -> str:
    """A ``<td>``: ``data-value`` for sorting, the tooltip, and the text as code, a link or with small print."""
    if c.optional and c.value(view) is None:
        return '<td class="na" data-value="" title="not evaluated">–</td>'
    attrs = ' class="num"' if c.numeric else ""
    if c.sort is not None:
        attrs += f' data-value="{_e(c.sort(view))}"'
    title = c.title(view) if c.title is not None else ""
    content = _e(c.text(view))
    if c.links_notes:
        content = _NOTE_REF.sub(r'<a href="#note-\1">[\1]</a>', content)
    if c.code:
        content = f'<code title="{_e(title)}">{content}</code>'
    elif title:
        attrs += f' title="{_e(title)}"'
    if c.link is not None:
        content = f'<a href="{_e(quote(c.link(view)))}">{content}</a>'
    small = c.small(view) if c.small is not None else ""
    if small:
        content += f' <span class="n">({_e(small)})</span>'
    return f"<td{attrs}>{content}</td>"


def _tr(view: RowView) -> str:
    """A ``<tr>`` opening tag whose ``data-*`` attributes identify the row for scripts and tests."""
    r, en = view.row, view.entry
    cls = " ".join(c for c in (r.section, "unreliable" if en.unreliable else "") if c)
    attrs = {"order": str(view.position), "entry": r.entry.name, "algorithm": en.algorithm.id,
             "version": en.algorithm.version, "section": r.section, "rank": r.rank,
             "clean": sort_number(100 * view.clean.accuracy), "unreliable": str(en.unreliable).lower()}
    return f'<tr class="{cls}" ' + " ".join(f'data-{k}="{_e(v)}"' for k, v in attrs.items()) + ">"


def _table(columns: tuple[Column, ...], views: list[RowView]) -> list[str]:
    out = ['<div class="scroll">', '<table class="sortable" id="leaderboard">', "<thead>", "<tr>",
           *(_head(c) for c in columns), "</tr>", "</thead>", "<tbody>"]
    for view in views:
        out += [_tr(view), *(_cell(c, view) for c in columns), "</tr>"]
    out += ["</tbody>", "</table>", "</div>"]
    return out


def _ranking_table(t: RankingTable) -> list[str]:
    """One robustness ranking: a static table (in its own order; the entries table sorts)."""
    out = [f"<h3><code>{_e(t.cell)}</code></h3>", '<div class="scroll">',
           f'<table class="ranking" data-cell="{_e(t.cell)}">', "<thead>", "<tr>"]
    out += [f'<th scope="col"{cls}>{_e(h)}</th>' for h, cls in
            zip(t.headers, (' class="num"' if n else "" for n in t.numeric))]
    out += ["</tr>", "</thead>", "<tbody>"]
    for r, cells in t.rows:
        cls = " ".join(c for c in (r.section, "unreliable" if r.entry.entry.unreliable else "") if c)
        out.append(f'<tr class="{cls}" data-robust-entry="{_e(r.entry.name)}" data-robust-rank="{_e(r.rank)}">')
        for c, n, code in zip(cells, t.numeric, t.code):
            text = f"<code>{_e(c)}</code>" if code and c else _e(c)
            out.append(f'<td class="num">{text}</td>' if n else f"<td>{text}</td>")
        out.append("</tr>")
    return [*out, "</tbody>", "</table>", "</div>"]


def render_html(board: Board, rows: list[Row]) -> str:
    """The board's page: the rows of table.md (one table, section as a column, sortable
    by any header), one column per non-clean scenario, the notes, and the clean-vs-robust
    plot when any entry has a non-clean scenario; deterministic.

    :param board: the board.
    :param rows: from :func:`bench.leaderboard.rank`.
    """
    s = board.suite
    views, notes = row_views(board, rows)
    extra = scenarios(rows)
    counts = {section: sum(r.section == section for r in rows) for section, _ in SECTIONS}
    body = [
        '<nav><a href="../../index.html">All leaderboards</a> · <a href="table.csv">table.csv</a> · '
        '<a href="table.md">table.md</a> · <a href="suite.toml">suite.toml</a> · '
        '<a href="entries/">entries/</a></nav>',
        f"<h1>Leaderboard: {_e(s.id)} v{s.version}</h1>",
        f'<p class="description">{_e(" ".join(s.description.split()))}</p>',
        '<ul class="meta">',
        f"<li>Suite: <code>{_e(s.ref)}</code>, {s.spec.n_way}-way {s.spec.k_shot}-shot, {s.spec.n_query} queries "
        f"per class, {s.n_episodes} episodes</li>",
        f"<li>Test data: <code>{_e(s.test.dataset)}</code> <code>{_e(s.test.split)}</code>, "
        f"revision <code>{_e(s.revision)}</code></li>",
        f"<li>Manifest sha256: <code>{_e(s.manifest_sha256)}</code></li>",
        "<li>Generated by <code>mrbench leaderboard build</code> from the entries; do not edit by hand.</li>",
        "</ul>",
        "<h2>Entries</h2>",
        f"<p>{counts['non-transductive']} non-transductive and {counts['transductive']} transductive "
        f"{'entry' if len(rows) == 1 else 'entries'}, in rank order; click a column header to sort by it "
        "(again to reverse), and <em>Rank</em> to restore the ranking.</p>",
        *_table(html_columns(rows), views),
    ]
    tables = robustness_ranking_tables(board, rows)
    if tables:
        body += ["<h2>Robustness ranking</h2>", f"<p>{_e(robustness_ranking_intro(board))}</p>"]
        for t in tables:
            body += _ranking_table(t)
    body.append("<h2>Clean vs. robust accuracy</h2>")
    if extra:
        body += ["<figure>", scatter_svg(rows, extra),
                 "<figcaption>One marker per entry and scenario: its clean accuracy (x) against its accuracy under "
                 "the scenario (y). Markers below the dashed diagonal lose accuracy under the scenario.</figcaption>",
                 "</figure>"]
    else:
        body.append('<p id="no-scenarios">No robust or shift columns yet: every entry has clean results only.</p>')
    body += ["<h2>Notes</h2>", f"<p>{_e(ranking_note())}</p>"]
    if extra:
        body.append("<p>Scenario columns: accuracy under that scenario ± 95% CI; a scenario evaluated on fewer "
                    "episodes than the suite's shows how many.</p>")
    if notes:
        body.append('<ol class="notes">')
        for k, note in enumerate(notes, start=1):
            body.append(f'<li id="note-{k}" value="{k}">{_e(note.removeprefix(f"[{k}] "))}</li>')
        body.append("</ol>")
    return _page(f"Leaderboard: {s.ref}", body, script=True)


def render_index(boards: list[Board]) -> str:
    """The index of a leaderboards folder: one row per suite version with entries,
    linking its page, with its description and entry counts; deterministic.

    :param boards: the folder's boards with entries, in :func:`bench.leaderboard.board_folders` order.
    """
    body = ["<h1>mrbench leaderboards</h1>",
            "<p>One page per suite version, generated by <code>mrbench leaderboard build</code> from the committed "
            "result entries; do not edit by hand.</p>",
            '<div class="scroll">', '<table id="index">', "<thead>", "<tr>",
            *(f'<th scope="col"{cls}>{label}</th>' for label, cls in (
                ("Suite", ""), ("Description", ""), ("Setting", ""), ("Entries", ' class="num"'))),
            "</tr>", "</thead>", "<tbody>"]
    for b in boards:
        s, n_live = b.suite, len(b.live)
        n_sup = len(b.entries) - n_live
        href = f"{quote(b.folder.parent.name)}/{quote(b.folder.name)}/table.html"
        sup = f' <span class="n">({n_sup} superseded)</span>' if n_sup else ""
        body += [f'<tr data-suite="{_e(s.ref)}" data-entries="{n_live}">',
                 f'<td><a href="{_e(href)}">{_e(s.ref)}</a></td>',
                 f'<td class="description">{_e(" ".join(s.description.split()))}</td>',
                 f"<td>{s.spec.n_way}-way {s.spec.k_shot}-shot, {s.n_episodes} episodes</td>",
                 f'<td class="num">{n_live}{sup}</td>', "</tr>"]
    body += ["</tbody>", "</table>", "</div>"]
    return _page("mrbench leaderboards", body, script=False)
