"""Evaluation grids: algorithm x suite x seed x scenario cells, locally or on Ray.

A grid file (TOML) names the algorithms, suites, seeds and scenarios, the training
budget and the evaluation episodes::

    out = "grid-runs"                  # relative to the grid file
    algorithms = ["protonet", "maml"]
    suites = ["glyphs-5w1s"]
    seeds = [0, 1]
    scenarios = ["clean", "gaussian-noise:3", "pgd-linf@8/255:query"]

    [train]
    steps = 200
    meta_batch = 4

    [evaluate]
    episodes = 100

    [options.maml]                     # per-algorithm options
    inner_steps_test = 3

    [resources]
    threads_per_cell = 1               # torch threads (CPU) of each cell
    gpus_per_cell = 0                  # Ray GPU request of each cell (0.5: two cells share a GPU)

Every cell is content-addressed: a training cell (algorithm, suite, seed) writes
``out/checkpoints/<name>-<key>.pt`` and an evaluation cell (one more scenario) writes
``out/results/<name>-<key>.json``, where ``key`` digests everything that can change
the file. A finished cell is never recomputed; an interrupted one resumes from its
partial file (:func:`bench.train` and :func:`bench.evaluate` do that), so a grid that
is re-run, or a Ray task that is retried after its worker died, loses nothing.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from bench.errors import MrbenchError
from bench.protocol.scenarios import AttackCell, ShiftCell, from_grid
from bench.provenance import digest

#: environment variables a remote cell needs to see the same suites, data and plugins
FORWARDED_ENV = ("MRBENCH_SUITES", "MRBENCH_DATA", "MRBENCH_CACHE", "MRBENCH_DISABLE_PLUGINS")


@dataclass(frozen=True)
class Grid:
    """A parsed grid file.

    :param scenarios: ``clean``, ``<shift>:<severity>`` (or ``<shift>@<severity>``) or
        ``<attack>[opts]@<eps>:<target>``, read by :func:`bench.protocol.scenarios.from_grid`.
    :param options: algorithm id -> its options.
    """

    algorithms: tuple[str, ...]
    suites: tuple[str, ...]
    seeds: tuple[int, ...]
    scenarios: tuple[str, ...]
    out: Path
    steps: int | None = None
    meta_batch: int | None = None
    episodes: int | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    threads_per_cell: int = 1
    gpus_per_cell: float = 0.0


@dataclass(frozen=True)
class TrainCell:
    algorithm: str
    suite: str
    seed: int
    options: tuple[tuple[str, Any], ...]
    steps: int | None
    meta_batch: int | None

    @property
    def key(self) -> str:
        return digest(["train", self.algorithm, self.suite, self.seed, list(self.options), self.steps,
                       self.meta_batch])

    @property
    def name(self) -> str:
        return f"{self.algorithm}-{self.suite.replace('@', '-')}-seed{self.seed}"

    def path(self, out: Path) -> Path:
        return out / "checkpoints" / f"{self.name}-{self.key}.pt"


@dataclass(frozen=True)
class EvalCell:
    train: TrainCell
    scenario: str
    episodes: int | None

    @property
    def key(self) -> str:
        return digest(["evaluate", self.train.key, self.scenario, self.episodes])

    @property
    def name(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", self.scenario).strip("_")
        return f"{self.train.name}-{slug}"

    def path(self, out: Path) -> Path:
        return out / "results" / f"{self.name}-{self.key}.json"


@dataclass(frozen=True)
class CellResult:
    """One row of the grid's results."""

    algorithm: str
    suite: str
    seed: int
    scenario: str
    accuracy: float
    ci95: float
    n_episodes: int
    checkpoint_sha256: str
    result: str  # path of the result entry, relative to the grid's out folder
    cached: bool


def read_grid(path: str | Path) -> Grid:
    """Parse a grid TOML file (see the module docstring).

    :raises MrbenchError: naming the file and the problem.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise MrbenchError(f"Grid file {path} does not exist.", "Pass the path of a grid TOML file.") from None
    except tomllib.TOMLDecodeError as exc:
        raise MrbenchError(f"Grid file {path} is not valid TOML: {exc}.") from None
    known = {"out", "algorithms", "suites", "seeds", "scenarios", "train", "evaluate", "options", "resources"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise MrbenchError(f"Grid file {path}: unknown field(s) {', '.join(unknown)}.",
                           f"Known fields: {', '.join(sorted(known))}.")
    try:
        algorithms = tuple(str(a) for a in raw["algorithms"])
        suites = tuple(str(s) for s in raw["suites"])
        seeds = tuple(int(s) for s in raw.get("seeds", [0]))
        scenarios = tuple(str(s) for s in raw.get("scenarios", ["clean"]))
        train, ev, res = raw.get("train", {}), raw.get("evaluate", {}), raw.get("resources", {})
        grid = Grid(
            algorithms=algorithms, suites=suites, seeds=seeds, scenarios=scenarios,
            out=(path.parent / str(raw.get("out", "grid-runs"))).resolve(),
            steps=int(train["steps"]) if "steps" in train else None,
            meta_batch=int(train["meta_batch"]) if "meta_batch" in train else None,
            episodes=int(ev["episodes"]) if "episodes" in ev else None,
            options={str(k): dict(v) for k, v in raw.get("options", {}).items()},
            threads_per_cell=int(res.get("threads_per_cell", 1)),
            gpus_per_cell=float(res.get("gpus_per_cell", 0.0)),
        )
    except KeyError as exc:
        raise MrbenchError(f"Grid file {path}: missing field {exc.args[0]!r}.",
                           "A grid needs at least `algorithms` and `suites`.") from None
    except (TypeError, ValueError) as exc:
        raise MrbenchError(f"Grid file {path}: {exc}.") from None
    if not (grid.algorithms and grid.suites and grid.seeds and grid.scenarios):
        raise MrbenchError(f"Grid file {path}: algorithms, suites, seeds and scenarios must not be empty.")
    return grid


def validate_grid(grid: Grid) -> None:
    """Resolve every id before anything runs: an unknown algorithm, suite, shift or
    attack fails here, listing the known ones, not after hours of training."""
    from bench.plugins import get_registry
    from bench.suites import get_suite

    registry = get_registry()
    for a in grid.algorithms:
        registry.create("algorithm", a, grid.options.get(a))
    for s in grid.suites:
        get_suite(s)
    for sc in grid.scenarios:
        parse_scenario(sc)


def parse_scenario(text: str) -> tuple[list[ShiftCell], list[AttackCell]]:
    """A grid scenario (:func:`bench.protocol.scenarios.from_grid`) -> the ``(shifts, attacks)``
    arguments of :func:`bench.evaluate`."""
    from bench.plugins import get_registry

    cell = from_grid(text, get_registry())
    return [cell] if isinstance(cell, ShiftCell) else [], [cell] if isinstance(cell, AttackCell) else []


def cells(grid: Grid) -> tuple[list[TrainCell], list[EvalCell]]:
    """The grid's training cells and evaluation cells, in a fixed order."""
    trains = [TrainCell(a, s, seed, tuple(sorted(grid.options.get(a, {}).items())), grid.steps, grid.meta_batch)
              for a in grid.algorithms for s in grid.suites for seed in grid.seeds]
    evals = [EvalCell(t, sc, grid.episodes) for t in trains for sc in grid.scenarios]
    return trains, evals


def _with_threads(threads: int, fn: Callable[[], Any]) -> Any:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def run_train_cell(cell: TrainCell, out: Path, threads: int, hook: Callable[[Any], None] | None = None) -> str:
    """Train one cell (idempotent, resumable); returns the checkpoint's sha256."""
    from bench.training import train

    if hook is not None:
        hook(cell)

    def go() -> str:
        path = cell.path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        return train(cell.algorithm, cell.suite, path, steps=cell.steps, seed=cell.seed, options=dict(cell.options),
                     meta_batch=cell.meta_batch).sha256

    return _with_threads(threads, go)


def run_eval_cell(cell: EvalCell, out: Path, threads: int, hook: Callable[[Any], None] | None = None,
                  _after: Any = None) -> CellResult:
    """Evaluate one cell (idempotent: a finished result is read back, not recomputed)."""
    from bench.evaluation import evaluate

    path = cell.path(out)
    cached = path.exists()
    if cached:
        entry = json.loads(path.read_text())
    else:
        if hook is not None:
            hook(cell)
        shifts, attacks = parse_scenario(cell.scenario)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = _with_threads(threads, lambda: evaluate(
            cell.train.algorithm, cell.train.suite, cell.train.path(out), out=path, n_episodes=cell.episodes,
            shifts=shifts, attacks=attacks, sanity=False))
    names = [n for n in entry["metrics"] if n != "clean"]
    name = names[0] if cell.scenario != "clean" else "clean"
    m = entry["metrics"][name]
    return CellResult(cell.train.algorithm, cell.train.suite, cell.train.seed, cell.scenario, m["accuracy"], m["ci95"],
                      m["n_episodes"], entry["checkpoint"]["sha256"], str(path.relative_to(out)), cached)


def run_grid(grid: Grid, executor: str = "local", *, address: str | None = None,
             on_cell_start: Callable[[Any], None] | None = None, ray_init: dict[str, Any] | None = None
             ) -> list[CellResult]:
    """Run every cell of ``grid``; returns one :class:`CellResult` per evaluation cell and
    writes ``out/grid.csv``.

    :param executor: ``local`` (cells in turn, in this process) or ``ray`` (one task per
        cell; evaluation tasks wait for their training task).
    :param address: a running Ray cluster (``ray start --head`` prints it); ``None``
        starts a local one.
    :param on_cell_start: called with the cell at the start of every cell that is not
        already finished (in the worker, for Ray: it must be picklable).
    :param ray_init: extra keyword arguments for ``ray.init`` (e.g. ``num_cpus``).
    """
    validate_grid(grid)
    trains, evals = cells(grid)
    out = grid.out
    out.mkdir(parents=True, exist_ok=True)
    if executor == "local":
        for t in trains:
            run_train_cell(t, out, grid.threads_per_cell, on_cell_start)
        results = [run_eval_cell(e, out, grid.threads_per_cell, on_cell_start) for e in evals]
    elif executor == "ray":
        results = _run_ray(grid, trains, evals, address, on_cell_start, ray_init or {})
    else:
        raise MrbenchError(f"Unknown executor {executor!r}.", "Use --executor local or --executor ray.")
    _write_table(out / "grid.csv", results)
    return results


def _run_ray(grid: Grid, trains: Sequence[TrainCell], evals: Sequence[EvalCell], address: str | None,
             hook: Callable[[Any], None] | None, ray_init: dict[str, Any]) -> list[CellResult]:
    try:
        import ray
    except ImportError:
        raise MrbenchError("The Ray executor needs Ray.", 'Install it: pip install "mrbench[ray]".') from None
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env} if env else None, **ray_init)
    try:
        opts = {"num_cpus": grid.threads_per_cell, "num_gpus": grid.gpus_per_cell, "max_retries": 3,
                "retry_exceptions": False}
        train_task = ray.remote(**opts)(run_train_cell)
        eval_task = ray.remote(**opts)(run_eval_cell)
        t_refs = {t: train_task.remote(t, grid.out, grid.threads_per_cell, hook) for t in trains}
        e_refs = [eval_task.remote(e, grid.out, grid.threads_per_cell, hook, t_refs[e.train]) for e in evals]
        try:
            return list(ray.get(e_refs))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            if isinstance(cause, MrbenchError):
                raise cause from None
            raise MrbenchError(f"A grid cell failed on Ray: {type(cause).__name__}: {cause}.",
                               "Fix the cause and re-run the grid: finished cells are kept.") from None
    finally:
        if started:
            ray.shutdown()


def _write_table(path: Path, results: Sequence[CellResult]) -> None:
    import pandas as pd

    from bench.checkpoint import atomic_write_text

    frame = pd.DataFrame([{k: v for k, v in r.__dict__.items() if k != "cached"} for r in results])
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))


@dataclass(frozen=True)
class KillWorkerOnce:
    """Fault injection for ``on_cell_start``: SIGKILL the process running the first cell
    whose name contains ``match``, once (``marker`` records that it happened).

    Used to check that a grid survives a dead worker: Ray retries the task, which
    resumes from the cell's partial file.
    """

    marker: str
    match: str = ""

    def __call__(self, cell: Any) -> None:
        import signal

        if self.match in cell.name and not os.path.exists(self.marker):
            Path(self.marker).write_text(f"{cell.name} pid {os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)
