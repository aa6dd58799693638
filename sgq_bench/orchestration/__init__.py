"""The orchestration of a run: suite -> cells -> task graph -> executor -> run directory; and the views
of it that run nothing (the plan, the status table).

Modules, one job each, in the order data flows: ``cells`` (a suite's cells, ``--only``), ``graph`` (the
task graph: the harness's train and evaluate tasks plus whatever tasks the metrics schedule),
``executors`` (serial or Ray), ``driver`` (the loop that feeds tasks and writes what comes back),
``rundir`` (the run directory's bookkeeping), ``runner`` (``run()``: checks, lock, manifest, report);
then the views ``calibration`` and ``plan`` (``run --plan``) and ``status``. The rest of the package does
not care whether a task runs serially or on Ray, and nothing here imports a metric.
"""
