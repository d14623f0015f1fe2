"""Standardized evaluation: a checkpoint on a suite's fixed episodes -> a result entry.

Episodes are processed in chunks; every finished chunk's per-episode results are
appended to ``RESULT.episodes.partial.jsonl`` before the next starts, so an
interrupted evaluation resumes where it stopped and loses nothing. Chunks lie on a
fixed grid of episode indices, so a long evaluation can also be split over several
processes (``shard``) that share that file (:mod:`bench.run.resume`). The entry is
built and checked by :func:`bench.results.schema.build_entry`; the per-episode results
go next to it in the format of :mod:`bench.results.episodes_file`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from bench.attacks import SanityResult, Victim, combine_ensemble, monotone_in_eps, run_attack, sanity_checks
from bench.checkpoint import atomic_write_text
from bench.episodes import gather
from bench.errors import MrbenchError
from bench.execution import Execution, for_algorithm, pick_device, plan, predict_episodes
from bench.progress import NullReporter, Reporter, sigterm_as_interrupt
from bench.protocol.scenarios import Ensemble, ShiftCell
from bench.provenance import digest, environment, peak_memory_bytes
from bench.results import episodes_file
from bench.results.schema import build_entry
from bench.results.stats import mean_ci95
from bench.run import resume
from bench.protocol.sanity import sanity_references
from bench.suites import Suite, get_suite


@dataclass
class _Plan:
    """Everything an evaluation needs before it runs a chunk (built by :func:`_prepare`)."""

    registry: Any
    suite: Suite
    algo: Any
    params: dict[str, torch.Tensor]
    meta: dict[str, Any]
    ckpt_ref: dict[str, Any]
    manifest: Any
    split: Any
    dataset: Any
    dev: torch.device
    ex: Execution
    transfer: dict[str, Any] | None
    group_names: list[str] | None
    class_group: torch.Tensor | None
    scenarios: list[tuple[str, Any, int]]
    attack_cells: list[tuple[str, Any, Any]]
    ensembles: dict[str, list[str]]
    names: list[str]
    key: str
    chunk_episodes: int
    attack_seeds: str
    victim: Any = None
    timing: dict[str, float] = field(default_factory=lambda: {"episodes": 0.0, "shifts": 0.0, "predict": 0.0,
                                                               "attacks": 0.0})

    @property
    def n_episodes(self) -> int:
        return self.manifest.n_episodes

    def chunks(self) -> list[list[int]]:
        """The fixed grid of episode indices (resume, shards and per-chunk seeds)."""
        E = self.n_episodes
        return [list(range(c, min(E, c + self.chunk_episodes))) for c in range(0, E, self.chunk_episodes)]


def _prepare(algorithm: str | None, suite: str | Suite, checkpoint: Any, *, n_episodes: int | None,
             options: Mapping[str, Any] | None, device: str, data_root: str | Path | None, registry: Any,
             execution: Execution | None, chunk_episodes: int, shifts: Sequence[tuple[str, int]] | None,
             attacks: Sequence[Any] | None, on: str, attack_seeds: str) -> _Plan:
    from bench.plugins import get_registry
    from bench.suites import suite_manifest
    from bench.zoo import load_checkpoint

    registry = registry or get_registry()
    suite = get_suite(suite) if isinstance(suite, str) else suite
    dev = pick_device(device)
    ex = execution or plan(dev)
    if attack_seeds not in ("episode", "chunk"):
        raise ValueError(f"attack_seeds must be 'episode' or 'chunk', got {attack_seeds!r}")

    params, meta, ckpt_ref = load_checkpoint(checkpoint)
    algo = _algorithm_for(registry, algorithm, checkpoint, meta, options)
    ex = for_algorithm(ex, algo)  # the entry records the strategy that really ran
    params = {k: v.to(dev) for k, v in params.items()}

    manifest, split, dataset = suite_manifest(suite, registry, data_root, n_episodes, on=on)
    split = split.to(dev)
    spec = manifest.spec
    group_names = sorted(set(split.groups)) if split.groups else None
    class_group = (torch.tensor([group_names.index(g) for g in split.groups], device=dev)
                   if group_names else None)
    scenarios: list[tuple[str, Any, int]] = [("clean", None, 0)]
    for shift_id, severity in shifts or ():
        shift = registry.create("shift", shift_id)
        if severity not in shift.severities:
            raise MrbenchError(f"Shift {shift_id!r} has no severity {severity}.",
                               f"Its severities: {', '.join(map(str, shift.severities))}.")
        scenarios.append((ShiftCell(shift_id, severity).name, shift, severity))
    attack_cells: list[tuple[str, Any, Any]] = []  # (name, scenario, attack instance)
    for sc in attacks or ():
        atk = registry.create("attack", sc.attack, dict(sc.options))
        sc.check(atk, spec.n_way)
        attack_cells.append((sc.name, sc, atk))
    ensembles: dict[str, list[str]] = {}
    for name, sc, _ in attack_cells:
        ensembles.setdefault(Ensemble(sc.eps, sc.target).name, []).append(name)
    ensembles = {k: v for k, v in ensembles.items() if len(v) > 1}
    names = [name for name, _, _ in scenarios] + [name for name, _, _ in attack_cells] + list(ensembles)
    if len(set(names)) != len(names):
        raise MrbenchError(f"A scenario is listed twice: {', '.join(names)}.", "List each shift and severity once.")
    chunk = chunk_episodes if attack_cells else None
    key = digest({"ckpt": ckpt_ref["weights_sha256"], "manifest": manifest.sha256(),
                  "options": algo.options.model_dump(mode="json"), "revision": split.revision,
                  "shifts": [[n, s.version] for n, s, _ in scenarios if s is not None],
                  "attacks": [[n, a.version, a.options.model_dump(mode="json")] for n, _, a in attack_cells],
                  "chunk": chunk if attack_seeds == "chunk" else None, "seeds": attack_seeds if attack_cells else None,
                  "on": on})
    victim = Victim(algo, params, spec.n_way, ex) if attack_cells else None
    return _Plan(registry, suite, algo, params, meta, ckpt_ref, manifest, split, dataset, dev, ex,
                 _transfer(meta, suite, dataset, registry, on), group_names, class_group, scenarios, attack_cells,
                 ensembles, names, key, chunk_episodes, attack_seeds, victim)


def _seeded(*key: Any) -> torch.Generator:
    """A CPU generator seeded from a digest of ``key`` (attack and shift seeds)."""
    return torch.Generator().manual_seed(int(digest(list(key)), 16) & ((1 << 63) - 1))


def _attack(pl: _Plan, name: str, sc: Any, atk: Any, clean: Any, ids: list[int]) -> torch.Tensor:
    """Per-query correctness ``[E, Q]`` of one attack scenario on a chunk of episodes."""
    if pl.attack_seeds == "chunk":  # schema 2 entries: one generator for the whole chunk
        g = _seeded(pl.suite.seed, name, ids[0], len(ids))
        return run_attack(atk, pl.victim, clean, sc.eps, sc.target, g)
    # One generator per episode: an episode's result does not depend on the chunk it is
    # computed in, so any episode can be re-run alone (``mrbench verify``).
    return torch.cat([run_attack(atk, pl.victim, clean[j : j + 1], sc.eps, sc.target, _seeded(pl.suite.seed, name, e))
                      for j, e in enumerate(ids)])


def _run_chunk(pl: _Plan, ids: list[int], done: Mapping[tuple[str, int], tuple[int, int]],
               tick: Any) -> tuple[list[tuple[str, int, int, int]], dict[int, list[list[int]]]]:
    """Every scenario not yet in ``done`` on the episodes ``ids`` (one chunk of the grid):
    ``(scenario, episode, correct, total)`` rows and clean counts per class group."""
    spec = pl.manifest.spec
    t0 = tick()
    clean = gather(pl.split, pl.manifest[torch.tensor(ids)].to(pl.dev))
    pl.timing["episodes"] += tick() - t0
    results: list[tuple[str, int, int, int]] = []
    groups: dict[int, list[list[int]]] = {}
    for name, shift, severity in pl.scenarios:
        t0 = tick()
        episodes = clean if shift is None else _shifted(shift, severity, clean, ids, pl.suite.seed, name)
        t1 = tick()
        pl.timing["shifts"] += t1 - t0
        logits = predict_episodes(pl.algo, pl.params, episodes, spec.n_way, pl.ex)
        if logits.shape[-1] != spec.n_way:
            raise MrbenchError(
                f"{pl.algo.id} predicts {logits.shape[-1]} classes, but the episodes of {pl.suite.ref} are "
                f"{spec.n_way}-way: its checkpoint fixes the number of ways.",
                "Evaluate it on a suite with the way it was trained for, or train it for this suite.")
        hits = logits.argmax(-1) == episodes.y_query
        correct = hits.sum(-1).tolist()
        pl.timing["predict"] += tick() - t1
        total = int(episodes.y_query.shape[-1])
        results += [(name, e, int(c), total) for e, c in zip(ids, correct) if (name, e) not in done]
        if shift is None and pl.class_group is not None:
            groups = _group_counts(hits, pl.manifest.classes[torch.tensor(ids)].to(pl.dev), episodes.y_query,
                                   pl.class_group, len(pl.group_names), ids)
    robust: dict[str, torch.Tensor] = {}
    t0 = tick()
    in_ensemble = {m for members in pl.ensembles.values() for m in members}
    for name, sc, atk in pl.attack_cells:
        if all((name, e) in done for e in ids) and name not in in_ensemble:
            continue
        robust[name] = _attack(pl, name, sc, atk, clean, ids)
    targets = {name: sc.target for name, sc, _ in pl.attack_cells}
    for ens, members in pl.ensembles.items():
        # query: per-query union; support / both: the worst single member per episode.
        robust[ens] = combine_ensemble(targets[members[0]], [robust[m] for m in members])
    pl.timing["attacks"] += tick() - t0
    total = int(clean.y_query.shape[-1])
    for name, ok in robust.items():
        results += [(name, e, int(c), total) for e, c in zip(ids, ok.sum(-1).tolist()) if (name, e) not in done]
    return results, groups


def _ticker(dev: torch.device) -> Any:
    def tick() -> float:  # a timer that waits for queued CUDA work (one sync per stage, not per op)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter()

    return tick


def evaluate(algorithm: str | None, suite: str | Suite, checkpoint: str | Path, *, out: str | Path | None = None,
             n_episodes: int | None = None, options: Mapping[str, Any] | None = None, device: str = "auto",
             data_root: str | Path | None = None, registry: Any = None, reporter: Reporter | None = None,
             execution: Execution | None = None, chunk_episodes: int = 25,
             shifts: Sequence[tuple[str, int]] | None = None, attacks: Sequence[Any] | None = None, sanity: bool = True,
             sanity_episodes: int = 10, on: str = "test", shard: tuple[int, int] | None = None, replace: bool = False,
             attack_seeds: str = "episode") -> dict[str, Any] | None:
    """Evaluate a checkpoint on the suite's fixed test episodes; returns the result entry.

    A finished ``out`` of the same evaluation (same ``run_key``) is returned as it is,
    without recomputing; one of another evaluation is an error unless ``replace``.

    :param algorithm: the algorithm id; must match the checkpoint's (``None``: take it
        from the checkpoint).
    :param suite: suite id or :class:`Suite`.
    :param checkpoint: a file written by :func:`bench.train`, or a zoo checkpoint
        (``zoo:<weights digest or prefix>``, see :mod:`bench.zoo`).
    :param out: where to write the result entry JSON (per-episode results go next to
        it as ``*.episodes.csv``); ``None`` writes nothing and cannot resume.
    :param n_episodes: evaluate only the first ``n`` of the suite's episodes.
    :param options: overrides of the checkpoint's algorithm options (e.g. test-time
        inner steps); recorded in the entry.
    :param chunk_episodes: episodes computed together and saved at once (the resume and
        shard grid).
    :param shifts: ``(shift id, severity)`` scenarios (pairs or
        :class:`bench.protocol.scenarios.ShiftCell`) evaluated next to ``clean`` on the
        same episodes; scenario ``<id>@<severity>`` in the entry. Each episode is shifted
        with its own generator seeded from (suite seed, scenario, episode), so results do
        not depend on chunking or on which other scenarios run.
    :param attacks: :class:`bench.protocol.scenarios.AttackCell` cells (attack, options, eps,
        target), evaluated on the clean episodes; scenario ``<attack>@<eps>:<target>``.
        Where several attacks share an (eps, target), ``ensemble@<eps>:<target>`` combines
        them (:func:`bench.attacks.combine_ensemble`): for the ``query`` target a query is
        robust only if every one of them fails on it; for ``support`` and ``both``, where
        the support set is poisoned once per episode, each episode counts its worst
        single attack (the fewest correct queries).
    :param attack_seeds: ``episode`` (default): each episode is attacked with its own
        generator seeded from (suite seed, scenario, episode), so results do not depend
        on chunking and any episode can be re-run alone; ``chunk``: one generator per
        chunk (how schema 2 entries were computed; for re-checking them).
    :param sanity: run the attack-strength sanity checks (:func:`bench.attacks.sanity_checks`)
        on the first ``sanity_episodes`` episodes for every attacked target; a failed
        check marks the entry ``unreliable`` with the reasons in ``footnote``.
    :param on: ``test`` (the suite's episodes) or ``train``: the same number of episodes
        of the suite's spec drawn from the meta-training classes, to measure the
        meta-train vs meta-test gap (recorded as a ``split`` transfer; not a
        leaderboard entry).
    :param shard: ``(K, N)``: compute only chunk ``c`` of the fixed chunk grid where
        ``c % N == K``, appending to the partial file that N processes started with the
        same arguments share. Results equal an unsharded run's. The shard that finds every
        episode done when it finishes writes the entry; the others return ``None``.

    The entry (:class:`bench.results.schema.ResultEntry`) records in ``timing_s`` the
    time this call spent gathering episodes, shifting, predicting and attacking (a
    resumed run counts only its own), and where they apply ``summary.corruptions``
    (over the image-corruption scenarios, per severity and per corruption),
    ``breakdown`` (clean accuracy per class group, e.g. Omniglot alphabet) and
    ``transfer`` (trained for another way/shot, domain or class split).
    """
    started, out = time.perf_counter(), Path(out) if out is not None else None
    pl = _prepare(algorithm, suite, checkpoint, n_episodes=n_episodes, options=options, device=device,
                  data_root=data_root, registry=registry, execution=execution, chunk_episodes=chunk_episodes,
                  shifts=shifts, attacks=attacks, on=on, attack_seeds=attack_seeds)
    run_sanity = bool(pl.attack_cells) and sanity
    run_key = digest([pl.key, sanity_episodes if run_sanity else None])
    if out is not None and out.exists():
        finished = resume.finished(out, run_key, replace)
        if finished is not None:
            return finished
    progress = resume.Progress.open(out, pl.key, pl.names, pl.n_episodes, shard)
    if pl.transfer is not None and "way" in pl.transfer["kinds"]:
        _probe_way(pl.algo, pl.params, gather(pl.split, pl.manifest[:1].to(pl.dev)), pl.manifest.spec.n_way, pl.ex,
                   pl.suite, pl.meta)
    _run_chunks(pl, progress, shard, reporter or NullReporter())
    if shard is not None and not progress.gather_shards(shard):
        return None  # the other shards' episodes are not all done yet, or one of them wrote the entry
    checks, failures = _sanity(pl, progress.done, sanity_episodes) if run_sanity else ({}, [])
    entry = _build_entry(pl, progress, checks, failures, run_key, sanity_episodes if run_sanity else None, on,
                         time.perf_counter() - started, episodes_file.episodes_path(out).name if out else None)
    if out is not None:
        _write(out, entry, pl, progress.done)
        progress.close()
    return entry


def _run_chunks(pl: _Plan, progress: resume.Progress, shard: tuple[int, int] | None, reporter: Reporter) -> None:
    """Compute the chunks of this process (all, or those of ``shard``) that ``progress``
    lacks, saving each one as it finishes; an interruption (Ctrl-C, SIGTERM) is an
    error that says what is saved."""
    chunks = resume.shard_chunks(pl.chunks(), shard)
    todo = [ids for ids in chunks if progress.missing(ids)]
    mine = sum(len(ids) for ids in chunks)
    title = f"evaluate {pl.algo.id} on {pl.suite.id}" + (f" (shard {shard[0]}/{shard[1]})" if shard else "")
    reporter.start(mine, title, completed=mine - sum(len(ids) for ids in todo))
    tick = _ticker(pl.dev)
    with sigterm_as_interrupt():
        try:
            for ids in todo:
                results, groups = _run_chunk(pl, ids, progress.done, tick)
                progress.record(results, groups)
                reporter.advance(len(ids), acc=progress.clean_accuracy())
        except KeyboardInterrupt:
            reporter.stop()
            raise progress.interrupted() from None
    reporter.stop()


def _scenario_info(pl: _Plan) -> dict[str, Any]:
    """Every non-clean scenario as data (schema ``scenarios``)."""
    out: dict[str, Any] = {}

    def provider(component: Any) -> dict[str, Any]:
        prov = getattr(type(component), "provenance", None)
        return {"provider": prov.distribution, "provider_version": prov.version} if prov else {}

    for name, shift, severity in pl.scenarios:
        if shift is not None:
            out[name] = {"kind": "shift", "id": shift.id, "version": shift.version, "severity": severity,
                         **provider(shift)}
    for name, sc, atk in pl.attack_cells:
        out[name] = {"kind": "attack", "id": atk.id, "version": atk.version,
                     "options": atk.options.model_dump(mode="json"), "eps": sc.eps, "norm": atk.norm,
                     "target": sc.target, **provider(atk)}
    for ens, members in pl.ensembles.items():
        _, sc, _ = next(c for c in pl.attack_cells if c[0] == members[0])
        out[ens] = {"kind": "ensemble", "id": "ensemble", "eps": sc.eps, "target": sc.target, "members": members}
    return out


def _build_entry(pl: _Plan, progress: resume.Progress, checks: dict[str, Any], failures: list[str], run_key: str,
                 sanity_episodes: int | None, on: str, wall: float, ep_file: str | None) -> dict[str, Any]:
    """The entry of the finished evaluation (:func:`bench.results.schema.build_entry`)."""
    E, spec, suite, meta, done = pl.n_episodes, pl.manifest.spec, pl.suite, pl.meta, progress.done
    metrics: dict[str, Any] = {}
    for name in pl.names:
        acc, ci = mean_ci95([done[(name, e)][0] / done[(name, e)][1] for e in range(E)])
        metrics[name] = {"accuracy": acc, "ci95": ci, "n_episodes": E,
                         "n_queries": sum(done[(name, e)][1] for e in range(E))}
    corruptions = _corruption_summary(pl.scenarios, done, E)
    breakdown = None
    if pl.group_names and all(e in progress.by_group for e in range(E)):
        sums = torch.tensor([progress.by_group[e] for e in range(E)]).sum(0).tolist()
        breakdown = {"by": getattr(pl.dataset, "group_kind", "group"), "scenario": "clean",
                     "groups": {g: {"accuracy": c / t, "n_queries": t} for g, (c, t) in zip(pl.group_names, sums) if t}}
    return build_entry(
        suite={"id": suite.id, "version": suite.version, "manifest_sha256": pl.manifest.sha256(),
               "n_episodes": E, "spec": {"n_way": spec.n_way, "k_shot": spec.k_shot, "n_query": spec.n_query}},
        dataset={"id": pl.dataset.id, "options": pl.dataset.options.model_dump(mode="json"),
                 "split": (suite.test if on == "test" else suite.train).split, "revision": pl.split.revision},
        algorithm={**pl.algo.describe(), "transductive": bool(pl.algo.transductive), "bn_policy": pl.algo.bn_policy},
        checkpoint=dict(pl.ckpt_ref),
        training={k: meta.get(k) for k in ("suite", "train_data", "train_spec", "steps", "seed", "meta_batch", "lr",
                                            "lr_decay_every", "lr_decay", "episodes_seen", "wall_time_s", "adversarial")}
        | {"device": meta.get("environment", {}).get("device")},
        metrics=metrics, sanity=checks, failures=failures, environment=environment(pl.dev),
        execution={"strategy": pl.ex.strategy, "chunk": pl.ex.chunk, "channels_last": pl.ex.channels_last},
        evaluation={"attack_seeds": pl.attack_seeds, "chunk_episodes": pl.chunk_episodes}
        | ({"sanity_episodes": sanity_episodes} if sanity_episodes is not None else {}),
        wall_time_s=round(wall, 2), timing_s={k: round(v, 3) for k, v in pl.timing.items()},
        peak_memory_bytes=peak_memory_bytes(pl.dev), episodes_file=ep_file, run_key=run_key,
        scenarios=_scenario_info(pl), summary=None if corruptions is None else {"corruptions": corruptions},
        breakdown=breakdown, transfer=pl.transfer)


def _write(out: Path, entry: dict[str, Any], pl: _Plan, done: Mapping[tuple[str, int], tuple[int, int]]) -> None:
    """Write the per-episode file, then the entry (which names it)."""
    rows = ((name, e, *done[(name, e)]) for name in pl.names for e in range(pl.n_episodes))
    atomic_write_text(episodes_file.episodes_path(out), episodes_file.render(rows))
    atomic_write_text(out, json.dumps(entry, indent=2) + "\n")


def recompute(algorithm: str | None, suite: str | Suite, checkpoint: Any, episodes: Sequence[int], *,
              n_episodes: int | None = None, options: Mapping[str, Any] | None = None,
              shifts: Sequence[tuple[str, int]] | None = None, attacks: Sequence[Any] | None = None,
              chunk_episodes: int = 25, attack_seeds: str = "episode", device: str = "auto",
              data_root: str | Path | None = None, registry: Any = None, execution: Execution | None = None,
              on: str = "test") -> dict[tuple[str, int], tuple[int, int]]:
    """Re-run the given episodes of an evaluation: ``(scenario, episode) -> (correct, total)``.

    The arguments are those of :func:`evaluate` (the episode grid, seeds and scenarios of
    the evaluation being re-checked). With per-episode attack seeds only the given
    episodes are computed; with per-chunk seeds (schema 2 entries) every chunk that holds
    one of them is re-run whole, since its attacks drew from one generator.
    """
    pl = _prepare(algorithm, suite, checkpoint, n_episodes=n_episodes, options=options, device=device,
                  data_root=data_root, registry=registry, execution=execution, chunk_episodes=chunk_episodes,
                  shifts=shifts, attacks=attacks, on=on, attack_seeds=attack_seeds)
    wanted = sorted(set(int(e) for e in episodes))
    if wanted and not 0 <= wanted[0] <= wanted[-1] < pl.n_episodes:
        raise MrbenchError(f"Episodes {wanted[0]}..{wanted[-1]} are outside 0..{pl.n_episodes - 1}.")
    if attack_seeds == "episode" or not pl.attack_cells:
        chunks = [[e] for e in wanted]
    else:
        chunks = [ids for ids in pl.chunks() if any(e in ids for e in wanted)]
    done: dict[tuple[str, int], tuple[int, int]] = {}
    tick = _ticker(pl.dev)
    for ids in chunks:
        results, _ = _run_chunk(pl, ids, done, tick)
        done.update(((n, e), (c, t)) for n, e, c, t in results)
    return {k: v for k, v in done.items() if k[1] in wanted}


def _probe_way(algo: Any, params: Any, episode: Any, n_way: int, ex: Execution, suite: Suite,
               meta: dict[str, Any]) -> None:
    """Fail early, with the reason, when a learner trained for another way cannot run these episodes."""
    trained = (meta.get("eval_spec") or {}).get("n_way")
    why = f"{algo.id} was trained for {trained}-way episodes ({meta.get('suite')}); {suite.ref} is {n_way}-way"
    hint = "Evaluate it on a suite with the way it was trained for, or train it for this suite."
    try:
        logits = predict_episodes(algo, params, episode, n_way, ex)
    except (IndexError, RuntimeError, ValueError) as exc:
        raise MrbenchError(f"{why}, and it fails on them: {type(exc).__name__}: {exc}", hint) from None
    if logits.shape[-1] != n_way:
        raise MrbenchError(f"{algo.id} predicts {logits.shape[-1]} classes, but the episodes of {suite.ref} are "
                           f"{n_way}-way: its checkpoint fixes the number of ways.", hint)


def _group_counts(hits: torch.Tensor, classes: torch.Tensor, y_query: torch.Tensor, class_group: torch.Tensor,
                  n_groups: int, ids: list[int]) -> dict[int, list[list[int]]]:
    """Per episode, ``[correct, total]`` of the queries of each class group."""
    g = class_group[classes.gather(1, y_query)]  # [E, Q] group of each query's class
    one_hot = torch.nn.functional.one_hot(g, n_groups)  # [E, Q, G]
    correct = (one_hot * hits.unsqueeze(-1)).sum(1).tolist()
    total = one_hot.sum(1).tolist()
    return {e: [[c, t] for c, t in zip(cs, ts)] for e, cs, ts in zip(ids, correct, total)}


def _corruption_summary(scenarios: list, done: dict, E: int) -> dict[str, Any] | None:
    """Mean accuracy over the image-corruption scenarios (per episode, then over episodes),
    per severity and per corruption, with the relative degradation against clean."""
    cells = [(name, shift.id, sev) for name, shift, sev in scenarios
             if shift is not None and getattr(shift, "category", "other") == "corruption"]
    if not cells:
        return None

    def acc(name: str) -> list[float]:
        return [done[(name, e)][0] / done[(name, e)][1] for e in range(E)]

    clean = sum(acc("clean")) / E
    per_episode = [sum(vals) / len(cells) for vals in zip(*(acc(name) for name, _, _ in cells))]
    mean, ci = mean_ci95(per_episode)

    def degradation(names: list[str]) -> dict[str, float]:
        a = sum(sum(acc(n)) / E for n in names) / len(names)
        return {"accuracy": a, "relative_degradation": (clean - a) / clean if clean else 0.0}

    by_severity = {str(s): degradation([n for n, _, sv in cells if sv == s]) for s in sorted({sv for *_, sv in cells})}
    by_shift = {sid: degradation([n for n, i, _ in cells if i == sid]) for sid in dict.fromkeys(i for _, i, _ in cells)}
    return {"accuracy": mean, "ci95": ci, "clean": clean,
            "relative_degradation": (clean - mean) / clean if clean else 0.0,
            "n_scenarios": len(cells), "n_episodes": E, "by_severity": by_severity, "by_shift": by_shift}


def _transfer(meta: dict[str, Any], suite: Suite, dataset: Any, registry: Any, on: str) -> dict[str, Any] | None:
    """How the checkpoint's training protocol differs from the evaluated episodes, if it does."""
    kinds: list[str] = []
    trained_for = meta.get("eval_spec")
    if trained_for:
        if int(trained_for["n_way"]) != suite.spec.n_way:
            kinds.append("way")
        if int(trained_for["k_shot"]) != suite.spec.k_shot:
            kinds.append("shot")
    train_data = meta.get("train_data")
    if train_data:
        try:
            trained_domain = getattr(registry.create("dataset", train_data["dataset"], train_data.get("options")),
                                     "domain", None) or train_data["dataset"]
        except Exception:  # a dataset plugin that is gone: compare ids
            trained_domain = train_data["dataset"]
        if (getattr(dataset, "domain", None) or dataset.id) != trained_domain:
            kinds.append("domain")
        elif (train_data["dataset"], dict(train_data.get("options") or {})) != (suite.train.dataset, dict(suite.train.options)):
            kinds.append("classes")
    if on == "train":
        kinds.append("split")
    if not kinds:
        return None
    spec = meta.get("train_spec")
    return {"trained_on": meta.get("suite"), "kinds": kinds,
            "train_spec": {k: int(spec[k]) for k in ("n_way", "k_shot", "n_query")} if spec else None,
            "train_data": train_data}


def _shifted(shift: Any, severity: int, clean: Any, ids: list[int], seed: int, scenario: str) -> Any:
    """Apply ``shift`` to each episode with its own generator, then re-stack the batch."""
    from bench.components import Episode

    out = []
    for j, e in enumerate(ids):
        out.append(shift.apply(clean[j], severity, _seeded(seed, scenario, e)))
    return Episode(*(torch.stack(ts) for ts in zip(*(ep.tensors() for ep in out))))


def _algorithm_for(registry: Any, algorithm: str | None, checkpoint: Any, meta: dict[str, Any],
                   options: dict[str, Any] | None) -> Any:
    """The algorithm to evaluate with the checkpoint's options: the one it was trained for,
    or ``algorithm`` when it shares that one's weights family (it then takes the trained
    options it knows, e.g. the backbone's, plus its own defaults)."""
    from bench.plugins import family_hint, same_weights

    trained_id, trained_opts = meta["algorithm"]["id"], dict(meta["algorithm"]["options"])
    if algorithm is None or algorithm == trained_id:
        return registry.create("algorithm", trained_id, {**trained_opts, **(options or {})})
    if not same_weights(registry, algorithm, trained_id):
        raise MrbenchError(f"Checkpoint {checkpoint} was trained for {trained_id!r}, not {algorithm!r}.",
                           f"Evaluate it as `mrbench evaluate {trained_id} ...`, or pass a checkpoint of {algorithm}"
                           + family_hint(registry, algorithm))
    known = registry.get("algorithm", algorithm).Options.model_fields
    return registry.create("algorithm", algorithm, {**{k: v for k, v in trained_opts.items() if k in known},
                                                    **(options or {})})


def _sanity(pl: _Plan, done: dict, n_sanity: int) -> tuple[dict[str, Any], list[str]]:
    """Sanity checks per attacked target (on the first ``n_sanity`` episodes, with the
    reference attacks the suite declares) plus eps monotonicity of the sweep."""
    refs = sanity_references(pl.suite.attacks, f"suite {pl.suite.ref}")
    metrics = {}
    for name in pl.names:
        vals = [done[(name, e)] for e in range(pl.n_episodes) if (name, e) in done]
        metrics[name] = {"accuracy": sum(c for c, _ in vals) / max(1, sum(t for _, t in vals))}
    out: dict[str, Any] = {}
    failures: list[str] = []
    sweep = SanityResult()
    monotone_in_eps(metrics, [sc for _, sc, _ in pl.attack_cells], sweep)
    if sweep.checks:
        out["sweep"] = sweep.checks
        failures += [f"sweep {f}" for f in sweep.failures]
    ids = torch.arange(min(n_sanity, pl.n_episodes))
    episodes = gather(pl.split, pl.manifest[ids].to(pl.dev))
    by_target: dict[str, Any] = {}
    poison: dict[str, tuple[str, tuple]] = {}  # target -> the evaluated poisoning ensemble, which the checks vet
    for _, sc, atk in pl.attack_cells:
        if atk.gradient_free:
            continue
        if sc.target != "query" and atk.id == refs.poison_ensemble:
            poison[sc.target] = (atk.id, sc.options)
            continue
        cur = by_target.get(sc.target)
        if cur is None or sc.eps > cur[0]:
            steps = int(getattr(atk.options, "steps", 20))
            by_target[sc.target] = (sc.eps, atk.norm, max(steps, 4))
    for _, sc, atk in pl.attack_cells:  # an evaluation of the ensemble alone: PGD-20 is its reference
        if sc.target in poison and sc.target not in by_target:
            by_target[sc.target] = (sc.eps, atk.norm, 20)
    for target, (eps, norm, steps) in sorted(by_target.items()):
        res = sanity_checks(pl.registry, pl.victim, episodes, eps=eps, norm=norm, target=target, steps=steps,
                            generator_seed=pl.suite.seed, poison=poison.get(target), refs=refs)
        out[target] = {"episodes": int(ids.numel()), "eps": eps, "norm": norm, "checks": res.checks}
        failures += [f"{target} {f}" for f in res.failures]
    return out, failures
