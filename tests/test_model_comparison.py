"""``mrbench results --versus``: two models of one suite compared scenario by scenario,
episode by episode, on the committed support-query shift entries (real per-episode files)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.results.frame import model_comparison
from bench.results.stats import paired_t_test

ROOT = Path(__file__).resolve().parents[1] / "leaderboards"
ADV = ROOT / "omniglot-5w1s/v1/entries/protonet-d16937ba1c3a-support-query-shift.json"
NAT = ROOT / "omniglot-5w1s/v1/entries/protonet-4b8b697f106d-support-query-shift.json"
OTHER_SUITE = next((ROOT / "omniglot-lake-5w1s/v1/entries").glob("*.json"))


def _accuracy(entry: Path) -> pd.DataFrame:
    per = pd.read_csv(entry.with_name(entry.name.replace(".json", ".episodes.csv")))
    return per.assign(acc=per.correct / per.total).pivot(index="episode", columns="scenario", values="acc")


@pytest.mark.parametrize("n", [None, 50])
def test_versus_matches_an_independent_paired_t_test(n):
    rows = model_comparison(ADV, NAT, n)
    a, b = _accuracy(ADV), _accuracy(NAT)
    if n is not None:
        a, b = a.loc[: n - 1], b.loc[: n - 1]
    assert [r["scenario"] for r in rows] == ["clean", "support-query-shift@1", "support-query-shift@3"]
    for r in rows:
        d = a[r["scenario"]] - b[r["scenario"]]
        assert r["n_episodes"] == len(d) == (n or 600)
        assert (r["lower"], r["equal"], r["higher"]) == ((d < 0).sum(), (d == 0).sum(), (d > 0).sum())
        assert r["mean_difference"] == pytest.approx(d.mean())
        assert r["ci95"] == pytest.approx(1.96 * d.std(ddof=1) / math.sqrt(len(d)))
        # the suite's paired t-test (checked against scipy's reference values in test_leaderboard.py)
        assert r["p"] == paired_t_test(list(a[r["scenario"]]), list(b[r["scenario"]])).p
    # the adversarially trained ProtoNet keeps far more under the support-query shift, at no clean cost
    by = {r["scenario"]: r for r in rows}
    assert by["support-query-shift@1"]["mean_difference"] > 0.1 and by["support-query-shift@1"]["p"] < 1e-6
    assert by["clean"]["p"] > 0.05


def test_versus_cli_and_its_errors(capsys):
    assert main(["results", str(ADV), str(NAT), "--versus", f"{ADV},{NAT}"]) == 0
    out = capsys.readouterr().out
    assert "- `support-query-shift@3`: protonet (adv." in out and "paired t-test p = " in out
    assert main(["results", str(ADV), "--versus", str(ADV)]) == 2
    assert "two result entries separated by a comma" in capsys.readouterr().err
    assert main(["results", str(ADV), "--versus", f"{ADV},{OTHER_SUITE}"]) == 2
    assert "on different suites" in capsys.readouterr().err
    assert main(["results", str(ADV), "--versus", f"no-such-entry.json,{NAT}"]) == 2
    assert "Result entry no-such-entry.json does not exist" in capsys.readouterr().err
    assert main(["results", "no-such-entry.json"]) == 2
    assert "Result entry no-such-entry.json does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "parts"), [
    ("pgd-margin[restarts=5,steps=100]@16/255:query,pgd-linf@16/255:query",
     ("pgd-margin[restarts=5,steps=100]@16/255:query", ",", "pgd-linf@16/255:query")),
    ("a.json,b.json", ("a.json", ",", "b.json")),
    ("fgsm@16/255:query", ("fgsm@16/255:query", "", "")),
])
def test_paired_splits_at_the_comma_outside_attack_options(text, parts):
    from bench.cli import _split_pair

    assert _split_pair(text) == parts


def test_paired_keeps_models_of_one_weights_family_apart():
    # easyfsl-tim and easyfsl-simple-shot share the classical checkpoint's weights: two models, two rows,
    # each from its own per-episode file.
    from bench.results.frame import paired_comparison

    entries = ROOT / "omniglot-5w1s/v1/entries"
    tim, shot = entries / "easyfsl-tim-omniglot-5w1s.json", entries / "easyfsl-simple-shot-omniglot-5w1s.json"
    rows = paired_comparison([tim, shot], "pgd-linf@16/255:query", "clean")
    assert sorted(r["algorithm"] for r in rows) == ["easyfsl-simple-shot", "easyfsl-tim"]
    for r, path in ((next(r for r in rows if r["algorithm"] == "easyfsl-tim"), tim),
                    (next(r for r in rows if r["algorithm"] == "easyfsl-simple-shot"), shot)):
        acc = _accuracy(path)
        assert r["mean_difference"] == pytest.approx((acc["pgd-linf@16/255:query"] - acc["clean"]).mean())
