"""The floating-point operations of one call of a benchmark case.

:func:`count_flops` runs the call once under ``torch.utils.flop_counter.FlopCounterMode``,
which sees every aten op that runs (below autograd and the ``torch.func`` transforms,
so the backward, the double backward of second-order MAML, ``torch.func.grad`` and
``vmap`` are all counted as the kernels they run) and counts those it has a formula
for: convolutions (forward, ``convolution_backward``), ``mm``, ``addmm``, ``bmm``,
``baddbmm`` and attention, at 2 FLOPs per multiply-add. Elementwise work (BatchNorm,
ReLU, pooling, the optimiser) is not counted; on the conv4 it is a few percent of the
convolutions'. ``benchmarks/test_flops.py`` checks the counts against hand counts.

A count is taken once per case, outside the timed region, and stored in the case's
``extra_info`` (``flops``, ``flops_by_op``). A multi-pass run
(``python -m benchmarks.run --passes N``) keeps the counts in a JSON file
(``--bench-flops-cache``) so that only its first pass pays for them: the count of a case
does not change between passes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from torch.utils.flop_counter import FlopCounterMode


class _NoModules:
    """Stands in for ``FlopCounterMode``'s module tracker: everything counts as ``Global``."""

    parents = frozenset({"Global"})

    def __enter__(self) -> "_NoModules":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class GlobalFlopCounterMode(FlopCounterMode):
    """``FlopCounterMode`` without its per-module breakdown.

    Its ``ModuleTracker`` hooks the backward of every module call, and those hooks fail
    under ``torch.autograd.grad`` with respect to a leaf input (torchattacks' PGD: "A leaf
    node was passed to _will_engine_execute_node but we are currently running
    autograd.grad()"). The counting itself (the dispatch mode and its formulas) is
    ``FlopCounterMode``'s.
    """

    def __init__(self) -> None:
        super().__init__(display=False)
        self.mod_tracker = _NoModules()


def count_flops(fn: Callable[[], Any]) -> dict[str, Any]:
    """Run ``fn`` once under :class:`GlobalFlopCounterMode`; ``{"flops": total, "flops_by_op": {op: flops}}``."""
    mode = GlobalFlopCounterMode()
    with mode:
        fn()
    by_op = mode.get_flop_counts().get("Global", {})
    return {"flops": int(mode.get_total_flops()),
            "flops_by_op": {str(op).removeprefix("aten."): int(n) for op, n in sorted(by_op.items(), key=str)}}


class FlopCache:
    """Counts by case key, optionally kept in a JSON file shared by the passes of one run.

    :param path: the file (read if it exists, rewritten after every new count); ``None``
        keeps the counts in memory only.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.counts: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.is_file():
            self.counts = json.loads(self.path.read_text())

    def get(self, key: str, fn: Callable[[], Any]) -> dict[str, Any]:
        """The count of ``key``, counted by running ``fn`` once if it is not known yet."""
        if key not in self.counts:
            self.counts[key] = count_flops(fn)
            if self.path is not None:
                self.path.write_text(json.dumps(self.counts, indent=1, sort_keys=True))
        return self.counts[key]
