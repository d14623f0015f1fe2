"""What was measured: the result entry and its schema (:mod:`bench.results.schema`),
the per-episode file next to it (:mod:`bench.results.episodes_file`), the statistics
over per-episode accuracies (:mod:`bench.results.stats`), and entries as tables
(:mod:`bench.results.frame`).

This layer reads and writes files and computes numbers from them; it imports neither
the evaluation that produces entries nor torch, so the leaderboard and the report can
use it without loading the harness.
"""
