"""The generalization report (bench.report): sections, numbers, pairing, plots, errors."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from bench.errors import MrbenchError
from bench.report import write_report

ROOT = Path(__file__).resolve().parents[1]
BASE_ENTRY = ROOT / "leaderboards" / "omniglot-5w1s" / "v1" / "entries" / "maml-omniglot-5w1s.json"
# a committed, real attack entry (600 episodes, FGSM + PGD-20 on query, support and both)
ATTACK_ENTRY = ROOT / "leaderboards" / "omniglot-5w1s" / "v1" / "entries" / "protonet-natural-attacks.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHA = "448dafc725f601055f9f0ba89eafc7d7460c64b34b79de9c2cf61817c4ad75e6"
OTHER_SHA = "0" * 64


@pytest.fixture(scope="module")
def base() -> dict:
    return json.loads(BASE_ENTRY.read_text())


def m(acc: float, ci: float = 0.01, n: int = 600) -> dict:
    return {"accuracy": acc, "ci95": ci, "n_episodes": n, "n_queries": 75 * n}


def make(base: dict, *, metrics: dict | None = None, steps: int | None = None, split: str | None = None,
         sha: str | None = None, clean: float | None = None, **top) -> dict:
    """A copy of the real MAML entry with some fields changed."""
    e = copy.deepcopy(base)
    if clean is not None:
        e["metrics"]["clean"] = m(clean, 0.005)
    if metrics:
        e["metrics"].update(metrics)
    if steps is not None:
        e["algorithm"]["options"]["inner_steps_test"] = steps
    if split is not None:
        e["dataset"]["split"] = split
    if sha is not None:
        e["checkpoint"]["sha256"] = sha
    e.update(top)
    return e


def save(tmp_path: Path, name: str, entry: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(entry, indent=2))
    return path


def section(md: str, title: str) -> str:
    """The text of the ``## title`` section (up to the next ``## ``)."""
    start = md.index(f"## {title}\n")
    end = md.find("\n## ", start + 1)
    return md[start:] if end < 0 else md[start:end]


def row(md: str, first_cell: str) -> list[str]:
    """The cells of the first table row whose first cell is ``first_cell``."""
    for line in md.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if cells[0] == first_cell:
                return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{md}")


CORR = {f"{s}@{v}": m(a) for s, base_acc in (("gaussian-noise", 0.9), ("contrast", 0.8))
        for v, a in ((v, base_acc - 0.05 * (v - 1)) for v in range(1, 6))}
SUMMARY = {"corruptions": {"accuracy": 0.75, "ci95": 0.004, "clean": 0.9620888888888927,
                           "relative_degradation": 0.2204, "n_scenarios": 10, "n_episodes": 600,
                           "by_severity": {str(v): {"accuracy": 0.85 - 0.05 * (v - 1), "relative_degradation": 0.1}
                                           for v in range(1, 6)},
                           "by_shift": {"gaussian-noise": {"accuracy": 0.8, "relative_degradation": 0.17},
                                        "contrast": {"accuracy": 0.7, "relative_degradation": 0.27}}}}
LABEL_NOISE = {"label-noise@2": m(0.8123), "label-noise@4": m(0.6012), "class-imbalance@1": m(0.9321)}
ATTACKS = {
    "pgd-linf@8/255:query": m(0.5), "pgd-linf@16/255:query": m(0.2222), "fgsm@16/255:query": m(0.6),
    "ensemble@16/255:query": m(0.2222),
    "pgd-linf[steps=40]@8/255:support": m(0.7777), "fgsm@8/255:support": m(0.8),
    "pgd-l2@0.5:both": m(0.3), "ensemble@0.5:both": m(0.2868),
}
BREAKDOWN = {"by": "alphabet", "scenario": "clean",
             "groups": {"Atlantean": {"accuracy": 0.95, "n_queries": 900},
                        "Kannada": {"accuracy": 0.90, "n_queries": 600},
                        "Tibetan": {"accuracy": 0.99, "n_queries": 300}}}
TRANSFER = {"trained_on": "omniglot-5w1s@v1", "kinds": ["way"], "train_spec": {"n_way": 5, "k_shot": 1, "n_query": 15},
            "train_data": {"dataset": "omniglot"}}


def transfer_entry(base: dict) -> dict:
    e = make(base, clean=0.9, transfer=TRANSFER)
    e["suite"] = dict(e["suite"], id="omniglot-20w1s", spec={"n_way": 20, "k_shot": 1, "n_query": 15})
    return e


# one extra entry (next to the clean MAML entry) per section, holding only that section's data
SECTION_DATA = {
    "gap": lambda b: make(b, split="meta-train", clean=0.99),
    "steps": lambda b: make(b, steps=5, clean=0.97),
    "transfer": transfer_entry,
    "corruptions": lambda b: make(b, metrics=CORR, summary=SUMMARY),
    "support-shifts": lambda b: make(b, metrics=LABEL_NOISE),
    "attacks": lambda b: make(b, metrics=ATTACKS),
    "breakdown": lambda b: make(b, breakdown=BREAKDOWN),
}
TITLES = {"summary": "Summary", "gap": "Meta-train vs meta-test gap", "steps": "Adaptation steps",
          "transfer": "Shift and transfer", "corruptions": "Corruptions",
          "support-shifts": "Label noise and support shifts", "attacks": "Attacks",
          "breakdown": "Per-alphabet breakdown"}
PLOTS = {"steps": ["steps.png"], "corruptions": ["severity.png", "corruptions.png"], "attacks": ["eps.png"],
         "breakdown": ["groups.png"]}


def test_clean_entry_only_has_the_summary(tmp_path: Path) -> None:
    s = write_report([BASE_ENTRY], tmp_path / "out")
    md = s.markdown.read_text()
    assert s.markdown == tmp_path / "out" / "report.md"
    assert s.sections == ["summary"] and s.plots == []
    assert md.splitlines()[0].startswith("Report on 1 result entry: `maml-omniglot-5w1s.json`")
    assert "created 2026-11-22T06:48:49+00:00" in md.splitlines()[0]
    assert row(md, "maml")[1:4] == ["omniglot-5w1s@v1", "600", "96.21 ± 0.39"]
    assert [t for t in TITLES.values() if f"## {t}\n" in md] == ["Summary"]
    assert str(tmp_path) not in md and ".png" not in md


@pytest.mark.parametrize("name", list(SECTION_DATA))
def test_each_section_appears_iff_its_data_is_there(tmp_path: Path, base: dict, name: str) -> None:
    extra = save(tmp_path, "extra.json", SECTION_DATA[name](base))
    s = write_report([BASE_ENTRY, extra], tmp_path / "out")
    md = s.markdown.read_text()
    assert s.sections == ["summary", name]
    assert [t for t in TITLES.values() if f"## {t}\n" in md] == ["Summary", TITLES[name]]
    assert [p.name for p in s.plots] == PLOTS.get(name, [])
    for p in s.plots:
        assert p.read_bytes().startswith(PNG_MAGIC)
        assert f"]({p.name})" in md


def test_summary_numbers(tmp_path: Path, base: dict) -> None:
    e = make(base, metrics={**CORR, **LABEL_NOISE, **ATTACKS}, summary=SUMMARY, unreliable=True,
             footnote="attack sanity check failed")
    md = write_report([save(tmp_path, "a.json", e)], tmp_path / "out").markdown.read_text()
    summ = section(md, "Summary")
    head = row(summ, "entry")
    cells = dict(zip(head, row(summ, "maml")))
    assert cells["clean"] == "96.21 ± 0.39"
    assert cells["mean corruption"] == "75.00 ± 0.40"  # from the summary, not recomputed
    assert cells["rel. degradation"] == "22.04%"
    assert cells["label noise 20%"] == "81.23 ± 1.00"
    assert cells["label noise 40%"] == "60.12 ± 1.00"
    # the individual attack wins a tie with the ensemble; largest eps only (16/255, not 8/255)
    assert cells["strongest attack (query)"] == "22.22 ± 1.00 (`pgd-linf@16/255`)"
    assert cells["strongest attack (support)"] == "77.77 ± 1.00 (`pgd-linf[steps=40]@8/255`)"
    assert cells["strongest attack (both)"] == "28.68 ± 1.00 (`ensemble@0.5`)"
    assert cells["unreliable"] == "**yes**"
    assert "- maml: **unreliable**: attack sanity check failed" in summ


def test_corruption_and_support_tables(tmp_path: Path, base: dict) -> None:
    e = make(base, metrics={**CORR, **LABEL_NOISE}, summary=SUMMARY)
    md = write_report([save(tmp_path, "a.json", e)], tmp_path / "out").markdown.read_text()
    corr = section(md, "Corruptions")
    assert row(corr, "corruption") == ["corruption", "1", "2", "3", "4", "5", "mean"]
    assert row(corr, "`gaussian-noise`") == ["`gaussian-noise`", "90.00 ± 1.00", "85.00 ± 1.00", "80.00 ± 1.00",
                                             "75.00 ± 1.00", "70.00 ± 1.00", "80.00"]
    assert row(corr, "**mean**") == ["**mean**", "85.00", "80.00", "75.00", "70.00", "65.00", "75.00 ± 0.40"]
    assert "label-noise" not in corr and "class-imbalance" not in corr  # support shifts are not corruptions
    sup = section(md, "Label noise and support shifts")
    ln = sup[sup.index("### `label-noise`"):sup.index("### `class-imbalance`")]
    assert row(ln, "entry") == ["entry", "0 (clean)", "2 (20%)", "4 (40%)"]
    assert row(ln, "maml") == ["maml", "96.21 ± 0.39", "81.23 ± 1.00", "60.12 ± 1.00"]
    assert row(sup[sup.index("### `class-imbalance`"):], "maml")[2] == "93.21 ± 1.00"


def test_corruptions_without_summary_are_computed_from_metrics(tmp_path: Path, base: dict) -> None:
    e = make(base, metrics=CORR)
    e.pop("summary", None)
    md = write_report([save(tmp_path, "a.json", e)], tmp_path / "out").markdown.read_text()
    corr = section(md, "Corruptions")
    mean = row(corr, "**mean**")
    assert mean[1:6] == ["85.00", "80.00", "75.00", "70.00", "65.00"]
    assert mean[6].startswith("75.00 ± ") and mean[6].endswith("†")
    assert row(corr, "`contrast`")[-1] == "70.00"
    cells = dict(zip(row(md, "entry"), row(md, "maml")))
    rel = (0.9620888888888927 - 0.75) / 0.9620888888888927
    assert cells["rel. degradation"] == f"{100 * rel:.2f}% †"


def test_gap_pairs_same_checkpoint_and_has_the_right_sign(tmp_path: Path, base: dict) -> None:
    train = save(tmp_path, "train.json", make(base, split="meta-train", clean=0.99))
    other = save(tmp_path, "other.json", make(base, split="meta-train", clean=0.5, sha=OTHER_SHA))
    md = write_report([BASE_ENTRY, train, other], tmp_path / "out").markdown.read_text()
    gap = section(md, "Meta-train vs meta-test gap")
    rows = [line for line in gap.splitlines() if line.startswith("| maml")]
    assert len(rows) == 1  # the other checkpoint has no meta-test entry to pair with
    cells = row(gap, rows[0].split(" | ")[0][2:])
    assert cells[3:] == ["99.00 ± 0.50", "96.21 ± 0.39", "+2.79"]  # meta-train - meta-test
    # the mirror case: worse on the training classes gives a negative gap
    low = save(tmp_path, "low.json", make(base, split="meta-train", clean=0.9))
    md = write_report([low, BASE_ENTRY], tmp_path / "out2").markdown.read_text()
    line = next(x for x in section(md, "Meta-train vs meta-test gap").splitlines() if x.startswith("| maml"))
    assert line.rstrip(" |").endswith("-6.21")


def test_steps_pair_only_the_same_checkpoint(tmp_path: Path, base: dict) -> None:
    five = save(tmp_path, "five.json", make(base, steps=5, clean=0.97))
    other = save(tmp_path, "other.json", make(base, steps=1, clean=0.5, sha=OTHER_SHA))
    s = write_report([BASE_ENTRY, five, other], tmp_path / "out")
    steps = section(s.markdown.read_text(), "Adaptation steps")
    body = [line for line in steps.splitlines() if line.startswith("| maml")]
    assert [line.split(" | ")[3] for line in body] == ["3", "5"]
    assert "50.00" not in steps  # the other checkpoint's single entry is no series
    assert body[1].split(" | ")[4:] == ["97.00 ± 0.50", "+0.79 |"]
    assert (tmp_path / "out" / "steps.png").read_bytes().startswith(PNG_MAGIC)
    # only a different checkpoint at another step count: no section at all
    s = write_report([BASE_ENTRY, other], tmp_path / "out2")
    assert "steps" not in s.sections and not (tmp_path / "out2" / "steps.png").exists()


def test_transfer_drop_against_own_suite(tmp_path: Path, base: dict) -> None:
    moved = save(tmp_path, "moved.json", transfer_entry(base))
    md = write_report([BASE_ENTRY, moved], tmp_path / "out").markdown.read_text()
    tr = section(md, "Shift and transfer")
    cells = row(tr, "maml [omniglot-20w1s@v1]")
    assert cells[1] == "omniglot-5w1s@v1 (5-way 1-shot) → omniglot-20w1s@v1 (20-way 1-shot)"
    assert cells[2:4] == ["way", "90.00 ± 0.50"]
    assert cells[4].startswith("+6.21 ")  # 96.21 on its own suite - 90.00 here
    # without the own-suite entry there is no drop to show
    md = write_report([moved], tmp_path / "out2").markdown.read_text()
    assert row(section(md, "Shift and transfer"), "maml")[4] == "–"


def test_attack_tables(tmp_path: Path, base: dict) -> None:
    md = write_report([save(tmp_path, "a.json", make(base, metrics=ATTACKS))], tmp_path / "out").markdown.read_text()
    att = section(md, "Attacks")
    q = att[att.index("### Target `query`"):att.index("### Target `support`")]
    assert row(q, "entry") == ["entry", "attack", "0 (clean)", "8/255", "16/255"]
    pgd = [r for r in q.splitlines() if "`pgd-linf`" in r][0]
    assert pgd.split(" | ")[2:] == ["96.21 ± 0.39", "50.00 ± 1.00", "22.22 ± 1.00 |"]
    assert "`ensemble`" in q and "`fgsm`" in q
    sup = att[att.index("### Target `support`"):att.index("### Target `both`")]
    assert "`pgd-linf[steps=40]`" in sup
    both = att[att.index("### Target `both`"):]
    assert row(both, "entry")[3:] == ["0.5"] and "28.68 ± 1.00" in both


def test_breakdown_sorted_by_first_entry(tmp_path: Path, base: dict) -> None:
    a = save(tmp_path, "a.json", make(base, breakdown=BREAKDOWN))
    b2 = copy.deepcopy(BREAKDOWN)
    b2["groups"]["Kannada"]["accuracy"] = 0.999
    b = save(tmp_path, "b.json", make(base, breakdown=b2, steps=7))
    md = write_report([a, b], tmp_path / "out").markdown.read_text()
    br = section(md, "Per-alphabet breakdown")
    names = [r.split(" | ")[0][2:] for r in br.splitlines() if r.startswith("| ") and not r.startswith("| alphabet")]
    assert names == ["Kannada", "Atlantean", "Tibetan"]
    assert row(br, "Kannada")[1:] == ["90.00 (n=600)", "99.90 (n=600)"]


def test_pngs_valid_and_rerun_is_byte_identical(tmp_path: Path, base: dict) -> None:
    entries = [BASE_ENTRY] + [save(tmp_path, f"{k}.json", f(base)) for k, f in SECTION_DATA.items()]
    first = write_report(entries, tmp_path / "one")
    assert first.sections == ["summary", *SECTION_DATA]
    assert [p.name for p in first.plots] == ["steps.png", "severity.png", "corruptions.png", "eps.png", "groups.png"]
    before = {p.name: p.read_bytes() for p in [first.markdown, *first.plots]}
    assert all(v.startswith(PNG_MAGIC) for k, v in before.items() if k.endswith(".png"))
    again = write_report(entries, tmp_path / "one")  # same folder, overwritten
    other = write_report(entries, tmp_path / "two")  # another folder: no absolute paths in the report
    for s in (again, other):
        assert {p.name: p.read_bytes() for p in [s.markdown, *s.plots]} == before
    md = before["report.md"].decode()
    assert str(tmp_path) not in md
    assert re.findall(r"\]\(([^)]+)\)", md) == [p.name for p in first.plots]


def test_duplicate_labels_are_disambiguated(tmp_path: Path, base: dict) -> None:
    entries = [BASE_ENTRY, save(tmp_path, "five.json", make(base, steps=5)),
               save(tmp_path, "train.json", make(base, split="meta-train"))]
    md = write_report(entries, tmp_path / "out").markdown.read_text()
    labels = [r.split(" | ")[0][2:] for r in section(md, "Summary").splitlines() if r.startswith("| maml")]
    assert len(labels) == 3 and len(set(labels)) == 3
    assert labels == ["maml [meta-test, inner_steps_test=3]", "maml [meta-test, inner_steps_test=5]",
                      "maml [meta-train]"]
    # identical entries from two files still get distinct labels
    twin = save(tmp_path, "twin.json", json.loads(BASE_ENTRY.read_text()))
    md = write_report([BASE_ENTRY, twin], tmp_path / "out2").markdown.read_text()
    assert "| maml [maml-omniglot-5w1s.json] |" in md and "| maml [twin.json] |" in md


def test_dict_entries_are_accepted(base: dict, tmp_path: Path) -> None:
    s = write_report([copy.deepcopy(base)], tmp_path / "out")
    assert s.markdown.read_text().startswith("Report on 1 result entry: `entry 1` (maml, created 2026-11-22")


def test_errors_name_the_file(tmp_path: Path, base: dict) -> None:
    with pytest.raises(MrbenchError, match="No result entries"):
        write_report([], tmp_path / "out")
    broken = tmp_path / "broken.json"
    broken.write_text('{"kind": "mrbench-result", ')
    with pytest.raises(MrbenchError, match="broken.json") as exc:
        write_report([BASE_ENTRY, broken], tmp_path / "out")
    assert "cannot be read" in str(exc.value) and exc.value.hint
    with pytest.raises(MrbenchError, match="missing.json"):
        write_report([tmp_path / "missing.json"], tmp_path / "out")
    wrong = save(tmp_path, "wrong-kind.json", dict(copy.deepcopy(base), kind="mrbench-checkpoint"))
    with pytest.raises(MrbenchError, match=r"wrong-kind\.json is not an mrbench result entry.*mrbench-checkpoint"):
        write_report([wrong], tmp_path / "out")
    listing = save(tmp_path, "list.json", [base])
    with pytest.raises(MrbenchError, match="list.json is not an mrbench result entry"):
        write_report([listing], tmp_path / "out")
    bad = copy.deepcopy(base)
    bad["metrics"]["clean"] = {"ci95": 0.1}
    with pytest.raises(MrbenchError, match=r"bad\.json is malformed.*'clean'"):
        write_report([save(tmp_path, "bad.json", bad)], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the entries are checked


def test_names_that_are_no_scenario_are_listed_not_shown(tmp_path: Path, base: dict) -> None:
    odd = make(base, metrics={"weird": m(0.5), "pgd-linf@lots:query": m(0.4), "gaussian-noise@3": m(0.7)})
    md = write_report([save(tmp_path, "odd.json", odd)], tmp_path / "out").markdown.read_text()
    assert "scenarios this report does not know (not shown): `weird`, `pgd-linf@lots:query`." in md


def test_real_attack_entry(tmp_path: Path) -> None:
    s = write_report([ATTACK_ENTRY], tmp_path / "out")
    assert "attacks" in s.sections
    md = s.markdown.read_text()
    att = section(md, "Attacks")
    parts = {p.split("`")[0]: p for p in att.split("### Target `")[1:]}
    assert list(parts) == ["query", "support", "both"]
    for part in parts.values():
        assert "`pgd-linf`" in part and "`fgsm`" in part and "`ensemble`" in part
    entry = json.loads(ATTACK_ENTRY.read_text())
    assert f"{100 * entry['metrics']['pgd-linf@16/255:query']['accuracy']:.2f}" in att


def test_entries_on_different_episodes_are_flagged(tmp_path: Path, base: dict) -> None:
    same = write_report([make(base), make(base, steps=5)], tmp_path / "a").markdown.read_text()
    assert "not all evaluated on the same episodes" not in same
    sub = make(base, steps=5)
    sub["suite"] = {**sub["suite"], "manifest_sha256": "1" * 64, "n_episodes": 16}
    md = write_report([make(base), sub], tmp_path / "b").markdown.read_text()
    assert "not all evaluated on the same episodes" in md
    assert "| 16 |" in section(md, "Summary")


def test_a_full_suite_entry_is_preferred_over_a_subset(tmp_path: Path, base: dict) -> None:
    # A subset entry (e.g. a shift grid on the first 100 episodes) listed first must not be the
    # reference of the gap, the steps series or the transfer drop when the full suite is there.
    sub = make(base, clean=0.90)
    sub["suite"] = {**sub["suite"], "manifest_sha256": "1" * 64, "n_episodes": 100}
    sub_path = save(tmp_path, "sub.json", sub)
    train = save(tmp_path, "train.json", make(base, split="meta-train", clean=0.99))
    five = save(tmp_path, "five.json", make(base, steps=5, clean=0.97))
    moved = save(tmp_path, "moved.json", transfer_entry(base))
    md = write_report([sub_path, BASE_ENTRY, train, five, moved], tmp_path / "out").markdown.read_text()
    gap = next(x for x in section(md, "Meta-train vs meta-test gap").splitlines() if x.startswith("| maml"))
    assert gap.rstrip(" |").endswith("+2.79")  # 99.00 - 96.21 (600 episodes), not 99.00 - 90.00
    steps = [x for x in section(md, "Adaptation steps").splitlines() if x.startswith("| maml")]
    assert steps[0].split(" | ")[4] == "96.21 ± 0.39"
    drop = row(section(md, "Shift and transfer"), "maml [omniglot-20w1s@v1]")[4]
    assert drop.startswith("+6.21 ")
