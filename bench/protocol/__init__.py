"""What is measured: the scenario grammar (:mod:`bench.protocol.scenarios`).

The frozen parts of the protocol live here; suites, episodes, the threat model and the
sanity checks join them as the redesign of issue 21 proceeds.
"""
