"""Render a pytest-benchmark JSON of ``benchmarks/test_throughput.py`` as a Markdown report.

    python -m benchmarks.report RUN.json [PASS2.json ...] [--name NAME] [--out benchmarks/results]

writes ``<out>/<name>.json`` (a copy of the input) and ``<out>/<name>.md``: the
machine, a summary, and per group (one computation) a row per case (mrbench
variants, peer libraries, references, ceilings) with the median / min / max seconds
per call, the rate, images/s, the FLOPs of a call and the achieved GFLOP/s, the ratio
to the fastest peer library's and the fastest reference's rate, the fraction of the
ceiling's GFLOP/s (of its images/s for a JSON without FLOP counts), and the peak
memory. Every number comes from the JSON.

A run of several passes (``python -m benchmarks.run --passes N``) is first merged
into one JSON (:func:`merge_passes`): each case's timings pooled over the passes,
and its median per pass kept in ``extra_info["pass_medians"]``. The report then
also gives **paired** ratios: the ratio of two cases within each pass (the cases
ran minutes apart, and alternate passes run them in reverse order), summarised by
its median and range over the passes. On a machine whose speed drifts, the paired
ratio is the one to quote.

Uses the standard library only, so it runs anywhere the JSON is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("mrbench", "peer", "reference", "ceiling")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
BAR_CEILING = 0.8
"""The bar of the performance issue: a path reaches this fraction of the ceiling's GFLOP/s."""
BAR_PEER = 1.0
"""... is at least this fast as the fastest peer library (training, attacks) ..."""
BAR_PEER_EVAL = 1.2
"""... and this fast in evaluation (groups whose kind starts with ``eval``)."""


@dataclass(frozen=True)
class Row:
    """One timed case, with its rates derived from the median time per call."""

    group: str
    role: str
    variant: str
    median: float
    min: float
    max: float
    rounds: int
    unit: str
    units_per_call: int
    images_per_call: int
    info: dict[str, Any]

    @property
    def pass_medians(self) -> tuple[float, ...]:
        """The case's median seconds per call in each pass of a merged run (empty otherwise)."""
        return tuple(float(x) for x in self.info.get("pass_medians") or ())

    @property
    def rate(self) -> float:
        """Units (steps or episodes) per second."""
        return self.units_per_call / self.median

    @property
    def images_per_s(self) -> float:
        return self.images_per_call / self.median

    @property
    def flops(self) -> int | None:
        """FLOPs of one call (``benchmarks/flops.py``), if the JSON has them."""
        f = self.info.get("flops")
        return int(f) if f else None

    @property
    def gflops_per_s(self) -> float:
        """Achieved GFLOP/s from the median (0 without a FLOP count)."""
        return self.flops / self.median / 1e9 if self.flops else 0.0


def rows_of(data: dict[str, Any]) -> list[Row]:
    """The cases of a pytest-benchmark JSON that carry this suite's ``extra_info``."""
    out = []
    for b in data.get("benchmarks", []):
        info, stats = b.get("extra_info") or {}, b.get("stats") or {}
        if info.get("role") not in ROLES or not stats.get("median"):
            continue
        out.append(Row(
            group=b.get("group") or f"{info.get('kind')} {info.get('algorithm')}",
            role=info["role"], variant=str(info.get("variant", "")),
            median=float(stats["median"]), min=float(stats["min"]), max=float(stats["max"]),
            rounds=int(stats.get("rounds", 0)), unit=str(info.get("unit", "call")),
            units_per_call=int(info.get("units_per_call", 1)), images_per_call=int(info.get("images_per_call", 0)),
            info=info,
        ))
    return out


def _num(x: float | None, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits, without exponent for everyday magnitudes."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 else f"{x:.2e}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _paired(x: tuple[float, float, float] | None, unit: str = "x") -> str:
    return "-" if x is None else f"{x[0]:.2f}{unit} ({x[1]:.2f}-{x[2]:.2f})"


def _frac(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _mb(x: Any) -> str:
    return "-" if x is None else f"{float(x):,.0f}"


@dataclass(frozen=True)
class Group:
    """The rows of one computation and its references."""

    name: str
    rows: list[Row]

    def best(self, role: str, key: str = "rate") -> Row | None:
        cands = [r for r in self.rows if r.role == role]
        return max(cands, key=lambda r: getattr(r, key)) if cands else None

    @property
    def by_flops(self) -> bool:
        """Whether the ceiling comparison is by GFLOP/s (every row has a FLOP count) or,
        for a JSON without counts, by images/s."""
        return bool(self.rows) and all(r.flops for r in self.rows)

    @property
    def ceiling(self) -> Row | None:
        """The fastest ceiling case: by GFLOP/s when :attr:`by_flops`, else by images/s."""
        return self.best("ceiling", "gflops_per_s" if self.by_flops else "images_per_s")

    def vs(self, row: Row, role: str) -> float | None:
        """``row``'s rate over the fastest ``role`` case's (``peer`` or ``reference``; > 1: faster)."""
        ref = self.best(role)
        return row.rate / ref.rate if ref is not None and row.role not in ("ceiling",) else None

    def vs_peer(self, row: Row) -> float | None:
        """``row``'s rate over the fastest peer library's (> 1: faster than every peer)."""
        return self.vs(row, "peer")

    def vs_ceiling(self, row: Row) -> float | None:
        """``row``'s GFLOP/s (images/s without FLOP counts) as a fraction of the ceiling's."""
        ceiling = self.ceiling
        if ceiling is None:
            return None
        if self.by_flops:
            return row.gflops_per_s / ceiling.gflops_per_s
        return row.images_per_s / ceiling.images_per_s if row.images_per_call else None

    def paired(self, row: Row, role: str) -> tuple[float, float, float] | None:
        """Median, min and max over the passes of ``row``'s per-pass ratio to the best ``role`` case.

        ``peer``, ``reference``: rate over rate (as :meth:`vs`); ``ceiling``: GFLOP/s over
        GFLOP/s, or images/s over images/s (as :meth:`vs_ceiling`). The reference case is the
        best one on the pooled timings, fixed for every pass, so that no per-pass maximum is
        picked. ``None`` unless both cases have a median in each of the same two or more passes.
        """
        if role == "ceiling":
            ref = self.ceiling
            if ref is None or not row.images_per_call:
                return None
            if self.by_flops:
                per_call_ref, per_call_row = ref.flops, row.flops
            else:
                per_call_ref, per_call_row = ref.images_per_call, row.images_per_call
        else:
            ref = self.best(role)
            if ref is None or row.role == "ceiling":
                return None
            per_call_ref, per_call_row = ref.units_per_call, row.units_per_call
        a, b = row.pass_medians, ref.pass_medians
        if len(a) < 2 or len(a) != len(b):
            return None
        ratios = [(per_call_row / x) / (per_call_ref / y) for x, y in zip(a, b)]
        return statistics.median(ratios), min(ratios), max(ratios)

    def bars(self, row: Row) -> str:
        """Whether ``row`` meets the performance issue's bars (paired figures where the run has
        them): ``peer`` >= :data:`BAR_PEER` (:data:`BAR_PEER_EVAL` in evaluation) and
        ``ceiling`` >= :data:`BAR_CEILING`; ``-`` where the group has no such reference."""
        kind = str(row.info.get("kind", self.name.split()[0]))
        out = []
        for role, bar in (("peer", BAR_PEER_EVAL if kind.startswith("eval") else BAR_PEER), ("ceiling", BAR_CEILING)):
            paired = self.paired(row, role)
            x = paired[0] if paired is not None else (self.vs_peer(row) if role == "peer" else self.vs_ceiling(row))
            if x is not None:
                unit = "x" if role == "peer" else ""
                out.append(f"{role} {'met' if x >= bar else 'missed'} ({x:.2f}{unit} vs {bar:g}{unit})")
        return "; ".join(out) or "-"


def groups_of(rows: list[Row]) -> list[Group]:
    """Rows by group, in first-seen order; within a group mrbench, peer, ceiling."""
    order: dict[str, list[Row]] = {}
    for r in rows:
        order.setdefault(r.group, []).append(r)
    return [Group(name, sorted(rs, key=lambda r: ROLES.index(r.role))) for name, rs in order.items()]


def describe(group: Group) -> str:
    """One line saying what a call of the group's computation is, from its extra_info."""
    ref = next((r for r in group.rows if r.role == "mrbench"), group.rows[0])
    i = ref.info
    kind, algo = i.get("kind"), i.get("algorithm")
    parts = []
    if kind == "train":
        parts.append(f"one meta-training step of `{algo}`: {i.get('meta_batch', '?')} episodes {i.get('shape', '')}, "
                     f"{ref.images_per_call} images, mean query loss, backward, Adam (lr {i.get('adam_lr', '?')})")
        if "inner_steps" in i:
            order = "first order" if i.get("first_order") else "second order"
            parts.append(f"{i['inner_steps']} inner SGD step(s) of lr {i['inner_lr']}, {order}")
    elif str(kind).startswith("eval"):
        parts.append(f"query logits of {i.get('episodes', ref.units_per_call)} clean episodes {i.get('shape', '')} "
                     f"with `{algo}`, {ref.images_per_call} images")
        if "inner_steps_test" in i:
            parts.append(f"{i['inner_steps_test']} inner SGD step(s) of lr {i['inner_lr']} per episode")
    elif str(kind).startswith("attack"):
        parts.append(f"{i.get('attack', 'an attack')} on the {i.get('target', '?')} of {ref.units_per_call} episodes "
                     f"{i.get('shape', '')} with `{algo}`")
    opts = i.get("algorithm_options")
    if opts:
        parts.append("mrbench options " + ", ".join(f"{k}={v}" for k, v in opts.items()))
    libs = sorted({f"{r.info['library']} {r.info.get('library_version') or ''}".strip()
                   for r in group.rows if r.role == "peer" and r.info.get("library")})
    if libs:
        parts.append("peer libraries: " + ", ".join(libs))
    ceiling = group.ceiling
    if ceiling is not None:
        what = ("fwd+bwd+Adam" if ceiling.unit == "step" else
                "PGD-style input-gradient pass" if str(kind).startswith("attack") else "inference forward")
        parts.append(f"ceiling: a supervised {what} of the conv4 nn.Module over {ceiling.images_per_call} images "
                     "(`batch=all`: one batch; `batch=<n>`: n at a time)")
    return "; ".join(parts) + "."


def _machine(data: dict[str, Any]) -> list[tuple[str, str]]:
    mi = data.get("machine_info") or {}
    m = mi.get("mrbench") or {}
    cpu = mi.get("cpu") or {}
    brand = cpu.get("brand_raw") or mi.get("processor") or mi.get("machine") or "?"
    lines = [
        ("CPU", f"{brand}; {m.get('cpu_count', cpu.get('count', '?'))} logical CPUs, {m.get('cpus_usable', '?')} usable"),
        ("device", f"{m.get('device', '?')} ({m.get('device_name', '?')})"
                   + (f", CUDA {m['cuda_version']}" if m.get("cuda_version") else "")),
        ("torch", f"{m.get('torch_version', '?')}, {m.get('torch_threads', '?')} threads"
                  f" (OMP_NUM_THREADS={m.get('omp_num_threads') or 'unset'})"),
        ("python", f"{m.get('python') or mi.get('python_version', '?')} on {mi.get('system', '?')} {mi.get('release', '')}".strip()),
        ("rounds", f"{m.get('rounds', '?')} timed (+{m.get('warmup_rounds', '?')} warm-up) per case"
                   + (f" in each of {m['passes']} passes (orders: {', '.join(m.get('orders') or ['?'])})"
                      if m.get("passes", 1) > 1 else "")
                   + ("; quick smoke run, indicative only" if m.get("quick") else "")),
    ]
    if m.get("load_average_start") is not None:
        fmt = lambda la: " / ".join(f"{x:.2f}" for x in la) if la else "?"  # noqa: E731
        lines.append(("load average (1/5/15 min)", f"start {fmt(m.get('load_average_start'))}, end {fmt(m.get('load_average_end'))}"))
    ci = data.get("commit_info") or {}
    if ci.get("id"):
        lines.append(("commit", f"{ci['id'][:12]}{' (dirty)' if ci.get('dirty') else ''}"))
    if data.get("datetime"):
        lines.append(("run at", str(data["datetime"])))
    return lines


def _gflops(row: Row) -> str:
    return _num(row.gflops_per_s) if row.flops else "-"


def _rate(row: Row) -> str:
    return f"{_num(row.rate)} {row.unit}s/s" if row.unit != "call" else f"{_num(row.rate)}/s"


def render(data: dict[str, Any], name: str) -> str:
    """The Markdown report of one benchmark JSON."""
    groups = groups_of(rows_of(data))
    cuda = any("peak_cuda_mb" in r.info for g in groups for r in g.rows)
    passes = int(((data.get("machine_info") or {}).get("mrbench") or {}).get("passes", 1))
    version = data.get("version", "?")
    out = [f"# mrbench throughput: {name}", "",
           f"Generated by `benchmarks/report.py` from `{name}.json` (pytest-benchmark {version}); "
           "every number below comes from that file.", ""]
    out += ["## Machine", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in _machine(data)]
    out += ["", "## How to read it", "",
            "Rates use the median seconds per call. **peer**: the real peer library (easyfsl, higher, torchattacks) "
            "on the same computation; **reference**: the same computation re-implemented in plain PyTorch, the "
            "equal-computation check's yardstick; **ceiling**: a plain supervised pass of the same conv4. "
            "**GFLOP/call**: the convolutions and matrix products of one call, counted once with "
            "`torch.utils.flop_counter.FlopCounterMode` (backward and double backward included; elementwise ops "
            "not counted); **GFLOP/s**: that over the median. **vs peer** / **vs ref**: the case's rate over the "
            "fastest peer library's / reference's in its group (above 1.00x: faster). **vs ceiling**: the case's "
            "GFLOP/s as a fraction of the fastest ceiling's (a JSON without FLOP counts: images/s). **peak RSS**: "
            "the process's resident-set high-water mark during the case (inputs included)"
            + ("; **peak CUDA**: `torch.cuda.max_memory_allocated` during the case." if cuda else ".")
            + f" **bars**: the best mrbench case against the performance issue's bars: at least {BAR_PEER:g}x the "
            f"fastest peer library ({BAR_PEER_EVAL:g}x in evaluation) and {BAR_CEILING:g} of the ceiling's GFLOP/s, "
            "on the paired figures when the run has them."]
    if passes > 1:
        out += ["", f"This run made {passes} passes over the cases, alternately in forward and reverse order; "
                "the timings are pooled over them. **paired** ratios are taken within each pass between the "
                "same two cases (the best by pooled timings) and given as the median over the passes, with "
                "their range: they are the figures to quote where the machine's speed drifts during a run."]
    head = ("| group | best mrbench | its rate | its GFLOP/s | fastest peer | its rate | mrbench vs peer | "
            "mrbench vs ref | mrbench vs ceiling |")
    rule = "|---|---|---|---|---|---|---|---|---|"
    if passes > 1:
        head, rule = head + " paired vs peer | paired vs ref | paired vs ceiling |", rule + "---|---|---|"
    head, rule = head + " bars |", rule + "---|"
    out += ["", "## Summary", "", head, rule]
    for g in groups:
        m, p = g.best("mrbench"), g.best("peer")
        if m is None:
            continue
        line = (f"| {g.name} | {m.variant} | {_rate(m)} | {_gflops(m)} | {p.variant if p else '-'} | "
                f"{_rate(p) if p else '-'} | {_ratio(g.vs_peer(m))} | {_ratio(g.vs(m, 'reference'))} | "
                f"{_frac(g.vs_ceiling(m))} |")
        if passes > 1:
            line += (f" {_paired(g.paired(m, 'peer'))} | {_paired(g.paired(m, 'reference'))} |"
                     f" {_paired(g.paired(m, 'ceiling'), '')} |")
        out.append(line + f" {g.bars(m)} |")
    for g in groups:
        out += ["", f"## {g.name}", "", describe(g), ""]
        head = ("| role | variant | median s | min s | max s | rounds | rate | images/s | GFLOP/call | GFLOP/s | "
                "vs peer | vs ref | vs ceiling | peak RSS MB |")
        rule = "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        if cuda:
            head, rule = head + " peak CUDA MB |", rule + "---|"
        out += [head, rule]
        for r in g.rows:
            variant = r.variant + (" (default plan)" if r.info.get("default_plan") else "")
            line = (f"| {r.role} | {variant} | {_num(r.median)} | {_num(r.min)} | {_num(r.max)} | {r.rounds} | "
                    f"{_rate(r)} | {_num(r.images_per_s)} | {_num(r.flops / 1e9) if r.flops else '-'} | "
                    f"{_gflops(r)} | {_ratio(g.vs_peer(r))} | {_ratio(g.vs(r, 'reference'))} | "
                    f"{_frac(g.vs_ceiling(r))} | {_mb(r.info.get('peak_rss_mb'))} |")
            if cuda:
                line += f" {_mb(r.info.get('peak_cuda_mb'))} |"
            out.append(line)
    if not groups:
        out += ["", "The JSON holds no case of `benchmarks/test_throughput.py`."]
    return "\n".join(out) + "\n"


def merge_passes(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One pytest-benchmark JSON from several passes over the same cases.

    Each case's ``stats`` are recomputed from its timings pooled over the passes
    (``stats["data"]``, which pytest-benchmark writes), its per-pass medians are kept
    in ``extra_info["pass_medians"]`` (in pass order, so that :meth:`Group.paired`
    can pair them), and memory figures are the maximum over the passes. Cases keep
    the order of the first pass that has them; the machine info is the first pass's,
    with the load average at the start of the first pass and the end of the last,
    ``passes`` and each pass's ``orders``.
    """
    if not runs:
        raise ValueError("merge_passes: no runs to merge")
    cases: dict[str, list[dict[str, Any] | None]] = {}
    for i, run in enumerate(runs):
        for b in run.get("benchmarks", []):
            key = b.get("fullname") or b.get("name")
            cases.setdefault(key, [None] * len(runs))[i] = b
    merged_cases = []
    for key, per_pass in cases.items():
        present = [b for b in per_pass if b is not None]
        first = present[0]
        data = [float(x) for b in present for x in (b.get("stats") or {}).get("data") or ()]
        if not data:  # no timings kept: nothing to pool
            merged_cases.append(first)
            continue
        info = dict(first.get("extra_info") or {})
        info["pass_medians"] = [statistics.median(b["stats"]["data"]) if b is not None and b["stats"].get("data")
                                else None for b in per_pass]
        if None in info["pass_medians"]:  # a case missing from some pass cannot be paired
            info["pass_medians"] = [x for x in info["pass_medians"] if x is not None][:1]
        for mem in ("peak_rss_mb", "peak_cuda_mb"):
            vals = [b["extra_info"][mem] for b in present if (b.get("extra_info") or {}).get(mem) is not None]
            if vals:
                info[mem] = max(vals)
        stats = {"min": min(data), "max": max(data), "mean": statistics.fmean(data), "median": statistics.median(data),
                 "rounds": len(data), "data": data, "iterations": 1}
        merged_cases.append({**first, "extra_info": info, "stats": stats})
    out = {k: v for k, v in runs[0].items() if k != "benchmarks"}
    machine = json.loads(json.dumps(runs[0].get("machine_info") or {}))
    m = machine.setdefault("mrbench", {})
    m["passes"] = len(runs)
    m["orders"] = [((r.get("machine_info") or {}).get("mrbench") or {}).get("order", "forward") for r in runs]
    m["load_average_end"] = ((runs[-1].get("machine_info") or {}).get("mrbench") or {}).get("load_average_end")
    m["pass_datetimes"] = [r.get("datetime") for r in runs]
    out["machine_info"] = machine
    out["benchmarks"] = merged_cases
    return out


def write_report(json_path: str | Path, name: str | None = None, out_dir: str | Path = DEFAULT_OUT) -> tuple[Path, Path]:
    """Copy ``json_path`` to ``<out_dir>/<name>.json`` and write ``<out_dir>/<name>.md``."""
    json_path = Path(json_path)
    name = name or json_path.stem
    data = json.loads(json_path.read_text())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_out, md_out = out_dir / f"{name}.json", out_dir / f"{name}.md"
    if json_path.resolve() != json_out.resolve():
        shutil.copyfile(json_path, json_out)
    md_out.write_text(render(data, name))
    return json_out, md_out


def write_merged_report(json_paths: list[str | Path], name: str, out_dir: str | Path = DEFAULT_OUT) -> tuple[Path, Path]:
    """Merge passes (:func:`merge_passes`) into ``<out_dir>/<name>.json`` and write ``<out_dir>/<name>.md``."""
    merged = merge_passes([json.loads(Path(p).read_text()) for p in json_paths])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_out, md_out = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_out.write_text(json.dumps(merged, indent=4) + "\n")
    md_out.write_text(render(merged, name))
    return json_out, md_out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path, nargs="+",
                   help="a pytest-benchmark --benchmark-json file; several: passes over the same cases, merged")
    p.add_argument("--name", help="report name (default: the (first) JSON file's stem)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: benchmarks/results)")
    args = p.parse_args(argv)
    for path in args.json:
        if not path.is_file():
            p.error(f"{path} is not a file")
    if len(args.json) == 1:
        json_out, md_out = write_report(args.json[0], args.name, args.out)
    else:
        json_out, md_out = write_merged_report(args.json, args.name or args.json[0].stem, args.out)
    print(f"wrote {md_out} and {json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
