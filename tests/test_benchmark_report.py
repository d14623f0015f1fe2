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
                  inner_steps=1, inner_lr=0.4, first_order=False, default_plan=True, peak_rss_mb=900.0),
            _case("train maml", "peer", "plain", 5.0, "step", 1, 2560, peak_rss_mb=1000.0),
            _case("train maml", "ceiling", "batch=all", 3.2, "step", 1, 2560, batch=2560),
            _case("train maml", "ceiling", "batch=80", 6.4, "step", 1, 2560, batch=80),
            _case("eval protonet", "peer", "plain", 2.0, "episode", 50, 4000),
            _case("eval protonet", "mrbench", "loop", 2.5, "episode", 50, 4000, episodes=50),
            {"group": None, "name": "test_other", "stats": {"median": 1.0}, "extra_info": {}},
        ],
    }


def test_rates_and_ratios_come_from_the_json(report) -> None:
    md = report.render(_data(), "cpu")
    # train maml: mrbench 1/4 step/s vs peer 1/5 -> 1.25x; 2560/4 = 640 img/s vs the best
    # ceiling's 2560/3.2 = 800 img/s -> 0.80.
    assert "| mrbench | loop (default plan) | 4 | 3.6 | 4.8 | 3 | 0.25 steps/s | 640 | 1.25x | 0.80 | 900 |" in md
    assert "| peer | plain | 5 | 4.5 | 6 | 3 | 0.2 steps/s | 512 | 1.00x | 0.64 | 1,000 |" in md
    assert "| ceiling | batch=80 | 6.4 | 5.76 | 7.68 | 3 | 0.156 steps/s | 400 | - | 0.50 | - |" in md
    # eval protonet: no ceiling in this group; 20 episodes/s vs the peer's 25.
    assert "| mrbench | loop | 2.5 | 2.25 | 3 | 3 | 20 episodes/s | 1,600 | 0.80x | - | - |" in md
    assert "| train maml | loop | 0.25 steps/s | plain | 0.2 steps/s | 1.25x | 0.80 |" in md
    # Groups keep their order; the row order within one is mrbench, peer, ceiling.
    assert md.index("## train maml") < md.index("## eval protonet")
    assert md.index("| mrbench | loop | 2.5") < md.index("| peer | plain | 2 ")
    assert "1 inner SGD step(s) of lr 0.4, second order" in md
    assert "Test CPU; 2 logical CPUs, 2 usable" in md
    assert "0123456789ab (dirty)" in md
    assert "test_other" not in md


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
        _pass({"train maml mrbench loop": 4.0, "train maml peer plain": 5.0, "train maml ceiling batch=all": 3.2,
               "train maml ceiling batch=80": 6.4}, "forward", 1.0),
        _pass({"train maml mrbench loop": 8.0, "train maml peer plain": 10.0, "train maml ceiling batch=all": 6.4,
               "train maml ceiling batch=80": 12.8}, "reverse", 2.0),
        _pass({"train maml mrbench loop": 4.0, "train maml peer plain": 4.0, "train maml ceiling batch=all": 3.2,
               "train maml ceiling batch=80": 6.4}, "forward", 3.0),
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
    # against the ceiling (batch=all): 3.2/4 in every pass
    assert group.paired(m, "ceiling") == pytest.approx((0.8, 0.8, 0.8))
    md = report.render(merged, "cpu")
    assert "in each of 3 passes (orders: forward, reverse, forward)" in md
    assert "| train maml | loop |" in md and "| 1.25x (1.00-1.25) | 0.80 (0.80-0.80) |" in md
    # An eval group without per-pass medians gets no paired figure.
    assert "| eval protonet | loop | 20 episodes/s | plain | 25 episodes/s | 0.80x | - | - | - |" in md


def test_a_case_missing_from_a_pass_is_not_paired(report) -> None:
    full = {"train maml mrbench loop": 4.0, "train maml peer plain": 5.0}
    second = _pass(full, "reverse", 2.0)
    second["benchmarks"] = [b for b in second["benchmarks"] if b["extra_info"].get("role") != "peer"]
    merged = report.merge_passes([_pass(full, "forward", 1.0), second])
    rows = {(r.role, r.variant): r for r in report.rows_of(merged) if r.group == "train maml"}
    assert rows[("peer", "plain")].pass_medians == (5.0,)
    group = next(g for g in report.groups_of(report.rows_of(merged)) if g.name == "train maml")
    assert group.paired(rows[("mrbench", "loop")], "peer") is None


def test_report_cli_merges_several_jsons(report, tmp_path: Path) -> None:
    paths = []
    for i, order in enumerate(("forward", "reverse")):
        p = tmp_path / f"pass-{i}.json"
        p.write_text(json.dumps(_pass({"train maml mrbench loop": 4.0, "train maml peer plain": 5.0}, order, 1.0 + i)))
        paths.append(str(p))
    assert report.main([*paths, "--name", "cpu", "--out", str(tmp_path / "out")]) == 0
    merged = json.loads((tmp_path / "out" / "cpu.json").read_text())
    assert merged["machine_info"]["mrbench"]["passes"] == 2
    assert "1.25x (1.25-1.25)" in (tmp_path / "out" / "cpu.md").read_text()
