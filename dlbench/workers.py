"""Worker processes: every core and every GPU busy, one writer to the tracking store.

Each worker is spawned once per study run, imports dlbench, loads the plugins and the data
once, and trains the units of work (trials or stacks) the parent hands it, one at a time, on
its device with its share of the CPU threads. What the parent's observers need (the MLflow
tracker, the progress line) comes back as events over a queue, so only the parent writes to
the store: no concurrent schema migration, no "database is locked". Observers that need the
model itself (the training diagnostics, a third party's ``dlbench_after_backward``) run in
the worker, next to the model.

A worker that dies (killed, out of memory) fails only the trials it was training: they are
marked FAILED with the reason and a new worker takes the remaining work.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import queue as queue_module
import signal
import socket
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from dlbench import hookimpl
from dlbench.children import become_helper
from dlbench.provenance import environment
from dlbench.stacking import Work
from dlbench.train import TrialResult

POLL_S = 0.5  # how often the parent looks for dead workers while it waits for events
START_METHOD_ENV = "DLBENCH_WORKER_START"  # fork or spawn, to override the choice (the tests use spawn on a CPU)


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to rebuild the parent's world: plugins, data, determinism, checkpoints."""

    plugins_dir: str | None
    plugins_dir_required: bool
    autoload: bool
    data_dir: str | None
    deterministic: bool
    threads: int
    checkpoint_dir: str | None
    checkpoint_every: float
    cuda_graphs: str = "auto"

    @property
    def checkpoints(self) -> Path | None:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else None


def load_world(setup: WorkerSetup, device: torch.device):
    """A worker's plugins (the training diagnostics registered) and data cache, with ``setup``'s
    threads and determinism on ``device``: built once by every worker, local or a Ray task's."""
    from dlbench.datacache import DataCache
    from dlbench.diagnostics import Diagnostics
    from dlbench.plugins import load_plugins
    from dlbench.determinism import set_determinism

    torch.set_num_threads(setup.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    set_determinism(setup.deterministic, device)
    plugins = load_plugins(Path(setup.plugins_dir) if setup.plugins_dir else None, autoload=setup.autoload,
                           required_dir=setup.plugins_dir_required)
    plugins.pm.register(Diagnostics(plugins.hook, plugins.registry), name="dlbench.diagnostics")
    return plugins, DataCache(Path(setup.data_dir) if setup.data_dir else None)


class ModelText:
    """The model as the parent's observers see it: its printed form (the tracker logs it)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


class Forwarder:
    """In a worker: sends the lifecycle events of its trials to the parent."""

    def __init__(self, worker: int, events, acks):
        self.worker, self.events, self.acks = worker, events, acks

    @hookimpl
    def dlbench_trial_start(self, trial, model, info) -> None:
        # the parent opened the run with its own environment: the worker's device, threads and host
        where = environment(torch.device(info["device"])) | {"dlbench.worker_host": socket.gethostname()}
        self.events.put(("start", self.worker, trial.index, (repr(model), info | {"environment": where})))

    @hookimpl
    def dlbench_epoch_end(self, trial, epoch, metrics) -> None:
        self.events.put(("epoch", self.worker, trial.index, (epoch, metrics)))

    @hookimpl
    def dlbench_diagnostics(self, trial, step, values) -> None:
        self.events.put(("diag", self.worker, trial.index, (step, values)))

    @hookimpl
    def dlbench_checkpoint(self, trial, epoch) -> None:
        # the checkpoint is written only once the parent has made what came before durable
        self.events.put(("checkpoint", self.worker, trial.index, epoch))
        self.acks.get()

    @hookimpl
    def dlbench_trial_end(self, trial, result) -> None:
        self.events.put(("end", self.worker, trial.index, result))


class Router:
    """In the parent: turns the events of the trials being trained elsewhere (a worker process,
    a Ray task) into calls of the observers' lifecycle hooks, and ends each trial exactly once."""

    def __init__(self, works: list[Work], observers: list, on_result):
        self.trials = {t.index: t for w in works for t in w.members}
        self.observers, self.on_result = observers, on_result
        self.ended: set[int] = set()

    def track(self, work: Work) -> None:
        """``work`` is handed out: its trials' events may come."""
        self.trials.update({t.index: t for t in work.members})

    def call(self, hook: str, **kwargs) -> None:
        for observer in self.observers:
            method = getattr(observer, hook, None)
            if method is not None:
                method(**kwargs)

    def end(self, index: int, result: TrialResult) -> None:
        if index in self.ended:
            return
        self.ended.add(index)
        self.call("dlbench_trial_end", trial=self.trials[index], result=result)
        self.on_result(self.trials[index], result)

    def interrupted(self, work: Work | None, error: str | None = None) -> None:
        """End ``work``'s trials that have not ended as interrupted: their runs KILLED, resumable."""
        for trial in work.members if work is not None else ():
            self.end(trial.index, TrialResult(status="interrupted", error=error))

    def route(self, kind: str, index: int, payload) -> None:
        trial = self.trials[index]
        if kind == "start":
            text, info = payload
            self.call("dlbench_trial_start", trial=trial, model=ModelText(text), info=info)
        elif kind == "epoch":
            self.call("dlbench_epoch_end", trial=trial, epoch=payload[0], metrics=payload[1])
        elif kind == "diag":
            self.call("dlbench_diagnostics", trial=trial, step=payload[0], values=payload[1])
        elif kind == "checkpoint":  # the caller tells the worker once this returns: what came before is stored
            self.call("dlbench_checkpoint", trial=trial, epoch=payload)
        elif kind == "end":
            self.end(index, payload)


def warm_up(plugins, cache, device: torch.device, configs: list[dict]) -> None:
    """What a worker's first unit would otherwise wait for, done while the parent goes on (the
    preflight, the tracking store): the study's datasets on ``device``, torch's optimizer imports
    and, on a GPU, the CUDA context, cuBLAS and the autograd engine's device thread."""
    for config in configs:
        cache.for_config(config, plugins.registry, device)
    w = torch.zeros(8, 8, device=device, requires_grad=True)
    (w @ w).sum().backward()
    torch.optim.SGD([w]).step()  # a first optimizer imports torch._dynamo (1-2 s)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _worker_main(worker: int, device: str, setup: WorkerSetup, tasks, events, acks, warm: list[dict]) -> None:
    become_helper()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the CLI's handler: drop it
    try:
        from dlbench.executor import execute

        dev = torch.device(device)
        plugins, cache = load_world(setup, dev)
        warm_up(plugins, cache, dev, warm)
        plugins.pm.register(Forwarder(worker, events, acks), name="dlbench.forwarder")
    except Exception as exc:
        events.put(("broken", worker, None, "".join(traceback.format_exception(exc))))
        return
    events.put(("ready", worker, None, None))
    while (item := tasks.get()) is not None:
        execute(item, plugins.registry, plugins.hook, cache, dev, setup.checkpoints, setup.checkpoint_every,
                setup.cuda_graphs)
        events.put(("done", worker, None, None))


class _Worker:
    def __init__(self, ctx, number: int, device: str, setup: WorkerSetup, events, warm: list[dict]):
        self.number, self.device = number, device
        self.tasks, self.acks = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=_worker_main, name=f"dlbench-worker-{number}", daemon=True,
                                   args=(number, device, setup, self.tasks, events, self.acks, warm))
        if ctx.get_start_method() == "fork" and not gc.get_freeze_count():
            # the start-up's objects (imports, plugins, data), inherited, stay out of both processes'
            # collections (Python's advice for fork); once: a worker started later to replace one
            # that died would freeze whatever the parent is drawing or logging then, for good
            gc.freeze()
        self.process.start()
        self.work: Work | None = None


def start_method(devices: list[str]) -> str:
    """How workers start. On a CPU, fork: a worker starts in milliseconds with torch, the plugins
    and what the preflight imported already there (the preflight computes on one thread, so no
    OpenMP pool exists yet to be copied half-alive). With CUDA, spawn: a CUDA context does not
    survive a fork, and a spawned worker takes seconds to import torch and start CUDA."""
    cpu_only = all(d.startswith("cpu") for d in devices) and "fork" in mp.get_all_start_methods()
    return os.environ.get(START_METHOD_ENV) or ("fork" if cpu_only else "spawn")


class WorkerPool:
    """``jobs`` worker processes over ``devices`` (round robin), started at once so that their
    start-up (imports, CUDA, the datasets in ``warm``: one config per dataset) overlaps with the
    parent's (the preflight, the tracking store)."""

    def __init__(self, jobs: int, devices: list[str], setup: WorkerSetup, warm: list[dict] = ()):
        self._ctx = mp.get_context(start_method(devices))
        self.devices, self.setup, self.warm = devices, setup, list(warm)
        self.events = self._ctx.Queue()
        self._started = 0
        self.workers = [self._spawn() for _ in range(jobs)]

    @property
    def description(self) -> str:
        return f"in {len(self.workers)} worker processes"

    @property
    def jobs(self) -> int:
        return len(self.workers)

    def prestart(self, works: list[Work]) -> list[Work]:
        """Hand each worker its first unit now, before the parent is ready to record anything:
        their events wait in the queue until :meth:`run` (only for a store that is known to be
        empty, so that nothing handed out here could have been skipped, resumed or claimed by
        another process). Returns the units handed out."""
        queue_ = list(works)
        for worker in self.workers:
            if queue_ and worker.work is None:
                worker.work = queue_.pop(0)
                worker.tasks.put(worker.work)
        return [w.work for w in self.workers if w.work is not None]

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx, self._started, self.devices[self._started % len(self.devices)], self.setup,
                         self.events, self.warm)
        self._started += 1
        return worker

    def run(self, queue, observers: list, on_result, claim=lambda work: work, stop=lambda: False) -> None:
        """Train every unit of ``queue`` (a :class:`dlbench.work_queue.WorkQueue`); call each
        observer's lifecycle hooks for every event (in the order given) and ``on_result(trial,
        result)`` when a trial ends. A unit is handed out as ``claim(unit)`` returns it (None:
        skip it; another process has it). On Ctrl-C, every trial handed out and not ended is
        ended as interrupted (its run KILLED, resumable), then it re-raises."""
        router = Router([w.work for w in self.workers if w.work is not None], observers, on_result)  # prestarted
        by_number = {w.number: w for w in self.workers}

        def fill() -> None:
            """Every idle worker gets the next unit (units come as searches' rounds end)."""
            if stop():  # --fail-fast: what is running finishes, nothing new starts
                queue.clear()
            for worker in list(by_number.values()):
                while worker.work is None and (unit := queue.next()) is not None:
                    if (unit := claim(unit)) is not None:
                        worker.work = unit
                        router.track(unit)
                        worker.tasks.put(unit)

        try:
            fill()
            self._loop(queue, by_number, router, fill)
        except KeyboardInterrupt:
            for worker in by_number.values():
                router.interrupted(worker.work)
            raise

    def _loop(self, queue, by_number, router: Router, fill) -> None:
        while any(w.work is not None for w in by_number.values()):
            try:
                kind, number, index, payload = self.events.get(timeout=POLL_S)
            except queue_module.Empty:
                for worker in list(by_number.values()):
                    if not worker.process.is_alive():
                        self._replace(worker, by_number, router.end, spare=queue.more())
                if not by_number:
                    raise RuntimeError("every worker process died; see the errors above") from None
                fill()
                continue
            worker = by_number.get(number)
            if kind == "ready":
                pass  # its first unit may be in its task queue already
            elif kind == "broken":
                del by_number[number]
                raise RuntimeError(f"worker {number} could not start:\n{payload}")
            elif kind == "done":
                worker.work = None
            else:
                router.route(kind, index, payload)
                if kind == "checkpoint":
                    worker.acks.put(True)
            fill()

    def _replace(self, worker: _Worker, by_number: dict, end, spare: bool) -> None:
        """A worker died: fail what it was training (the others go on); start another when
        there is work left (``spare``)."""
        del by_number[worker.number]
        if worker.work is not None:
            reason = (f"worker process {worker.process.pid} on {worker.device} died (exit code "
                      f"{worker.process.exitcode}) while training this trial; its other work went to a new worker")
            for trial in worker.work.members:
                end(trial.index, TrialResult(status="failed", error=reason))
        if spare:
            fresh = self._spawn()
            self.workers.append(fresh)
            by_number[fresh.number] = fresh

    def close(self, now: bool = False) -> None:
        """Stop every worker: idle ones finish at once; with ``now`` (Ctrl-C) busy ones are
        terminated, their trials already ended as interrupted by :meth:`run`."""
        for worker in self.workers:
            if worker.process.is_alive():
                try:
                    worker.tasks.put(None)
                except (OSError, ValueError):
                    pass
        for worker in self.workers:
            worker.process.join(timeout=0 if now else 5)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_jobs(device: torch.device, units: int, gpus: int = 1) -> int:
    """``--jobs auto``: one worker per core on a CPU (small trials gain more from cores than
    from torch's threads), two per GPU used (one trains while the other's host code runs)."""
    cores = cpu_cores()
    per_device = 2 * gpus if device.type == "cuda" else cores
    return max(1, min(per_device, cores, units))
