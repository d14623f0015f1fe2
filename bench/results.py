"""Result entries as data: load them and flatten them into pandas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd


def load_entry(path: str | Path) -> dict[str, Any]:
    """Read a result entry JSON written by :func:`bench.evaluate`."""
    return json.loads(Path(path).read_text())


def results_frame(entries: Iterable[dict[str, Any] | str | Path]) -> pd.DataFrame:
    """One row per (entry, scenario): suite, algorithm, accuracy, CI and provenance columns.

    :param entries: result entry dicts or paths to their JSON files.
    """
    rows = []
    for e in entries:
        entry = e if isinstance(e, dict) else load_entry(e)
        for scenario, m in entry["metrics"].items():
            rows.append({
                "suite": entry["suite"]["id"],
                "suite_version": entry["suite"]["version"],
                "algorithm": entry["algorithm"]["id"],
                "algorithm_version": entry["algorithm"]["version"],
                "transductive": entry["algorithm"].get("transductive"),
                "scenario": scenario,
                "accuracy": m["accuracy"],
                "ci95": m["ci95"],
                "n_episodes": m["n_episodes"],
                "checkpoint_sha256": entry["checkpoint"]["sha256"],
                "manifest_sha256": entry["suite"]["manifest_sha256"],
                "unreliable": entry.get("unreliable", False),
                "device": entry["environment"]["device"],
            })
    return pd.DataFrame(rows)


def entry_label(entry: dict[str, Any]) -> str:
    """A column label: algorithm, adversarial training if any, episodes."""
    label = entry["algorithm"]["id"]
    adv = (entry.get("training") or {}).get("adversarial")
    if adv:
        label += f" (adv. {adv['attack']} {adv.get('eps_name', adv['eps'])} {adv['target']})"
    return label


def markdown_table(entries: Iterable[dict[str, Any] | str | Path], *, sources: Iterable[str] | None = None) -> str:
    """Scenario x entry table of accuracy (%) with 95% CI and episode counts, in Markdown.

    Every number comes from the entries; unreliable entries are marked with their reason.
    """
    loaded = [e if isinstance(e, dict) else load_entry(e) for e in entries]
    src = list(sources) if sources is not None else [""] * len(loaded)
    scenarios: list[str] = []
    for entry in loaded:
        scenarios += [s for s in entry["metrics"] if s not in scenarios]
    head = ["scenario"] + [f"{entry_label(e)}{' [' + s + ']' if s else ''}" for e, s in zip(loaded, src)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sc in scenarios:
        cells = [f"`{sc}`"]
        for entry in loaded:
            m = entry["metrics"].get(sc)
            cells.append("" if m is None else f"{100 * m['accuracy']:.2f} +- {100 * m['ci95']:.2f} (n={m['n_episodes']})")
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for entry, s in zip(loaded, src):
        tag = entry_label(entry) + (f" [{s}]" if s else "")
        if entry.get("unreliable"):
            notes.append(f"- {tag}: **unreliable**: {entry.get('footnote', '')}")
        for target, res in sorted((entry.get("sanity") or {}).items()):
            if target == "sweep":
                continue
            checks = ", ".join(f"{k} {'ok' if v['passed'] else 'FAILED'}" for k, v in res["checks"].items())
            notes.append(f"- {tag}, sanity on {res['episodes']} episodes ({target}, eps {res['eps']:.4g}): {checks}")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
