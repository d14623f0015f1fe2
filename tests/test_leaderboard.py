"""Leaderboards: the entry schema and its migrations, ranking with ties, and
``mrbench leaderboard build | check | show`` on a temporary copy of a suite."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from bench import leaderboard as lb
from bench.cli import main
from bench.errors import MrbenchError
from bench.results import schema
from bench.results.stats import mean_ci95, paired_t_test, t_two_sided_p
from bench.suites import read_suite

REPO = Path(__file__).resolve().parents[1]
SUITE_DIR = REPO / "leaderboards" / "omniglot-5w1s" / "v1"
RESULT = SUITE_DIR / "entries" / "protonet-omniglot-5w1s.json"


def _base_entry() -> dict[str, Any]:
    entry = json.loads(RESULT.read_text())
    entry.pop("reported", None)  # the derived test entries carry no published number
    return entry


def _base_counts() -> list[tuple[int, int]]:
    with open(RESULT.with_name(_base_entry()["episodes_file"]), newline="") as f:
        return [(int(r["correct"]), int(r["total"])) for r in csv.DictReader(f) if r["scenario"] == "clean"]


def write_entry(folder: Path, name: str, counts: list[tuple[int, int]],
                edit: Callable[[dict[str, Any]], None] | None = None,
                scenarios: dict[str, list[tuple[int, int]]] | None = None) -> Path:
    """An entry derived from the real protonet result, with ``counts`` as its per-episode
    results and metrics recomputed from them the way :func:`bench.evaluate` does.

    :param scenarios: extra scenario name -> its per-episode ``(correct, total)`` (a prefix
        of the episodes is allowed, as for a costly attack).
    """
    entry = copy.deepcopy(_base_entry())
    per_scenario = {"clean": counts, **(scenarios or {})}
    entry["metrics"] = {}
    for scenario, sc_counts in per_scenario.items():
        acc, ci = mean_ci95([c / t for c, t in sc_counts])
        entry["metrics"][scenario] = {"accuracy": acc, "ci95": ci, "n_episodes": len(sc_counts),
                                      "n_queries": sum(t for _, t in sc_counts)}
    entry["checkpoint"]["sha256"] = hashlib.sha256(name.encode()).hexdigest()
    entry["episodes_file"] = f"{name}.episodes.csv"
    if edit is not None:
        edit(entry)
    fake_zoo_record(entry["checkpoint"]["sha256"], entry["algorithm"]["id"])
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.episodes.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["episode", "scenario", "correct", "total", "accuracy"])
        for scenario, sc_counts in per_scenario.items():
            w.writerows([e, scenario, c, t, repr(c / t)] for e, (c, t) in enumerate(sc_counts))
    path = folder / f"{name}.json"
    path.write_text(json.dumps(entry, indent=2) + "\n")
    return path


def fake_zoo_record(file_sha256: str, algorithm: str = "protonet") -> str:
    """A zoo record for the checkpoint file ``file_sha256`` names (in the ``MRBENCH_ZOO``
    folder the ``zoo`` fixture sets): what a published checkpoint gives an entry written
    before schema 3. Its weights digest is derived from the file's; returns it."""
    import os

    folder = Path(os.environ["MRBENCH_ZOO"])
    folder.mkdir(parents=True, exist_ok=True)
    weights = hashlib.sha256(f"weights:{file_sha256}".encode()).hexdigest()
    record = {"kind": "mrbench-zoo-checkpoint", "format_version": 1, "weights_sha256": weights,
              "file": f"{weights}.safetensors", "file_sha256": "0" * 64, "size_bytes": 1,
              "source": {"file": "x.pt", "sha256": file_sha256}, "urls": [],
              "checkpoint": {"algorithm": {"id": algorithm, "options": {}}, "suite": "omniglot-5w1s@v1"}}
    (folder / f"{weights}.json").write_text(json.dumps(record))
    return weights


@pytest.fixture(autouse=True)
def zoo(tmp_path, monkeypatch) -> Path:
    """A zoo folder of fake records (one per test entry's checkpoint), searched first."""
    monkeypatch.setenv("MRBENCH_ZOO", str(tmp_path / "zoo"))
    return tmp_path / "zoo"


def _worse(counts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(max(0, c - e % 4), t) for e, (c, t) in enumerate(counts)]  # 0-3 fewer right: 2 points lower


def _tied(counts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    # Two queries fewer right in all, spread over a few episodes: a lower mean, but not significantly.
    out = list(counts)
    lowered = raised = 0
    for e, (c, t) in enumerate(out):
        if lowered < 4 and c > 0:
            out[e], lowered = (c - 1, t), lowered + 1
        elif raised < 2 and c < t:
            out[e], raised = (c + 1, t), raised + 1
    assert (lowered, raised) == (4, 2)
    return out


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A leaderboards folder with omniglot-5w1s@v1 and three entries: the real protonet
    result, one tied with it and one clearly worse."""
    root = tmp_path / "leaderboards"
    (root / "omniglot-5w1s" / "v1").mkdir(parents=True)
    shutil.copy(SUITE_DIR / "suite.toml", root / "omniglot-5w1s" / "v1" / "suite.toml")
    monkeypatch.setenv("MRBENCH_SUITES", str(root))
    entries = root / "omniglot-5w1s" / "v1" / "entries"
    base = _base_counts()
    write_entry(entries, "protonet", base)
    write_entry(entries, "protonet-tied", _tied(base))
    write_entry(entries, "protonet-worse", _worse(base))
    return root


def _entries(root: Path) -> Path:
    return root / "omniglot-5w1s" / "v1" / "entries"


def _table(root: Path) -> list[dict[str, str]]:
    with open(root / "omniglot-5w1s" / "v1" / "table.csv", newline="") as f:
        return list(csv.DictReader(f))


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw, indent=2) + "\n")


def _check_fails(root: Path, *fragments: str) -> str:
    with pytest.raises(MrbenchError) as info:
        lb.check(root)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, msg
    return msg


# --- build, check, ranks -----------------------------------------------------


def test_build_then_check_passes_and_rebuild_is_byte_identical(root):
    built = lb.build(root)
    assert [s.ref for s in built.boards] == ["omniglot-5w1s@v1"]
    folder = root / "omniglot-5w1s" / "v1"
    assert {p.name for p in built.boards[0].written} == {"table.csv", "table.md", "table.html"}
    assert built.indexes == built.indexes_written == (root / "index.html",)
    generated = [folder / name for name in lb.TABLE_FILES] + [root / "index.html"]
    first = {p: p.read_bytes() for p in generated}
    assert [s.n_entries for s in lb.check(root)] == [3]

    for p in generated:
        p.unlink()
    lb.build(root)
    assert {p: p.read_bytes() for p in generated} == first
    again = lb.build(root)
    assert again.boards[0].written == () and again.indexes_written == ()  # unchanged files are not rewritten

    md = first[folder / "table.md"].decode()
    assert "| 1= | protonet | 1 | mrbench-metric 0.1.0 | 98.59 | 0.22 | 600 |" in md
    assert str(root) not in md and "created" not in md  # no absolute paths, no timestamps


def test_ties_are_decided_by_the_paired_test(root):
    base = _base_counts()
    accs = {name: [c / t for c, t in counts] for name, counts in
            (("protonet", base), ("tied", _tied(base)), ("worse", _worse(base)))}
    assert not paired_t_test(accs["protonet"], accs["tied"]).significant()
    assert paired_t_test(accs["tied"], accs["worse"]).significant()

    lb.build(root)
    rows = [(r["rank"], r["entry"]) for r in _table(root)]
    assert rows == [("1=", "protonet.json"), ("1=", "protonet-tied.json"), ("3", "protonet-worse.json")]
    p = {r["entry"]: r["p_vs_above"] for r in _table(root)}
    assert p["protonet.json"] == "" and float(p["protonet-tied.json"]) > 0.05
    assert float(p["protonet-worse.json"]) < 0.05


def test_transductive_entries_are_ranked_separately(root):
    # Far better than the rest, but it sees all queries at once: its own section, its own rank 1.
    best = [(t, t) for _, t in _base_counts()]
    write_entry(_entries(root), "transductive", best, lambda e: e["algorithm"].update(transductive=True))
    lb.build(root)
    rows = [(r["section"], r["rank"], r["entry"]) for r in _table(root)]
    assert rows[0] == ("non-transductive", "1=", "protonet.json")
    assert rows[-1] == ("transductive", "1", "transductive.json")
    md = (root / "omniglot-5w1s" / "v1" / "table.md").read_text()
    assert md.index("## Non-transductive") < md.index("## Transductive") < md.index("transductive.json")


def test_superseded_entries_leave_the_table(root):
    # The correction is a new file; the old one stays, append-only.
    write_entry(_entries(root), "protonet-worse-v2", _tied(_base_counts()),
                lambda e: e.update(supersedes="protonet-worse.json", footnote="Re-evaluated with the fixed loader."))
    lb.build(root)
    names = [r["entry"] for r in _table(root)]
    assert "protonet-worse.json" not in names and "protonet-worse-v2.json" in names
    assert (_entries(root) / "protonet-worse.json").exists()
    [summary] = lb.check(root)
    assert (summary.n_entries, summary.n_superseded) == (4, 1)
    assert "Re-evaluated with the fixed loader." in (root / "omniglot-5w1s" / "v1" / "table.md").read_text()


def test_supersedes_must_name_one_existing_entry(root):
    write_entry(_entries(root), "fix-a", _base_counts(), lambda e: e.update(supersedes="protonet.json"))
    write_entry(_entries(root), "fix-b", _base_counts(), lambda e: e.update(supersedes="protonet.json"))
    write_entry(_entries(root), "fix-c", _base_counts(), lambda e: e.update(supersedes="nope.json"))
    _check_fails(root, "fix-b.json: supersedes: protonet.json is already superseded by fix-a.json",
                 "fix-c.json: supersedes: nope.json does not exist")


def test_withdrawn_entries_leave_the_table_and_are_listed_with_the_reason(root, zoo, capsys):
    # A lost checkpoint makes an entry fail the check; a withdrawal notice (append-only)
    # takes it out of the table, and the check passes again.
    write_entry(_entries(root), "lost", _tied(_base_counts()),
                lambda e: e["checkpoint"].update(sha256="ab" * 32))
    (zoo / f"{hashlib.sha256(('weights:' + 'ab' * 32).encode()).hexdigest()}.json").unlink()
    _check_fails(root, "lost.json: checkpoint: abababababab (protonet) is not in the checkpoint zoo")
    assert main(["leaderboard", "withdraw", "omniglot-5w1s@v1", "lost.json", "--root", str(root), "--name", "lost",
                 "--reason", "Its checkpoint was lost.", "--recreate", "mrbench train protonet ..."]) == 0
    notice = root / "omniglot-5w1s" / "v1" / "withdrawals" / "lost.json"
    assert json.loads(notice.read_text())["withdraws"] == ["lost.json"]
    lb.build(root)
    [summary] = lb.check(root)
    assert "lost.json" not in [r["entry"] for r in _table(root)] and summary.n_superseded == 1
    md = (root / "omniglot-5w1s" / "v1" / "table.md").read_text()
    assert "## Withdrawn" in md and "[lost.json](entries/lost.json)" in md
    assert "Its checkpoint was lost. To re-create: mrbench train protonet ..." in md
    # notices are append-only and must name existing, not yet withdrawn entries
    with pytest.raises(MrbenchError, match="append-only"):
        lb.withdraw("omniglot-5w1s@v1", ["lost.json"], "again", name="lost", root=root)
    with pytest.raises(MrbenchError, match="Its entries: "):
        lb.withdraw("omniglot-5w1s", ["nope.json"], "gone", root=root)
    lb.withdraw("omniglot-5w1s", ["lost.json"], "twice", name="twice", root=root)
    _check_fails(root, "twice.json: withdraws: lost.json is already superseded or withdrawn by withdrawals/lost.json")


def test_reported_and_unreliable_are_shown_apart_from_measured(root):
    _edit_json(_entries(root) / "protonet.json", lambda e: e.update(
        reported={"clean": {"accuracy": 0.988, "source": "Snell et al. 2017"}}, unreliable=True,
        footnote="PGD accuracy rose with eps."))
    lb.build(root)
    row = next(r for r in _table(root) if r["entry"] == "protonet.json")
    assert (row["clean_accuracy_pct"], row["reported_clean_pct"], row["unreliable"]) == ("98.59", "98.80", "true")
    md = (root / "omniglot-5w1s" / "v1" / "table.md").read_text()
    assert "| 98.80 | † [1] |" in md
    assert "[1] protonet.json: Reported clean accuracy 98.80% (Snell et al. 2017). PGD accuracy rose with eps." in md


def test_robust_columns_in_markdown(root):
    base = _base_counts()
    # no non-clean scenario anywhere: no robustness section
    lb.build(root)
    assert "## Robustness and shifts" not in (root / "omniglot-5w1s" / "v1" / "table.md").read_text()

    def adversarial(e: dict[str, Any]) -> None:
        e["training"]["adversarial"] = {"attack": "pgd-linf", "eps": 16 / 255, "eps_name": "16/255",
                                        "target": "query"}

    attacked = [(c // 2, t) for c, t in base]
    write_entry(_entries(root), "protonet-adv", base, edit=adversarial,
                scenarios={"pgd-linf@16/255:query": attacked[:200], "gaussian-noise@1": base})
    lb.build(root)
    md = (root / "omniglot-5w1s" / "v1" / "table.md").read_text()
    robust = md[md.index("## Robustness and shifts"):md.index("## Notes")]
    head = next(line for line in robust.splitlines() if line.startswith("| Rank"))
    assert head == ("| Rank | Algorithm | Clean acc. (%) | Best known `16/255:query` | `pgd-linf@16/255:query` | "
                    "`gaussian-noise@1` | Checkpoint |")
    rows = [line for line in robust.splitlines() if line.startswith("| ") and not line.startswith("| Rank")]
    assert len(rows) == 1  # only the entry with a non-clean scenario
    cells = [c.strip() for c in rows[0].strip("|").split(" | ")]
    acc, ci = mean_ci95([c / t for c, t in attacked[:200]])
    assert cells[1] == "protonet (adv. pgd-linf 16/255 query)"
    assert cells[4] == f"{100 * acc:.2f} ± {100 * ci:.2f} (200 ep.)"  # a prefix of the episodes says so
    assert cells[3] == f"{100 * acc:.2f} ± {100 * ci:.2f} (pgd-linf, 200 ep.)"  # the only attack: the best known
    # the main table names the adversarial training too; the CSV keeps the plain id
    assert "| protonet (adv. pgd-linf 16/255 query) | 1 |" in md
    assert {r["algorithm"] for r in _table(root)} == {"protonet"}

    # with a corruption summary, the entry's corruption scenarios fold into its mean
    def summarised(e: dict[str, Any]) -> None:
        adversarial(e)
        d = {"accuracy": 0.5, "relative_degradation": 0.49}
        e["summary"] = {"corruptions": {"accuracy": 0.5, "ci95": 0.01, "clean": 0.98, "relative_degradation": 0.49,
                                        "n_scenarios": 1, "n_episodes": 600, "by_severity": {"1": d},
                                        "by_shift": {"gaussian-noise": d}}}

    write_entry(_entries(root), "protonet-adv", base, edit=summarised,
                scenarios={"pgd-linf@16/255:query": attacked[:200], "gaussian-noise@1": base})
    lb.build(root)
    md = (root / "omniglot-5w1s" / "v1" / "table.md").read_text()
    assert ("| Rank | Algorithm | Clean acc. (%) | Best known `16/255:query` | `pgd-linf@16/255:query` | "
            "mean corruption | Checkpoint |") in md
    assert "| 50.00 ± 1.00 (1 sc.) |" in md


def test_the_robustness_ranking_orders_rows_by_best_known_accuracy(root):
    lb.build(root)  # clean results only: nothing to rank
    assert "## Robustness ranking" not in (root / "omniglot-5w1s" / "v1" / "table.md").read_text()
    base = _base_counts()
    pgd = [(c // 2, t) for c, t in base]
    weak = [(c // 3, t) for c, t in base]
    aa = [(c // 4, t) for c, t in base[:200]]
    entries = _entries(root)
    write_entry(entries, "protonet", base, scenarios={"pgd-linf@16/255:query": pgd})
    write_entry(entries, "protonet-tied", _tied(base), scenarios={"pgd-linf@16/255:query": _tied(pgd)})
    # the worse model's PGD-20 is lower still, and AutoAttack on the subset lowers its best known again
    write_entry(entries, "protonet-worse", _worse(base), scenarios={"pgd-linf@16/255:query": weak})
    write_entry(entries, "protonet-worse-aa", _worse(base)[:200], edit=_ensemble_edit("protonet-worse"),
                scenarios={"autoattack@16/255:query": aa})
    lb.build(root)
    lb.check(root)
    md = (root / "omniglot-5w1s" / "v1" / "table.md").read_text()
    section = md[md.index("## Robustness ranking"):md.index("## Robustness and shifts")]
    assert "### `16/255:query`" in section
    lines = [x for x in section.splitlines() if x.startswith("| ") and not x.startswith("| Rank")]
    cells = [[c.strip() for c in x.strip("|").split(" | ")] for x in lines]
    assert [c[0] for c in cells] == ["1=", "1=", "3"]  # the tied pair shares rank 1; the worse model is last
    assert len({c[-1] for c in cells}) == 3 and all(len(c[-1]) == 14 for c in cells)  # each row its checkpoint
    acc, ci = mean_ci95([c / t for c, t in aa])
    assert cells[2][3:8] == [f"{100 * acc:.2f}", f"{100 * ci:.2f}", "200", "`autoattack`", "yes"], cells[2]
    assert cells[0][7] == cells[1][7] == "no"  # PGD only: an upper bound the text says stronger attacks lower
    assert float(cells[1][8]) >= 0.05 and cells[2][8] == "<0.001"  # p vs. above: tie, then a clear gap
    assert "only a row with autoattack among its attacks rests on the suite's ensemble" in section
    html = (root / "omniglot-5w1s" / "v1" / "table.html").read_text()
    ranking = html[html.index("<h2>Robustness ranking</h2>"):html.index("<h2>Clean vs. robust accuracy</h2>")]
    assert '<table class="ranking" data-cell="16/255:query">' in ranking
    assert [m.split('"')[0] for m in ranking.split('data-robust-rank="')[1:]] == ["1=", "1=", "3"]  # the same ranking
    t = _base_entry()["training"]
    assert cells[0][10] == (f"{t['steps']} steps, {t['episodes_seen']} episodes, {t['wall_time_s'] / 3600:.2f} h, "
                            f"{t['device']}")  # the training cost its checkpoint recorded


def _ensemble_edit(model: str, n: int = 200, sha: str | None = None) -> Callable[[dict[str, Any]], None]:
    """An entry on the suite's ensemble subset (its first ``n`` episodes) of the checkpoint of entry ``model``."""
    def edit(e: dict[str, Any]) -> None:
        e["suite"]["n_episodes"] = n
        e["suite"]["manifest_sha256"] = sha or lb.ensemble_subset(read_suite(SUITE_DIR / "suite.toml")).manifest_sha256
        e["checkpoint"]["sha256"] = hashlib.sha256(model.encode()).hexdigest()
    return edit


def test_ensemble_subset_entries_show_in_their_checkpoints_rows(root):
    base = _base_counts()
    aa = [(c // 4, t) for c, t in base[:200]]
    poisoned = [(c // 2, t) for c, t in base[:200]]
    write_entry(_entries(root), "protonet-aa", base[:200], edit=_ensemble_edit("protonet"),
                scenarios={"autoattack@16/255:query": aa, "apgd-ensemble@16/255:support": poisoned})
    lb.build(root)
    lb.check(root)  # the query and the poisoning ensemble share the declared subset
    rows = _table(root)
    assert "protonet-aa.json" not in {r["entry"] for r in rows}  # not ranked: its clean covers 200 episodes
    assert len(rows) == 3
    md = (root / "omniglot-5w1s" / "v1" / "table.md").read_text()
    robust = md[md.index("## Robustness and shifts"):md.index("## Notes")]
    lines = [line for line in robust.splitlines() if line.startswith("| ") and not line.startswith("| Rank")]
    assert len(lines) == 1 and lines[0].startswith("| 1= | protonet [1] |")  # the row of the same checkpoint
    acc, ci = mean_ci95([c / t for c, t in aa])
    assert f"| {100 * acc:.2f} ± {100 * ci:.2f} (200 ep.) |" in lines[0]
    assert ("autoattack@16/255:query, apgd-ensemble@16/255:support: the suite's first 200 episodes (its ensemble "
            "subset), from protonet-aa.json" in md)
    assert "protonet-aa.json" in (root / "omniglot-5w1s" / "v1" / "table.html").read_text()


def test_ensemble_subset_entries_are_checked(root):
    base = _base_counts()
    aa = {"autoattack@16/255:query": [(c // 4, t) for c, t in base[:200]]}
    entries = _entries(root)
    # another attack on the subset (an external evaluation) is accepted; a shift needs all 600 episodes
    write_entry(entries, "ext-pgd", base[:200], edit=_ensemble_edit("protonet"),
                scenarios={"pgd-linf@16/255:query": aa["autoattack@16/255:query"]})
    lb.build(root)
    lb.check(root)
    (entries / "ext-pgd.json").unlink()
    write_entry(entries, "bad-shift", base[:200], edit=_ensemble_edit("protonet"),
                scenarios={"gaussian-noise@3": aa["autoattack@16/255:query"]})
    _check_fails(root, "bad-shift.json: metrics: gaussian-noise@3 on 200 episodes",
                 "holds only clean and attack scenarios", "evaluate shifts on all 600 episodes")
    (entries / "bad-shift.json").unlink()
    # other episodes than the pinned subset
    write_entry(entries, "bad-sha", base[:200], edit=_ensemble_edit("protonet", sha="0" * 64), scenarios=aa)
    _check_fails(root, "bad-sha.json: suite.manifest_sha256", "pinned for the ensemble subset")
    (entries / "bad-sha.json").unlink()
    # a prefix other than the declared subset
    write_entry(entries, "bad-n", base[:100], edit=_ensemble_edit("protonet", n=100),
                scenarios={k: v[:100] for k, v in aa.items()})
    _check_fails(root, "bad-n.json: suite.n_episodes: 100", "its first 200: the ensemble subset")
    (entries / "bad-n.json").unlink()
    # no full-suite entry of that checkpoint to supplement
    write_entry(entries, "orphan", base[:200], edit=_ensemble_edit("nobody"), scenarios=aa)
    _check_fails(root, "orphan.json: checkpoint", "publish its clean (or attack) evaluation on all 600 episodes first")


def test_a_live_entry_whose_checkpoint_is_not_in_the_zoo_fails_the_check(root, zoo):
    record = next(zoo.glob("*.json"))
    lb.build(root)
    record.unlink()
    _check_fails(root, "checkpoint:", "is not in the checkpoint zoo", "supersede the entry")


def test_external_evaluations_join_their_models_row_with_the_best_known_accuracy(root):
    base = _base_counts()
    pgd = [(c // 2, t) for c, t in base]
    strong = [(c // 3, t) for c, t in base]

    def same_model(e: dict[str, Any]) -> None:
        e["checkpoint"]["sha256"] = hashlib.sha256(b"protonet").hexdigest()
        e["created"] = "2030-01-01T00:00:00+00:00"  # evaluated after the model's own entry
        e["scenarios"] = {"mi-fgsm@16/255:query": {"kind": "attack", "id": "mi-fgsm", "eps": 16 / 255,
                                                   "target": "query", "provider": "mrbench-example-plugin",
                                                   "provider_version": "0.1.0"}}

    write_entry(_entries(root), "protonet", base, scenarios={"pgd-linf@16/255:query": pgd})
    write_entry(_entries(root), "protonet-mifgsm", base, edit=same_model, scenarios={"mi-fgsm@16/255:query": strong})
    write_entry(_entries(root), "protonet-aa", base[:200], edit=_ensemble_edit("protonet"),
                scenarios={"autoattack@16/255:query": [(c // 4, t) for c, t in base[:200]]})
    lb.build(root)
    lb.check(root)
    rows = _table(root)
    assert "protonet-mifgsm.json" not in {r["entry"] for r in rows}  # the same model: no second row
    md = (root / "omniglot-5w1s" / "v1" / "table.md").read_text()
    robust = md[md.index("## Robustness and shifts"):md.index("## Notes")]
    line = next(x for x in robust.splitlines() if x.startswith("| 1= | protonet"))
    cells = [c.strip() for c in line.strip("|").split(" | ")]
    # the best known is the lowest over every attack on the episodes all of them cover (the 200-episode subset)
    accs = {k: mean_ci95([c / t for c, t in v[:200]]) for k, v in
            (("autoattack", [(c // 4, t) for c, t in base[:200]]), ("mi-fgsm", strong), ("pgd-linf", pgd))}
    best = min(accs, key=lambda k: accs[k][0])
    assert cells[3] == f"{100 * accs[best][0]:.2f} ± {100 * accs[best][1]:.2f} ({best}, 200 ep.)"
    assert "`mi-fgsm@16/255:query`" in robust
    assert ("mi-fgsm@16/255:query: all 600 episodes, from protonet-mifgsm.json (external evaluation: mi-fgsm of "
            "mrbench-example-plugin 0.1.0)") in md
    # a supplement of the same model must agree on clean, episode by episode
    write_entry(_entries(root), "protonet-mifgsm", _worse(base), edit=same_model,
                scenarios={"mi-fgsm@16/255:query": strong})
    _check_fails(root, "protonet-mifgsm.json: metrics.clean: differs from protonet.json (the same model)")


def test_an_unreliable_supplement_flags_its_models_row(root):
    base = _base_counts()

    def flagged(e: dict[str, Any]) -> None:
        e["checkpoint"]["sha256"] = hashlib.sha256(b"protonet").hexdigest()
        e["created"] = "2030-01-01T00:00:00+00:00"
        e["unreliable"] = True
        e["footnote"] = "Sanity check failed: query margin-loss: pgd-margin (margin loss, 20 steps) 0.100 vs PGD 0.400."

    write_entry(_entries(root), "protonet-ext", base, edit=flagged, scenarios={"pgd-linf@16/255:query": base})
    lb.build(root)
    lb.check(root)
    row = next(r for r in _table(root) if r["entry"] == "protonet.json")
    assert row["unreliable"] == "true"  # the row holds the flagged numbers
    md = (root / "omniglot-5w1s" / "v1" / "table.md").read_text()
    assert "| 1= | protonet † [1] |" in md, md
    assert "from protonet-ext.json. Flagged unreliable (†): its numbers join this row with the flag. Sanity check" in md
    assert next(r for r in _table(root) if r["entry"] == "protonet-tied.json")["unreliable"] == "false"


def test_transfer_entries_say_what_they_were_trained_for(root):
    def moved(e: dict[str, Any]) -> None:
        e["transfer"] = {"trained_on": "omniglot-20w1s@v1", "kinds": ["way"], "train_data": None,
                         "train_spec": {"n_way": 20, "k_shot": 1, "n_query": 15}}

    _edit_json(_entries(root) / "protonet-worse.json", moved)
    lb.build(root)
    md = (root / "omniglot-5w1s" / "v1" / "table.md").read_text()
    assert ("protonet-worse.json: Meta-trained for omniglot-20w1s@v1 (20-way 1-shot episodes), not for this suite "
            "(way shift).") in md


# --- check failures: every one names the file and the field ----------------------


def _set_accuracy(value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda e: e["metrics"]["clean"].update(accuracy=value)


@pytest.mark.parametrize("edit, fragment", [
    pytest.param(_set_accuracy(0.99), "protonet.json: metrics.clean.accuracy: 0.99 disagrees with the mean",
                 id="edited-number"),
    pytest.param(_set_accuracy("0.985888888888892"), "protonet.json: metrics.clean.accuracy: Input should be a "
                 "valid number", id="string-for-number"),
    pytest.param(lambda e: e["suite"].update(manifest_sha256="0" * 64), "protonet.json: suite.manifest_sha256: "
                 + "0" * 64 + " does not match", id="wrong-manifest-hash"),
    pytest.param(lambda e: e.pop("checkpoint"), "protonet.json: checkpoint: Field required", id="missing-field"),
    pytest.param(lambda e: e["dataset"].update(revision="ffff"), "protonet.json: dataset.revision: ffff does not "
                 "match the revision 0583c379ce9be853", id="wrong-revision"),
    pytest.param(lambda e: e["suite"].update(version=7), "protonet.json: suite.id/suite.version: omniglot-5w1s@v7 "
                 "does not exist", id="unknown-suite-version"),
    pytest.param(lambda e: e["metrics"]["clean"].update(ci95=float("nan")), "protonet.json: metrics.clean.ci95: "
                 "is NaN", id="nan-ci"),
    pytest.param(lambda e: e["metrics"]["clean"].update(n_queries=44999), "protonet.json: metrics.clean.n_queries: "
                 "44999 disagrees", id="edited-count"),
    pytest.param(lambda e: e.update(episodes_file="gone.episodes.csv"), "protonet.json: episodes_file: "
                 "gone.episodes.csv does not exist", id="missing-episodes-file"),
    pytest.param(lambda e: e.update(schema_version="1"), "protonet.json: schema_version: must be an integer",
                 id="string-schema-version"),
])
def test_check_fails_naming_the_file_and_field(root, edit, fragment):
    lb.build(root)
    lb.check(root)
    _edit_json(_entries(root) / "protonet.json", edit)
    _check_fails(root, fragment)
    with pytest.raises(MrbenchError):
        lb.build(root)  # build refuses too, and writes nothing


def test_check_fails_when_the_episode_file_disagrees(root):
    lb.build(root)
    ep = _entries(root) / "protonet.episodes.csv"
    ep.write_text("".join(ep.read_text().splitlines(keepends=True)[:-1]))  # drop the last episode
    _check_fails(root, "protonet.json: metrics.clean.n_episodes: 600, but protonet.episodes.csv has 599 episodes")


def test_check_fails_on_a_stale_table(root):
    lb.build(root)
    md = root / "omniglot-5w1s" / "v1" / "table.md"
    md.write_text(md.read_text().replace("98.59", "98.60", 1))
    _check_fails(root, "table.md: line ", "stale")
    lb.build(root)
    lb.check(root)
    # A new entry without a rebuild also leaves both tables stale.
    write_entry(_entries(root), "late", _worse(_base_counts()))
    msg = _check_fails(root, "table.csv: line ", "table.md: line ")
    assert "late.json" not in msg  # the entry itself is fine


def test_check_fails_on_a_missing_table_and_a_missing_suite(root):
    _check_fails(root, "table.csv: table: missing", "table.md: table: missing", "table.html: table: missing",
                 "index.html: index: missing")
    (root / "omniglot-5w1s" / "v2" / "entries").mkdir(parents=True)
    _check_fails(root, "suite.toml: suite: missing: omniglot-5w1s@v2 is not a suite")


def test_default_roots_follow_mrbench_suites(root):
    roots = lb.leaderboard_roots()
    assert roots[0] == root and roots[-1] == REPO / "leaderboards"
    assert lb.leaderboard_roots(root) == [root]


# --- schema and migrations ---------------------------------------------------------


def test_the_committed_result_validates():
    entry = schema.validate_entry(json.loads(RESULT.read_text()), RESULT.name)
    assert entry.metrics["clean"].n_episodes == 600 and entry.supersedes is None
    assert entry.reported["clean"].source.startswith("Snell et al. 2017")


@pytest.mark.parametrize("edit, fragment", [
    (_set_accuracy(1.5), "metrics.clean.accuracy: Input should be less than or equal to 1"),
    (lambda e: e["metrics"]["clean"].update(n_episodes=True),
     "metrics.clean.n_episodes: Input should be a valid integer"),
    (lambda e: e["checkpoint"].update(sha256="ABC"), "checkpoint.sha256: String should match pattern"),
    (lambda e: e.update(unexpected=1), "unexpected: Extra inputs are not permitted"),
    (lambda e: e.update(metrics={}), "metrics: must contain the 'clean' scenario"),
    (lambda e: e.update(reported={"clean": {"accuracy": "98.8", "source": "x"}}),
     "reported.clean.accuracy: Input should be a valid number"),
])
def test_schema_is_strict(edit, fragment):
    raw = _base_entry()
    edit(raw)
    with pytest.raises(MrbenchError, match="^entries/x.json: ") as info:
        schema.validate_entry(raw, "entries/x.json")
    assert fragment in str(info.value)


def test_nan_ci_is_allowed_for_a_single_episode():
    raw = _base_entry()
    raw["suite"]["n_episodes"] = 1
    raw["metrics"]["clean"].update(n_episodes=1, n_queries=75, ci95=float("nan"))
    assert math.isnan(schema.validate_entry(raw, "x.json").metrics["clean"].ci95)


def test_the_schema_version_is_the_last_migrations_target():
    assert schema.SCHEMA_VERSION == max(schema.MIGRATIONS) + 1


def test_migration_upgrades_step_by_step(monkeypatch):
    monkeypatch.setattr(schema, "MIGRATIONS", {k: schema.MIGRATIONS[k] for k in (1, 2)})  # the real steps

    @schema.migration(0)
    def _v0_to_v1(raw: dict[str, Any]) -> dict[str, Any]:
        # A made-up v0 that kept the clean numbers at the top level.
        raw["metrics"] = {"clean": raw.pop("clean")}
        raw["schema_version"] = 1
        return raw

    v0 = _base_entry()
    v0["clean"] = v0.pop("metrics")["clean"]
    v0["schema_version"] = 0
    before = copy.deepcopy(v0)
    entry = schema.validate_entry(v0, "old.json")
    assert entry.schema_version == 3 and entry.metrics["clean"].accuracy == before["clean"]["accuracy"]
    assert entry.summary is None and entry.breakdown is None and entry.transfer is None
    assert v0 == before  # migrate does not modify its input

    with pytest.raises(ValueError, match="already registered"):
        schema.migration(0)(_v0_to_v1)
    with pytest.raises(MrbenchError, match="schema_version: no migration from version -1"):
        schema.migrate({**v0, "schema_version": -1})
    with pytest.raises(MrbenchError, match="old.json: schema_version: 4 is newer"):
        schema.validate_entry({**v0, "schema_version": 4}, "old.json")


# --- the paired test ---------------------------------------------------------------


@pytest.mark.parametrize("t, df, p", [  # reference values: scipy.stats.t.sf(t, df) * 2
    (2.0, 10, 0.07338803477074037), (0.5, 3, 0.651447964848151), (1.96, 599, 0.05045900417291545),
    (3.3, 1, 0.18731554186375868), (10.0, 50, 1.6077334688335447e-13), (0.0, 5, 1.0),
    (2.5, 1_000_000, 0.012419489502163254),
])
def test_t_distribution(t, df, p):
    assert t_two_sided_p(t, df) == pytest.approx(p, rel=1e-9, abs=1e-15)
    assert t_two_sided_p(-t, df) == pytest.approx(p, rel=1e-9, abs=1e-15)


def test_paired_t_test():
    a, b = [1, 0.9, 0.8, 1, 0.95, 0.7], [0.9, 0.9, 0.7, 1, 0.9, 0.75]
    res = paired_t_test(a, b)  # scipy.stats.ttest_rel(a, b)
    assert (res.t, res.p, res.df) == (pytest.approx(1.3483997249264834), pytest.approx(0.23538747727819023), 5)
    assert paired_t_test(a, a).p == 1.0  # identical results tie
    assert paired_t_test([1.0, 0.9], [0.9, 0.8]).p == 0.0  # the same non-zero gap on every episode
    assert paired_t_test([1.0], [0.0]).p == 1.0  # one episode: no evidence
    with pytest.raises(ValueError):
        paired_t_test([1.0], [1.0, 0.5])


# --- the CLI -------------------------------------------------------------------------


def _one_paragraph(err: str) -> None:
    assert "Traceback" not in err and err.strip().count("\n") == 0, err


def test_cli_leaderboard_commands(root, capsys):
    assert main(["leaderboard", "check", "--root", str(root)]) == 2
    _one_paragraph(capsys.readouterr().err)

    assert main(["leaderboard", "build", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "table.csv, table.md, table.html written" in out and "index.html: written" in out
    assert main(["leaderboard", "check", "--root", str(root)]) == 0
    assert "leaderboard check passed: 1 leaderboard(s), 3 entries" in capsys.readouterr().out
    assert main(["leaderboard", "show", "omniglot-5w1s", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "omniglot-5w1s@v1" in out and "98.59 ± 0.22" in out and "1=" in out

    assert main(["leaderboard", "show", "omniglot-5w5s", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert "No leaderboard for suite 'omniglot-5w5s'" in err

    _edit_json(_entries(root) / "protonet-tied.json", _set_accuracy("0.98"))
    assert main(["leaderboard", "check", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert "protonet-tied.json: metrics.clean.accuracy: Input should be a valid number" in err


def test_a_column_is_defined_once_and_every_output_shows_it(root, monkeypatch):
    # bench/leaderboard/columns.py: a Column carries its header, value, format and
    # alignment, and table.csv, table.md, table.html and the terminal take it from the layouts.
    from rich.console import Console

    from bench.leaderboard import columns, csv as lb_csv, html as lb_html, markdown as lb_md, terminal as lb_term

    wall = columns.Column("wall_time", "Wall time (s)", lambda v: v.entry.wall_time_s, fmt=lambda s: f"{s:.1f}",
                          numeric=True, csv="wall_time_s", label="wall s")
    monkeypatch.setattr(lb_csv, "CSV", columns.CSV + (wall,))
    monkeypatch.setattr(lb_md, "MARKDOWN", columns.MARKDOWN + (wall,))
    monkeypatch.setattr(lb_term, "TERMINAL", columns.TERMINAL + (wall,))
    monkeypatch.setattr(lb_html, "html_columns", lambda rows: columns.html_columns(rows) + (wall,))
    board = lb.find_board("omniglot-5w1s", root)
    want = [f"{r.entry.entry.wall_time_s:.1f}" for r in lb.rank(board)]
    files = lb.render(board)

    assert [r["wall_time_s"] for r in csv.DictReader(io.StringIO(files["table.csv"]))] == want
    md = files["table.md"].splitlines()
    head = md.index(next(line for line in md if line.startswith("| Rank |")))
    assert md[head].endswith("| Wall time (s) |") and md[head + 1].endswith("---|---:|")
    assert [line.removesuffix(" |").rsplit(" | ", 1)[1] for line in md[head + 2:head + 2 + len(want)]] == want
    assert files["table.html"].count('data-column="wall_time"') == 1
    assert [f'<td class="num">{w}</td>' in files["table.html"] for w in want] == [True] * len(want)
    out = io.StringIO()
    lb.show("omniglot-5w1s", root, console=Console(file=out, width=300, color_system=None))
    assert "wall s" in out.getvalue() and all(w in out.getvalue() for w in want)


# --- what evaluate() writes goes on a leaderboard as is ------------------------------------


def test_an_evaluated_entry_builds_and_checks(tmp_path, tiny_suite, monkeypatch, zoo):
    from bench.evaluation import evaluate
    from bench.suites import get_suite
    from bench.training import train

    from bench.zoo import publish

    train("protonet", tiny_suite, tmp_path / "p.pt", steps=2, meta_batch=1, device="cpu")
    publish(tmp_path / "p.pt", zoo)  # a leaderboard entry's checkpoint is in the zoo
    folder = tmp_path / "boards" / tiny_suite / "v1"
    entry = evaluate(None, tiny_suite, tmp_path / "p.pt", out=folder / "entries" / "protonet.json", device="cpu")
    pins = f'revision = "{entry["dataset"]["revision"]}"\nmanifest_sha256 = "{entry["suite"]["manifest_sha256"]}"\n'
    (folder / "suite.toml").write_text(get_suite(tiny_suite).path.read_text().rstrip("\n") + "\n" + pins)
    monkeypatch.setenv("MRBENCH_SUITES", str(tmp_path / "boards"))

    lb.build(tmp_path / "boards")
    [summary] = lb.check(tmp_path / "boards")
    assert summary.ref == f"{tiny_suite}@v1" and summary.n_entries == 1


def test_the_committed_leaderboards_pass_check():
    # The real tree: every committed entry valid, every table regenerated byte for byte.
    from bench.cli import main

    assert main(["leaderboard", "check"]) == 0
