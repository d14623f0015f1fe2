"""benchmarks/report.py renders a pytest-benchmark JSON into the Markdown report.

The benchmarks themselves are outside the default run (they take minutes); this
checks the report on a small hand-made JSON, so the rates and ratios it prints are
the ones the JSON implies.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("mrbench_benchmarks_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _case(group: str, role: str, variant: str, median: float, unit: str, units: int, images: int, **info) -> dict:
    kind, algo = group.split()
    return {
        "group": group, "name": f"test_throughput[{kind}-{algo}-{role}-{variant}]",
        "stats": {"median": median, "min": median * 0.9, "max": median * 1.2, "rounds": 3},
        "extra_info": {"kind": kind, "algorithm": algo, "role": role, "variant": variant, "unit": unit,
                       "units_per_call": units, "images_per_call": images, "shape": "5w1s15q", **info},
    }


def _data() -> dict:
    return {
        "version": "5.3.1",
        "datetime": "2026-01-01T00:00:00",
        "machine_info": {"system": "Linux", "cpu": {"brand_raw": "Test CPU"},
                         "mrbench": {"cpu_count": 2, "cpus_usable": 2, "torch_version": "2.x", "torch_threads": 2,
                                     "device": "cpu", "device_name": "x86_64", "rounds": 3, "warmup_rounds": 1,
                                     "quick": False, "load_average_start": [0.1, 0.2, 0.3],
                                     "load_average_end": [1.0, 1.0, 1.0]}},
        "commit_info": {"id": "0123456789abcdef", "dirty": True},
        "benchmarks": [
            _case("train maml", "mrbench", "loop", 4.0, "step", 1, 2560, meta_batch=32, adam_lr=0.001,
                  inner_steps=1, inner_lr=0.4, first_order=False, default_plan=True, peak_rss_mb=900.0, flops=8e9),
            _case("train maml", "peer", "higher", 5.0, "step", 1, 2560, peak_rss_mb=1000.0, flops=8e9,
                  library="higher", library_version="0.2.1"),
            _case("train maml", "reference", "plain", 4.4, "step", 1, 2560, flops=8e9),
            _case("train maml", "ceiling", "batch=all", 3.0, "step", 1, 2560, batch=2560, flops=6e9),
            _case("train maml", "ceiling", "batch=80", 2.5, "step", 1, 2560, batch=80, flops=6e9),
            # A group of a JSON from before FLOP counts (and before peer libraries): no GFLOP/s,
            # the ceiling compared by images/s.
            _case("eval protonet", "peer", "plain", 2.0, "episode", 50, 4000),
            _case("eval protonet", "mrbench", "loop", 2.5, "episode", 50, 4000, episodes=50),
            _case("eval protonet", "ceiling", "batch=80", 1.0, "episode", 50, 4000),
            {"group": None, "name": "test_other", "stats": {"median": 1.0}, "extra_info": {}},
        ],
    }


def test_rates_flops_and_ratios_come_from_the_json(report) -> None:
    md = report.render(_data(), "cpu")
    # train maml: mrbench 1/4 step/s vs the peer's 1/5 -> 1.25x, vs the reference's 1/4.4 -> 1.10x;
    # 8 GFLOP / 4 s = 2 GFLOP/s against the fastest ceiling's 6 / 2.5 = 2.4 -> 0.83; 2560/4 = 640 img/s.
    assert ("| mrbench | loop (default plan) | 4 | 3.6 | 4.8 | 3 | 0.25 steps/s | 640 | 8 | 2 | 1.25x | 1.10x | 0.83 "
            "| 900 |") in md
    assert "| peer | higher | 5 | 4.5 | 6 | 3 | 0.2 steps/s | 512 | 8 | 1.6 | 1.00x | 0.88x | 0.67 | 1,000 |" in md
    assert "| ceiling | batch=all | 3 | 2.7 | 3.6 | 3 | 0.333 steps/s | 853 | 6 | 2 | - | - | 0.83 | - |" in md
    assert "| ceiling | batch=80 | 2.5 | 2.25 | 3 | 3 | 0.4 steps/s | 1,024 | 6 | 2.4 | - | - | 1.00 | - |" in md
    assert ("| train maml | loop | 0.25 steps/s | 2 | higher | 0.2 steps/s | 1.25x | 1.10x | 0.83 | "
            "peer met (1.25x vs 1x); ceiling met (0.83 vs 0.8) |") in md
    assert "peer libraries: higher 0.2.1" in md
    # eval protonet, without FLOP counts: 20 episodes/s vs the peer's 25 (0.80x, below the
    # evaluation bar of 1.2x); the ceiling by images/s: 1600 / 4000 = 0.40.
    assert "| mrbench | loop | 2.5 | 2.25 | 3 | 3 | 20 episodes/s | 1,600 | - | - | 0.80x | - | 0.40 | - |" in md
    assert ("| eval protonet | loop | 20 episodes/s | - | plain | 25 episodes/s | 0.80x | - | 0.40 | "
            "peer missed (0.80x vs 1.2x); ceiling missed (0.40 vs 0.8) |") in md
    # Groups keep their order; the row order within one is mrbench, peer, reference, ceiling.
    assert md.index("## train maml") < md.index("## eval protonet")
    assert md.index("| mrbench | loop | 2.5") < md.index("| peer | plain | 2 ")
    assert md.index("| peer | higher") < md.index("| reference | plain") < md.index("| ceiling | batch=all")
    assert "1 inner SGD step(s) of lr 0.4, second order" in md
    assert "Test CPU; 2 logical CPUs, 2 usable" in md
    assert "0123456789ab (dirty)" in md
    assert "test_other" not in md


def test_the_ceiling_is_compared_by_gflops_only_when_every_row_has_a_count(report) -> None:
    groups = {g.name: g for g in report.groups_of(report.rows_of(_data()))}
    train, ev = groups["train maml"], groups["eval protonet"]
    assert train.by_flops and not ev.by_flops
    assert train.ceiling.variant == "batch=80" and train.ceiling.gflops_per_s == pytest.approx(2.4)
    m = next(r for r in train.rows if r.role == "mrbench")
    assert train.vs_ceiling(m) == pytest.approx(2.0 / 2.4)
    data = _data()
    del data["benchmarks"][4]["extra_info"]["flops"]  # one ceiling without a count: back to images/s
    train = next(g for g in report.groups_of(report.rows_of(data)) if g.name == "train maml")
    assert not train.by_flops and train.vs_ceiling(m) == pytest.approx(640 / 1024)


def test_write_report_copies_the_json(report, tmp_path: Path) -> None:
    src = tmp_path / "run.json"
    src.write_text(json.dumps(_data()))
    json_out, md_out = report.write_report(src, "cpu", tmp_path / "results")
    assert json.loads(json_out.read_text()) == _data()
    assert md_out.read_text().startswith("# mrbench throughput: cpu\n")


def test_an_empty_json_renders(report) -> None:
    assert "holds no case" in report.render({"benchmarks": []}, "empty")


def _pass(medians: dict[str, float], order: str, load_end: float) -> dict:
    """One pass of a --passes run: each case with two timed calls around its median."""
    data = _data()
    data["machine_info"]["mrbench"].update(order=order, load_average_end=[load_end] * 3, rounds=2)
    data["datetime"] = f"2026-01-01T00:0{int(load_end)}:00"
    for b in data["benchmarks"]:
        key = f"{b['group']} {b['extra_info'].get('role')} {b['extra_info'].get('variant')}"
        if key in medians:
            m = medians[key]
            b["fullname"] = f"bench::{b['name']}"
            b["stats"] = {"median": m, "min": m * 0.9, "max": m * 1.1, "rounds": 2, "data": [m * 0.9, m * 1.1]}
            b["extra_info"]["peak_rss_mb"] = 100.0 * load_end
    return data


def test_passes_merge_into_pooled_timings_and_paired_ratios(report, tmp_path: Path) -> None:
    # The machine slows down by 2x between passes 1 and 2 and recovers in pass 3; the
    # paired ratio (mrbench over peer within a pass) stays put, the pooled one need not.
    passes = [
        _pass({"train maml mrbench loop": 4.0, "train maml peer higher": 5.0, "train maml reference plain": 4.4,
               "train maml ceiling batch=all": 2.4, "train maml ceiling batch=80": 4.8}, "forward", 1.0),
        _pass({"train maml mrbench loop": 8.0, "train maml peer higher": 10.0, "train maml reference plain": 8.8,
               "train maml ceiling batch=all": 4.8, "train maml ceiling batch=80": 9.6}, "reverse", 2.0),
        _pass({"train maml mrbench loop": 4.0, "train maml peer higher": 4.0, "train maml reference plain": 4.4,
               "train maml ceiling batch=all": 2.4, "train maml ceiling batch=80": 4.8}, "forward", 3.0),
    ]
    merged = report.merge_passes(passes)
    rows = {(r.group, r.role, r.variant): r for r in report.rows_of(merged)}
    m = rows[("train maml", "mrbench", "loop")]
    assert m.pass_medians == (4.0, 8.0, 4.0)
    assert m.rounds == 6 and m.min == pytest.approx(3.6) and m.max == pytest.approx(8.8)
    assert m.median == pytest.approx(4.4)  # pooled: 3.6 3.6 4.4 4.4 7.2 8.8
    assert m.info["peak_rss_mb"] == 300.0  # the largest over the passes
    # Cases without timings (the eval group here) pass through untouched.
    assert rows[("eval protonet", "mrbench", "loop")].pass_medians == ()
    mi = merged["machine_info"]["mrbench"]
    assert mi["passes"] == 3 and mi["orders"] == ["forward", "reverse", "forward"]
    assert mi["load_average_start"] == [0.1, 0.2, 0.3] and mi["load_average_end"] == [3.0] * 3
    group = next(g for g in report.groups_of(report.rows_of(merged)) if g.name == "train maml")
    # per pass: 5/4, 10/8, 4/4 -> median 1.25, range 1.00-1.25
    assert group.paired(m, "peer") == pytest.approx((1.25, 1.0, 1.25))
    assert group.paired(m, "reference") == pytest.approx((1.1, 1.1, 1.1))
    # against the ceiling (batch=all, the fastest in GFLOP/s): (8 / 4) / (6 / 2.4) in every pass
    assert group.paired(m, "ceiling") == pytest.approx((0.8, 0.8, 0.8))
    md = report.render(merged, "cpu")
    assert "in each of 3 passes (orders: forward, reverse, forward)" in md
    assert ("| train maml | loop |" in md and "| 1.25x (1.00-1.25) | 1.10x (1.10-1.10) | 0.80 (0.80-0.80) | "
            "peer met (1.25x vs 1x); ceiling met (0.80 vs 0.8) |") in md
    # An eval group without per-pass medians gets no paired figure.
    assert ("| eval protonet | loop | 20 episodes/s | - | plain | 25 episodes/s | 0.80x | - | 0.40 | - | - | - | "
            "peer missed (0.80x vs 1.2x); ceiling missed (0.40 vs 0.8) |") in md


def test_a_case_missing_from_a_pass_is_not_paired(report) -> None:
    full = {"train maml mrbench loop": 4.0, "train maml peer higher": 5.0}
    second = _pass(full, "reverse", 2.0)
    second["benchmarks"] = [b for b in second["benchmarks"] if b["extra_info"].get("role") != "peer"]
    merged = report.merge_passes([_pass(full, "forward", 1.0), second])
    rows = {(r.role, r.variant): r for r in report.rows_of(merged) if r.group == "train maml"}
    assert rows[("peer", "higher")].pass_medians == (5.0,)
    group = next(g for g in report.groups_of(report.rows_of(merged)) if g.name == "train maml")
    assert group.paired(rows[("mrbench", "loop")], "peer") is None


def test_report_cli_merges_several_jsons(report, tmp_path: Path) -> None:
    paths = []
    for i, order in enumerate(("forward", "reverse")):
        p = tmp_path / f"pass-{i}.json"
        p.write_text(json.dumps(_pass({"train maml mrbench loop": 4.0, "train maml peer higher": 5.0}, order, 1.0 + i)))
        paths.append(str(p))
    assert report.main([*paths, "--name", "cpu", "--out", str(tmp_path / "out")]) == 0
    merged = json.loads((tmp_path / "out" / "cpu.json").read_text())
    assert merged["machine_info"]["mrbench"]["passes"] == 2
    assert "1.25x (1.25-1.25)" in (tmp_path / "out" / "cpu.md").read_text()
