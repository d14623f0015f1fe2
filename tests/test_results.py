"""The results layer on its own: the per-episode file, build_entry and the resume state."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from bench.errors import MrbenchError
from bench.results import episodes_file
from bench.results.schema import build_entry
from bench.run.resume import Progress, partial_path

REPO = Path(__file__).resolve().parents[1]
FAILED = "Attack-strength sanity checks failed: "
CURRENT_ENTRIES = [p for p in sorted(REPO.glob("leaderboards/*/v*/entries/*.json"))
                   if json.loads(p.read_text()).get("schema_version") == 3]  # older ones were written by older code


def _written_by_evaluate(raw: dict) -> dict:
    """The entry as evaluate wrote it: without the fields a maintainer adds afterwards."""
    out = {k: v for k, v in raw.items() if k not in ("supersedes", "reported")}
    if not out.get("footnote", FAILED).startswith(FAILED):
        del out["footnote"]
    return out


@pytest.mark.parametrize("path", CURRENT_ENTRIES, ids=lambda p: p.name)
def test_build_entry_rewrites_committed_entries_byte_for_byte(path):
    raw = json.loads(path.read_text())
    want = _written_by_evaluate(raw)
    footnote = want.get("footnote", "")
    failures = footnote.removeprefix(FAILED).removesuffix(".").split("; ") if footnote else []
    fields = [p for p in inspect.signature(build_entry).parameters if p not in ("failures", "created")]
    entry = build_entry(**{k: raw.get(k) for k in fields}, failures=failures, created=raw["created"])
    assert json.dumps(entry, indent=2) == json.dumps(want, indent=2)
    if want == raw:
        assert json.dumps(entry, indent=2) + "\n" == path.read_text()


def test_build_entry_refuses_an_invalid_entry():
    raw = json.loads(next(REPO.glob("leaderboards/omniglot-5w1s/v1/entries/protonet-omniglot-5w1s-*.json")).read_text())
    fields = [p for p in inspect.signature(build_entry).parameters if p not in ("failures", "created")]
    parts = {k: raw.get(k) for k in fields} | {"summary": {"accuracy": 0.5}}
    with pytest.raises(MrbenchError, match=r"not valid: summary\.accuracy: Extra inputs are not permitted"):
        build_entry(**parts, failures=[])


def test_episodes_file_round_trip_and_problems(tmp_path):
    rows = [("clean", 0, 4, 5), ("clean", 1, 5, 5), ("fgsm@0.1:query", 0, 1, 5), ("fgsm@0.1:query", 1, 0, 5)]
    path = tmp_path / "x.episodes.csv"
    path.write_text(episodes_file.render(rows))
    assert path.read_text().splitlines()[:2] == ["episode,scenario,correct,total,accuracy", "0,clean,4,5,0.8"]
    assert episodes_file.read(path) == {"clean": {0: (4, 5), 1: (5, 5)}, "fgsm@0.1:query": {0: (1, 5), 1: (0, 5)}}
    assert episodes_file.episodes_path(tmp_path / "x.json") == path

    path.write_text(path.read_text() + "1,clean,5,5,1.0\n2,clean,6,5,1.2\n")
    counts, problems = episodes_file.validate(path)
    assert problems == [("line 6", "episode 1 of scenario 'clean' appears twice"),
                        ("line 7", "inconsistent counts (correct=6, total=5, accuracy=1.2)")]
    with pytest.raises(MrbenchError, match="x.episodes.csv is not a valid per-episode file \\(2 problems\\)"):
        episodes_file.read(path)
    path.write_text("episode,scenario,correct\n")
    assert episodes_file.validate(path)[1] == [("header", "expected columns episode,scenario,correct,total,"
                                                          "accuracy, got episode,scenario,correct")]


def test_progress_resumes_from_its_partial_file(tmp_path):
    out = tmp_path / "r.json"
    p = Progress.open(out, "k1", ["clean", "a"], 2)
    assert partial_path(out).read_text() == '{"key": "k1"}\n' and p.missing([0])
    p.record([("clean", 0, 3, 5), ("a", 0, 1, 5)], {0: [[1, 2], [2, 3]]})
    again = Progress.open(out, "k1", ["clean", "a"], 2)
    assert again.done == {("clean", 0): (3, 5), ("a", 0): (1, 5)} and again.by_group == {0: [[1, 2], [2, 3]]}
    assert not again.missing([0]) and again.missing([1]) and not again.complete()
    assert again.clean_accuracy() == 3 / 5
    assert "1/2 episodes saved to" in again.interrupted().message
    other = Progress.open(out, "k2", ["clean"], 2)  # other settings: start afresh
    assert other.done == {} and partial_path(out).read_text() == '{"key": "k2"}\n'
    with pytest.raises(MrbenchError, match="A sharded evaluation needs --out"):
        Progress.open(None, "k", ["clean"], 2, shard=(0, 2))


def test_a_shard_gathers_the_others_and_writes_only_when_complete(tmp_path):
    out = tmp_path / "r.json"
    first, second = (Progress.open(out, "k", ["clean"], 2, shard=(i, 2)) for i in range(2))
    first.record([("clean", 0, 3, 5)], {})
    assert not first.gather_shards((0, 2))
    second.record([("clean", 1, 4, 5)], {})
    assert second.gather_shards((1, 2)) and second.done == {("clean", 0): (3, 5), ("clean", 1): (4, 5)}
    second.close()
    assert not partial_path(out).exists() and not first.gather_shards((0, 2))
    partial_path(out).write_text('{"key": "other"}\n')
    with pytest.raises(MrbenchError, match="was restarted with other settings while shard 0/2 ran"):
        first.gather_shards((0, 2))
