"""Attack scenarios in the harness: evaluate with attacks, resume, ensembles, sanity, adversarial training, CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import bench.evaluation as evaluate_mod
from bench.protocol.scenarios import AttackCell
from bench.checkpoint import load_final
from bench.cli import main
from bench.errors import MrbenchError
from bench.evaluation import evaluate
from bench.plugins import get_registry
from bench.results.schema import ResultEntry
from bench.training import Adversary, train

EPS = 16 / 255
CELLS = [AttackCell("fgsm", EPS, "query"), AttackCell("pgd-linf", EPS, "query", (("steps", 3),)),
         AttackCell("pgd-linf", EPS, "support", (("steps", 3),)), AttackCell("pgd-linf", 8 / 255, "query", (("steps", 3),))]


@pytest.fixture
def ckpt(tmp_path, tiny_suite):
    train("protonet", tiny_suite, tmp_path / "p.pt", steps=6, meta_batch=2, device="cpu")
    return tmp_path / "p.pt"


def test_attack_scenarios_ensemble_and_sanity_go_into_a_valid_entry(tmp_path, tiny_suite, ckpt):
    e = evaluate(None, tiny_suite, ckpt, out=tmp_path / "r.json", device="cpu", attacks=CELLS, n_episodes=4,
                 sanity_episodes=2)
    ResultEntry.model_validate(e)
    m = e["metrics"]
    names = {"clean", "fgsm@16/255:query", "pgd-linf[steps=3]@16/255:query", "pgd-linf[steps=3]@16/255:support",
             "pgd-linf[steps=3]@8/255:query", "ensemble@16/255:query"}
    assert set(m) == names
    # A query is robust under the ensemble only if every attack fails on it.
    assert m["ensemble@16/255:query"]["accuracy"] <= min(m["fgsm@16/255:query"]["accuracy"],
                                                         m["pgd-linf[steps=3]@16/255:query"]["accuracy"]) + 1e-12
    assert m["pgd-linf[steps=3]@16/255:query"]["accuracy"] < m["clean"]["accuracy"]
    assert set(e["sanity"]) >= {"query", "support"}
    assert {"steps-monotone", "pgd-vs-fgsm", "large-eps", "gradient-free"} <= set(e["sanity"]["query"]["checks"])
    assert e["unreliable"] == bool(e.get("footnote"))
    # Per-episode file holds every scenario.
    rows = (tmp_path / "r.episodes.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * len(names)
    again = evaluate(None, tiny_suite, ckpt, out=tmp_path / "r2.json", device="cpu", attacks=CELLS, n_episodes=4,
                     sanity=False)
    assert again["metrics"] == m, "attacks are seeded: the same command gives the same numbers"


def test_interrupted_attack_evaluation_resumes(tmp_path, tiny_suite, ckpt, monkeypatch):
    cells = CELLS[1:2]
    ref = evaluate(None, tiny_suite, ckpt, out=tmp_path / "ref.json", device="cpu", attacks=cells, n_episodes=8,
                   chunk_episodes=4, sanity=False)
    real = evaluate_mod.run_attack
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 6:  # each episode has its own attack call: the second chunk's second episode
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(evaluate_mod, "run_attack", flaky)
    with pytest.raises(MrbenchError, match="4/8 episodes saved"):
        evaluate(None, tiny_suite, ckpt, out=tmp_path / "r.json", device="cpu", attacks=cells, n_episodes=8,
                 chunk_episodes=4, sanity=False)
    calls.clear()
    e = evaluate(None, tiny_suite, ckpt, out=tmp_path / "r.json", device="cpu", attacks=cells, n_episodes=8,
                 chunk_episodes=4, sanity=False)
    assert len(calls) == 4, "only the unfinished chunk (4 episodes) is attacked again"
    assert e["metrics"] == ref["metrics"]


def test_sharded_attack_evaluation_equals_the_unsharded_one(tmp_path, tiny_suite, ckpt):
    # Chunks lie on a fixed grid and carry their attack seeds, so shards attack exactly what
    # one process does; the shard that finishes last writes the entry.
    cells = CELLS[1:3]
    kw = dict(device="cpu", attacks=cells, n_episodes=10, chunk_episodes=4, sanity=False)
    ref = evaluate(None, tiny_suite, ckpt, out=tmp_path / "ref.json", **kw)
    out = tmp_path / "r.json"
    assert evaluate(None, tiny_suite, ckpt, out=out, shard=(1, 2), **kw) is None  # chunk 1 (episodes 4-7)
    assert not out.exists()
    saved = [json.loads(line) for line in (tmp_path / "r.episodes.partial.jsonl").read_text().splitlines()[1:]]
    assert {r["episode"] for r in saved} == {4, 5, 6, 7}
    e = evaluate(None, tiny_suite, ckpt, out=out, shard=(0, 2), **kw)  # chunks 0 and 2, then everything is done
    assert e is not None and out.exists() and not (tmp_path / "r.episodes.partial.jsonl").exists()
    assert e["metrics"] == ref["metrics"]
    assert (tmp_path / "r.episodes.csv").read_text() == (tmp_path / "ref.episodes.csv").read_text()


def test_a_resumed_run_keeps_the_chunk_grid(tmp_path, tiny_suite, ckpt):
    # Episodes 4-7 done by a shard; the unsharded rerun attacks chunks 0 and 2 with their own seeds.
    cells = CELLS[1:2]
    kw = dict(device="cpu", attacks=cells, n_episodes=10, chunk_episodes=4, sanity=False)
    ref = evaluate(None, tiny_suite, ckpt, out=tmp_path / "ref.json", **kw)
    evaluate(None, tiny_suite, ckpt, out=tmp_path / "r.json", shard=(1, 3), **kw)
    assert evaluate(None, tiny_suite, ckpt, out=tmp_path / "r.json", **kw)["metrics"] == ref["metrics"]


def test_bad_shards_are_refused(tmp_path, tiny_suite, ckpt):
    from bench.run.resume import parse_shard

    assert parse_shard("1/4") == (1, 4)
    for bad in ("2/2", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(MrbenchError, match="K/N"):
            parse_shard(bad)
    with pytest.raises(MrbenchError, match="needs --out"):
        evaluate(None, tiny_suite, ckpt, device="cpu", shard=(0, 2))


def test_attack_errors_name_the_problem(tmp_path, tiny_suite, ckpt):
    with pytest.raises(MrbenchError, match="at least 4 ways"):
        evaluate(None, tiny_suite, ckpt, device="cpu", attacks=[AttackCell("apgd-t", EPS, "query")])
    with pytest.raises(MrbenchError, match="cannot attack the support"):
        evaluate(None, tiny_suite, ckpt, device="cpu", attacks=[AttackCell("square", EPS, "support")])
    with pytest.raises(MrbenchError, match="pgd-linf"):
        evaluate(None, tiny_suite, ckpt, device="cpu", attacks=[AttackCell("pgd-lnf", EPS, "query")])


@pytest.mark.parametrize("target", ["query", "support"])
def test_adversarial_meta_training_is_recorded_and_changes_the_weights(tmp_path, tiny_suite, target):
    reg = get_registry()
    natural = train("protonet", tiny_suite, tmp_path / "n.pt", steps=3, meta_batch=2, device="cpu")
    adv = Adversary(reg.create("attack", "pgd-linf", {"steps": 2}), EPS, target)
    res = train("protonet", tiny_suite, tmp_path / "a.pt", steps=3, meta_batch=2, device="cpu", adversary=adv)
    assert res.meta["adversarial"]["attack"] == "pgd-linf" and res.meta["adversarial"]["target"] == target
    assert res.meta["adversarial"]["eps_name"] == "16/255"
    assert res.meta["config_key"] != natural.meta["config_key"]
    p_nat, _, _ = load_final(tmp_path / "n.pt")
    p_adv, _, _ = load_final(tmp_path / "a.pt")
    assert any(not torch.equal(p_nat[k], p_adv[k]) for k in p_nat)
    e = evaluate(None, tiny_suite, tmp_path / "a.pt", device="cpu", n_episodes=2)
    assert e["training"]["adversarial"]["target"] == target


def test_cli_attacks_listing_and_evaluate_flags(tmp_path, tiny_suite, ckpt, capsys):
    assert main(["attacks", "--json"]) == 0
    listed = {a["id"]: a for a in json.loads(capsys.readouterr().out)}
    assert {"fgsm", "pgd-linf", "pgd-l2", "cw-l2", "apgd-ce", "apgd-dlr", "apgd-t", "square", "autoattack"} <= set(listed)
    assert listed["apgd-t"]["min_way"] == 4 and listed["square"]["gradient_free"]
    assert set(listed["pgd-linf"]["targets"]) == {"query", "support", "both"}
    out = tmp_path / "r.json"
    assert main(["evaluate", "protonet", "--suite", tiny_suite, "--checkpoint", str(ckpt), "--out", str(out),
                 "--episodes", "2", "--attacks", "fgsm,pgd-linf[steps=2]", "--eps", "8/255,16/255",
                 "--target", "query,both", "--no-sanity", "--quiet", "--device", "cpu"]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert "pgd-linf[steps=2]@8/255:both" in m and "fgsm@16/255:query" in m and "ensemble@16/255:both" in m
    capsys.readouterr()
    assert main(["results", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| `pgd-linf[steps=2]@8/255:both` |" in table and "(n=2)" in table
    # --episodes: the first episode only, recomputed from the per-episode file
    per = pd.read_csv(tmp_path / "r.episodes.csv")
    first = per[(per.episode == 0) & (per.scenario == "fgsm@16/255:query")].iloc[0]
    assert main(["results", str(out), "--episodes", "1"]) == 0
    table = capsys.readouterr().out
    assert f"| `fgsm@16/255:query` | {100 * first.correct / first.total:.2f} +- nan (n=1) |" in table
    assert "restricted to the suite's first 1 episodes" in table
    assert main(["results", str(out), "--episodes", "3"]) == 2
    assert "fewer than the 3 asked for" in capsys.readouterr().err
    # --paired: pgd against fgsm episode by episode, counted from the per-episode file
    acc = {sc: (g.sort_values("episode").correct / g.sort_values("episode").total).to_numpy()
           for sc, g in per.groupby("scenario")}
    d = acc["pgd-linf[steps=2]@16/255:query"] - acc["fgsm@16/255:query"]
    assert main(["results", str(out), "--paired", "pgd-linf[steps=2]@16/255:query,fgsm@16/255:query"]) == 0
    table = capsys.readouterr().out
    assert (f"`pgd-linf[steps=2]@16/255:query` vs `fgsm@16/255:query` on the same 2 episodes: lower on {(d < 0).sum()}, "
            f"equal on {(d == 0).sum()}, higher on {(d > 0).sum()}; mean difference {100 * d.mean():+.2f} points") in table
    assert main(["results", str(out), "--paired", "fgsm@16/255:query"]) == 2
    assert "two scenario names separated by a comma" in capsys.readouterr().err
    assert main(["results", str(out), "--paired", "fgsm@16/255:query,autoattack@16/255:query"]) == 2
    assert "Scenarios in these entries: clean, " in capsys.readouterr().err
    (tmp_path / "r.episodes.csv").unlink()
    assert main(["results", str(out), "--episodes", "1"]) == 2
    assert "no per-episode file r.episodes.csv" in capsys.readouterr().err
    assert main(["evaluate", "protonet", "--suite", tiny_suite, "--checkpoint", str(ckpt), "--out", str(out),
                 "--attacks", "pgd-linf", "--eps", "lots", "--quiet"]) == 2
    assert "Cannot read eps 'lots'" in capsys.readouterr().err
    # --shard: the tiny suite's 12 episodes are one chunk of 25, so shard 1/2 has nothing to do.
    sharded = tmp_path / "s.json"
    args = ["evaluate", "protonet", "--suite", tiny_suite, "--checkpoint", str(ckpt), "--out", str(sharded),
            "--quiet", "--device", "cpu"]
    assert main(args + ["--shard", "1/2"]) == 0
    assert "shard 1/2 done" in capsys.readouterr().out and not sharded.exists()
    assert main(args + ["--shard", "0/2"]) == 0
    assert sharded.exists() and json.loads(sharded.read_text())["metrics"]["clean"]["n_episodes"] == 12
    assert main(args + ["--shard", "2/2"]) == 2
    assert "Bad shard '2/2'" in capsys.readouterr().err


def test_adversarial_fine_tuning_starts_from_a_checkpoint(tmp_path, tiny_suite):
    reg = get_registry()
    natural = train("protonet", tiny_suite, tmp_path / "n.pt", steps=2, meta_batch=2, device="cpu")
    adv = Adversary(reg.create("attack", "fgsm"), EPS, "query")
    res = train("protonet", tiny_suite, tmp_path / "ft.pt", steps=1, meta_batch=2, device="cpu", adversary=adv,
                init_from=tmp_path / "n.pt")
    assert res.meta["init_from"]["sha256"] == natural.sha256
    assert res.meta["adversarial"]["init_from"]["sha256"] == natural.sha256
    with pytest.raises(MrbenchError, match="holds a 'protonet' checkpoint"):
        train("maml", tiny_suite, tmp_path / "m.pt", steps=1, meta_batch=1, device="cpu", init_from=tmp_path / "n.pt")


def test_combine_ensemble_is_per_query_for_evasion_and_per_episode_for_poisoning():
    from bench.attacks import combine_ensemble

    # Two members on one 4-query episode, each leaving a different half of the queries correct.
    a = torch.tensor([[True, True, False, False]])
    b = torch.tensor([[False, False, True, True]])
    assert combine_ensemble("query", [a, b]).sum().item() == 0  # a query may pick its own attack
    for target in ("support", "both"):
        # One poisoned support set per episode: the worst single member, not the per-query union (0 correct).
        assert combine_ensemble(target, [a, b]).tolist() == a.tolist()
        worse = torch.tensor([[False, False, False, True]])
        assert combine_ensemble(target, [a, worse, b]).tolist() == worse.tolist()


@pytest.mark.parametrize("target", ["support", "both"])
def test_poisoning_ensemble_rows_take_the_worst_member_per_episode(tmp_path, tiny_suite, ckpt, monkeypatch, target):
    # Members whose per-query union differs from the per-episode worst: the union of
    # fgsm's and pgd's successes would leave no query correct, but an attacker can only
    # pick one poisoned support set per episode.
    def fake(atk, victim, episodes, eps, target, generator):
        E, Q = episodes.y_query.shape
        ok = torch.zeros(E, Q, dtype=torch.bool)
        half = Q // 2
        if atk.id == "fgsm":
            ok[:, :half] = True  # half of the queries correct
        else:
            ok[:, half:] = True  # the other half, plus one more on even episodes
            ok[:, 0] = bool(generator.initial_seed() % 2)
        return ok

    monkeypatch.setattr(evaluate_mod, "run_attack", fake)
    cells = [AttackCell("fgsm", EPS, target), AttackCell("pgd-linf", EPS, target, (("steps", 2),))]
    e = evaluate(None, tiny_suite, ckpt, out=tmp_path / "r.json", device="cpu", attacks=cells, n_episodes=6,
                 sanity=False)
    per = pd.read_csv(tmp_path / "r.episodes.csv").pivot(index="episode", columns="scenario", values="correct")
    members = per[[c.name for c in cells]]
    ens = per[f"ensemble@16/255:{target}"]
    assert (ens == members.min(axis=1)).all(), "each episode counts its worst single member"
    assert (ens > 0).all(), "not the per-query union, which leaves nothing correct"
    assert e["metrics"][f"ensemble@16/255:{target}"]["accuracy"] > 0


def test_cli_runs_the_poisoning_ensemble_sharded_on_the_support_and_both(tmp_path, tiny_suite, ckpt):
    # `--attacks apgd-ensemble` on the default targets: the query target (which it does not
    # attack) is skipped; per-episode seeds make two shards equal one process.
    out = tmp_path / "p.json"
    args = ["evaluate", "protonet", "--suite", tiny_suite, "--checkpoint", str(ckpt), "--episodes", "4",
            "--attacks", "apgd-ensemble[n_target_classes=1,steps=3]", "--eps", "16/255", "--target",
            "query,support,both", "--no-sanity", "--quiet", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "ref.json")]) == 0
    ref = json.loads((tmp_path / "ref.json").read_text())["metrics"]
    assert set(ref) == {"clean", "apgd-ensemble[n_target_classes=1][steps=3]@16/255:support",
                        "apgd-ensemble[n_target_classes=1][steps=3]@16/255:both"}
    evaluate_args = dict(device="cpu", n_episodes=4, chunk_episodes=2, sanity=False,
                         attacks=[AttackCell("apgd-ensemble", EPS, t, (("n_target_classes", 1), ("steps", 3)))
                                  for t in ("support", "both")])
    assert evaluate(None, tiny_suite, ckpt, out=out, shard=(1, 2), **evaluate_args) is None
    e = evaluate(None, tiny_suite, ckpt, out=out, shard=(0, 2), **evaluate_args)
    assert e["metrics"] == ref
