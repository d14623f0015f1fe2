"""mrbench's first-party metric-based meta-learners."""

from __future__ import annotations

from bench.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def mrbench_register_algorithms(register):
    from mrbench_metric.protonet import ProtoNet

    register(ProtoNet)
