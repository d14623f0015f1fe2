"""The Python API: train, evaluate, resume, provenance."""

from __future__ import annotations

import json

import pytest
import torch

import bench.evaluation as evaluate_mod
import bench.training as train_mod
from bench.errors import MrbenchError
from bench.evaluation import evaluate
from bench.execution import Execution
from bench.training import train

def _train(out, suite, **kw):
    kw.setdefault("steps", 4)
    kw.setdefault("meta_batch", 2)
    return train("protonet", suite, out, device="cpu", **kw)


def test_train_writes_a_weights_only_checkpoint(tmp_path, tiny_suite):
    res = _train(tmp_path / "p.pt", tiny_suite)
    payload = torch.load(tmp_path / "p.pt", weights_only=True)
    assert payload["format"] == "mrbench-checkpoint"
    from bench.plugins import get_registry
    from bench.testing import init_params

    assert set(payload["params"]) == set(init_params(get_registry().create("algorithm", "protonet")))
    assert payload["params"]["backbone.conv0.weight"].shape == (64, 1, 3, 3)
    side = json.loads((tmp_path / "p.pt.json").read_text())
    assert side["sha256"] == res.sha256 and side["steps"] == 4 and side["algorithm"]["id"] == "protonet"
    assert not (tmp_path / "p.pt.partial").exists()


def test_a_second_training_run_gives_the_same_weights_not_the_same_file(tmp_path, tiny_suite, capsys):
    from bench.cli import main

    a = train("maml", tiny_suite, tmp_path / "a.pt", steps=3, meta_batch=2, device="cpu")
    b = train("maml", tiny_suite, tmp_path / "b.pt", steps=3, meta_batch=2, device="cpu")
    c = train("maml", tiny_suite, tmp_path / "c.pt", steps=3, meta_batch=2, device="cpu", seed=1)
    # The file's sha256 covers metadata (wall time, git sha); weights_sha256 only the tensors.
    assert a.meta["weights_sha256"] == b.meta["weights_sha256"] != c.meta["weights_sha256"]
    assert json.loads((tmp_path / "a.pt.json").read_text())["weights_sha256"] == a.meta["weights_sha256"]
    capsys.readouterr()
    assert main(["checkpoint", str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]) == 0
    out = capsys.readouterr().out
    assert f"weights {a.meta['weights_sha256']}" in out and out.rstrip().endswith("same weights")
    assert main(["checkpoint", str(tmp_path / "a.pt"), str(tmp_path / "c.pt")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("different weights")


def test_train_is_idempotent_and_refuses_to_overwrite(tmp_path, tiny_suite):
    first = _train(tmp_path / "p.pt", tiny_suite)
    again = _train(tmp_path / "p.pt", tiny_suite)
    assert again.already_done and again.sha256 == first.sha256
    with pytest.raises(MrbenchError, match="different training run"):
        _train(tmp_path / "p.pt", tiny_suite, seed=5)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, tiny_suite, monkeypatch):
    _train(tmp_path / "ref.pt", tiny_suite, steps=6)
    real = train_mod.meta_loss_backward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "meta_loss_backward", flaky)
    with pytest.raises(MrbenchError, match="Interrupted at step 3/6"):
        _train(tmp_path / "p.pt", tiny_suite, steps=6)
    assert (tmp_path / "p.pt.partial").exists() and not (tmp_path / "p.pt").exists()
    resumed = _train(tmp_path / "p.pt", tiny_suite, steps=6)
    assert resumed.resumed_from == 3
    a = torch.load(tmp_path / "ref.pt", weights_only=True)["params"]
    b = torch.load(tmp_path / "p.pt", weights_only=True)["params"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_evaluate_is_reproducible_and_writes_per_episode_results(tmp_path, tiny_suite):
    _train(tmp_path / "p.pt", tiny_suite)
    e1 = evaluate("protonet", tiny_suite, tmp_path / "p.pt", out=tmp_path / "r1.json", device="cpu")
    e2 = evaluate("protonet", tiny_suite, tmp_path / "p.pt", out=tmp_path / "r2.json", device="cpu")
    assert e1["suite"]["manifest_sha256"] == e2["suite"]["manifest_sha256"]
    assert e1["metrics"] == e2["metrics"]
    assert (tmp_path / "r1.episodes.csv").read_text() == (tmp_path / "r2.episodes.csv").read_text()
    rows = (tmp_path / "r1.episodes.csv").read_text().splitlines()
    assert rows[0] == "episode,scenario,correct,total,accuracy" and len(rows) == 1 + 12
    accs = [float(r.split(",")[-1]) for r in rows[1:]]
    assert sum(accs) / len(accs) == pytest.approx(e1["metrics"]["clean"]["accuracy"])
    on_disk = json.loads((tmp_path / "r1.json").read_text())
    assert on_disk["metrics"] == e1["metrics"]


def test_result_entry_carries_provenance(tmp_path, tiny_suite):
    res = _train(tmp_path / "p.pt", tiny_suite)
    e = evaluate(None, tiny_suite, tmp_path / "p.pt", device="cpu")
    assert e["schema_version"] == 3
    assert e["checkpoint"]["sha256"] == res.sha256
    assert e["checkpoint"]["weights_sha256"] == res.meta["weights_sha256"]
    assert e["algorithm"]["id"] == "protonet" and e["algorithm"]["distribution"] == "mrbench-metric"
    assert e["algorithm"]["transductive"] is False
    assert e["dataset"]["revision"] and e["suite"]["version"] == 1 and len(e["suite"]["manifest_sha256"]) == 64
    for key in ("harness_version", "git_sha", "torch_version", "device", "cpu"):
        assert key in e["environment"]
    assert e["training"]["steps"] == 4 and e["peak_memory_bytes"] > 0 and e["wall_time_s"] >= 0
    m = e["metrics"]["clean"]
    assert isinstance(m["accuracy"], float) and 0 <= m["accuracy"] <= 1 and m["n_episodes"] == 12


def test_interrupted_evaluation_resumes_without_recomputing(tmp_path, tiny_suite, monkeypatch):
    _train(tmp_path / "p.pt", tiny_suite)
    ref = evaluate(None, tiny_suite, tmp_path / "p.pt", out=tmp_path / "ref.json", device="cpu")
    real = evaluate_mod.predict_episodes
    seen = []

    def flaky(algo, params, episodes, n_way, ex):
        seen.append(episodes.x_support.shape[0])
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(algo, params, episodes, n_way, ex)

    monkeypatch.setattr(evaluate_mod, "predict_episodes", flaky)
    with pytest.raises(MrbenchError, match="8/12 episodes saved"):
        evaluate(None, tiny_suite, tmp_path / "p.pt", out=tmp_path / "r.json", device="cpu", chunk_episodes=4)
    seen.clear()
    e = evaluate(None, tiny_suite, tmp_path / "p.pt", out=tmp_path / "r.json", device="cpu", chunk_episodes=4)
    assert seen == [4], "only the unfinished chunk is recomputed"
    assert e["metrics"] == ref["metrics"]
    assert not (tmp_path / "r.episodes.partial.jsonl").exists()


def test_a_finished_evaluation_is_returned_not_recomputed_or_overwritten(tmp_path, tiny_suite, monkeypatch):
    _train(tmp_path / "p.pt", tiny_suite)
    out = tmp_path / "r.json"
    first = evaluate(None, tiny_suite, tmp_path / "p.pt", out=out, device="cpu", n_episodes=8)
    written = out.read_text()
    calls = []
    real = evaluate_mod.predict_episodes
    monkeypatch.setattr(evaluate_mod, "predict_episodes", lambda *a: calls.append(1) or real(*a))
    again = evaluate(None, tiny_suite, tmp_path / "p.pt", out=out, device="cpu", n_episodes=8)
    assert calls == [] and again == first and out.read_text() == written
    # Another evaluation (here: another number of episodes) must not replace the finished one.
    with pytest.raises(MrbenchError, match="holds the result of a different evaluation"):
        evaluate(None, tiny_suite, tmp_path / "p.pt", out=out, device="cpu", n_episodes=4)
    assert out.read_text() == written
    old = json.loads(written)
    del old["run_key"]
    out.write_text(json.dumps(old))
    with pytest.raises(MrbenchError, match="without run keys"):
        evaluate(None, tiny_suite, tmp_path / "p.pt", out=out, device="cpu", n_episodes=8)


def test_vmap_and_loop_execution_agree(tmp_path, tiny_suite):
    train("maml", tiny_suite, tmp_path / "m.pt", steps=2, meta_batch=2, device="cpu")
    loop = evaluate(None, tiny_suite, tmp_path / "m.pt", device="cpu", execution=Execution("loop"))
    vmap = evaluate(None, tiny_suite, tmp_path / "m.pt", device="cpu", execution=Execution("vmap", chunk=5))
    assert loop["metrics"]["clean"]["accuracy"] == pytest.approx(vmap["metrics"]["clean"]["accuracy"])


def test_evaluate_rejects_a_checkpoint_of_another_algorithm(tmp_path, tiny_suite):
    _train(tmp_path / "p.pt", tiny_suite)
    with pytest.raises(MrbenchError, match="trained for 'protonet', not 'maml'"):
        evaluate("maml", tiny_suite, tmp_path / "p.pt", device="cpu")


def test_public_api_and_results_frame(tmp_path, tiny_suite):
    import bench

    bench.train("protonet", tiny_suite, tmp_path / "p.pt", steps=2, meta_batch=1, device="cpu")
    entry = bench.evaluate("protonet", tiny_suite, tmp_path / "p.pt", out=tmp_path / "r.json", device="cpu")
    df = bench.results_frame([entry, tmp_path / "r.json"])
    assert list(df["algorithm"]) == ["protonet", "protonet"] and list(df["scenario"]) == ["clean", "clean"]
    assert df["accuracy"].iloc[0] == df["accuracy"].iloc[1] == entry["metrics"]["clean"]["accuracy"]


def _all_algorithms() -> list[str]:
    from bench.plugins import get_registry

    return get_registry().ids("algorithm")


@pytest.mark.parametrize("algorithm", _all_algorithms())
def test_every_algorithm_trains_and_evaluates(tmp_path, tiny_suite, algorithm):
    # 20 images per training class: some algorithms train on up to 20 images per class
    # (RelationNet: 1 + 19), as their papers do on Omniglot.
    import dataclasses

    from bench.plugins import get_registry
    from bench.suites import get_suite

    suite = get_suite(tiny_suite)
    suite = dataclasses.replace(suite, train=dataclasses.replace(
        suite.train, options={**suite.train.options, "samples_per_class": 20}))
    res = train(algorithm, suite, tmp_path / "a.pt", steps=3, meta_batch=2, device="cpu")
    assert res.meta["steps"] == 3 and res.meta["algorithm"]["id"] == algorithm
    entry = evaluate(None, suite, tmp_path / "a.pt", device="cpu", n_episodes=4)
    algo = get_registry().create("algorithm", algorithm)
    assert entry["algorithm"]["transductive"] is bool(algo.transductive)
    assert entry["algorithm"]["options"] == algo.options.model_dump(mode="json")  # defaults are recorded
    assert 0.0 <= entry["metrics"]["clean"]["accuracy"] <= 1.0


def test_shift_scenarios_run_on_the_same_episodes(tmp_path, tiny_suite):
    from bench.results.schema import validate_entry

    _train(tmp_path / "p.pt", tiny_suite)
    plain = evaluate(None, tiny_suite, tmp_path / "p.pt", device="cpu")
    shifts = [("gaussian-noise", 5), ("label-noise", 4)]
    a = evaluate(None, tiny_suite, tmp_path / "p.pt", out=tmp_path / "a.json", device="cpu", shifts=shifts,
                 chunk_episodes=5)
    b = evaluate(None, tiny_suite, tmp_path / "p.pt", out=tmp_path / "b.json", device="cpu", shifts=shifts,
                 chunk_episodes=12)
    assert list(a["metrics"]) == ["clean", "gaussian-noise@5", "label-noise@4"]
    assert a["metrics"]["clean"] == plain["metrics"]["clean"], "shifts must not change the clean scenario"
    assert a["metrics"] == b["metrics"], "shifted results must not depend on chunking"
    assert a["metrics"]["gaussian-noise@5"]["accuracy"] != a["metrics"]["clean"]["accuracy"]
    rows = (tmp_path / "a.episodes.csv").read_text().splitlines()[1:]
    assert len(rows) == 3 * 12 and {r.split(",")[1] for r in rows} == set(a["metrics"])
    validate_entry(json.loads((tmp_path / "a.json").read_text()), "a.json")
    with pytest.raises(MrbenchError, match="no severity 9"):
        evaluate(None, tiny_suite, tmp_path / "p.pt", device="cpu", shifts=[("gaussian-noise", 9)])
