"""Shift scenarios in evaluation: the corruption summary, per-alphabet breakdown,
way/shot/domain/class-split transfer, meta-train episodes and the suite's shift grid."""

from __future__ import annotations

import json

import pytest

from bench.errors import MrbenchError
from bench.evaluation import evaluate
from bench.protocol.scenarios import ShiftCell, shift_grid
from bench.results.schema import validate_entry
from bench.suites import get_suite
from bench.training import train


@pytest.fixture
def protonet_ckpt(tmp_path, tiny_suite):
    train("protonet", tiny_suite, tmp_path / "p.pt", steps=3, meta_batch=2, device="cpu")
    return tmp_path / "p.pt"


SHIFTS = [("gaussian-noise", 1), ("gaussian-noise", 5), ("rotation", 3), ("label-noise", 2)]


def test_corruption_summary_is_the_mean_over_corruption_scenarios_only(tmp_path, tiny_suite, protonet_ckpt):
    e = evaluate("protonet", tiny_suite, protonet_ckpt, out=tmp_path / "r.json", device="cpu", shifts=SHIFTS)
    validate_entry(json.loads((tmp_path / "r.json").read_text()), "r.json")
    s = e["summary"]["corruptions"]
    m = e["metrics"]
    corr = ["gaussian-noise@1", "gaussian-noise@5", "rotation@3"]  # label noise is a support shift, not a corruption
    assert s["n_scenarios"] == 3 and s["n_episodes"] == 12
    assert s["accuracy"] == pytest.approx(sum(m[c]["accuracy"] for c in corr) / 3)
    assert s["clean"] == pytest.approx(m["clean"]["accuracy"])
    assert s["relative_degradation"] == pytest.approx((s["clean"] - s["accuracy"]) / s["clean"])
    assert set(s["by_severity"]) == {"1", "3", "5"}
    assert s["by_severity"]["5"]["accuracy"] == pytest.approx(m["gaussian-noise@5"]["accuracy"])
    assert s["by_shift"]["gaussian-noise"]["accuracy"] == pytest.approx(
        (m["gaussian-noise@1"]["accuracy"] + m["gaussian-noise@5"]["accuracy"]) / 2)
    assert list(s["by_shift"]) == ["gaussian-noise", "rotation"]
    assert 0 < s["ci95"] < 1
    t = e["timing_s"]
    assert set(t) == {"episodes", "shifts", "predict", "attacks"} and t["shifts"] > 0 and t["predict"] > 0
    assert t["attacks"] < t["predict"] and sum(t.values()) <= e["wall_time_s"]


def test_no_corruption_no_summary(tmp_path, tiny_suite, protonet_ckpt):
    e = evaluate("protonet", tiny_suite, protonet_ckpt, device="cpu", shifts=[("label-noise", 4)])
    assert "summary" not in e


def test_breakdown_by_alphabet_adds_up_to_clean_and_survives_resume(tmp_path, tiny_suite, protonet_ckpt, monkeypatch):
    ref = evaluate("protonet", tiny_suite, protonet_ckpt, out=tmp_path / "ref.json", device="cpu")
    b = ref["breakdown"]
    assert b["by"] == "alphabet" and b["scenario"] == "clean"
    assert all(g.startswith("alphabet") for g in b["groups"])
    n = sum(g["n_queries"] for g in b["groups"].values())
    assert n == ref["metrics"]["clean"]["n_queries"] == 12 * 3 * 4
    # every episode has the same number of queries, so the query-weighted mean is the clean accuracy
    assert sum(g["accuracy"] * g["n_queries"] for g in b["groups"].values()) / n == pytest.approx(
        ref["metrics"]["clean"]["accuracy"])

    import bench.evaluation as ev

    real, calls = ev.predict_episodes, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ev, "predict_episodes", flaky)
    with pytest.raises(MrbenchError, match="interrupted"):
        evaluate("protonet", tiny_suite, protonet_ckpt, out=tmp_path / "r.json", device="cpu", chunk_episodes=5)
    monkeypatch.setattr(ev, "predict_episodes", real)
    resumed = evaluate("protonet", tiny_suite, protonet_ckpt, out=tmp_path / "r.json", device="cpu", chunk_episodes=5)
    assert resumed["breakdown"] == b and resumed["metrics"] == ref["metrics"]


def _write_suite(root, sid, n_way, k_shot, train_opts=None, test_dataset="procedural-glyphs", test_opts=None):
    opts = '{ n_alphabets = 10, classes_per_alphabet = 12, samples_per_class = 10 }'
    (root / sid / "v1").mkdir(parents=True)
    (root / sid / "v1" / "suite.toml").write_text(f"""
id = "{sid}"
version = 1
[episodes]
n_way = {n_way}
k_shot = {k_shot}
n_query = 2
n_episodes = 6
seed = 1
[train]
dataset = "procedural-glyphs"
split = "meta-train"
options = {train_opts or opts}
[test]
dataset = "{test_dataset}"
split = "meta-test"
options = {test_opts or opts}
[shifts]
corruptions = ["contrast", "pixelate"]
severities = [2, 4]
extra = ["label-noise@2"]
""")


def test_way_and_shot_shift_are_recorded_as_transfer(tmp_path, tiny_suite, protonet_ckpt, monkeypatch):
    import os

    root = tmp_path / "more"
    _write_suite(root, "glyphs-6w2s", 6, 2)
    monkeypatch.setenv("MRBENCH_SUITES", os.environ["MRBENCH_SUITES"] + os.pathsep + str(root))
    e = evaluate("protonet", "glyphs-6w2s", protonet_ckpt, out=tmp_path / "w.json", device="cpu")
    assert e["transfer"]["kinds"] == ["way", "shot"]
    assert e["transfer"]["trained_on"] == "tiny-glyphs@v1"
    assert e["transfer"]["train_spec"]["n_way"] == 60  # protonet trains with 60 ways (Snell et al.)
    validate_entry(json.loads((tmp_path / "w.json").read_text()), "w.json")
    native = evaluate("protonet", tiny_suite, protonet_ckpt, device="cpu")
    assert "transfer" not in native


def test_other_class_split_is_a_classes_transfer(tmp_path, tiny_suite, protonet_ckpt, monkeypatch):
    import os

    root = tmp_path / "more"
    other = '{ n_alphabets = 12, classes_per_alphabet = 12, samples_per_class = 10 }'
    _write_suite(root, "glyphs-other", 3, 1, train_opts=other, test_opts=other)
    monkeypatch.setenv("MRBENCH_SUITES", os.environ["MRBENCH_SUITES"] + os.pathsep + str(root))
    e = evaluate("protonet", "glyphs-other", protonet_ckpt, device="cpu")
    assert e["transfer"]["kinds"] == ["classes"]


def test_meta_train_episodes_measure_the_gap(tmp_path, tiny_suite, protonet_ckpt):
    test = evaluate("protonet", tiny_suite, protonet_ckpt, device="cpu")
    tr = evaluate("protonet", tiny_suite, protonet_ckpt, out=tmp_path / "t.json", device="cpu", on="train")
    assert tr["dataset"]["split"] == "meta-train" and test["dataset"]["split"] == "meta-test"
    assert tr["transfer"]["kinds"] == ["split"]
    assert tr["suite"]["manifest_sha256"] != test["suite"]["manifest_sha256"]
    assert tr["suite"]["n_episodes"] == 12
    validate_entry(json.loads((tmp_path / "t.json").read_text()), "t.json")


def test_a_fixed_head_cannot_be_evaluated_at_another_way(tmp_path, tiny_suite, monkeypatch):
    import os

    train("maml", tiny_suite, tmp_path / "m.pt", steps=1, meta_batch=1, device="cpu")
    root = tmp_path / "more"
    _write_suite(root, "glyphs-6w1s", 6, 1)
    monkeypatch.setenv("MRBENCH_SUITES", os.environ["MRBENCH_SUITES"] + os.pathsep + str(root))
    with pytest.raises(MrbenchError, match=r"maml was trained for 3-way episodes \(tiny-glyphs@v1\); glyphs-6w1s@v1 is 6-way, and it fails on them: IndexError"):
        evaluate("maml", "glyphs-6w1s", tmp_path / "m.pt", device="cpu")


def test_suite_shift_grid_and_cli(tmp_path, tiny_suite, protonet_ckpt, monkeypatch):
    import os

    from bench.cli import main

    root = tmp_path / "more"
    _write_suite(root, "glyphs-grid", 3, 1)
    monkeypatch.setenv("MRBENCH_SUITES", os.environ["MRBENCH_SUITES"] + os.pathsep + str(root))
    assert shift_grid(get_suite("glyphs-grid")) == [ShiftCell("contrast", 2), ShiftCell("contrast", 4),
                                                    ShiftCell("pixelate", 2), ShiftCell("pixelate", 4),
                                                    ShiftCell("label-noise", 2)]
    with pytest.raises(MrbenchError, match="declares no shift grid"):
        shift_grid(get_suite(tiny_suite))
    rc = main(["evaluate", "protonet", "--suite", "glyphs-grid", "--checkpoint", str(protonet_ckpt),
               "--out", str(tmp_path / "g.json"), "--shift", "suite", "--shift", "contrast:2", "--quiet",
               "--device", "cpu"])
    assert rc == 0
    e = json.loads((tmp_path / "g.json").read_text())
    assert list(e["metrics"]) == ["clean", "contrast@2", "contrast@4", "pixelate@2", "pixelate@4", "label-noise@2"]
    assert e["summary"]["corruptions"]["n_scenarios"] == 4


def test_suite_shift_grid_with_an_unknown_shift_lists_the_known(tmp_path, tiny_suite, protonet_ckpt, monkeypatch,
                                                               capsys):
    import os

    from bench.cli import main

    root = tmp_path / "more"
    _write_suite(root, "glyphs-bad", 3, 1)
    toml = root / "glyphs-bad" / "v1" / "suite.toml"
    toml.write_text(toml.read_text().replace('"pixelate"', '"pixelation"'))
    monkeypatch.setenv("MRBENCH_SUITES", os.environ["MRBENCH_SUITES"] + os.pathsep + str(root))
    rc = main(["evaluate", "protonet", "--suite", "glyphs-bad", "--checkpoint", str(protonet_ckpt),
               "--out", str(tmp_path / "g.json"), "--shift", "suite", "--quiet", "--device", "cpu"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "Unknown shift 'pixelation'. Did you mean 'pixelate'?" in err and "gaussian-noise" in err
