"""The report's PNG plots (matplotlib on the Agg canvas, imported only when a plot is drawn).

Every plot function takes the data its section gathered, returns nothing and writes
``path``; the default matplotlib style and no software metadata keep the bytes the
same for the same entries.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.report.load import CorruptionTable, LoadedEntry, StepsSeries, acc_of, is_number

DPI = 100


def _figure(width: float, height: float) -> Any:
    """A figure on the Agg canvas, outside pyplot: no global backend switch, nothing to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    fig.clear()


def _styled(draw: Any) -> Any:
    def run(path: Path, *args: Any) -> None:
        import matplotlib
        import matplotlib.style

        # the default style, whatever the user's matplotlibrc says: same bytes everywhere
        with matplotlib.style.context("default"), matplotlib.rc_context({"font.size": 9}):
            _save(draw(*args), path)

    return run


def _color(i: int) -> Any:
    import matplotlib

    return matplotlib.colormaps["tab10"](i % 10)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_STYLES = ("-", "--", "-.", ":")
_WRAP = 90


def _wrap(label: str) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, _WRAP, break_on_hyphens=False)) or label


def _legend_height(labels: list[str], ncols: int = 1) -> float:
    """Inches a legend of these labels takes below the axes (``ncols`` columns)."""
    rows = [_wrap(lab).count("\n") + 1 for lab in labels]
    per_col = math.ceil(len(rows) / ncols)
    return 0.3 + 0.17 * max(1, sum(sorted(rows, reverse=True)[:per_col]))


def _legend(fig: Any, handles: dict[str, Any], ncols: int = 1) -> None:
    if handles:
        fig.legend(list(handles.values()), [_wrap(lab) for lab in handles], loc="outside lower center",
                   ncols=ncols, fontsize=8)


@_styled
def plot_steps(series: list[StepsSeries]) -> Any:
    from matplotlib.ticker import MaxNLocator

    labels = [f"{s.label} ({s.option})" for s in series]
    fig = _figure(7.0, 3.8 + _legend_height(labels))
    ax = fig.add_subplot()
    handles = {}
    for i, (s, lab) in enumerate(zip(series, labels)):
        xs = [v for v, _ in s.points]
        ys = [100 * it.clean["accuracy"] for _, it in s.points]
        err = [100 * (it.clean.get("ci95") if is_number(it.clean.get("ci95")) else 0.0) for _, it in s.points]
        handles[lab] = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=_color(i))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("adaptation steps at test time")
    ax.set_ylabel("clean accuracy (%)")
    ax.grid(alpha=0.3)
    _legend(fig, handles)
    return fig


@_styled
def plot_severity(data: list[tuple[LoadedEntry, CorruptionTable]]) -> Any:
    fig = _figure(7.0, 3.8 + _legend_height([it.label for it, _ in data]))
    ax = fig.add_subplot()
    handles = {}
    for i, (it, c) in enumerate(data):
        pts = ([(0, c.clean)] if c.clean is not None else []) + list(c.by_severity.items())
        (handles[it.label],) = ax.plot([x for x, _ in pts], [100 * y for _, y in pts], marker="o", linewidth=2.5,
                                       color=_color(i))
    ax.set_xticks(range(0, 6))
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("mean corruption accuracy (%)")
    ax.grid(alpha=0.3)
    _legend(fig, handles)
    return fig


@_styled
def plot_corruptions(data: list[tuple[LoadedEntry, CorruptionTable]]) -> Any:
    shifts: list[str] = []
    for _, c in data:
        shifts += [s for s in c.table if s not in shifts]
    n = max(1, len(shifts))
    ncols = min(5, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(max(7.0, 2.6 * ncols + 0.4), 2.2 * nrows + 0.6 + _legend_height([it.label for it, _ in data]))
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    handles: dict[str, Any] = {}
    for k, sid in enumerate(shifts):
        ax = axes[k // ncols][k % ncols]
        for i, (it, c) in enumerate(data):
            sev = c.table.get(sid)
            if not sev:
                continue
            pts = ([(0, it.clean["accuracy"])] if it.clean else []) + sorted((s, m["accuracy"]) for s, m in sev.items())
            (line,) = ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", markersize=3,
                              linewidth=1.2, color=_color(i))
            handles.setdefault(it.label, line)
        ax.set_title(sid, fontsize=9)
        ax.set_xticks(range(0, 6))
        ax.grid(alpha=0.3)
    for k in range(len(shifts), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    for k in range(len(shifts)):
        if k + ncols >= len(shifts):  # the lowest panel of its column
            axes[k // ncols][k % ncols].set_xlabel("severity (0 = clean)")
            axes[k // ncols][k % ncols].xaxis.set_tick_params(labelbottom=True)
    for r in range(nrows):
        axes[r][0].set_ylabel("accuracy (%)")
    _legend(fig, handles)
    return fig


@_styled
def plot_eps(panels: list[tuple[str, list[tuple[float, str]], list]]) -> Any:
    labels: list[str] = []
    for _, _, lines in panels:
        labels += [f"{it.label}: {a}" for it, a, _ in lines if f"{it.label}: {a}" not in labels]
    ncols = 2 if len(panels) > 1 else 1
    fig = _figure(max(7.0, 4.2 * len(panels) + 0.4), 3.8 + _legend_height(labels, ncols))
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    entry_colors: dict[int, int] = {}
    attack_style: dict[str, int] = {}
    handles: dict[str, Any] = {}
    for ax, (t, eps_cols, lines) in zip(axes, panels):
        for it, a, pts in lines:
            ci = entry_colors.setdefault(it.index, len(entry_colors))
            si = attack_style.setdefault(a, len(attack_style))
            xy = ([(0.0, it.clean["accuracy"])] if it.clean else []) + [(e, m["accuracy"]) for e, m in pts]
            (line,) = ax.plot([p[0] for p in xy], [100 * p[1] for p in xy], color=_color(ci),
                              linestyle=_STYLES[si % len(_STYLES)], marker=_MARKERS[si % len(_MARKERS)],
                              markersize=4, linewidth=2.2 if a == "ensemble" else 1.3)
            handles.setdefault(f"{it.label}: {a}", line)
        ax.set_xticks([0.0] + [e for e, _ in eps_cols], ["0"] + [name for _, name in eps_cols],
                      rotation=45 if len(eps_cols) > 4 else 0)
        ax.set_title(f"target: {t}")
        ax.set_xlabel("eps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    _legend(fig, handles, ncols)
    return fig


@_styled
def plot_groups(plots: list[tuple[str, str, list[str], list[LoadedEntry], list[dict[str, Any]]]]) -> Any:
    labels: list[str] = []
    for _, _, _, members, _ in plots:
        labels += [it.label for it in members if it.label not in labels]
    heights = [max(2.0, 0.14 * len(names) * len(members) + 0.25 * len(names) + 0.8)
               for _, _, names, members, _ in plots]
    fig = _figure(7.5, min(sum(heights) + _legend_height(labels), 60.0))
    axes = fig.subplots(len(plots), 1, squeeze=False, height_ratios=heights)[:, 0]
    colors = {lab: i for i, lab in enumerate(labels)}
    handles: dict[str, Any] = {}
    for ax, (by, scenario, names, members, groups) in zip(axes, plots):
        k = len(members)
        width = 0.8 / k
        for j, (it, gs) in enumerate(zip(members, groups)):
            ys = [n + (j - (k - 1) / 2) * width for n in range(len(names))]
            xs = [100 * acc_of(gs.get(g)) if math.isfinite(acc_of(gs.get(g))) else 0.0 for g in names]
            handles.setdefault(it.label, ax.barh(ys, xs, height=width, color=_color(colors[it.label])))
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_ylim(len(names) - 0.5, -0.5)  # the table's order, top to bottom
        ax.set_xlim(0, 100)
        ax.set_xlabel(f"accuracy (%), {scenario}")
        ax.set_title(f"per {by}")
        ax.grid(axis="x", alpha=0.3)
    _legend(fig, handles)
    return fig
