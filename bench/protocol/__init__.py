"""What is measured: the scenario grammar (:mod:`bench.protocol.scenarios`) and the
reference attacks of the sanity checks as a suite declares them
(:mod:`bench.protocol.sanity`).

Suites (:mod:`bench.suites`), episodes (:mod:`bench.episodes`) and the execution plans
(:mod:`bench.execution`) stay where plugins import them from (docs/plugin-utilities.md).
"""
