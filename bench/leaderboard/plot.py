"""table.html's plot: clean accuracy against the accuracy under each scenario, as inline SVG.

Deterministic like the rest of the page: fixed float formatting, markers in row order.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bench.leaderboard.columns import CLEAN
from bench.leaderboard.format import escape_html

if TYPE_CHECKING:
    from bench.leaderboard.ranking import Row

# Okabe-Ito colours (colour-blind safe, without the yellow that vanishes on white) and
# marker shapes; scenario i gets colour i mod 7 and shape i mod 4, so 28 scenarios differ.
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_SHAPES = ("circle", "square", "triangle", "diamond")


def axis(values: list[float]) -> tuple[float, float, float]:
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
    return {r.entry.name: a if ids.count(a) == 1 else r.entry.name.removesuffix(".json")
            for r, a in zip(rows, ids, strict=True)}


def scatter_svg(rows: list[Row], extra: list[str]) -> str:
    """An inline SVG plot of clean accuracy (x) against the accuracy under each non-clean
    scenario (y): one labelled marker per entry and scenario, a legend, and the diagonal
    on which robust accuracy equals clean accuracy.

    :param rows: from :func:`bench.leaderboard.rank`.
    :param extra: the scenarios to plot (see :func:`bench.leaderboard.columns.scenarios`); must not be empty.
    """
    labels = _labels(rows)
    points = [(i, r, name, 100 * r.entry.entry.metrics[CLEAN].accuracy, 100 * r.entry.entry.metrics[name].accuracy)
              for i, name in enumerate(extra) for r in rows if name in r.entry.entry.metrics]
    low, high, step = axis([v for p in points for v in p[3:]])
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
        out += [f'<g class="point" data-entry="{escape_html(r.entry.name)}" '
                f'data-algorithm="{escape_html(en.algorithm.id)}" data-scenario="{escape_html(name)}">',
                f"<title>{escape_html(tip)}</title>", _marker(shape, sx(x), sy(y), colour),
                f'<text x="{sx(x) + 7:.2f}" y="{sy(y) - 6:.2f}">{escape_html(labels[r.entry.name])}</text>', "</g>"]
    out.append('<g class="legend">')
    for i, name in enumerate(extra):
        y = top + 8 + i * 18
        out += [_marker(_SHAPES[i % len(_SHAPES)], legend_x, y, _COLOURS[i % len(_COLOURS)]),
                f'<text x="{legend_x + 12:.2f}" y="{y + 4:.2f}">{escape_html(name)}</text>']
    out += ["</g>", "</svg>"]
    return "\n".join(out)


