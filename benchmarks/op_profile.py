"""Where the time of one benchmark case goes: per aten op and input shape, its time, FLOPs and GFLOP/s.

    python -m benchmarks.op_profile CASE [CASE ...] [--threads N] [--top K] [--device cpu]

``CASE`` is a case id as pytest shows it, e.g. ``eval-maml-mrbench-loop+channels_last``,
``train-protonet-peer-easyfsl``, ``attack-query-protonet-peer-torchattacks/per-episode``,
``reptile-mrbench-loop`` (a zoo case). Each case gets one warm-up call, one plain call (its
wall time) and one call under :class:`OpTimer`, a ``TorchDispatchMode`` that times every
aten op as it runs (below autograd and the ``torch.func`` transforms, like
``FlopCounterMode``, whose FLOP formulas it uses). The table lists the ops that took the
most time with the shape of their first input, so that e.g. the convolutions of the 5
support images and of the 75 queries show apart with their own GFLOP/s; the summary says
how much of the wall was spent in counted (convolution, matmul) kernels, in other ops,
and outside any op (Python, autograd's engine, dispatch).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from bench.execution import pick_device


@dataclass
class OpStats:
    calls: int = 0
    seconds: float = 0.0
    flops: int = 0


def _first_shape(args: tuple) -> tuple[int, ...]:
    for a in args:
        if isinstance(a, torch.Tensor):
            return tuple(a.shape)
    return ()


class OpTimer(TorchDispatchMode):
    """Time and FLOPs per (aten op, shape of its first tensor argument)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[tuple[str, tuple[int, ...]], OpStats] = defaultdict(OpStats)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in flop_registry:
            # As FlopCounterMode: a composite op (conv2d, batch_norm under inference_mode)
            # is timed as the ops it decomposes into, so that its convolutions are counted.
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        start = time.perf_counter()
        out = func(*args, **kwargs)
        seconds = time.perf_counter() - start
        flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        s = self.ops[(str(packet).removeprefix("aten."), _first_shape(args))]
        s.calls, s.seconds, s.flops = s.calls + 1, s.seconds + seconds, s.flops + int(flops)
        return out


def workload(case_id: str, device: torch.device) -> Callable[[], Any]:
    """The timed function of the benchmark case ``case_id``."""
    from benchmarks import test_attack_throughput as attack
    from benchmarks import test_throughput as tp
    from benchmarks import test_zoo_eval as zoo

    known = []
    for c in tp.all_cases(device):
        known.append(c.id)
        if c.id == case_id:
            return tp.WORKLOADS[c.kind](c, device).fn
    for c in attack.attack_cases(device):
        known.append("-".join(c))
        if known[-1] == case_id:
            return attack._attack_workload(*c, device).fn
    for c in zoo.zoo_cases(device):
        known.append("-".join(c))
        if known[-1] == case_id:
            return zoo._workload(*c, device).fn
    raise SystemExit(f"unknown case {case_id!r}; known cases:\n  " + "\n  ".join(known))


def profile(fn: Callable[[], Any], top: int) -> str:
    """Warm up, time one plain call, then one under :class:`OpTimer`; the report as text."""
    fn()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    timer = OpTimer()
    start = time.perf_counter()
    with timer:
        fn()
    wall_timed = time.perf_counter() - start
    ops = sorted(timer.ops.items(), key=lambda kv: -kv[1].seconds)
    in_ops = sum(s.seconds for _, s in ops)
    counted = [s for _, s in ops if s.flops]
    flop_s, flops = sum(s.seconds for s in counted), sum(s.flops for s in counted)
    # The timer's own Python overhead per op inflates the timed call's wall, so the time outside
    # ops is estimated against the plain call's.
    outside = max(0.0, wall - in_ops)
    lines = [f"wall {wall:.3f} s (plain call; {wall_timed:.3f} s under the op timer). Inside aten ops "
             f"{in_ops:.3f} s: {flop_s:.3f} s in counted kernels ({flops / 1e9:.2f} GFLOP, "
             f"{flops / 1e9 / max(flop_s, 1e-12):.1f} GFLOP/s inside them; {flops / 1e9 / wall:.1f} GFLOP/s over "
             f"the plain wall), {in_ops - flop_s:.3f} s in other ops; about {outside:.3f} s "
             f"({outside / wall:.0%} of the plain wall) outside ops (Python, autograd engine, dispatch)"]
    by_batch: dict[str, OpStats] = defaultdict(OpStats)
    for (_name, shape), st in ops:
        b = by_batch[f"N={shape[0]}" if len(shape) == 4 else "other"]
        b.calls, b.seconds, b.flops = b.calls + st.calls, b.seconds + st.seconds, b.flops + st.flops
    lines.append("by batch size of 4-D inputs: " + "; ".join(
        f"{k}: {b.seconds:.2f} s ({b.seconds / wall:.0%}), {b.flops / 1e9:.2f} GFLOP"
        + (f" at {b.flops / 1e9 / b.seconds:.1f} GFLOP/s" if b.flops else "")
        for k, b in sorted(by_batch.items(), key=lambda kv: -kv[1].seconds)))
    lines.append("")
    lines.append(f"{'op':28} {'first input shape':22} {'calls':>6} {'ms':>9} {'% wall':>7} {'GFLOP':>8} {'GFLOP/s':>8}")
    for (name, shape), s in ops[:top]:
        rate = f"{s.flops / 1e9 / s.seconds:8.1f}" if s.flops else f"{'-':>8}"
        lines.append(f"{name[:28]:28} {str(list(shape))[:22]:22} {s.calls:6d} {s.seconds * 1e3:9.1f} "
                     f"{s.seconds / wall:7.1%} {s.flops / 1e9:8.3f} {rate}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.op_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("cases", nargs="+", help="case ids, e.g. eval-maml-mrbench-loop+channels_last")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--top", type=int, default=15, help="ops listed per case (default 15)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    for case_id in args.cases:
        print(f"## {case_id} ({device}, {torch.get_num_threads()} thread(s))")
        print(profile(workload(case_id, device), args.top), end="\n\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
