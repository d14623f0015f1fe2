"""mrbench's first-party metric-based meta-learners."""

from __future__ import annotations

from bench.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def mrbench_register_algorithms(register):
    from mrbench_metric.matchingnet import MatchingNet
    from mrbench_metric.protonet import ProtoNet
    from mrbench_metric.relationnet import RelationNet

    register(ProtoNet)
    register(MatchingNet)
    register(RelationNet)
