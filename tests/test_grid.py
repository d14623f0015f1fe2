"""Evaluation grids: parsing, content-addressed idempotent cells, and the Ray executor
(a local cluster) surviving a killed worker with the same results as the local executor."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest

from bench.errors import MrbenchError
from bench.grid import KillWorkerOnce, cells, read_grid, run_grid

GRID = """
out = "runs"
algorithms = ["protonet", "anil"]
suites = ["tiny-glyphs"]
seeds = [0, 1]
scenarios = ["clean", "gaussian-noise:3"]

[train]
steps = 2
meta_batch = 2

[evaluate]
episodes = 6

[options.anil]
inner_steps_test = 2
"""


def _grid(tmp_path, text=GRID):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return read_grid(path)


def test_grid_file_and_cells(tmp_path, tiny_suite):
    g = _grid(tmp_path)
    assert g.out == (tmp_path / "runs").resolve() and g.steps == 2 and g.episodes == 6
    trains, evals = cells(g)
    assert len(trains) == 4 and len(evals) == 8
    assert len({t.key for t in trains}) == 4 and len({e.key for e in evals}) == 8
    assert dict(trains[2].options) == {"inner_steps_test": 2}  # anil's options are part of its cells' keys
    other = _grid(tmp_path, GRID.replace("steps = 2", "steps = 3"))
    assert {t.key for t in cells(other)[0]}.isdisjoint({t.key for t in trains})


@pytest.mark.parametrize("text, message", [
    (GRID.replace('algorithms = ["protonet", "anil"]', 'algorithms = ["protonet", "anill"]'), "Unknown algorithm 'anill'"),
    (GRID.replace('"gaussian-noise:3"', '"gaussian-nois:3"'), "Unknown shift 'gaussian-nois'"),
    (GRID.replace('"gaussian-noise:3"', '"gaussian-noise:high"'), "Grid scenario 'gaussian-noise:high': severity 'high' is not an integer"),
    (GRID.replace('"gaussian-noise:3"', '"square@8/255:support"'), "Grid scenario 'square@8/255:support': Attack 'square' cannot attack the support"),
    (GRID.replace("[evaluate]", "[evaluation]"), "unknown field\\(s\\) evaluation"),
    (GRID.replace('suites = ["tiny-glyphs"]', ""), "missing field 'suites'"),
])
def test_bad_grids_fail_before_anything_runs(tmp_path, tiny_suite, text, message):
    with pytest.raises(MrbenchError, match=message):
        run_grid(_grid(tmp_path, text))
    assert not (tmp_path / "runs" / "checkpoints").exists()


def _rows(results):
    # not the checkpoint sha256: the checkpoint file also records its wall time
    return sorted((r.algorithm, r.seed, r.scenario, r.accuracy, r.ci95, r.result) for r in results)


@pytest.mark.ray
def test_local_and_ray_executors_agree_and_ray_survives_a_killed_worker(tmp_path, tiny_suite):
    pytest.importorskip("ray")
    g = _grid(tmp_path)
    local = run_grid(g, "local")
    assert len(local) == 8 and not any(r.cached for r in local)
    table = list(csv.DictReader((g.out / "grid.csv").open()))
    assert len(table) == 8 and {r["scenario"] for r in table} == {"clean", "gaussian-noise:3"}
    entry = json.loads((g.out / local[1].result).read_text())
    assert "gaussian-noise@3" in entry["metrics"] and entry["suite"]["n_episodes"] == 6

    again = run_grid(g, "local")  # content-addressed: nothing is recomputed
    assert all(r.cached for r in again) and _rows(again) == _rows(local)

    marker = tmp_path / "killed.txt"
    remote = replace(g, out=(tmp_path / "ray-runs").resolve())
    results = run_grid(remote, "ray", on_cell_start=KillWorkerOnce(str(marker), match="anil"),
                       ray_init={"num_cpus": 2, "object_store_memory": 100 * 1024 * 1024})
    assert marker.exists() and "anil" in marker.read_text()  # a worker really died mid-grid
    assert _rows(results) == _rows(local)
    import torch

    for t in cells(g)[0]:  # the same weights, trained in another process (and once restarted)
        a = torch.load(t.path(g.out), weights_only=True)["params"]
        b = torch.load(t.path(remote.out), weights_only=True)["params"]
        assert all(torch.equal(a[k], b[k]) for k in a), t.name
