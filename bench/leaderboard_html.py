"""The static HTML leaderboard site that ``mrbench leaderboard build`` writes next to the tables.

Two kinds of page, both self-contained (inline CSS and vanilla JavaScript, no CDN,
no network), so that a checkout opened with ``file://`` or served by any static host
shows them as they are::

    leaderboards/index.html                  every suite version with entries, linked
    leaderboards/<suite>/v<N>/table.html      the table of table.md, one column per extra
                                              scenario, sortable, and a clean-vs-robust plot

Like the other tables the pages are generated, committed and checked byte for byte
(:func:`bench.leaderboard.check`), so the output is deterministic: no timestamps, rows
in rank order, scenario columns sorted by name, fixed float formatting. Every string
that comes from an entry or a suite file is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
import re
from typing import TYPE_CHECKING
from urllib.parse import quote

from bench.leaderboard import SECTIONS, _notes, _p, _pct, _reported, display_name, ranking_note

if TYPE_CHECKING:
    from bench.leaderboard import Board, Row
    from bench.results.schema import ScenarioMetrics

CLEAN = "clean"

_CSS = """\
:root { color-scheme: light; --line: #d0d7de; --muted: #57606a; --head: #f6f8fa; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       margin: 2rem auto; max-width: 82rem; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .25rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; }
a { color: #0969da; }
nav { font-size: .9rem; margin-bottom: 1rem; }
.meta { color: var(--muted); padding-left: 1.2rem; }
code { font: .85em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: .3rem .6rem; text-align: left; white-space: nowrap; }
thead th { background: var(--head); position: sticky; top: 0; }
th.num, td.num { text-align: right; }
td.description { white-space: normal; min-width: 20rem; }
th button { font: inherit; color: inherit; text-align: inherit; cursor: pointer; padding: 0; border: 0;
            background: none; }
th button:focus-visible { outline: 2px solid #0969da; }
th[aria-sort="ascending"] button::after { content: " \\25B2"; }
th[aria-sort="descending"] button::after { content: " \\25BC"; }
tr.transductive td { background: #fbf7ff; }
tr.unreliable td { color: var(--muted); }
td.na { color: var(--muted); text-align: center; }
.n { color: var(--muted); font-size: .8em; }
.notes li { margin: .2rem 0; }
figure { margin: 1rem 0; }
figcaption { color: var(--muted); font-size: .9rem; }
svg text { font: 11px system-ui, sans-serif; fill: #1f2328; }
svg .axis { stroke: #57606a; stroke-width: 1; }
svg .grid { stroke: #eaeef2; stroke-width: 1; }
svg .diagonal { stroke: #8c959f; stroke-dasharray: 4 4; }
"""

# Sorting: numeric columns by data-value, text columns by their text; empty cells go last
# in either direction; equal keys keep the ranked order (data-order), so a sort is stable
# and does not depend on the clicks before it.
_JS = """\
(function () {
  "use strict";
  function key(row, col, numeric) {
    var cell = row.cells[col];
    var raw = cell.hasAttribute("data-value") ? cell.getAttribute("data-value") : cell.textContent.trim();
    if (raw === "") return null;
    return numeric ? parseFloat(raw) : raw;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
    heads.forEach(function (th, col) {
      th.addEventListener("click", function () {
        var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
        var sign = dir === "ascending" ? 1 : -1;
        var numeric = th.getAttribute("data-type") === "number";
        heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir);
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var ka = key(a, col, numeric), kb = key(b, col, numeric), c;
          if (ka === null || kb === null) c = (ka === null) - (kb === null);
          else if (numeric) c = sign * (ka - kb);
          else c = sign * ka.localeCompare(kb, "en", {numeric: true});
          return c || (Number(a.getAttribute("data-order")) - Number(b.getAttribute("data-order")));
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""

# Okabe-Ito colours (colour-blind safe, without the yellow that vanishes on white) and
# marker shapes; scenario i gets colour i mod 7 and shape i mod 4, so 28 scenarios differ.
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_SHAPES = ("circle", "square", "triangle", "diamond")
_NOTE_REF = re.compile(r"\[(\d+)\]")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(x: float) -> str:
    """A sort key for ``data-value``: fixed format, enough digits to order any two entries."""
    return f"{x:.6f}"


def _page(title: str, body: list[str], script: bool) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           '<meta name="generator" content="mrbench leaderboard build">',
           f"<title>{_e(title)}</title>", "<style>", _CSS.rstrip("\n"), "</style>", "</head>", "<body>"]
    out += body
    if script:
        out += ["<script>", _JS.rstrip("\n"), "</script>"]
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def scenarios(rows: list[Row]) -> list[str]:
    """The non-clean scenarios of the rows' entries, sorted: one extra column each."""
    return sorted({name for r in rows for name in r.entry.entry.metrics} - {CLEAN})


def _acc_cell(m: ScenarioMetrics, n_suite: int) -> str:
    """A ``<td>`` with the scenario's accuracy ± CI in percent, sorting on the accuracy."""
    ci = "" if math.isnan(m.ci95) else f" ± {_pct(m.ci95)}"
    # A costly scenario may cover a prefix of the suite's episodes; say so where it does.
    part = f' <span class="n">({m.n_episodes} ep.)</span>' if m.n_episodes != n_suite else ""
    title = f"{m.n_episodes} episodes, {m.n_queries} queries"
    return (f'<td class="num" data-value="{_num(100 * m.accuracy)}" title="{_e(title)}">'
            f"{_pct(m.accuracy)}{ci}{part}</td>")


def _head(label: str, column: str, numeric: bool, extra: str = "") -> str:
    cls = ' class="num"' if numeric else ""
    typ = "number" if numeric else "text"
    return (f'<th scope="col"{cls} data-type="{typ}" data-column="{_e(column)}"{extra}>'
            f'<button type="button">{_e(label)}</button></th>')


def _table(board: Board, rows: list[Row], extra: list[str], markers: dict[str, str]) -> list[str]:
    # The columns of table.md, with the scenario columns next to the clean one so they read together.
    heads = [
        _head("Rank", "rank", True, ' aria-sort="ascending"'), _head("Algorithm", "algorithm", False),
        _head("Version", "version", False), _head("Section", "section", False),
        _head("Clean acc. (%) ± 95% CI", "clean", True),
        *(_head(f"{name} (%)", f"scenario:{name}", True, f' data-scenario="{_e(name)}"') for name in extra),
        _head("p vs. above", "p", True), _head("Reported (%)", "reported", True), _head("Episodes", "episodes", True),
        _head("Distribution", "distribution", False), _head("Notes", "notes", False),
        _head("Checkpoint", "checkpoint", False), _head("Entry", "entry", False),
    ]
    out = ['<div class="scroll">', '<table class="sortable" id="leaderboard">', "<thead>", "<tr>", *heads, "</tr>",
           "</thead>", "<tbody>"]
    n_suite = board.suite.n_episodes
    for i, r in enumerate(rows):
        en, m, rep = r.entry.entry, r.entry.entry.metrics[CLEAN], _reported(r.entry)
        cls = " ".join(c for c in (r.section, "unreliable" if en.unreliable else "") if c)
        attrs = {"order": str(i), "entry": r.entry.name, "algorithm": en.algorithm.id,
                 "version": en.algorithm.version, "section": r.section, "rank": r.rank,
                 "clean": _num(100 * m.accuracy), "unreliable": str(en.unreliable).lower()}
        out.append(f'<tr class="{cls}" ' + " ".join(f'data-{k}="{_e(v)}"' for k, v in attrs.items()) + ">")
        dist = " ".join(x for x in (en.algorithm.distribution, en.algorithm.distribution_version) if x) or "-"
        cells = [
            f'<td class="num" data-value="{i}">{_e(r.rank)}</td>',
            f"<td>{_e(display_name(en))}</td>",
            f"<td>{_e(en.algorithm.version)}</td>",
            f"<td>{_e(r.section)}</td>",
            _acc_cell(m, n_suite),
        ]
        for name in extra:
            sm = en.metrics.get(name)
            cells.append(_acc_cell(sm, n_suite) if sm is not None
                         else '<td class="na" data-value="" title="not evaluated">–</td>')
        notes = _NOTE_REF.sub(r'<a href="#note-\1">[\1]</a>', _e(markers[r.entry.name]))
        cells += [
            f'<td class="num" data-value="{"" if r.p_vs_above is None else f"{r.p_vs_above:.6e}"}">'
            f"{_e(_p(r.p_vs_above))}</td>",
            (f'<td class="num" data-value="{_num(100 * rep.accuracy)}" title="{_e(rep.source)}">{_pct(rep.accuracy)}'
             "</td>") if rep else '<td class="num" data-value=""></td>',
            f'<td class="num" data-value="{m.n_episodes}">{m.n_episodes}</td>',
            f"<td>{_e(dist)}</td>",
            f"<td>{notes}</td>",
            f'<td><code title="{_e(r.entry.weights or "")}">{_e((r.entry.weights or "")[:12])}</code></td>',
            f'<td><a href="entries/{_e(quote(r.entry.name))}">{_e(r.entry.name)}</a></td>',
        ]
        out += cells + ["</tr>"]
    out += ["</tbody>", "</table>", "</div>"]
    return out


def _axis(values: list[float]) -> tuple[float, float, float]:
    """``(low, high, step)`` of a percent axis holding ``values``: the smallest step that
    divides 100 and spans the values in at most 8 steps; ends on multiples of the step
    (so within [0, 100]) and never equal."""
    vmin, vmax = min(values), max(values)
    step = next(s for s in (1, 2, 5, 10, 20) if (vmax - vmin) / s <= 8)
    low, high = math.floor(vmin / step) * step, math.ceil(vmax / step) * step
    if high <= low:
        low, high = (low, low + step) if low + step <= 100 else (high - step, high)
    return float(low), float(high), float(step)


def _marker(shape: str, x: float, y: float, colour: str) -> str:
    r = 4.5
    fill = f'fill="{colour}" stroke="#ffffff" stroke-width="1"'
    if shape == "circle":
        return f'<circle cx="{x:.2f}" cy="{y:.2f}" r="{r}" {fill}/>'
    if shape == "square":
        return f'<rect x="{x - r:.2f}" y="{y - r:.2f}" width="{2 * r}" height="{2 * r}" {fill}/>'
    if shape == "triangle":
        pts = ((x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r))
    else:
        pts = ((x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y))
    return f'<polygon points="{" ".join(f"{px:.2f},{py:.2f}" for px, py in pts)}" {fill}/>'


def _labels(rows: list[Row]) -> dict[str, str]:
    """Entry file name -> marker label: the algorithm id where it is unique on the board,
    else the entry's file name without ``.json`` (two checkpoints of one algorithm)."""
    ids = [r.entry.entry.algorithm.id for r in rows]
    return {r.entry.name: a if ids.count(a) == 1 else r.entry.name.removesuffix(".json") for r, a in zip(rows, ids, strict=True)}


def scatter_svg(rows: list[Row], extra: list[str]) -> str:
    """An inline SVG plot of clean accuracy (x) against the accuracy under each non-clean
    scenario (y): one labelled marker per entry and scenario, a legend, and the diagonal
    on which robust accuracy equals clean accuracy.

    :param rows: from :func:`bench.leaderboard.rank`.
    :param extra: the scenarios to plot (see :func:`scenarios`); must not be empty.
    """
    labels = _labels(rows)
    points = [(i, r, name, 100 * r.entry.entry.metrics[CLEAN].accuracy, 100 * r.entry.entry.metrics[name].accuracy)
              for i, name in enumerate(extra) for r in rows if name in r.entry.entry.metrics]
    low, high, step = _axis([v for p in points for v in p[3:]])
    left, top, size = 64.0, 16.0, 400.0
    legend_x = left + size + 32
    width, height = legend_x + 16 + max(len(name) for name in extra) * 7 + 24, top + size + 56

    def sx(v: float) -> float:
        return left + (v - low) / (high - low) * size

    def sy(v: float) -> float:
        return top + size - (v - low) / (high - low) * size

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="scatter" role="img" width="{width:.0f}" '
           f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" aria-labelledby="scatter-title">',
           '<title id="scatter-title">Clean accuracy against accuracy under each scenario, one marker per entry '
           "and scenario</title>"]
    n_ticks = round((high - low) / step)
    for k in range(n_ticks + 1):
        v = low + k * step
        out += [f'<line class="grid" x1="{sx(v):.2f}" y1="{top:.2f}" x2="{sx(v):.2f}" y2="{top + size:.2f}"/>',
                f'<line class="grid" x1="{left:.2f}" y1="{sy(v):.2f}" x2="{left + size:.2f}" y2="{sy(v):.2f}"/>',
                f'<text x="{sx(v):.2f}" y="{top + size + 16:.2f}" text-anchor="middle">{v:g}</text>',
                f'<text x="{left - 8:.2f}" y="{sy(v) + 4:.2f}" text-anchor="end">{v:g}</text>']
    out += [f'<line class="axis" x1="{left:.2f}" y1="{top + size:.2f}" x2="{left + size:.2f}" y2="{top + size:.2f}"/>',
            f'<line class="axis" x1="{left:.2f}" y1="{top:.2f}" x2="{left:.2f}" y2="{top + size:.2f}"/>',
            f'<line class="diagonal" x1="{sx(low):.2f}" y1="{sy(low):.2f}" x2="{sx(high):.2f}" y2="{sy(high):.2f}">'
            "<title>robust accuracy = clean accuracy</title></line>",
            f'<text x="{left + size / 2:.2f}" y="{top + size + 40:.2f}" text-anchor="middle">Clean accuracy (%)</text>',
            f'<text x="16" y="{top + size / 2:.2f}" text-anchor="middle" '
            f'transform="rotate(-90 16 {top + size / 2:.2f})">Accuracy under the scenario (%)</text>']
    for i, r, name, x, y in points:
        en = r.entry.entry
        colour, shape = _COLOURS[i % len(_COLOURS)], _SHAPES[i % len(_SHAPES)]
        tip = f"{en.algorithm.id} v{en.algorithm.version} ({r.entry.name}), {name}: {y:.2f}% (clean {x:.2f}%)"
        out += [f'<g class="point" data-entry="{_e(r.entry.name)}" data-algorithm="{_e(en.algorithm.id)}" '
                f'data-scenario="{_e(name)}">', f"<title>{_e(tip)}</title>", _marker(shape, sx(x), sy(y), colour),
                f'<text x="{sx(x) + 7:.2f}" y="{sy(y) - 6:.2f}">{_e(labels[r.entry.name])}</text>', "</g>"]
    out.append('<g class="legend">')
    for i, name in enumerate(extra):
        y = top + 8 + i * 18
        out += [_marker(_SHAPES[i % len(_SHAPES)], legend_x, y, _COLOURS[i % len(_COLOURS)]),
                f'<text x="{legend_x + 12:.2f}" y="{y + 4:.2f}">{_e(name)}</text>']
    out += ["</g>", "</svg>"]
    return "\n".join(out)


def render_html(board: Board, rows: list[Row]) -> str:
    """The board's page: the rows of table.md (one table, section as a column, sortable
    by any header), one column per non-clean scenario, the notes, and the clean-vs-robust
    plot when any entry has a non-clean scenario; deterministic.

    :param board: the board.
    :param rows: from :func:`bench.leaderboard.rank`.
    """
    s = board.suite
    markers, notes = _notes(rows)
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
        *_table(board, rows, extra, markers),
        "<h2>Clean vs. robust accuracy</h2>",
    ]
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
