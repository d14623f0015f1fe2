"""Result entries as data: load them, restrict and pair them on their per-episode
results, and flatten them into pandas or a Markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from bench.errors import MrbenchError
from bench.results import episodes_file
from bench.results.stats import mean_ci95, paired_t_test


def load_entry(path: str | Path) -> dict[str, Any]:
    """Read a result entry JSON written by :func:`bench.evaluate`.

    :raises bench.errors.MrbenchError: the file is missing, unreadable or not JSON (naming it).
    """
    where = f"Result entry {path}"
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MrbenchError(f"{where} does not exist.", "Check the path of the RESULT.json file.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MrbenchError(f"{where} cannot be read: {exc}.",
                           "Pass a RESULT.json file written by `mrbench evaluate`.") from None


def first_episodes(path: str | Path, n: int) -> dict[str, Any]:
    """The entry at ``path`` restricted to the suite's first ``n`` episodes.

    Every scenario's accuracy and 95% CI are recomputed (as :func:`bench.evaluate` does:
    mean and CI of the per-episode accuracies) from the per-episode file next to the
    entry (``<name>.episodes.csv``), so entries evaluated on different numbers of
    episodes (e.g. a 600-episode attack grid and an ensemble run on the first 200) can
    be compared on the episodes they share. ``sanity`` is kept as recorded (the checks
    run on the first episodes of the whole run).
    """
    path = Path(path)
    entry = load_entry(path)
    csv = episodes_file.episodes_path(path)
    if not csv.exists():
        raise MrbenchError(f"{path} has no per-episode file {csv.name} next to it, so it cannot be restricted "
                           f"to its first {n} episodes.", "Keep the *.episodes.csv that `mrbench evaluate` writes "
                           "next to the entry, or leave out --episodes.")
    per = episodes_file.read(csv)
    metrics = {}
    for scenario, m in entry["metrics"].items():
        rows = [per.get(scenario, {})[e] for e in sorted(per.get(scenario, {})) if e < n]
        if len(rows) < n or m["n_episodes"] < n:
            raise MrbenchError(f"{path} has {min(len(rows), m['n_episodes'])} episodes of scenario {scenario!r}, "
                               f"fewer than the {n} asked for.", "Ask for at most as many episodes as every entry has.")
        acc, ci = mean_ci95([c / t for c, t in rows])
        metrics[scenario] = {**m, "accuracy": acc, "ci95": ci, "n_episodes": n, "n_queries": sum(t for _, t in rows)}
    return {**entry, "metrics": metrics, "restricted_to_episodes": n}


def _per_episode(path: Path) -> episodes_file.Counts:
    csv = episodes_file.episodes_path(path)
    if not csv.exists():
        raise MrbenchError(f"{path} has no per-episode file {csv.name} next to it, so its episodes cannot be compared.",
                           "Keep the *.episodes.csv that `mrbench evaluate` writes next to the entry.")
    return episodes_file.read(csv)


def paired_comparison(paths: Iterable[str | Path], a: str, b: str, n: int | None = None) -> list[dict[str, Any]]:
    """Scenario ``a`` against scenario ``b`` episode by episode, per checkpoint.

    For every model (:func:`_model_key`: algorithm, options and weights) among the
    entries at ``paths`` that has both scenarios (in one entry or in two, e.g. an
    ensemble run next to the attack grid of the same checkpoint), on the episodes both
    were measured on (the first ``n`` when given): on how many episodes ``a``'s accuracy is lower, equal and higher than
    ``b``'s, and the mean per-episode difference ``a - b`` with its 95% CI (a paired
    interval: much narrower than the two CIs side by side when the scenarios share
    their episodes). Both scenarios must come from the same suite manifest prefix,
    which the episode indices assume; entries of another suite are an error.
    """
    found: dict[tuple[str, str, str], dict[str, tuple[Path, dict[str, Any]]]] = {}  # model -> scenario -> (path, entry)
    for p in map(Path, paths):
        entry = load_entry(p)
        for sc in (a, b):
            if sc in entry["metrics"]:
                found.setdefault(_model_key(entry), {}).setdefault(sc, (p, entry))
    out = []
    for (_, _, sha), by in found.items():
        if a not in by or b not in by:
            continue
        (pa, ea), (pb, eb) = by[a], by[b]
        if ea["suite"]["id"] != eb["suite"]["id"] or ea["suite"]["version"] != eb["suite"]["version"]:
            raise MrbenchError(f"{pa.name} and {pb.name} are on different suites; their episodes cannot be paired.",
                               "Compare entries of one suite.")
        diff = _differences(_per_episode(pa).get(a, {}), _per_episode(pb).get(b, {}), n)
        if diff is not None:
            out.append({"algorithm": entry_label(ea), "checkpoint_sha256": sha, "a": a, "b": b,
                        "files": (pa.name, pb.name), **diff})
    return out


def _model_key(entry: dict[str, Any]) -> tuple[str, str, str]:
    """What makes two entries the same model: the algorithm with its options and the
    weights (their digest where the entry records it, so a zoo copy of a checkpoint file
    pairs with the file; else the file's sha256). Algorithms of one weights family share
    weights but are different models."""
    ckpt = entry["checkpoint"]
    return (entry["algorithm"]["id"], json.dumps(entry["algorithm"].get("options") or {}, sort_keys=True),
            ckpt.get("weights_sha256") or ckpt["sha256"])


def model_comparison(path_a: str | Path, path_b: str | Path, n: int | None = None) -> list[dict[str, Any]]:
    """Entry ``path_a`` against entry ``path_b``, scenario by scenario, episode by episode.

    Two models on one suite share its episodes, so each scenario both entries measured
    compares on the episodes both hold (the first ``n`` when given): episodes where
    ``a`` is lower, equal and higher, the mean per-episode difference ``a - b`` with its
    paired 95% CI and the paired t-test's two-sided p-value (e.g. an adversarially
    trained model against its natural one: is the gain significant?).

    :raises bench.errors.MrbenchError: entries of different suites.
    """
    pa, pb = Path(path_a), Path(path_b)
    ea, eb = load_entry(pa), load_entry(pb)
    if (ea["suite"]["id"], ea["suite"]["version"]) != (eb["suite"]["id"], eb["suite"]["version"]):
        raise MrbenchError(f"{pa.name} and {pb.name} are on different suites; their episodes cannot be paired.",
                           "Compare entries of one suite.")
    common_scenarios = [s for s in ea["metrics"] if s in eb["metrics"]]  # clean at least
    ra, rb = _per_episode(pa), _per_episode(pb)
    out = []
    for sc in common_scenarios:
        diff = _differences(ra.get(sc, {}), rb.get(sc, {}), n)
        if diff is not None:
            out.append({"scenario": sc, "a": entry_label(ea), "b": entry_label(eb), "files": (pa.name, pb.name),
                        **diff})
    return out


def _differences(ra: dict[int, tuple[int, int]], rb: dict[int, tuple[int, int]], n: int | None) -> dict[str, Any] | None:
    """Per-episode accuracies ``ra`` against ``rb`` (episode -> (correct, total)) on the
    episodes both hold (the first ``n`` when given), in the order of ``ra``: episode
    counts where ``a`` is lower, equal and higher, the mean difference ``a - b`` with its
    95% CI and the paired t-test's p; ``None`` when they share no episode."""
    common = [e for e in ra if e in rb and (n is None or e < n)]
    if not common:
        return None
    va, vb = [ra[e][0] / ra[e][1] for e in common], [rb[e][0] / rb[e][1] for e in common]
    d = [x - y for x, y in zip(va, vb)]
    mean, ci = mean_ci95(d)
    return {"n_episodes": len(common), "lower": sum(x < 0 for x in d), "equal": sum(x == 0 for x in d),
            "higher": sum(x > 0 for x in d), "mean_difference": mean, "ci95": ci, "p": paired_t_test(va, vb).p}


def model_comparison_notes(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Markdown bullet lines for :func:`model_comparison` rows."""
    return [f"- `{r['scenario']}`: {r['a']} ({r['files'][0]}) vs {r['b']} ({r['files'][1]}) on the same "
            f"{r['n_episodes']} episodes: lower on {r['lower']}, equal on {r['equal']}, higher on {r['higher']}; "
            f"mean difference {100 * r['mean_difference']:+.2f} points +- {100 * r['ci95']:.2f} (paired 95% CI), "
            f"paired t-test p = {r['p']:.3g}"
            for r in rows]


def paired_notes(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Markdown bullet lines for :func:`paired_comparison` rows."""
    return [f"- {r['algorithm']} (checkpoint {r['checkpoint_sha256'][:12]}): `{r['a']}` vs `{r['b']}` on the same "
            f"{r['n_episodes']} episodes: lower on {r['lower']}, equal on {r['equal']}, higher on {r['higher']}; "
            f"mean difference {100 * r['mean_difference']:+.2f} points +- {100 * r['ci95']:.2f} (paired 95% CI)"
            for r in rows]


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
    """A column label: algorithm and adversarial training if any (:func:`bench.results.schema.model_label`)."""
    from bench.results.schema import model_label

    return model_label(entry["algorithm"]["id"], (entry.get("training") or {}).get("adversarial"))


def markdown_table(entries: Iterable[dict[str, Any] | str | Path], *, sources: Iterable[str] | None = None,
                   extra_notes: Iterable[str] = ()) -> str:
    """Scenario x entry table of accuracy (%) with 95% CI and episode counts, in Markdown.

    Every number comes from the entries; unreliable entries are marked with their reason.
    ``extra_notes`` (e.g. :func:`paired_notes`) are appended under the table.
    """
    loaded = [e if isinstance(e, dict) else load_entry(e) for e in entries]
    restricted = {e.get("restricted_to_episodes") for e in loaded} - {None}
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
    if restricted:
        notes.insert(0, f"- every entry restricted to the suite's first {', '.join(map(str, sorted(restricted)))} "
                        "episodes (recomputed from its per-episode file); sanity checks as recorded by each run")
    notes += list(extra_notes)
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
