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
