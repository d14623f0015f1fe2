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

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One paragraph: what is wrong and where to look, no usage dump.
        self.exit(EXIT_USAGE, f"mrbench: error: {message}. Run `{self.prog} --help` for the options.\n")


def _parse_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse (numbers, booleans), else strings."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise MrbenchError(f"Option {pair!r} is not of the form key=value.", "Write e.g. `-o inner_lr=0.5`.")
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _console(stderr: bool = False):
    from rich.console import Console

    # soft_wrap: never break a printed path across lines (people copy them).
    return Console(stderr=stderr, soft_wrap=True)


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

    return train(algorithm, suite, out, steps=steps, seed=args.seed, options=_parse_options(args.option),
                 meta_batch=args.meta_batch, lr=args.lr, device=args.device, data_root=args.data_root,
                 reporter=_reporter("steps", args.quiet), val_every=args.val_every)


def _parse_shifts(specs: Sequence[str] | None) -> list[tuple[str, int]]:
    """``ID:SEVERITY`` -> one scenario; a bare ``ID`` -> every severity of that shift."""
    if not specs:
        return []
    from bench.plugins import get_registry

    registry = get_registry()
    out: list[tuple[str, int]] = []
    for spec in specs:
        shift_id, _, sev = spec.partition(":")
        cls = registry.get("shift", shift_id)
        if not sev:
            out += [(shift_id, s) for s in cls.severities]
            continue
        try:
            out.append((shift_id, int(sev)))
        except ValueError:
            raise MrbenchError(f"--shift {spec!r}: severity {sev!r} is not an integer.",
                               "Write ID:SEVERITY, e.g. --shift gaussian-noise:3, or a bare ID for every severity.") from None
    return out


def _evaluate(args: argparse.Namespace, algorithm: str | None, suite: str, ckpt: Path, out: Path, options=None):
    from bench.evaluation import evaluate

    return evaluate(algorithm, suite, ckpt, out=out, n_episodes=args.episodes, options=options,
                    device=args.device, data_root=args.data_root, reporter=_reporter("episodes", args.quiet),
                    shifts=_parse_shifts(getattr(args, "shift", None)))


def _summary(entry: dict[str, Any]) -> str:
    lines = []
    for name, m in entry["metrics"].items():
        lines.append(f"{entry['algorithm']['id']} on {entry['suite']['id']}@v{entry['suite']['version']}: "
                     f"{name} accuracy {100 * m['accuracy']:.2f}% +- {100 * m['ci95']:.2f} "
                     f"(95% CI, {m['n_episodes']} episodes)")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    res = _train(args, args.algorithm, args.suite, Path(args.out), args.steps)
    c = _console()
    if res.already_done:
        c.print(f"{args.out} is already trained with these settings (sha256 {res.sha256[:16]}); nothing to do.")
    else:
        c.print(f"checkpoint: {res.checkpoint} (sha256 {res.sha256[:16]}, {res.meta['steps']} steps, "
                f"{res.meta['wall_time_s']:.0f} s{', resumed at step ' + str(res.resumed_from) if res.resumed_from else ''})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    entry = _evaluate(args, args.algorithm, args.suite, Path(args.checkpoint), Path(args.out),
                      options=_parse_options(args.option) or None)
    c = _console()
    c.print(_summary(entry))
    c.print(f"result entry: {args.out}  per-episode results: {Path(args.out).parent / entry['episodes_file']}")
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
    entry = _evaluate(args, args.algorithm, args.suite, ckpt, result)
    c.print(_summary(entry))
    c.print(f"checkpoint:   {ckpt} (sha256 {res.sha256[:16]}, {res.meta['steps']} steps, {res.meta['wall_time_s']:.0f} s)")
    c.print(f"result entry: {result}")
    c.print(f"per-episode:  {out / entry['episodes_file']}")
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
    ds = registry.create("dataset", args.name, _parse_options(args.option))
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
    if args.lb_cmd == "build":
        for s in leaderboard.build(args.root):
            what = ", ".join(p.name for p in s.written) + " written" if s.written else "tables unchanged"
            c.print(f"{s.line()}: {what}", highlight=False)
        return 0
    summaries = leaderboard.check(args.root)
    for s in summaries:
        c.print(f"{s.line()}: entries valid, tables up to date", highlight=False)
    c.print(f"leaderboard check passed: {len(summaries)} leaderboard(s), "
            f"{sum(s.n_entries for s in summaries)} entries", highlight=False)
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from bench.scaffold import new_plugin

    target = new_plugin(args.name, args.dir)
    print(f"plugin distribution written to {target}; next: cd {target} && pip install -e . && pytest "
          "(see its README.md)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from bench import __version__

    p = _Parser(prog="mrbench", description="Robustness benchmark suite for few-shot meta-learning.")
    p.add_argument("--version", action="version", version=f"mrbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: CUDA when present")
        sp.add_argument("--data-root", default=None, help="dataset root (default: $MRBENCH_DATA)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    def training(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--meta-batch", type=int, default=None, help="episodes per step (default: the algorithm's)")
        sp.add_argument("--lr", type=float, default=None, help="outer Adam learning rate (default: the algorithm's)")
        sp.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="algorithm option (repeatable)")
        sp.add_argument("--val-every", type=int, default=0, metavar="N",
                        help="log meta-val accuracy every N steps to CKPT.log.jsonl (default: never)")

    sp = sub.add_parser("plugins", help="list plugins, their distributions and components")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_plugins)

    sp = sub.add_parser("suites", help="list the versioned evaluation suites")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_suites)

    sp = sub.add_parser("train", help="meta-train an algorithm on a suite's meta-train split")
    sp.add_argument("algorithm")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--steps", type=int, default=None, help="outer steps (default: the algorithm's)")
    sp.add_argument("--out", required=True, help="checkpoint path (rerun the same command to resume)")
    training(sp)
    common(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="evaluate a checkpoint on a suite's fixed test episodes")
    sp.add_argument("algorithm")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--out", required=True, help="result entry JSON (rerun the same command to resume)")
    sp.add_argument("--episodes", type=int, default=None, help="only the first N of the suite's episodes")
    sp.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="override an algorithm option")
    sp.add_argument("--shift", action="append", metavar="ID[:SEVERITY]",
                    help="also evaluate under a shift on the same episodes (repeatable; a bare ID runs every severity)")
    common(sp)
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("run", help="the main job: train and evaluate (default: protonet on built-in glyphs)")
    sp.add_argument("--algorithm", default="protonet")
    sp.add_argument("--suite", default="glyphs-5w1s")
    sp.add_argument("--steps", type=int, default=300)
    sp.add_argument("--episodes", type=int, default=None)
    sp.add_argument("--out", default="mrbench-runs", help="output folder (default: ./mrbench-runs)")
    training(sp)
    common(sp)
    sp.set_defaults(func=cmd_run)

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

    sp = sub.add_parser("leaderboard", help="generate, check or show the leaderboard tables")
    lsub = sp.add_subparsers(dest="lb_cmd", required=True, parser_class=_Parser)
    root_help = "leaderboards folder (default: $MRBENCH_SUITES folders, then the repository's leaderboards/)"
    d = lsub.add_parser("build", help="regenerate table.csv and table.md of every suite version with entries")
    d.add_argument("--root", default=None, help=root_help)
    d = lsub.add_parser("check", help="fail on an invalid entry, a suite or hash mismatch, or a stale table")
    d.add_argument("--root", default=None, help=root_help)
    d = lsub.add_parser("show", help="print a leaderboard in the terminal")
    d.add_argument("suite", nargs="?", default=None, help="suite id or id@vN (default: every leaderboard)")
    d.add_argument("--root", default=None, help=root_help)
    sp.set_defaults(func=cmd_leaderboard)

    sp = sub.add_parser("new-plugin", help="generate an algorithm plugin distribution (entry point, skeleton, tests)")
    sp.add_argument("name", help="distribution name, kebab-case, e.g. mrbench-myalgo")
    sp.add_argument("--dir", default=".", help="parent folder (default: the current one)")
    sp.set_defaults(func=cmd_new_plugin)
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
