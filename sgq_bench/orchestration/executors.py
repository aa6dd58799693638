"""Executors run the task graph: ``serial`` in this process, ``ray`` on a Ray cluster (local or joined).

Both answer the same calls, so the driver (``orchestration.driver``) is one loop whatever runs the
tasks: ``submit(node)``, ``wait()`` -> finished ``(key, ok, value)`` triples, ``release(key)``, ``cancel()``.
A task's value travels to its dependents inside the executor. Values of ``shared_value`` tasks (ROAR's
rankings, tens of MB) never reach the driver: on Ray they stay in the object store and go
worker-to-worker. Nothing here knows any task kind except that trainings can save their state when
cancelled.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from sgq_bench._signals import keep_sigterm_handler
from sgq_bench.checkpoints import checkpoint_dir
from sgq_bench.errors import UsageError, warn
from sgq_bench.orchestration.graph import Node
from sgq_bench.specs import ExecContext

EXECUTORS = ("serial", "ray")
SYSTEM_RETRIES = 3  # a worker that dies (node lost, OOM kill) is retried; an exception in a task is not
CANCEL_GRACE_S = 60.0  # how long a cancelled training gets to reach its next step and save its state


def run_node(node: Node, ctx: ExecContext, *values: Any) -> Any:
    """Worker side: run one task with this run's threads (a reused worker keeps its old count otherwise,
    and Ray's OMP_NUM_THREADS is not re-read by torch) and freed-memory reuse."""
    import torch

    from sgq_bench._batching import keep_freed_memory

    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    keep_freed_memory()
    return node.task.run(ctx, *values)


def _inputs(node: Node, values: dict[str, Any]) -> list[Any]:
    return [values.get(k) if k is not None else None for k in node.inputs]


class SerialExecutor:
    """Runs each task in this process when asked to wait; values stay in memory."""

    name = "serial"

    def __init__(self, ctx: ExecContext) -> None:
        self.ctx = ctx
        self.queue: deque[tuple[Node, list[Any]]] = deque()
        self.values: dict[str, Any] = {}

    @property
    def workers(self) -> int:
        return 1

    def submit(self, node: Node) -> None:
        self.queue.append((node, _inputs(node, self.values)))

    def wait(self) -> list[tuple[str, bool, Any]]:
        node, inputs = self.queue.popleft()
        try:
            value = run_node(node, self.ctx, *inputs)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # the driver marks the task's cells failed and goes on
            return [(node.key, False, exc)]
        self.values[node.key] = value
        return [(node.key, True, None if node.task.shared_value else value)]

    def pending(self) -> int:
        return len(self.queue)

    def release(self, key: str) -> None:
        self.values.pop(key, None)

    def cancel(self) -> None:
        self.queue.clear()

    def close(self) -> None:
        self.values.clear()


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
                _check_reachable(address)
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = (workers or max(1, (os.cpu_count() or 1) // threads)) * threads
            try:
                with keep_sigterm_handler():  # ray.init's own handler would skip the gentle stop
                    ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UsageError(f"--address {address!r}: cannot join the Ray cluster ({exc})") from None
            self._owns = True
        else:
            self._owns = False
        gpu = str(ctx.device).startswith("cuda")
        opts = dict(num_cpus=threads, num_gpus=1 if gpu else 0, max_retries=SYSTEM_RETRIES, retry_exceptions=False)
        self.remote = ray.remote(_ray_execute).options(**opts)
        # A shared value (a ranking: tens of MB) stays in the object store for its dependents: its task
        # returns a small status object as well, and only that one travels to the driver.
        self.remote_split = ray.remote(_ray_execute_split).options(num_returns=2, **opts)
        self.refs: dict[Any, tuple[Node, Any]] = {}
        self.values: dict[str, Any] = {}

    @property
    def workers(self) -> int:
        """Tasks the cluster can run at once now: its CPUs per ``--threads`` (and its GPUs on CUDA)."""
        resources = self.ray.cluster_resources()
        slots = int(resources.get("CPU", 1) // (self.ctx.threads or 1))
        if str(self.ctx.device).startswith("cuda"):
            slots = min(slots, int(resources.get("GPU", 0)))
        return max(1, slots)

    def submit(self, node: Node) -> None:
        inputs = _inputs(node, self.values)
        if node.task.shared_value:
            status, value = self.remote_split.remote(node, self.ctx, *inputs)
            self.refs[status] = (node, value)
        else:
            ref = self.remote.remote(node, self.ctx, *inputs)
            self.refs[ref] = (node, ref)

    def wait(self) -> list[tuple[str, bool, Any]]:
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=None)
        done = []
        for ref in ready:
            node, value_ref = self.refs.pop(ref)
            try:
                value = self.ray.get(ref)  # raises if the task failed; a shared value's status is small
                self.values[node.key] = value_ref  # dependents get the ObjectRef, resolved on their worker
                done.append((node.key, True, None if node.task.shared_value else value))
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                done.append((node.key, False, _unwrap(exc)))
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
        training = [ref for ref, (node, _) in refs if node.kind == "train"]
        for ref, (node, _) in refs:
            if node.kind != "train":
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


REACH_TIMEOUT_S = 10.0


def _check_reachable(address: str) -> None:
    """Fail in seconds, naming the address, when nothing listens there: ``ray.init`` itself retries for
    minutes and fills stderr with reconnect lines. ``auto``, ``ray://`` and local names are left to Ray."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as exc:
        raise UsageError(f"--address {address!r}: no Ray cluster answers there ({exc.strerror or exc}); start "
                         "one with `ray start --head` or give its address") from None


def _ray_execute(node: Node, ctx: ExecContext, *inputs: Any) -> Any:
    return run_node(node, ctx, *inputs)


def _ray_execute_split(node: Node, ctx: ExecContext, *inputs: Any) -> tuple[bool, Any]:
    """(a small status, the value): two Ray objects, so the driver can wait on the first alone."""
    return True, run_node(node, ctx, *inputs)


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
