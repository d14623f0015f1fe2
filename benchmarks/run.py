"""Run the throughput benchmarks and write their report.

    python -m benchmarks.run [--device auto|cpu|cuda] [--quick] [--rounds N] [--passes N]
                             [--threads N] [--name NAME] [--out DIR] [-k EXPR]

Runs the benchmark files (:data:`FILES`) under pytest-benchmark (the FLOP counter's and
the same-computation checks first, then every timed case, each with its FLOPs counted
once, untimed) and renders ``<out>/<name>.md`` with a copy of
the JSON next to it (``benchmarks/report.py``). ``<name>`` defaults to the device type
(``cpu``, ``cuda``), with ``-quick`` appended for a smoke run. Exits with pytest's
status; the report is written for whatever cases ran.

``--passes N`` runs pytest N times, alternately in forward and reverse case order
(``--bench-reverse``), each pass with ``--rounds`` timed rounds per case (default 1
then), and merges the passes into one report with paired ratios
(``benchmarks.report.merge_passes``): the way to measure on a machine whose speed
drifts while a run goes on. The passes share one file of FLOP counts, so only the first
pays for counting.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report import DEFAULT_OUT, write_merged_report, write_report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


FILES = ("test_flops.py", "test_throughput.py", "test_attack_throughput.py", "test_zoo_eval.py")
"""The benchmark files, in run order: the FLOP counter's own checks first."""


def pytest_command(args: argparse.Namespace, json_path: Path, reverse: bool = False,
                   flops_cache: Path | None = None) -> list[str]:
    """The pytest invocation for ``args`` writing its results to ``json_path`` (``reverse``: cases
    in reverse order; ``flops_cache``: the FLOP counts shared by the passes of the run)."""
    cmd = [sys.executable, "-m", "pytest", *(str(HERE / f) for f in FILES),
           f"--benchmark-json={json_path}", "--benchmark-columns=median,min,max,rounds",
           "--benchmark-group-by=group", "--bench-device", args.device]
    if flops_cache is not None:
        cmd += ["--bench-flops-cache", str(flops_cache)]
    if args.quick:
        cmd.append("--bench-quick")
    if reverse:
        cmd.append("--bench-reverse")
    rounds = args.rounds if args.rounds is not None else (1 if getattr(args, "passes", 1) > 1 else None)
    if rounds is not None:
        cmd += ["--bench-rounds", str(rounds)]
    if args.threads is not None:
        cmd += ["--bench-threads", str(args.threads)]
    if args.k:
        cmd += ["-k", args.k]
    return cmd


def default_name(json_path: Path, quick: bool) -> str:
    """``cpu`` / ``cuda`` (``-quick`` for a smoke run) from the device the run recorded."""
    device = json.loads(json_path.read_text()).get("machine_info", {}).get("mrbench", {}).get("device", "unknown")
    return device.split(":")[0] + ("-quick" if quick else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run (default auto: CUDA when present)")
    p.add_argument("--quick", action="store_true", help="one timed round per case: a smoke run, not a measurement")
    p.add_argument("--rounds", type=int, help="timed rounds per case (default 3; with --passes, 1 per pass)")
    p.add_argument("--passes", type=int, default=1,
                   help="passes over the cases, alternately forward and reverse, merged with paired ratios (default 1)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--name", help="report name (default: the device type, plus -quick)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report folder (default: benchmarks/results)")
    p.add_argument("-k", help="only the cases pytest's -k expression selects, e.g. 'eval and protonet'")
    args = p.parse_args(argv)
    if args.passes < 1:
        p.error(f"--passes must be >= 1, got {args.passes}")

    with tempfile.TemporaryDirectory(prefix="mrbench-bench-") as tmp:
        rc, written = 0, []
        for i in range(args.passes):
            json_path = Path(tmp) / f"pass-{i}.json"
            cmd = pytest_command(args, json_path, reverse=i % 2 == 1, flops_cache=Path(tmp) / "flops.json")
            print(f"+ [pass {i + 1}/{args.passes}] " + " ".join(cmd), flush=True)
            rc = subprocess.call(cmd, cwd=ROOT) or rc
            if json_path.is_file():
                written.append(json_path)
        if not written:
            print("pytest wrote no benchmark JSON; no report.", file=sys.stderr)
            return rc or 1
        if len(written) < args.passes:
            print(f"only {len(written)} of {args.passes} passes wrote a benchmark JSON; the report merges those.",
                  file=sys.stderr)
        name = args.name or default_name(written[0], args.quick)
        if args.passes == 1:
            json_out, md_out = write_report(written[0], name, args.out)
        else:
            json_out, md_out = write_merged_report(written, name, args.out)
    print(f"report: {md_out}\ndata:   {json_out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
