"""Throughput benchmarks of mrbench's hot paths against peers and the machine's ceiling.

Not part of the default test run (pytest's ``testpaths`` are ``tests`` and
``plugins``). ``python -m benchmarks.run`` runs them and writes the report; see
``benchmarks/README.md``.
"""
