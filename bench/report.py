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
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bench.errors import MrbenchError
from bench.protocol.scenarios import TARGETS, Scenario, ShiftCell, parse

REPORT_NAME = "report.md"
DPI = 100
#: shift ids that change the support set rather than the images; never part of the
#: mean corruption accuracy. Severity ``s`` is the fraction ``step * s``.
SUPPORT_SHIFTS: dict[str, tuple[float, str]] = {
    "label-noise": (0.1, "support labels flipped"),
    "class-imbalance": (0.2, "classes reduced to one distinct shot"),
}
TARGET_MEANING = {"query": "evasion: queries perturbed", "support": "poisoning: support set perturbed",
                  "both": "support and queries perturbed"}



# --------------------------------------------------------------------------- API


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
    items = [_load(e, i) for i, e in enumerate(entries)]
    _assign_labels(items)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MrbenchError(f"The report folder {out} is a file.", "Pass a folder for --out.")
    out.mkdir(parents=True, exist_ok=True)

    rep = _Report(out)
    rep.lines.append(_sources_line(items))
    _section_summary(rep, items)
    _section_gap(rep, items)
    _section_steps(rep, items)
    _section_transfer(rep, items)
    _section_corruptions(rep, items)
    _section_support(rep, items)
    _section_attacks(rep, items)
    _section_breakdown(rep, items)

    text = "\n".join(rep.lines).rstrip("\n") + "\n"
    md = out / REPORT_NAME
    md.write_bytes(text.encode("utf-8"))
    return ReportSummary(markdown=md, plots=list(rep.plots), sections=list(rep.sections))


# --------------------------------------------------------------------- loading


@dataclass
class _Item:
    entry: dict[str, Any]
    source: str  # the file name, or "entry N" for a dict
    index: int
    label: str = ""
    scenarios: list[Scenario] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # metrics names that are no scenario name

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        return self.entry["metrics"]

    @property
    def clean(self) -> dict[str, Any] | None:
        return self.metrics.get("clean")

    @property
    def sha(self) -> str | None:
        return (self.entry.get("checkpoint") or {}).get("sha256")

    @property
    def options(self) -> dict[str, Any]:
        return self.entry["algorithm"].get("options") or {}

    @property
    def split(self) -> str:
        return (self.entry.get("dataset") or {}).get("split") or "meta-test"

    @property
    def suite_ref(self) -> str:
        s = self.entry["suite"]
        return f"{s['id']}@v{s['version']}"

    @property
    def suite_cell(self) -> str:
        return self.suite_ref + ("" if self.split == "meta-test" else f" ({self.split})")


def _load(e: str | Path | dict, index: int) -> _Item:
    from bench.results.frame import load_entry

    if isinstance(e, dict):
        where, source, entry = f"Result entry #{index + 1} (a dict)", f"entry {index + 1}", e
    else:
        path = Path(e)
        where, source = f"Result entry {path}", path.name
        try:
            entry = load_entry(path)
        except FileNotFoundError:
            raise MrbenchError(f"{where} does not exist.", "Check the path of the RESULT.json file.") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise MrbenchError(f"{where} cannot be read: {exc}.",
                               "Pass a RESULT.json file written by `mrbench evaluate`.") from None
    hint = "Pass a RESULT.json file written by `mrbench evaluate`."
    if not isinstance(entry, dict) or entry.get("kind") != "mrbench-result":
        kind = entry.get("kind") if isinstance(entry, dict) else type(entry).__name__
        raise MrbenchError(f"{where} is not an mrbench result entry (kind {kind!r}, expected 'mrbench-result').", hint)
    problems = []
    metrics = entry.get("metrics")
    if not isinstance(metrics, dict):
        problems.append("no 'metrics' object")
    else:
        for name, m in metrics.items():
            if not (isinstance(m, dict) and _is_number(m.get("accuracy"))):
                problems.append(f"metric {name!r} has no numeric accuracy")
    for key, sub in (("suite", ("id", "version")), ("algorithm", ("id",))):
        if not isinstance(entry.get(key), dict) or any(s not in entry[key] for s in sub):
            problems.append(f"'{key}' lacks {' or '.join(sub)}")
    if problems:
        raise MrbenchError(f"{where} is malformed: {'; '.join(problems)}.", hint)
    item = _Item(entry, source, index)
    for name in metrics:
        try:
            item.scenarios.append(parse(name))
        except MrbenchError:
            item.unknown.append(name)
    return item


def _n_episodes(it: _Item) -> int:
    return int((it.entry.get("suite") or {}).get("n_episodes") or 0)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _assign_labels(items: list[_Item]) -> None:
    """``entry_label`` of each entry; equal labels get what tells them apart appended
    (suite, split, differing options, training suite, checkpoint, file), only as much
    as it takes to make them unique."""
    from bench.results.frame import entry_label

    groups: dict[str, list[_Item]] = defaultdict(list)
    for it in items:
        groups[entry_label(it.entry)].append(it)
    parts: dict[int, list[str]] = {it.index: [] for it in items}
    for members in groups.values():
        _refine(members, list(_QUALIFIERS), parts)
    seen: set[str] = set()
    for it in items:
        lab = entry_label(it.entry) + (f" [{', '.join(parts[it.index])}]" if parts[it.index] else "")
        n, new = 2, lab
        while new in seen:  # a qualified label could still equal another entry's label
            new, n = f"{lab} #{n}", n + 1
        seen.add(new)
        it.label = new


def _refine(members: list[_Item], qualifiers: list[str], parts: dict[int, list[str]]) -> None:
    """Append the first qualifier that differs among ``members`` to their labels, then
    do the same within each set of members that still share a label."""
    if len(members) < 2:
        return
    keys: list[str] = []
    for it in members:
        keys += [k for k in it.options if k not in keys]
    varying = [k for k in keys
               if len({_options_key({k: it.options[k]}) if k in it.options else None for it in members}) > 1]
    for n, q in enumerate(qualifiers):
        values = [_qualifier(q, it, varying) for it in members]
        if len(set(values)) < 2:
            continue
        same: dict[str, list[_Item]] = {}
        for it, v in zip(members, values):
            parts[it.index].append(v)
            same.setdefault(v, []).append(it)
        for sub in same.values():
            _refine(sub, qualifiers[n + 1:], parts)
        return


_QUALIFIERS = ("suite", "split", "options", "trained_on", "checkpoint", "source", "index")


def _qualifier(kind: str, it: _Item, varying: list[str]) -> str:
    """What tells an entry apart from others with the same label, most telling first."""
    if kind == "suite":
        return it.suite_ref
    if kind == "split":
        return it.split
    if kind == "options":
        return ", ".join(f"{k}={it.options[k]}" if k in it.options else f"no {k}" for k in varying)
    if kind == "trained_on":
        return "trained on " + str((it.entry.get("transfer") or {}).get("trained_on", it.suite_ref))
    if kind == "checkpoint":
        return f"ckpt {(it.sha or '?')[:8]}"
    if kind == "source":
        return it.source
    return f"#{it.index + 1}"


def _sources_line(items: list[_Item]) -> str:
    parts = [f"`{it.source}` ({_md(it.label)}, created {it.entry.get('created') or 'unknown'})" for it in items]
    n = len(items)
    return f"Report on {n} result {'entry' if n == 1 else 'entries'}: " + "; ".join(parts) + "."


# ------------------------------------------------------------------- formatting


class _Report:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.lines: list[str] = []
        self.plots: list[Path] = []
        self.sections: list[str] = []

    def section(self, name: str, title: str) -> None:
        self.sections.append(name)
        if self.lines and self.lines[-1] != "":
            self.lines.append("")
        self.lines += [f"## {title}", ""]

    def table(self, head: list[str], rows: list[list[str]], text_cols: int = 1) -> None:
        """A Markdown table; the first ``text_cols`` columns left-aligned, numbers right-aligned."""
        self.lines.append("| " + " | ".join(head) + " |")
        self.lines.append("|" + "|".join("---" if i < text_cols else "--:" for i in range(len(head))) + "|")
        for r in rows:
            self.lines.append("| " + " | ".join(r) + " |")
        self.lines.append("")

    def plot(self, name: str, caption: str, draw: Any, *args: Any) -> None:
        path = self.out / name
        draw(path, *args)
        self.plots.append(path)
        self.lines += [f"![{caption}]({name})", ""]


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _pct(x: float | None) -> str:
    return "–" if x is None or not _is_number(x) else f"{100 * x:.2f}"


def _acc(m: dict[str, Any] | None) -> str:
    """``96.21 ± 0.39`` from a metric (``–`` when missing; no CI when it is not a number)."""
    if not m or not _is_number(m.get("accuracy")):
        return "–"
    ci = m.get("ci95")
    return _pct(m["accuracy"]) + (f" ± {_pct(ci)}" if _is_number(ci) else "")


def _points(d: float) -> str:
    return f"{100 * d:+.2f}"


def _spec(spec: dict[str, Any] | None) -> str:
    if not spec or "n_way" not in spec or "k_shot" not in spec:
        return ""
    return f"{spec['n_way']}-way {spec['k_shot']}-shot"


# ------------------------------------------------------------------ data views


@dataclass
class _Corr:
    """One entry's image-corruption results."""

    table: dict[str, dict[int, dict[str, Any]]]  # shift id -> severity -> metric
    by_shift: dict[str, float]
    by_severity: dict[int, float]
    mean: float | None
    ci: float | None
    clean: float | None
    rel: float | None
    from_summary: bool


def _corruption_ids(item: _Item) -> set[str] | None:
    """The shift ids the entry's summary counts as corruptions (None: no summary)."""
    summ = (item.entry.get("summary") or {}).get("corruptions")
    if isinstance(summ, dict) and isinstance(summ.get("by_shift"), dict):
        return set(summ["by_shift"])
    return None


def _is_corruption(item: _Item, sc: Scenario) -> bool:
    if sc.kind != "shift" or sc.shift in SUPPORT_SHIFTS:
        return False
    known = _corruption_ids(item)
    return known is None or sc.shift in known


def _corruptions(item: _Item) -> _Corr | None:
    summ = (item.entry.get("summary") or {}).get("corruptions")
    summ = summ if isinstance(summ, dict) else None
    table: dict[str, dict[int, dict[str, Any]]] = {}
    for sc in item.scenarios:
        if _is_corruption(item, sc):
            table.setdefault(sc.shift, {})[sc.severity] = item.metrics[sc.name]
    if not table and summ is None:
        return None
    clean = item.clean["accuracy"] if item.clean else None
    by_shift = {s: _mean([m["accuracy"] for m in sev.values()]) for s, sev in table.items()}
    sevs = sorted({s for sev in table.values() for s in sev})
    by_severity = {s: _mean([sev[s]["accuracy"] for sev in table.values() if s in sev]) for s in sevs}
    accs = [m["accuracy"] for sev in table.values() for m in sev.values()]
    if summ is not None:
        for s, v in (summ.get("by_shift") or {}).items():
            if isinstance(v, dict) and _is_number(v.get("accuracy")):
                by_shift[s] = v["accuracy"]
        from_sum = {int(s): v["accuracy"] for s, v in (summ.get("by_severity") or {}).items()
                    if str(s).isdigit() and isinstance(v, dict) and _is_number(v.get("accuracy"))}
        by_severity = from_sum or by_severity
        mean = summ.get("accuracy") if _is_number(summ.get("accuracy")) else None
        ci = summ.get("ci95") if _is_number(summ.get("ci95")) else None
        clean = summ.get("clean") if _is_number(summ.get("clean")) else clean
        rel = summ.get("relative_degradation") if _is_number(summ.get("relative_degradation")) else None
        return _Corr(table, by_shift, dict(sorted(by_severity.items())), mean, ci, clean, rel, True)
    from bench.results.stats import mean_ci95

    mean, ci = mean_ci95(accs)
    ci = ci if _is_number(ci) else None
    rel = (clean - mean) / clean if clean else None
    return _Corr(table, by_shift, by_severity, mean, ci, clean, rel, False)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _attacks(item: _Item) -> list[Scenario]:
    return [sc for sc in item.scenarios if sc.kind in ("attack", "ensemble")]


def _targets(items: list[_Item]) -> list[str]:
    found = {sc.target for it in items for sc in _attacks(it)}
    return [t for t in TARGETS if t in found]


def _strongest(item: _Item, target: str) -> Scenario | None:
    """The lowest-accuracy attack scenario at the target's largest eps (an individual
    attack wins a tie with the ensemble, so the cell names the attack)."""
    cands = [sc for sc in _attacks(item) if sc.target == target]
    if not cands:
        return None
    top = max(sc.eps for sc in cands)
    at = [sc for sc in cands if sc.eps == top]
    return min(at, key=lambda sc: (item.metrics[sc.name]["accuracy"], sc.kind == "ensemble", sc.label))


def _options_key(opts: dict[str, Any], drop: str | None = None) -> str:
    return json.dumps({k: v for k, v in opts.items() if k != drop}, sort_keys=True, default=str)


# -------------------------------------------------------------------- sections


def _section_summary(rep: _Report, items: list[_Item]) -> None:
    corr = [_corruptions(it) for it in items]
    noise = [s for s in (2, 4) if any(ShiftCell("label-noise", s).name in it.metrics for it in items)]
    targets = _targets(items)
    any_unreliable = any(it.entry.get("unreliable") for it in items)

    head = ["entry", "suite", "episodes", "clean"]
    if any(c is not None for c in corr):
        head += ["mean corruption", "rel. degradation"]
    head += [f"label noise {10 * s}%" for s in noise]
    head += [f"strongest attack ({t})" for t in targets]
    if any_unreliable:
        head.append("unreliable")
    rows = []
    for it, c in zip(items, corr):
        row = [_md(it.label), it.suite_cell, str(it.entry["suite"]["n_episodes"]), _acc(it.clean)]
        if any(x is not None for x in corr):
            if c is None:
                row += ["–", "–"]
            else:
                mark = "" if c.from_summary else " †"
                row += [_acc({"accuracy": c.mean, "ci95": c.ci}) + mark,
                        "–" if c.rel is None else f"{100 * c.rel:.2f}%{mark}"]
        row += [_acc(it.metrics.get(ShiftCell("label-noise", s).name)) for s in noise]
        for t in targets:
            sc = _strongest(it, t)
            row.append("–" if sc is None else f"{_acc(it.metrics[sc.name])} (`{sc.label}@{sc.eps_name}`)")
        if any_unreliable:
            row.append("**yes**" if it.entry.get("unreliable") else "no")
        rows.append(row)

    rep.section("summary", "Summary")
    rep.lines += ["Accuracy in % with the 95% CI half-width. Mean corruption: over every image-corruption "
                  "scenario; relative degradation = (clean - corrupted) / clean. Strongest attack: the "
                  "lowest accuracy over the attacks (and their per-query ensemble) at the largest eps "
                  "evaluated for that target.", ""]
    rep.table(head, rows, text_cols=2)
    notes = []
    if len({it.entry["suite"]["manifest_sha256"] for it in items}) > 1:
        notes.append("- The entries were not all evaluated on the same episodes (different manifests, e.g. a "
                     "subset of a suite's episodes): compare their numbers with care.")
    if any(c is not None and not c.from_summary for c in corr):
        notes.append("- †: computed from the entry's metrics (it has no corruption summary); the CI is "
                     "over the corruption scenarios, not over episodes.")
    for it in items:
        foot = " ".join(str(it.entry.get("footnote") or "").split())  # one line, whatever it holds
        if it.entry.get("unreliable"):
            notes.append(f"- {_md(it.label)}: **unreliable**" + (f": {foot}" if foot else "."))
        elif foot:
            notes.append(f"- {_md(it.label)}: {foot}")
        if it.unknown:
            notes.append(f"- {_md(it.label)}: scenarios this report does not know (not shown): "
                         + ", ".join(f"`{o}`" for o in it.unknown) + ".")
    if notes:
        rep.lines += notes + [""]


def _section_gap(rep: _Report, items: list[_Item]) -> None:
    pairs = []
    tests = [it for it in items if it.split == "meta-test" and it.sha and it.clean]
    for tr in items:
        if tr.split != "meta-train" or not tr.sha or not tr.clean:
            continue
        key = (tr.sha, tr.entry["algorithm"]["id"], _options_key(tr.options))
        same = [te for te in tests if (te.sha, te.entry["algorithm"]["id"], _options_key(te.options)) == key]
        if not same:
            continue
        # The same suite first, then the entry with the most episodes (a full suite over a subset).
        te = max(same, key=lambda te: (te.suite_ref == tr.suite_ref, _n_episodes(te)))
        pairs.append((tr, te))
    if not pairs:
        return
    rep.section("gap", "Meta-train vs meta-test gap")
    rep.lines += ["The same checkpoint and options evaluated on episodes of its meta-training classes and "
                  "on the meta-test classes (clean accuracy, %). Gap = meta-train - meta-test, in points; "
                  "positive means the learner does better on the classes it was trained on.", ""]
    rows = [[_md(tr.label), _md(te.label), _md(te.suite_ref), _acc(tr.clean), _acc(te.clean),
             _points(tr.clean["accuracy"] - te.clean["accuracy"])] for tr, te in pairs]
    rep.table(["meta-train entry", "meta-test entry", "suite", "meta-train", "meta-test", "gap (points)"], rows,
              text_cols=3)


@dataclass
class _Series:
    option: str
    label: str
    points: list[tuple[int, _Item]]


def _steps_series(items: list[_Item]) -> list[_Series]:
    keys: list[str] = []
    for it in items:
        keys += [k for k, v in it.options.items()
                 if "steps" in k and isinstance(v, int) and not isinstance(v, bool) and k not in keys]
    keys.sort(key=lambda k: (k != "inner_steps_test", k))
    series: list[_Series] = []
    for k in keys:
        groups: dict[tuple, list[_Item]] = {}
        for it in items:
            v = it.options.get(k)
            if not it.sha or not it.clean or not isinstance(v, int) or isinstance(v, bool):
                continue
            ds = it.entry.get("dataset") or {}
            gk = (it.sha, it.entry["algorithm"]["id"], it.suite_ref, it.split, ds.get("id"),
                  json.dumps(ds.get("options"), sort_keys=True, default=str), _options_key(it.options, k),
                  json.dumps(it.entry.get("transfer"), sort_keys=True, default=str))
            groups.setdefault(gk, []).append(it)
        for members in groups.values():
            by_value: dict[int, _Item] = {}
            for it in members:
                held = by_value.get(it.options[k])
                if held is None or _n_episodes(it) > _n_episodes(held):
                    by_value[it.options[k]] = it
            if len(by_value) >= 2:
                from bench.results.frame import entry_label

                first = members[0]
                series.append(_Series(k, entry_label(first.entry), sorted(by_value.items(), key=lambda p: p[0])))
    counts: dict[str, int] = defaultdict(int)
    for s in series:
        counts[s.label] += 1
    for s in series:
        if counts[s.label] > 1:
            it = s.points[0][1]
            s.label += f" [{it.suite_cell}, ckpt {(it.sha or '?')[:8]}]"
    return series


def _section_steps(rep: _Report, items: list[_Item]) -> None:
    series = _steps_series(items)
    if not series:
        return
    rep.section("steps", "Adaptation steps")
    rep.lines += ["Entries of the same checkpoint that differ only in a test-time adaptation-steps option "
                  "(clean accuracy, %; change in points from the fewest steps).", ""]
    rows = []
    for s in series:
        first = s.points[0][1].clean["accuracy"]
        for v, it in s.points:
            rows.append([_md(s.label), _md(it.label), f"`{s.option}`", str(v), _acc(it.clean),
                         _points(it.clean["accuracy"] - first)])
    rep.table(["checkpoint", "entry", "option", "steps", "clean", "change (points)"], rows, text_cols=3)
    rep.plot("steps.png", "Clean accuracy vs adaptation steps", _plot_steps, series)


def _section_transfer(rep: _Report, items: list[_Item]) -> None:
    moved = [it for it in items if isinstance(it.entry.get("transfer"), dict)]
    if not moved:
        return
    rep.section("transfer", "Shift and transfer")
    rep.lines += ["Learners evaluated on another suite than the one they were trained for (way/shot, "
                  "domain or class-split shift). Drop = accuracy of the same checkpoint on its own training "
                  "suite minus accuracy here, in points, when that entry is given.", ""]
    rows = []
    for it in moved:
        tr = it.entry["transfer"]
        trained_on = str(tr.get("trained_on") or (it.entry.get("training") or {}).get("suite") or "?")
        own = [o for o in items if o is not it and o.sha and o.sha == it.sha and not o.entry.get("transfer")
               and o.suite_ref == trained_on and o.split == "meta-test" and o.clean]
        own.sort(key=lambda o: (_options_key(o.options) != _options_key(it.options), -_n_episodes(o)))
        train_spec = _spec(tr.get("train_spec"))
        test_spec = _spec(it.entry["suite"].get("spec"))
        src = trained_on + (f" ({train_spec})" if train_spec else "")
        dst = it.suite_cell + (f" ({test_spec})" if test_spec else "")
        kinds = ", ".join(str(k) for k in (tr.get("kinds") or [])) or "–"
        drop = "–"
        if own and it.clean:
            drop = f"{_points(own[0].clean['accuracy'] - it.clean['accuracy'])} (vs {_md(own[0].label)})"
        rows.append([_md(it.label), f"{src} → {dst}", kinds, _acc(it.clean), drop])
    rep.table(["entry", "trained on → evaluated on", "kinds", "clean", "drop (points)"], rows, text_cols=3)


def _section_corruptions(rep: _Report, items: list[_Item]) -> None:
    data = [(it, c) for it in items if (c := _corruptions(it)) is not None]
    if not data:
        return
    rep.section("corruptions", "Corruptions")
    rep.lines += ["Accuracy (%) per image corruption and severity; `mean` is over the severities evaluated "
                  "(from the entry's corruption summary when it has one).", ""]
    for it, c in data:
        rep.lines += [f"### {_md(it.label)}", ""]
        sevs = sorted({s for sev in c.table.values() for s in sev} | set(c.by_severity))
        head = ["corruption"] + [str(s) for s in sevs] + ["mean"]
        rows = [[f"`{sid}`"] + [_acc(sev.get(s)) for s in sevs] + [_pct(c.by_shift.get(sid))]
                for sid, sev in c.table.items()]
        mark = "" if c.from_summary else " †"
        rows.append(["**mean**"] + [_pct(c.by_severity.get(s)) for s in sevs]
                    + [_acc({"accuracy": c.mean, "ci95": c.ci}) + mark])
        rep.table(head, rows)
        rel = "–" if c.rel is None else f"{100 * c.rel:.2f}%"
        rep.lines += [f"Clean {_acc(it.clean)}; mean corruption accuracy "
                      f"{_acc({'accuracy': c.mean, 'ci95': c.ci})}{mark}; relative degradation {rel}"
                      f"{mark}" + (" († computed from the metrics; CI over scenarios)." if mark else "."), ""]
    rep.plot("severity.png", "Mean corruption accuracy vs severity", _plot_severity, data)
    rep.plot("corruptions.png", "Accuracy vs severity per corruption", _plot_corruptions, data)


def _section_support(rep: _Report, items: list[_Item]) -> None:
    shifts: list[str] = []
    for it in items:
        for sc in it.scenarios:
            if sc.kind == "shift" and not _is_corruption(it, sc) and sc.shift not in shifts:
                shifts.append(sc.shift)
    if not shifts:
        return
    shifts.sort(key=lambda s: (s not in SUPPORT_SHIFTS, list(SUPPORT_SHIFTS).index(s) if s in SUPPORT_SHIFTS else 0, s))
    rep.section("support-shifts", "Label noise and support shifts")
    rep.lines += ["Accuracy (%) vs severity for shifts of the support set (and any other shift that is not "
                  "an image corruption); severity 0 is clean.", ""]
    for sid in shifts:
        rows_items = [it for it in items if any(sc.kind == "shift" and sc.shift == sid for sc in it.scenarios)]
        sevs = sorted({sc.severity for it in rows_items for sc in it.scenarios
                       if sc.kind == "shift" and sc.shift == sid})
        step, what = SUPPORT_SHIFTS.get(sid, (None, ""))
        rep.lines += [f"### `{sid}`" + (f" (severity s: {round(100 * step)}·s % of {what})" if step else ""), ""]
        head = ["entry", "0 (clean)"] + [f"{s} ({round(100 * step * s)}%)" if step else str(s) for s in sevs]
        rows = [[_md(it.label), _acc(it.clean)] + [_acc(it.metrics.get(ShiftCell(sid, s).name)) for s in sevs]
                for it in rows_items]
        rep.table(head, rows)


def _section_attacks(rep: _Report, items: list[_Item]) -> None:
    targets = _targets(items)
    if not targets:
        return
    rep.section("attacks", "Attacks")
    rep.lines += ["Accuracy (%) vs eps per target and attack; eps 0 is clean. `ensemble` is the per-query "
                  "worst case over every attack at that eps and target.", ""]
    panels = []
    for t in targets:
        rep.lines += [f"### Target `{t}`" + (f" ({TARGET_MEANING[t]})" if t in TARGET_MEANING else ""), ""]
        scs = [(it, sc) for it in items for sc in _attacks(it) if sc.target == t]
        eps = sorted({(sc.eps, sc.eps_name) for _, sc in scs})
        eps_cols: list[tuple[float, str]] = []
        for e, name in eps:  # one column per value; the first spelling names it
            if not eps_cols or eps_cols[-1][0] != e:
                eps_cols.append((e, name))
        lines: list[tuple[_Item, str, list[tuple[float, dict[str, Any]]]]] = []
        for it in items:
            ids = []
            for sc in _attacks(it):
                if sc.target == t and sc.label not in ids:
                    ids.append(sc.label)
            ids.sort(key=lambda a: (a == "ensemble", a))
            for a in ids:
                pts = sorted((sc.eps, it.metrics[sc.name]) for sc in _attacks(it) if sc.target == t and sc.label == a)
                lines.append((it, a, pts))
        head = ["entry", "attack", "0 (clean)"] + [name for _, name in eps_cols]
        rows = []
        for it, a, pts in lines:
            at = dict(pts)
            rows.append([_md(it.label), f"`{a}`", _acc(it.clean)] + [_acc(at.get(e)) for e, _ in eps_cols])
        rep.table(head, rows, text_cols=2)
        panels.append((t, eps_cols, lines))
    rep.plot("eps.png", "Accuracy vs eps per target", _plot_eps, panels)


def _section_breakdown(rep: _Report, items: list[_Item]) -> None:
    # One table per (grouping, scenario, split): meta-train entries cover other classes (and alphabets).
    kinds: dict[tuple[str, str, str], list[_Item]] = {}
    for it in items:
        b = it.entry.get("breakdown")
        if isinstance(b, dict) and isinstance(b.get("groups"), dict) and b["groups"]:
            kinds.setdefault((str(b.get("by") or "group"), str(b.get("scenario") or "clean"), it.split),
                             []).append(it)
    if not kinds:
        return
    by0 = next(iter(kinds))[0]
    rep.section("breakdown", f"Per-{by0} breakdown" if len(kinds) == 1 else "Per-group breakdown")
    plots = []
    for (by, scenario, split), members in kinds.items():
        # The entry with the most episodes orders the rows (stable: ties keep the given order).
        members = sorted(members, key=lambda it: -_n_episodes(it))
        groups = [b["groups"] for b in (it.entry["breakdown"] for it in members)]
        first = groups[0]
        names = sorted(first, key=lambda g: (_acc_of(first[g]), g))
        names += sorted({g for gs in groups[1:] for g in gs} - set(first))
        where = "" if split == "meta-test" else f" of {split} episodes"
        rep.lines += [f"Accuracy (%) per {by} on the `{scenario}` scenario{where}, lowest first (by the first "
                      "entry); n = queries.", ""]
        head = [by] + [_md(it.label) for it in members]
        rows = []
        for g in names:
            cells = [_md(g)]
            for gs in groups:
                m = gs.get(g)
                if not isinstance(m, dict) or not _is_number(m.get("accuracy")):
                    cells.append("–")
                else:
                    n = m.get("n_queries")
                    cells.append(_pct(m["accuracy"]) + (f" (n={n})" if n is not None else ""))
            rows.append(cells)
        rep.table(head, rows)
        plots.append((by, scenario if split == "meta-test" else f"{scenario}, {split}", names, members, groups))
    rep.plot("groups.png", f"Accuracy per {by0}", _plot_groups, plots)


def _acc_of(m: Any) -> float:
    return m["accuracy"] if isinstance(m, dict) and _is_number(m.get("accuracy")) else math.inf


# ----------------------------------------------------------------------- plots


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
def _plot_steps(series: list[_Series]) -> Any:
    from matplotlib.ticker import MaxNLocator

    labels = [f"{s.label} ({s.option})" for s in series]
    fig = _figure(7.0, 3.8 + _legend_height(labels))
    ax = fig.add_subplot()
    handles = {}
    for i, (s, lab) in enumerate(zip(series, labels)):
        xs = [v for v, _ in s.points]
        ys = [100 * it.clean["accuracy"] for _, it in s.points]
        err = [100 * (it.clean.get("ci95") if _is_number(it.clean.get("ci95")) else 0.0) for _, it in s.points]
        handles[lab] = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=_color(i))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("adaptation steps at test time")
    ax.set_ylabel("clean accuracy (%)")
    ax.grid(alpha=0.3)
    _legend(fig, handles)
    return fig


@_styled
def _plot_severity(data: list[tuple[_Item, _Corr]]) -> Any:
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
def _plot_corruptions(data: list[tuple[_Item, _Corr]]) -> Any:
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
def _plot_eps(panels: list[tuple[str, list[tuple[float, str]], list]]) -> Any:
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
def _plot_groups(plots: list[tuple[str, str, list[str], list[_Item], list[dict[str, Any]]]]) -> Any:
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
            xs = [100 * _acc_of(gs.get(g)) if math.isfinite(_acc_of(gs.get(g))) else 0.0 for g in names]
            handles.setdefault(it.label, ax.barh(ys, xs, height=width, color=_color(colors[it.label])))
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_ylim(len(names) - 0.5, -0.5)  # the table's order, top to bottom
        ax.set_xlim(0, 100)
        ax.set_xlabel(f"accuracy (%), {scenario}")
        ax.set_title(f"per {by}")
        ax.grid(axis="x", alpha=0.3)
    _legend(fig, handles)
    return fig
