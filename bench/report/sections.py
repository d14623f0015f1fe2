"""The report's sections: one function per section and :data:`SECTIONS`, the order they appear in.

A section function takes the :class:`~bench.report.format.MarkdownReport` being written
and the loaded entries, and adds nothing when the entries hold no data for it. To add a
section, write its function here (plus a plot in :mod:`bench.report.plots` if it has
one) and list it in :data:`SECTIONS`.
"""

from __future__ import annotations

from typing import Any, Callable

from bench.protocol.scenarios import ShiftCell
from bench.report.format import MarkdownReport, acc, md, pct, signed_points, way_shot
from bench.report.load import (SUPPORT_SHIFTS, LoadedEntry, acc_of, attack_scenarios, attack_targets, corruptions,
                               is_corruption, is_number, n_episodes, options_key, steps_series, strongest_attack)
from bench.report.plots import plot_corruptions, plot_eps, plot_groups, plot_severity, plot_steps

TARGET_MEANING = {"query": "evasion: queries perturbed", "support": "poisoning: support set perturbed",
                  "both": "support and queries perturbed"}


def sources_line(items: list[LoadedEntry]) -> str:
    """The report's first line: every entry's file, label and creation time."""
    parts = [f"`{it.source}` ({md(it.label)}, created {it.entry.get('created') or 'unknown'})" for it in items]
    n = len(items)
    return f"Report on {n} result {'entry' if n == 1 else 'entries'}: " + "; ".join(parts) + "."


def section_summary(rep: MarkdownReport, items: list[LoadedEntry]) -> None:
    """One row per entry: clean, mean corruption, label-noise and strongest-attack accuracies."""
    corr = [corruptions(it) for it in items]
    noise = [s for s in (2, 4) if any(ShiftCell("label-noise", s).name in it.metrics for it in items)]
    targets = attack_targets(items)
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
        row = [md(it.label), it.suite_cell, str(it.entry["suite"]["n_episodes"]), acc(it.clean)]
        if any(x is not None for x in corr):
            if c is None:
                row += ["–", "–"]
            else:
                mark = "" if c.from_summary else " †"
                row += [acc({"accuracy": c.mean, "ci95": c.ci}) + mark,
                        "–" if c.rel is None else f"{100 * c.rel:.2f}%{mark}"]
        row += [acc(it.metrics.get(ShiftCell("label-noise", s).name)) for s in noise]
        for t in targets:
            sc = strongest_attack(it, t)
            row.append("–" if sc is None else f"{acc(it.metrics[sc.name])} (`{sc.label}@{sc.eps_name}`)")
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
            notes.append(f"- {md(it.label)}: **unreliable**" + (f": {foot}" if foot else "."))
        elif foot:
            notes.append(f"- {md(it.label)}: {foot}")
        if it.unknown:
            notes.append(f"- {md(it.label)}: scenarios this report does not know (not shown): "
                         + ", ".join(f"`{o}`" for o in it.unknown) + ".")
    if notes:
        rep.lines += notes + [""]


def section_gap(rep: MarkdownReport, items: list[LoadedEntry]) -> None:
    """Meta-train vs meta-test clean accuracy of the same checkpoint and options."""
    pairs = []
    tests = [it for it in items if it.split == "meta-test" and it.sha and it.clean]
    for tr in items:
        if tr.split != "meta-train" or not tr.sha or not tr.clean:
            continue
        key = (tr.sha, tr.entry["algorithm"]["id"], options_key(tr.options))
        same = [te for te in tests if (te.sha, te.entry["algorithm"]["id"], options_key(te.options)) == key]
        if not same:
            continue
        # The same suite first, then the entry with the most episodes (a full suite over a subset).
        te = max(same, key=lambda te: (te.suite_ref == tr.suite_ref, n_episodes(te)))
        pairs.append((tr, te))
    if not pairs:
        return
    rep.section("gap", "Meta-train vs meta-test gap")
    rep.lines += ["The same checkpoint and options evaluated on episodes of its meta-training classes and "
                  "on the meta-test classes (clean accuracy, %). Gap = meta-train - meta-test, in points; "
                  "positive means the learner does better on the classes it was trained on.", ""]
    rows = [[md(tr.label), md(te.label), md(te.suite_ref), acc(tr.clean), acc(te.clean),
             signed_points(tr.clean["accuracy"] - te.clean["accuracy"])] for tr, te in pairs]
    rep.table(["meta-train entry", "meta-test entry", "suite", "meta-train", "meta-test", "gap (points)"], rows,
              text_cols=3)


def section_steps(rep: MarkdownReport, items: list[LoadedEntry]) -> None:
    """Clean accuracy vs test-time adaptation steps of the same checkpoint; ``steps.png``."""
    series = steps_series(items)
    if not series:
        return
    rep.section("steps", "Adaptation steps")
    rep.lines += ["Entries of the same checkpoint that differ only in a test-time adaptation-steps option "
                  "(clean accuracy, %; change in points from the fewest steps).", ""]
    rows = []
    for s in series:
        first = s.points[0][1].clean["accuracy"]
        for v, it in s.points:
            rows.append([md(s.label), md(it.label), f"`{s.option}`", str(v), acc(it.clean),
                         signed_points(it.clean["accuracy"] - first)])
    rep.table(["checkpoint", "entry", "option", "steps", "clean", "change (points)"], rows, text_cols=3)
    rep.plot("steps.png", "Clean accuracy vs adaptation steps", plot_steps, series)


def section_transfer(rep: MarkdownReport, items: list[LoadedEntry]) -> None:
    """Entries evaluated on another suite than their training suite, with the drop."""
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
        own.sort(key=lambda o: (options_key(o.options) != options_key(it.options), -n_episodes(o)))
        train_spec = way_shot(tr.get("train_spec"))
        test_spec = way_shot(it.entry["suite"].get("spec"))
        src = trained_on + (f" ({train_spec})" if train_spec else "")
        dst = it.suite_cell + (f" ({test_spec})" if test_spec else "")
        kinds = ", ".join(str(k) for k in (tr.get("kinds") or [])) or "–"
        drop = "–"
        if own and it.clean:
            drop = f"{signed_points(own[0].clean['accuracy'] - it.clean['accuracy'])} (vs {md(own[0].label)})"
        rows.append([md(it.label), f"{src} → {dst}", kinds, acc(it.clean), drop])
    rep.table(["entry", "trained on → evaluated on", "kinds", "clean", "drop (points)"], rows, text_cols=3)


def section_corruptions(rep: MarkdownReport, items: list[LoadedEntry]) -> None:
    """Corruption x severity tables; ``severity.png`` and ``corruptions.png``."""
    data = [(it, c) for it in items if (c := corruptions(it)) is not None]
    if not data:
        return
    rep.section("corruptions", "Corruptions")
    rep.lines += ["Accuracy (%) per image corruption and severity; `mean` is over the severities evaluated "
                  "(from the entry's corruption summary when it has one).", ""]
    for it, c in data:
        rep.lines += [f"### {md(it.label)}", ""]
        sevs = sorted({s for sev in c.table.values() for s in sev} | set(c.by_severity))
        head = ["corruption"] + [str(s) for s in sevs] + ["mean"]
        rows = [[f"`{sid}`"] + [acc(sev.get(s)) for s in sevs] + [pct(c.by_shift.get(sid))]
                for sid, sev in c.table.items()]
        mark = "" if c.from_summary else " †"
        rows.append(["**mean**"] + [pct(c.by_severity.get(s)) for s in sevs]
                    + [acc({"accuracy": c.mean, "ci95": c.ci}) + mark])
        rep.table(head, rows)
        rel = "–" if c.rel is None else f"{100 * c.rel:.2f}%"
        rep.lines += [f"Clean {acc(it.clean)}; mean corruption accuracy "
                      f"{acc({'accuracy': c.mean, 'ci95': c.ci})}{mark}; relative degradation {rel}"
                      f"{mark}" + (" († computed from the metrics; CI over scenarios)." if mark else "."), ""]
    rep.plot("severity.png", "Mean corruption accuracy vs severity", plot_severity, data)
    rep.plot("corruptions.png", "Accuracy vs severity per corruption", plot_corruptions, data)


def section_support(rep: MarkdownReport, items: list[LoadedEntry]) -> None:
    """Label noise, class imbalance and other shifts that are not image corruptions."""
    shifts: list[str] = []
    for it in items:
        for sc in it.scenarios:
            if sc.kind == "shift" and not is_corruption(it, sc) and sc.shift not in shifts:
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
        rows = [[md(it.label), acc(it.clean)] + [acc(it.metrics.get(ShiftCell(sid, s).name)) for s in sevs]
                for it in rows_items]
        rep.table(head, rows)


def section_attacks(rep: MarkdownReport, items: list[LoadedEntry]) -> None:
    """Accuracy vs eps per target and attack; ``eps.png``."""
    targets = attack_targets(items)
    if not targets:
        return
    rep.section("attacks", "Attacks")
    rep.lines += ["Accuracy (%) vs eps per target and attack; eps 0 is clean. `ensemble` is the per-query "
                  "worst case over every attack at that eps and target.", ""]
    panels = []
    for t in targets:
        rep.lines += [f"### Target `{t}`" + (f" ({TARGET_MEANING[t]})" if t in TARGET_MEANING else ""), ""]
        scs = [(it, sc) for it in items for sc in attack_scenarios(it) if sc.target == t]
        eps = sorted({(sc.eps, sc.eps_name) for _, sc in scs})
        eps_cols: list[tuple[float, str]] = []
        for e, name in eps:  # one column per value; the first spelling names it
            if not eps_cols or eps_cols[-1][0] != e:
                eps_cols.append((e, name))
        lines: list[tuple[LoadedEntry, str, list[tuple[float, dict[str, Any]]]]] = []
        for it in items:
            ids = []
            for sc in attack_scenarios(it):
                if sc.target == t and sc.label not in ids:
                    ids.append(sc.label)
            ids.sort(key=lambda a: (a == "ensemble", a))
            for a in ids:
                pts = sorted((sc.eps, it.metrics[sc.name]) for sc in attack_scenarios(it)
                             if sc.target == t and sc.label == a)
                lines.append((it, a, pts))
        head = ["entry", "attack", "0 (clean)"] + [name for _, name in eps_cols]
        rows = []
        for it, a, pts in lines:
            at = dict(pts)
            rows.append([md(it.label), f"`{a}`", acc(it.clean)] + [acc(at.get(e)) for e, _ in eps_cols])
        rep.table(head, rows, text_cols=2)
        panels.append((t, eps_cols, lines))
    rep.plot("eps.png", "Accuracy vs eps per target", plot_eps, panels)


def section_breakdown(rep: MarkdownReport, items: list[LoadedEntry]) -> None:
    """Per-group (per-alphabet) accuracy tables; ``groups.png``."""
    # One table per (grouping, scenario, split): meta-train entries cover other classes (and alphabets).
    kinds: dict[tuple[str, str, str], list[LoadedEntry]] = {}
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
        members = sorted(members, key=lambda it: -n_episodes(it))
        groups = [b["groups"] for b in (it.entry["breakdown"] for it in members)]
        first = groups[0]
        names = sorted(first, key=lambda g: (acc_of(first[g]), g))
        names += sorted({g for gs in groups[1:] for g in gs} - set(first))
        where = "" if split == "meta-test" else f" of {split} episodes"
        rep.lines += [f"Accuracy (%) per {by} on the `{scenario}` scenario{where}, lowest first (by the first "
                      "entry); n = queries.", ""]
        head = [by] + [md(it.label) for it in members]
        rows = []
        for g in names:
            cells = [md(g)]
            for gs in groups:
                m = gs.get(g)
                if not isinstance(m, dict) or not is_number(m.get("accuracy")):
                    cells.append("–")
                else:
                    n = m.get("n_queries")
                    cells.append(pct(m["accuracy"]) + (f" (n={n})" if n is not None else ""))
            rows.append(cells)
        rep.table(head, rows)
        plots.append((by, scenario if split == "meta-test" else f"{scenario}, {split}", names, members, groups))
    rep.plot("groups.png", f"Accuracy per {by0}", plot_groups, plots)


SECTIONS: list[Callable[[MarkdownReport, list[LoadedEntry]], None]] = [
    section_summary, section_gap, section_steps, section_transfer, section_corruptions, section_support,
    section_attacks, section_breakdown,
]
