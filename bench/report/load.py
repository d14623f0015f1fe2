"""Loading, checking and labelling result entries, and the views the report's sections share.

:func:`load_result` reads one entry into a :class:`LoadedEntry` (its metrics parsed
into :mod:`bench.protocol.scenarios` scenarios); :func:`assign_labels` gives every
entry a unique label. :func:`corruptions` and :func:`steps_series` gather what the
corruption and adaptation-steps sections (and their plots) show.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import MrbenchError
from bench.protocol.scenarios import TARGETS, Scenario, parse

#: shift ids that change the support set rather than the images; never part of the
#: mean corruption accuracy. Severity ``s`` is the fraction ``step * s``.
SUPPORT_SHIFTS: dict[str, tuple[float, str]] = {
    "label-noise": (0.1, "support labels flipped"),
    "class-imbalance": (0.2, "classes reduced to one distinct shot"),
}


# --------------------------------------------------------------------- loading


@dataclass
class LoadedEntry:
    """One result entry as the report reads it: the entry, where it came from, its label and
    its metrics parsed into scenarios.
    """
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


def load_result(e: str | Path | dict, index: int) -> LoadedEntry:
    """Read and check the ``index``-th entry (a path or a dict); raise :class:`MrbenchError` naming it."""
    from bench.results.frame import load_entry

    if isinstance(e, dict):
        where, source, entry = f"Result entry #{index + 1} (a dict)", f"entry {index + 1}", e
    else:
        path = Path(e)
        where, source = f"Result entry {path}", path.name
        entry = load_entry(path)  # a missing or unreadable file is an error naming it
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
            if not (isinstance(m, dict) and is_number(m.get("accuracy"))):
                problems.append(f"metric {name!r} has no numeric accuracy")
    for key, sub in (("suite", ("id", "version")), ("algorithm", ("id",))):
        if not isinstance(entry.get(key), dict) or any(s not in entry[key] for s in sub):
            problems.append(f"'{key}' lacks {' or '.join(sub)}")
    if problems:
        raise MrbenchError(f"{where} is malformed: {'; '.join(problems)}.", hint)
    item = LoadedEntry(entry, source, index)
    for name in metrics:
        try:
            item.scenarios.append(parse(name))
        except MrbenchError:
            item.unknown.append(name)
    return item


def n_episodes(it: LoadedEntry) -> int:
    return int((it.entry.get("suite") or {}).get("n_episodes") or 0)


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def assign_labels(items: list[LoadedEntry]) -> None:
    """``entry_label`` of each entry; equal labels get what tells them apart appended
    (suite, split, differing options, training suite, checkpoint, file), only as much
    as it takes to make them unique."""
    from bench.results.frame import entry_label

    groups: dict[str, list[LoadedEntry]] = defaultdict(list)
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


def _refine(members: list[LoadedEntry], qualifiers: list[str], parts: dict[int, list[str]]) -> None:
    """Append the first qualifier that differs among ``members`` to their labels, then
    do the same within each set of members that still share a label."""
    if len(members) < 2:
        return
    keys: list[str] = []
    for it in members:
        keys += [k for k in it.options if k not in keys]
    varying = [k for k in keys
               if len({options_key({k: it.options[k]}) if k in it.options else None for it in members}) > 1]
    for n, q in enumerate(qualifiers):
        values = [_qualifier(q, it, varying) for it in members]
        if len(set(values)) < 2:
            continue
        same: dict[str, list[LoadedEntry]] = {}
        for it, v in zip(members, values):
            parts[it.index].append(v)
            same.setdefault(v, []).append(it)
        for sub in same.values():
            _refine(sub, qualifiers[n + 1:], parts)
        return


_QUALIFIERS = ("suite", "split", "options", "trained_on", "checkpoint", "source", "index")


def _qualifier(kind: str, it: LoadedEntry, varying: list[str]) -> str:
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


# ------------------------------------------------------------------ data views


@dataclass
class CorruptionTable:
    """One entry's image-corruption results."""

    table: dict[str, dict[int, dict[str, Any]]]  # shift id -> severity -> metric
    by_shift: dict[str, float]
    by_severity: dict[int, float]
    mean: float | None
    ci: float | None
    clean: float | None
    rel: float | None
    from_summary: bool


def _corruption_ids(item: LoadedEntry) -> set[str] | None:
    """The shift ids the entry's summary counts as corruptions (None: no summary)."""
    summ = (item.entry.get("summary") or {}).get("corruptions")
    if isinstance(summ, dict) and isinstance(summ.get("by_shift"), dict):
        return set(summ["by_shift"])
    return None


def is_corruption(item: LoadedEntry, sc: Scenario) -> bool:
    if sc.kind != "shift" or sc.shift in SUPPORT_SHIFTS:
        return False
    known = _corruption_ids(item)
    return known is None or sc.shift in known


def corruptions(item: LoadedEntry) -> CorruptionTable | None:
    summ = (item.entry.get("summary") or {}).get("corruptions")
    summ = summ if isinstance(summ, dict) else None
    table: dict[str, dict[int, dict[str, Any]]] = {}
    for sc in item.scenarios:
        if is_corruption(item, sc):
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
            if isinstance(v, dict) and is_number(v.get("accuracy")):
                by_shift[s] = v["accuracy"]
        from_sum = {int(s): v["accuracy"] for s, v in (summ.get("by_severity") or {}).items()
                    if str(s).isdigit() and isinstance(v, dict) and is_number(v.get("accuracy"))}
        by_severity = from_sum or by_severity
        mean = summ.get("accuracy") if is_number(summ.get("accuracy")) else None
        ci = summ.get("ci95") if is_number(summ.get("ci95")) else None
        clean = summ.get("clean") if is_number(summ.get("clean")) else clean
        rel = summ.get("relative_degradation") if is_number(summ.get("relative_degradation")) else None
        return CorruptionTable(table, by_shift, dict(sorted(by_severity.items())), mean, ci, clean, rel, True)
    from bench.results.stats import mean_ci95

    mean, ci = mean_ci95(accs)
    ci = ci if is_number(ci) else None
    rel = (clean - mean) / clean if clean else None
    return CorruptionTable(table, by_shift, by_severity, mean, ci, clean, rel, False)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def attack_scenarios(item: LoadedEntry) -> list[Scenario]:
    return [sc for sc in item.scenarios if sc.kind in ("attack", "ensemble")]


def attack_targets(items: list[LoadedEntry]) -> list[str]:
    found = {sc.target for it in items for sc in attack_scenarios(it)}
    return [t for t in TARGETS if t in found]


def strongest_attack(item: LoadedEntry, target: str) -> Scenario | None:
    """The lowest-accuracy attack scenario at the target's largest eps (an individual
    attack wins a tie with the ensemble, so the cell names the attack)."""
    cands = [sc for sc in attack_scenarios(item) if sc.target == target]
    if not cands:
        return None
    top = max(sc.eps for sc in cands)
    at = [sc for sc in cands if sc.eps == top]
    return min(at, key=lambda sc: (item.metrics[sc.name]["accuracy"], sc.kind == "ensemble", sc.label))


def options_key(opts: dict[str, Any], drop: str | None = None) -> str:
    return json.dumps({k: v for k, v in opts.items() if k != drop}, sort_keys=True, default=str)


@dataclass
class StepsSeries:
    option: str
    label: str
    points: list[tuple[int, LoadedEntry]]


def steps_series(items: list[LoadedEntry]) -> list[StepsSeries]:
    keys: list[str] = []
    for it in items:
        keys += [k for k, v in it.options.items()
                 if "steps" in k and isinstance(v, int) and not isinstance(v, bool) and k not in keys]
    keys.sort(key=lambda k: (k != "inner_steps_test", k))
    series: list[StepsSeries] = []
    for k in keys:
        groups: dict[tuple, list[LoadedEntry]] = {}
        for it in items:
            v = it.options.get(k)
            if not it.sha or not it.clean or not isinstance(v, int) or isinstance(v, bool):
                continue
            ds = it.entry.get("dataset") or {}
            gk = (it.sha, it.entry["algorithm"]["id"], it.suite_ref, it.split, ds.get("id"),
                  json.dumps(ds.get("options"), sort_keys=True, default=str), options_key(it.options, k),
                  json.dumps(it.entry.get("transfer"), sort_keys=True, default=str))
            groups.setdefault(gk, []).append(it)
        for members in groups.values():
            by_value: dict[int, LoadedEntry] = {}
            for it in members:
                held = by_value.get(it.options[k])
                if held is None or n_episodes(it) > n_episodes(held):
                    by_value[it.options[k]] = it
            if len(by_value) >= 2:
                from bench.results.frame import entry_label

                first = members[0]
                series.append(StepsSeries(k, entry_label(first.entry), sorted(by_value.items(), key=lambda p: p[0])))
    counts: dict[str, int] = defaultdict(int)
    for s in series:
        counts[s.label] += 1
    for s in series:
        if counts[s.label] > 1:
            it = s.points[0][1]
            s.label += f" [{it.suite_cell}, ckpt {(it.sha or '?')[:8]}]"
    return series


def acc_of(m: Any) -> float:
    return m["accuracy"] if isinstance(m, dict) and is_number(m.get("accuracy")) else math.inf
