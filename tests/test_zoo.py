"""The checkpoint zoo, ``mrbench verify`` and external evaluations.

Published checkpoints live content-addressed by their weights digest; an entry is
re-checked episode by episode from its checkpoint; a new attack runs against every
published model of a suite and shows in the models' rows.
"""

from __future__ import annotations

import csv
import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

import bench
from bench import zoo
from bench.protocol.scenarios import AttackCell
from bench.checkpoint import load_final, weights_sha256
from bench.cli import main
from bench.errors import MrbenchError
from bench.evaluation import evaluate
from bench.results.schema import ResultEntry, migrate
from bench.results.stats import mean_ci95
from bench.training import train
from bench.verify import verify_entry

EPS = 16 / 255
CELLS = [AttackCell("fgsm", EPS, "query"), AttackCell("pgd-linf", EPS, "query", (("steps", 2),)),
         AttackCell("pgd-linf", EPS, "support", (("steps", 2),))]


@pytest.fixture
def zoo_dir(tmp_path, monkeypatch) -> Path:
    """An empty zoo folder searched before the repository's, and an empty download cache."""
    d = tmp_path / "zoo"
    d.mkdir()
    monkeypatch.setenv("MRBENCH_ZOO", str(d))
    monkeypatch.setenv("MRBENCH_CACHE", str(tmp_path / "cache"))
    return d


@pytest.fixture
def ckpt(tmp_path, tiny_suite) -> Path:
    train("protonet", tiny_suite, tmp_path / "p.pt", steps=4, meta_batch=2, device="cpu")
    return tmp_path / "p.pt"


@pytest.fixture
def published(ckpt, zoo_dir) -> zoo.ZooRecord:
    record, new = zoo.publish(ckpt, zoo_dir)
    assert new
    return record


def test_publishing_stores_tensors_and_a_record_keyed_by_the_weights_digest(ckpt, zoo_dir):
    params, meta, sha = load_final(ckpt)
    record, new = zoo.publish(ckpt, zoo_dir)
    assert new and record.weights_sha256 == weights_sha256(params) == meta["weights_sha256"]
    files = sorted(p.name for p in zoo_dir.iterdir())
    assert files == [f"{record.weights_sha256}.json", f"{record.weights_sha256}.safetensors"]
    side = json.loads((zoo_dir / f"{record.weights_sha256}.json").read_text())
    assert side["checkpoint"]["algorithm"]["id"] == "protonet" and side["source"]["sha256"] == sha
    assert "optimizer" not in json.dumps(side)
    # Publishing again (or a retrained file with the same weights) changes nothing.
    before = (zoo_dir / record.file_name).read_bytes()
    again, new = zoo.publish(ckpt, zoo_dir)
    assert not new and again == record and (zoo_dir / record.file_name).read_bytes() == before
    # The tensors file holds tensors only: safetensors cannot run code on load.
    from safetensors.torch import load_file

    loaded = load_file(str(zoo_dir / record.file_name))
    assert all(torch.equal(loaded[k], params[k]) for k in params)


def test_a_record_is_found_by_digest_prefix_or_by_its_source_file(published, ckpt):
    assert zoo.find(published.weights_sha256[:10]) == published
    assert zoo.find("zoo:" + published.weights_sha256) == published
    assert zoo.find(load_final(ckpt)[2]) == published  # how schema-2 entries name their checkpoint
    with pytest.raises(MrbenchError, match="No zoo checkpoint 0000000000 .*known: .*protonet"):
        zoo.find("0000000000")
    with pytest.raises(MrbenchError, match="not a checkpoint digest"):
        zoo.find("zoo:xyz")


def test_load_model_adapts_and_predicts_like_the_checkpoint(published, ckpt, tiny_suite):
    model = bench.load_model(published.weights_sha256[:12])
    params, _, _ = load_final(ckpt)
    assert all(torch.equal(model.params[k], params[k]) for k in params)
    xs, ys, xq = torch.rand(3, 1, 28, 28), torch.arange(3), torch.rand(6, 1, 28, 28)
    logits = model.logits(xs, ys, xq)
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()


def test_a_zoo_file_whose_digest_does_not_match_is_refused(published, zoo_dir):
    path = zoo_dir / published.file_name
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one flipped bit of a tensor
    path.write_bytes(bytes(data))
    with pytest.raises(MrbenchError, match=f"{path.name} has sha256 .*expects {published.file_sha256}.*not loaded"):
        zoo.load(published.weights_sha256)
    # A record edited to match the tampered file still fails: the tensors' digest is the key.
    side = zoo_dir / f"{published.weights_sha256}.json"
    raw = json.loads(side.read_text())
    raw["file_sha256"] = zoo.sha256_file(path)
    side.write_text(json.dumps(raw))
    with pytest.raises(MrbenchError, match=f"tensors hash to .*expects {published.weights_sha256}"):
        zoo.load(published.weights_sha256)


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server over ``tmp_path / 'www'``; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www
    server.shutdown()
    server.server_close()


def _remote_only(record: zoo.ZooRecord, zoo_dir: Path, url: str) -> None:
    """Leave only the record in the zoo folder, naming ``url`` as the tensors' source."""
    (zoo_dir / record.file_name).unlink()
    side = zoo_dir / f"{record.weights_sha256}.json"
    raw = json.loads(side.read_text())
    raw["urls"] = [url]
    side.write_text(json.dumps(raw))


def test_the_remote_backend_downloads_into_the_cache_and_checks_the_digest(published, zoo_dir, http_server, tmp_path):
    base, www = http_server
    shutil.copyfile(zoo_dir / published.file_name, www / published.file_name)
    _remote_only(published, zoo_dir, f"{base}/{published.file_name}")
    params, meta, record = zoo.load(published.weights_sha256)
    cached = tmp_path / "cache" / "zoo" / published.file_name
    assert cached.is_file() and weights_sha256(params) == published.weights_sha256
    (www / published.file_name).unlink()  # the cache serves it from now on
    assert zoo.fetch(zoo.find(published.weights_sha256)) == cached


def test_the_remote_backend_refuses_a_file_with_the_wrong_digest(published, zoo_dir, http_server, tmp_path):
    base, www = http_server
    data = bytearray((zoo_dir / published.file_name).read_bytes())
    data[-1] ^= 1
    (www / published.file_name).write_bytes(bytes(data))
    url = f"{base}/{published.file_name}"
    _remote_only(published, zoo_dir, url)
    with pytest.raises(MrbenchError) as err:
        zoo.load(published.weights_sha256)
    msg = err.value.message
    assert url in msg and published.file_sha256 in msg and "deleted, not loaded" in msg
    assert not list((tmp_path / "cache" / "zoo").glob("*")), "nothing is left in the cache"


def test_only_https_or_loopback_urls_are_downloaded(published, zoo_dir):
    _remote_only(published, zoo_dir, "http://example.org/x.safetensors")
    with pytest.raises(MrbenchError, match="not https"):
        zoo.load(published.weights_sha256)


def test_evaluating_a_zoo_checkpoint_gives_the_files_results_and_names_the_weights(published, ckpt, tiny_suite,
                                                                                     tmp_path):
    from_file = evaluate(None, tiny_suite, ckpt, device="cpu", n_episodes=4, attacks=CELLS[:1], sanity=False)
    from_zoo = evaluate(None, tiny_suite, published.ref, device="cpu", n_episodes=4, attacks=CELLS[:1], sanity=False)
    assert from_zoo["metrics"] == from_file["metrics"]
    assert from_zoo["checkpoint"]["weights_sha256"] == from_file["checkpoint"]["weights_sha256"]
    assert from_zoo["checkpoint"]["file"] == published.file_name
    assert from_zoo["run_key"] == from_file["run_key"], "the same model and evaluation, whatever file it came from"
    ResultEntry.model_validate(from_zoo)
    assert from_zoo["scenarios"]["fgsm@16/255:query"]["provider"] == "mrbench-attacks"
    assert from_zoo["evaluation"] == {"attack_seeds": "episode", "chunk_episodes": 25}


def test_attacks_are_seeded_per_episode_so_chunking_does_not_matter(published, tiny_suite):
    kw = dict(device="cpu", n_episodes=6, attacks=CELLS[1:], sanity=False)
    a = evaluate(None, tiny_suite, published.ref, chunk_episodes=4, **kw)
    b = evaluate(None, tiny_suite, published.ref, chunk_episodes=1, **kw)
    assert a["metrics"] == b["metrics"]


@pytest.fixture
def entry(published, tiny_suite, tmp_path) -> Path:
    out = tmp_path / "entries" / "protonet-tiny.json"
    evaluate(None, tiny_suite, published.ref, out=out, device="cpu", n_episodes=6, attacks=CELLS, sanity=False,
             shifts=[("gaussian-noise", 3), ("label-noise", 2)])
    return out


def test_verify_reproduces_every_scenario_of_an_entry(entry, tiny_suite):
    res = verify_entry(entry, episodes=3, seed=1)
    assert res.ok and res.exact and len(res.episodes) == 3
    assert set(res.scenarios) == set(json.loads(entry.read_text())["metrics"])
    assert {"gaussian-noise@3", "label-noise@2", "pgd-linf[steps=2]@16/255:support", "ensemble@16/255:query"} <= set(
        res.scenarios)
    assert verify_entry(entry, episodes=None).episodes == list(range(6))


def _edit_consistently(entry: Path, scenario: str, episode: int) -> tuple[int, int]:
    """Change one episode's count in the per-episode file and the entry's metrics with it,
    the way a forger who knows the format would. Returns (old, new) correct counts."""
    raw = json.loads(entry.read_text())
    csv_path = entry.with_name(raw["episodes_file"])
    rows = list(csv.DictReader(csv_path.open()))
    for r in rows:
        if r["scenario"] == scenario and int(r["episode"]) == episode:
            old = int(r["correct"])
            new = old - 1 if old > 0 else old + 1
            r["correct"], r["accuracy"] = str(new), repr(new / int(r["total"]))
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, ["episode", "scenario", "correct", "total", "accuracy"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    accs = [int(r["correct"]) / int(r["total"]) for r in rows if r["scenario"] == scenario]
    acc, ci = mean_ci95(accs)
    raw["metrics"][scenario].update(accuracy=acc, ci95=ci)
    entry.write_text(json.dumps(raw, indent=2) + "\n")
    return old, new


def test_verify_fails_on_a_consistently_tampered_entry(entry):
    old, new = _edit_consistently(entry, "pgd-linf[steps=2]@16/255:query", 2)
    res = verify_entry(entry, episodes=None)
    assert not res.ok
    err = res.error()
    assert entry.name in err.message and "pgd-linf[steps=2]@16/255:query" in err.message
    assert f"episode(s) 2 (recorded {new}/" in err.message and f"recomputed {old}/" in err.message


def test_verify_fails_on_a_swapped_checkpoint(entry, zoo_dir, tiny_suite, tmp_path):
    train("protonet", tiny_suite, tmp_path / "other.pt", steps=4, meta_batch=2, device="cpu", seed=7)
    other, _ = zoo.publish(tmp_path / "other.pt", zoo_dir)
    raw = json.loads(entry.read_text())
    raw["checkpoint"]["weights_sha256"] = other.weights_sha256
    entry.write_text(json.dumps(raw, indent=2) + "\n")
    res = verify_entry(entry, episodes=None)
    assert not res.ok and other.weights_sha256[:12] in res.error().message


def test_verify_names_a_checkpoint_missing_from_the_zoo(entry, zoo_dir, published):
    (zoo_dir / f"{published.weights_sha256}.json").unlink()
    with pytest.raises(MrbenchError, match="No zoo checkpoint"):
        verify_entry(entry)


def test_verify_cli_reports_each_entry(entry, capsys):
    assert main(["verify", str(entry), "--episodes", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "verified 1 of 1 entries" in out
    _edit_consistently(entry, "clean", 0)
    assert main(["verify", str(entry), "--all-episodes", "--device", "cpu"]) == 2
    assert "does not reproduce" in capsys.readouterr().err


def test_schema_2_entries_migrate_and_name_their_checkpoint_by_file():
    repo = Path(__file__).resolve().parents[1]
    raw = json.loads((repo / "leaderboards/omniglot-5w1s/v1/entries/protonet-natural-attacks.json").read_text())
    assert raw["schema_version"] == 2
    up = migrate(raw)
    assert up["schema_version"] == 3 and up["checkpoint"]["weights_sha256"] is None
    assert up["checkpoint"]["sha256"] == raw["checkpoint"]["sha256"]
    assert up["evaluation"] == {"attack_seeds": "chunk", "chunk_episodes": 25}
    ResultEntry.model_validate(up)


def test_zoo_cli_lists_shows_and_gets(published, capsys, tmp_path):
    assert main(["zoo", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert any(r["weights_sha256"] == published.weights_sha256 for r in rows)
    assert main(["zoo", "show", published.weights_sha256[:10]]) == 0
    assert json.loads(capsys.readouterr().out)["weights_sha256"] == published.weights_sha256
    assert main(["zoo", "get", published.weights_sha256[:10], "--out", str(tmp_path / "x.pt")]) == 0
    assert weights_sha256(load_final(tmp_path / "x.pt")[0]) == published.weights_sha256
    assert main(["zoo", "show", "deadbeefdeadbeef"]) == 2
    assert "No zoo checkpoint" in capsys.readouterr().err
