"""The CLI's small promises: piped tables keep one line per row, every ``run`` / ``train``
option says what it does, ``leaderboard show`` has the robust columns, and an unknown
or retired suite points to ``mrbench suites``."""

from __future__ import annotations

import argparse

import pytest

from bench.cli import build_parser, main
from bench.errors import MrbenchError
from bench.suites import get_suite


def _lines_with(text: str, *needles: str) -> list[str]:
    return [line for line in text.splitlines() if all(n in line for n in needles)]


def test_piped_suites_and_attacks_keep_every_id_on_one_line(capsys):
    # Under capsys stdout is not a terminal, as in `mrbench suites | grep ...`.
    assert main(["suites"]) == 0
    out = capsys.readouterr().out
    for ref in ("omniglot-lake-runs@v1", "omniglot-lake-5w1s@v1", "glyphs-5w1s@v3"):
        assert len(_lines_with(out, ref)) == 1, out
    assert _lines_with(out, "omniglot-lake-5w1s@v1", "5-way 1-shot, 15 q/class, x600", "split=lake")
    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    assert _lines_with(out, "square-l2", "l2 gradient-free", "n_queries=5000", "mrbench-attacks")
    assert _lines_with(out, "autoattack", "apgd_steps=100", "square_queries=5000")


def test_leaderboard_show_has_the_robust_columns_on_one_line_per_entry(capsys):
    assert main(["leaderboard", "show", "omniglot-5w1s"]) == 0
    out = capsys.readouterr().out
    header = _lines_with(out, "clean %", "pgd-linf@16/255:query", "mi-fgsm@16/255:query")
    assert len(header) == 1, out
    # ProtoNet's natural checkpoint: PGD-20 on the queries, and an external evaluation
    # (the example distribution's MI-FGSM) on the 200-episode subset.
    row = _lines_with(out, "protonet-omniglot-5w1s-4b8b697f.json", "19.96 ± 1.02")
    assert len(row) == 1 and "31.10 ± 2.17 (200 ep.)" in row[0], out


@pytest.mark.parametrize("command", ["run", "train"])
def test_every_run_and_train_option_has_help(command):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [a.option_strings or [a.dest] for a in sub.choices[command]._actions if not a.help]
    assert missing == []


def test_an_unknown_suite_points_to_mrbench_suites(monkeypatch, tmp_path):
    (tmp_path / "retiring" / "v2").mkdir(parents=True)
    (tmp_path / "retiring" / "v2" / "suite.toml").write_text(
        'id = "retiring"\nversion = 2\n[episodes]\nn_way = 2\nk_shot = 1\nn_query = 1\nn_episodes = 2\nseed = 0\n'
        '[train]\ndataset = "procedural-glyphs"\nsplit = "meta-train"\n'
        '[test]\ndataset = "procedural-glyphs"\nsplit = "meta-test"\n')
    monkeypatch.setenv("MRBENCH_SUITES", str(tmp_path))
    with pytest.raises(MrbenchError) as info:
        get_suite("retiring@v1")
    assert str(info.value).startswith("Suite retiring@v1 was retired; the versions of retiring available are "
                                      "retiring@v2")
    assert "`mrbench suites`" in str(info.value) and "mrbench plugins" not in str(info.value)
    with pytest.raises(MrbenchError, match=r"Suite retiring has no version 'v3'; its versions: retiring@v2\."):
        get_suite("retiring@v3")
    with pytest.raises(MrbenchError, match=r"Unknown suite 'retirin'\. Did you mean 'retiring'\?.*Run `mrbench suites`"):
        get_suite("retirin")
