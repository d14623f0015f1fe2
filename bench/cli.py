"""The ``mrbench`` command line: a thin layer over the Python API.

It parses arguments, shows progress and writes files; everything else is
:func:`bench.train`, :func:`bench.evaluate` and the registry. Errors
that users can fix (:class:`bench.errors.MrbenchError`) print as one paragraph with
the fix and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from bench.errors import MrbenchError
from bench.protocol.scenarios import (
    ADVERSARIAL_TRAINING_TARGETS, AttackCell, ShiftCell, attacks_from_cli, parse_attack, parse_eps, parse_options,
    shifts_from_cli,
)

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One paragraph: what is wrong and where to look, no usage dump.
        self.exit(EXIT_USAGE, f"mrbench: error: {message}. Run `{self.prog} --help` for the options.\n")


PIPED_WIDTH = 1000
"""Console width when the output is not a terminal: wide enough that no table wraps an id
(rich would otherwise assume 80 columns and fold cells)."""


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # soft_wrap: never break a printed path across lines (people copy them). Piped or
    # redirected output gets no width limit, so tables keep one line per row (grep, awk).
    width = None if stream.isatty() else PIPED_WIDTH
    return Console(stderr=stderr, soft_wrap=True, width=width)


def _reporter(unit: str, quiet: bool):
    from bench.progress import NullReporter, RichReporter

    return NullReporter() if quiet else RichReporter(unit, console=_console(stderr=True))


def cmd_plugins(args: argparse.Namespace) -> int:
    from bench.plugins import get_registry, plugins_json, render_plugins

    registry = get_registry()
    if args.json:
        print(plugins_json(registry))
    else:
        render_plugins(_console(), registry)
    return 0


def cmd_attacks(args: argparse.Namespace) -> int:
    from bench.plugins import get_registry

    registry = get_registry()
    rows = []
    for attack_id in registry.ids("attack"):
        cls = registry.get("attack", attack_id)
        prov = cls.provenance
        rows.append({"id": attack_id, "norm": cls.norm, "targets": list(cls.targets),
                     "gradient_free": bool(cls.gradient_free), "min_way": int(cls.min_way),
                     "options": {k: {"default": f.default, "description": f.description}
                                 for k, f in cls.Options.model_fields.items()},
                     "distribution": prov.distribution if prov else None,
                     "summary": (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    from rich.table import Table

    table = Table(title="mrbench attacks (options: mrbench attacks --json)")
    for col in ("attack", "norm", "targets", "options (default)", "from"):
        table.add_column(col, overflow="fold")
    for r in rows:
        opts = ", ".join(f"{k}={v['default']}" for k, v in r["options"].items())
        extra = (" gradient-free" if r["gradient_free"] else "") + (f" n_way>={r['min_way']}" if r["min_way"] > 2 else "")
        table.add_row(r["id"], r["norm"] + extra, ",".join(r["targets"]), opts, r["distribution"] or "")
    _console().print(table)
    return 0


def _split_pair(text: str) -> tuple[str, str, str]:
    """``A,B`` split at its first comma outside ``[...]``, like ``str.partition``: attack
    options may hold commas (``pgd-margin[steps=100,restarts=5]@16/255:query``)."""
    depth = 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            return text[:i], ",", text[i + 1:]
    return text, "", ""


def cmd_results(args: argparse.Namespace) -> int:
    from bench.results.frame import (
        first_episodes, markdown_table, model_comparison, model_comparison_notes, paired_comparison, paired_notes,
    )

    if args.episodes is not None and args.episodes < 1:
        raise MrbenchError(f"--episodes must be at least 1, got {args.episodes}.")
    entries = args.entries if args.episodes is None else [first_episodes(p, args.episodes) for p in args.entries]
    notes: list[str] = []
    for pair in args.paired or ():
        a, sep, b = _split_pair(pair)
        if not sep or not a or not b:
            raise MrbenchError(f"--paired takes two scenario names separated by a comma, got {pair!r}.",
                               "E.g. --paired 'autoattack@16/255:query,pgd-linf@16/255:query'.")
        rows = paired_comparison(args.entries, a.strip(), b.strip(), args.episodes)
        if not rows:
            known = sorted({s for p in args.entries for s in json.loads(Path(p).read_text())["metrics"]})
            raise MrbenchError(f"No checkpoint among these entries has both {a.strip()!r} and {b.strip()!r}.",
                               f"Scenarios in these entries: {', '.join(known)}.")
        notes += paired_notes(rows)
    for pair in args.versus or ():
        a, sep, b = _split_pair(pair)
        if not sep or not a.strip() or not b.strip():
            raise MrbenchError(f"--versus takes two result entries separated by a comma, got {pair!r}.",
                               "E.g. --versus runs/protonet-adv.json,runs/protonet.json.")
        notes += model_comparison_notes(model_comparison(a.strip(), b.strip(), args.episodes))
    text = markdown_table(entries, sources=[Path(p).name for p in args.entries], extra_notes=notes)
    if args.out:
        Path(args.out).write_text(text)
        _console().print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import write_report

    rep = write_report(args.entries, args.out)
    c = _console()
    c.print(f"wrote {rep.markdown} ({', '.join(rep.sections) or 'no sections'})")
    for p in rep.plots:
        c.print(f"  plot: {p}")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from bench.grid import read_grid, run_grid

    grid = read_grid(args.grid)
    if args.out:
        from dataclasses import replace

        grid = replace(grid, out=Path(args.out).resolve())
    results = run_grid(grid, args.executor, address=args.address)
    from rich.table import Table

    table = Table("algorithm", "suite", "seed", "scenario", "accuracy (95% CI)", "cell")
    for r in results:
        table.add_row(r.algorithm, r.suite, str(r.seed), r.scenario,
                      f"{100 * r.accuracy:.2f}% +- {100 * r.ci95:.2f}", "cached" if r.cached else "ran")
    c = _console()
    c.print(table)
    c.print(f"{len(results)} cells; results under {grid.out} (table: {grid.out / 'grid.csv'})")
    return 0


def cmd_suites(args: argparse.Namespace) -> int:
    from bench.suites import all_suites

    suites = [s for k, s in sorted(all_suites().items()) if "@" in k]
    if args.json:
        print(json.dumps([{"id": s.id, "version": s.version, "description": s.description,
                           "spec": {"n_way": s.spec.n_way, "k_shot": s.spec.k_shot, "n_query": s.spec.n_query},
                           "n_episodes": s.n_episodes, "test_dataset": s.test.dataset,
                           "manifest_sha256": s.manifest_sha256} for s in suites], indent=2))
        return 0
    from rich.table import Table

    def data(ref) -> str:
        opts = " ".join(f"{k}={v}" for k, v in ref.options.items())
        return f"{ref.dataset}{' (' + opts + ')' if opts else ''} {ref.split}"

    table = Table(title="mrbench suites (descriptions: mrbench suites --json)")
    for col in ("suite", "episodes", "test data", "train data", "manifest"):
        table.add_column(col, overflow="fold")
    for s in suites:
        table.add_row(s.ref, f"{s.spec.n_way}-way {s.spec.k_shot}-shot, {s.spec.n_query} q/class, x{s.n_episodes}",
                      data(s.test), data(s.train), (s.manifest_sha256 or "(not pinned)")[:12])
    _console().print(table)
    return 0


def _train(args: argparse.Namespace, algorithm: str, suite: str, out: Path, steps: int | None):
    from bench.training import train

    adversary = None
    if getattr(args, "adv_train", None):
        from bench.plugins import get_registry
        from bench.training import Adversary

        attack_id, opts = parse_attack(args.adv_train)
        if args.adv_eps is None:
            raise MrbenchError("--adv-train needs --adv-eps.", "E.g. --adv-train pgd-linf[steps=7] --adv-eps 16/255.")
        adversary = Adversary(get_registry().create("attack", attack_id, dict(opts)), parse_eps(args.adv_eps),
                              args.adv_target)
    return train(algorithm, suite, out, steps=steps, seed=args.seed, options=parse_options(args.option),
                 meta_batch=args.meta_batch, lr=args.lr, device=args.device, data_root=args.data_root,
                 reporter=_reporter("steps", args.quiet), val_every=args.val_every, adversary=adversary,
                 init_from=getattr(args, "init_from", None))  # a file or zoo:<digest>


def _parse_shifts(specs: Sequence[str] | None, suite_id: str | None = None) -> list[ShiftCell]:
    """The ``--shift`` values (:func:`bench.protocol.scenarios.shifts_from_cli`); ``suite`` needs ``suite_id``."""
    if not specs:
        return []
    from bench.plugins import get_registry
    from bench.suites import get_suite

    return shifts_from_cli(specs, get_registry(), get_suite(suite_id) if "suite" in specs else None)


def _parse_attacks(args: argparse.Namespace, suite_id: str) -> list[AttackCell]:
    """``--attacks``, ``--eps`` and ``--target`` (:func:`bench.protocol.scenarios.attacks_from_cli`)."""
    if not getattr(args, "attacks", None):
        return []
    from bench.plugins import get_registry
    from bench.suites import get_suite

    return attacks_from_cli(args.attacks, args.eps, args.target, get_registry(), get_suite(suite_id))


def _evaluate(args: argparse.Namespace, algorithm: str | None, suite: str, ckpt: Path, out: Path, options=None,
              replace: bool = False):
    from bench.evaluation import evaluate

    return evaluate(algorithm, suite, ckpt, out=out, n_episodes=args.episodes, options=options,
                    device=args.device, data_root=args.data_root, reporter=_reporter("episodes", args.quiet),
                    shifts=_parse_shifts(getattr(args, "shift", None), suite), attacks=_parse_attacks(args, suite),
                    sanity=not getattr(args, "no_sanity", False),
                    sanity_episodes=getattr(args, "sanity_episodes", 10), on=getattr(args, "on", "test"),
                    shard=_shard(getattr(args, "shard", None)), replace=replace)


def _shard(text: str | None) -> tuple[int, int] | None:
    from bench.run.resume import parse_shard

    return None if text is None else parse_shard(text)


def _summary(entry: dict[str, Any]) -> str:
    lines = []
    for name, m in entry["metrics"].items():
        lines.append(f"{entry['algorithm']['id']} on {entry['suite']['id']}@v{entry['suite']['version']}: "
                     f"{name} accuracy {100 * m['accuracy']:.2f}% +- {100 * m['ci95']:.2f} "
                     f"(95% CI, {m['n_episodes']} episodes)")
    corr = (entry.get("summary") or {}).get("corruptions")
    if corr:
        lines.append(f"mean corruption accuracy {100 * corr['accuracy']:.2f}% +- {100 * corr['ci95']:.2f} over "
                     f"{corr['n_scenarios']} scenarios; relative degradation {100 * corr['relative_degradation']:.1f}%")
    if entry.get("transfer"):
        t = entry["transfer"]
        lines.append(f"transfer: trained on {t['trained_on']}, shifted in {', '.join(t['kinds'])}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    res = _train(args, args.algorithm, args.suite, Path(args.out), args.steps)
    c = _console()
    if res.already_done:
        c.print(f"{args.out} is already trained with these settings (sha256 {res.sha256[:16]}); nothing to do.")
    else:
        c.print(f"checkpoint: {res.checkpoint} (sha256 {res.sha256[:16]}, weights {res.meta['weights_sha256'][:16]}, "
                f"{res.meta['steps']} steps, "
                f"{res.meta['wall_time_s']:.0f} s{', resumed at step ' + str(res.resumed_from) if res.resumed_from else ''})")
    return 0


def _checkpoint_arg(text: str) -> Any:
    """``--checkpoint``: a file, or a zoo checkpoint ``zoo:<digest>``."""
    return text if text.startswith("zoo:") else Path(text)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.zoo:
        return _evaluate_zoo(args)
    missing = [flag for flag, value in (("ALGORITHM", args.algorithm), ("--suite", args.suite),
                                        ("--checkpoint", args.checkpoint), ("--out", args.out)) if not value]
    if missing:
        raise MrbenchError(f"mrbench evaluate needs {', '.join(missing)}.",
                           "Evaluate one checkpoint (`mrbench evaluate ALGO --suite S --checkpoint CKPT --out R.json`) "
                           "or every published model of a suite (`mrbench evaluate --zoo S --attacks A --out-dir DIR`).")
    before = Path(args.out).read_text() if Path(args.out).is_file() else None
    entry = _evaluate(args, args.algorithm, args.suite, _checkpoint_arg(args.checkpoint), Path(args.out),
                      options=parse_options(args.option) or None)
    c = _console()
    if entry is not None and before is not None and Path(args.out).read_text() == before:
        c.print(f"{args.out} already holds this evaluation's result; nothing to do (delete it to evaluate again).")
    if entry is None:
        c.print(f"shard {args.shard} done; other shards' episodes are still missing from the partial file next to "
                f"{args.out}. The shard that finishes last writes the result entry.")
        return 0
    c.print(_summary(entry))
    c.print(f"result entry: {args.out}  per-episode results: {Path(args.out).parent / entry['episodes_file']}")
    return 0


def _evaluate_zoo(args: argparse.Namespace) -> int:
    from bench.external import evaluate_zoo

    if args.checkpoint or args.algorithm or args.out:
        raise MrbenchError("--zoo evaluates every published model of a suite; it takes no ALGORITHM, --checkpoint or "
                           "--out.", "Pass --out-dir DIR for the result entries, one per model.")
    if not args.out_dir:
        raise MrbenchError("--zoo needs --out-dir DIR for the result entries (one per model).")
    c = _console()
    entries = evaluate_zoo(args.zoo, args.out_dir, attacks=_parse_attacks(args, args.zoo),
                           shifts=_parse_shifts(getattr(args, "shift", None), args.zoo), n_episodes=args.episodes,
                           device=args.device, data_root=args.data_root, reporter=_reporter("episodes", args.quiet),
                           sanity=not args.no_sanity, sanity_episodes=args.sanity_episodes, shard=_shard(args.shard),
                           on_model=lambda m: c.print(f"{m.label} (row {m.entry})"))
    for entry in entries:
        if entry is not None:
            c.print(_summary(entry))
    c.print(f"result entries in {args.out_dir}; copy them into the suite's entries/ folder to publish them as "
            "external evaluations (`mrbench leaderboard build && mrbench leaderboard check`).")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bench.suites import get_suite

    suite = get_suite(args.suite)
    out = Path(args.out) / f"{suite.id}-v{suite.version}-{args.algorithm}-seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    ckpt, result = out / "checkpoint.pt", out / "result.json"
    c = _console()
    c.print(f"[bold]mrbench run[/]: meta-train {args.algorithm} on {suite.ref} ({suite.train.dataset}), "
            f"then evaluate on its fixed test episodes")
    res = _train(args, args.algorithm, args.suite, ckpt, args.steps)
    # The run folder's result derives from its checkpoint: a finished one is reused, another one replaced.
    entry = _evaluate(args, args.algorithm, args.suite, ckpt, result, replace=True)
    c.print(_summary(entry))
    c.print(f"checkpoint:   {ckpt} (sha256 {res.sha256[:16]}, {res.meta['steps']} steps, {res.meta['wall_time_s']:.0f} s)")
    c.print(f"result entry: {result}")
    c.print(f"per-episode:  {out / entry['episodes_file']}")
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from bench.checkpoint import load_final, weights_sha256

    rows = []
    for path in args.checkpoints:
        params, meta, sha = load_final(Path(path))
        weights = weights_sha256(params)
        recorded = meta.get("weights_sha256")
        if recorded is not None and recorded != weights:
            raise MrbenchError(f"{path}: its tensors hash to {weights[:16]}, but it records weights_sha256 "
                               f"{recorded[:16]}.", "The file was altered after training; train it again.")
        rows.append({"file": str(path), "sha256": sha, "weights_sha256": weights,
                     "algorithm": meta.get("algorithm", {}).get("id"), "suite": meta.get("suite"),
                     "steps": meta.get("steps"), "seed": meta.get("seed"), "final_loss": meta.get("final_loss"),
                     "git_sha": meta.get("environment", {}).get("git_sha"),
                     "device": meta.get("environment", {}).get("device")})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['file']}: {r['algorithm']} on {r['suite']}, {r['steps']} steps, seed {r['seed']}, "
              f"final loss {r['final_loss']:.6g}, trained at {str(r['git_sha'])[:12]} on {r['device']}\n"
              f"  sha256  {r['sha256']}\n  weights {r['weights_sha256']}")
    if len(rows) > 1:
        same = len({r["weights_sha256"] for r in rows}) == 1
        print("same weights" if same else "different weights")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from bench import zoo

    if args.zoo_cmd == "publish":
        for path in args.checkpoints:
            record, new = zoo.publish(path, args.zoo_dir, urls=args.url or ())
            print(f"{path}: {'published' if new else 'already in the zoo'} as {record.weights_sha256} "
                  f"({record.size_bytes / 1e6:.2f} MB) in {record.sidecar.parent}")
        return 0
    if args.zoo_cmd == "get":
        record = zoo.find(args.ref)
        if args.out:
            print(zoo.export(record, args.out))
        else:
            print(zoo.fetch(record))
        return 0
    if args.zoo_cmd == "show":
        record = zoo.find(args.ref)
        print(json.dumps({**record.to_json(), "entries": [str(p) for p in _entries_of(record)]}, indent=2))
        return 0
    rows = _zoo_rows(args.suite)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"checkpoint zoo: {len(rows)} checkpoints, {zoo.total_size() / 1e6:.1f} MB on disk",
                  title_justify="left")
    for col in ("weights", "algorithm", "options", "trained on", "suite", "clean %", "best known %", "MB"):
        table.add_column(col, no_wrap=col not in ("options", "best known %"), overflow="fold")
    for r in rows:
        table.add_row(r["weights_sha256"][:12], r["algorithm"], r["options"], r["trained_on"] or "", r["suite"] or "",
                      r["clean"], r["best_known"], f"{r['size_bytes'] / 1e6:.2f}")
    _console().print(table)
    return 0


def _boards_or_warn() -> list[Any]:
    """The leaderboards, or none with a warning: the zoo is readable without valid leaderboards."""
    from bench.leaderboard import load_boards

    try:
        return load_boards()
    except MrbenchError as exc:
        _console(stderr=True).print(f"warning: leaderboards not read ({exc.message[:200]}...); showing the zoo "
                                    "records alone", highlight=False, markup=False)
        return []


def _entries_of(record: Any) -> list[Path]:
    return [e.path for b in _boards_or_warn() for e in b.live if e.weights == record.weights_sha256]


def _zoo_rows(suite: str | None) -> list[dict[str, Any]]:
    """One row per (checkpoint, leaderboard row), plus checkpoints no live entry uses."""
    from bench import zoo
    from bench.leaderboard import best_known, rank

    records = {r.weights_sha256: r for r in zoo.records()}
    used: set[str] = set()
    rows = []
    for board in _boards_or_warn():
        if suite and suite not in (board.suite.id, board.suite.ref):
            continue
        for r in rank(board):
            w = r.entry.weights
            rec = records.get(w or "")
            if rec is None:
                continue
            used.add(w)
            en = r.entry.entry
            nondefault = {k: v for k, v in en.algorithm.options.items() if k not in ("hidden", "bn") or v not in (64, "support")}
            best = best_known(r.entry)
            rows.append({"weights_sha256": w, "algorithm": en.algorithm.id, "options": json.dumps(nondefault),
                         "trained_on": rec.suite, "suite": board.suite.ref,
                         "clean": f"{100 * en.metrics['clean'].accuracy:.2f}",
                         "best_known": "; ".join(f"{cell}: {100 * b.accuracy:.2f} ({b.scenario.rsplit('@', 1)[0]}, "
                                                 f"{b.n_episodes} ep.)" for cell, b in sorted(best.items())),
                         "size_bytes": rec.size_bytes, "entry": r.entry.name})
    if not suite:
        for w, rec in records.items():
            if w not in used:
                rows.append({"weights_sha256": w, "algorithm": rec.algorithm,
                             "options": json.dumps(rec.meta.get("algorithm", {}).get("options", {})),
                             "trained_on": rec.suite, "suite": None, "clean": "", "best_known": "",
                             "size_bytes": rec.size_bytes, "entry": None})
    return rows


def cmd_verify(args: argparse.Namespace) -> int:
    from bench.verify import live_entries, verify_entry

    if args.all == bool(args.entries):
        raise MrbenchError("Name the entries to verify, or pass --all (every live entry of every leaderboard).")
    paths = live_entries(args.root) if args.all else [Path(p) for p in args.entries]
    k = None if args.all_episodes else args.episodes
    c = _console()
    failed = []
    for path in paths:
        res = verify_entry(path, episodes=k, seed=args.seed, device=args.device, data_root=args.data_root)
        c.print(res.line(), highlight=False, markup=False)
        if not res.ok:
            failed.append(res)
    c.print(f"verified {len(paths) - len(failed)} of {len(paths)} entries", highlight=False)
    if failed:
        errors = [r.error() for r in failed]
        raise MrbenchError(" ".join(e.message for e in errors), errors[0].hint)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_cmd == "download":
        from bench.data.download import download

        for p in download(args.name, args.data_root):
            print(p)
        return 0
    # check: decode every split of a dataset and print counts and revisions.
    from bench.plugins import get_registry

    registry = get_registry()
    ds = registry.create("dataset", args.name, parse_options(args.option))
    for split in ds.splits:
        s = ds.load(split, args.data_root)
        print(f"{args.name} {split}: {s.n_classes} classes, {s.images.shape[0]} images "
              f"{tuple(s.images.shape[1:])}, revision {s.revision}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from bench import leaderboard

    c = _console()
    if args.lb_cmd == "show":
        leaderboard.show(args.suite, args.root, console=c)
        return 0
    if args.lb_cmd == "withdraw":
        path = leaderboard.withdraw(args.suite, args.entries, args.reason, args.recreate or "", args.name, args.root)
        c.print(f"{leaderboard.display_path(path)} written: {len(args.entries)} entr{'y' if len(args.entries) == 1 else 'ies'} withdrawn; "
                "run `mrbench leaderboard build` and commit the notice with the tables", highlight=False)
        return 0
    if args.lb_cmd == "build":
        for line in leaderboard.build(args.root).lines():
            c.print(line, highlight=False)
        return 0
    summaries = leaderboard.check(args.root)
    for s in summaries:
        c.print(f"{s.line()}: entries valid, tables up to date", highlight=False)
    c.print(f"leaderboard check passed: {len(summaries)} leaderboard(s), "
            f"{sum(s.n_entries for s in summaries)} entries", highlight=False)
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from bench.scaffold import new_plugin

    target = new_plugin(args.name, args.dir, kind=args.kind)
    print(f"{args.kind} plugin distribution written to {target}; next: cd {target} && pip install -e . && pytest "
          "(see its README.md)")
    return 0


def _common_args(sp: argparse.ArgumentParser) -> None:
    """``--device``, ``--data-root`` and ``--quiet``."""
    sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: CUDA when present")
    sp.add_argument("--data-root", default=None, help="dataset root (default: $MRBENCH_DATA)")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")


def _training_args(sp: argparse.ArgumentParser) -> None:
    """The training options shared by ``train`` and ``run``."""
    sp.add_argument("--seed", type=int, default=0, help="training seed: initial weights and episodes (default 0)")
    sp.add_argument("--meta-batch", type=int, default=None, help="episodes per step (default: the algorithm's)")
    sp.add_argument("--lr", type=float, default=None, help="outer Adam learning rate (default: the algorithm's)")
    sp.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="algorithm option (repeatable)")
    sp.add_argument("--val-every", type=int, default=0, metavar="N",
                    help="log meta-val accuracy every N steps to CKPT.log.jsonl (default: never)")


def _add_plugins(sub: Any) -> None:
    sp = sub.add_parser("plugins", help="list plugins, their distributions and components")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_plugins)


def _add_suites(sub: Any) -> None:
    sp = sub.add_parser("suites", help="list the versioned evaluation suites")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_suites)


def _add_train(sub: Any) -> None:
    sp = sub.add_parser("train", help="meta-train an algorithm on a suite's meta-train split")
    sp.add_argument("algorithm", help="algorithm id (`mrbench plugins` lists them)")
    sp.add_argument("--suite", required=True, help="suite id, or id@vN (`mrbench suites` lists them)")
    sp.add_argument("--steps", type=int, default=None, help="outer steps (default: the algorithm's)")
    sp.add_argument("--out", required=True, help="checkpoint path (rerun the same command to resume)")
    sp.add_argument("--adv-train", default=None, metavar="ATTACK[opts]",
                    help="adversarial meta-training: attack every training batch, e.g. pgd-linf[steps=7]")
    sp.add_argument("--adv-eps", default=None, metavar="EPS", help="its budget, e.g. 16/255")
    sp.add_argument("--adv-target", default="query", choices=ADVERSARIAL_TRAINING_TARGETS,
                    help="query = adversarial querying (default); support = poisoned support sets")
    sp.add_argument("--init-from", default=None, metavar="CKPT",
                    help="start from this checkpoint's weights (e.g. adversarial fine-tuning of a natural model)")
    _training_args(sp)
    _common_args(sp)
    sp.set_defaults(func=cmd_train)


def _add_evaluate(sub: Any) -> None:
    sp = sub.add_parser("evaluate", help="evaluate a checkpoint (or every published model of a suite) on a suite's "
                        "fixed test episodes")
    sp.add_argument("algorithm", nargs="?", default=None, help="the checkpoint's algorithm id")
    sp.add_argument("--suite", default=None)
    sp.add_argument("--checkpoint", default=None, help="a checkpoint file, or a published one: zoo:<weights digest>")
    sp.add_argument("--out", default=None, help="result entry JSON (rerun the same command to resume)")
    sp.add_argument("--zoo", default=None, metavar="SUITE",
                    help="evaluate the attacks (or shifts) against every published model of SUITE's leaderboard "
                         "(external evaluations), one result entry per model in --out-dir")
    sp.add_argument("--out-dir", default=None, metavar="DIR", help="with --zoo: the folder for the result entries")
    sp.add_argument("--episodes", type=int, default=None, help="only the first N of the suite's episodes")
    sp.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="override an algorithm option")
    sp.add_argument("--shift", action="append", metavar="ID[:SEVERITY]|suite",
                    help="also evaluate under a shift on the same episodes (repeatable; a bare ID runs every "
                         "severity; 'suite' = the suite's shift grid)")
    sp.add_argument("--on", choices=["test", "train"], default="test",
                    help="test: the suite's episodes (default); train: as many episodes of the suite's spec from "
                         "the meta-training classes (the meta-train vs meta-test gap; not a leaderboard entry)")
    _attack_args(sp)
    sp.add_argument("--shard", default=None, metavar="K/N",
                    help="split a long evaluation over N processes (or machines sharing the --out folder): run the "
                         "same command with --shard 0/N ... N-1/N; results equal an unsharded run's, and the last "
                         "shard to finish writes the entry")
    _common_args(sp)
    sp.set_defaults(func=cmd_evaluate)


def _attack_args(sp: argparse.ArgumentParser) -> None:
    """``evaluate``'s attack grid and sanity-check options."""
    sp.add_argument("--attacks", default=None, metavar="A[,B...]|suite",
                    help="attacks to run (ID or ID[key=value,...]); 'suite' = the suite's default grid")
    sp.add_argument("--eps", default=None, metavar="E[,E...]", help="attack budgets, e.g. 4/255,8/255,16/255 "
                    "(default: the suite's)")
    sp.add_argument("--target", default=None, metavar="T[,T...]",
                    help="query (evasion), support (poisoning through adaptation), both (default: the suite's)")
    sp.add_argument("--no-sanity", action="store_true", help="skip the attack-strength sanity checks")
    sp.add_argument("--sanity-episodes", type=int, default=10, metavar="N",
                    help="episodes the sanity checks attack (default 10)")


def _add_report(sub: Any) -> None:
    sp = sub.add_parser("report", help="generalization report: Markdown summary and PNG plots of result entries")
    sp.add_argument("entries", nargs="+", metavar="RESULT.json")
    sp.add_argument("--out", required=True, metavar="DIR", help="folder for report.md and the plots")
    sp.set_defaults(func=cmd_report)


def _add_grid(sub: Any) -> None:
    sp = sub.add_parser("grid", help="run an algorithm x suite x seed x scenario grid (local or Ray)")
    sp.add_argument("grid", metavar="GRID.toml")
    sp.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="local: cells in turn in this process; ray: one task per cell (pip install 'mrbench[ray]')")
    sp.add_argument("--address", default=None, help="a running Ray cluster (default: start a local one)")
    sp.add_argument("--out", default=None, help="results folder (default: the grid file's `out`)")
    sp.set_defaults(func=cmd_grid)


def _add_results(sub: Any) -> None:
    sp = sub.add_parser("results", help="a Markdown table (scenario x entry) of result entries")
    sp.add_argument("entries", nargs="+", metavar="RESULT.json")
    sp.add_argument("--out", default=None, help="write the table to this file (default: print it)")
    sp.add_argument("--episodes", type=int, default=None, metavar="N",
                    help="compare on the suite's first N episodes only, recomputed from each entry's "
                         "per-episode file (e.g. against an ensemble run on a declared subset)")
    sp.add_argument("--paired", action="append", metavar="A,B",
                    help="compare scenario A with scenario B episode by episode for every checkpoint that has both "
                         "(in one entry or two): episodes lower/equal/higher and the mean difference with a paired "
                         "95%% CI, under the table; repeatable")
    sp.add_argument("--versus", action="append", metavar="A.json,B.json",
                    help="compare entry A with entry B (two models of one suite, e.g. adversarially trained vs "
                         "natural) on every scenario both measured, episode by episode: lower/equal/higher, the "
                         "mean difference with a paired 95%% CI and the paired t-test's p, under the table; "
                         "repeatable")
    sp.set_defaults(func=cmd_results)


def _add_attacks(sub: Any) -> None:
    sp = sub.add_parser("attacks", help="list the attacks, their norms, targets and options")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_attacks)


def _add_run(sub: Any) -> None:
    sp = sub.add_parser("run", help="the main job: train and evaluate (default: protonet on built-in glyphs)")
    sp.add_argument("--algorithm", default="protonet", help="algorithm id (default: protonet)")
    sp.add_argument("--suite", default="glyphs-5w1s", help="suite id, or id@vN (default: glyphs-5w1s, no files needed)")
    sp.add_argument("--steps", type=int, default=300, help="outer training steps (default 300)")
    sp.add_argument("--episodes", type=int, default=None,
                    help="evaluate on the suite's first N episodes only (default: all; not a leaderboard entry)")
    sp.add_argument("--out", default="mrbench-runs", help="output folder (default: ./mrbench-runs)")
    _training_args(sp)
    _common_args(sp)
    sp.set_defaults(func=cmd_run)


def _add_checkpoint(sub: Any) -> None:
    sp = sub.add_parser("checkpoint", help="print checkpoints' file sha256 and weights sha256 (compare training runs)")
    sp.add_argument("checkpoints", nargs="+", metavar="CKPT.pt")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.set_defaults(func=cmd_checkpoint)


def _add_zoo(sub: Any) -> None:
    sp = sub.add_parser("zoo", help="the checkpoint zoo: published models, by weights digest")
    zsub = sp.add_subparsers(dest="zoo_cmd", required=True, parser_class=_Parser)
    d = zsub.add_parser("list", help="published checkpoints: algorithm, options, suite, clean and best-known robust "
                        "accuracy, size")
    d.add_argument("--suite", default=None, help="only the models of this suite's leaderboard")
    d.add_argument("--json", action="store_true")
    d = zsub.add_parser("show", help="a checkpoint's record (training recipe, provenance) and the entries using it")
    d.add_argument("ref", metavar="DIGEST", help="weights digest or a prefix (>= 8 hex digits)")
    d = zsub.add_parser("get", help="fetch a checkpoint (zoo folder, cache, or its URL) and print its path")
    d.add_argument("ref", metavar="DIGEST")
    d.add_argument("--out", default=None, metavar="CKPT.pt", help="also write it as an ordinary checkpoint file")
    d = zsub.add_parser("publish", help="add trained checkpoints to the zoo (safetensors + JSON record)")
    d.add_argument("checkpoints", nargs="+", metavar="CKPT.pt")
    d.add_argument("--zoo-dir", default=None, help="zoo folder (default: the repository's leaderboards/zoo)")
    d.add_argument("--url", action="append", metavar="URL", help="where the tensors file will also be downloadable")
    sp.set_defaults(func=cmd_zoo)


def _add_verify(sub: Any) -> None:
    sp = sub.add_parser("verify", help="re-run entries' episodes from their zoo checkpoints and compare them with the "
                        "published per-episode results")
    sp.add_argument("entries", nargs="*", metavar="ENTRY.json")
    sp.add_argument("--all", action="store_true", help="every live entry of every leaderboard")
    sp.add_argument("--episodes", type=int, default=3, metavar="K", help="episodes per entry, drawn with --seed "
                    "(default 3)")
    sp.add_argument("--all-episodes", action="store_true", help="every episode of each entry")
    sp.add_argument("--seed", type=int, default=0, help="which episodes are drawn (default 0)")
    sp.add_argument("--root", default=None, help="leaderboards folder (default: the repository's)")
    _common_args(sp)
    sp.set_defaults(func=cmd_verify)


def _add_data(sub: Any) -> None:
    sp = sub.add_parser("data", help="dataset archives: download or check")
    dsub = sp.add_subparsers(dest="data_cmd", required=True, parser_class=_Parser)
    d = dsub.add_parser("download", help="fetch the official archives (needs internet)")
    d.add_argument("name")
    d.add_argument("--data-root", default=None)
    d = dsub.add_parser("check", help="decode every split of a dataset and print counts and revisions")
    d.add_argument("name")
    d.add_argument("--data-root", default=None)
    d.add_argument("-o", "--option", action="append", metavar="KEY=VALUE")
    sp.set_defaults(func=cmd_data)


def _add_leaderboard(sub: Any) -> None:
    sp = sub.add_parser("leaderboard", help="generate, check or show the leaderboard tables")
    lsub = sp.add_subparsers(dest="lb_cmd", required=True, parser_class=_Parser)
    root_help = "leaderboards folder (default: $MRBENCH_SUITES folders, then the repository's leaderboards/)"
    d = lsub.add_parser("build", help="regenerate table.csv, table.md and table.html of every suite version "
                       "with entries, and the index.html linking the pages")
    d.add_argument("--root", default=None, help=root_help)
    d = lsub.add_parser("check", help="fail on an invalid entry, a suite or hash mismatch, or a stale table or page")
    d.add_argument("--root", default=None, help=root_help)
    d = lsub.add_parser("withdraw", help="take entries whose numbers can no longer be re-checked (a lost checkpoint) "
                       "out of the table, with a reason, by an append-only notice in withdrawals/")
    d.add_argument("suite", help="suite id or id@vN")
    d.add_argument("entries", nargs="+", help="entry file names (entries/NAME.json)")
    d.add_argument("--reason", required=True, help="why the numbers no longer stand")
    d.add_argument("--recreate", default=None, help="the commands that would re-create them")
    d.add_argument("--name", default=None, help="notice file name without .json (default: the UTC time)")
    d.add_argument("--root", default=None, help=root_help)
    d = lsub.add_parser("show", help="print a leaderboard in the terminal")
    d.add_argument("suite", nargs="?", default=None, help="suite id or id@vN (default: every leaderboard)")
    d.add_argument("--root", default=None, help=root_help)
    sp.set_defaults(func=cmd_leaderboard)


def _add_new_plugin(sub: Any) -> None:
    sp = sub.add_parser("new-plugin", help="generate a plugin distribution (entry point, working skeleton, contract "
                        "tests) for an algorithm, attack, shift or dataset")
    sp.add_argument("name", help="distribution name, kebab-case, e.g. mrbench-myalgo (the component id drops 'mrbench-')")
    sp.add_argument("--kind", default="algorithm", choices=["algorithm", "attack", "shift", "dataset"],
                    help="the component it registers (default: algorithm)")
    sp.add_argument("--dir", default=".", help="parent folder (default: the current one)")
    sp.set_defaults(func=cmd_new_plugin)


SUBCOMMANDS = (_add_plugins, _add_suites, _add_train, _add_evaluate, _add_report, _add_grid, _add_results,
               _add_attacks, _add_run, _add_checkpoint, _add_zoo, _add_verify, _add_data, _add_leaderboard,
               _add_new_plugin)
"""The subcommands in ``mrbench --help`` order: each function adds one subparser and its
``cmd_*`` handler."""


def build_parser() -> argparse.ArgumentParser:
    """The ``mrbench`` argument parser: one subparser per entry of :data:`SUBCOMMANDS`."""
    from bench import __version__

    p = _Parser(prog="mrbench", description="Robustness benchmark suite for few-shot meta-learning.")
    p.add_argument("--version", action="version", version=f"mrbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in SUBCOMMANDS:
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MrbenchError as exc:
        from rich.markup import escape

        _console(stderr=True).print(f"[bold red]mrbench: error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mrbench: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
