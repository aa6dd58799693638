"""Executors run the task graph: ``serial`` in this process, ``ray`` on a Ray cluster (local or joined).

Both answer the same three calls, so the driver (``sgq_bench.runner``) is one loop whatever runs the
tasks: ``submit(task, dep_values)``, ``wait()`` -> finished ``(key, ok, value)`` triples, ``cancel()``.
A dependency's value travels to its dependents inside the executor (a Ray ``ObjectRef`` for rankings,
so a 50 MB ranking goes worker-to-worker and never through the driver).
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from sgq_bench.checkpoints import checkpoint_dir
from sgq_bench.errors import UsageError, warn
from sgq_bench.tasks import ExecContext, Task, execute

EXECUTORS = ("serial", "ray")
SYSTEM_RETRIES = 3  # a worker that dies (node lost, OOM kill) is retried; an exception in a task is not
CANCEL_GRACE_S = 60.0  # how long a cancelled training gets to reach its next step and save its state


class SerialExecutor:
    """Runs each task in this process when asked to wait; values stay in memory."""

    name = "serial"

    def __init__(self, ctx: ExecContext) -> None:
        self.ctx = ctx
        self.queue: deque[tuple[Task, list[Any]]] = deque()
        self.values: dict[str, Any] = {}

    @property
    def workers(self) -> int:
        return 1

    def submit(self, task: Task) -> None:
        self.queue.append((task, [self.values.get(d) for d in task.deps]))

    def wait(self) -> list[tuple[str, bool, Any]]:
        task, deps = self.queue.popleft()
        try:
            value = execute(task, self.ctx, *deps)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # the driver marks the task's cells failed and goes on
            return [(task.key, False, exc)]
        if task.kind == "rank":
            self.values[task.key] = value
        return [(task.key, True, _driver_value(task, value))]

    def pending(self) -> int:
        return len(self.queue)

    def release(self, key: str) -> None:
        self.values.pop(key, None)

    def cancel(self) -> None:
        self.queue.clear()

    def close(self) -> None:
        self.values.clear()


def _driver_value(task: Task, value: Any) -> Any:
    """What the driver keeps of a result: rows for evaluate, small values otherwise, never rankings."""
    return None if task.kind == "rank" else value


class RayExecutor:
    """Each task is a Ray task asking for its threads as CPUs (and one GPU on CUDA).

    Checkpoints and retrain results go to ``--checkpoint-dir``: with workers on several machines it must
    be a shared filesystem. Only system failures are retried (``max_retries``); a task that raises is
    reported failed at once.
    """

    name = "ray"
    cancel_grace_s = CANCEL_GRACE_S

    def __init__(self, ctx: ExecContext, *, address: str | None = None, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'sgq-bench[ray]'") from None
        self.ray = ray
        # where cancel() asks trainings to stop: beside the checkpoints, which every worker can reach
        root = checkpoint_dir(ctx.checkpoint_dir)
        stop = root / ".stop" / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.ctx = ctx = dataclasses.replace(ctx, stop_file=str(stop))
        threads = ctx.threads or 1
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = (workers or max(1, (os.cpu_count() or 1) // threads)) * threads
            sigterm = _sigterm_handler()
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UsageError(f"--address {address!r}: cannot join the Ray cluster ({exc})") from None
            finally:
                _restore_sigterm(sigterm)
            self._owns = True
        else:
            self._owns = False
        gpu = str(ctx.device).startswith("cuda")
        opts = dict(num_cpus=threads, num_gpus=1 if gpu else 0, max_retries=SYSTEM_RETRIES, retry_exceptions=False)
        self.remote = ray.remote(_ray_execute).options(**opts)
        # A ranking (tens of MB) stays in the object store for its dependents: its task returns a small
        # status object as well, and only that one travels to the driver to learn of success or failure.
        self.remote_split = ray.remote(_ray_execute_split).options(num_returns=2, **opts)
        self.refs: dict[Any, tuple[Task, Any]] = {}
        self.values: dict[str, Any] = {}

    @property
    def workers(self) -> int:
        """Tasks the cluster can run at once now: its CPUs per ``--threads`` (and its GPUs on CUDA)."""
        resources = self.ray.cluster_resources()
        slots = int(resources.get("CPU", 1) // (self.ctx.threads or 1))
        if str(self.ctx.device).startswith("cuda"):
            slots = min(slots, int(resources.get("GPU", 0)))
        return max(1, slots)

    def submit(self, task: Task) -> None:
        deps = [self.values.get(d) for d in task.deps]
        if task.kind == "rank":
            status, value = self.remote_split.remote(task, self.ctx, *deps)
            self.refs[status] = (task, value)
        else:
            ref = self.remote.remote(task, self.ctx, *deps)
            self.refs[ref] = (task, ref)

    def wait(self) -> list[tuple[str, bool, Any]]:
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=None)
        done = []
        for ref in ready:
            task, value_ref = self.refs.pop(ref)
            try:
                value = self.ray.get(ref)  # raises if the task failed
                if task.kind == "rank":  # the ranking itself stays in the object store for its dependents
                    self.values[task.key] = value_ref
                    value = None
                done.append((task.key, True, value))
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                done.append((task.key, False, _unwrap(exc)))
        return done

    def pending(self) -> int:
        return len(self.refs)

    def release(self, key: str) -> None:
        self.values.pop(key, None)

    def cancel(self) -> None:
        """Stop what is outstanding without losing a training's progress.

        Running trainings are asked to stop through ``ctx.stop_file``: each saves its state at its next
        step and ends, as on Ctrl-C in a serial run. Other tasks have nothing to save and are killed at
        once. Trainings still running after ``cancel_grace_s`` (or at a second interrupt) are killed.
        Why not ``ray.cancel(force=False)``: cancelling a task at the moment it ends can abort the driver
        (Ray's "Tried to complete task that was not pending" check; ray-project/ray#54798), and a gentle
        cancel makes exactly that moment likely. Only tasks that do not end by themselves are cancelled.
        """
        refs = list(self.refs.items())
        self.refs.clear()
        training = [ref for ref, (task, _) in refs if task.kind == "train"]
        for ref, (task, _) in refs:
            if task.kind != "train":
                self._cancel(ref, force=True)
        if not training:
            return
        ready: list[Any] = []
        try:
            self._request_stop(training)
            ready, _ = self.ray.wait(training, num_returns=len(training), timeout=self.cancel_grace_s)
        except KeyboardInterrupt:  # a second Ctrl-C: kill now
            pass
        finally:
            for ref in training:
                if ref not in ready:
                    self._cancel(ref, force=True)

    def _request_stop(self, training: list[Any]) -> None:
        path = Path(self.ctx.stop_file or "")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError as exc:  # an unwritable checkpoint dir: fall back to Ray's own (racy) gentle cancel
            warn(f"could not write {path} ({exc.strerror or exc}); cancelling the trainings through Ray")
            for ref in training:
                self._cancel(ref, force=False)

    def _cancel(self, ref: Any, *, force: bool) -> None:
        try:
            self.ray.cancel(ref, force=force)
        except Exception:  # already finished or lost: nothing left to cancel
            pass

    def close(self) -> None:
        self.values.clear()
        if self.ctx.stop_file:
            try:
                Path(self.ctx.stop_file).unlink(missing_ok=True)
            except OSError:
                pass
        if self._owns:
            self.ray.shutdown()


def _sigterm_handler() -> Any:
    import signal

    return signal.getsignal(signal.SIGTERM)


def _restore_sigterm(handler: Any) -> None:
    """Put back the driver's SIGTERM handler, which ``ray.init`` replaces by a crash logger that exits at
    once: the runner's handler turns SIGTERM (a scheduler's preemption) into the gentle interrupt."""
    import signal
    import threading

    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _ray_execute(task: Task, ctx: ExecContext, *deps: Any) -> Any:
    """Worker side: Ray sets OMP_NUM_THREADS, but torch in a reused worker does not re-read it."""
    return execute(task, ctx, *deps)


def _ray_execute_split(task: Task, ctx: ExecContext, *deps: Any) -> tuple[bool, Any]:
    """(a small status, the value): two Ray objects, so the driver can wait on the first alone."""
    return True, execute(task, ctx, *deps)


def _unwrap(exc: BaseException) -> BaseException:
    """The task's own exception when Ray wrapped it (RayTaskError.cause), else the Ray error."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def check_importable_plugins(names_by_kind: dict[str, set[str]]) -> None:
    """Refuse plugins registered in this process (``register()``): a Ray worker cannot import them."""
    from sgq_bench import _registry

    bad = []
    for kind, names in names_by_kind.items():
        reg = _registry.registry(kind)
        for name in sorted(names):
            entry = reg.peek(name)
            if entry is not None and entry.in_process:
                bad.append(f"{kind[:-1]} {name!r}")
    if bad:
        raise UsageError(f"--executor ray cannot use in-process plugins ({', '.join(bad)}): workers cannot "
                         "import them; install them as a package with entry points, or use --executor serial")


def make_executor(name: str, ctx: ExecContext, *, address: str | None = None, workers: int | None = None) -> Any:
    if name == "serial":
        if address:
            raise UsageError("--address needs --executor ray")
        return SerialExecutor(ctx)
    if name == "ray":
        return RayExecutor(ctx, address=address, workers=workers)
    raise UsageError(f"--executor {name!r} is invalid; expected one of {', '.join(EXECUTORS)}")
