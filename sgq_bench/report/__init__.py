"""Reports of a run directory, built on the results DataFrame (``sgq_bench.load_results``).

``controls`` (ranking scores against each model's random-map control, ``<metric>_vs_random``, derived
from the results before any statistic) and ``stats`` (numbers: t-intervals, Welch and paired-by-seed
tests, the within-model bootstrap) ->
``summary`` (the across-seed summary table, grouped by protocol, shared by everything below) ->
``tables`` (``summary.csv``, ``summary.md``, ``write_report``) and ``figures`` (PNGs). ``tables``
imports ``figures``; neither imports the other back. ``claims`` (verdicts on stated claims across seeds)
reads ``summary``'s per-seed table and ``stats``; ``tables`` imports it only to write ``claims.md``.
"""
